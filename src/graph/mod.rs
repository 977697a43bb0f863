//! Microsoft Graph wire types, independent of HTTP and the database.
//!
//! Everything here turns bytes Graph sends into plain Rust values (and back
//! where needed); nothing here opens a socket, reads a clock or touches
//! Postgres, so it can be called from the webhook hot path and tested alone.

pub mod delta;
pub mod notification;
pub mod subscription;
