//! Item id formats as Microsoft has them. The simulator keeps every item under its EWS id
//! (what EWS and the control API show); Graph shows the same item under another id,
//! chosen per request:
//!
//! - without `Prefer: IdType="ImmutableId"`, the REST id: the EWS id in URL-safe base64
//!   (`+` → `-`, `/` → `_`), as Graph and Outlook REST ids are;
//! - with it, the immutable id: a distinct id (prefix `AAkALg`, as Exchange's immutable
//!   entry ids have) derived from the item or occurrence, stable for its whole life.
//!
//! Graph accepts any of the three as a path id, so each converts back to the EWS id.

/// The id Graph shows to a request: which of the two Graph formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GraphIdType {
    /// Graph's default (the REST id).
    Rest,
    /// Asked for with `Prefer: IdType="ImmutableId"`.
    Immutable,
}

impl GraphIdType {
    pub(crate) const fn from_prefer(immutable: bool) -> Self {
        if immutable {
            Self::Immutable
        } else {
            Self::Rest
        }
    }
}

/// What every simulated EWS item id starts with (an `AAMk` mailbox entry id).
const EWS_PREFIX: &str = "AAMk";
/// What every simulated immutable id starts with, in place of [`EWS_PREFIX`].
const IMMUTABLE_PREFIX: &str = "AAkALg";

/// The EWS id in URL-safe base64.
pub(crate) fn rest_id(ews_id: &str) -> String {
    ews_id.replace('+', "-").replace('/', "_")
}

/// The immutable id of an item or occurrence given its EWS id: a different prefix over the
/// REST form of the rest, so it never equals the EWS or REST id and converts back.
pub(crate) fn immutable_id(ews_id: &str) -> String {
    let tail = ews_id.strip_prefix(EWS_PREFIX).unwrap_or(ews_id);
    format!("{IMMUTABLE_PREFIX}{}", rest_id(tail))
}

/// The Graph id of `ews_id` in `id_type`.
pub(crate) fn graph_id(ews_id: &str, id_type: GraphIdType) -> String {
    match id_type {
        GraphIdType::Rest => rest_id(ews_id),
        GraphIdType::Immutable => immutable_id(ews_id),
    }
}

/// The EWS id behind an id in any of the three formats (an EWS id comes back unchanged).
pub(crate) fn ews_id(any: &str) -> String {
    let from_rest = |s: &str| s.replace('-', "+").replace('_', "/");
    match any.strip_prefix(IMMUTABLE_PREFIX) {
        Some(tail) => format!("{EWS_PREFIX}{}", from_rest(tail)),
        None => from_rest(any),
    }
}

/// Rewrites the ids of a Graph event (or `@removed` entry) serialized with EWS ids into
/// `id_type`: `id` and `seriesMasterId`.
pub(crate) fn graph_event_ids(value: &mut serde_json::Value, id_type: GraphIdType) {
    let Some(object) = value.as_object_mut() else {
        return;
    };
    for key in ["id", "seriesMasterId"] {
        if let Some(serde_json::Value::String(id)) = object.get_mut(key) {
            *id = graph_id(id, id_type);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real EWS ids are standard base64; the simulator's own are alphanumeric, so the
    // conversions are checked on both.
    const WITH_SYMBOLS: &str = "AAMkAGZpeHR1cmUtcm9vbS1hAEYAAAAAbWVldGluZy0xMDAx+/AAA=";
    const SIMULATED: &str = "AAMkAGSIM0000000100000007AAAOCC0003";

    #[test]
    fn rest_ids_are_ews_ids_in_url_safe_base64() {
        assert_eq!(
            rest_id(WITH_SYMBOLS),
            "AAMkAGZpeHR1cmUtcm9vbS1hAEYAAAAAbWVldGluZy0xMDAx-_AAA="
        );
        assert_eq!(rest_id(SIMULATED), SIMULATED);
    }

    #[test]
    fn immutable_ids_differ_from_ews_and_rest_ids_and_are_stable() {
        for id in [WITH_SYMBOLS, SIMULATED] {
            let immutable = immutable_id(id);
            assert!(immutable.starts_with("AAkALg"), "{immutable}");
            assert_ne!(immutable, id);
            assert_ne!(immutable, rest_id(id));
            assert_eq!(immutable, immutable_id(id));
            assert!(!immutable.contains(['+', '/']), "URL-safe: {immutable}");
        }
        assert_ne!(
            immutable_id("AAMkAGSIM0000000100000007AAA"),
            immutable_id(SIMULATED),
            "an occurrence has its own immutable id"
        );
    }

    #[test]
    fn every_format_converts_back_to_the_ews_id() {
        for id in [WITH_SYMBOLS, SIMULATED] {
            assert_eq!(ews_id(id), id);
            assert_eq!(ews_id(&rest_id(id)), id);
            assert_eq!(ews_id(&immutable_id(id)), id);
        }
    }

    #[test]
    fn event_json_gets_its_id_and_series_master_id_rewritten() {
        let mut v = serde_json::json!({
            "id": SIMULATED,
            "seriesMasterId": "AAMkAGSIM0000000100000007AAA",
            "iCalUId": "untouched",
        });
        graph_event_ids(&mut v, GraphIdType::Immutable);
        assert_eq!(v["id"], immutable_id(SIMULATED));
        assert_eq!(
            v["seriesMasterId"],
            immutable_id("AAMkAGSIM0000000100000007AAA")
        );
        assert_eq!(v["iCalUId"], "untouched");
        let mut removed = serde_json::json!({ "id": WITH_SYMBOLS, "seriesMasterId": null });
        graph_event_ids(&mut removed, GraphIdType::Rest);
        assert_eq!(removed["id"], rest_id(WITH_SYMBOLS));
        assert!(removed["seriesMasterId"].is_null());
    }
}
