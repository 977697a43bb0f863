//! `mailboxes`: every statement on the mailbox table.

use sqlx::PgExecutor;

/// Records a room mailbox (or updates its backend); returns its id.
///
/// # Errors
/// Database errors.
pub async fn upsert(
    executor: impl PgExecutor<'_>,
    address: &str,
    backend: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "insert into mailboxes (address, backend) values (lower($1), $2)
         on conflict on constraint mailboxes_address_key
         do update set backend = excluded.backend, updated_at = now()
         returning id",
    )
    .bind(address)
    .bind(backend)
    .fetch_one(executor)
    .await
}
