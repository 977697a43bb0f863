//! A Graph round: `calendarView/delta` from the stored delta link (an incremental round) or
//! from the window (a full round), every page followed to the round's delta link.
//!
//! The links are used verbatim. A link Graph no longer knows (`410`, `SyncStateNotFound`)
//! turns the round into a full one. Pagination stops with an error when a `nextLink` repeats
//! or pages keep repeating what the round already has (a known service loop with recurring
//! series and `odata.maxpagesize`).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::occurrence::from_graph;
use super::{Changes, Fetched, SyncError, Syncer};
use crate::db;
use crate::db::mailboxes::{SyncClaim, SyncCursor};
use crate::domain::Backend;
use crate::exchange::ExchangeError;
use crate::exchange::graph::DeltaOutcome;
use crate::graph::delta::{DeltaEntry, DeltaLink, Event, EventType};

/// Pages followed in one round at most (100 events a page).
const MAX_PAGES: usize = 5_000;
/// Consecutive pages holding nothing new before the round is declared looping.
const MAX_STALE_PAGES: usize = 3;

type Window = (DateTime<Utc>, DateTime<Utc>);

/// Reads one round of `claim`'s mailbox.
pub(super) async fn round(
    syncer: &Syncer,
    claim: &SyncClaim,
    window: Window,
    full: bool,
) -> Result<Fetched, SyncError> {
    let stored = match (
        &claim.sync_cursor,
        claim.sync_window_start,
        claim.sync_window_end,
    ) {
        (Some(link), Some(from), Some(to)) if !full => Some((link.clone(), (from, to))),
        _ => None,
    };
    let (pages, round_window, full) = match stored {
        Some((link, stored_window)) => match pages(syncer, claim, &link).await? {
            Pages::Done(done) => (done, stored_window, false),
            Pages::Reset(detail) => {
                tracing::info!(mailbox = %claim.address, %detail, "delta link no longer valid; full sync");
                (fresh(syncer, claim, window).await?, window, true)
            }
        },
        None => (fresh(syncer, claim, window).await?, window, true),
    };
    let Done {
        entries,
        delta_link,
    } = pages;
    let mut changes = Changes {
        delete_window: Some(round_window),
        full_window: full.then_some(round_window),
        ..Changes::default()
    };
    let events: Vec<&Event> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::Changed(event) => Some(event.as_ref()),
            Entry::Removed(_) => None,
        })
        .collect();
    let series_uids = series_uids(syncer, claim, &events).await?;
    for entry in &entries {
        match entry {
            Entry::Changed(event) => {
                let uid = event
                    .series_master_id
                    .as_ref()
                    .and_then(|m| series_uids.get(m).cloned());
                changes.upserts.push(from_graph(event, uid));
            }
            Entry::Removed(id) => changes.deleted.push(id.clone()),
        }
    }
    Ok(Fetched {
        changes,
        cursor: SyncCursor {
            cursor: delta_link,
            backend: Backend::Graph,
            window: Some(round_window),
        },
        full,
    })
}

/// A round from the window (the first one, or after the link was lost).
async fn fresh(syncer: &Syncer, claim: &SyncClaim, window: Window) -> Result<Done, SyncError> {
    let url = syncer
        .client
        .graph()
        .delta_start_url(&claim.address, window.0, window.1);
    match pages(syncer, claim, &url).await? {
        Pages::Done(done) => Ok(done),
        // A link Graph handed out a moment ago is already gone: try again later.
        Pages::Reset(detail) => Err(ExchangeError::Transient { detail }.into()),
    }
}

/// The last word of the round on each id, in first-seen order.
#[derive(Debug)]
enum Entry {
    Changed(Box<Event>),
    Removed(String),
}

#[derive(Debug)]
struct Done {
    entries: Vec<Entry>,
    delta_link: String,
}

#[derive(Debug)]
enum Pages {
    Done(Done),
    /// The link (or one of its next links) is no longer valid.
    Reset(String),
}

/// Tells a round that moves on from one that loops: a `nextLink` seen before in the round, or
/// [`MAX_STALE_PAGES`] pages in a row that bring nothing the round does not have.
#[derive(Debug, Default)]
struct LoopGuard {
    links: HashSet<String>,
    stale: usize,
}

impl LoopGuard {
    /// After a page that brought `new` entries (or was empty) and points at `next`: whether
    /// following it is still progress.
    fn moves_on(&mut self, new: bool, next: &str) -> bool {
        self.stale = if new { 0 } else { self.stale + 1 };
        self.stale < MAX_STALE_PAGES && self.links.insert(next.to_owned())
    }
}

/// Follows a round from `url` to its delta link.
async fn pages(syncer: &Syncer, claim: &SyncClaim, url: &str) -> Result<Pages, SyncError> {
    let graph = syncer.client.graph();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut entries: Vec<Entry> = Vec::new();
    let mut guard = LoopGuard::default();
    guard.links.insert(url.to_owned());
    let mut url = url.to_owned();
    for _ in 0..MAX_PAGES {
        let page = match graph.delta_page(&claim.address, &url).await? {
            DeltaOutcome::Page(page) => page,
            DeltaOutcome::Reset { detail } => return Ok(Pages::Reset(detail)),
        };
        let mut new = page.entries.is_empty();
        for entry in page.entries {
            let (id, entry) = match entry {
                // Graph's calendar view has no masters; should one come, it is no booking.
                DeltaEntry::Changed(e) if e.event_type == Some(EventType::SeriesMaster) => continue,
                DeltaEntry::Changed(e) => (e.id.clone(), Entry::Changed(e)),
                DeltaEntry::Removed { id } => (id.clone(), Entry::Removed(id)),
            };
            match index.get(&id) {
                Some(&i) => entries[i] = entry,
                None => {
                    new = true;
                    index.insert(id, entries.len());
                    entries.push(entry);
                }
            }
        }
        match page.link {
            DeltaLink::Delta(delta_link) => {
                return Ok(Pages::Done(Done {
                    entries,
                    delta_link,
                }));
            }
            DeltaLink::Next(next) => {
                if !guard.moves_on(new, &next) {
                    return Err(ExchangeError::Protocol(format!(
                        "Graph's delta pages for {} loop (a repeated nextLink or pages of nothing new)",
                        claim.address
                    ))
                    .into());
                }
                url = next;
            }
        }
    }
    Err(ExchangeError::Protocol(format!(
        "Graph's delta round for {} did not end within {MAX_PAGES} pages",
        claim.address
    ))
    .into())
}

/// The series UID (the master's `iCalUId`) of every series the round's occurrences belong
/// to: from earlier rounds where known, else asked of Graph once per master.
async fn series_uids(
    syncer: &Syncer,
    claim: &SyncClaim,
    events: &[&Event],
) -> Result<HashMap<String, String>, SyncError> {
    let masters: HashSet<&str> = events
        .iter()
        .filter_map(|e| e.series_master_id.as_deref())
        .collect();
    if masters.is_empty() {
        return Ok(HashMap::new());
    }
    let masters: Vec<&str> = masters.into_iter().collect();
    let mut known: HashMap<String, String> =
        db::reservations::known_series_uids(&syncer.pool, claim.id, &masters)
            .await?
            .into_iter()
            .collect();
    for master in masters {
        if known.contains_key(master) {
            continue;
        }
        if let Some(uid) = syncer
            .client
            .graph()
            .event_ical_uid(&claim.address, master)
            .await?
        {
            known.insert(master.to_owned(), uid);
        }
    }
    Ok(known)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_next_link_seen_before_in_the_round_is_a_loop() {
        let mut guard = LoopGuard::default();
        assert!(guard.moves_on(true, "https://g/delta?$skiptoken=1"));
        assert!(guard.moves_on(true, "https://g/delta?$skiptoken=2"));
        assert!(!guard.moves_on(true, "https://g/delta?$skiptoken=1"));
    }

    #[test]
    fn pages_of_nothing_new_stop_the_round_after_a_few_but_an_empty_page_does_not() {
        let mut guard = LoopGuard::default();
        assert!(guard.moves_on(false, "n1"));
        assert!(guard.moves_on(false, "n2"));
        assert!(!guard.moves_on(false, "n3"), "three pages of repeats");
        let mut guard = LoopGuard::default();
        for i in 0..10 {
            // Graph may send empty pages with a next link: "more pages … even if empty".
            assert!(guard.moves_on(true, &format!("empty{i}")));
        }
    }
}
