//! Settings: the one place that reads the environment and the RoomsAppSettings.config file.
//!
//! Layers, lowest first: built-in defaults, the .NET appSettings file, environment variables of
//! the same key names (matched case-insensitively). They are merged by the `config` crate from
//! three [`config::Source`]s that each tag their values with where they came from, so that every
//! validation problem can name the key, its source and what is expected. Validation happens once,
//! here, and reports every problem at once; the rest of the program only sees the typed
//! [`Settings`] tree.

mod appsettings;
mod keys;
mod parse;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use secrecy::SecretString;
use serde::Deserialize;

pub use appsettings::{AppSettingsError, parse as parse_app_settings};
pub use keys::{KEYS, KeySpec};

/// The environment variable naming the settings file when `--config` is not given.
pub const SETTINGS_FILE_ENV: &str = "ROOMS_APPSETTINGS";
/// The settings file used when neither `--config` nor [`SETTINGS_FILE_ENV`] names one.
pub const DEFAULT_SETTINGS_FILE: &str = "config/RoomsAppSettings.config";
/// The log filter, named as the tracing ecosystem names it.
const LOG_FILTER_ENV: &str = "RUST_LOG";
/// Read when `DatabaseUrl` is set nowhere (the usual variable of Postgres tooling).
const DATABASE_URL_FALLBACK_ENV: &str = "DATABASE_URL";

/// The validated settings of the whole service.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The push callback URL registered with Exchange (CONTRACT §3), exactly as resolved.
    pub callback_url: String,
    pub callback: CallbackSettings,
    pub database: DatabaseSettings,
    pub http: HttpSettings,
    pub roles: ServiceRoles,
    pub exchange: ExchangeSettings,
    pub sync: SyncSettings,
    pub log_format: LogFormat,
}

/// The inputs of the callback URL resolution, kept for `rooms-sync config`.
#[derive(Debug, Clone)]
pub struct CallbackSettings {
    pub idp_root_url: Option<url::Url>,
    pub endpoint_url: Option<String>,
    pub use_legacy_endpoint: bool,
    pub tenant: String,
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub auto_migrate: bool,
    pub max_connections: u32,
    /// How long a request may wait for a pooled connection before it is answered 503.
    pub acquire_timeout: Duration,
    /// Server-side `statement_timeout` for every connection of the pool.
    pub statement_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub listen_address: SocketAddr,
    pub admin_listen_address: SocketAddr,
    /// Empty: every source may call the webhook.
    pub webhook_allowed_ip_ranges: Vec<IpNet>,
    pub trusted_proxy_ranges: Vec<IpNet>,
    pub webhook_max_body_bytes: usize,
    /// Whole-request deadline; a webhook answer after it would be retried by Exchange anyway.
    pub request_timeout: Duration,
    /// How long a client may take to send its request headers (slowloris defence).
    pub header_read_timeout: Duration,
    /// Connections each listener holds open at once; more wait in the kernel's accept queue, so
    /// idle or slow clients cannot use up the process's file descriptors.
    pub max_connections: usize,
    /// How long in-flight requests and jobs may run on after SIGTERM.
    pub shutdown_drain: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceRoles {
    pub web: bool,
    pub worker: bool,
}

pub use crate::domain::Backend;

/// One configured room mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxSpec {
    /// Lower-case SMTP address.
    pub address: String,
    pub backend: Backend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EwsAuth {
    OAuth,
    Basic,
}

#[derive(Debug, Clone)]
pub struct ExchangeSettings {
    pub default_backend: Backend,
    pub mailboxes: Vec<MailboxSpec>,
    pub ews: EwsSettings,
    pub graph: GraphSettings,
    pub azure: AzureSettings,
}

#[derive(Debug, Clone)]
pub struct EwsSettings {
    pub url: url::Url,
    pub auth: EwsAuth,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub status_frequency_minutes: u32,
    pub unknown_subscription_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct GraphSettings {
    pub base_url: url::Url,
    pub subscription_lifetime_minutes: u32,
}

#[derive(Debug, Clone)]
pub struct AzureSettings {
    pub authority_host: url::Url,
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<SecretString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncSettings {
    pub window_past_days: u32,
    pub window_future_days: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Default,
    File,
    Environment,
    /// Set by the running command itself (e.g. `demo`), above everything else.
    Command,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Default => "default",
            Self::File => "file",
            Self::Environment => "environment",
            Self::Command => "command",
        })
    }
}

/// Everything wrong with the configuration, one problem per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl ConfigError {
    fn single(problem: String) -> Self {
        Self {
            problems: vec![problem],
        }
    }
}

/// The settings plus what the loader noticed but could not log yet (logging is configured by
/// the settings themselves, so it starts after them).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub settings: Settings,
    /// The settings file that was read, if any.
    pub file: Option<PathBuf>,
    /// Keys in the file that this service does not know (ROOMS shares the file).
    pub ignored_keys: Vec<String>,
    /// The raw effective values with their origins, for `rooms-sync config`.
    pub effective: Effective,
    /// The `RUST_LOG` filter directives, already checked to parse.
    pub log_filter: Option<String>,
}

/// The effective raw value of every known key, after layering.
#[derive(Debug, Clone, Default)]
pub struct Effective {
    values: HashMap<&'static str, (String, Origin)>,
}

impl Effective {
    /// The effective value of `key` and where it came from; `None` when the key is unset.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<(&str, Origin)> {
        self.values.get(key).map(|(v, o)| (v.as_str(), *o))
    }
}

/// Loads the settings of this process: `--config` (if given), else the file named by
/// `ROOMS_APPSETTINGS`, else `config/RoomsAppSettings.config` if it exists; then the process
/// environment on top.
///
/// # Errors
/// Every invalid or missing value, and an unreadable settings file, as one [`ConfigError`].
pub fn load(cli_path: Option<&Path>) -> Result<Loaded, ConfigError> {
    load_with_overrides(cli_path, &[])
}

/// As [`load`], with `overrides` applied on top of the environment: for commands such as
/// `rooms-sync demo` that point the service at their own simulator and ports while keeping the
/// operator's database settings.
///
/// # Errors
/// As [`load`].
pub fn load_with_overrides(
    cli_path: Option<&Path>,
    overrides: &[(&'static str, String)],
) -> Result<Loaded, ConfigError> {
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let path = match cli_path {
        Some(p) => Some(p.to_path_buf()),
        None => settings_file_from_env(&env).map(PathBuf::from).or_else(|| {
            let default = PathBuf::from(DEFAULT_SETTINGS_FILE);
            default.is_file().then_some(default)
        }),
    };
    let file = match &path {
        Some(p) => Some((
            p.clone(),
            std::fs::read_to_string(p).map_err(|e| {
                ConfigError::single(format!(
                    "settings file {}: cannot be read ({e}); expected a RoomsAppSettings.config \
                     file (named by --config or {SETTINGS_FILE_ENV})",
                    p.display()
                ))
            })?,
        )),
        None => None,
    };
    load_layers(
        file.as_ref().map(|(p, text)| (p.as_path(), text.as_str())),
        &env,
        overrides,
    )
}

fn settings_file_from_env(env: &[(String, String)]) -> Option<&str> {
    env.iter()
        .find(|(k, v)| k == SETTINGS_FILE_ENV && !v.trim().is_empty())
        .map(|(_, v)| v.as_str())
}

/// Loads settings from an optional file text and an explicit environment: the pure core of
/// [`load`], used directly by tests.
///
/// # Errors
/// As [`load`].
pub fn load_from(
    file: Option<(&Path, &str)>,
    env: &[(String, String)],
) -> Result<Loaded, ConfigError> {
    load_layers(file, env, &[])
}

fn load_layers(
    file: Option<(&Path, &str)>,
    env: &[(String, String)],
    overrides: &[(&'static str, String)],
) -> Result<Loaded, ConfigError> {
    let mut ignored_keys = Vec::new();
    let file_values = match file {
        Some((path, text)) => {
            let entries = appsettings::parse(text).map_err(|e| {
                ConfigError::single(format!("settings file {}: {e}", path.display()))
            })?;
            let mut known = Vec::new();
            for (key, value) in entries {
                match keys::canonical(&key) {
                    Some(spec) => known.push((spec.name, value)),
                    None => ignored_keys.push(key),
                }
            }
            known
        }
        None => Vec::new(),
    };
    let mut env_values = environment_values(env)?;
    let database_url_set = |values: &[(&str, String)]| {
        values
            .iter()
            .any(|(k, v)| *k == "DatabaseUrl" && !v.trim().is_empty())
    };
    if !database_url_set(&file_values)
        && !database_url_set(&env_values)
        && let Some((_, v)) = env
            .iter()
            .find(|(k, v)| k == DATABASE_URL_FALLBACK_ENV && !v.trim().is_empty())
    {
        env_values.push(("DatabaseUrl", v.clone()));
    }

    let merged = config::Config::builder()
        .add_source(TaggedSource::defaults())
        .add_source(TaggedSource::new(Origin::File, file_values))
        .add_source(TaggedSource::new(Origin::Environment, env_values))
        .add_source(TaggedSource::new(Origin::Command, overrides.to_vec()))
        .build()
        .and_then(config::Config::try_deserialize::<HashMap<String, Tagged>>)
        .map_err(|e| ConfigError::single(format!("settings could not be merged: {e}")))?;

    let effective = Effective {
        values: KEYS
            .iter()
            .filter_map(|spec| {
                merged
                    .get(spec.name)
                    .map(|t| (spec.name, (t.value.clone(), t.origin)))
            })
            .collect(),
    };
    let log_filter = env
        .iter()
        .find(|(k, v)| k == LOG_FILTER_ENV && !v.trim().is_empty())
        .map(|(_, v)| v.clone());
    let filter_problem = log_filter.as_deref().and_then(|f| {
        tracing_subscriber::EnvFilter::try_new(f).err().map(|e| {
            format!("{LOG_FILTER_ENV} (from environment): invalid value {f:?}; expected tracing filter directives such as info,rooms_sync=debug ({e})")
        })
    });
    let settings = match (parse::settings(&effective), filter_problem) {
        (Ok(settings), None) => settings,
        (Ok(_), Some(problem)) => return Err(ConfigError::single(problem)),
        (Err(mut error), problem) => {
            error.problems.extend(problem);
            return Err(error);
        }
    };
    Ok(Loaded {
        settings,
        file: file.map(|(p, _)| p.to_path_buf()),
        ignored_keys,
        effective,
        log_filter,
    })
}

/// Picks the environment variables that name known keys, case-insensitively; empty means unset.
fn environment_values(
    env: &[(String, String)],
) -> Result<Vec<(&'static str, String)>, ConfigError> {
    let mut found: HashMap<&'static str, Vec<(&str, &str)>> = HashMap::new();
    for (name, value) in env {
        if value.trim().is_empty() {
            continue;
        }
        if let Some(spec) = keys::canonical(name) {
            found.entry(spec.name).or_default().push((name, value));
        }
    }
    let mut problems = Vec::new();
    let mut values = Vec::new();
    for spec in KEYS {
        let Some(candidates) = found.get(spec.name) else {
            continue;
        };
        // Two spellings of one key with different values: refuse to guess which one wins.
        let first = candidates[0].1;
        if candidates.iter().any(|(_, v)| *v != first) {
            let names: Vec<&str> = candidates.iter().map(|(n, _)| *n).collect();
            problems.push(format!(
                "{} (environment): set by several variables with different values ({}); \
                 expected one",
                spec.name,
                names.join(", ")
            ));
            continue;
        }
        values.push((spec.name, first.to_owned()));
    }
    if problems.is_empty() {
        Ok(values)
    } else {
        Err(ConfigError { problems })
    }
}

/// The effective settings as `rooms-sync config` prints them: every known key by its name (null
/// when unset), secrets as `"***"` (`DatabaseUrl` keeps all but its password), and the resolved
/// `CallbackUrl`.
#[must_use]
pub fn report(loaded: &Loaded) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for spec in KEYS {
        let value = match loaded.effective.get(spec.name) {
            None => serde_json::Value::Null,
            Some((value, _)) if spec.name == "DatabaseUrl" => {
                serde_json::Value::String(mask_password(value))
            }
            Some(_) if spec.secret => serde_json::Value::String("***".to_owned()),
            Some((value, _)) => serde_json::Value::String(value.to_owned()),
        };
        out.insert(spec.name.to_owned(), value);
    }
    out.insert(
        "CallbackUrl".to_owned(),
        serde_json::Value::String(loaded.settings.callback_url.clone()),
    );
    serde_json::Value::Object(out)
}

fn mask_password(database_url: &str) -> String {
    match url::Url::parse(database_url) {
        Ok(mut url) if url.password().is_some() => {
            if url.set_password(Some("***")).is_ok() {
                url.into()
            } else {
                "***".to_owned()
            }
        }
        // No password in the URL: nothing secret to hide (a password may still come from
        // PGPASSWORD or .pgpass, which we never read).
        Ok(url) if url.query().is_none() => url.into(),
        _ => "***".to_owned(),
    }
}

/// A value as the merge layer carries it: the text and its origin.
#[derive(Debug, Clone, Deserialize)]
struct Tagged {
    value: String,
    origin: Origin,
}

/// A `config` source whose every key maps to `{ value, origin }`, so the origin survives the
/// merge: a higher layer replaces the whole pair.
#[derive(Debug, Clone)]
struct TaggedSource {
    origin: Origin,
    values: Vec<(&'static str, String)>,
}

impl TaggedSource {
    fn new(origin: Origin, values: Vec<(&'static str, String)>) -> Self {
        // The last occurrence of a key wins, as .NET does for duplicate `add` elements.
        Self { origin, values }
    }

    fn defaults() -> Self {
        Self::new(
            Origin::Default,
            KEYS.iter()
                .filter_map(|k| k.default.map(|d| (k.name, d.to_owned())))
                .collect(),
        )
    }
}

impl config::Source for TaggedSource {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<config::Map<String, config::Value>, config::ConfigError> {
        let origin_name = self.origin.to_string();
        let tag = Some(&origin_name);
        let mut map = config::Map::new();
        for (key, value) in &self.values {
            if value.trim().is_empty() {
                continue;
            }
            let mut pair = config::Map::new();
            pair.insert(
                "value".to_owned(),
                config::Value::new(tag, value.trim().to_owned()),
            );
            pair.insert(
                "origin".to_owned(),
                config::Value::new(tag, origin_name.clone()),
            );
            map.insert((*key).to_owned(), config::Value::new(tag, pair));
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests;
