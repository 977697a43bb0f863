//! Ingest under stress: a database that is slow, refusing or gone silent, a backlog, a queue
//! full of large bodies, more connections than the cap, slow clients, and input that would
//! make up metric labels.

use std::time::Duration;

use sqlx::PgPool;

use crate::helpers::test_settings;

// ---------------------------------------------------------------------------
// Connections of the pools

#[sqlx::test]
async fn the_service_commits_synchronously_whatever_the_database_is_set_to(pool: PgPool) {
    let name: String = sqlx::query_scalar("select current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query(&format!(
        "alter database \"{name}\" set synchronous_commit = off"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let show = |pool: PgPool| async move {
        let setting: String = sqlx::query_scalar("show synchronous_commit")
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        setting
    };
    // A new plain connection takes the database's setting...
    let plain = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(pool.connect_options().as_ref().clone());
    assert_eq!(show(plain).await, "off");
    // ...the service's own do not.
    let url = crate::helpers::database_url(&pool);
    let settings = test_settings(&[("DatabaseUrl", &url)]);
    assert_eq!(
        show(rooms_sync::db::pool(&settings.database).unwrap()).await,
        "on"
    );
    let ingest = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(rooms_sync::db::ingest_connect_options(
            &pool,
            Duration::from_secs(5),
        ));
    assert_eq!(show(ingest).await, "on");
}

#[sqlx::test]
async fn pooled_connections_are_handed_out_without_a_ping(pool: PgPool) {
    let url = crate::helpers::database_url(&pool);
    let settings = test_settings(&[("DatabaseUrl", &url)]);
    let service = rooms_sync::db::pool(&settings.database).unwrap();
    assert!(!service.options().get_test_before_acquire());
}
