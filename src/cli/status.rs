//! `rooms-sync status`: one row per mailbox (subscription, last notification, last sync, waiting
//! and dead events) read from the database alone, so it works the same next to a running
//! `serve`, with several replicas, or with none. It reads one snapshot, takes no locks the
//! service would wait on, and never migrates: an unmigrated database is reported, not changed.

use std::io::Write as _;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::StatusArgs;
use crate::config::DatabaseSettings;
use crate::db;
use crate::db::status::{MailboxStatus, Overview, UnassignedEvents};
use crate::domain::{Backend, Coverage, SubscriptionState};

/// Longest sync error shown in the table; `--json` has it whole.
const ERROR_WIDTH: usize = 100;

/// Runs the command: exit 0 with the report on stdout, or exit 1 with one line on stderr.
pub(super) async fn run(settings: &DatabaseSettings, args: &StatusArgs) -> ExitCode {
    let mut connection = match super::connect("status", settings).await {
        Ok(connection) => connection,
        Err(code) => return code,
    };
    let overview = match db::status::overview(&mut connection).await {
        Ok(overview) => overview,
        Err(error) => return super::database_failure("status", &error),
    };
    // Everything is read; a failed goodbye to the server changes nothing for the operator.
    let _ = sqlx::Connection::close(connection).await;
    let text = if args.json {
        match serde_json::to_string_pretty(&Report::new(&overview)) {
            Ok(json) => json + "\n",
            Err(error) => {
                eprintln!("rooms-sync status: cannot encode the report: {error}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        table(&overview)
    };
    // Not `print!`: it panics when stdout is closed early (`rooms-sync status | head -1`).
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("rooms-sync status: cannot write the report: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The `--json` document (docs/operations.md): RFC 3339 times, `null` for none.
#[derive(Debug, Serialize)]
struct Report<'a> {
    generated_at: DateTime<Utc>,
    mailboxes: Vec<MailboxReport<'a>>,
    /// Waiting and dead events no mailbox was matched to; no mailbox row counts them.
    unassigned_events: EventCounts,
}

#[derive(Debug, Serialize)]
struct MailboxReport<'a> {
    address: &'a str,
    backend: Backend,
    enabled: bool,
    coverage: Coverage,
    subscription: Option<SubscriptionReport<'a>>,
    last_notification_at: Option<DateTime<Utc>>,
    last_synced_at: Option<DateTime<Utc>>,
    last_sync_error: Option<&'a str>,
    pending_events: i64,
    dead_events: i64,
}

#[derive(Debug, Serialize)]
struct SubscriptionReport<'a> {
    state: SubscriptionState,
    expires_at: Option<DateTime<Utc>>,
    remote_id: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct EventCounts {
    pending: i64,
    dead: i64,
}

impl<'a> Report<'a> {
    fn new(overview: &'a Overview) -> Self {
        Self {
            generated_at: overview.generated_at,
            mailboxes: overview.mailboxes.iter().map(MailboxReport::new).collect(),
            unassigned_events: EventCounts {
                pending: overview.unassigned.pending_events,
                dead: overview.unassigned.dead_events,
            },
        }
    }
}

impl<'a> MailboxReport<'a> {
    fn new(m: &'a MailboxStatus) -> Self {
        Self {
            address: &m.address,
            backend: m.backend,
            enabled: m.enabled,
            coverage: m.coverage,
            subscription: m.subscription_state.map(|state| SubscriptionReport {
                state,
                expires_at: m.subscription_expires_at,
                remote_id: m.subscription_remote_id.as_deref(),
            }),
            last_notification_at: m.last_notification_at,
            last_synced_at: m.last_synced_at,
            last_sync_error: m.last_sync_error.as_deref(),
            pending_events: m.pending_events,
            dead_events: m.dead_events,
        }
    }
}

const HEADERS: [&str; 11] = [
    "ADDRESS",
    "BACKEND",
    "ENABLED",
    "COVERAGE",
    "SUBSCRIPTION",
    "EXPIRES",
    "LAST NOTIFICATION",
    "LAST SYNC",
    "PENDING",
    "DEAD",
    "SYNC ERROR",
];

/// Columns whose values are right-aligned (counts). Headers stay left-aligned, so every
/// column starts where its header does.
const NUMERIC: [bool; 11] = [
    false, false, false, false, false, false, false, false, true, true, false,
];

/// The table: aligned columns, times relative to the snapshot (the summary line gives it in
/// UTC), `-` for none, and a summary line.
fn table(overview: &Overview) -> String {
    let now = overview.generated_at;
    let rows: Vec<[String; 11]> = overview
        .mailboxes
        .iter()
        .map(|m| {
            [
                m.address.clone(),
                m.backend.to_string(),
                if m.enabled { "yes" } else { "no" }.to_owned(),
                m.coverage.to_string(),
                m.subscription_state
                    .map_or_else(|| "none".to_owned(), |s| s.to_string()),
                time(m.subscription_expires_at, now),
                time(m.last_notification_at, now),
                time(m.last_synced_at, now),
                m.pending_events.to_string(),
                m.dead_events.to_string(),
                m.last_sync_error
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), short_error),
            ]
        })
        .collect();
    let mut out = String::new();
    if rows.is_empty() {
        out.push_str("no mailboxes: `serve` records the configured ones when it starts\n");
    } else {
        let mut widths = HEADERS.map(|h| h.chars().count());
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        out.push_str(&line(&HEADERS.map(str::to_owned), &widths, false));
        for row in &rows {
            out.push_str(&line(row, &widths, true));
        }
    }
    out.push_str(&summary(overview));
    out
}

/// One table line; the last column is not padded, so no line ends in spaces.
fn line(cells: &[String; 11], widths: &[usize; 11], align_numbers: bool) -> String {
    let last = cells.len() - 1;
    let mut out = String::new();
    for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
        if i > 0 {
            out.push_str("  ");
        }
        if i == last {
            out.push_str(cell);
        } else if align_numbers && NUMERIC[i] {
            out.push_str(&format!("{cell:>width$}"));
        } else {
            out.push_str(&format!("{cell:<width$}"));
        }
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

/// `4 mailboxes, 2 covered, 5 pending events, 3 dead events at 2026-11-30 10:15:02Z`, plus the
/// events no mailbox row shows, when there are any (the totals include them).
fn summary(overview: &Overview) -> String {
    let mailboxes = overview.mailboxes.len();
    let covered = overview
        .mailboxes
        .iter()
        .filter(|m| m.coverage == Coverage::Covered)
        .count();
    let UnassignedEvents {
        pending_events: unassigned_pending,
        dead_events: unassigned_dead,
    } = overview.unassigned;
    let pending: i64 = overview
        .mailboxes
        .iter()
        .map(|m| m.pending_events)
        .sum::<i64>()
        + unassigned_pending;
    let dead: i64 = overview
        .mailboxes
        .iter()
        .map(|m| m.dead_events)
        .sum::<i64>()
        + unassigned_dead;
    let mut out = format!(
        "{}, {covered} covered, {}, {} at {}",
        count(mailboxes as i64, "mailbox", "mailboxes"),
        count(pending, "pending event", "pending events"),
        count(dead, "dead event", "dead events"),
        overview.generated_at.format("%Y-%m-%d %H:%M:%SZ"),
    );
    if unassigned_pending > 0 || unassigned_dead > 0 {
        out.push_str(&format!(
            " ({unassigned_pending} pending and {unassigned_dead} dead not matched to a mailbox)"
        ));
    }
    out.push('\n');
    out
}

fn count(n: i64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn time(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    at.map_or_else(|| "-".to_owned(), |at| relative(at, now))
}

/// `at` relative to `now` in at most two units, rounded down: `45s ago`, `3m ago`, `2h 5m ago`,
/// `in 1d 23h`. Rounding down keeps a time seeded "3 minutes ago" reading `3m ago` for a
/// minute, which tests rely on.
fn relative(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let seconds = (now - at).num_seconds();
    let span = seconds.unsigned_abs();
    let (minutes, hours, days) = (span / 60, span / 3600, span / 86_400);
    let text = if span < 60 {
        format!("{span}s")
    } else if span < 3600 {
        format!("{minutes}m")
    } else if span < 86_400 {
        two_units(hours, "h", minutes % 60, "m")
    } else {
        two_units(days, "d", hours % 24, "h")
    };
    if seconds >= 0 {
        format!("{text} ago")
    } else {
        format!("in {text}")
    }
}

fn two_units(major: u64, major_unit: &str, minor: u64, minor_unit: &str) -> String {
    if minor == 0 {
        format!("{major}{major_unit}")
    } else {
        format!("{major}{major_unit} {minor}{minor_unit}")
    }
}

/// A sync error as one table cell: on one line, cut at [`ERROR_WIDTH`] characters.
fn short_error(error: &str) -> String {
    let flat = super::one_line(error);
    if flat.chars().count() <= ERROR_WIDTH {
        flat
    } else {
        let mut cut: String = flat.chars().take(ERROR_WIDTH - 1).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 30, h, m, s)
            .single()
            .unwrap()
    }

    fn mailbox(address: &str) -> MailboxStatus {
        MailboxStatus {
            address: address.to_owned(),
            backend: Backend::Graph,
            enabled: true,
            coverage: Coverage::Covered,
            subscription_state: Some(SubscriptionState::Active),
            subscription_remote_id: Some("sub-1".to_owned()),
            subscription_expires_at: Some(at(12, 0, 0)),
            last_notification_at: Some(at(10, 12, 2)),
            last_synced_at: Some(at(10, 15, 0)),
            last_sync_error: None,
            pending_events: 12,
            dead_events: 0,
        }
    }

    #[test]
    fn relative_times_use_two_units_at_most_and_round_down() {
        let now = at(10, 15, 2);
        assert_eq!(relative(now, now), "0s ago");
        assert_eq!(relative(at(10, 14, 20), now), "42s ago");
        assert_eq!(relative(at(10, 12, 2), now), "3m ago");
        assert_eq!(relative(at(10, 11, 3), now), "3m ago");
        assert_eq!(relative(at(8, 15, 2), now), "2h ago");
        assert_eq!(relative(at(8, 10, 0), now), "2h 5m ago");
        assert_eq!(relative(at(12, 15, 2), now), "in 2h");
        let later = Utc
            .with_ymd_and_hms(2026, 12, 2, 9, 15, 2)
            .single()
            .unwrap();
        assert_eq!(relative(later, now), "in 1d 23h");
    }

    #[test]
    fn the_table_aligns_columns_under_their_headers_and_marks_nothing_with_a_dash() {
        let mut failing = mailbox("b@example.com");
        failing.backend = Backend::Ews;
        failing.coverage = Coverage::Uncovered;
        failing.subscription_state = None;
        failing.subscription_expires_at = None;
        failing.last_notification_at = None;
        failing.last_synced_at = None;
        failing.last_sync_error = Some("EWS said\nErrorServerBusy".to_owned());
        failing.pending_events = 3;
        failing.dead_events = 2;
        let overview = Overview {
            generated_at: at(10, 15, 2),
            mailboxes: vec![mailbox("a-long-room-name@example.com"), failing],
            unassigned: UnassignedEvents::default(),
        };
        let text = table(&overview);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        let header = lines[0];
        let column = |name: &str| header.find(name).unwrap();
        let cell =
            |row: &str, name: &str, next: &str| row[column(name)..column(next)].trim().to_owned();
        assert_eq!(cell(lines[1], "BACKEND", "ENABLED"), "graph");
        assert_eq!(cell(lines[1], "EXPIRES", "LAST NOTIFICATION"), "in 1h 44m");
        assert_eq!(cell(lines[1], "LAST NOTIFICATION", "LAST SYNC"), "3m ago");
        assert_eq!(cell(lines[1], "PENDING", "DEAD"), "12");
        assert_eq!(cell(lines[2], "SUBSCRIPTION", "EXPIRES"), "none");
        assert_eq!(cell(lines[2], "EXPIRES", "LAST NOTIFICATION"), "-");
        assert_eq!(cell(lines[2], "LAST SYNC", "PENDING"), "-");
        assert_eq!(cell(lines[2], "PENDING", "DEAD"), "3");
        assert_eq!(
            lines[2][column("SYNC ERROR")..].trim(),
            "EWS said ErrorServerBusy"
        );
        // Counts are right-aligned within their column.
        assert!(lines[2][..column("DEAD")].ends_with("      3  "), "{text}");
        assert!(
            lines.iter().all(|l| l.trim_end() == *l),
            "no trailing spaces"
        );
        assert_eq!(
            lines[3],
            "2 mailboxes, 1 covered, 15 pending events, 2 dead events at 2026-11-30 10:15:02Z"
        );
    }

    #[test]
    fn the_summary_counts_events_no_mailbox_was_matched_to() {
        let overview = Overview {
            generated_at: at(10, 15, 2),
            mailboxes: vec![],
            unassigned: UnassignedEvents {
                pending_events: 1,
                dead_events: 1,
            },
        };
        assert_eq!(
            table(&overview),
            "no mailboxes: `serve` records the configured ones when it starts\n\
             0 mailboxes, 0 covered, 1 pending event, 1 dead event at 2026-11-30 10:15:02Z \
             (1 pending and 1 dead not matched to a mailbox)\n"
        );
    }

    #[test]
    fn long_sync_errors_are_cut_in_the_table() {
        let error = "x".repeat(300);
        let cut = short_error(&error);
        assert_eq!(cut.chars().count(), ERROR_WIDTH);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn the_json_report_nests_the_subscription_and_writes_null_for_none() {
        let mut none = mailbox("b@example.com");
        none.subscription_state = None;
        none.last_synced_at = None;
        let overview = Overview {
            generated_at: at(10, 15, 2),
            mailboxes: vec![mailbox("a@example.com"), none],
            unassigned: UnassignedEvents::default(),
        };
        let json = serde_json::to_value(Report::new(&overview)).unwrap();
        assert_eq!(json["generated_at"], "2026-11-30T10:15:02Z");
        assert_eq!(json["mailboxes"][0]["subscription"]["state"], "active");
        assert_eq!(
            json["mailboxes"][0]["subscription"]["expires_at"],
            "2026-11-30T12:00:00Z"
        );
        assert_eq!(json["mailboxes"][0]["coverage"], "covered");
        assert!(json["mailboxes"][1]["subscription"].is_null());
        assert!(json["mailboxes"][1]["last_synced_at"].is_null());
        assert_eq!(json["unassigned_events"]["pending"], 0);
    }
}
