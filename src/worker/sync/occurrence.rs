//! From what a backend says about a calendar item to an [`Occurrence`], the one shape a row of
//! `reservations` is written from.

use crate::domain::Occurrence;
use crate::ews::{CalendarItem, CalendarItemType};
use crate::graph::delta::Event;

/// A Graph event of the calendar view. `series_uid` is the series master's `iCalUId` for an
/// occurrence or exception (Graph gives each occurrence its own), the event's own otherwise.
pub(crate) fn from_graph(event: &Event, series_uid: Option<String>) -> Occurrence {
    let series_uid = if event.series_master_id.is_some() {
        series_uid
    } else {
        event.ical_uid.clone()
    };
    Occurrence {
        item_id: event.id.clone(),
        ical_uid: event.ical_uid.clone(),
        series_uid,
        series_master_id: event.series_master_id.clone(),
        original_start: event.original_start,
        subject: event.subject.clone(),
        organizer: event.organizer.clone(),
        location: non_empty(event.location.as_deref()),
        starts_at: event.start,
        ends_at: event.end,
        is_all_day: event.is_all_day,
        is_cancelled: event.is_cancelled,
        change_key: event.change_key.clone(),
    }
}

/// Why an EWS item cannot be a reservation row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NotAnOccurrence {
    #[error("item {0} has no start or end")]
    NoTimes(String),
    #[error("item {0} is a series master, not an occurrence")]
    Master(String),
}

/// An EWS calendar item read with `GetItem`: a single meeting, an occurrence or an exception
/// (whose `series_master_id` the caller knows from the series it expanded). All occurrences of
/// an EWS series share the series' UID.
pub(crate) fn from_ews(
    item: &CalendarItem,
    series_master_id: Option<&str>,
) -> Result<Occurrence, NotAnOccurrence> {
    if item.calendar_item_type == Some(CalendarItemType::RecurringMaster) {
        return Err(NotAnOccurrence::Master(item.id.clone()));
    }
    let (Some(start), Some(end)) = (item.start, item.end) else {
        return Err(NotAnOccurrence::NoTimes(item.id.clone()));
    };
    let organizer = item.organizer.as_ref().and_then(|o| {
        // An SMTP address where Exchange gives one; the display name otherwise (an EX
        // address is an internal X.500 path that means nothing to ROOMS).
        let smtp = o
            .email_address
            .as_deref()
            .filter(|_| {
                o.routing_type
                    .as_deref()
                    .is_none_or(|r| r.eq_ignore_ascii_case("SMTP"))
            })
            .filter(|a| a.contains('@'));
        non_empty(smtp).or_else(|| non_empty(o.name.as_deref()))
    });
    Ok(Occurrence {
        item_id: item.id.clone(),
        ical_uid: item.uid.clone(),
        series_uid: item.uid.clone(),
        series_master_id: series_master_id.map(str::to_owned),
        original_start: item.original_start.or(item.recurrence_id),
        subject: item.subject.clone(),
        organizer,
        location: non_empty(item.location.as_deref()),
        starts_at: start,
        ends_at: end,
        is_all_day: item.is_all_day.unwrap_or(false),
        is_cancelled: item.is_cancelled.unwrap_or(false),
        change_key: item.change_key.clone(),
    })
}

fn non_empty(text: Option<&str>) -> Option<String> {
    text.map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::ews::Organizer;

    fn ews_item() -> CalendarItem {
        CalendarItem {
            id: "AAMk1".into(),
            change_key: Some("CK1".into()),
            parent_folder_id: None,
            subject: Some("Board".into()),
            uid: Some("UID-1".into()),
            start: Some(Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap()),
            end: Some(Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap()),
            is_all_day: None,
            is_cancelled: Some(true),
            calendar_item_type: Some(CalendarItemType::Exception),
            organizer: Some(Organizer {
                name: Some("Alex".into()),
                email_address: Some("alex@contoso.example".into()),
                routing_type: Some("SMTP".into()),
            }),
            location: Some("  ".into()),
            is_recurring: Some(true),
            recurrence_id: Some(Utc.with_ymd_and_hms(2026, 12, 1, 8, 0, 0).unwrap()),
            original_start: None,
            appointment_sequence_number: None,
            last_modified: None,
        }
    }

    #[test]
    fn an_ews_exception_keeps_its_series_uid_master_and_original_start() {
        let o = from_ews(&ews_item(), Some("MASTER")).unwrap();
        assert_eq!(o.series_uid.as_deref(), Some("UID-1"));
        assert_eq!(o.series_master_id.as_deref(), Some("MASTER"));
        assert_eq!(
            o.original_start,
            Some(Utc.with_ymd_and_hms(2026, 12, 1, 8, 0, 0).unwrap())
        );
        assert!(o.is_cancelled);
        assert_eq!(o.location, None, "a blank location is no location");
        assert_eq!(o.organizer.as_deref(), Some("alex@contoso.example"));
    }

    #[test]
    fn an_ews_organizer_without_an_smtp_address_is_stored_by_name() {
        let mut item = ews_item();
        item.organizer = Some(Organizer {
            name: Some("Alex Wilber".into()),
            email_address: Some("/O=CONTOSO/OU=EXCHANGE/CN=RECIPIENTS/CN=ALEX".into()),
            routing_type: Some("EX".into()),
        });
        assert_eq!(
            from_ews(&item, None).unwrap().organizer.as_deref(),
            Some("Alex Wilber")
        );
    }

    #[test]
    fn a_series_master_or_an_item_without_times_is_no_occurrence() {
        let mut master = ews_item();
        master.calendar_item_type = Some(CalendarItemType::RecurringMaster);
        assert_eq!(
            from_ews(&master, None),
            Err(NotAnOccurrence::Master("AAMk1".into()))
        );
        let mut timeless = ews_item();
        timeless.end = None;
        assert_eq!(
            from_ews(&timeless, None),
            Err(NotAnOccurrence::NoTimes("AAMk1".into()))
        );
    }

    #[test]
    fn a_graph_occurrence_takes_the_series_uid_given_and_a_single_event_its_own() {
        let event = Event {
            id: "g1".into(),
            change_key: None,
            ical_uid: Some("OCC-UID".into()),
            subject: None,
            organizer: None,
            location: None,
            start: Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap(),
            end: Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap(),
            is_all_day: false,
            is_cancelled: false,
            event_type: None,
            series_master_id: Some("m1".into()),
            original_start: None,
        };
        assert_eq!(
            from_graph(&event, Some("SERIES".into()))
                .series_uid
                .as_deref(),
            Some("SERIES")
        );
        let single = Event {
            series_master_id: None,
            ..event
        };
        assert_eq!(
            from_graph(&single, Some("ignored".into()))
                .series_uid
                .as_deref(),
            Some("OCC-UID")
        );
    }
}
