//! Validation of the merged raw values into the typed [`Settings`] tree, collecting every problem.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use secrecy::SecretString;

use super::{
    AzureSettings, Backend, CallbackSettings, ConfigError, DatabaseSettings, Effective, EwsAuth,
    EwsSettings, ExchangeSettings, GraphSettings, HttpSettings, LogFormat, MailboxSpec, Origin,
    ServiceRoles, Settings, SyncSettings, keys,
};

/// The path appended to `IdpRootUrl` for the default callback (CONTRACT §3, rule 3).
const WEBHOOK_PATH: &str = "api/webhooks/exchange";
/// The path of the legacy WCF endpoint (CONTRACT §3, rule 2).
const LEGACY_PATH: &str = "WebServices/SyncNotification.svc";

pub(super) fn settings(raw: &Effective) -> Result<Settings, ConfigError> {
    let mut c = Checker {
        raw,
        problems: Vec::new(),
    };

    let idp_root_url = c.optional(
        "IdpRootUrl",
        "an absolute http(s) URL without query or fragment",
        |v| http_url(v).filter(|u| u.query().is_none() && u.fragment().is_none()),
    );
    let endpoint_url = c.optional(
        "ExchangePushNotificationEndpointUrl",
        "an absolute http(s) URL",
        |v| http_url(v).map(|_| v.to_owned()),
    );
    let use_legacy_endpoint = c.required(
        "ExchangePushNotificationUseLegacyEndpoint",
        BOOL,
        bool_value,
    );
    let tenant = c.text("Tenant").unwrap_or_default();

    let database_url = c.required("DatabaseUrl", "a postgres:// or postgresql:// URL", |v| {
        url::Url::parse(v)
            .ok()
            .filter(|u| matches!(u.scheme(), "postgres" | "postgresql") && u.has_host())
            .map(|_| SecretString::from(v.to_owned()))
    });
    let auto_migrate = c.required("AutoMigrate", BOOL, bool_value);
    let max_connections = c.required("DatabaseMaxConnections", "an integer from 2 to 1000", |v| {
        in_range(v, 2, 1000)
    });
    let acquire_timeout = c.required(
        "DatabaseAcquireTimeoutMs",
        "an integer from 10 to 60000",
        |v| in_range(v, 10, 60_000).map(|ms| Duration::from_millis(u64::from(ms))),
    );
    let statement_timeout = c.required(
        "DatabaseStatementTimeoutSeconds",
        "an integer from 1 to 3600",
        |v| in_range(v, 1, 3600).map(seconds),
    );

    let listen_address = c.required("ListenAddress", SOCKET, |v| SocketAddr::from_str(v).ok());
    let admin_listen_address = c.required("AdminListenAddress", SOCKET, |v| {
        SocketAddr::from_str(v).ok()
    });
    let roles = c.required("ServiceRoles", "a list of web and worker", |v| {
        let mut roles = ServiceRoles {
            web: false,
            worker: false,
        };
        for item in list(v) {
            match item.to_ascii_lowercase().as_str() {
                "web" => roles.web = true,
                "worker" => roles.worker = true,
                _ => return None,
            }
        }
        (roles.web || roles.worker).then_some(roles)
    });
    let webhook_allowed_ip_ranges = c
        .optional("WebhookAllowedIpRanges", CIDRS, cidr_list)
        .unwrap_or_default();
    let trusted_proxy_ranges = c
        .optional("TrustedProxyRanges", CIDRS, cidr_list)
        .unwrap_or_default();
    let webhook_max_body_bytes = c.required(
        "WebhookMaxBodyBytes",
        "an integer from 1024 to 1073741824 (bytes)",
        |v| in_range(v, 1024, 1 << 30).and_then(|n| usize::try_from(n).ok()),
    );
    let request_timeout = c.required("RequestTimeoutSeconds", "an integer from 1 to 300", |v| {
        in_range(v, 1, 300).map(seconds)
    });
    let header_read_timeout = c.required(
        "HeaderReadTimeoutSeconds",
        "an integer from 1 to 300",
        |v| in_range(v, 1, 300).map(seconds),
    );
    let max_http_connections = c.required(
        "HttpMaxConnections",
        "an integer from 1 to 65536 (connections per listener)",
        |v| in_range(v, 1, 65_536).and_then(|n| usize::try_from(n).ok()),
    );
    let shutdown_drain = c.required("ShutdownDrainSeconds", "an integer from 1 to 600", |v| {
        in_range(v, 1, 600).map(seconds)
    });

    let default_backend = c.required("ExchangeBackend", "ews or graph", backend);
    let mailboxes = c
        .optional(
            "ExchangeRoomMailboxes",
            "a list of SMTP addresses, each optionally prefixed ews: or graph:",
            |v| {
                list(v)
                    .map(|item| mailbox(item, default_backend.unwrap_or(Backend::Graph)))
                    .collect::<Option<Vec<_>>>()
            },
        )
        .unwrap_or_default();
    let ews_url = c.required("EwsUrl", URL, http_url);
    let ews_auth = c.required("EwsAuth", "oauth or basic", |v| {
        match v.to_ascii_lowercase().as_str() {
            "oauth" => Some(EwsAuth::OAuth),
            "basic" => Some(EwsAuth::Basic),
            _ => None,
        }
    });
    let ews_username = c.text("EwsUsername");
    let ews_password = c.text("EwsPassword").map(SecretString::from);
    let status_frequency_minutes = c.required(
        "EwsStatusFrequencyMinutes",
        "an integer from 1 to 1440 (minutes)",
        |v| in_range(v, 1, 1440),
    );
    let unknown_grace = c.required(
        "EwsUnknownSubscriptionGraceSeconds",
        "an integer from 0 to 600 (seconds)",
        |v| in_range(v, 0, 600).map(seconds),
    );
    let graph_base_url = c.required("GraphBaseUrl", URL, http_url);
    let authority_host = c.required("AzureAuthorityHost", URL, http_url);
    let tenant_id = c.text("AzureTenantId");
    let client_id = c.text("AzureClientId");
    let client_secret = c.text("AzureClientSecret").map(SecretString::from);
    let lifetime = c.required(
        "GraphSubscriptionLifetimeMinutes",
        "an integer from 45 to 10080 (minutes)",
        |v| in_range(v, 45, 10_080),
    );
    let past_days = c.required(
        "SyncWindowPastDays",
        "an integer from 0 to 3650 (days)",
        |v| in_range(v, 0, 3650),
    );
    let future_days = c.required(
        "SyncWindowFutureDays",
        "an integer from 1 to 3650 (days)",
        |v| in_range(v, 1, 3650),
    );
    let log_format = c.required("LogFormat", "json or text", |v| {
        match v.to_ascii_lowercase().as_str() {
            "json" => Some(LogFormat::Json),
            "text" => Some(LogFormat::Text),
            _ => None,
        }
    });

    let callback = CallbackSettings {
        idp_root_url,
        endpoint_url,
        use_legacy_endpoint: use_legacy_endpoint.unwrap_or(false),
        tenant,
    };
    let callback_url = resolve_callback(&mut c, &callback);

    // Credentials are only required for the backends that configured mailboxes actually use.
    let uses = |b: Backend| mailboxes.iter().any(|m| m.backend == b);
    let needs_azure =
        uses(Backend::Graph) || (uses(Backend::Ews) && ews_auth == Some(EwsAuth::OAuth));
    if needs_azure {
        for (name, present) in [
            ("AzureTenantId", tenant_id.is_some()),
            ("AzureClientId", client_id.is_some()),
            ("AzureClientSecret", client_secret.is_some()),
        ] {
            if !present {
                c.problems.push(format!(
                    "{name}: required when a mailbox uses Graph or EWS with EwsAuth=oauth"
                ));
            }
        }
    }
    if uses(Backend::Ews) && ews_auth == Some(EwsAuth::Basic) {
        for (name, present) in [
            ("EwsUsername", ews_username.is_some()),
            ("EwsPassword", ews_password.is_some()),
        ] {
            if !present {
                c.problems.push(format!(
                    "{name}: required when a mailbox uses EWS with EwsAuth=basic"
                ));
            }
        }
    }
    if let (Some(a), Some(b)) = (listen_address, admin_listen_address)
        && a == b
        && a.port() != 0
    {
        c.problems.push(format!(
            "AdminListenAddress: {b} is also the ListenAddress; expected a different address or port"
        ));
    }

    let problems = std::mem::take(&mut c.problems);
    let built = (|| {
        Some(Settings {
            callback_url: callback_url?,
            callback,
            database: DatabaseSettings {
                url: database_url?,
                auto_migrate: auto_migrate?,
                max_connections: max_connections?,
                acquire_timeout: acquire_timeout?,
                statement_timeout: statement_timeout?,
            },
            http: HttpSettings {
                listen_address: listen_address?,
                admin_listen_address: admin_listen_address?,
                webhook_allowed_ip_ranges,
                trusted_proxy_ranges,
                webhook_max_body_bytes: webhook_max_body_bytes?,
                request_timeout: request_timeout?,
                header_read_timeout: header_read_timeout?,
                max_connections: max_http_connections?,
                shutdown_drain: shutdown_drain?,
            },
            roles: roles?,
            exchange: ExchangeSettings {
                default_backend: default_backend?,
                mailboxes,
                ews: EwsSettings {
                    url: ews_url?,
                    auth: ews_auth?,
                    username: ews_username,
                    password: ews_password,
                    status_frequency_minutes: status_frequency_minutes?,
                    unknown_subscription_grace: unknown_grace?,
                },
                graph: GraphSettings {
                    base_url: graph_base_url?,
                    subscription_lifetime_minutes: lifetime?,
                },
                azure: AzureSettings {
                    authority_host: authority_host?,
                    tenant_id,
                    client_id,
                    client_secret,
                },
            },
            sync: SyncSettings {
                window_past_days: past_days?,
                window_future_days: future_days?,
            },
            log_format: log_format?,
        })
    })();
    match built {
        Some(settings) if problems.is_empty() => Ok(settings),
        _ if problems.is_empty() => Err(ConfigError {
            problems: vec!["settings are incomplete".to_owned()],
        }),
        _ => Err(ConfigError { problems }),
    }
}

/// CONTRACT §3: override URL 1:1, else the legacy endpoint, else the webhook under `IdpRootUrl`.
fn resolve_callback(c: &mut Checker<'_>, cb: &CallbackSettings) -> Option<String> {
    if let Some(url) = &cb.endpoint_url {
        return Some(url.clone());
    }
    if c.raw.get("ExchangePushNotificationEndpointUrl").is_some() {
        return None; // invalid, already reported
    }
    let Some(root) = &cb.idp_root_url else {
        if c.raw.get("IdpRootUrl").is_none() {
            c.problems.push(
                "IdpRootUrl: required unless ExchangePushNotificationEndpointUrl is set; expected \
                 the public root URL of ROOMS, e.g. https://rooms.example.com"
                    .to_owned(),
            );
        }
        return None;
    };
    if cb.use_legacy_endpoint {
        if cb.tenant.is_empty() {
            c.problems.push(
                "Tenant: required when ExchangePushNotificationUseLegacyEndpoint=true; expected \
                 the ROOMS tenant name used in the legacy callback URL"
                    .to_owned(),
            );
            return None;
        }
        let mut url = join(root, LEGACY_PATH)?;
        url.set_query(Some(&cb.tenant));
        return Some(url.into());
    }
    join(root, WEBHOOK_PATH).map(String::from)
}

/// Appends `path` to the root's path with exactly one slash between them.
fn join(root: &url::Url, path: &str) -> Option<url::Url> {
    let mut url = root.clone();
    let base = root.path().trim_end_matches('/');
    url.set_path(&format!("{base}/{path}"));
    Some(url)
}

const BOOL: &str = "true or false";
const SOCKET: &str = "a socket address such as 0.0.0.0:8080 or [::]:8080";
const CIDRS: &str = "a list of CIDR ranges or IP addresses, e.g. 10.0.0.0/8, 2603:1000::/24";
const URL: &str = "an absolute http(s) URL";

/// Collects problems while extracting typed values.
struct Checker<'a> {
    raw: &'a Effective,
    problems: Vec<String>,
}

impl Checker<'_> {
    /// A key that always has a value (a default at least).
    fn required<T>(
        &mut self,
        key: &'static str,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        match self.raw.get(key) {
            Some((value, origin)) => self.check(key, value, origin, expected, parse),
            None => {
                self.problems
                    .push(format!("{key}: missing; expected {expected}"));
                None
            }
        }
    }

    /// A key that may be unset.
    fn optional<T>(
        &mut self,
        key: &'static str,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        let (value, origin) = self.raw.get(key)?;
        self.check(key, value, origin, expected, parse)
    }

    fn text(&self, key: &str) -> Option<String> {
        self.raw.get(key).map(|(v, _)| v.to_owned())
    }

    fn check<T>(
        &mut self,
        key: &'static str,
        value: &str,
        origin: Origin,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        let parsed = parse(value);
        if parsed.is_none() {
            let secret = keys::canonical(key).is_some_and(|k| k.secret);
            let shown = if secret {
                "(value hidden)".to_owned()
            } else {
                format!("{:?}", value.chars().take(200).collect::<String>())
            };
            self.problems.push(format!(
                "{key} (from {origin}): invalid value {shown}; expected {expected}"
            ));
        }
        parsed
    }
}

fn bool_value(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

fn in_range(v: &str, min: u32, max: u32) -> Option<u32> {
    v.parse::<u32>().ok().filter(|n| (min..=max).contains(n))
}

fn seconds(n: u32) -> Duration {
    Duration::from_secs(u64::from(n))
}

fn http_url(v: &str) -> Option<url::Url> {
    url::Url::parse(v)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
}

/// Splits a list on commas or semicolons, trimming white space and dropping empty items.
fn list(v: &str) -> impl Iterator<Item = &str> {
    v.split([',', ';']).map(str::trim).filter(|s| !s.is_empty())
}

fn cidr_list(v: &str) -> Option<Vec<IpNet>> {
    list(v)
        .map(|item| {
            IpNet::from_str(item)
                .ok()
                .or_else(|| IpAddr::from_str(item).ok().map(IpNet::from))
                .map(canonical_net)
        })
        .collect()
}

/// An IPv4-mapped IPv6 range (`::ffff:10.0.0.0/104`) as the IPv4 range it maps: peers are
/// compared in canonical form (a dual-stack socket's `::ffff:10.1.2.3` is `10.1.2.3`), so the
/// mapped spelling would otherwise never match anything. A prefix shorter than the mapped
/// block's 96 bits also covers real IPv6 addresses and is kept as written.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

fn backend(v: &str) -> Option<Backend> {
    match v.to_ascii_lowercase().as_str() {
        "ews" => Some(Backend::Ews),
        "graph" => Some(Backend::Graph),
        _ => None,
    }
}

fn mailbox(item: &str, default: Backend) -> Option<MailboxSpec> {
    let (backend, address) = match item.split_once(':') {
        Some((prefix, rest)) => (self::backend(prefix.trim())?, rest.trim()),
        None => (default, item),
    };
    let (local, domain) = address.split_once('@')?;
    let valid = !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && address.matches('@').count() == 1
        && !address
            .chars()
            .any(|ch| ch.is_control() || ch.is_whitespace() || "<>()[],;:\"\\".contains(ch));
    valid.then(|| MailboxSpec {
        address: address.to_lowercase(),
        backend,
    })
}
