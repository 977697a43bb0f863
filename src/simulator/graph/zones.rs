//! Time zones of Graph event times: `Prefer: outlook.timezone="…"` on reads, and the
//! `timeZone` of a `dateTimeTimeZone` a client writes.
//!
//! Graph answers event times in UTC unless a request prefers another zone, and then writes
//! them in that zone with `timeZone` naming it, so a client that ignores `timeZone` reads
//! wrong times. The simulator has no time zone database (no chrono-tz), so it models the
//! zones that have kept one offset all year, by Windows and IANA name ([`FIXED_ZONES`]).
//! A preferred zone outside them is answered in UTC with `timeZone` `UTC`, as if none was
//! asked for: right times that a client reading `timeZone` handles, though Graph would
//! have written a zone with daylight saving time (Pacific Standard Time...) in that zone.
//! Writes take times in the same zones and refuse others.

use axum::http::HeaderMap;
use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};
use serde_json::Value;

/// Zones without daylight saving time: Windows and IANA names, offset from UTC in minutes.
const FIXED_ZONES: &[(&str, i32)] = &[
    ("UTC", 0),
    ("Etc/UTC", 0),
    ("Coordinated Universal Time", 0),
    ("GMT", 0),
    ("Greenwich Standard Time", 0),
    ("Atlantic/Reykjavik", 0),
    ("Tokyo Standard Time", 9 * 60),
    ("Asia/Tokyo", 9 * 60),
    ("Korea Standard Time", 9 * 60),
    ("Asia/Seoul", 9 * 60),
    ("China Standard Time", 8 * 60),
    ("Asia/Shanghai", 8 * 60),
    ("Singapore Standard Time", 8 * 60),
    ("Asia/Singapore", 8 * 60),
    ("India Standard Time", 5 * 60 + 30),
    ("Asia/Kolkata", 5 * 60 + 30),
    ("Asia/Calcutta", 5 * 60 + 30),
    ("Nepal Standard Time", 5 * 60 + 45),
    ("Asia/Kathmandu", 5 * 60 + 45),
    ("Arabian Standard Time", 4 * 60),
    ("Asia/Dubai", 4 * 60),
    ("Arab Standard Time", 3 * 60),
    ("Asia/Riyadh", 3 * 60),
    ("E. Africa Standard Time", 3 * 60),
    ("Africa/Nairobi", 3 * 60),
    ("South Africa Standard Time", 2 * 60),
    ("Africa/Johannesburg", 2 * 60),
    ("E. Australia Standard Time", 10 * 60),
    ("Australia/Brisbane", 10 * 60),
    ("SA Pacific Standard Time", -5 * 60),
    ("America/Bogota", -5 * 60),
    ("US Mountain Standard Time", -7 * 60),
    ("America/Phoenix", -7 * 60),
    ("Hawaiian Standard Time", -10 * 60),
    ("Pacific/Honolulu", -10 * 60),
];

/// A zone the simulator can write times in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Zone {
    /// As the client spelled it; Graph echoes the name it was given.
    pub(crate) name: String,
    offset: FixedOffset,
}

impl Zone {
    /// The zone of this name (any case), if it is one the simulator models.
    pub(crate) fn named(name: &str) -> Option<Self> {
        let name = name.trim();
        let (_, minutes) = FIXED_ZONES
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(name))?;
        Some(Self {
            name: name.to_owned(),
            offset: FixedOffset::east_opt(minutes * 60)?,
        })
    }

    /// Whether times in this zone are UTC's (nothing to rewrite).
    fn is_utc(&self) -> bool {
        self.offset.local_minus_utc() == 0 && self.name.eq_ignore_ascii_case("UTC")
    }

    /// A wall-clock time in this zone as the instant it names.
    pub(crate) fn to_utc(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        self.offset
            .from_local_datetime(&local)
            .single()
            .map(|at| at.with_timezone(&Utc))
    }
}

/// The zone named by `Prefer: outlook.timezone="…"` (among other preferences), if any.
pub(crate) fn preferred_name(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("outlook.timezone")
                .then(|| v.trim().trim_matches('"').to_owned())
        })
}

/// The zone a read answers in: the preferred one when the simulator models it.
pub(crate) fn preferred(headers: &HeaderMap) -> Option<Zone> {
    preferred_name(headers)
        .and_then(|name| Zone::named(&name))
        .filter(|z| !z.is_utc())
}

/// Rewrites an event's `start` and `end` (serialized in UTC) into `zone`, naming it in
/// `timeZone`. `@removed` entries, which carry no times, are left alone.
pub(crate) fn apply(event: &mut Value, zone: &Zone) {
    for key in ["start", "end"] {
        let Some(time) = event.get_mut(key).and_then(Value::as_object_mut) else {
            continue;
        };
        let utc = time
            .get("dateTime")
            .and_then(Value::as_str)
            .and_then(|t| NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f").ok());
        let Some(utc) = utc else {
            continue;
        };
        let local = utc.and_utc().with_timezone(&zone.offset).naive_local();
        time.insert(
            "dateTime".to_owned(),
            Value::String(super::graph_datetime(local.and_utc())),
        );
        time.insert("timeZone".to_owned(), Value::String(zone.name.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    #[test]
    fn a_preferred_zone_is_read_among_other_preferences_and_unmodelled_ones_are_none() {
        let mut h = HeaderMap::new();
        h.insert(
            "prefer",
            HeaderValue::from_static(
                r#"odata.maxpagesize=3, outlook.timezone="Tokyo Standard Time""#,
            ),
        );
        assert_eq!(
            preferred(&h).map(|z| z.name),
            Some("Tokyo Standard Time".to_owned())
        );
        h.insert(
            "prefer",
            HeaderValue::from_static(r#"outlook.timezone="UTC""#),
        );
        assert_eq!(preferred(&h), None, "UTC is what is written anyway");
        h.insert(
            "prefer",
            HeaderValue::from_static(r#"outlook.timezone="Pacific Standard Time""#),
        );
        assert_eq!(preferred_name(&h).as_deref(), Some("Pacific Standard Time"));
        assert_eq!(preferred(&h), None);
    }

    #[test]
    fn times_are_rewritten_into_the_zone_with_its_name_and_removed_entries_are_left_alone() {
        let zone = Zone::named("asia/kolkata").unwrap();
        let mut event = json!({
            "start": { "dateTime": "2026-03-02T20:00:00.0000000", "timeZone": "UTC" },
            "end": { "dateTime": "2026-03-02T21:00:00.0000000", "timeZone": "UTC" },
        });
        apply(&mut event, &zone);
        assert_eq!(event["start"]["dateTime"], "2026-03-03T01:30:00.0000000");
        assert_eq!(event["end"]["timeZone"], "asia/kolkata");
        let mut removed = json!({ "id": "x", "@removed": { "reason": "deleted" } });
        apply(&mut removed, &zone);
        assert_eq!(
            removed,
            json!({ "id": "x", "@removed": { "reason": "deleted" } })
        );
        let local =
            NaiveDateTime::parse_from_str("2026-03-02T09:00:00", "%Y-%m-%dT%H:%M:%S").unwrap();
        assert_eq!(
            Zone::named("SA Pacific Standard Time")
                .unwrap()
                .to_utc(local),
            Some(Utc.with_ymd_and_hms(2026, 3, 2, 14, 0, 0).unwrap())
        );
    }
}
