//! Pages of a `calendarView/delta` round: the events (occurrences, exceptions and single
//! meetings) that changed, the ids that left, and the link to follow: `@odata.nextLink` while
//! the round has more pages, `@odata.deltaLink` on its last page.
//!
//! Both links are opaque and kept verbatim: Graph encodes the window and the round's state in
//! them, and a link with parameters added or re-encoded is refused. Times are read from
//! Graph's `dateTimeTimeZone` pairs; the client asks for UTC, and anything else is refused
//! rather than guessed.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Deserialize;

/// Why a delta page cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("the delta page is not the JSON Graph sends: {0}")]
    Json(String),
    #[error("event {id}: {problem}")]
    Event { id: String, problem: String },
    #[error("a delta page carries neither @odata.nextLink nor @odata.deltaLink")]
    NoLink,
}

/// One page of a delta round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaPage {
    pub entries: Vec<DeltaEntry>,
    pub link: DeltaLink,
}

/// Where the round goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaLink {
    /// More pages: GET this next (even when this page was empty).
    Next(String),
    /// The round is complete: the start of the next round.
    Delta(String),
}

/// One entry of a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaEntry {
    /// An event added or changed (or unchanged, replayed: Graph may repeat entries).
    Changed(Box<Event>),
    /// An event that left the view: deleted, or moved out of the window.
    Removed { id: String },
}

/// What kind of event Graph says it is (`type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EventType {
    SingleInstance,
    Occurrence,
    Exception,
    SeriesMaster,
}

/// An event of the room's calendar view: one row of `reservations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub change_key: Option<String>,
    pub ical_uid: Option<String>,
    pub subject: Option<String>,
    /// The organizer's SMTP address.
    pub organizer: Option<String>,
    pub location: Option<String>,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub is_all_day: bool,
    pub is_cancelled: bool,
    pub event_type: Option<EventType>,
    pub series_master_id: Option<String>,
    pub original_start: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct RawPage {
    #[serde(default)]
    value: Vec<RawEntry>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
    #[serde(rename = "@odata.deltaLink")]
    delta_link: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEntry {
    id: String,
    #[serde(rename = "@removed")]
    removed: Option<serde_json::Value>,
    change_key: Option<String>,
    #[serde(rename = "iCalUId")]
    ical_uid: Option<String>,
    subject: Option<String>,
    organizer: Option<RawRecipient>,
    location: Option<RawLocation>,
    start: Option<RawDateTime>,
    end: Option<RawDateTime>,
    is_all_day: Option<bool>,
    is_cancelled: Option<bool>,
    #[serde(rename = "type")]
    event_type: Option<EventType>,
    series_master_id: Option<String>,
    original_start: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRecipient {
    email_address: Option<RawEmail>,
}

#[derive(Deserialize)]
struct RawEmail {
    address: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLocation {
    display_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDateTime {
    date_time: String,
    time_zone: Option<String>,
}

/// Reads one delta page.
///
/// # Errors
/// A body that is not a delta page, an event without a readable start or end, or a page with
/// no link to go on with.
pub fn parse_delta_page(body: &[u8]) -> Result<DeltaPage, DeltaError> {
    let raw: RawPage = serde_json::from_slice(body).map_err(|e| DeltaError::Json(e.to_string()))?;
    // "A page can't contain both"; should one ever, more pages is the safe reading.
    let link = match (raw.next_link, raw.delta_link) {
        (Some(next), _) => DeltaLink::Next(next),
        (None, Some(delta)) => DeltaLink::Delta(delta),
        (None, None) => return Err(DeltaError::NoLink),
    };
    let entries = raw
        .value
        .into_iter()
        .map(entry)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DeltaPage { entries, link })
}

fn entry(raw: RawEntry) -> Result<DeltaEntry, DeltaError> {
    if raw.removed.is_some() {
        return Ok(DeltaEntry::Removed { id: raw.id });
    }
    let problem = |problem: String| DeltaError::Event {
        id: raw.id.clone(),
        problem,
    };
    let time = |what: &str, value: Option<&RawDateTime>| {
        let value = value.ok_or_else(|| problem(format!("has no {what}")))?;
        graph_time(value).map_err(|p| problem(format!("{what}: {p}")))
    };
    let start = time("start", raw.start.as_ref())?;
    let end = time("end", raw.end.as_ref())?;
    let original_start = raw
        .original_start
        .as_deref()
        .map(|t| {
            DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| problem(format!("originalStart {t:?}: {e}")))
        })
        .transpose()?;
    Ok(DeltaEntry::Changed(Box::new(Event {
        change_key: raw.change_key,
        ical_uid: raw.ical_uid,
        subject: raw.subject,
        organizer: raw
            .organizer
            .and_then(|o| o.email_address)
            .and_then(|e| e.address),
        location: raw.location.and_then(|l| l.display_name),
        start,
        end,
        is_all_day: raw.is_all_day.unwrap_or(false),
        is_cancelled: raw.is_cancelled.unwrap_or(false),
        event_type: raw.event_type,
        series_master_id: raw.series_master_id,
        original_start,
        id: raw.id,
    })))
}

/// A `dateTimeTimeZone` in UTC: `2026-12-01T09:00:00.0000000` with `timeZone` `UTC`.
fn graph_time(value: &RawDateTime) -> Result<DateTime<Utc>, String> {
    match value.time_zone.as_deref() {
        None | Some("UTC" | "Etc/UTC" | "Coordinated Universal Time") => {}
        Some(other) => return Err(format!("time zone {other:?} where UTC was asked for")),
    }
    let text = value.date_time.trim_end_matches('Z');
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .map(|t| t.and_utc())
        .map_err(|e| format!("{:?} is not a date and time: {e}", value.date_time))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chrono::TimeZone;

    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/tests/fixtures/graph/delta/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn a_first_page_holds_events_and_a_next_link_to_follow() {
        let page = parse_delta_page(&fixture("page1-nextlink.json")).unwrap();
        assert!(matches!(&page.link, DeltaLink::Next(l) if l.contains("$skiptoken=")));
        assert_eq!(page.entries.len(), 2);
        let DeltaEntry::Changed(event) = &page.entries[0] else {
            panic!("an event");
        };
        assert_eq!(event.subject.as_deref(), Some("Quarterly review"));
        assert_eq!(event.organizer.as_deref(), Some("alex@contoso.example"));
        assert_eq!(event.location.as_deref(), Some("Room 1"));
        assert_eq!(
            event.start,
            Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap()
        );
        assert_eq!(
            event.end,
            Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap()
        );
        assert_eq!(event.event_type, Some(EventType::SingleInstance));
        assert_eq!(event.original_start, None);
        let DeltaEntry::Changed(occurrence) = &page.entries[1] else {
            panic!("an occurrence");
        };
        assert_eq!(occurrence.event_type, Some(EventType::Occurrence));
        assert_eq!(occurrence.series_master_id.as_deref(), Some("AAMkMaster=="));
        assert_eq!(
            occurrence.original_start,
            Some(Utc.with_ymd_and_hms(2026, 12, 2, 8, 0, 0).unwrap())
        );
        assert!(occurrence.is_cancelled);
    }

    #[test]
    fn the_last_page_ends_the_round_with_a_delta_link_kept_verbatim() {
        let page = parse_delta_page(&fixture("page2-deltalink.json")).unwrap();
        assert_eq!(
            page.link,
            DeltaLink::Delta(
                "https://graph.microsoft.com/v1.0/users/room1@contoso.example/calendarView/delta?$deltatoken=R0usmci39Oq%2b-x_pH2"
                    .into()
            )
        );
        assert_eq!(
            page.entries,
            vec![DeltaEntry::Removed {
                id: "AAMkGone==".into()
            }]
        );
    }

    #[test]
    fn an_empty_page_with_a_next_link_still_means_more_pages() {
        let page = parse_delta_page(br#"{"value":[],"@odata.nextLink":"https://g/next"}"#).unwrap();
        assert_eq!(page.link, DeltaLink::Next("https://g/next".into()));
        assert!(page.entries.is_empty());
    }

    #[test]
    fn a_page_without_a_link_or_with_a_local_time_zone_is_refused() {
        assert_eq!(
            parse_delta_page(br#"{"value":[]}"#),
            Err(DeltaError::NoLink)
        );
        let local = br#"{"value":[{"id":"a","start":{"dateTime":"2026-12-01T09:00:00.0000000","timeZone":"Pacific Standard Time"},"end":{"dateTime":"2026-12-01T10:00:00.0000000","timeZone":"UTC"}}],"@odata.deltaLink":"https://g/d"}"#;
        assert!(matches!(
            parse_delta_page(local),
            Err(DeltaError::Event { id, .. }) if id == "a"
        ));
        let no_end = br#"{"value":[{"id":"b","start":{"dateTime":"2026-12-01T09:00:00","timeZone":"UTC"}}],"@odata.deltaLink":"https://g/d"}"#;
        assert!(matches!(
            parse_delta_page(no_end),
            Err(DeltaError::Event { .. })
        ));
        assert!(matches!(
            parse_delta_page(b"<html/>"),
            Err(DeltaError::Json(_))
        ));
    }
}
