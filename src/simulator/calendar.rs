//! The simulated mailboxes: room calendars held in memory, with meetings and recurring series,
//! and one change log that every wire view (Graph delta links, EWS watermarks,
//! `SyncFolderItems` states, pushes) is derived from.
//!
//! A series is stored the way Exchange stores one: a master item with a recurrence pattern,
//! plus the occurrences that differ from it (exceptions: moved or cancelled on their own)
//! and the occurrences removed from it. Occurrences themselves are computed, never stored;
//! each has a stable id made of the master's id and its index in the series, so an
//! occurrence keeps its id when it becomes an exception.
//!
//! Sequence numbers are global and strictly increasing, so "what changed since X" is a
//! filter on the log and every opaque state token only has to remember a number.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc, Weekday};
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
    pub(crate) fn count(self) -> u32 {
        match self {
            Self::Daily { count } | Self::Weekly { count } => count,
        }
    }

    fn with_count(self, count: u32) -> Self {
        match self {
            Self::Daily { .. } => Self::Daily { count },
            Self::Weekly { .. } => Self::Weekly { count },
        }
    }

    fn step(self) -> Duration {
        match self {
            Self::Daily { .. } => Duration::days(1),
            Self::Weekly { .. } => Duration::weeks(1),
        }
    }

    pub(crate) fn is_weekly(self) -> bool {
        matches!(self, Self::Weekly { .. })
    }
}

/// Longest series accepted: keeps a typo from expanding into millions of occurrences.
pub(crate) const MAX_OCCURRENCES: u32 = 999;

/// How a recurrence a client sends ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangeEnd {
    /// After this many occurrences.
    Count(u32),
    /// On this date (the last occurrence is on it or before).
    Date(NaiveDate),
    /// Never.
    Never,
}

/// A recurrence as EWS and Graph clients describe it, turned into one the simulator holds:
/// daily, or weekly on the weekday the series starts, every time (interval 1), ending after
/// a count or on a date. Returns it with whether it ends on a date; `Err` says what the
/// simulator cannot hold.
pub(crate) fn client_recurrence(
    weekly: bool,
    interval: u32,
    days_of_week: &[String],
    start: DateTime<Utc>,
    end: RangeEnd,
) -> Result<(Recurrence, bool), String> {
    let held = "the simulator keeps daily and weekly series with an interval of 1 that end after a number of occurrences or on a date";
    if interval != 1 {
        return Err(format!("{held}, not an interval of {interval}"));
    }
    let first = weekday_name(start.date_naive());
    if weekly && !(days_of_week.len() == 1 && days_of_week[0].eq_ignore_ascii_case(first)) {
        return Err(format!(
            "{held}; a weekly series repeats on the weekday it starts on ({first}), not on {days_of_week:?}"
        ));
    }
    let (count, by_date) = match end {
        RangeEnd::Count(n) => (n, false),
        RangeEnd::Date(last) => {
            let step = if weekly { 7 } else { 1 };
            let days = (last - start.date_naive()).num_days();
            (u32::try_from(days.div_euclid(step) + 1).unwrap_or(0), true)
        }
        RangeEnd::Never => return Err(format!("{held}, not one without an end")),
    };
    if count == 0 || count > MAX_OCCURRENCES {
        return Err(format!("a series needs 1..={MAX_OCCURRENCES} occurrences"));
    }
    let recurrence = if weekly {
        Recurrence::Weekly { count }
    } else {
        Recurrence::Daily { count }
    };
    Ok((recurrence, by_date))
}

/// An occurrence that no longer looks like its series: moved, or cancelled on its own.
#[derive(Debug, Clone)]
pub(crate) struct Exception {
    pub(crate) start: DateTime<Utc>,
    pub(crate) end: DateTime<Utc>,
    pub(crate) cancelled: bool,
    /// Bumped on every change of this occurrence alone.
    pub(crate) version: u32,
    pub(crate) modified_at: DateTime<Utc>,
}

/// A stored calendar item: a single meeting or a series master.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub(crate) id: String,
    /// The series' (or meeting's) global object id in hex, as EWS `UID` and Graph `iCalUId`
    /// of the master show it.
    pub(crate) uid: String,
    pub(crate) meeting: Meeting,
    pub(crate) recurrence: Option<Recurrence>,
    pub(crate) cancelled: bool,
    /// Bumped on every change (of the item or, for a master, of any of its occurrences);
    /// the change key and etag derive from it.
    pub(crate) version: u32,
    /// How often the organizer changed the whole meeting or series (EWS
    /// `AppointmentSequenceNumber`); changes of single occurrences count on them alone.
    pub(crate) sequence: u32,
    pub(crate) created_seq: u64,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) modified_at: DateTime<Utc>,
    /// Occurrences changed on their own, by index in the series.
    pub(crate) exceptions: BTreeMap<u32, Exception>,
    /// Occurrences removed from the series, by index.
    pub(crate) deleted_occurrences: BTreeSet<u32>,
    /// Whether the series ends on a date rather than after a number of occurrences: cutting
    /// a series short in Outlook sets an end date.
    pub(crate) ends_by_date: bool,
}

/// What an instance is, in Graph's words (`type`); EWS names are derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InstanceKind {
    Single,
    Occurrence,
    Exception,
    Master,
}

impl InstanceKind {
    pub(crate) fn graph(self) -> &'static str {
        match self {
            Self::Single => "singleInstance",
            Self::Occurrence => "occurrence",
            Self::Exception => "exception",
            Self::Master => "seriesMaster",
        }
    }

    pub(crate) fn ews(self) -> &'static str {
        match self {
            Self::Single => "Single",
            Self::Occurrence => "Occurrence",
            Self::Exception => "Exception",
            Self::Master => "RecurringMaster",
        }
    }

    /// An occurrence or exception: one instance of a series.
    pub(crate) fn in_series(self) -> bool {
        matches!(self, Self::Occurrence | Self::Exception)
    }
}

/// Where an occurrence or exception sits in its series.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub(crate) index: u32,
    /// The start the series gives this occurrence (EWS `RecurrenceId`/`OriginalStart`,
    /// Graph `originalStart`).
    pub(crate) original_start: DateTime<Utc>,
    pub(crate) exception: Option<Exception>,
}

/// One view of an item: the item itself or one of its occurrences.
#[derive(Debug, Clone)]
pub(crate) struct Instance {
    pub(crate) id: String,
    pub(crate) kind: InstanceKind,
    pub(crate) start: DateTime<Utc>,
    pub(crate) end: DateTime<Utc>,
    pub(crate) item: Item,
    /// For an occurrence or exception: its place in the series.
    pub(crate) slot: Option<Slot>,
}

impl Instance {
    pub(crate) fn overlaps(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> bool {
        self.start < to && self.end > from
    }

    /// Cancelled on its own, or as part of a cancelled series.
    pub(crate) fn cancelled(&self) -> bool {
        self.item.cancelled
            || self
                .slot
                .as_ref()
                .and_then(|s| s.exception.as_ref())
                .is_some_and(|e| e.cancelled)
    }

    fn exception(&self) -> Option<&Exception> {
        self.slot.as_ref().and_then(|s| s.exception.as_ref())
    }

    pub(crate) fn original_start(&self) -> Option<DateTime<Utc>> {
        self.slot.as_ref().map(|s| s.original_start)
    }

    pub(crate) fn change_key(&self) -> String {
        match self.exception() {
            // An exception is an item of its own in the store and changes on its own.
            Some(e) => change_key(&self.id, self.item.version.saturating_add(e.version)),
            None => change_key(&self.id, self.item.version),
        }
    }

    pub(crate) fn etag(&self) -> String {
        format!("W/\"{}\"", self.change_key())
    }

    pub(crate) fn modified_at(&self) -> DateTime<Utc> {
        self.exception().map_or(self.item.modified_at, |e| {
            e.modified_at.max(self.item.modified_at)
        })
    }

    /// Graph's `iCalUId`: the series' id for the master and single meetings, and for an
    /// occurrence the series' global object id with its original date written in, as
    /// Exchange derives an instance's id, so every occurrence has its own.
    pub(crate) fn ical_uid(&self) -> String {
        match self.original_start() {
            Some(at) => instance_uid(&self.item.uid, at.date_naive()),
            None => self.item.uid.clone(),
        }
    }

    /// EWS `AppointmentSequenceNumber`: the series' count plus, for an exception, the
    /// changes made to it alone.
    pub(crate) fn sequence(&self) -> u32 {
        let own = self.exception().map_or(0, |e| e.version);
        self.item.sequence.saturating_add(own)
    }
}

fn change_key(id: &str, version: u32) -> String {
    format!("DwAAABYAAAC{}{version:08}", short_hash(id))
}

/// The fixed class id that starts every Exchange global object id.
const GOID_CLASS: &str = "040000008200E00074C5B7101A82E008";

/// A global object id as Exchange writes one in hex: the class id, four bytes of instance
/// date (zero for a series or a single meeting), the creation time as a little-endian
/// FILETIME, eight reserved bytes, then the length and bytes of an opaque part.
fn global_object_id(item_id: &str, created_at: DateTime<Utc>) -> String {
    // FILETIME counts 100 ns ticks since 1601-01-01.
    const EPOCH_DIFF_SECS: i64 = 11_644_473_600;
    let ticks = (created_at.timestamp() + EPOCH_DIFF_SECS)
        .saturating_mul(10_000_000)
        .saturating_add(i64::from(created_at.timestamp_subsec_nanos() / 100));
    let filetime: String = ticks
        .to_le_bytes()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    format!(
        "{GOID_CLASS}00000000{filetime}000000000000000010000000{:016X}{:016X}",
        fnv64(item_id),
        fnv64(&format!("{item_id}/uid"))
    )
}

/// The global object id of one instance: the series' one with the instance date (year in
/// two bytes, month, day) in place of the zeros.
fn instance_uid(series_uid: &str, date: NaiveDate) -> String {
    let (Some(class), Some(rest)) = (series_uid.get(..32), series_uid.get(40..)) else {
        // Not a global object id: still give every instance its own id.
        return format!("{series_uid}{}", date.format("%Y%m%d"));
    };
    format!(
        "{class}{:04X}{:02X}{:02X}{rest}",
        date.year().clamp(0, 0xffff),
        date.month(),
        date.day()
    )
}

impl Item {
    pub(crate) fn change_key(&self) -> String {
        change_key(&self.id, self.version)
    }

    pub(crate) fn etag(&self) -> String {
        format!("W/\"{}\"", self.change_key())
    }

    /// The item itself (a single meeting or a series master).
    pub(crate) fn as_instance(&self) -> Instance {
        let kind = if self.recurrence.is_some() {
            InstanceKind::Master
        } else {
            InstanceKind::Single
        };
        Instance {
            id: self.id.clone(),
            kind,
            start: self.meeting.start,
            end: self.meeting.end,
            item: self.clone(),
            slot: None,
        }
    }

    /// Where occurrence `index` of the series starts and ends by the pattern.
    fn pattern_times(&self, index: u32) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let recurrence = self.recurrence?;
        let shift = recurrence.step() * i32::try_from(index).ok()?;
        Some((self.meeting.start + shift, self.meeting.end + shift))
    }

    /// The start the pattern gives occurrence `index`.
    pub(crate) fn original_start(&self, index: u32) -> Option<DateTime<Utc>> {
        self.pattern_times(index).map(|(start, _)| start)
    }

    /// Occurrence `index` as it stands now; `None` beyond the series or once deleted.
    pub(crate) fn occurrence(&self, index: u32) -> Option<Instance> {
        let recurrence = self.recurrence?;
        if index >= recurrence.count() || self.deleted_occurrences.contains(&index) {
            return None;
        }
        let (original_start, original_end) = self.pattern_times(index)?;
        let exception = self.exceptions.get(&index).cloned();
        let (start, end, kind) = match &exception {
            Some(e) => (e.start, e.end, InstanceKind::Exception),
            None => (original_start, original_end, InstanceKind::Occurrence),
        };
        Some(Instance {
            id: occurrence_id(&self.id, index),
            kind,
            start,
            end,
            item: self.clone(),
            slot: Some(Slot {
                index,
                original_start,
                exception,
            }),
        })
    }

    /// What a calendar view shows: the meeting, or every live occurrence of the series.
    pub(crate) fn expand(&self) -> Vec<Instance> {
        match self.recurrence {
            None => vec![self.as_instance()],
            Some(r) => (0..r.count()).filter_map(|i| self.occurrence(i)).collect(),
        }
    }

    /// The date of the last occurrence the pattern allows (deleted or not).
    pub(crate) fn last_pattern_date(&self) -> Option<NaiveDate> {
        let count = self.recurrence?.count();
        self.original_start(count.checked_sub(1)?)
            .map(|at| at.date_naive())
    }

    /// The live occurrence `index`, or why there is none.
    fn live_occurrence(&self, index: u32) -> Result<Instance, SimError> {
        if self.recurrence.is_none() {
            return Err(SimError::InvalidMeeting(format!(
                "{} is not a series master",
                self.id
            )));
        }
        self.occurrence(index).ok_or_else(|| {
            SimError::UnknownItem(format!("occurrence {index} of series {}", self.id))
        })
    }
}

/// The English name of a date's weekday, as EWS `DaysOfWeek` writes it.
pub(crate) fn weekday_name(date: NaiveDate) -> &'static str {
    match date.weekday() {
        Weekday::Mon => "Monday",
        Weekday::Tue => "Tuesday",
        Weekday::Wed => "Wednesday",
        Weekday::Thu => "Thursday",
        Weekday::Fri => "Friday",
        Weekday::Sat => "Saturday",
        Weekday::Sun => "Sunday",
    }
}

/// The id of occurrence `index` of a series: stable whatever happens to the occurrence.
pub(crate) fn occurrence_id(master: &str, index: u32) -> String {
    format!("{master}OCC{index:04}")
}

/// The master id and index an occurrence id is made of.
pub(crate) fn parse_occurrence_id(id: &str) -> Option<(&str, u32)> {
    let (master, index) = id.rsplit_once("OCC")?;
    if index.len() != 4 || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((master, index.parse().ok()?))
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

/// What a change touched: a whole item, or some occurrences of a series only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Touched {
    Item,
    Occurrences(Vec<u32>),
}

/// One entry of a room's change log.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub(crate) seq: u64,
    pub(crate) item_id: String,
    pub(crate) touched: Touched,
}

/// Everything that happened to one item after some point of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Changed {
    pub(crate) item_id: String,
    /// The latest change's sequence number.
    pub(crate) seq: u64,
    /// Whether some change touched the whole item.
    pub(crate) whole: bool,
    /// The occurrences that changed on their own (moved, cancelled, deleted, cut off).
    pub(crate) occurrences: BTreeSet<u32>,
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

    /// `msgfolderroot`, the top of the information store: the parent of the Calendar.
    pub(crate) fn top_of_store_folder_id(&self) -> String {
        format!(
            "AAMkSIMTOIS{:08x}{}",
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
        let (master, index) = parse_occurrence_id(id)?;
        self.items.get(master)?.occurrence(index)
    }

    /// Whether `id` names an occurrence that was deleted from its (still existing) series.
    pub(crate) fn is_deleted_occurrence(&self, id: &str) -> bool {
        parse_occurrence_id(id).is_some_and(|(master, index)| {
            self.items.get(master).is_some_and(|m| {
                m.deleted_occurrences.contains(&index)
                    && m.recurrence.is_some_and(|r| index < r.count())
            })
        })
    }

    /// The items changed after `seq`, each once, ordered by their latest change.
    pub(crate) fn changed_since(&self, seq: u64) -> Vec<Changed> {
        let mut latest: BTreeMap<&str, Changed> = BTreeMap::new();
        for c in self.changes.iter().filter(|c| c.seq > seq) {
            let entry = latest.entry(&c.item_id).or_insert_with(|| Changed {
                item_id: c.item_id.clone(),
                seq: c.seq,
                whole: false,
                occurrences: BTreeSet::new(),
            });
            entry.seq = c.seq;
            match &c.touched {
                Touched::Item => entry.whole = true,
                Touched::Occurrences(list) => entry.occurrences.extend(list.iter().copied()),
            }
        }
        let mut out: Vec<Changed> = latest.into_values().collect();
        out.sort_by_key(|c| c.seq);
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

    fn log(&mut self, room: &str, item: &Item, touched: Touched, ews: &[(EventKind, EwsTarget)]) {
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
                touched,
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
            uid: global_object_id(&id, now),
            id: id.clone(),
            meeting,
            recurrence,
            cancelled: false,
            version: 1,
            sequence: 0,
            created_seq: self.seq + 1,
            created_at: now,
            modified_at: now,
            exceptions: BTreeMap::new(),
            deleted_occurrences: BTreeSet::new(),
            ends_by_date: false,
        };
        self.room_mut(room)?.items.insert(id, item.clone());
        // The folder reports its own change with every item event. The modifications that
        // follow a booking are the calendar attendant's ([`Self::attendant_touch`]).
        let ews = [
            (EventKind::Created, Self::item_target(&item)),
            (EventKind::Modified, EwsTarget::Folder),
        ];
        self.log(room, &item, Touched::Item, &ews);
        Ok(Applied {
            room: Self::key(room),
            kind: ChangeKind::Created,
            item,
        })
    }

    /// Records that a series just created ends on a date (its range reads as an end date).
    pub(crate) fn mark_ends_by_date(&mut self, room: &str, id: &str) {
        if let Some(item) = self
            .rooms
            .get_mut(&Self::key(room))
            .and_then(|r| r.items.get_mut(id))
        {
            item.ends_by_date = true;
        }
    }

    /// Changes a whole item in place and logs an update.
    pub(crate) fn update(
        &mut self,
        room: &str,
        id: &str,
        change: impl FnOnce(&mut Item) -> Result<(), SimError>,
    ) -> Result<Applied, SimError> {
        self.update_touching(room, id, |item| {
            change(item)?;
            item.sequence += 1;
            Ok(Touched::Item)
        })
    }

    /// The calendar attendant processing a booking: it updates the item without any change
    /// the organizer made (no new `AppointmentSequenceNumber`), so the item gets a new
    /// version, change key and etag, and every view reports an update.
    pub(crate) fn attendant_touch(&mut self, room: &str, id: &str) -> Result<Applied, SimError> {
        self.update_touching(room, id, |_| Ok(Touched::Item))
    }

    /// Changes an item in place and logs an update of what `change` says it touched. A
    /// change that fails leaves the item as it was. Whatever part of a series changes,
    /// Exchange reports the master as modified (EWS `ModifiedEvent`, Graph `updated`).
    fn update_touching(
        &mut self,
        room: &str,
        id: &str,
        change: impl FnOnce(&mut Item) -> Result<Touched, SimError>,
    ) -> Result<Applied, SimError> {
        let r = self.room_mut(room)?;
        let stored = r
            .items
            .get_mut(id)
            .ok_or_else(|| SimError::UnknownItem(id.to_owned()))?;
        let mut item = stored.clone();
        let touched = change(&mut item)?;
        validate(&item.meeting)?;
        item.version += 1;
        item.modified_at = Utc::now();
        *stored = item.clone();
        let ews = [
            (EventKind::Modified, Self::item_target(&item)),
            (EventKind::Modified, EwsTarget::Folder),
        ];
        self.log(room, &item, touched, &ews);
        Ok(Applied {
            room: Self::key(room),
            kind: ChangeKind::Updated,
            item,
        })
    }

    /// Turns occurrence `index` of a series into an exception at a new time; returns the
    /// change and the occurrence's (unchanged) id.
    pub(crate) fn move_occurrence(
        &mut self,
        room: &str,
        master: &str,
        index: u32,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<(Applied, String), SimError> {
        if end <= start {
            return Err(SimError::InvalidMeeting(
                "a meeting must end after it starts".to_owned(),
            ));
        }
        self.change_occurrence(
            room,
            master,
            index,
            |item| check_no_crossing(item, index, start),
            |e| {
                e.start = start;
                e.end = end;
            },
        )
    }

    /// Makes occurrence `index` an exception (if it is not one yet) once `check` passes, and
    /// applies `change` to it as a new version; returns the change and the occurrence's
    /// (unchanged) id.
    fn change_occurrence(
        &mut self,
        room: &str,
        master: &str,
        index: u32,
        check: impl FnOnce(&Item) -> Result<(), SimError>,
        change: impl FnOnce(&mut Exception),
    ) -> Result<(Applied, String), SimError> {
        let mut id = String::new();
        let applied = self.update_touching(room, master, |item| {
            let occurrence = item.live_occurrence(index)?;
            check(item)?;
            id = occurrence.id;
            let now = Utc::now();
            let exception = item.exceptions.entry(index).or_insert_with(|| Exception {
                start: occurrence.start,
                end: occurrence.end,
                cancelled: false,
                version: 0,
                modified_at: now,
            });
            change(exception);
            exception.version += 1;
            exception.modified_at = now;
            Ok(Touched::Occurrences(vec![index]))
        })?;
        Ok((applied, id))
    }

    /// Cancels occurrence `index` alone: it stays in the calendar as a cancelled exception.
    pub(crate) fn cancel_occurrence(
        &mut self,
        room: &str,
        master: &str,
        index: u32,
    ) -> Result<(Applied, String), SimError> {
        self.change_occurrence(room, master, index, |_| Ok(()), |e| e.cancelled = true)
    }

    /// Removes occurrence `index` from its series (it joins the master's deleted
    /// occurrences); returns the change and the id the occurrence had.
    pub(crate) fn delete_occurrence(
        &mut self,
        room: &str,
        master: &str,
        index: u32,
    ) -> Result<(Applied, String), SimError> {
        let mut id = String::new();
        let applied = self.update_touching(room, master, |item| {
            id = item.live_occurrence(index)?.id;
            item.exceptions.remove(&index);
            item.deleted_occurrences.insert(index);
            Ok(Touched::Occurrences(vec![index]))
        })?;
        Ok((applied, id))
    }

    /// Cuts a series to its first `count` occurrences, as setting an earlier end date does:
    /// the later ones (exceptions included) are gone, and the range now ends on a date.
    pub(crate) fn end_series(
        &mut self,
        room: &str,
        master: &str,
        count: u32,
    ) -> Result<Applied, SimError> {
        self.update_touching(room, master, |item| {
            let Some(recurrence) = item.recurrence else {
                return Err(SimError::InvalidMeeting(format!(
                    "{master} is not a series master"
                )));
            };
            let before = recurrence.count();
            if count == 0 || count > before {
                return Err(SimError::InvalidMeeting(format!(
                    "the series has {before} occurrences; it can be cut to 1..={before}"
                )));
            }
            item.recurrence = Some(recurrence.with_count(count));
            item.ends_by_date = true;
            item.exceptions.retain(|i, _| *i < count);
            item.deleted_occurrences.retain(|i| *i < count);
            Ok(Touched::Occurrences((count..before).collect()))
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
            Touched::Item,
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

/// Exchange refuses to move an occurrence onto or past the start of a neighbouring one
/// (`ErrorOccurrenceCrossingBoundary`): the series' order must hold.
fn check_no_crossing(item: &Item, index: u32, start: DateTime<Utc>) -> Result<(), SimError> {
    let live = item.expand();
    let before = live
        .iter()
        .filter_map(|i| i.slot.as_ref().map(|s| (s.index, i.start)))
        .rfind(|(i, _)| *i < index);
    let after = live
        .iter()
        .filter_map(|i| i.slot.as_ref().map(|s| (s.index, i.start)))
        .find(|(i, _)| *i > index);
    let crosses =
        before.is_some_and(|(_, at)| start <= at) || after.is_some_and(|(_, at)| start >= at);
    if crosses {
        return Err(SimError::InvalidMeeting(format!(
            "occurrence {index} cannot be moved onto or past a neighbouring occurrence"
        )));
    }
    Ok(())
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
                .map(|c| c.item_id.as_str())
                .collect::<Vec<_>>(),
            [a.as_str(), b.as_str()]
        );
        assert!(changed.iter().all(|c| c.whole));
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

    fn series(cal: &mut Calendars, count: u32) -> String {
        cal.create("r@x", meeting(9), Some(Recurrence::Daily { count }))
            .unwrap()
            .item
            .id
    }

    #[test]
    fn a_moved_occurrence_becomes_an_exception_with_its_original_start() {
        let mut cal = Calendars::new(1, &[]);
        let master = series(&mut cal, 3);
        let new_start = Utc.with_ymd_and_hms(2026, 3, 3, 15, 0, 0).unwrap();
        let (_, id) = cal
            .move_occurrence("r@x", &master, 1, new_start, new_start + Duration::hours(1))
            .unwrap();
        assert_eq!(id, occurrence_id(&master, 1));
        let inst = cal.room("r@x").unwrap().instance(&id).unwrap();
        assert_eq!(inst.kind, InstanceKind::Exception);
        assert_eq!(inst.start, new_start);
        assert_eq!(
            inst.original_start(),
            Some(Utc.with_ymd_and_hms(2026, 3, 3, 9, 0, 0).unwrap())
        );
    }

    #[test]
    fn occurrence_uids_carry_their_original_date_in_the_series_global_object_id() {
        let mut cal = Calendars::new(1, &[]);
        let master = series(&mut cal, 2);
        let item = cal.room("r@x").unwrap().items[&master].clone();
        assert!(item.uid.starts_with(GOID_CLASS));
        assert_eq!(item.uid.get(32..40), Some("00000000"));
        let second = item.occurrence(1).unwrap();
        let uid = second.ical_uid();
        // 2026-03-03: 0x07EA, 3, 3.
        assert_eq!(uid.get(32..40), Some("07EA0303"));
        assert_eq!(uid.get(..32), item.uid.get(..32));
        assert_eq!(uid.get(40..), item.uid.get(40..));
        assert_eq!(item.as_instance().ical_uid(), item.uid);
    }

    #[test]
    fn a_refused_change_leaves_the_item_as_it_was() {
        let mut cal = Calendars::new(1, &[]);
        let id = cal.create("r@x", meeting(9), None).unwrap().item.id;
        let seq = cal.seq;
        let refused = cal.update("r@x", &id, |item| {
            item.meeting.end = item.meeting.start;
            Ok(())
        });
        assert!(matches!(refused, Err(SimError::InvalidMeeting(_))));
        let item = &cal.room("r@x").unwrap().items[&id];
        assert_eq!(item.meeting, meeting(9));
        assert_eq!(item.version, 1);
        assert_eq!(cal.seq, seq);
    }

    #[test]
    fn changed_since_gathers_the_occurrences_a_series_changed_in() {
        let mut cal = Calendars::new(1, &[]);
        let master = series(&mut cal, 5);
        let before = cal.seq;
        cal.cancel_occurrence("r@x", &master, 0).unwrap();
        cal.delete_occurrence("r@x", &master, 2).unwrap();
        cal.end_series("r@x", &master, 4).unwrap();
        let changed = cal.room("r@x").unwrap().changed_since(before);
        assert_eq!(changed.len(), 1);
        assert!(!changed[0].whole);
        assert_eq!(
            changed[0].occurrences.iter().copied().collect::<Vec<_>>(),
            [0, 2, 4]
        );
    }

    #[test]
    fn ending_a_series_forgets_the_exceptions_and_deletions_beyond_its_new_end() {
        let mut cal = Calendars::new(1, &[]);
        let master = series(&mut cal, 5);
        cal.cancel_occurrence("r@x", &master, 4).unwrap();
        cal.delete_occurrence("r@x", &master, 3).unwrap();
        cal.delete_occurrence("r@x", &master, 1).unwrap();
        let applied = cal.end_series("r@x", &master, 3).unwrap();
        let item = applied.item;
        assert_eq!(item.recurrence, Some(Recurrence::Daily { count: 3 }));
        assert!(item.ends_by_date);
        assert!(item.exceptions.is_empty());
        assert_eq!(
            item.deleted_occurrences.iter().copied().collect::<Vec<_>>(),
            [1]
        );
        assert_eq!(item.expand().len(), 2);
        assert_eq!(
            item.last_pattern_date(),
            NaiveDate::from_ymd_opt(2026, 3, 4)
        );
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
