//! Integration tests: the real application on loopback port 0 against a fresh Postgres database
//! per test (`#[sqlx::test]`), and the real binary for the command line.

mod cli;
mod container;
mod health;
mod helpers;
