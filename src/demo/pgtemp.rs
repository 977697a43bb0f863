//! A throwaway PostgreSQL cluster for `rooms-sync demo` on a machine where no Postgres server
//! runs but the binaries are installed: `initdb` into a fresh temporary directory, `pg_ctl start`
//! on a free loopback port with trust authentication, and `pg_ctl stop` plus removal of the
//! directory on exit (or, best effort, on drop). The crash test uses it too, with the server's
//! durable defaults ([`Durability::Durable`]), crashing the server (`pg_ctl stop -m immediate`)
//! and starting it again on the same data directory and port.
//!
//! `initdb` and `postgres` refuse to run as root, so when the effective uid is 0 they run as the
//! `postgres` system user (which the Debian packages create) and the directory is handed to it.
//! Like every module but `config`, this one reads no environment variables: an explicit binary
//! directory is passed in by the caller.

use std::fs;
use std::io::Write as _;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};

/// Where the Debian packages install one `<version>/bin` per PostgreSQL major version.
const DEBIAN_PG_ROOT: &str = "/usr/lib/postgresql";
/// The binaries the cluster cannot do without (`pg_isready` is used when present).
const REQUIRED_BINARIES: [&str; 3] = ["initdb", "pg_ctl", "postgres"];
/// The superuser role created by initdb, and the system user the server runs as under root.
const SUPERUSER: &str = "postgres";
/// Bound on starting the server until it accepts connections, and on stopping it.
const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT_SECS: &str = "20";
/// A free port is picked by binding port 0 and releasing it, so another process may take it
/// before the server binds it: then the start is retried on a new port.
const PORT_ATTEMPTS: usize = 3;
/// How much of a failed command's output (the end of it) goes into the error.
const MAX_OUTPUT_CHARS: usize = 2000;

/// What the cluster's settings trade for speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `fsync`, `synchronous_commit` and `full_page_writes` off, and initdb does not sync: the
    /// demo's cluster, deleted on exit, where durability buys nothing.
    #[default]
    Throwaway,
    /// `fsync`, `synchronous_commit` and `full_page_writes` on, as a production server runs:
    /// what a crash test must run against. Two things only cost time here: initdb does not sync
    /// (that guards a new cluster against a machine crash, which a test of process crashes does
    /// not cause), and from PostgreSQL 14 on, crash recovery syncs the data directory's file
    /// system with one `syncfs` instead of an `fsync` per file (`recovery_init_sync_method`: on
    /// a slow disk an `fsync` per file of even a new cluster takes seconds, at every crash).
    Durable,
}

/// A throwaway PostgreSQL cluster in a temporary directory, listening on 127.0.0.1 on a free port, trust auth.
#[derive(Debug)]
pub struct TempCluster {
    /// `None` once stopped and removed; `Drop` cleans up whatever is still `Some`.
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    data_dir: PathBuf,
    log_file: PathBuf,
    bin_dir: PathBuf,
    /// The account initdb, pg_ctl and postgres run as, when we are root.
    run_as: Option<Account>,
    port: u16,
}

/// A system user's uid and primary gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Account {
    uid: u32,
    gid: u32,
}

impl TempCluster {
    /// Finds the binaries (newest /usr/lib/postgresql/*/bin unless `bin_dir` is given), runs initdb (as the postgres user when root) into a fresh temp dir, starts the server with pg_ctl on a free loopback port (unix socket inside the temp dir), waits until it accepts connections (bounded, 20 s).
    pub async fn start(bin_dir: Option<&Path>) -> anyhow::Result<Self> {
        Self::start_with(bin_dir, Durability::Throwaway).await
    }

    /// [`TempCluster::start`] with the given durability settings.
    pub async fn start_with(
        bin_dir: Option<&Path>,
        durability: Durability,
    ) -> anyhow::Result<Self> {
        let bin_dir = bin_dir.map(Path::to_path_buf);
        tokio::task::spawn_blocking(move || Self::start_blocking(bin_dir.as_deref(), durability))
            .await
            .context(
                "the task starting the throwaway PostgreSQL cluster panicked or was cancelled",
            )?
    }

    /// postgres://postgres@127.0.0.1:{port}/postgres
    pub fn url(&self) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/postgres", self.port)
    }

    /// The loopback port the server listens on (the same after [`TempCluster::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Crashes the server: `pg_ctl stop -m immediate`, which quits every server process at once,
    /// with no checkpoint; the next start recovers from the WAL. Returns once the postmaster is
    /// gone.
    pub async fn crash(&self) -> anyhow::Result<()> {
        let control = self.control();
        tokio::task::spawn_blocking(move || control.pg_ctl_stop("immediate"))
            .await
            .context("the task crashing the throwaway PostgreSQL cluster panicked")?
    }

    /// Starts the server again on the same data directory and port (after [`TempCluster::crash`]),
    /// and waits until it accepts connections (bounded, 20 s), crash recovery included.
    pub async fn restart(&self) -> anyhow::Result<()> {
        let control = self.control();
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + START_TIMEOUT;
            control.pg_ctl_start(deadline)?;
            control.wait_until_ready(deadline)
        })
        .await
        .context("the task restarting the throwaway PostgreSQL cluster panicked")?
    }

    /// A handle on the same server for a blocking task. It owns nothing: its `dir` is `None`, so
    /// dropping it neither stops the server nor removes the directory.
    fn control(&self) -> Self {
        Self {
            dir: None,
            dir_path: self.dir_path.clone(),
            data_dir: self.data_dir.clone(),
            log_file: self.log_file.clone(),
            bin_dir: self.bin_dir.clone(),
            run_as: self.run_as,
            port: self.port,
        }
    }

    /// `pg_ctl stop -m fast`, then removes the directory.
    pub async fn stop(self) -> anyhow::Result<()> {
        let mut this = self;
        tokio::task::spawn_blocking(move || this.stop_blocking())
            .await
            .context(
                "the task stopping the throwaway PostgreSQL cluster panicked or was cancelled",
            )?
    }

    fn start_blocking(bin_dir: Option<&Path>, durability: Durability) -> anyhow::Result<Self> {
        let deadline = Instant::now() + START_TIMEOUT;
        let bin_dir = match bin_dir {
            Some(dir) => {
                check_binaries(dir)?;
                dir.to_path_buf()
            }
            None => find_bin_dir()?,
        };
        let run_as = if effective_uid()? == 0 {
            Some(lookup_account(SUPERUSER).with_context(|| {
                format!(
                    "initdb and postgres refuse to run as root, so they must run as the \
                     `{SUPERUSER}` system user (created by the Debian postgresql packages)"
                )
            })?)
        } else {
            None
        };

        let builder = {
            let mut builder = tempfile::Builder::new();
            builder.prefix("rooms-sync-pg-");
            builder
        };
        // Under root the directory is created in /tmp rather than the default temp dir, which
        // might be somewhere (under /root, say) the postgres user cannot reach.
        let dir = match run_as {
            Some(_) => builder.tempdir_in("/tmp"),
            None => builder.tempdir(),
        }
        .context("creating a temporary directory for the throwaway PostgreSQL cluster")?;
        let dir_path = dir.path().to_path_buf();
        if let Some(account) = run_as {
            std::os::unix::fs::chown(&dir_path, Some(account.uid), Some(account.gid))
                .with_context(|| {
                    format!(
                        "handing {} to the `{SUPERUSER}` user (uid {}, gid {})",
                        dir_path.display(),
                        account.uid,
                        account.gid
                    )
                })?;
        }

        // From here on `Drop` stops the server (if its pid file exists) and removes the directory.
        let mut cluster = Self {
            data_dir: dir_path.join("data"),
            log_file: dir_path.join("server.log"),
            dir: Some(dir),
            dir_path,
            bin_dir,
            run_as,
            port: 0,
        };
        cluster.initdb()?;
        cluster.configure(durability)?;

        for attempt in 1..=PORT_ATTEMPTS {
            cluster.port = free_port()?;
            let log_before = fs::metadata(&cluster.log_file).map_or(0, |m| m.len());
            match cluster.pg_ctl_start(deadline) {
                Ok(()) => {
                    cluster.wait_until_ready(deadline)?;
                    tracing::info!(
                        url = %cluster.url(),
                        dir = %cluster.dir_path.display(),
                        bin_dir = %cluster.bin_dir.display(),
                        "started a throwaway PostgreSQL cluster"
                    );
                    return Ok(cluster);
                }
                Err(error) if attempt < PORT_ATTEMPTS && cluster.port_was_taken(log_before) => {
                    tracing::debug!(port = cluster.port, %error, "port taken meanwhile, retrying");
                }
                Err(error) => return Err(error),
            }
        }
        Err(anyhow!(
            "could not find a free loopback port for the throwaway PostgreSQL cluster"
        ))
    }

    fn initdb(&self) -> anyhow::Result<()> {
        let output = self
            .command("initdb")
            .arg("--pgdata")
            .arg(&self.data_dir)
            .args([
                "--username",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                // A throwaway cluster need not be flushed to disk; see `Durability::Durable`.
                "--no-sync",
            ])
            .output()
            .with_context(|| format!("running {}", self.bin_dir.join("initdb").display()))?;
        if !output.status.success() {
            return Err(command_failed("initdb", &output));
        }
        Ok(())
    }

    /// Appends the cluster's settings to postgresql.conf (rather than passing them on pg_ctl's
    /// command line, which goes through a shell).
    fn configure(&self, durability: Durability) -> anyhow::Result<()> {
        let socket_dir = self.dir_path.to_str().with_context(|| {
            format!(
                "the temporary directory {} is not valid UTF-8",
                self.dir_path.display()
            )
        })?;
        let conf = self.data_dir.join("postgresql.conf");
        // Throwaway: fsync, synchronous_commit and full_page_writes are off: the cluster is
        // deleted on exit, so durability buys nothing, and a demo on a fresh machine should start
        // and run fast. Durable: all three on (see `Durability::Durable`).
        let durability_settings = match durability {
            Durability::Throwaway => {
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n".to_owned()
            }
            Durability::Durable => {
                let mut settings =
                    "fsync = on\nsynchronous_commit = on\nfull_page_writes = on\n".to_owned();
                if self.major_version().is_some_and(|major| major >= 14) {
                    settings.push_str("recovery_init_sync_method = syncfs\n");
                }
                settings
            }
        };
        let settings = format!(
            "\n# rooms-sync: a throwaway cluster, removed on exit\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             {durability_settings}",
            socket_dir.replace('\'', "''")
        );
        fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .and_then(|mut file| file.write_all(settings.as_bytes()))
            .with_context(|| format!("writing the cluster's settings to {}", conf.display()))
    }

    /// The major version initdb wrote into the data directory (`PG_VERSION`: "15", "9.6").
    fn major_version(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data_dir.join("PG_VERSION")).ok()?;
        parse_version(text.trim())?.first().copied()
    }

    fn pg_ctl_start(&self, deadline: Instant) -> anyhow::Result<()> {
        let wait_secs = deadline
            .saturating_duration_since(Instant::now())
            .as_secs()
            .max(1);
        let output = self
            .command("pg_ctl")
            .arg("start")
            .arg("--pgdata")
            .arg(&self.data_dir)
            // With -l the server's stdout and stderr go to the log file, so it does not hold
            // on to our pipes and `output()` returns once pg_ctl does.
            .arg("--log")
            .arg(&self.log_file)
            .args(["--wait", "--timeout", &wait_secs.to_string()])
            .args(["-o", &format!("-p {}", self.port)])
            .output()
            .with_context(|| format!("running {}", self.bin_dir.join("pg_ctl").display()))?;
        if !output.status.success() {
            return Err(command_failed("pg_ctl start", &output).context(format!(
                "the server log {} ends with:\n{}",
                self.log_file.display(),
                self.log_tail(0)
            )));
        }
        Ok(())
    }

    /// `pg_ctl start --wait` already waits for the server to report itself ready; when
    /// `pg_isready` is installed it confirms that over TCP, polling until `deadline`.
    fn wait_until_ready(&self, deadline: Instant) -> anyhow::Result<()> {
        let pg_isready = self.bin_dir.join("pg_isready");
        if !is_executable(&pg_isready) {
            return Ok(());
        }
        loop {
            let output = Command::new(&pg_isready)
                .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
                .args([
                    "--username",
                    SUPERUSER,
                    "--dbname",
                    "postgres",
                    "--timeout",
                    "2",
                ])
                .current_dir(&self.dir_path)
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("running {}", pg_isready.display()))?;
            if output.status.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(command_failed("pg_isready", &output).context(format!(
                    "the throwaway PostgreSQL cluster on port {} did not accept connections \
                     within {} s",
                    self.port,
                    START_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop_blocking(&mut self) -> anyhow::Result<()> {
        // On failure `dir` stays `Some`, so `Drop` still tries an immediate stop and removal.
        self.pg_ctl_stop("fast")?;
        if let Some(dir) = self.dir.take() {
            dir.close().with_context(|| {
                format!(
                    "removing the throwaway PostgreSQL cluster's directory {}",
                    self.dir_path.display()
                )
            })?;
        }
        tracing::info!(
            port = self.port,
            "stopped and removed the throwaway PostgreSQL cluster"
        );
        Ok(())
    }

    fn pg_ctl_stop(&self, mode: &str) -> anyhow::Result<()> {
        let output = self
            .command("pg_ctl")
            .arg("stop")
            .arg("--pgdata")
            .arg(&self.data_dir)
            .args(["--mode", mode, "--wait", "--timeout", STOP_TIMEOUT_SECS])
            .output()
            .with_context(|| format!("running {}", self.bin_dir.join("pg_ctl").display()))?;
        if !output.status.success() {
            return Err(command_failed(&format!("pg_ctl stop -m {mode}"), &output));
        }
        Ok(())
    }

    /// A command for one of the server binaries, run as the postgres user when we are root,
    /// from inside the temp dir (the caller's working directory may be closed to that user).
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin_dir.join(program));
        command.current_dir(&self.dir_path).stdin(Stdio::null());
        if let Some(account) = self.run_as {
            // std drops the supplementary groups when root switches uid this way.
            command.uid(account.uid).gid(account.gid);
        }
        command
    }

    /// Whether the server log, from byte `from` on, says the port was already in use.
    fn port_was_taken(&self, from: u64) -> bool {
        let log = self.log_tail(from);
        log.contains("Address already in use") || log.contains("could not bind")
    }

    /// The end of the server log from byte `from` on, or a note if it cannot be read.
    fn log_tail(&self, from: u64) -> String {
        match fs::read(&self.log_file) {
            Ok(bytes) => {
                let start = usize::try_from(from).unwrap_or(0).min(bytes.len());
                let text = String::from_utf8_lossy(&bytes[start..]);
                tail(text.trim_end(), MAX_OUTPUT_CHARS).to_owned()
            }
            Err(error) => format!("(could not read the server log: {error})"),
        }
    }
}

impl Drop for TempCluster {
    /// Best effort when `stop()` was not called: `pg_ctl stop -m immediate` (blocking, usually
    /// well under a second) and removal of the directory; failures are only logged.
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else {
            return;
        };
        if self.data_dir.join("postmaster.pid").exists()
            && let Err(error) = self.pg_ctl_stop("immediate")
        {
            tracing::warn!(
                error = format!("{error:#}"),
                "could not stop the throwaway PostgreSQL cluster"
            );
        }
        if let Err(error) = dir.close() {
            tracing::warn!(
                %error,
                dir = %self.dir_path.display(),
                "could not remove the throwaway PostgreSQL cluster's directory"
            );
        }
    }
}

/// Whether the binaries exist (for a clear message when they don't).
pub fn binaries_available(bin_dir: Option<&Path>) -> bool {
    match bin_dir {
        Some(dir) => check_binaries(dir).is_ok(),
        None => find_bin_dir().is_ok(),
    }
}

/// The `bin` directory of the newest PostgreSQL under /usr/lib/postgresql that has them all.
fn find_bin_dir() -> anyhow::Result<PathBuf> {
    let entries = fs::read_dir(DEBIAN_PG_ROOT).with_context(|| {
        format!("no PostgreSQL server binaries installed: cannot read {DEBIAN_PG_ROOT}")
    })?;
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = parse_version(entry.file_name().to_str()?)?;
            let bin = entry.path().join("bin");
            check_binaries(&bin).is_ok().then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
        .with_context(|| {
            format!(
                "no PostgreSQL server binaries installed: no {DEBIAN_PG_ROOT}/<version>/bin \
                 has {}",
                REQUIRED_BINARIES.join(", ")
            )
        })
}

/// "15" or "9.6" as numbers, so that 10 sorts after 9.6.
fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

fn check_binaries(dir: &Path) -> anyhow::Result<()> {
    let missing: Vec<&str> = REQUIRED_BINARIES
        .into_iter()
        .filter(|name| !is_executable(&dir.join(name)))
        .collect();
    if !missing.is_empty() {
        bail!("{} has no executable {}", dir.display(), missing.join(", "));
    }
    Ok(())
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("binding a loopback port to find a free one")?;
    Ok(listener
        .local_addr()
        .context("reading the free loopback port")?
        .port())
}

/// The effective uid, from /proc/self/status (`Uid: real effective saved fs`), else `id -u`.
fn effective_uid() -> anyhow::Result<u32> {
    let from_proc = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1))
                .and_then(|euid| euid.parse().ok())
        });
    match from_proc {
        Some(uid) => Ok(uid),
        None => run_id(&["-u"]).context("finding out whether we run as root"),
    }
}

/// `name`'s uid and gid, from /etc/passwd, else from `id` (for users from other NSS sources).
fn lookup_account(name: &str) -> anyhow::Result<Account> {
    if let Some(account) = fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| parse_passwd(&passwd, name))
    {
        return Ok(account);
    }
    let lookup = || -> anyhow::Result<Account> {
        Ok(Account {
            uid: run_id(&["-u", name])?,
            gid: run_id(&["-g", name])?,
        })
    };
    lookup().with_context(|| format!("looking up the system user `{name}`"))
}

fn parse_passwd(passwd: &str, name: &str) -> Option<Account> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        Some(Account {
            uid: fields.next()?.parse().ok()?,
            gid: fields.next()?.parse().ok()?,
        })
    })
}

fn run_id(args: &[&str]) -> anyhow::Result<u32> {
    let output = Command::new("id")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running `id`")?;
    if !output.status.success() {
        return Err(command_failed(&format!("id {}", args.join(" ")), &output));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("`id {}` printed {:?}", args.join(" "), text.trim()))
}

/// "`what` failed (exit status): <the end of its stderr, or stdout if stderr is empty>".
fn command_failed(what: &str, output: &Output) -> anyhow::Error {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let text = if stderr.trim().is_empty() {
        stdout.trim()
    } else {
        stderr.trim()
    };
    anyhow!(
        "{what} failed ({}): {}",
        output.status,
        tail(text, MAX_OUTPUT_CHARS)
    )
}

/// The last `max` characters of `text` (the end of a command's output says what went wrong).
fn tail(text: &str, max: usize) -> &str {
    if max == 0 {
        return "";
    }
    match text.char_indices().rev().nth(max - 1) {
        Some((index, _)) => &text[index..],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts_connections(port: u16) -> bool {
        std::net::TcpStream::connect_timeout(
            &(Ipv4Addr::LOCALHOST, port).into(),
            Duration::from_secs(1),
        )
        .is_ok()
    }

    #[tokio::test]
    async fn a_throwaway_cluster_starts_answers_queries_and_is_removed_on_stop() {
        if !binaries_available(None) {
            eprintln!("skipped: no PostgreSQL binaries under {DEBIAN_PG_ROOT}");
            return;
        }
        let started = Instant::now();
        let cluster = TempCluster::start(None).await.unwrap();
        let start_time = started.elapsed();
        let dir = cluster.dir_path.clone();
        let port = cluster.port;
        assert!(dir.join("data").join("PG_VERSION").exists());
        assert_eq!(
            cluster.url(),
            format!("postgres://postgres@127.0.0.1:{port}/postgres")
        );

        let pool = sqlx::PgPool::connect(&cluster.url()).await.unwrap();
        let one: i32 = sqlx::query_scalar("select 1")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(one, 1);
        sqlx::query("create database rooms_sync_demo")
            .execute(&pool)
            .await
            .unwrap();
        let created: bool = sqlx::query_scalar(
            "select exists (select 1 from pg_database where datname = 'rooms_sync_demo')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(created);
        pool.close().await;

        let stopping = Instant::now();
        cluster.stop().await.unwrap();
        eprintln!(
            "start took {start_time:?}, stop took {:?}",
            stopping.elapsed()
        );
        assert!(!dir.exists(), "{} still exists", dir.display());
        assert!(!accepts_connections(port), "port {port} still accepts");
    }

    #[tokio::test]
    async fn a_durable_cluster_keeps_its_committed_rows_across_a_crash_and_restarts_on_its_port() {
        if !binaries_available(None) {
            eprintln!("skipped: no PostgreSQL binaries under {DEBIAN_PG_ROOT}");
            return;
        }
        let cluster = TempCluster::start_with(None, Durability::Durable)
            .await
            .unwrap();
        let port = cluster.port();
        let pool = sqlx::PgPool::connect(&cluster.url()).await.unwrap();
        let fsync: String = sqlx::query_scalar("show fsync")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(fsync, "on");
        sqlx::query("create table kept (n int)")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("insert into kept values (1)")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;

        cluster.crash().await.unwrap();
        assert!(!accepts_connections(port), "port {port} still accepts");
        cluster.restart().await.unwrap();
        assert_eq!(cluster.port(), port);
        let pool = sqlx::PgPool::connect(&cluster.url()).await.unwrap();
        let kept: i64 = sqlx::query_scalar("select count(*) from kept")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(kept, 1);
        pool.close().await;
        cluster.stop().await.unwrap();
    }

    #[tokio::test]
    async fn dropping_a_cluster_without_stop_still_stops_it_and_removes_its_directory() {
        if !binaries_available(None) {
            eprintln!("skipped: no PostgreSQL binaries under {DEBIAN_PG_ROOT}");
            return;
        }
        let cluster = TempCluster::start(None).await.unwrap();
        let dir = cluster.dir_path.clone();
        let port = cluster.port;
        assert!(accepts_connections(port));

        drop(cluster);
        assert!(!dir.exists(), "{} still exists", dir.display());
        assert!(!accepts_connections(port), "port {port} still accepts");
    }

    #[tokio::test]
    async fn an_explicit_bin_dir_without_the_binaries_is_reported() {
        let empty = tempfile::tempdir().unwrap();
        assert!(!binaries_available(Some(empty.path())));
        let error = TempCluster::start(Some(empty.path())).await.unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("initdb"), "{message}");
        assert!(
            message.contains(&empty.path().display().to_string()),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_failing_initdb_is_reported_with_its_stderr() {
        let bin = tempfile::tempdir().unwrap();
        // Reachable by the postgres user, which runs the binaries when we are root.
        fs::set_permissions(bin.path(), fs::Permissions::from_mode(0o755)).unwrap();
        for name in REQUIRED_BINARIES {
            let path = bin.path().join(name);
            fs::write(&path, "#!/bin/sh\necho \"$0: cannot do it\" >&2\nexit 3\n").unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        assert!(binaries_available(Some(bin.path())));
        let error = TempCluster::start(Some(bin.path())).await.unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("initdb failed"), "{message}");
        assert!(message.contains("initdb: cannot do it"), "{message}");
        assert!(message.contains("exit status: 3"), "{message}");
    }

    #[test]
    fn versions_sort_numerically() {
        assert!(parse_version("10") > parse_version("9.6"));
        assert_eq!(parse_version("15"), Some(vec![15]));
        assert_eq!(parse_version("main"), None);
    }

    #[test]
    fn a_passwd_line_gives_the_uid_and_gid() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      postgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n";
        assert_eq!(
            parse_passwd(passwd, "postgres"),
            Some(Account { uid: 101, gid: 104 })
        );
        assert_eq!(parse_passwd(passwd, "post"), None);
    }

    #[test]
    fn the_tail_keeps_the_last_characters() {
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("ab", 3), "ab");
        assert_eq!(tail("äöü", 2), "öü");
        assert_eq!(tail("abc", 0), "");
    }
}
