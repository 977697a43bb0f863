//! `rooms-sync events replay`: puts dead events back to `pending` for the worker, after the
//! cause of their failures is fixed. All of it happens in one transaction, so a replay is
//! either whole or did nothing.
//!
//! Given ids are checked first: an id that names no event is most likely a typo, so the command
//! changes nothing and exits 2 naming it; an event that is not dead (done, still pending...) is
//! left alone and named on stderr, and the others are replayed.

use std::io::Write as _;
use std::process::ExitCode;

use sqlx::{Connection, PgConnection};

use super::ReplayArgs;
use crate::config::DatabaseSettings;
use crate::db;
use crate::db::status::{EventState, Replayed};
use crate::domain::EventStatus;

/// What a replay did.
#[derive(Debug)]
enum Outcome {
    Replayed {
        replayed: Replayed,
        /// Given events that are not dead, untouched.
        skipped: Vec<EventState>,
    },
    /// Given ids that name no event; nothing was changed.
    Unknown(Vec<i64>),
}

/// Runs the command: exit 0 (replayed, possibly nothing), 2 (unknown ids) or 1 (database).
pub(super) async fn run(settings: &DatabaseSettings, args: &ReplayArgs) -> ExitCode {
    const COMMAND: &str = "events replay";
    let mut connection = match super::connect(COMMAND, settings).await {
        Ok(connection) => connection,
        Err(code) => return code,
    };
    let outcome = replay(&mut connection, args).await;
    // Committed or rolled back already; a failed goodbye to the server changes nothing.
    let _ = connection.close().await;
    match outcome {
        Ok(Outcome::Replayed { replayed, skipped }) => {
            if !skipped.is_empty() {
                let named: Vec<String> = skipped
                    .iter()
                    .map(|e| format!("{} ({})", e.id, e.status.as_str()))
                    .collect();
                eprintln!(
                    "rooms-sync {COMMAND}: skipped {} not dead: {}",
                    if skipped.len() == 1 {
                        "1 event".to_owned()
                    } else {
                        format!("{} events", skipped.len())
                    },
                    named.join(", ")
                );
            }
            // Not `println!`: it panics when stdout is closed, and the replay is committed.
            let _ = writeln!(std::io::stdout(), "{}", report(replayed));
            ExitCode::SUCCESS
        }
        Ok(Outcome::Unknown(ids)) => {
            let named: Vec<String> = ids.iter().map(i64::to_string).collect();
            eprintln!(
                "rooms-sync {COMMAND}: no event with id {}; nothing was replayed",
                named.join(", ")
            );
            ExitCode::from(2)
        }
        Err(error) => super::database_failure(COMMAND, &error),
    }
}

async fn replay(connection: &mut PgConnection, args: &ReplayArgs) -> Result<Outcome, sqlx::Error> {
    let mut tx = connection.begin().await?;
    if args.all {
        let replayed = db::status::replay_dead(&mut *tx, None).await?;
        tx.commit().await?;
        return Ok(Outcome::Replayed {
            replayed,
            skipped: Vec::new(),
        });
    }
    let mut ids = args.ids.clone();
    ids.sort_unstable();
    ids.dedup();
    let found = db::status::lock_events(&mut *tx, &ids).await?;
    let unknown: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| !found.iter().any(|e| e.id == *id))
        .collect();
    if !unknown.is_empty() {
        tx.rollback().await?;
        return Ok(Outcome::Unknown(unknown));
    }
    let (dead, skipped): (Vec<EventState>, Vec<EventState>) = found
        .into_iter()
        .partition(|e| e.status == EventStatus::Dead);
    let dead: Vec<i64> = dead.iter().map(|e| e.id).collect();
    let replayed = if dead.is_empty() {
        Replayed {
            events: 0,
            mailboxes: 0,
        }
    } else {
        db::status::replay_dead(&mut *tx, Some(&dead)).await?
    };
    tx.commit().await?;
    Ok(Outcome::Replayed { replayed, skipped })
}

/// `replayed 3 dead events (2 mailboxes due for a sync now)`.
fn report(replayed: Replayed) -> String {
    let events = if replayed.events == 1 {
        "1 dead event".to_owned()
    } else {
        format!("{} dead events", replayed.events)
    };
    match replayed.mailboxes {
        0 => format!("replayed {events}"),
        1 => format!("replayed {events} (1 mailbox due for a sync now)"),
        n => format!("replayed {events} ({n} mailboxes due for a sync now)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_counts_events_and_mailboxes_in_words() {
        let r = |events, mailboxes| report(Replayed { events, mailboxes });
        assert_eq!(r(0, 0), "replayed 0 dead events");
        assert_eq!(
            r(1, 1),
            "replayed 1 dead event (1 mailbox due for a sync now)"
        );
        assert_eq!(
            r(3, 2),
            "replayed 3 dead events (2 mailboxes due for a sync now)"
        );
    }
}
