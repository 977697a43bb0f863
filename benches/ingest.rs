//! Ingest benchmark: how fast the webhook acknowledges durably, as a ratio to what Postgres
//! itself does on this machine.
//!
//! One run: (1) pgbench's durable single-row INSERT rate for a ~600-byte jsonb row at 64 clients;
//! (2) the real `rooms-sync serve` binary (spawned, so its RSS is its own) at production's log
//! level (no `RUST_LOG`, stderr to a file), once with `LogFormat=text` and once with `json`,
//! driven by 64 keep-alive connections of valid Graph notifications (one per POST, unique items,
//! known subscriptions with the right clientState), closed loop for the maximum rate, then an
//! open-model constant rate at half of it; in the text round also that rate without and with
//! 300 slowloris clients holding connections open (trickling a header line a second),
//! alternated five times, with the ratio of the median p99s; (3) the same for EWS (one
//! subscription per connection, a continuous watermark chain); (4) the validation handshake
//! echo at 2000/s and closed loop. It prints acks/s, latency percentiles, errors, rows stored
//! vs acknowledged, CPU per ack of the service and of Postgres (backends of other databases
//! excluded), the service's RSS, acks/s ÷ pgbench rate, and a summary table against the
//! targets.
//!
//! `cargo bench --bench ingest` (Postgres at $DATABASE_URL's server, default 127.0.0.1:5432).
//! `BENCH_SECONDS` sets each phase's length (default 10). `BENCH_SERVICE_BIN` runs another
//! build of the service under this harness (an earlier commit's, for before/after figures).
//! `BENCH_ONLY=graph|ews|validation` runs one phase against a service whose pid is printed, for
//! a profiler (`perf record -p PID`); with `BENCH_RATE=N`, open model at N requests/s.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark harness: any failure should stop the run loudly"
)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use sqlx::PgPool;
use tokio::net::TcpStream;

const CONNECTIONS: usize = 64;
/// Slow clients held open during the slowloris phase.
const SLOW_CONNECTIONS: usize = 300;
/// Rounds of the slowloris comparison (each a phase without and a phase with the slow clients).
/// Five, so that the medians stand up to two slow phases on either side: storage stalls (the
/// kernel writing back Postgres's dirty pages in a burst about every 30 s, counted from the
/// busy maximum-rate phase) land on phases at fixed offsets, the same phases in every run.
const SLOWLORIS_ROUNDS: u64 = 5;
const GRAPH_SUBSCRIPTIONS: usize = 16;
const WEBHOOK: &str = "/api/webhooks/exchange";
const SAMPLE_SUB: &str = "0d8f2b6a-7c31-4e59-9a42-3f1b6c8d9e01";
const SAMPLE_STATE: &str = "bench-client-state-0000";

/// An Exchange-looking item id, unique per connection and sequence number.
fn item_id(conn: usize, n: u64) -> String {
    format!("AAMkAGJlbmNoLXJvb20tZXZlbnQtaWQ-{conn:03}-{n:09}")
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

fn server_url() -> String {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    match url.rfind('/') {
        Some(i) if i > "postgres://".len() => url[..i].to_owned(),
        _ => url,
    }
}

fn phase_seconds() -> u64 {
    std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

async fn run() {
    let seconds = phase_seconds();
    let name = format!("rooms_sync_bench_{}", std::process::id());
    let admin = PgPool::connect(&format!("{}/postgres", server_url()))
        .await
        .unwrap();
    sqlx::query(&format!("drop database if exists {name} with (force)"))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query(&format!("create database {name}"))
        .execute(&admin)
        .await
        .unwrap();
    let db_url = format!("{}/{name}", server_url());

    if let Ok(only) = std::env::var("BENCH_ONLY") {
        profile_one(&db_url, &only, seconds).await;
        sqlx::query(&format!("drop database if exists {name} with (force)"))
            .execute(&admin)
            .await
            .unwrap();
        return;
    }
    println!("# rooms-sync ingest benchmark ({seconds} s per phase, {CONNECTIONS} connections)");
    hostile_bodies();
    let pgbench = pgbench_rate(&db_url, seconds);
    println!("pgbench durable 1-row INSERT, ~600 B jsonb, 64 clients: {pgbench:.0} rows/s");

    migrate(&db_url);
    let pool = PgPool::connect(&db_url).await.unwrap();
    let graph_subs = seed_graph(&pool).await;
    let ews_subs = seed_ews(&pool).await;
    let logs = std::env::temp_dir().join(format!("rooms-sync-bench-logs-{}", std::process::id()));
    std::fs::create_dir_all(&logs).unwrap();

    // Production's log level (no RUST_LOG: the built-in default filter), in both formats: a
    // request's log line is part of what an acknowledgement costs.
    let mut summary = Vec::new();
    for (round, format) in ["text", "json"].into_iter().enumerate() {
        let log_file = logs.join(format!("service-{format}.log"));
        let mut service = Service::start(&db_url, format, &log_file).await;
        let base = 100_000_000 * round as u64;
        println!("\n# service with LogFormat={format}, default log filter, stderr to a file");
        // Warm-up: connections, prepared statements, allocator.
        let _ = drive(
            &service,
            Load::Graph(graph_subs.clone()),
            Mode::Closed,
            2,
            base + 1_000_000,
            &pool,
        )
        .await;
        let log_before = file_len(&log_file);
        let max = drive(
            &service,
            Load::Graph(graph_subs.clone()),
            Mode::Closed,
            seconds,
            base + 2_000_000,
            &pool,
        )
        .await;
        max.print("graph, closed loop (max rate)", pgbench, &mut service);
        println!(
            "log bytes per ack: {:.0}",
            (file_len(&log_file) - log_before) as f64 / max.acks.max(1) as f64
        );
        let half_rate = (max.acks_per_second() / 2.0).max(100.0);
        let half = drive(
            &service,
            Load::Graph(graph_subs.clone()),
            Mode::Open { rate: half_rate },
            seconds,
            base + 4_000_000,
            &pool,
        )
        .await;
        half.print(
            &format!("graph, open model at {half_rate:.0}/s (half of max)"),
            pgbench,
            &mut service,
        );
        if round == 0 {
            slowloris(&service, &graph_subs, half_rate, seconds, &pool).await;
        }
        let ews = drive(
            &service,
            Load::Ews(ews_subs.clone()),
            Mode::Closed,
            seconds,
            base + 6_000_000,
            &pool,
        )
        .await;
        ews.print("ews, closed loop (max rate)", pgbench, &mut service);
        let ews_half_rate = (ews.acks_per_second() / 2.0).max(100.0);
        let ews_half = drive(
            &service,
            Load::Ews(ews_subs.clone()),
            Mode::Open {
                rate: ews_half_rate,
            },
            seconds,
            base + 8_000_000,
            &pool,
        )
        .await;
        ews_half.print(
            &format!("ews, open model at {ews_half_rate:.0}/s (half of max)"),
            pgbench,
            &mut service,
        );
        let validation = drive(
            &service,
            Load::Validation,
            Mode::Open { rate: 2000.0 },
            seconds.min(5),
            0,
            &pool,
        )
        .await;
        validation.print(
            "validation handshake echo, open model at 2000/s",
            pgbench,
            &mut service,
        );
        let validation_max = drive(
            &service,
            Load::Validation,
            Mode::Closed,
            seconds.min(5),
            0,
            &pool,
        )
        .await;
        validation_max.print(
            "validation handshake echo, closed loop (max rate)",
            pgbench,
            &mut service,
        );
        println!(
            "service peak RSS (VmHWM): {:.1} MiB",
            service.peak_rss_kib() as f64 / 1024.0
        );
        let metrics = reqwest::get(format!("http://{}/metrics", service.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for line in metrics.lines().filter(|l| {
            (l.starts_with("rooms_sync_ingest_batch_deliveries_")
                || l.starts_with("rooms_sync_ingest_commit_duration_seconds_"))
                && !l.contains("bucket")
        }) {
            println!("{line}");
        }
        summary.push((format, max, half, ews, ews_half, validation, validation_max));
        service.stop();
    }

    println!(
        "\n# summary (targets: service ≤ 20 µs and postgres ≤ 30 µs CPU per ack at max, acks/s ≥ 1.5× pgbench, p99 ≤ 10 ms at half and ≤ 25 ms at max, no response over 1 s, validation ≤ 10 µs)"
    );
    println!(
        "| log format | load | acks/s (× pgbench) | service µs/ack | postgres µs/ack | p99 max | p99 half | >1 s |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (format, max, half, ews, ews_half, validation, validation_max) in &summary {
        for (load, max, half) in [("graph", max, half), ("ews", ews, ews_half)] {
            let (service_us, postgres_us) = max.cpu_per_ack();
            println!(
                "| {format} | {load} | {:.0} ({:.2}×) | {service_us:.1} | {postgres_us:.1} | {:.2} ms | {:.2} ms | {} |",
                max.acks_per_second(),
                max.acks_per_second() / pgbench,
                max.percentile_ms(0.99),
                half.percentile_ms(0.99),
                max.over_1s() + half.over_1s(),
            );
        }
        for (load, echo) in [
            ("validation echo at 2000/s", validation),
            ("validation echo, max rate", validation_max),
        ] {
            println!(
                "| {format} | {load} | {:.0} | {:.1} | | {:.2} ms | | {} |",
                echo.acks_per_second(),
                echo.cpu_per_ack().0,
                echo.percentile_ms(0.99),
                echo.over_1s(),
            );
        }
    }
    let _ = std::fs::remove_dir_all(&logs);
    pool.close().await;
    sqlx::query(&format!("drop database if exists {name} with (force)"))
        .execute(&admin)
        .await
        .unwrap();
}

/// `BENCH_ONLY=graph|ews|validation`: one phase of that load against a service whose pid is
/// printed first, for attaching a profiler (`perf record -p PID`); the load starts 3 s later.
/// Graph and EWS run closed loop (max rate), validation at 2000/s as in the full run;
/// `BENCH_RATE=N` runs any of them open model at N requests/s instead (to set a build beside
/// the bare responder of `benches/floor` at the same rate).
async fn profile_one(db_url: &str, only: &str, seconds: u64) {
    migrate(db_url);
    let pool = PgPool::connect(db_url).await.unwrap();
    let (load, mode) = match only {
        "graph" => (Load::Graph(seed_graph(&pool).await), Mode::Closed),
        "ews" => (Load::Ews(seed_ews(&pool).await), Mode::Closed),
        "validation" => (Load::Validation, Mode::Open { rate: 2000.0 }),
        other => panic!("BENCH_ONLY={other}: expected graph, ews or validation"),
    };
    let mode = match std::env::var("BENCH_RATE") {
        Ok(rate) => Mode::Open {
            rate: rate.parse().expect("BENCH_RATE is requests per second"),
        },
        Err(_) => mode,
    };
    let format = std::env::var("BENCH_LOG_FORMAT").unwrap_or_else(|_| "text".to_owned());
    let log_file =
        std::env::temp_dir().join(format!("rooms-sync-bench-{}.log", std::process::id()));
    let mut service = Service::start(db_url, &format, &log_file).await;
    println!("service pid {}", service.child.id());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcome = drive(&service, load, mode, seconds, 1_000_000, &pool).await;
    outcome.print(
        &format!("{only} only, LogFormat={format}"),
        f64::NAN,
        &mut service,
    );
    service.stop();
    let _ = std::fs::remove_file(&log_file);
}

/// The same rate without and with slowloris clients holding connections open (trickling a
/// header line a second), alternated, so that the machine's other load falls on both alike;
/// prints the ratio of the median p99s.
async fn slowloris(
    service: &Service,
    graph_subs: &[(String, String)],
    half_rate: f64,
    seconds: u64,
    pool: &PgPool,
) {
    println!(
        "\n## graph, open model at {half_rate:.0}/s without and with {SLOW_CONNECTIONS} slowloris connections"
    );
    let (mut plain_p99, mut slowed_p99) = (Vec::new(), Vec::new());
    for round in 0..SLOWLORIS_ROUNDS {
        let plain = drive(
            service,
            Load::Graph(graph_subs.to_vec()),
            Mode::Open { rate: half_rate },
            seconds,
            10_000_000 + round * 2_000_000,
            pool,
        )
        .await;
        let slow = Slowloris::start(&service.addr, SLOW_CONNECTIONS);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let slowed = drive(
            service,
            Load::Graph(graph_subs.to_vec()),
            Mode::Open { rate: half_rate },
            seconds,
            11_000_000 + round * 2_000_000,
            pool,
        )
        .await;
        let (open, opened) = slow.stop().await;
        println!(
            "round {round}: without p99 {:.2} ms, errors {} | with ({open} open, {opened} opened) p99 {:.2} ms, errors {}, acks/s {:.0}",
            plain.percentile_ms(0.99),
            plain.errors,
            slowed.percentile_ms(0.99),
            slowed.errors,
            slowed.acks_per_second(),
        );
        plain_p99.push(plain.percentile_ms(0.99));
        slowed_p99.push(slowed.percentile_ms(0.99));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (plain, slowed) = (median(&mut plain_p99), median(&mut slowed_p99));
    println!(
        "median p99 without {plain:.2} ms, with {slowed:.2} ms: ratio {:.2}",
        slowed / plain.max(0.001)
    );
}

fn file_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Parser work spent refusing hostile bodies (a DTD with nested entities, deep nesting).
fn hostile_bodies() {
    let laughs = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/ews/bad/doctype-billion-laughs.xml"
    ))
    .unwrap();
    let deep_json = format!(
        r#"{{"value":[{}{}]}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let rounds = 20_000_u32;
    let started = Instant::now();
    for _ in 0..rounds {
        assert!(rooms_sync::ews::parse_send_notification(&laughs).is_err());
    }
    let laughs_us = started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
    let started = Instant::now();
    for _ in 0..100 {
        assert!(
            rooms_sync::graph::notification::parse_notification_collection(deep_json.as_bytes())
                .is_err()
        );
    }
    let deep_us = started.elapsed().as_secs_f64() * 1e6 / 100.0;
    println!(
        "billion-laughs body refused after {laughs_us:.2} µs of parsing; 200 kB of nested JSON refused after {deep_us:.1} µs"
    );
}

/// pgbench: durable (synchronous_commit on), one ~600-byte jsonb row per transaction.
fn pgbench_rate(db_url: &str, seconds: u64) -> f64 {
    let dir = std::env::temp_dir().join(format!("rooms-sync-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let setup = "create table if not exists bench_events (id bigserial primary key, \
                 received_at timestamptz not null default now(), kind text not null, payload jsonb not null);";
    let status = Command::new("psql")
        .args(["-q", "-d", db_url, "-c", setup])
        .status()
        .expect("psql is installed");
    assert!(status.success());
    // The same document the service receives, with a random item id.
    let sample = graph_body(SAMPLE_SUB, SAMPLE_STATE, &item_id(0, 123_456_789));
    assert!(
        (550..=700).contains(&sample.len()),
        "payload is {} bytes",
        sample.len()
    );
    let random_item = item_id(0, 0).replace("000000000", "' || :r || '");
    let payload = graph_body(SAMPLE_SUB, SAMPLE_STATE, &random_item);
    let script = format!(
        "\\set r random(1, 1000000000)\ninsert into bench_events (kind, payload) values ('graph', ('{payload}')::jsonb);\n"
    );
    let script_path = dir.join("insert.sql");
    std::fs::write(&script_path, script).unwrap();
    let output = Command::new("pgbench")
        .args([
            "-n",
            "-M",
            "prepared",
            "-c",
            "64",
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "-f",
        ])
        .arg(&script_path)
        .arg(db_url)
        .output()
        .expect("pgbench is installed");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "pgbench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("pgbench printed tps")
}

/// The service binary: this build's, or `BENCH_SERVICE_BIN` (an earlier commit's build, for
/// before/after figures under the same harness).
fn service_binary() -> std::ffi::OsString {
    std::env::var_os("BENCH_SERVICE_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_rooms-sync").into())
}

/// Creates the service's tables in `db_url` with its own `migrate` command.
fn migrate(db_url: &str) {
    let status = Command::new(service_binary())
        .arg("migrate")
        .env_clear()
        .env("DatabaseUrl", db_url)
        .env("IdpRootUrl", "https://bench.example")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "rooms-sync migrate failed");
}

/// The real binary, spawned.
struct Service {
    child: Child,
    addr: String,
    admin: String,
    /// The database it stores into: Postgres backends of other databases are not its cost.
    database: String,
    peak_rss_kib: u64,
}

impl Service {
    async fn start(db_url: &str, log_format: &str, log_file: &std::path::Path) -> Self {
        let port = free_port();
        let admin = free_port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(service_binary())
            .arg("serve")
            .env_clear()
            .env("DatabaseUrl", db_url)
            .env("ListenAddress", &addr)
            .env("AdminListenAddress", format!("127.0.0.1:{admin}"))
            .env("IdpRootUrl", "https://bench.example")
            .env("ServiceRoles", "web")
            .env("EwsUnknownSubscriptionGraceSeconds", "0")
            .env("LogFormat", log_format)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log_file).unwrap())
            .spawn()
            .unwrap();
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !client
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            assert!(Instant::now() < deadline, "service never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            child,
            addr,
            admin: format!("127.0.0.1:{admin}"),
            database: db_url.rsplit('/').next().unwrap_or_default().to_owned(),
            peak_rss_kib: 0,
        }
    }

    fn status_field(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix(field))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    }

    fn rss_kib(&self) -> u64 {
        self.status_field("VmRSS:")
    }

    fn peak_rss_kib(&mut self) -> u64 {
        self.peak_rss_kib = self.peak_rss_kib.max(self.status_field("VmHWM:"));
        self.peak_rss_kib
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) used so far by processes whose command name is `comm`, or by
/// the process `pid`.
fn cpu_seconds(filter: &dyn Fn(u32, &str) -> bool) -> f64 {
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let mut total = 0.0;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // comm is in parentheses and may hold spaces; the fields after it are space-separated.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        if !filter(pid, comm) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after comm.
        let ticks: f64 = fields
            .get(11..13)
            .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
            .unwrap_or(0.0);
        total += ticks / ticks_per_second;
    }
    total
}

#[derive(Clone, Copy)]
struct CpuSample {
    service: f64,
    postgres: f64,
    client: f64,
}

impl CpuSample {
    fn now(service_pid: u32, database: &str) -> Self {
        let own = std::process::id();
        Self {
            service: cpu_seconds(&|pid, _| pid == service_pid),
            postgres: cpu_seconds(&|pid, comm| {
                comm == "postgres" && !other_database(pid, database)
            }),
            client: cpu_seconds(&|pid, _| pid == own),
        }
    }
}

/// Whether `pid` is a Postgres backend serving a client of a database other than `database`
/// (other work on the machine, such as a test suite, must not count as the service's cost).
/// Background processes (WAL writer, checkpointer, autovacuum) count.
fn other_database(pid: u32, database: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let cmdline = String::from_utf8_lossy(&cmdline);
    let client_backend = cmdline.contains("127.0.0.1(") || cmdline.contains("[local]");
    client_backend && !cmdline.split_whitespace().any(|word| word == database)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[derive(Clone)]
enum Load {
    Graph(Vec<(String, String)>),
    Ews(Vec<String>),
    Validation,
}

#[derive(Clone, Copy)]
enum Mode {
    /// Each connection sends its next request when the previous is answered.
    Closed,
    /// Requests are due on a fixed schedule; latency counts from the scheduled time.
    Open { rate: f64 },
}

struct Outcome {
    seconds: f64,
    acks: u64,
    errors: u64,
    latencies_us: Vec<u32>,
    rows_stored: i64,
    rss_kib_during: u64,
    cpu: (CpuSample, CpuSample),
}

impl Outcome {
    fn acks_per_second(&self) -> f64 {
        self.acks as f64 / self.seconds
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        f64::from(self.latencies_us[i]) / 1000.0
    }

    fn over_1s(&self) -> usize {
        self.latencies_us.iter().filter(|&&l| l > 1_000_000).count()
    }

    /// CPU µs per acknowledgement of the service and of Postgres over the phase.
    fn cpu_per_ack(&self) -> (f64, f64) {
        let (before, after) = self.cpu;
        let per_ack = |a: f64, b: f64| (b - a) * 1e6 / (self.acks.max(1) as f64);
        (
            per_ack(before.service, after.service),
            per_ack(before.postgres, after.postgres),
        )
    }

    fn print(&self, title: &str, pgbench: f64, service: &mut Service) {
        let over_1s = self.over_1s();
        println!("\n## {title}");
        println!(
            "acks/s {:.0} | p50 {:.2} ms | p99 {:.2} ms | max {:.2} ms | >1 s: {over_1s} | errors {}",
            self.acks_per_second(),
            self.percentile_ms(0.50),
            self.percentile_ms(0.99),
            self.percentile_ms(1.0),
            self.errors
        );
        if self.rows_stored >= 0 {
            println!(
                "rows stored {} vs acked {} | ratio acks/s ÷ pgbench {:.2}",
                self.rows_stored,
                self.acks,
                self.acks_per_second() / pgbench
            );
        }
        let (before, after) = self.cpu;
        let per_ack = |a: f64, b: f64| (b - a) * 1e6 / (self.acks.max(1) as f64);
        println!(
            "CPU per ack: service {:.0} µs, postgres {:.0} µs, load client {:.0} µs",
            per_ack(before.service, after.service),
            per_ack(before.postgres, after.postgres),
            per_ack(before.client, after.client)
        );
        println!(
            "service RSS during the phase {:.1} MiB (peak so far {:.1} MiB)",
            self.rss_kib_during as f64 / 1024.0,
            service.peak_rss_kib() as f64 / 1024.0
        );
    }
}

async fn seed_graph(pool: &PgPool) -> Vec<(String, String)> {
    let mut subs = Vec::new();
    for i in 0..GRAPH_SUBSCRIPTIONS {
        let mailbox: i64 = sqlx::query_scalar(
            "insert into mailboxes (address, backend) values ($1, 'graph') returning id",
        )
        .bind(format!("room-{i}@bench.example"))
        .fetch_one(pool)
        .await
        .unwrap();
        let remote = format!("{i:08x}-7c31-4e59-9a42-3f1b6c8d9e01");
        let state = format!("bench-client-state-{i:04}");
        sqlx::query(
            "insert into subscriptions (mailbox_id, backend, remote_id, status, client_state, callback_url)
             values ($1, 'graph', $2, 'active', $3, 'https://bench.example/api/webhooks/exchange')",
        )
        .bind(mailbox)
        .bind(&remote)
        .bind(&state)
        .execute(pool)
        .await
        .unwrap();
        subs.push((remote, state));
    }
    subs
}

async fn seed_ews(pool: &PgPool) -> Vec<String> {
    let mut subs = Vec::new();
    for i in 0..CONNECTIONS {
        let mailbox: i64 = sqlx::query_scalar(
            "insert into mailboxes (address, backend) values ($1, 'ews') returning id",
        )
        .bind(format!("ews-room-{i}@bench.example"))
        .fetch_one(pool)
        .await
        .unwrap();
        let remote = format!("RABzcnYtbWJ4MDEucm9vbXMuZXhhbXBsZRAAAAB+c3ViLWJlbmNoLTAw{i:04}");
        sqlx::query(
            "insert into subscriptions (mailbox_id, backend, remote_id, status, callback_url)
             values ($1, 'ews', $2, 'active', 'https://bench.example/api/webhooks/exchange')",
        )
        .bind(mailbox)
        .bind(&remote)
        .execute(pool)
        .await
        .unwrap();
        subs.push(remote);
    }
    subs
}

fn graph_body(subscription: &str, client_state: &str, item: &str) -> String {
    format!(
        r##"{{"value":[{{"subscriptionId":"{subscription}","subscriptionExpirationDateTime":"2026-12-02T09:15:30.1234567+00:00","changeType":"updated","clientState":"{client_state}","resource":"Users/7f3e9a12-4b6c-4d8e-9f01-2a3b4c5d6e7f/Events/{item}","tenantId":"5b1a3f0e-2c4d-4e6f-8a9b-0c1d2e3f4a5b","resourceData":{{"@odata.type":"#Microsoft.Graph.Event","@odata.id":"Users/7f3e9a12-4b6c-4d8e-9f01-2a3b4c5d6e7f/Events/{item}","@odata.etag":"W/\"DwAAABYAAABhdXJvcmEtY2stMDAx\"","id":"{item}"}}}}]}}"##
    )
}

fn ews_body(subscription: &str, previous: &str, watermark: &str, item: &str) -> String {
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="utf-8"?><soap11:Envelope xmlns:soap11="http://schemas.xmlsoap.org/soap/envelope/">"#,
            r#"<soap11:Header><t:RequestServerVersion xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types" Version="Exchange2016"/></soap11:Header>"#,
            r#"<soap11:Body><m:SendNotification xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types" xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">"#,
            r#"<m:ResponseMessages><m:SendNotificationResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>"#,
            r#"<m:Notification><t:SubscriptionId>{sub}</t:SubscriptionId><t:PreviousWatermark>{prev}</t:PreviousWatermark><t:MoreEvents>false</t:MoreEvents>"#,
            r#"<t:ModifiedEvent><t:Watermark>{wm}</t:Watermark><t:TimeStamp>2026-11-29T10:30:45Z</t:TimeStamp>"#,
            r#"<t:ItemId Id="AAMkAGJlbmNoLXJvb20AEYAAAAA{item}" ChangeKey="DwAAABYAAADmZXh0LWNrLTEwMDE="/>"#,
            r#"<t:ParentFolderId Id="AAMkAGJlbmNoLXJvb20ALgAAAABjYWxlbmRhcg==" ChangeKey="AQAAAA=="/></t:ModifiedEvent>"#,
            r#"</m:Notification></m:SendNotificationResponseMessage></m:ResponseMessages></m:SendNotification></soap11:Body></soap11:Envelope>"#
        ),
        sub = subscription,
        prev = previous,
        wm = watermark,
        item = item
    )
}

/// Clients that open a connection, send part of a request's headers and then one header line a
/// second, reconnecting whenever the service closes them (as an attacker would).
struct Slowloris {
    stop: Arc<AtomicBool>,
    open: Arc<AtomicU64>,
    opened: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Slowloris {
    fn start(addr: &str, connections: usize) -> Self {
        use tokio::io::AsyncWriteExt;
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicU64::new(0));
        let opened = Arc::new(AtomicU64::new(0));
        let tasks = (0..connections)
            .map(|i| {
                let (addr, stop, open, opened) =
                    (addr.to_owned(), stop.clone(), open.clone(), opened.clone());
                // Spread over a second, as unrelated clients would be.
                let offset = Duration::from_secs(1).mul_f64(i as f64 / connections as f64);
                tokio::spawn(async move {
                    tokio::time::sleep(offset).await;
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut stream) = TcpStream::connect(&addr).await else {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        };
                        opened.fetch_add(1, Ordering::Relaxed);
                        open.fetch_add(1, Ordering::Relaxed);
                        let mut line: &[u8] =
                            b"POST /api/webhooks/exchange HTTP/1.1\r\nHost: bench\r\n";
                        while !stop.load(Ordering::Relaxed) && stream.write_all(line).await.is_ok()
                        {
                            line = b"X-Slow: 1\r\n";
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        open.fetch_sub(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Self {
            stop,
            open,
            opened,
            tasks,
        }
    }

    /// Stops the clients; returns how many connections were open and how many were opened.
    async fn stop(self) -> (u64, u64) {
        let open = self.open.load(Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        (open, self.opened.load(Ordering::Relaxed))
    }
}

/// Runs one phase and counts what got stored. `base` keeps item ids unique across phases.
async fn drive(
    service: &Service,
    load: Load,
    mode: Mode,
    seconds: u64,
    base: u64,
    pool: &PgPool,
) -> Outcome {
    let rows_before: i64 = sqlx::query_scalar("select count(*) from notification_events")
        .fetch_one(pool)
        .await
        .unwrap();
    let cpu_before = CpuSample::now(service.child.id(), &service.database);
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for conn in 0..CONNECTIONS {
        let addr = service.addr.clone();
        let (stop, acks, errors, load) = (stop.clone(), acks.clone(), errors.clone(), load.clone());
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(&addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            let mut latencies = Vec::with_capacity(64 * 1024);
            let interval = match mode {
                Mode::Open { rate } => Some(Duration::from_secs_f64(CONNECTIONS as f64 / rate)),
                Mode::Closed => None,
            };
            // Spread the connections' schedules over one interval.
            let first_due = started + interval.map_or(Duration::ZERO, |i| i.mul_f64(conn as f64 / CONNECTIONS as f64));
            let mut previous_watermark = format!("WM-{conn}-{base}-start");
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                let due = match interval {
                    Some(i) => {
                        let due = first_due + i.mul_f64(n as f64);
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    None => Instant::now(),
                };
                let item = item_id(conn, base + n);
                let (uri, content_type, body) = match &load {
                    Load::Graph(subs) => {
                        let (sub, state) = &subs[(conn + n as usize) % subs.len()];
                        (WEBHOOK.to_owned(), "application/json", graph_body(sub, state, &item))
                    }
                    Load::Ews(subs) => {
                        let watermark = format!("WM-{conn}-{}", base + n);
                        let body = ews_body(&subs[conn], &previous_watermark, &watermark, &item);
                        previous_watermark = watermark;
                        (WEBHOOK.to_owned(), "text/xml; charset=utf-8", body)
                    }
                    Load::Validation => (
                        format!("{WEBHOOK}?validationToken=Validation%3A+Testing+client+application+reachability+{item}"),
                        "text/plain",
                        String::new(),
                    ),
                };
                let request = Request::post(uri)
                    .header("host", "bench")
                    .header("content-type", content_type)
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                let ok = match sender.send_request(request).await {
                    Ok(response) => {
                        let status = response.status();
                        let _ = response.into_body().collect().await;
                        status.is_success()
                    }
                    Err(_) => false,
                };
                let elapsed = due.elapsed();
                if ok {
                    acks.fetch_add(1, Ordering::Relaxed);
                    latencies.push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX));
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
            latencies
        }));
    }
    let mut rss_kib_during = 0;
    let deadline = started + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        rss_kib_during = rss_kib_during.max(service.rss_kib());
    }
    stop.store(true, Ordering::Relaxed);
    let mut latencies_us = Vec::new();
    for task in tasks {
        latencies_us.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = CpuSample::now(service.child.id(), &service.database);
    latencies_us.sort_unstable();
    let rows_after: i64 = sqlx::query_scalar("select count(*) from notification_events")
        .fetch_one(pool)
        .await
        .unwrap();
    Outcome {
        seconds: elapsed,
        acks: acks.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        latencies_us,
        rows_stored: if matches!(load, Load::Validation) {
            -1
        } else {
            rows_after - rows_before
        },
        rss_kib_during,
        cpu: (cpu_before, cpu_after),
    }
}
