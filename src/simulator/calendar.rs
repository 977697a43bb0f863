//! The simulated mailboxes: room calendars held in memory, with meetings, recurring series
//! expanded into occurrences, and one change log that every wire view (Graph delta links,
//! EWS watermarks, `SyncFolderItems` states, pushes) is derived from.
//!
//! Sequence numbers are global and strictly increasing, so "what changed since X" is a
//! filter on the log and every opaque state token only has to remember a number.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::SimError;
use crate::ews::EventKind;

/// A meeting as the control API books it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meeting {
    pub subject: String,
    /// SMTP address of the organizer.
    pub organizer: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    #[serde(default)]
    pub is_all_day: bool,
    #[serde(default)]
    pub location: String,
}

/// How a series repeats; `count` occurrences in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "pattern", rename_all = "camelCase")]
pub enum Recurrence {
    Daily { count: u32 },
    Weekly { count: u32 },
}

impl Recurrence {
    fn count(self) -> u32 {
        match self {
            Self::Daily { count } | Self::Weekly { count } => count,
        }
    }

    fn step(self) -> Duration {
        match self {
            Self::Daily { .. } => Duration::days(1),
            Self::Weekly { .. } => Duration::weeks(1),
        }
    }
}

/// Longest series accepted: keeps a typo from expanding into millions of occurrences.
pub(crate) const MAX_OCCURRENCES: u32 = 999;

/// A stored calendar item: a single meeting or a series master.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub(crate) id: String,
    pub(crate) uid: String,
    pub(crate) meeting: Meeting,
    pub(crate) recurrence: Option<Recurrence>,
    pub(crate) cancelled: bool,
    /// Bumped on every change; the change key and etag derive from it.
    pub(crate) version: u32,
    pub(crate) created_seq: u64,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) modified_at: DateTime<Utc>,
}

/// What an occurrence is, in Graph's words (`type`); EWS names are derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InstanceKind {
    Single,
    Occurrence,
    Master,
}

impl InstanceKind {
    pub(crate) fn graph(self) -> &'static str {
        match self {
            Self::Single => "singleInstance",
            Self::Occurrence => "occurrence",
            Self::Master => "seriesMaster",
        }
    }

    pub(crate) fn ews(self) -> &'static str {
        match self {
            Self::Single => "Single",
            Self::Occurrence => "Occurrence",
            Self::Master => "RecurringMaster",
        }
    }
}

/// One view of an item: the item itself or one of its occurrences.
#[derive(Debug, Clone)]
pub(crate) struct Instance {
    pub(crate) id: String,
    pub(crate) kind: InstanceKind,
    pub(crate) start: DateTime<Utc>,
    pub(crate) end: DateTime<Utc>,
    pub(crate) item: Item,
}

impl Instance {
    pub(crate) fn overlaps(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> bool {
        self.start < to && self.end > from
    }
}

impl Item {
    pub(crate) fn change_key(&self) -> String {
        format!("DwAAABYAAAC{}{:08}", short_hash(&self.id), self.version)
    }

    pub(crate) fn etag(&self) -> String {
        format!("W/\"{}\"", self.change_key())
    }

    fn instance(&self, kind: InstanceKind) -> Instance {
        Instance {
            id: self.id.clone(),
            kind,
            start: self.meeting.start,
            end: self.meeting.end,
            item: self.clone(),
        }
    }

    /// The item itself (a single meeting or a series master).
    pub(crate) fn as_instance(&self) -> Instance {
        let kind = if self.recurrence.is_some() {
            InstanceKind::Master
        } else {
            InstanceKind::Single
        };
        self.instance(kind)
    }

    /// What a calendar view shows: the meeting, or every occurrence of the series.
    pub(crate) fn expand(&self) -> Vec<Instance> {
        let Some(recurrence) = self.recurrence else {
            return vec![self.instance(InstanceKind::Single)];
        };
        (0..recurrence.count())
            .map(|i| {
                let shift = recurrence.step() * i32::try_from(i).unwrap_or(i32::MAX);
                Instance {
                    id: occurrence_id(&self.id, i),
                    kind: InstanceKind::Occurrence,
                    start: self.meeting.start + shift,
                    end: self.meeting.end + shift,
                    item: self.clone(),
                }
            })
            .collect()
    }
}

fn occurrence_id(master: &str, index: u32) -> String {
    format!("{master}OCC{index:04}")
}

/// FNV-1a: a stable, non-cryptographic digest used to make ids look opaque.
fn fnv64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A short digest used to make ids look opaque.
pub(crate) fn short_hash(s: &str) -> String {
    format!("{:08x}", fnv64(s) & 0xffff_ffff)
}

/// A room's directory object id: a GUID that depends only on the seed and the address, so
/// it does not move when rooms are created in another order or other ids are drawn first.
fn object_id(seed: u64, address: &str) -> String {
    super::busy::SplitMix64::new(seed ^ fnv64(address)).guid()
}

/// What happened to an item, in Graph's `changeType` words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    Created,
    Updated,
    Deleted,
}

impl ChangeKind {
    pub(crate) fn graph(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Deleted => "deleted",
        }
    }
}

/// One entry of a room's change log.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub(crate) seq: u64,
    pub(crate) item_id: String,
}

/// What an EWS event points at.
#[derive(Debug, Clone)]
pub(crate) enum EwsTarget {
    Item { id: String, change_key: String },
    Folder,
}

/// One entry of a room's EWS event table (what push subscriptions read).
#[derive(Debug, Clone)]
pub(crate) struct EwsLogEvent {
    pub(crate) pos: u64,
    pub(crate) kind: EventKind,
    pub(crate) target: EwsTarget,
    /// `OldItemId` of a move, and whether the new parent is Deleted Items.
    pub(crate) moved_from: Option<String>,
    pub(crate) at: DateTime<Utc>,
}

/// One room mailbox.
#[derive(Debug, Clone)]
pub(crate) struct Room {
    /// The SMTP address, lower-cased; also the user principal name Graph knows it by.
    pub(crate) address: String,
    /// The directory object id (a lower-case GUID) Graph also accepts and notifies with.
    pub(crate) object_id: String,
    /// Small number naming the room inside opaque tokens and folder ids.
    pub(crate) number: u32,
    pub(crate) items: BTreeMap<String, Item>,
    /// Deleted items, kept to report their (occurrence) ids as removed.
    pub(crate) deleted: BTreeMap<String, Item>,
    pub(crate) changes: Vec<Change>,
    pub(crate) ews_log: Vec<EwsLogEvent>,
}

impl Room {
    pub(crate) fn calendar_folder_id(&self) -> String {
        format!("AAMkSIMCAL{:08x}{}", self.number, short_hash(&self.address))
    }

    pub(crate) fn root_folder_id(&self) -> String {
        format!(
            "AAMkSIMROOT{:08x}{}",
            self.number,
            short_hash(&self.address)
        )
    }

    pub(crate) fn deleted_items_folder_id(&self) -> String {
        format!("AAMkSIMDEL{:08x}{}", self.number, short_hash(&self.address))
    }

    /// Every instance a calendar view shows between `from` and `to`, by start time.
    pub(crate) fn view(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Instance> {
        let mut out: Vec<Instance> = self
            .items
            .values()
            .flat_map(Item::expand)
            .filter(|i| i.overlaps(from, to))
            .collect();
        out.sort_by(|a, b| a.start.cmp(&b.start).then_with(|| a.id.cmp(&b.id)));
        out
    }

    /// The item or occurrence with this id.
    pub(crate) fn instance(&self, id: &str) -> Option<Instance> {
        if let Some(item) = self.items.get(id) {
            return Some(item.as_instance());
        }
        let (master, _) = id.rsplit_once("OCC")?;
        self.items
            .get(master)?
            .expand()
            .into_iter()
            .find(|i| i.id == id)
    }

    /// The item ids changed after `seq`, each once, ordered by their latest change,
    /// with that change's sequence number.
    pub(crate) fn changed_since(&self, seq: u64) -> Vec<(String, u64)> {
        let mut latest: BTreeMap<&str, u64> = BTreeMap::new();
        for c in self.changes.iter().filter(|c| c.seq > seq) {
            latest.insert(&c.item_id, c.seq);
        }
        let mut out: Vec<(String, u64)> = latest
            .into_iter()
            .map(|(id, s)| (id.to_owned(), s))
            .collect();
        out.sort_by_key(|(_, s)| *s);
        out
    }
}

/// All room calendars plus the counters that make ids and sequence numbers.
#[derive(Debug)]
pub(crate) struct Calendars {
    pub(crate) rooms: BTreeMap<String, Room>,
    pub(crate) seq: u64,
    pub(crate) ews_pos: u64,
    seed: u64,
    next_item: u64,
}

/// A change just made, for the push machinery.
#[derive(Debug, Clone)]
pub(crate) struct Applied {
    pub(crate) room: String,
    pub(crate) kind: ChangeKind,
    pub(crate) item: Item,
}

impl Calendars {
    pub(crate) fn new(seed: u64, rooms: &[String]) -> Self {
        let mut cal = Self {
            rooms: BTreeMap::new(),
            seq: 0,
            ews_pos: 0,
            seed,
            next_item: 0,
        };
        for room in rooms {
            cal.ensure_room(room);
        }
        cal
    }

    /// Room keys are lower-cased SMTP addresses: Exchange matches them in any case.
    pub(crate) fn key(room: &str) -> String {
        room.trim().to_ascii_lowercase()
    }

    pub(crate) fn ensure_room(&mut self, room: &str) -> &mut Room {
        let key = Self::key(room);
        let number = u32::try_from(self.rooms.len()).unwrap_or(u32::MAX);
        let seed = self.seed;
        self.rooms.entry(key.clone()).or_insert_with(|| Room {
            object_id: object_id(seed, &key),
            address: key,
            number,
            items: BTreeMap::new(),
            deleted: BTreeMap::new(),
            changes: Vec::new(),
            ews_log: Vec::new(),
        })
    }

    pub(crate) fn room(&self, room: &str) -> Option<&Room> {
        self.rooms.get(&Self::key(room))
    }

    /// A room as Graph names a user: by address (its UPN) or by object id, in any case.
    pub(crate) fn user(&self, name: &str) -> Option<&Room> {
        let key = Self::key(name);
        self.rooms
            .get(&key)
            .or_else(|| self.rooms.values().find(|r| r.object_id == key))
    }

    fn room_mut(&mut self, room: &str) -> Result<&mut Room, SimError> {
        self.rooms
            .get_mut(&Self::key(room))
            .ok_or_else(|| SimError::UnknownRoom(room.to_owned()))
    }

    fn new_item_id(&mut self) -> String {
        self.next_item += 1;
        format!(
            "AAMkAGSIM{:08x}{:08}AAA",
            self.seed & 0xffff_ffff,
            self.next_item
        )
    }

    fn log(&mut self, room: &str, item: &Item, ews: &[(EventKind, EwsTarget)]) {
        self.seq += 1;
        let seq = self.seq;
        let mut positions = Vec::with_capacity(ews.len());
        for _ in ews {
            self.ews_pos += 1;
            positions.push(self.ews_pos);
        }
        let now = Utc::now();
        if let Some(r) = self.rooms.get_mut(&Self::key(room)) {
            r.changes.push(Change {
                seq,
                item_id: item.id.clone(),
            });
            for ((event_kind, target), pos) in ews.iter().zip(positions) {
                r.ews_log.push(EwsLogEvent {
                    pos,
                    kind: *event_kind,
                    target: target.clone(),
                    moved_from: None,
                    at: now,
                });
            }
        }
    }

    fn item_target(item: &Item) -> EwsTarget {
        EwsTarget::Item {
            id: item.id.clone(),
            change_key: item.change_key(),
        }
    }

    /// Books a meeting (or a series master when `recurrence` is given).
    pub(crate) fn create(
        &mut self,
        room: &str,
        meeting: Meeting,
        recurrence: Option<Recurrence>,
    ) -> Result<Applied, SimError> {
        validate(&meeting)?;
        if let Some(r) = recurrence
            && (r.count() == 0 || r.count() > MAX_OCCURRENCES)
        {
            return Err(SimError::InvalidMeeting(format!(
                "a series needs 1..={MAX_OCCURRENCES} occurrences"
            )));
        }
        self.ensure_room(room);
        let id = self.new_item_id();
        let now = Utc::now();
        let item = Item {
            uid: format!("040000008200E00074C5B7101A82E008{}", short_hash(&id)),
            id: id.clone(),
            meeting,
            recurrence,
            cancelled: false,
            version: 1,
            created_seq: self.seq + 1,
            created_at: now,
            modified_at: now,
        };
        self.room_mut(room)?.items.insert(id, item.clone());
        // Exchange reports a new booking as a creation followed by a modification
        // (the resource booking assistant touches it), each with the folder's own event.
        let ews = [
            (EventKind::Created, Self::item_target(&item)),
            (EventKind::Modified, EwsTarget::Folder),
            (EventKind::Modified, Self::item_target(&item)),
            (EventKind::Modified, EwsTarget::Folder),
        ];
        self.log(room, &item, &ews);
        Ok(Applied {
            room: Self::key(room),
            kind: ChangeKind::Created,
            item,
        })
    }

    /// Changes an item in place and logs an update.
    pub(crate) fn update(
        &mut self,
        room: &str,
        id: &str,
        change: impl FnOnce(&mut Item) -> Result<(), SimError>,
    ) -> Result<Applied, SimError> {
        let r = self.room_mut(room)?;
        let item = r
            .items
            .get_mut(id)
            .ok_or_else(|| SimError::UnknownItem(id.to_owned()))?;
        change(item)?;
        validate(&item.meeting)?;
        item.version += 1;
        item.modified_at = Utc::now();
        let item = item.clone();
        let ews = [
            (EventKind::Modified, Self::item_target(&item)),
            (EventKind::Modified, EwsTarget::Folder),
        ];
        self.log(room, &item, &ews);
        Ok(Applied {
            room: Self::key(room),
            kind: ChangeKind::Updated,
            item,
        })
    }

    /// Removes an item. A hard delete is a `DeletedEvent` in EWS; a soft delete (a move
    /// to Deleted Items) is a `MovedEvent` with a new item id, as Exchange Online reports it.
    pub(crate) fn delete(&mut self, room: &str, id: &str, soft: bool) -> Result<Applied, SimError> {
        let moved_id = if soft { Some(self.new_item_id()) } else { None };
        let r = self.room_mut(room)?;
        let item = r
            .items
            .remove(id)
            .ok_or_else(|| SimError::UnknownItem(id.to_owned()))?;
        r.deleted.insert(id.to_owned(), item.clone());
        let first = match &moved_id {
            Some(new_id) => (
                EventKind::Moved,
                EwsTarget::Item {
                    id: new_id.clone(),
                    change_key: item.change_key(),
                },
            ),
            None => (EventKind::Deleted, Self::item_target(&item)),
        };
        self.log(
            room,
            &item,
            &[first, (EventKind::Modified, EwsTarget::Folder)],
        );
        if moved_id.is_some()
            && let Some(event) = self.rooms.get_mut(&Self::key(room)).and_then(|r| {
                r.ews_log
                    .iter_mut()
                    .rev()
                    .find(|e| e.kind == EventKind::Moved)
            })
        {
            event.moved_from = Some(id.to_owned());
        }
        Ok(Applied {
            room: Self::key(room),
            kind: ChangeKind::Deleted,
            item,
        })
    }
}

fn validate(m: &Meeting) -> Result<(), SimError> {
    if m.end <= m.start {
        return Err(SimError::InvalidMeeting(
            "a meeting must end after it starts".to_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn meeting(h: u32) -> Meeting {
        Meeting {
            subject: "Standup".to_owned(),
            organizer: "alice@sim.example".to_owned(),
            start: Utc.with_ymd_and_hms(2026, 3, 2, h, 0, 0).unwrap(),
            end: Utc.with_ymd_and_hms(2026, 3, 2, h + 1, 0, 0).unwrap(),
            is_all_day: false,
            location: "Room 1".to_owned(),
        }
    }

    #[test]
    fn a_weekly_series_expands_into_occurrences_a_week_apart_with_their_own_ids() {
        let mut cal = Calendars::new(1, &["room1@sim.example".to_owned()]);
        let applied = cal
            .create(
                "Room1@sim.example",
                meeting(9),
                Some(Recurrence::Weekly { count: 3 }),
            )
            .unwrap();
        let occ = applied.item.expand();
        assert_eq!(occ.len(), 3);
        assert_eq!(occ[1].start - occ[0].start, Duration::weeks(1));
        assert!(occ.iter().all(|o| o.kind == InstanceKind::Occurrence));
        let room = cal.room("room1@sim.example").unwrap();
        assert_eq!(room.instance(&occ[2].id).unwrap().start, occ[2].start);
    }

    #[test]
    fn changed_since_lists_each_item_once_in_order_of_its_latest_change() {
        let mut cal = Calendars::new(1, &["r@x".to_owned()]);
        let a = cal.create("r@x", meeting(9), None).unwrap().item.id;
        let b = cal.create("r@x", meeting(10), None).unwrap().item.id;
        let before = cal.seq;
        cal.update("r@x", &a, |_| Ok(())).unwrap();
        cal.delete("r@x", &b, false).unwrap();
        let changed = cal.room("r@x").unwrap().changed_since(before);
        assert_eq!(
            changed
                .iter()
                .map(|(id, _)| id.as_str())
                .collect::<Vec<_>>(),
            [a.as_str(), b.as_str()]
        );
    }

    #[test]
    fn a_room_keeps_its_object_id_whatever_the_order_rooms_are_created_in() {
        let a = Calendars::new(5, &["a@x".to_owned(), "b@x".to_owned()]);
        let b = Calendars::new(5, &["b@x".to_owned(), "a@x".to_owned()]);
        let id = &a.room("a@x").unwrap().object_id;
        assert_eq!(id, &b.room("a@x").unwrap().object_id);
        assert_ne!(id, &a.room("b@x").unwrap().object_id);
        assert_ne!(
            id,
            &Calendars::new(6, &["a@x".to_owned()])
                .room("a@x")
                .unwrap()
                .object_id
        );
        assert_eq!(a.user(&id.to_ascii_uppercase()).unwrap().address, "a@x");
        assert_eq!(a.user("A@X").unwrap().address, "a@x");
        assert!(a.user("c@x").is_none());
    }

    #[test]
    fn a_meeting_that_ends_before_it_starts_is_refused() {
        let mut cal = Calendars::new(1, &[]);
        let mut m = meeting(9);
        m.end = m.start;
        assert!(matches!(
            cal.create("r@x", m, None),
            Err(SimError::InvalidMeeting(_))
        ));
    }
}
