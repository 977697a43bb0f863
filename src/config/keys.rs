//! The table of known setting keys: names as operators write them, defaults, secrecy.

/// One known key.
#[derive(Debug, Clone, Copy)]
pub struct KeySpec {
    /// The key exactly as CONTRACT §2 spells it.
    pub name: &'static str,
    /// Built-in default; `None` means unset unless configured.
    pub default: Option<&'static str>,
    /// Never printed or logged.
    pub secret: bool,
}

const fn key(name: &'static str, default: Option<&'static str>) -> KeySpec {
    KeySpec {
        name,
        default,
        secret: false,
    }
}

const fn secret(name: &'static str, default: Option<&'static str>) -> KeySpec {
    KeySpec {
        name,
        default,
        secret: true,
    }
}

/// Every key the service understands, in the order `rooms-sync config` prints them.
pub const KEYS: &[KeySpec] = &[
    key("IdpRootUrl", None),
    key("ExchangePushNotificationEndpointUrl", None),
    key("ExchangePushNotificationUseLegacyEndpoint", Some("false")),
    key("Tenant", None),
    secret(
        "DatabaseUrl",
        Some("postgres://postgres@127.0.0.1:5432/rooms_sync"),
    ),
    key("AutoMigrate", Some("true")),
    key("DatabaseMaxConnections", Some("16")),
    key("DatabaseAcquireTimeoutMs", Some("2000")),
    key("DatabaseStatementTimeoutSeconds", Some("30")),
    key("ListenAddress", Some("0.0.0.0:8080")),
    key("AdminListenAddress", Some("127.0.0.1:9090")),
    key("ServiceRoles", Some("web,worker")),
    key("WebhookAllowedIpRanges", None),
    key("TrustedProxyRanges", None),
    key("WebhookMaxBodyBytes", Some("4194304")),
    key("RequestTimeoutSeconds", Some("10")),
    key("HeaderReadTimeoutSeconds", Some("10")),
    key("HttpMaxConnections", Some("1024")),
    key("ShutdownDrainSeconds", Some("15")),
    key("ExchangeBackend", Some("graph")),
    key("ExchangeRoomMailboxes", None),
    key(
        "EwsUrl",
        Some("https://outlook.office365.com/EWS/Exchange.asmx"),
    ),
    key("EwsAuth", Some("oauth")),
    key("EwsUsername", None),
    secret("EwsPassword", None),
    key("EwsStatusFrequencyMinutes", Some("15")),
    key("EwsUnknownSubscriptionGraceSeconds", Some("120")),
    key("GraphBaseUrl", Some("https://graph.microsoft.com/v1.0")),
    key(
        "AzureAuthorityHost",
        Some("https://login.microsoftonline.com"),
    ),
    key("AzureTenantId", None),
    key("AzureClientId", None),
    secret("AzureClientSecret", None),
    key("GraphSubscriptionLifetimeMinutes", Some("4200")),
    key("SyncWindowPastDays", Some("7")),
    key("SyncWindowFutureDays", Some("365")),
    key("LogFormat", Some("text")),
];

/// The known key that `name` spells, ignoring case.
#[must_use]
pub(super) fn canonical(name: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|k| k.name.eq_ignore_ascii_case(name))
}
