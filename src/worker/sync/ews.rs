//! An EWS round.
//!
//! Incremental: `SyncFolderItems` from the stored sync state says which items of the room's
//! calendar were created, changed or deleted (with each item's UID and type); `GetItem` reads
//! single meetings in batches (a per-item `ErrorItemNotFound` means deleted); each changed
//! series master is expanded with a `CalendarView` over the window (the only way EWS lists a
//! series' occurrences), whose occurrences are read with `GetItem` too.
//!
//! Full (first sight, rejected sync state, resync asked for, window roll): a fresh sync state
//! is read from the beginning (which also names every series master), the window's
//! `CalendarView` lists every single meeting and occurrence, `GetItem` reads them, and rows in
//! the window that were not read are gone.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, TimeDelta, Utc};

use super::occurrence::{NotAnOccurrence, from_ews};
use super::{Changes, Fetched, SyncError, Syncer};
use crate::db::mailboxes::{SyncClaim, SyncCursor};
use crate::domain::{Backend, Occurrence};
use crate::ews::{
    CalendarItem, CalendarItemType, ChangeKind, FetchedItem, MAX_CALENDAR_VIEW, MAX_SYNC_CHANGES,
    ResponseCode,
};
use crate::exchange::ExchangeError;
use crate::exchange::ews::SyncOutcome;

/// `SyncFolderItems` calls in one round at most (512 changes each).
const MAX_SYNC_CALLS: usize = 2_000;
/// Items asked of one `CalendarView` call; a window holding more is split.
const VIEW_PAGE: u32 = 1_000;
/// A window is not split below this: a room cannot hold a thousand meetings in an hour.
const MIN_VIEW_SPAN: TimeDelta = TimeDelta::hours(1);

type Window = (DateTime<Utc>, DateTime<Utc>);

/// Reads one round of `claim`'s mailbox.
pub(super) async fn round(
    syncer: &Syncer,
    claim: &SyncClaim,
    window: Window,
    full: bool,
) -> Result<Fetched, SyncError> {
    if !full && let Some(state) = &claim.sync_cursor {
        match incremental(syncer, claim, state, window).await? {
            Some(fetched) => return Ok(fetched),
            None => {
                tracing::info!(mailbox = %claim.address, "sync state no longer accepted; full sync")
            }
        }
    }
    full_round(syncer, claim, window).await
}

/// What `SyncFolderItems` reported since a state, each id's last word.
#[derive(Debug, Default)]
struct Reported {
    state: String,
    /// Created or changed items: id → (UID, type).
    changed: Vec<(String, Option<String>, Option<CalendarItemType>)>,
    deleted: Vec<String>,
}

/// Runs `SyncFolderItems` from `state` (`None`: from the beginning) to the end. `None` when
/// Exchange rejects the state.
async fn sync_items(
    syncer: &Syncer,
    claim: &SyncClaim,
    state: Option<&str>,
) -> Result<Option<Reported>, SyncError> {
    let ews = syncer.client.ews();
    let mut state = state.map(str::to_owned);
    let mut changed: HashMap<String, (Option<String>, Option<CalendarItemType>)> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut deleted: HashSet<String> = HashSet::new();
    for _ in 0..MAX_SYNC_CALLS {
        let batch = match ews
            .sync_folder_items(&claim.address, state.as_deref(), MAX_SYNC_CHANGES)
            .await?
        {
            SyncOutcome::Changes(batch) => batch,
            SyncOutcome::StateRejected { .. } => return Ok(None),
        };
        for change in batch.changes {
            let id = change.item.id;
            match change.kind {
                ChangeKind::Create | ChangeKind::Update => {
                    deleted.remove(&id);
                    if changed
                        .insert(id.clone(), (change.uid, change.item_type))
                        .is_none()
                    {
                        order.push(id);
                    }
                }
                ChangeKind::Delete => {
                    changed.remove(&id);
                    deleted.insert(id);
                }
                ChangeKind::ReadFlagChange => {}
            }
        }
        state = Some(batch.sync_state);
        if batch.includes_last_item_in_range {
            let changed = order
                .into_iter()
                .filter_map(|id| changed.remove(&id).map(|(uid, t)| (id, uid, t)))
                .collect();
            return Ok(Some(Reported {
                state: state.unwrap_or_default(),
                changed,
                deleted: deleted.into_iter().collect(),
            }));
        }
    }
    Err(ExchangeError::Protocol(format!(
        "SyncFolderItems for {} did not reach the last item within {MAX_SYNC_CALLS} calls",
        claim.address
    ))
    .into())
}

async fn incremental(
    syncer: &Syncer,
    claim: &SyncClaim,
    state: &str,
    window: Window,
) -> Result<Option<Fetched>, SyncError> {
    let Some(reported) = sync_items(syncer, claim, Some(state)).await? else {
        return Ok(None);
    };
    let mut changes = Changes {
        deleted: reported.deleted,
        ..Changes::default()
    };
    let mut masters: Vec<(String, String)> = Vec::new();
    let mut singles: Vec<&str> = Vec::new();
    for (id, uid, item_type) in &reported.changed {
        match (item_type, uid) {
            (Some(CalendarItemType::RecurringMaster), Some(uid)) => {
                masters.push((id.clone(), uid.clone()));
            }
            _ => singles.push(id),
        }
    }
    for (id, fetched) in get_items(syncer, claim, &singles).await? {
        match fetched {
            Read::Item(item) => match from_ews(&item, None) {
                Ok(occurrence) => changes.upserts.push(occurrence),
                Err(NotAnOccurrence::Master(_)) => {
                    if let Some(uid) = item.uid.clone() {
                        masters.push((item.id.clone(), uid));
                    }
                }
                Err(e) => tracing::warn!(mailbox = %claim.address, error = %e, "item skipped"),
            },
            Read::Gone => changes.deleted.push(id),
        }
    }
    if !masters.is_empty() {
        let by_uid: HashMap<&str, &str> = masters
            .iter()
            .map(|(id, uid)| (uid.as_str(), id.as_str()))
            .collect();
        let occurrences = expand(syncer, claim, window, &by_uid).await?;
        let mut kept: HashMap<&str, Vec<String>> = masters
            .iter()
            .map(|(id, _)| (id.as_str(), Vec::new()))
            .collect();
        for o in &occurrences {
            if let Some(list) = o.series_master_id.as_deref().and_then(|m| kept.get_mut(m)) {
                list.push(o.item_id.clone());
            }
        }
        changes.series = kept
            .into_iter()
            .map(|(master, keep)| (master.to_owned(), keep))
            .collect();
        changes.upserts.extend(occurrences);
    }
    Ok(Some(Fetched {
        changes,
        cursor: cursor(reported.state, window),
        full: false,
    }))
}

async fn full_round(
    syncer: &Syncer,
    claim: &SyncClaim,
    window: Window,
) -> Result<Fetched, SyncError> {
    let Some(reported) = sync_items(syncer, claim, None).await? else {
        return Err(ExchangeError::Protocol(format!(
            "SyncFolderItems for {} refused a sync from the beginning",
            claim.address
        ))
        .into());
    };
    let masters: HashMap<&str, &str> = reported
        .changed
        .iter()
        .filter(|(_, _, t)| *t == Some(CalendarItemType::RecurringMaster))
        .filter_map(|(id, uid, _)| Some((uid.as_deref()?, id.as_str())))
        .collect();
    let listed = calendar_view(syncer, claim, window).await?;
    let ids: Vec<&str> = listed.iter().map(|i| i.id.as_str()).collect();
    let mut upserts = Vec::with_capacity(ids.len());
    for (_, fetched) in get_items(syncer, claim, &ids).await? {
        let Read::Item(item) = fetched else {
            continue;
        };
        let master = match item.calendar_item_type {
            Some(CalendarItemType::Occurrence | CalendarItemType::Exception) => {
                item.uid.as_deref().and_then(|u| masters.get(u).copied())
            }
            _ => None,
        };
        match from_ews(&item, master) {
            Ok(o) => upserts.push(o),
            Err(e) => tracing::warn!(mailbox = %claim.address, error = %e, "item skipped"),
        }
    }
    Ok(Fetched {
        changes: Changes {
            upserts,
            full_window: Some(window),
            ..Changes::default()
        },
        cursor: cursor(reported.state, window),
        full: true,
    })
}

fn cursor(state: String, window: Window) -> SyncCursor {
    SyncCursor {
        cursor: state,
        backend: Backend::Ews,
        // The state is not windowed, but occurrences were expanded over this window: a new
        // window is a reason for a full round.
        window: Some(window),
    }
}

/// The occurrences in the window of the series named by `masters` (UID → master id), read
/// with `GetItem`.
async fn expand(
    syncer: &Syncer,
    claim: &SyncClaim,
    window: Window,
    masters: &HashMap<&str, &str>,
) -> Result<Vec<Occurrence>, SyncError> {
    let listed = calendar_view(syncer, claim, window).await?;
    let wanted: Vec<(&str, &str)> = listed
        .iter()
        .filter(|i| {
            matches!(
                i.calendar_item_type,
                Some(CalendarItemType::Occurrence | CalendarItemType::Exception)
            )
        })
        .filter_map(|i| Some((i.id.as_str(), *masters.get(i.uid.as_deref()?)?)))
        .collect();
    let master_of: HashMap<&str, &str> = wanted.iter().copied().collect();
    let ids: Vec<&str> = wanted.iter().map(|(id, _)| *id).collect();
    let mut out = Vec::with_capacity(ids.len());
    for (id, fetched) in get_items(syncer, claim, &ids).await? {
        if let Read::Item(item) = fetched {
            match from_ews(&item, master_of.get(id.as_str()).copied()) {
                Ok(o) => out.push(o),
                Err(e) => {
                    tracing::warn!(mailbox = %claim.address, error = %e, "occurrence skipped")
                }
            }
        }
    }
    Ok(out)
}

/// Every item and occurrence in the window, by `FindItem` with `CalendarView`: the window in
/// pieces of at most two years, a piece split in two when it holds more than a page.
async fn calendar_view(
    syncer: &Syncer,
    claim: &SyncClaim,
    window: Window,
) -> Result<Vec<CalendarItem>, SyncError> {
    let ews = syncer.client.ews();
    let mut pieces = Vec::new();
    let mut start = window.0;
    while start < window.1 {
        let end = (start + MAX_CALENDAR_VIEW).min(window.1);
        pieces.push((start, end));
        start = end;
    }
    pieces.reverse();
    let mut seen = HashSet::new();
    let mut items = Vec::new();
    while let Some((from, to)) = pieces.pop() {
        let page = ews
            .calendar_view(&claim.address, from, to, VIEW_PAGE)
            .await?;
        if !page.includes_last_item_in_range && to - from > MIN_VIEW_SPAN {
            let mid = from + (to - from) / 2;
            pieces.push((mid, to));
            pieces.push((from, mid));
            continue;
        }
        if !page.includes_last_item_in_range {
            tracing::warn!(mailbox = %claim.address, %from, %to, "more items in an hour than a page holds; some are not read");
        }
        // An item spanning two pieces is listed in both.
        items.extend(page.items.into_iter().filter(|i| seen.insert(i.id.clone())));
    }
    Ok(items)
}

/// What `GetItem` said about one id.
#[derive(Debug)]
enum Read {
    Item(Box<CalendarItem>),
    /// Not found, or not a calendar item: not a booking of this calendar any more.
    Gone,
}

/// Exchange's ways of saying an id names nothing any more: the item was deleted, or the
/// occurrence was deleted from its series.
fn is_gone(e: &crate::ews::EwsError) -> bool {
    match e.effective_code() {
        ResponseCode::ErrorItemNotFound => true,
        ResponseCode::Other(code) => code == "ErrorCalendarOccurrenceIsDeletedFromRecurrence",
        _ => false,
    }
}

/// `GetItem` of `ids` in batches.
async fn get_items(
    syncer: &Syncer,
    claim: &SyncClaim,
    ids: &[&str],
) -> Result<Vec<(String, Read)>, SyncError> {
    let ews = syncer.client.ews();
    let mut out = Vec::with_capacity(ids.len());
    for batch in ids.chunks(syncer.options.get_item_batch.max(1)) {
        let answers = ews.get_items(&claim.address, batch).await?;
        for (id, answer) in batch.iter().zip(answers) {
            let fetched = match answer {
                FetchedItem::Calendar(item) => Read::Item(item),
                FetchedItem::NotCalendar(_) => Read::Gone,
                FetchedItem::Error(e) if is_gone(&e) => Read::Gone,
                FetchedItem::Error(e) => {
                    return Err(ExchangeError::Rejected {
                        status: 200,
                        code: e.effective_code().to_string(),
                        message: format!("GetItem of {id}: {e}"),
                    }
                    .into());
                }
            };
            out.push(((*id).to_owned(), fetched));
        }
    }
    Ok(out)
}
