//! Integration tests: the real application on loopback port 0 against a fresh Postgres database
//! per test (`#[sqlx::test]`), and the real binary for the command line.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failed step should fail the test with its message"
)]

mod cli;
mod container;
mod crash;
mod demo;
mod end_to_end;
mod health;
mod helpers;
mod status;
mod stress;
mod sync;
mod upkeep;
mod webhook;
