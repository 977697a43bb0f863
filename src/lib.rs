//! rooms-sync: keeps Exchange room-mailbox calendars in sync with the ROOMS `reservations` table
//! by push (EWS push subscriptions and Microsoft Graph change notifications), with every
//! notification committed to Postgres before it is acknowledged.
//!
//! `main.rs` is a thin shell over [`cli`]; [`app::Application`] wires the listeners and
//! background tasks; [`config`] is the only module that reads the environment or files;
//! [`simulator`] is an Exchange (EWS and Graph) on loopback for tests, demos and benchmarks.

pub mod app;
pub mod cli;
pub mod config;
pub mod db;
pub mod demo;
pub mod domain;
pub mod ews;
pub mod exchange;
pub mod graph;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod offload;
pub mod shutdown;
pub mod simulator;
pub mod telemetry;
pub mod worker;
