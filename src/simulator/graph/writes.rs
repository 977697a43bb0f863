//! Graph's event writes: `POST /users/{id}/events` (and `/calendar/events`), `PATCH` and
//! `DELETE /users/{id}/events/{id}`, and `POST …/events/{id}/permanentDelete`. Each goes
//! through the calendar's own create, update and delete, so delta, `SyncFolderItems` and
//! the pushes of both protocols see the change as one made through the control API.
//!
//! As with EWS, what is stored is what the simulator models: subject, start, end,
//! `isAllDay`, the location's display name and a daily or weekly recurrence with an
//! interval of 1 and a numbered or end-date range; the room organizes what is booked in
//! it. Other properties are accepted and not kept. Times are read in their `timeZone` when
//! it is UTC or a zone without daylight saving time ([`zones`]); any other zone is refused
//! with Graph's `TimeZoneNotSupportedException` rather than misread. `DELETE` moves the event to Deleted Items (EWS subscribers see a `MovedEvent`)
//! and `permanentDelete` removes it, as Graph documents the two.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::{Map, Value};

use super::{
    AppState, bad_json, bad_request, event_entity, graph_error, parse_json_object, unknown_user,
    zones,
};
use crate::simulator::calendar::{
    Applied, Meeting, RangeEnd, Recurrence, client_recurrence, occurrence_id,
};
use crate::simulator::ids;
use crate::simulator::{SimError, push};

/// A refusal, boxed: a `Response` is too large to travel in every `Err`.
type Refused = Box<Response>;

/// A `dateTimeTimeZone` (`{"dateTime","timeZone"}`): a wall-clock time in its zone (UTC
/// when none is named), as the instant it names.
fn date_time_time_zone(value: &Value, name: &str) -> Result<DateTime<Utc>, Refused> {
    let zone_name = value
        .get("timeZone")
        .and_then(Value::as_str)
        .unwrap_or("UTC");
    // "Z" is how some clients write UTC; it is not a zone name.
    let zone = if zone_name.eq_ignore_ascii_case("Z") {
        zones::Zone::named("UTC")
    } else {
        zones::Zone::named(zone_name)
    };
    let Some(zone) = zone else {
        return Err(Box::new(graph_error(
            StatusCode::BAD_REQUEST,
            "TimeZoneNotSupportedException",
            &format!(
                "A valid TimeZone value must be specified. The following TimeZone value is not supported: '{zone_name}'. (The simulator reads times in UTC and in zones without daylight saving time only.)"
            ),
        )));
    };
    let unreadable = || {
        Box::new(bad_request(&format!(
            "{name}.dateTime is missing or not a date-time."
        )))
    };
    let text = value
        .get("dateTime")
        .and_then(Value::as_str)
        .ok_or_else(unreadable)?;
    // A time with an offset names its instant whatever the zone says.
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .and_then(|local| zone.to_utc(local))
        .ok_or_else(unreadable)
}

/// A `patternedRecurrence` as the simulator can hold it, with whether it ends on a date.
fn recurrence(value: &Value, start: DateTime<Utc>) -> Result<(Recurrence, bool), Refused> {
    let invalid = |what: &str| Box::new(bad_request(&format!("Invalid recurrence: {what}.")));
    let pattern = value.get("pattern").ok_or_else(|| invalid("no pattern"))?;
    let range = value.get("range").ok_or_else(|| invalid("no range"))?;
    let weekly = match pattern.get("type").and_then(Value::as_str) {
        Some("daily") => false,
        Some("weekly") => true,
        other => {
            return Err(invalid(&format!(
                "the simulator keeps daily and weekly series, not {other:?}"
            )));
        }
    };
    let interval = pattern
        .get("interval")
        .and_then(Value::as_u64)
        .and_then(|i| u32::try_from(i).ok())
        .unwrap_or(1);
    let days: Vec<String> = pattern
        .get("daysOfWeek")
        .and_then(Value::as_array)
        .map(|d| {
            d.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let end = match range.get("type").and_then(Value::as_str) {
        Some("numbered") => RangeEnd::Count(
            range
                .get("numberOfOccurrences")
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| invalid("numberOfOccurrences is missing"))?,
        ),
        Some("endDate") => RangeEnd::Date(
            range
                .get("endDate")
                .and_then(Value::as_str)
                .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
                .ok_or_else(|| invalid("endDate is missing"))?,
        ),
        _ => RangeEnd::Never,
    };
    client_recurrence(weekly, interval, &days, start, end).map_err(|e| invalid(&e))
}

fn string(map: &Map<String, Value>, name: &str) -> Option<String> {
    map.get(name).and_then(Value::as_str).map(str::to_owned)
}

fn location(map: &Map<String, Value>) -> Option<String> {
    map.get("location")
        .map(|l| string_at(l, "displayName").unwrap_or_default())
}

fn string_at(value: &Value, name: &str) -> Option<String> {
    value.get(name).and_then(Value::as_str).map(str::to_owned)
}

/// An event as a write answers it: in the id format and time zone the request prefers.
fn answer(
    shared: &AppState,
    status: StatusCode,
    room: &str,
    id: &str,
    headers: &HeaderMap,
) -> Response {
    let instance = shared.lock().cal.room(room).and_then(|r| r.instance(id));
    let Some(instance) = instance else {
        return item_not_found();
    };
    (
        status,
        axum::Json(event_entity(shared, room, &instance, headers)),
    )
        .into_response()
}

fn item_not_found() -> Response {
    graph_error(
        StatusCode::NOT_FOUND,
        "ErrorItemNotFound",
        "The specified object was not found in the store.",
    )
}

fn sim_error(e: &SimError) -> Response {
    match e {
        SimError::UnknownItem(_) => item_not_found(),
        SimError::UnknownRoom(room) => unknown_user(room),
        other => bad_request(&other.to_string()),
    }
}

/// The room a path names (by UPN or object id), as its key.
fn room_of(shared: &AppState, user: &str) -> Result<String, Refused> {
    shared
        .lock()
        .cal
        .user(user)
        .map(|r| r.address.clone())
        .ok_or_else(|| Box::new(unknown_user(user)))
}

/// `POST /users/{id}/events`: books a meeting or a series in the room's calendar.
pub(super) async fn create_event(
    State(shared): State<AppState>,
    Path(user): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(map) = parse_json_object(&body) else {
        return bad_json();
    };
    let room = match room_of(&shared, &user) {
        Ok(room) => room,
        Err(r) => return *r,
    };
    let (Some(start), Some(end)) = (map.get("start"), map.get("end")) else {
        return bad_request("An event needs a start and an end.");
    };
    let (start, end) = match (
        date_time_time_zone(start, "start"),
        date_time_time_zone(end, "end"),
    ) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(r), _) | (_, Err(r)) => return *r,
    };
    if end < start {
        return bad_request("The event's end is before its start.");
    }
    let series = match map.get("recurrence").filter(|r| !r.is_null()) {
        None => None,
        Some(r) => match recurrence(r, start) {
            Ok(r) => Some(r),
            Err(refusal) => return *refusal,
        },
    };
    let meeting = Meeting {
        subject: string(&map, "subject").unwrap_or_default(),
        // The mailbox the event is created in organizes it.
        organizer: room.clone(),
        start,
        end,
        is_all_day: map
            .get("isAllDay")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        location: location(&map).unwrap_or_default(),
    };
    let created = {
        let mut state = shared.lock();
        state
            .cal
            .create(&room, meeting, series.map(|(r, _)| r))
            .inspect(|applied| {
                if series.is_some_and(|(_, by_date)| by_date) {
                    state.cal.mark_ends_by_date(&room, &applied.item.id);
                }
            })
    };
    match created {
        Ok(applied) => {
            push::on_change(&shared, &applied);
            answer(
                &shared,
                StatusCode::CREATED,
                &room,
                &applied.item.id,
                &headers,
            )
        }
        Err(e) => sim_error(&e),
    }
}

/// `PATCH /users/{id}/events/{id}`: changes a meeting or a series (subject, location,
/// times, `isAllDay`, recurrence), or an occurrence's times (it becomes an exception).
pub(super) async fn update_event(
    State(shared): State<AppState>,
    Path((user, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(map) = parse_json_object(&body) else {
        return bad_json();
    };
    let room = match room_of(&shared, &user) {
        Ok(room) => room,
        Err(r) => return *r,
    };
    let id = ids::ews_id(&id);
    let Some(instance) = shared.lock().cal.room(&room).and_then(|r| r.instance(&id)) else {
        return item_not_found();
    };
    let parse = |name: &str| {
        map.get(name)
            .map(|v| date_time_time_zone(v, name))
            .transpose()
    };
    let (start, end) = match (parse("start"), parse("end")) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(r), _) | (_, Err(r)) => return *r,
    };
    let subject = string(&map, "subject");
    let place = location(&map);
    let all_day = map.get("isAllDay").and_then(Value::as_bool);
    let new_recurrence = map.get("recurrence").filter(|r| !r.is_null());
    let applied: Result<Applied, Refused> = if let Some(slot) = &instance.slot {
        if subject.is_some() || place.is_some() || all_day.is_some() || new_recurrence.is_some() {
            return bad_request(
                "The simulator keeps only the times of a single occurrence; change the series to change the rest.",
            );
        }
        let (start, end) = (start.unwrap_or(instance.start), end.unwrap_or(instance.end));
        if end < start {
            return bad_request("The event's end is before its start.");
        }
        shared
            .lock()
            .cal
            .move_occurrence(&room, &instance.item.id, slot.index, start, end)
            .map(|(applied, _)| applied)
            .map_err(|e| Box::new(sim_error(&e)))
    } else {
        let start_after = start.unwrap_or(instance.item.meeting.start);
        let series = match new_recurrence
            .map(|r| recurrence(r, start_after))
            .transpose()
        {
            Ok(s) => s,
            Err(refusal) => return *refusal,
        };
        shared
            .lock()
            .cal
            .update(&room, &instance.item.id, |item| {
                let m = &mut item.meeting;
                if let Some(s) = subject {
                    m.subject = s;
                }
                if let Some(l) = place {
                    m.location = l;
                }
                if let Some(a) = all_day {
                    m.is_all_day = a;
                }
                m.start = start.unwrap_or(m.start);
                m.end = end.unwrap_or(m.end);
                if let Some((recurrence, by_date)) = series {
                    let count = recurrence.count();
                    item.recurrence = Some(recurrence);
                    item.ends_by_date = by_date;
                    item.exceptions.retain(|i, _| *i < count);
                    item.deleted_occurrences.retain(|i| *i < count);
                }
                Ok(())
            })
            .map_err(|e| Box::new(sim_error(&e)))
    };
    match applied {
        Ok(applied) => {
            push::on_change(&shared, &applied);
            let shown = match &instance.slot {
                Some(slot) => occurrence_id(&applied.item.id, slot.index),
                None => applied.item.id,
            };
            answer(&shared, StatusCode::OK, &room, &shown, &headers)
        }
        Err(r) => *r,
    }
}

/// Deletes an event: an occurrence leaves its series; a meeting or series is moved to
/// Deleted Items (`soft`) or removed for good.
async fn delete(shared: &AppState, user: &str, id: &str, soft: bool) -> Response {
    let room = match room_of(shared, user) {
        Ok(room) => room,
        Err(r) => return *r,
    };
    let id = ids::ews_id(id);
    let deleted = {
        let mut state = shared.lock();
        let Some(instance) = state.cal.room(&room).and_then(|r| r.instance(&id)) else {
            return item_not_found();
        };
        match &instance.slot {
            Some(slot) => state
                .cal
                .delete_occurrence(&room, &instance.item.id, slot.index)
                .map(|(applied, _)| applied),
            None => state.cal.delete(&room, &instance.item.id, soft),
        }
    };
    match deleted {
        Ok(applied) => {
            push::on_change(shared, &applied);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => sim_error(&e),
    }
}

/// `DELETE /users/{id}/events/{id}`: to Deleted Items.
pub(super) async fn delete_event(
    State(shared): State<AppState>,
    Path((user, id)): Path<(String, String)>,
) -> Response {
    delete(&shared, &user, &id, true).await
}

/// `POST /users/{id}/events/{id}/permanentDelete`: gone for good.
pub(super) async fn permanent_delete_event(
    State(shared): State<AppState>,
    Path((user, id)): Path<(String, String)>,
) -> Response {
    delete(&shared, &user, &id, false).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    #[test]
    fn times_are_read_in_utc_and_other_zones_are_refused_not_misread() {
        let at = date_time_time_zone(
            &json!({"dateTime": "2026-12-02T09:00:00.0000000", "timeZone": "UTC"}),
            "start",
        );
        assert_eq!(
            at.ok(),
            Some(Utc.with_ymd_and_hms(2026, 12, 2, 9, 0, 0).unwrap())
        );
        let refused = date_time_time_zone(
            &json!({"dateTime": "2026-12-02T09:00:00", "timeZone": "Pacific Standard Time"}),
            "start",
        );
        assert_eq!(
            refused.err().map(|r| r.status()),
            Some(StatusCode::BAD_REQUEST)
        );
    }

    #[test]
    fn a_weekly_numbered_or_end_dated_recurrence_is_read_and_a_monthly_one_refused() {
        // 2026-12-01 is a Tuesday.
        let start = Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap();
        let weekly = json!({
            "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["tuesday"]},
            "range": {"type": "numbered", "startDate": "2026-12-01", "numberOfOccurrences": 4},
        });
        assert_eq!(
            recurrence(&weekly, start).ok(),
            Some((Recurrence::Weekly { count: 4 }, false))
        );
        let daily = json!({
            "pattern": {"type": "daily", "interval": 1},
            "range": {"type": "endDate", "startDate": "2026-12-01", "endDate": "2026-12-03"},
        });
        assert_eq!(
            recurrence(&daily, start).ok(),
            Some((Recurrence::Daily { count: 3 }, true))
        );
        let monthly = json!({
            "pattern": {"type": "absoluteMonthly", "interval": 1, "dayOfMonth": 1},
            "range": {"type": "numbered", "numberOfOccurrences": 3},
        });
        assert!(recurrence(&monthly, start).is_err());
    }
}
