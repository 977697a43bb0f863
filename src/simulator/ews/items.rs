//! EWS `CreateItem`, `UpdateItem` and `DeleteItem` of calendar items in the impersonated
//! room's calendar: how a client books, moves and removes meetings and series. Each goes
//! through the calendar's own create, update and delete, so the change log, Graph delta,
//! `SyncFolderItems` and the pushes of both protocols see it exactly as a change made
//! through the control API.
//!
//! What is stored is what the simulator models: subject, start, end, all-day flag, location
//! and, for a series, a daily or weekly pattern with an interval of 1 and a numbered or
//! end-date range; the organizer is the mailbox the item is created in. Other properties a
//! client sends (reminders, sensitivity, attendees, body...) are accepted and not kept.
//! Times without an offset are read as UTC. The attributes Exchange requires of calendar
//! items are required here too (`SendMeetingInvitations`,
//! `SendMeetingInvitationsOrCancellations`, `SendMeetingCancellations`, `DeleteType`), and a
//! stale `ChangeKey` is refused unless `ConflictResolution="AlwaysOverwrite"`.

use std::sync::Arc;

use axum::response::Response;
use chrono::{DateTime, NaiveDate, Utc};

use super::folders::attrs_of;
use super::{
    Caller, Target, error_message, operation_response, parse_ews_time, unreachable_folder,
};
use crate::ews::tree::{Node, esc};
use crate::simulator::calendar::{
    Applied, Instance, Meeting, RangeEnd, Recurrence, Room, client_recurrence, occurrence_id,
};
use crate::simulator::{Shared, SimError, push};

/// The values `SendMeetingInvitations`, `SendMeetingCancellations` and
/// `SendMeetingInvitationsOrCancellations` take (the last also `SendToChangedAndSaveCopy`
/// and `SendOnlyToChanged`).
const SEND_VALUES: [&str; 5] = [
    "SendToNone",
    "SendOnlyToAll",
    "SendToAllAndSaveCopy",
    "SendOnlyToChanged",
    "SendToChangedAndSaveCopy",
];

/// An error response message with its code and text.
type Refusal = (&'static str, String);

fn refusal(code: &'static str, text: impl Into<String>) -> Refusal {
    (code, text.into())
}

/// `xs:boolean`: `true`, `false`, `1` or `0`.
fn parse_bool(text: &str) -> Option<bool> {
    match text.trim() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// `xs:date`, with or without a zone suffix (`2026-12-01`, `2026-12-01Z`,
/// `2026-12-01+01:00`).
fn parse_date(text: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(text.trim().get(..10)?, "%Y-%m-%d").ok()
}

fn parse_time_of(node: &Node, what: &str) -> Result<DateTime<Utc>, Refusal> {
    parse_ews_time(node.text.trim()).ok_or_else(|| {
        refusal(
            "ErrorInvalidValueForProperty",
            format!("{what} is not a date-time: {}", node.text),
        )
    })
}

/// A `t:Recurrence` as the simulator can hold it, given the series' first start, with
/// whether it ends on a date.
fn parse_recurrence(node: &Node, start: DateTime<Utc>) -> Result<(Recurrence, bool), Refusal> {
    let invalid = |what: String| refusal("ErrorCalendarInvalidRecurrence", what);
    let (weekly, pattern) = match (
        node.child("DailyRecurrence"),
        node.child("WeeklyRecurrence"),
    ) {
        (Some(p), _) => (false, p),
        (None, Some(p)) => (true, p),
        (None, None) => {
            return Err(invalid(
                "The simulator keeps daily and weekly series only.".to_owned(),
            ));
        }
    };
    let interval = pattern
        .child("Interval")
        .map_or(Some(1), |i| i.text.trim().parse::<u32>().ok())
        .ok_or_else(|| invalid("Interval is not a number.".to_owned()))?;
    let days: Vec<String> = pattern
        .child("DaysOfWeek")
        .map(|d| d.text.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let end = if let Some(range) = node.child("NumberedRecurrence") {
        RangeEnd::Count(
            range
                .child("NumberOfOccurrences")
                .and_then(|n| n.text.trim().parse::<u32>().ok())
                .ok_or_else(|| invalid("NumberOfOccurrences is missing.".to_owned()))?,
        )
    } else if let Some(range) = node.child("EndDateRecurrence") {
        RangeEnd::Date(
            range
                .child("EndDate")
                .and_then(|d| parse_date(&d.text))
                .ok_or_else(|| invalid("EndDate is missing.".to_owned()))?,
        )
    } else {
        RangeEnd::Never
    };
    client_recurrence(weekly, interval, &days, start, end).map_err(invalid)
}

/// The `Send…` attribute a calendar operation requires, checked.
fn required_send(value: Option<&str>, code: &'static str, name: &str) -> Result<(), Refusal> {
    match value {
        Some(v) if SEND_VALUES.contains(&v) => Ok(()),
        Some(v) => Err(refusal(
            "ErrorInvalidRequest",
            format!("{v} is not a valid value of {name}."),
        )),
        None => Err(refusal(
            code,
            format!("{name} attribute is required for calendar items."),
        )),
    }
}

/// The room a `SavedItemFolderId` (or its absence: the caller's calendar) points at.
fn saved_folder_room(shared: &Shared, op: &Node, who: &Caller) -> Result<String, Refusal> {
    let folder = op.child("SavedItemFolderId");
    if let Some(id) = folder.and_then(|f| f.child("FolderId")) {
        let wanted = id.attr("Id").unwrap_or_default();
        let state = shared.lock();
        return who
            .mailbox
            .as_deref()
            .and_then(|m| state.cal.room(m))
            .filter(|r| r.calendar_folder_id() == wanted)
            .map(|r| r.address.clone())
            .ok_or_else(|| {
                refusal(
                    "ErrorFolderNotFound",
                    "The specified folder could not be found in the store.",
                )
            });
    }
    let distinguished = folder.and_then(|f| f.child("DistinguishedFolderId"));
    if let Some(d) = distinguished
        && d.attr("Id") != Some("calendar")
    {
        return Err(refusal(
            "ErrorFolderNotFound",
            "The simulator keeps calendar items in the calendar folder only.",
        ));
    }
    match who.target(distinguished) {
        Target::Own(room) => Ok(room),
        other => {
            let (code, text) = unreachable_folder(shared, &other);
            Err((code, text))
        }
    }
}

fn item_id_xml(id: &str, change_key: &str) -> String {
    format!(
        r#"<t:CalendarItem><t:ItemId Id="{}" ChangeKey="{}"/></t:CalendarItem>"#,
        esc(id),
        esc(change_key)
    )
}

/// One `t:CalendarItem` of a `CreateItem`, booked in `room`.
fn create_one(shared: &Arc<Shared>, room: &str, node: &Node) -> Result<String, Refusal> {
    let text = |name: &str| node.child(name).map(|n| n.text.clone());
    let (Some(start), Some(end)) = (node.child("Start"), node.child("End")) else {
        return Err(refusal(
            "ErrorMissingInformation",
            "A calendar item needs a Start and an End.",
        ));
    };
    let (start, end) = (parse_time_of(start, "Start")?, parse_time_of(end, "End")?);
    if end < start {
        return Err(refusal(
            "ErrorCalendarEndDateIsEarlierThanStartDate",
            "EndDate is earlier than StartDate",
        ));
    }
    let is_all_day = match node.child("IsAllDayEvent") {
        None => false,
        Some(n) => parse_bool(&n.text).ok_or_else(|| {
            refusal(
                "ErrorInvalidValueForProperty",
                "IsAllDayEvent is not a boolean.",
            )
        })?,
    };
    let recurrence = node
        .child("Recurrence")
        .map(|r| parse_recurrence(r, start))
        .transpose()?;
    let by_date = recurrence.is_some_and(|(_, by_date)| by_date);
    let recurrence = recurrence.map(|(r, _)| r);
    let meeting = Meeting {
        subject: text("Subject").unwrap_or_default(),
        // The mailbox the item is created in organizes it.
        organizer: room.to_owned(),
        start,
        end,
        is_all_day,
        location: text("Location").unwrap_or_default(),
    };
    let applied = {
        let mut state = shared.lock();
        let applied = state
            .cal
            .create(room, meeting, recurrence)
            .map_err(|e| sim_refusal(&e))?;
        if by_date {
            state.cal.mark_ends_by_date(room, &applied.item.id);
        }
        applied
    };
    let xml = item_id_xml(&applied.item.id, &applied.item.change_key());
    push::on_change(shared, &applied);
    Ok(xml)
}

/// The EWS code for a change the calendar refused.
fn sim_refusal(e: &SimError) -> Refusal {
    match e {
        SimError::UnknownItem(_) => refusal(
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        ),
        SimError::UnknownRoom(room) => refusal(
            "ErrorNonExistentMailbox",
            format!("The SMTP address has no mailbox associated with it: {room}"),
        ),
        other => refusal("ErrorInvalidOperation", other.to_string()),
    }
}

/// `CreateItem` of calendar items (single meetings and series).
pub(super) fn create_item(shared: &Arc<Shared>, op: &Node, body: &[u8], who: &Caller) -> Response {
    let fail = |(code, text): Refusal| error_message("CreateItem", code, &text, "<m:Items/>");
    let send = attrs_of(body, "CreateItem", ["SendMeetingInvitations"])
        .into_iter()
        .next()
        .and_then(|[s]| s);
    let items: Vec<&Node> = op
        .child("Items")
        .map(|i| i.children.iter().collect())
        .unwrap_or_default();
    let mut messages = String::new();
    for node in items {
        let outcome = if node.local == "CalendarItem" {
            required_send(
                send.as_deref(),
                "ErrorSendMeetingInvitationsRequired",
                "SendMeetingInvitations",
            )
            .and_then(|()| saved_folder_room(shared, op, who))
            .and_then(|room| create_one(shared, &room, node))
        } else {
            Err(refusal(
                "ErrorInvalidItemForOperationCreateItem",
                format!(
                    "The simulator creates calendar items only, not {}.",
                    node.local
                ),
            ))
        };
        match outcome {
            Ok(item) => messages.push_str(&format!(
                r#"<m:CreateItemResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:Items>{item}</m:Items></m:CreateItemResponseMessage>"#
            )),
            Err(r) => messages.push_str(&fail(r)),
        }
    }
    operation_response("CreateItem", &messages)
}

/// Which stored item (or occurrence of it) an `ItemId` or `OccurrenceItemId` names.
#[derive(Debug, Clone)]
struct Addressed {
    room: String,
    /// The stored item: a single meeting or a series master.
    item: String,
    /// The 0-based index when an occurrence is named.
    occurrence: Option<u32>,
    /// The instance's current change key.
    change_key: String,
}

/// Resolves the id of an `ItemId` (`id`) or an `OccurrenceItemId` (`master` and its 1-based
/// `index`) in the impersonated room.
fn address(
    room: Option<&Room>,
    id: Option<&str>,
    occurrence: Option<(&str, u32)>,
) -> Result<Addressed, Refusal> {
    let not_found = || {
        refusal(
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        )
    };
    let room = room.ok_or_else(not_found)?;
    let instance: Instance = match (id, occurrence) {
        (Some(id), _) => room.instance(id).ok_or_else(|| {
            if room.is_deleted_occurrence(id) {
                refusal(
                    "ErrorCalendarOccurrenceIsDeletedFromRecurrence",
                    "Occurrence with this index was previously deleted from the recurrence.",
                )
            } else {
                not_found()
            }
        })?,
        (None, Some((master, index))) => {
            let item = room.items.get(master).ok_or_else(not_found)?;
            let count = item.recurrence.map_or(0, Recurrence::count);
            if index == 0 || index > count {
                return Err(refusal(
                    "ErrorCalendarOccurrenceIndexIsOutOfRecurrenceRange",
                    "Occurrence index is out of recurrence range.",
                ));
            }
            item.occurrence(index - 1).ok_or_else(|| {
                refusal(
                    "ErrorCalendarOccurrenceIsDeletedFromRecurrence",
                    "Occurrence with this index was previously deleted from the recurrence.",
                )
            })?
        }
        (None, None) => return Err(not_found()),
    };
    Ok(Addressed {
        room: room.address.clone(),
        item: instance.item.id.clone(),
        occurrence: instance.slot.as_ref().map(|s| s.index),
        change_key: instance.change_key(),
    })
}

/// The `OccurrenceItemId`s of a request, in document order, as master id and 1-based index.
type OccurrenceIds = std::vec::IntoIter<[Option<String>; 2]>;

fn occurrence_ids(body: &[u8]) -> OccurrenceIds {
    attrs_of(
        body,
        "OccurrenceItemId",
        ["RecurringMasterId", "InstanceIndex"],
    )
    .into_iter()
}

/// The ids `parent` names, in document order: each `ItemId` or `OccurrenceItemId` child,
/// an occurrence's attributes taken from `occurrences` (which the whole request shares, so
/// the `n`th `OccurrenceItemId` element gets the `n`th attributes).
fn named_ids<'a>(
    parent: &'a Node,
    occurrences: &mut OccurrenceIds,
) -> Vec<(&'a Node, Option<(String, u32)>)> {
    parent
        .children
        .iter()
        .filter(|c| matches!(c.local.as_str(), "ItemId" | "OccurrenceItemId"))
        .map(|c| {
            let occurrence = if c.local == "OccurrenceItemId" {
                occurrences
                    .next()
                    .and_then(|[master, index]| Some((master?, index?.trim().parse::<u32>().ok()?)))
            } else {
                None
            };
            (c, occurrence)
        })
        .collect()
}

/// The properties an `UpdateItem` change sets.
#[derive(Debug, Default)]
struct Changes {
    subject: Option<String>,
    location: Option<String>,
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
    is_all_day: Option<bool>,
    recurrence: Option<Node>,
    /// `DeleteItemField` of the recurrence: a no-op on a single meeting or an occurrence
    /// (clients that save every property send it for an unset one), refused on a series.
    drop_recurrence: bool,
}

impl Changes {
    /// Reads the `Updates` of an `ItemChange`.
    fn of(updates: &Node) -> Result<Self, Refusal> {
        let mut changes = Self::default();
        for update in &updates.children {
            let Some(uri) = update.child("FieldURI").and_then(|f| f.attr("FieldURI")) else {
                // Extended and indexed properties are not modelled.
                continue;
            };
            let value = update
                .child("CalendarItem")
                .and_then(|c| c.children.first());
            let deleting = update.local == "DeleteItemField";
            match (uri, value, deleting) {
                ("item:Subject", _, true) => changes.subject = Some(String::new()),
                ("calendar:Location", _, true) => changes.location = Some(String::new()),
                ("item:Subject", Some(v), false) => changes.subject = Some(v.text.clone()),
                ("calendar:Location", Some(v), false) => changes.location = Some(v.text.clone()),
                ("calendar:Start", Some(v), false) => {
                    changes.start = Some(parse_time_of(v, "Start")?);
                }
                ("calendar:End", Some(v), false) => changes.end = Some(parse_time_of(v, "End")?),
                ("calendar:IsAllDayEvent", Some(v), false) => {
                    changes.is_all_day = Some(parse_bool(&v.text).ok_or_else(|| {
                        refusal(
                            "ErrorInvalidValueForProperty",
                            "IsAllDayEvent is not a boolean.",
                        )
                    })?);
                }
                ("calendar:Recurrence", Some(v), false) => changes.recurrence = Some(v.clone()),
                ("calendar:Recurrence", _, true) => changes.drop_recurrence = true,
                ("calendar:Start" | "calendar:End", _, true) => {
                    return Err(refusal(
                        "ErrorInvalidPropertyDelete",
                        format!("{uri} cannot be deleted."),
                    ));
                }
                // Everything else is accepted and not kept (see the module docs).
                _ => {}
            }
        }
        Ok(changes)
    }

    /// Whether the changes set more than the times of an occurrence of `series`: a value
    /// equal to the series' own is no change (clients that save every property send those).
    fn change_more_than_times(&self, series: &Meeting) -> bool {
        self.subject.as_ref().is_some_and(|s| *s != series.subject)
            || self
                .location
                .as_ref()
                .is_some_and(|l| *l != series.location)
            || self.is_all_day.is_some_and(|a| a != series.is_all_day)
            || self.recurrence.is_some()
    }
}

/// Applies one `ItemChange`; returns the new id and change key.
fn update_one(
    shared: &Arc<Shared>,
    target: &Addressed,
    changes: Changes,
) -> Result<(String, String), Refusal> {
    let applied: Applied = if let Some(index) = target.occurrence {
        let current = {
            let state = shared.lock();
            state
                .cal
                .room(&target.room)
                .and_then(|r| r.items.get(&target.item))
                .and_then(|i| i.occurrence(index))
                .map(|o| (o.start, o.end, o.item.meeting))
        };
        let Some((start, end, series)) = current else {
            return Err(sim_refusal(&SimError::UnknownItem(target.item.clone())));
        };
        if changes.change_more_than_times(&series) {
            return Err(refusal(
                "ErrorInvalidOperation",
                "The simulator keeps only the times of a single occurrence; change the series to change the rest.",
            ));
        }
        let (start, end) = (changes.start.unwrap_or(start), changes.end.unwrap_or(end));
        if end < start {
            return Err(refusal(
                "ErrorCalendarEndDateIsEarlierThanStartDate",
                "EndDate is earlier than StartDate",
            ));
        }
        let moved =
            shared
                .lock()
                .cal
                .move_occurrence(&target.room, &target.item, index, start, end);
        match moved {
            Ok((applied, _)) => applied,
            Err(SimError::InvalidMeeting(_)) => {
                return Err(refusal(
                    "ErrorOccurrenceCrossingBoundary",
                    "An occurrence cannot be moved onto or past a neighbouring occurrence.",
                ));
            }
            Err(e) => return Err(sim_refusal(&e)),
        }
    } else {
        let mut refused = None;
        let updated = shared
            .lock()
            .cal
            .update(&target.room, &target.item, |item| {
                let m = &mut item.meeting;
                if let Some(s) = changes.subject {
                    m.subject = s;
                }
                if let Some(l) = changes.location {
                    m.location = l;
                }
                if let Some(a) = changes.is_all_day {
                    m.is_all_day = a;
                }
                m.start = changes.start.unwrap_or(m.start);
                m.end = changes.end.unwrap_or(m.end);
                if changes.drop_recurrence
                    && changes.recurrence.is_none()
                    && item.recurrence.is_some()
                {
                    refused = Some(refusal(
                        "ErrorInvalidOperation",
                        "The simulator cannot turn a series into a single meeting; delete the series and book the meeting.",
                    ));
                    return Err(SimError::InvalidMeeting("recurrence dropped".to_owned()));
                }
                if m.end < m.start {
                    refused = Some(refusal(
                        "ErrorCalendarEndDateIsEarlierThanStartDate",
                        "EndDate is earlier than StartDate",
                    ));
                    return Err(SimError::InvalidMeeting("end before start".to_owned()));
                }
                if let Some(node) = &changes.recurrence {
                    let (recurrence, by_date) = match parse_recurrence(node, m.start) {
                        Ok(r) => r,
                        Err(r) => {
                            refused = Some(r);
                            return Err(SimError::InvalidMeeting("recurrence".to_owned()));
                        }
                    };
                    let count = recurrence.count();
                    item.recurrence = Some(recurrence);
                    item.ends_by_date = by_date;
                    item.exceptions.retain(|i, _| *i < count);
                    item.deleted_occurrences.retain(|i| *i < count);
                }
                Ok(())
            });
        match updated {
            Ok(applied) => applied,
            Err(e) => return Err(refused.unwrap_or_else(|| sim_refusal(&e))),
        }
    };
    let id = match target.occurrence {
        Some(index) => occurrence_id(&applied.item.id, index),
        None => applied.item.id.clone(),
    };
    let change_key = {
        let state = shared.lock();
        state
            .cal
            .room(&target.room)
            .and_then(|r| r.instance(&id))
            .map(|i| i.change_key())
            .unwrap_or_else(|| applied.item.change_key())
    };
    push::on_change(shared, &applied);
    Ok((id, change_key))
}

/// One `ItemChange`: finds the item, checks its change key, applies the updates.
fn change_one(
    shared: &Arc<Shared>,
    change: &Node,
    occurrences: &mut OccurrenceIds,
    who: &Caller,
    always_overwrite: bool,
) -> Result<(String, String), Refusal> {
    let ids = named_ids(change, occurrences);
    let Some((id_node, occurrence)) = ids.first() else {
        return Err(refusal("ErrorInvalidIdEmpty", "The item id is empty."));
    };
    let target = resolve(shared, who, id_node, occurrence.as_ref())?;
    if let Some(key) = id_node.attr("ChangeKey")
        && key != target.change_key
        && !always_overwrite
    {
        return Err(refusal(
            "ErrorIrresolvableConflict",
            "The send or update operation could not be performed because the change key passed in the request does not match the current change key for the item.",
        ));
    }
    let updates = change
        .child("Updates")
        .map(Changes::of)
        .transpose()?
        .unwrap_or_default();
    update_one(shared, &target, updates)
}

/// An `ItemId` or `OccurrenceItemId` resolved in the impersonated room.
fn resolve(
    shared: &Shared,
    who: &Caller,
    id_node: &Node,
    occurrence: Option<&(String, u32)>,
) -> Result<Addressed, Refusal> {
    let state = shared.lock();
    let room = who.mailbox.as_deref().and_then(|m| state.cal.room(m));
    address(
        room,
        (id_node.local == "ItemId").then(|| id_node.attr("Id").unwrap_or_default()),
        occurrence.map(|(m, i)| (m.as_str(), *i)),
    )
}

/// `UpdateItem` of calendar items: subject, location, times, all-day flag and a series'
/// recurrence; an occurrence's times (it becomes an exception).
pub(super) fn update_item(shared: &Arc<Shared>, op: &Node, body: &[u8], who: &Caller) -> Response {
    let fail = |(code, text): Refusal| error_message("UpdateItem", code, &text, "<m:Items/>");
    let [conflict, send] = attrs_of(
        body,
        "UpdateItem",
        [
            "ConflictResolution",
            "SendMeetingInvitationsOrCancellations",
        ],
    )
    .into_iter()
    .next()
    .unwrap_or_default();
    let always_overwrite = conflict.as_deref() == Some("AlwaysOverwrite");
    let Some(changes) = op.child("ItemChanges") else {
        return operation_response("UpdateItem", "");
    };
    let mut occurrences = occurrence_ids(body);
    let mut messages = String::new();
    for change in changes.children_named("ItemChange") {
        let outcome = required_send(
            send.as_deref(),
            "ErrorSendMeetingInvitationsOrCancellationsRequired",
            "SendMeetingInvitationsOrCancellations",
        )
        .and_then(|()| change_one(shared, change, &mut occurrences, who, always_overwrite));
        match outcome {
            Ok((id, key)) => messages.push_str(&format!(
                r#"<m:UpdateItemResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:Items>{}</m:Items><m:ConflictResults><t:Count>0</t:Count></m:ConflictResults></m:UpdateItemResponseMessage>"#,
                item_id_xml(&id, &key)
            )),
            Err(r) => messages.push_str(&fail(r)),
        }
    }
    operation_response("UpdateItem", &messages)
}

/// Deletes one item, or one occurrence from its series.
fn delete_one(
    shared: &Arc<Shared>,
    who: &Caller,
    id_node: &Node,
    occurrence: Option<&(String, u32)>,
    soft: bool,
) -> Result<(), Refusal> {
    let target = resolve(shared, who, id_node, occurrence)?;
    let applied = {
        let mut state = shared.lock();
        match target.occurrence {
            Some(index) => state
                .cal
                .delete_occurrence(&target.room, &target.item, index)
                .map(|(applied, _)| applied),
            None => state.cal.delete(&target.room, &target.item, soft),
        }
    }
    .map_err(|e| sim_refusal(&e))?;
    push::on_change(shared, &applied);
    Ok(())
}

/// `DeleteItem` of calendar items: `HardDelete` and `SoftDelete` remove the item
/// (`DeletedEvent`), `MoveToDeletedItems` moves it to Deleted Items (`MovedEvent`); an
/// occurrence is deleted from its series.
pub(super) fn delete_item(shared: &Arc<Shared>, op: &Node, body: &[u8], who: &Caller) -> Response {
    let fail = |(code, text): Refusal| error_message("DeleteItem", code, &text, "");
    let [delete_type, send] = attrs_of(
        body,
        "DeleteItem",
        ["DeleteType", "SendMeetingCancellations"],
    )
    .into_iter()
    .next()
    .unwrap_or_default();
    let ids = op
        .child("ItemIds")
        .map(|i| named_ids(i, &mut occurrence_ids(body)))
        .unwrap_or_default();
    let mut messages = String::new();
    for (id_node, occurrence) in ids {
        let outcome = match delete_type.as_deref() {
            Some("HardDelete" | "SoftDelete") => Ok(false),
            Some("MoveToDeletedItems") => Ok(true),
            _ => Err(refusal(
                "ErrorInvalidRequest",
                "DeleteType must be HardDelete, SoftDelete or MoveToDeletedItems.",
            )),
        }
        .and_then(|soft| {
            required_send(
                send.as_deref(),
                "ErrorSendMeetingCancellationsRequired",
                "SendMeetingCancellations",
            )?;
            delete_one(shared, who, id_node, occurrence.as_ref(), soft)
        });
        match outcome {
            Ok(()) => messages.push_str(
                r#"<m:DeleteItemResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode></m:DeleteItemResponseMessage>"#,
            ),
            Err(r) => messages.push_str(&fail(r)),
        }
    }
    operation_response("DeleteItem", &messages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ews::tree as xml;
    use chrono::TimeZone;

    fn node(text: &str) -> Node {
        let doc = format!(
            r#"<t:Recurrence xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">{text}</t:Recurrence>"#
        );
        xml::parse(doc.as_bytes()).unwrap()
    }

    #[test]
    fn daily_and_weekly_series_with_numbered_or_end_date_ranges_are_read() {
        // 2026-12-01 is a Tuesday.
        let start = Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap();
        let daily = node(
            "<t:DailyRecurrence><t:Interval>1</t:Interval></t:DailyRecurrence><t:NumberedRecurrence><t:StartDate>2026-12-01Z</t:StartDate><t:NumberOfOccurrences>5</t:NumberOfOccurrences></t:NumberedRecurrence>",
        );
        assert_eq!(
            parse_recurrence(&daily, start),
            Ok((Recurrence::Daily { count: 5 }, false))
        );
        let weekly = node(
            "<t:WeeklyRecurrence><t:Interval>1</t:Interval><t:DaysOfWeek>Tuesday</t:DaysOfWeek></t:WeeklyRecurrence><t:EndDateRecurrence><t:StartDate>2026-12-01</t:StartDate><t:EndDate>2026-12-22</t:EndDate></t:EndDateRecurrence>",
        );
        assert_eq!(
            parse_recurrence(&weekly, start),
            Ok((Recurrence::Weekly { count: 4 }, true))
        );
    }

    #[test]
    fn patterns_the_simulator_cannot_hold_are_refused_as_invalid_recurrences() {
        let start = Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap();
        for text in [
            "<t:DailyRecurrence><t:Interval>2</t:Interval></t:DailyRecurrence><t:NumberedRecurrence><t:NumberOfOccurrences>3</t:NumberOfOccurrences></t:NumberedRecurrence>",
            "<t:WeeklyRecurrence><t:Interval>1</t:Interval><t:DaysOfWeek>Monday Tuesday</t:DaysOfWeek></t:WeeklyRecurrence><t:NumberedRecurrence><t:NumberOfOccurrences>3</t:NumberOfOccurrences></t:NumberedRecurrence>",
            "<t:DailyRecurrence><t:Interval>1</t:Interval></t:DailyRecurrence><t:NoEndRecurrence><t:StartDate>2026-12-01</t:StartDate></t:NoEndRecurrence>",
            "<t:DailyRecurrence><t:Interval>1</t:Interval></t:DailyRecurrence><t:NumberedRecurrence><t:NumberOfOccurrences>0</t:NumberOfOccurrences></t:NumberedRecurrence>",
        ] {
            let refused = parse_recurrence(&node(text), start);
            assert_eq!(
                refused.map_err(|(code, _)| code),
                Err("ErrorCalendarInvalidRecurrence"),
                "{text}"
            );
        }
    }

    #[test]
    fn booleans_and_dates_are_read_as_xml_schema_writes_them() {
        assert_eq!(parse_bool("1"), Some(true));
        assert_eq!(parse_bool("false"), Some(false));
        assert_eq!(parse_bool("yes"), None);
        assert_eq!(
            parse_date("2026-12-01+01:00"),
            NaiveDate::from_ymd_opt(2026, 12, 1)
        );
        assert_eq!(parse_date("2026-12"), None);
    }
}
