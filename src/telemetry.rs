//! Logging: the only place that installs a tracing subscriber.
//!
//! Logs go to stderr (stdout is reserved for command output such as `rooms-sync config`), as
//! JSON lines in production or compact text for people, filtered by `RUST_LOG`.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The filter when `RUST_LOG` is unset: our own crate at info, chatty dependencies at warn.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,hyper=warn,tower_http=warn";

/// Installs the global subscriber. `filter` is a `RUST_LOG`-style directive string that the
/// configuration has already validated.
///
/// # Errors
/// When a subscriber is already installed or the filter does not parse.
pub fn init(format: LogFormat, filter: Option<&str>) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(filter.unwrap_or(DEFAULT_FILTER))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        // Colour only for a person at a terminal: escape codes in a file or a log collector
        // are noise.
        LogFormat::Text => builder
            .compact()
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    }
    .map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))
}
