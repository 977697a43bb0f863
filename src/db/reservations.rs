//! `reservations`: the rows ROOMS reads, written only by the sync worker inside the
//! transaction that also stores the mailbox's new sync cursor. Rows are never deleted: an
//! occurrence that left the calendar gets `deleted_at`, and comes back to life (cleared
//! `deleted_at`) if Exchange shows it again. A write that would change nothing is skipped, so
//! applying the same changes twice leaves every row, `updated_at` included, as it was.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use crate::domain::{Backend, Occurrence};

/// Writes `occurrences` of one mailbox (ids read through `backend`): new ones are inserted,
/// changed or deleted ones updated (and undeleted), identical ones left alone. Returns how many
/// rows were written. An id given twice keeps its last version.
///
/// # Errors
/// Database errors.
pub async fn upsert(
    executor: impl PgExecutor<'_>,
    mailbox_id: i64,
    backend: Backend,
    occurrences: &[Occurrence],
) -> Result<u64, sqlx::Error> {
    if occurrences.is_empty() {
        return Ok(0);
    }
    let last = last_per_id(occurrences);
    let col = |f: fn(&Occurrence) -> Option<String>| last.iter().map(|o| f(o)).collect::<Vec<_>>();
    let time =
        |f: fn(&Occurrence) -> Option<DateTime<Utc>>| last.iter().map(|o| f(o)).collect::<Vec<_>>();
    let result = sqlx::query(
        "insert into reservations as r
             (mailbox_id, backend, item_id, ical_uid, series_uid, series_master_id,
              original_start, subject, organizer, location, starts_at, ends_at, is_all_day,
              is_cancelled, change_key)
         select $1, $2, u.* from unnest($3::text[], $4::text[], $5::text[], $6::text[],
                                        $7::timestamptz[], $8::text[], $9::text[], $10::text[],
                                        $11::timestamptz[], $12::timestamptz[], $13::bool[],
                                        $14::bool[], $15::text[]) as u
         on conflict on constraint reservations_mailbox_item_key do update set
             backend = excluded.backend, ical_uid = excluded.ical_uid,
             series_uid = excluded.series_uid, series_master_id = excluded.series_master_id,
             original_start = excluded.original_start, subject = excluded.subject,
             organizer = excluded.organizer, location = excluded.location,
             starts_at = excluded.starts_at, ends_at = excluded.ends_at,
             is_all_day = excluded.is_all_day, is_cancelled = excluded.is_cancelled,
             change_key = excluded.change_key, deleted_at = null, synced_at = now(),
             updated_at = now()
         where r.deleted_at is not null
            or (r.backend, r.ical_uid, r.series_uid, r.series_master_id, r.original_start,
                r.subject, r.organizer, r.location, r.starts_at, r.ends_at, r.is_all_day,
                r.is_cancelled, r.change_key)
               is distinct from
               (excluded.backend, excluded.ical_uid, excluded.series_uid,
                excluded.series_master_id, excluded.original_start, excluded.subject,
                excluded.organizer, excluded.location, excluded.starts_at, excluded.ends_at,
                excluded.is_all_day, excluded.is_cancelled, excluded.change_key)",
    )
    .bind(mailbox_id)
    .bind(backend)
    .bind(last.iter().map(|o| o.item_id.as_str()).collect::<Vec<_>>())
    .bind(col(|o| o.ical_uid.clone()))
    .bind(col(|o| o.series_uid.clone()))
    .bind(col(|o| o.series_master_id.clone()))
    .bind(time(|o| o.original_start))
    .bind(col(|o| o.subject.clone()))
    .bind(col(|o| o.organizer.clone()))
    .bind(col(|o| o.location.clone()))
    .bind(last.iter().map(|o| o.starts_at).collect::<Vec<_>>())
    .bind(last.iter().map(|o| o.ends_at).collect::<Vec<_>>())
    .bind(last.iter().map(|o| o.is_all_day).collect::<Vec<_>>())
    .bind(last.iter().map(|o| o.is_cancelled).collect::<Vec<_>>())
    .bind(col(|o| o.change_key.clone()))
    .execute(executor)
    .await?;
    Ok(result.rows_affected())
}

/// The last occurrence given for each id, in first-seen order: one statement cannot write a
/// row twice.
fn last_per_id(occurrences: &[Occurrence]) -> Vec<&Occurrence> {
    let mut index = std::collections::HashMap::with_capacity(occurrences.len());
    let mut out: Vec<&Occurrence> = Vec::with_capacity(occurrences.len());
    for o in occurrences {
        match index.get(o.item_id.as_str()) {
            Some(&i) => out[i] = o,
            None => {
                index.insert(o.item_id.as_str(), out.len());
                out.push(o);
            }
        }
    }
    out
}

/// Moves rows read through the other backend onto `occurrences`' ids when they are the same
/// meeting: same series UID and same original (or, for single meetings, actual) start. A
/// mailbox moved from EWS to Graph (or back) keeps its reservation ids that way instead of
/// seeing every row deleted and added again. Returns how many rows were adopted.
///
/// # Errors
/// Database errors.
pub async fn adopt(
    executor: impl PgExecutor<'_>,
    mailbox_id: i64,
    backend: Backend,
    occurrences: &[Occurrence],
) -> Result<u64, sqlx::Error> {
    let keyed: Vec<_> = occurrences
        .iter()
        .filter_map(|o| {
            let uid = o.series_uid.as_deref()?;
            Some((
                o.item_id.as_str(),
                uid,
                o.original_start.unwrap_or(o.starts_at),
            ))
        })
        .collect();
    if keyed.is_empty() {
        return Ok(0);
    }
    let result = sqlx::query(
        "with c as (
             select * from unnest($3::text[], $4::text[], $5::timestamptz[])
                 as c(item_id, series_uid, key_start)
             where not exists (select 1 from reservations x
                               where x.mailbox_id = $1 and x.item_id = c.item_id)
         ),
         matched as (
             select distinct on (c.item_id) r.id, c.item_id
             from c join reservations r
               on r.mailbox_id = $1 and r.series_uid = c.series_uid
              and coalesce(r.original_start, r.starts_at) = c.key_start
             where r.backend is distinct from $2
             order by c.item_id, r.deleted_at nulls first, r.id
         ),
         one_each as (
             select distinct on (id) id, item_id from matched order by id, item_id
         )
         update reservations r set item_id = one_each.item_id, backend = $2, updated_at = now()
         from one_each where r.id = one_each.id",
    )
    .bind(mailbox_id)
    .bind(backend)
    .bind(keyed.iter().map(|k| k.0).collect::<Vec<_>>())
    .bind(keyed.iter().map(|k| k.1).collect::<Vec<_>>())
    .bind(keyed.iter().map(|k| k.2).collect::<Vec<_>>())
    .execute(executor)
    .await?;
    Ok(result.rows_affected())
}

/// Whether the mailbox has live rows read through another backend than `backend`: only then
/// is [`adopt`] worth its lookups.
///
/// # Errors
/// Database errors.
pub async fn has_foreign_rows(
    executor: impl PgExecutor<'_>,
    mailbox_id: i64,
    backend: Backend,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "select exists (select 1 from reservations
                        where mailbox_id = $1 and deleted_at is null
                          and backend is distinct from $2)",
    )
    .bind(mailbox_id)
    .bind(backend)
    .fetch_one(executor)
    .await
}

/// Marks the rows with these item ids, or occurrences of series with these master ids, as
/// left the calendar, when they overlap `window` (`None`: wherever they are). Returns how many
/// rows changed.
///
/// # Errors
/// Database errors.
pub async fn mark_deleted(
    executor: impl PgExecutor<'_>,
    mailbox_id: i64,
    ids: &[String],
    window: Option<(DateTime<Utc>, DateTime<Utc>)>,
) -> Result<u64, sqlx::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let (from, to) = window.unzip();
    let result = sqlx::query(
        "update reservations set deleted_at = now(), updated_at = now()
         where mailbox_id = $1 and deleted_at is null
           and (item_id = any($2) or series_master_id = any($2))
           and ($3::timestamptz is null or (starts_at < $4 and ends_at > $3))",
    )
    .bind(mailbox_id)
    .bind(ids)
    .bind(from)
    .bind(to)
    .execute(executor)
    .await?;
    Ok(result.rows_affected())
}

/// Marks the occurrences of the series `master_id` that are not in `keep` as deleted (a series
/// cut short, or an occurrence removed from it). Returns how many rows changed.
///
/// # Errors
/// Database errors.
pub async fn retire_series_except(
    executor: impl PgExecutor<'_>,
    mailbox_id: i64,
    master_id: &str,
    keep: &[&str],
) -> Result<u64, sqlx::Error> {
    let result = sqlx::query(
        "update reservations set deleted_at = now(), updated_at = now()
         where mailbox_id = $1 and series_master_id = $2 and deleted_at is null
           and item_id <> all($3)",
    )
    .bind(mailbox_id)
    .bind(master_id)
    .bind(keep)
    .execute(executor)
    .await?;
    Ok(result.rows_affected())
}

/// After a full read of `[from, to)`: marks the live rows overlapping the window that the read
/// did not see as deleted. Returns how many rows changed.
///
/// # Errors
/// Database errors.
pub async fn retire_unseen(
    executor: impl PgExecutor<'_>,
    mailbox_id: i64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    seen: &[&str],
) -> Result<u64, sqlx::Error> {
    let result = sqlx::query(
        "update reservations set deleted_at = now(), updated_at = now()
         where mailbox_id = $1 and deleted_at is null
           and starts_at < $3 and ends_at > $2 and item_id <> all($4)",
    )
    .bind(mailbox_id)
    .bind(from)
    .bind(to)
    .bind(seen)
    .execute(executor)
    .await?;
    Ok(result.rows_affected())
}

/// The series UIDs already known for these series masters (from earlier rounds), so a round
/// only asks Exchange for the masters it has never seen.
///
/// # Errors
/// Database errors.
pub async fn known_series_uids(
    executor: impl PgExecutor<'_>,
    mailbox_id: i64,
    master_ids: &[&str],
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "select distinct on (series_master_id) series_master_id, series_uid
         from reservations
         where mailbox_id = $1 and series_master_id = any($2) and series_uid is not null",
    )
    .bind(mailbox_id)
    .bind(master_ids)
    .fetch_all(executor)
    .await
}

/// When the row of `item_id` was written at or after `since`: when it was created (`created`)
/// or last changed (the demo's change → reservation latency).
///
/// # Errors
/// Database errors.
pub async fn written_since(
    executor: impl PgExecutor<'_>,
    item_id: &str,
    since: DateTime<Utc>,
    created: bool,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "select max(case when $3 then created_at else updated_at end) from reservations
         where item_id = $1 and (case when $3 then created_at else updated_at end) >= $2",
    )
    .bind(item_id)
    .bind(since)
    .bind(created)
    .fetch_one(executor)
    .await
}
