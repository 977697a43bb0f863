//! `notification_events`: every statement on the event table.

use sqlx::{PgConnection, Postgres, Transaction};

/// An event as ingress stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub backend: &'static str,
    pub remote_subscription_id: Option<String>,
    pub subscription_id: Option<i64>,
    pub mailbox_id: Option<i64>,
    pub kind: String,
    pub item_id: Option<String>,
    pub status: &'static str,
    pub reject_reason: Option<&'static str>,
    pub dedupe_key: String,
    /// JSON text of the event as received.
    pub payload: String,
    pub body_sha256: Vec<u8>,
}

/// Inserts `events` in one statement; redeliveries (same backend, subscription and dedupe key)
/// are skipped. Returns `(backend, kind)` of the rows actually inserted.
///
/// # Errors
/// Database errors, including a statement timeout.
pub async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    events: &[NewEvent],
) -> Result<Vec<(&'static str, String)>, sqlx::Error> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let conn: &mut PgConnection = tx;
    let rows: Vec<(String, String)> = sqlx::query_as(
        "insert into notification_events
             (backend, remote_subscription_id, subscription_id, mailbox_id, kind, item_id,
              status, reject_reason, dedupe_key, payload, body_sha256)
         select backend, remote_subscription_id, subscription_id, mailbox_id, kind, item_id,
                status, reject_reason, dedupe_key, payload::jsonb, body_sha256
         from unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::text[],
                     $7::text[], $8::text[], $9::text[], $10::text[], $11::bytea[])
              as e(backend, remote_subscription_id, subscription_id, mailbox_id, kind, item_id,
                   status, reject_reason, dedupe_key, payload, body_sha256)
         on conflict on constraint notification_events_dedupe_key do nothing
         returning backend, kind",
    )
    .bind(events.iter().map(|e| e.backend).collect::<Vec<_>>())
    .bind(
        events
            .iter()
            .map(|e| e.remote_subscription_id.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(events.iter().map(|e| e.subscription_id).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.mailbox_id).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>())
    .bind(
        events
            .iter()
            .map(|e| e.item_id.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(events.iter().map(|e| e.status).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.reject_reason).collect::<Vec<_>>())
    .bind(
        events
            .iter()
            .map(|e| e.dedupe_key.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        events
            .iter()
            .map(|e| e.payload.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        events
            .iter()
            .map(|e| e.body_sha256.as_slice())
            .collect::<Vec<_>>(),
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(backend, kind)| (if backend == "ews" { "ews" } else { "graph" }, kind))
        .collect())
}
