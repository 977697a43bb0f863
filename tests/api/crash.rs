//! Nothing acknowledged is lost: the real binary is killed with SIGKILL under load, and every
//! notification it answered 202 must be in the database.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::{
    binary, drop_database, free_port, server_url, signal_and_wait, unique_database_name,
};

const SUB: &str = "0d8f2b6a-7c31-4e59-9a42-3f1b6c8d9e01";
const STATE: &str = "crash-test-client-state";

fn body(item: &str) -> String {
    format!(
        r#"{{"value":[{{"subscriptionId":"{SUB}","changeType":"created","clientState":"{STATE}","resource":"Users/r/Events/{item}","resourceData":{{"id":"{item}"}}}}]}}"#
    )
}

#[tokio::test]
async fn every_acknowledged_notification_survives_a_kill_9_under_load() {
    let name = unique_database_name("rooms_sync_crash");
    let url = format!("{}/{name}", server_url());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let admin = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("IdpRootUrl", "https://h.example"),
        ("DatabaseUrl", url.as_str()),
        ("ListenAddress", listen.as_str()),
        ("AdminListenAddress", admin.as_str()),
        ("RUST_LOG", "warn"),
    ];
    let migrate = binary(dir.path(), &env).arg("migrate").output().unwrap();
    assert!(migrate.status.success());
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let mailbox = rooms_sync::db::mailboxes::upsert(
        &pool,
        "room@example.com",
        rooms_sync::domain::Backend::Graph,
    )
    .await
    .unwrap();
    rooms_sync::db::subscriptions::insert(
        &pool,
        &rooms_sync::db::subscriptions::NewSubscription {
            mailbox_id: mailbox,
            backend: rooms_sync::domain::Backend::Graph,
            remote_id: Some(SUB),
            status: rooms_sync::domain::SubscriptionState::Active,
            client_state: Some(STATE),
            callback_url: "https://h.example/api/webhooks/exchange",
            expires_at: None,
            last_watermark: None,
            resource: None,
            status_frequency_minutes: None,
        },
    )
    .await
    .unwrap();

    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let acked = Arc::new(Mutex::new(HashSet::new()));
    // Three rounds: start, load, SIGKILL mid-stream. Each kill catches what is in flight.
    for round in 0..3 {
        let mut child = binary(dir.path(), &env)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !client
            .get(format!("http://{listen}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            assert!(Instant::now() < deadline, "serve never came up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // 16 clients post unique items as fast as they can, recording what was answered 202.
        let mut clients = Vec::new();
        for c in 0..16 {
            let (client, acked, listen) = (client.clone(), Arc::clone(&acked), listen.clone());
            clients.push(tokio::spawn(async move {
                for n in 0.. {
                    let item = format!("ITEM-{round}-{c:02}-{n:06}");
                    let answer = client
                        .post(format!("http://{listen}/api/webhooks/exchange"))
                        .header("content-type", "application/json")
                        .body(body(&item))
                        .send()
                        .await;
                    match answer {
                        Ok(r) if r.status() == 202 => {
                            acked.lock().unwrap().insert(item);
                        }
                        // The process is gone: stop.
                        Err(_) => return,
                        Ok(_) => {}
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        let status = signal_and_wait(&mut child, "-KILL", Duration::from_secs(5));
        assert!(!status.success());
        for c in clients {
            c.await.unwrap();
        }
    }

    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "too little load to mean anything: {}",
        acked.len()
    );
    let stored: HashSet<String> =
        sqlx::query_scalar::<_, String>("select item_id from notification_events")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let lost: Vec<&String> = acked.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged but not stored, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    pool.close().await;
    drop_database(&name).await;
}
