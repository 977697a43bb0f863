//! `rooms-sync demo` as a newcomer runs it: the real binary, stopped with Ctrl-C.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::helpers::{binary, server_url, signal_and_wait};

/// The number after `committed by the webhook: ` in a status line.
/// How many changes the view says reached their reservation row.
fn committed(line: &str) -> Option<u64> {
    let rest = line.split("reservation written: ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn the_demo_shows_changes_reaching_their_reservation_rows_and_stops_cleanly_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("{}/postgres", server_url());
    let mut child = binary(dir.path(), &[("DatabaseUrl", &database)])
        // The default rate: one change a second, in step with the redraw (a view that matched
        // changes by position once missed every one of them at this rate).
        .args(["demo", "--rooms", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut screen = Vec::new();
    let mut seen_commits = 0;
    while Instant::now() < deadline && seen_commits == 0 {
        if let Ok(line) = received.recv_timeout(Duration::from_millis(200)) {
            seen_commits = committed(&line).unwrap_or(0);
            screen.push(line);
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "demo exited early:\n{}",
            screen.join("\n")
        );
    }
    assert!(
        seen_commits > 0,
        "no change reached its reservation row:\n{}",
        screen.join("\n")
    );
    let text = screen.join("\n");
    assert!(
        text.contains("room-01@sim.example      graph   active"),
        "{text}"
    );
    assert!(
        text.contains("room-02@sim.example      ews     active"),
        "{text}"
    );

    let status = signal_and_wait(&mut child, "-INT", Duration::from_secs(20));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
fn without_a_reachable_server_the_demo_runs_on_a_throwaway_cluster_and_removes_it() {
    if !rooms_sync::demo::pgtemp::binaries_available(None) {
        eprintln!("PostgreSQL binaries are not installed: nothing to test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let closed = crate::helpers::free_port();
    let output = binary(
        dir.path(),
        &[(
            "DatabaseUrl",
            &format!("postgres://postgres@127.0.0.1:{closed}/x"),
        )],
    )
    .args(["demo", "--rooms", "2", "--rate", "600", "--seconds", "4"])
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().filter_map(committed).next_back();
    assert!(last.is_some_and(|n| n > 0), "{stdout}");
    // The header names the cluster's database, not the closed port.
    assert!(!stdout.contains(&format!(":{closed}/")), "{stdout}");
}
