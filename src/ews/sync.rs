//! What the sync worker asks Exchange about a room's calendar, and how the answers are read:
//! `SyncFolderItems` (which items changed since a sync state), `GetItem` (the calendar
//! properties of a batch of items) and `FindItem` with a `CalendarView` (the items and
//! occurrences in a time window).
//!
//! Items are read by namespace and local name in any order; every property but the item id is
//! optional and is `None` when Exchange leaves it out. Times are `xs:dateTime` converted to
//! UTC.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeDelta, Utc};

use super::notification::ItemRef;
use super::outcome::{
    EwsError, ResponseError, ews_child, ews_children, ews_text, invalid, message_status,
    read_envelope, response_messages,
};
use super::quote;
use super::request::{Out, RequestError, ServerVersion, envelope, non_empty};
use crate::ews::tree::Node;

/// Most changes one `SyncFolderItems` call can return (`MaxChangesReturned` upper bound).
pub const MAX_SYNC_CHANGES: u32 = 512;

/// Widest `CalendarView` window to ask for. Exchange refuses windows over two years with
/// `ErrorCalendarViewRangeTooBig`; 730 days stays inside that whatever the leap years.
pub const MAX_CALENDAR_VIEW: TimeDelta = TimeDelta::days(730);

/// Properties requested on top of `IdOnly`: what a room reservation needs.
const CALENDAR_FIELDS: [&str; 15] = [
    "item:Subject",
    "item:ParentFolderId",
    "item:LastModifiedTime",
    "calendar:UID",
    "calendar:Start",
    "calendar:End",
    "calendar:IsAllDayEvent",
    "calendar:IsCancelled",
    "calendar:CalendarItemType",
    "calendar:Organizer",
    "calendar:Location",
    "calendar:IsRecurring",
    "calendar:RecurrenceId",
    "calendar:OriginalStart",
    "calendar:AppointmentSequenceNumber",
];

/// Properties `SyncFolderItems` asks for on top of `IdOnly`: enough to tell a series master
/// (whose occurrences must be expanded) from a single meeting, and to find its occurrences.
const SYNC_FIELDS: [&str; 2] = ["calendar:UID", "calendar:CalendarItemType"];

/// `m:ItemShape`: `IdOnly`, plus `fields`.
fn item_shape(out: &mut Out, fields: &[&str]) -> Result<(), RequestError> {
    out.open("m:ItemShape", &[])?;
    out.text("t:BaseShape", "IdOnly")?;
    if !fields.is_empty() {
        out.open("t:AdditionalProperties", &[])?;
        for field in fields {
            out.empty("t:FieldURI", &[("FieldURI", field)])?;
        }
        out.close("t:AdditionalProperties")?;
    }
    out.close("m:ItemShape")
}

// ---- SyncFolderItems ------------------------------------------------------------------------

/// `SyncFolderItems` on the room's calendar folder. Ids come back, with each item's UID and
/// calendar item type; the other properties are fetched with [`GetCalendarItems`].
#[derive(Debug, Clone, Copy)]
pub struct SyncFolderItems<'a> {
    /// The room's primary SMTP address.
    pub room: &'a str,
    /// The `SyncState` of the previous call; `None` for a first sync, which reports every
    /// item as created.
    pub sync_state: Option<&'a str>,
    /// `MaxChangesReturned`, 1 to [`MAX_SYNC_CHANGES`].
    pub max_changes: u32,
}

impl SyncFolderItems<'_> {
    /// The request body, or why it cannot be sent.
    pub fn to_xml(&self, version: ServerVersion) -> Result<Vec<u8>, RequestError> {
        if !(1..=MAX_SYNC_CHANGES).contains(&self.max_changes) {
            return Err(RequestError::OutOfRange {
                what: "m:MaxChangesReturned",
                value: u64::from(self.max_changes),
                min: 1,
                max: u64::from(MAX_SYNC_CHANGES),
            });
        }
        if let Some(state) = self.sync_state {
            non_empty("m:SyncState", state)?;
        }
        envelope(version, self.room, |out| {
            out.open("m:SyncFolderItems", &[])?;
            item_shape(out, &SYNC_FIELDS)?;
            out.calendar_folder("m:SyncFolderId")?;
            if let Some(state) = self.sync_state {
                out.text("m:SyncState", state)?;
            }
            out.text("m:MaxChangesReturned", &self.max_changes.to_string())?;
            out.close("m:SyncFolderItems")
        })
    }
}

/// What kind of change `SyncFolderItems` reports for an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// `Create`: new since the sync state.
    Create,
    /// `Update`: changed since the sync state.
    Update,
    /// `Delete`: gone (hard-deleted or moved out of the folder).
    Delete,
    /// `ReadFlagChange`: only the read flag changed.
    ReadFlagChange,
}

impl ChangeKind {
    fn from_element_name(local: &str) -> Option<Self> {
        Some(match local {
            "Create" => Self::Create,
            "Update" => Self::Update,
            "Delete" => Self::Delete,
            "ReadFlagChange" => Self::ReadFlagChange,
            _ => return None,
        })
    }
}

/// One change, with the item's id (and change key when Exchange gives one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemChange {
    /// Create, update, delete or read-flag change.
    pub kind: ChangeKind,
    /// The item's `ItemId`.
    pub item: ItemRef,
    /// `UID`, when Exchange returned it (creates and updates of calendar items).
    pub uid: Option<String>,
    /// `CalendarItemType`, when Exchange returned it.
    pub item_type: Option<CalendarItemType>,
}

/// A successful `SyncFolderItems` response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncChanges {
    /// The `SyncState` to send next time.
    pub sync_state: String,
    /// `IncludesLastItemInRange`: `false` means more changes are waiting; call again with
    /// the new sync state.
    pub includes_last_item_in_range: bool,
    /// The changes, in document order.
    pub changes: Vec<ItemChange>,
}

/// Reads a `SyncFolderItems` response body. A fault or an unexpected body is the outer
/// `Err`; an error response message (`ErrorInvalidSyncStateData`...) the inner one.
pub fn parse_sync_folder_items_response(
    body: &[u8],
) -> Result<Result<SyncChanges, EwsError>, ResponseError> {
    let root = read_envelope(body)?;
    let message = single_message(&root, "SyncFolderItems")?;
    if let Some(error) = message_status(message)? {
        return Ok(Err(error));
    }
    let sync_state = ews_text(message, "SyncState")
        .ok_or_else(|| invalid("a successful SyncFolderItems response has no SyncState"))?;
    let includes_last = ews_text(message, "IncludesLastItemInRange")
        .ok_or_else(|| invalid("a SyncFolderItems response has no IncludesLastItemInRange"))
        .and_then(|t| parse_bool("IncludesLastItemInRange", t))?;
    let mut changes = Vec::new();
    for change in ews_child(message, "Changes")
        .into_iter()
        .flat_map(|c| c.children.iter())
        .filter(|c| c.ns.is_ews())
    {
        let Some(kind) = ChangeKind::from_element_name(&change.local) else {
            continue;
        };
        // Create and Update wrap the item (CalendarItem, or another item type); Delete and
        // ReadFlagChange hold the ItemId directly.
        let wrapped = match kind {
            ChangeKind::Create | ChangeKind::Update => change
                .children
                .iter()
                .find(|c| c.ns.is_ews() && ews_child(c, "ItemId").is_some()),
            ChangeKind::Delete | ChangeKind::ReadFlagChange => None,
        };
        let id_node = match wrapped {
            Some(item) => ews_child(item, "ItemId"),
            None => ews_child(change, "ItemId"),
        };
        let item = id_node
            .and_then(item_ref)
            .ok_or_else(|| invalid(format!("a {} change has no ItemId", change.local)))?;
        let uid = wrapped.and_then(|w| ews_text(w, "UID")).map(str::to_owned);
        let item_type = wrapped
            .and_then(|w| ews_text(w, "CalendarItemType"))
            .map(CalendarItemType::parse)
            .transpose()?;
        changes.push(ItemChange {
            kind,
            item,
            uid,
            item_type,
        });
    }
    Ok(Ok(SyncChanges {
        sync_state: sync_state.to_owned(),
        includes_last_item_in_range: includes_last,
        changes,
    }))
}

// ---- GetItem --------------------------------------------------------------------------------

/// `GetItem` of calendar items by id, with the properties a reservation needs.
#[derive(Debug, Clone, Copy)]
pub struct GetCalendarItems<'a> {
    /// The room's primary SMTP address.
    pub room: &'a str,
    /// The item ids (at least one). Change keys are not sent: a stale one would only make
    /// Exchange refuse to read the item.
    pub item_ids: &'a [&'a str],
}

impl GetCalendarItems<'_> {
    /// The request body, or why it cannot be sent.
    pub fn to_xml(&self, version: ServerVersion) -> Result<Vec<u8>, RequestError> {
        if self.item_ids.is_empty() {
            return Err(RequestError::Empty { what: "m:ItemIds" });
        }
        for id in self.item_ids {
            non_empty("Id", id)?;
        }
        envelope(version, self.room, |out| {
            out.open("m:GetItem", &[])?;
            item_shape(out, &CALENDAR_FIELDS)?;
            out.open("m:ItemIds", &[])?;
            for id in self.item_ids {
                out.empty("t:ItemId", &[("Id", id)])?;
            }
            out.close("m:ItemIds")?;
            out.close("m:GetItem")
        })
    }
}

/// What `GetItem` said about one requested id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchedItem {
    /// The calendar item.
    Calendar(Box<CalendarItem>),
    /// The id names an item of another kind; the element's local name (e.g. `Message`).
    NotCalendar(String),
    /// Exchange's error for this id, e.g. `ErrorItemNotFound`.
    Error(EwsError),
}

/// Reads a `GetItem` response body: one entry per requested id, in request order (Exchange
/// answers each id with one message, in order).
pub fn parse_get_item_response(body: &[u8]) -> Result<Vec<FetchedItem>, ResponseError> {
    let root = read_envelope(body)?;
    let mut out = Vec::new();
    for message in response_messages(&root, "GetItem")? {
        if let Some(error) = message_status(message)? {
            out.push(FetchedItem::Error(error));
            continue;
        }
        let item = ews_child(message, "Items")
            .and_then(|items| items.children.iter().find(|c| c.ns.is_ews()))
            .ok_or_else(|| invalid("a successful GetItem response message holds no item"))?;
        out.push(if item.local == "CalendarItem" {
            FetchedItem::Calendar(Box::new(calendar_item(item)?))
        } else {
            FetchedItem::NotCalendar(item.local.clone())
        });
    }
    Ok(out)
}

// ---- FindItem -------------------------------------------------------------------------------

/// `FindItem` with a `CalendarView` on the room's calendar: single items, occurrences and
/// exceptions that overlap `[start, end)` (recurring masters are expanded, not returned).
/// `FindItem` returns the organizer's name but not its address.
#[derive(Debug, Clone, Copy)]
pub struct FindCalendarView<'a> {
    /// The room's primary SMTP address.
    pub room: &'a str,
    /// `StartDate`: items ending before it are left out.
    pub start: DateTime<Utc>,
    /// `EndDate`: items starting at or after it are left out. Keep `end - start` within
    /// [`MAX_CALENDAR_VIEW`].
    pub end: DateTime<Utc>,
    /// `MaxEntriesReturned`; `None` lets the server's limit apply.
    pub max_entries: Option<u32>,
}

impl FindCalendarView<'_> {
    /// The request body, or why it cannot be sent.
    pub fn to_xml(&self, version: ServerVersion) -> Result<Vec<u8>, RequestError> {
        if self.end < self.start {
            return Err(RequestError::EndBeforeStart);
        }
        // MaxEntriesReturned is an xs:int.
        let max_allowed = i32::MAX.unsigned_abs();
        if let Some(n) = self.max_entries.filter(|n| !(1..=max_allowed).contains(n)) {
            return Err(RequestError::OutOfRange {
                what: "MaxEntriesReturned",
                value: u64::from(n),
                min: 1,
                max: u64::from(max_allowed),
            });
        }
        let start = self.start.to_rfc3339_opts(SecondsFormat::Secs, true);
        let end = self.end.to_rfc3339_opts(SecondsFormat::Secs, true);
        let max = self.max_entries.map(|n| n.to_string());
        envelope(version, self.room, |out| {
            out.open("m:FindItem", &[("Traversal", "Shallow")])?;
            item_shape(out, &CALENDAR_FIELDS)?;
            let mut view: Vec<(&'static str, &str)> = Vec::with_capacity(3);
            if let Some(max) = &max {
                view.push(("MaxEntriesReturned", max));
            }
            view.push(("StartDate", &start));
            view.push(("EndDate", &end));
            out.empty("m:CalendarView", &view)?;
            out.calendar_folder("m:ParentFolderIds")?;
            out.close("m:FindItem")
        })
    }
}

/// A successful `FindItem` `CalendarView` response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalendarViewPage {
    /// `RootFolder/@TotalItemsInView`: how many items the whole window holds.
    pub total_items_in_view: Option<u32>,
    /// `RootFolder/@IncludesLastItemInRange`: `false` when `MaxEntriesReturned` cut the
    /// window short. A `CalendarView` has no offset, so ask again from a later start.
    pub includes_last_item_in_range: bool,
    /// The calendar items, in document order (other item kinds are left out).
    pub items: Vec<CalendarItem>,
}

/// Reads a `FindItem` response body. A fault or an unexpected body is the outer `Err`; an
/// error response message (`ErrorCalendarViewRangeTooBig`...) the inner one.
pub fn parse_find_item_response(
    body: &[u8],
) -> Result<Result<CalendarViewPage, EwsError>, ResponseError> {
    let root = read_envelope(body)?;
    let message = single_message(&root, "FindItem")?;
    if let Some(error) = message_status(message)? {
        return Ok(Err(error));
    }
    let folder = ews_child(message, "RootFolder")
        .ok_or_else(|| invalid("a successful FindItem response has no RootFolder"))?;
    let includes_last = folder
        .attr("IncludesLastItemInRange")
        .ok_or_else(|| invalid("RootFolder has no IncludesLastItemInRange"))
        .and_then(|t| parse_bool("IncludesLastItemInRange", t))?;
    let total = folder
        .attr("TotalItemsInView")
        .map(|t| {
            t.parse::<u32>()
                .map_err(|_| invalid(format!("TotalItemsInView {} is not a count", quote(t))))
        })
        .transpose()?;
    let items = ews_child(folder, "Items")
        .into_iter()
        .flat_map(|items| ews_children(items, "CalendarItem"))
        .map(calendar_item)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Ok(CalendarViewPage {
        total_items_in_view: total,
        includes_last_item_in_range: includes_last,
        items,
    }))
}

// ---- CalendarItem ---------------------------------------------------------------------------

/// `CalendarItemType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CalendarItemType {
    /// A non-recurring item.
    Single,
    /// One occurrence of a recurring series.
    Occurrence,
    /// An occurrence changed from its series' pattern.
    Exception,
    /// The series itself.
    RecurringMaster,
}

impl CalendarItemType {
    fn parse(text: &str) -> Result<Self, ResponseError> {
        Ok(match text {
            "Single" => Self::Single,
            "Occurrence" => Self::Occurrence,
            "Exception" => Self::Exception,
            "RecurringMaster" => Self::RecurringMaster,
            _ => {
                return Err(invalid(format!(
                    "CalendarItemType {} is not a known type",
                    quote(text)
                )));
            }
        })
    }
}

/// `Organizer/Mailbox`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organizer {
    /// `Name`: the display name.
    pub name: Option<String>,
    /// `EmailAddress`: an SMTP address, or an Exchange legacy DN when `routing_type` is `EX`;
    /// never returned by `FindItem`.
    pub email_address: Option<String>,
    /// `RoutingType`, e.g. `SMTP` or `EX`.
    pub routing_type: Option<String>,
}

/// A calendar item with the properties requested by [`GetCalendarItems`] and
/// [`FindCalendarView`]. Every property but the id is `None` when absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalendarItem {
    /// `ItemId/@Id`.
    pub id: String,
    /// `ItemId/@ChangeKey`.
    pub change_key: Option<String>,
    /// `ParentFolderId/@Id`.
    pub parent_folder_id: Option<String>,
    /// `Subject`.
    pub subject: Option<String>,
    /// `UID`: the iCalendar UID, shared by a series and its occurrences.
    pub uid: Option<String>,
    /// `Start`.
    pub start: Option<DateTime<Utc>>,
    /// `End`.
    pub end: Option<DateTime<Utc>>,
    /// `IsAllDayEvent`.
    pub is_all_day: Option<bool>,
    /// `IsCancelled`.
    pub is_cancelled: Option<bool>,
    /// `CalendarItemType`.
    pub calendar_item_type: Option<CalendarItemType>,
    /// `Organizer/Mailbox`.
    pub organizer: Option<Organizer>,
    /// `Location`.
    pub location: Option<String>,
    /// `IsRecurring`.
    pub is_recurring: Option<bool>,
    /// `RecurrenceId`: which occurrence of its series this is.
    pub recurrence_id: Option<DateTime<Utc>>,
    /// `OriginalStart`: an occurrence's start before any change.
    pub original_start: Option<DateTime<Utc>>,
    /// `AppointmentSequenceNumber`.
    pub appointment_sequence_number: Option<i32>,
    /// `LastModifiedTime`.
    pub last_modified: Option<DateTime<Utc>>,
}

fn calendar_item(node: &Node) -> Result<CalendarItem, ResponseError> {
    let id = ews_child(node, "ItemId")
        .and_then(item_ref)
        .ok_or_else(|| invalid("a CalendarItem has no ItemId"))?;
    let text = |local: &str| ews_text(node, local).map(str::to_owned);
    let time = |local: &str| {
        ews_text(node, local)
            .map(|t| parse_datetime(local, t))
            .transpose()
    };
    let flag = |local: &str| {
        ews_text(node, local)
            .map(|t| parse_bool(local, t))
            .transpose()
    };
    let organizer = ews_child(node, "Organizer")
        .and_then(|o| ews_child(o, "Mailbox"))
        .map(|mailbox| Organizer {
            name: ews_text(mailbox, "Name").map(str::to_owned),
            email_address: ews_text(mailbox, "EmailAddress").map(str::to_owned),
            routing_type: ews_text(mailbox, "RoutingType").map(str::to_owned),
        });
    let sequence = ews_text(node, "AppointmentSequenceNumber")
        .map(|t| {
            t.parse::<i32>().map_err(|_| {
                invalid(format!(
                    "AppointmentSequenceNumber {} is not an xs:int",
                    quote(t)
                ))
            })
        })
        .transpose()?;
    Ok(CalendarItem {
        id: id.id,
        change_key: id.change_key,
        parent_folder_id: ews_child(node, "ParentFolderId")
            .and_then(|f| f.attr("Id"))
            .filter(|f| !f.is_empty())
            .map(str::to_owned),
        subject: text("Subject"),
        uid: text("UID"),
        start: time("Start")?,
        end: time("End")?,
        is_all_day: flag("IsAllDayEvent")?,
        is_cancelled: flag("IsCancelled")?,
        calendar_item_type: ews_text(node, "CalendarItemType")
            .map(CalendarItemType::parse)
            .transpose()?,
        organizer,
        location: text("Location"),
        is_recurring: flag("IsRecurring")?,
        recurrence_id: time("RecurrenceId")?,
        original_start: time("OriginalStart")?,
        appointment_sequence_number: sequence,
        last_modified: time("LastModifiedTime")?,
    })
}

// ---- helpers --------------------------------------------------------------------------------

/// The one response message of a single-message operation.
fn single_message<'a>(root: &'a Node, operation: &str) -> Result<&'a Node, ResponseError> {
    let messages = response_messages(root, operation)?;
    match messages.as_slice() {
        [message] => Ok(message),
        _ => Err(invalid(format!(
            "{operation}Response holds {} response messages, not one",
            messages.len()
        ))),
    }
}

/// `Id` (required, non-empty) and `ChangeKey` of an id element.
fn item_ref(node: &Node) -> Option<ItemRef> {
    let id = node.attr("Id").filter(|id| !id.is_empty())?;
    Some(ItemRef {
        id: id.to_owned(),
        change_key: node
            .attr("ChangeKey")
            .filter(|k| !k.is_empty())
            .map(str::to_owned),
    })
}

/// `xs:boolean`: `true`, `false`, `1`, `0`.
fn parse_bool(what: &str, text: &str) -> Result<bool, ResponseError> {
    match text {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(invalid(format!(
            "{what} {} is not an xs:boolean",
            quote(text)
        ))),
    }
}

/// `xs:dateTime` to UTC. Exchange answers in UTC (`Z`) unless asked for a time zone, but an
/// offset is honoured; a value without any zone is taken as UTC, the zone requests are made in.
fn parse_datetime(what: &str, text: &str) -> Result<DateTime<Utc>, ResponseError> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .map(|naive| naive.and_utc())
        .map_err(|_| invalid(format!("{what} {} is not an xs:dateTime", quote(text))))
}

#[cfg(test)]
mod tests;
