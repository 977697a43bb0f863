//! An Exchange that lives on loopback: room calendars in memory, served over real HTTP in
//! Microsoft's wire formats (the OAuth token endpoint, Microsoft Graph subscriptions, users,
//! events and their writes, calendarView and delta, EWS `GetFolder`/`ConvertId`/`Subscribe`/
//! `GetItem`/`FindItem`/`SyncFolderItems` and `CreateItem`/`UpdateItem`/`DeleteItem`), and
//! notifications POSTed to callbacks the way Exchange does (validation handshake, keep-alive
//! status events, retries, lifecycle events), deterministic for a given seed. Client
//! libraries (exchangelib, the msgraph SDKs) work against it unchanged; `docs/simulator.md`
//! says how to point them at it.
//!
//! It is meant to be as strict as Microsoft wherever a lax simulator would let a wrong
//! client pass: tokens work only for the resource they were issued for, app-only EWS calls
//! must impersonate the room and anchor on it, Graph refuses duplicate subscriptions and
//! over-long lifetimes, notifications name rooms by object id, a notification counts as
//! delivered only when answered within 3 seconds, and Graph takes four requests at once per
//! mailbox. `docs/simulator.md` lists each strict behaviour with the self-test that holds
//! it, and what is still not modelled.
//!
//! Used in-process by integration tests through [`Simulator::start`] and [`Control`], and by
//! `rooms-sync simulate` through [`run`]. Time-based behaviour (push retries, status
//! frequency, token lifetime, the calendar attendant's updates of a booking) is divided by
//! [`SimulatorConfig::time_scale`] so tests can run an hour of Exchange in seconds; what a
//! client's own speed is measured against (Graph's 3-second answer deadline, the batching
//! window, the configured latency) is real time. [`SimulatorConfig::latency`] makes every Graph, EWS and
//! token answer wait (real time), for measuring a client against a realistic round trip.
//!
//! Items are kept under their EWS ids, which EWS and the control API show; Graph shows REST
//! ids, or immutable ids to a request (or a subscription) made with
//! `Prefer: IdType="ImmutableId"`, as Microsoft does ([`Control::graph_id`] converts).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub mod busy;
pub mod calendar;
pub mod control;
pub mod ews;
pub mod graph;
pub(crate) mod ids;
pub mod oauth;
pub mod push;

#[cfg(test)]
mod tests;

pub use calendar::{Meeting, Recurrence};
pub use control::{
    AuthScheme, Backend, Control, EwsEnd, EwsSubscriptionSnapshot, Fault,
    GraphSubscriptionSnapshot, LifecycleKind, PushRecord, RequestRecord, RoomIdentity,
};
pub use oauth::TokenResource;

/// How to run a simulator.
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// Where to listen; must be a loopback address (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Seeds ids, tokens and the busy-office generator.
    pub seed: u64,
    /// Divides push retry delays, status frequency, token lifetime and the calendar
    /// attendant's delays: 60.0 makes a minute a second.
    pub time_scale: f64,
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
    /// Room SMTP addresses known at start (more are created by booking into them).
    pub rooms: Vec<String>,
    /// How long every Graph, EWS and token request waits before it is answered, as a
    /// network and a busy Exchange make a client wait (not the `/_sim` control API, not
    /// pushes). Real time: `time_scale` does not divide it.
    pub latency: Duration,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7070),
            seed: 1,
            time_scale: 1.0,
            tenant_id: "sim-tenant".to_owned(),
            client_id: "sim-client".to_owned(),
            client_secret: "sim-secret".to_owned(),
            rooms: (1..=3).map(|i| format!("room{i}@sim.example")).collect(),
            latency: Duration::ZERO,
        }
    }
}

/// Why the simulator refused something.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("the simulator listens on loopback only, not {0}")]
    NotLoopback(SocketAddr),
    #[error("time_scale must be a positive finite number")]
    BadTimeScale,
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("unknown room {0}")]
    UnknownRoom(String),
    #[error("unknown item {0}")]
    UnknownItem(String),
    #[error("unknown subscription {0}")]
    UnknownSubscription(String),
    #[error("invalid meeting: {0}")]
    InvalidMeeting(String),
    #[error("invalid fault: {0}")]
    InvalidFault(String),
}

/// The entry point.
#[derive(Debug)]
pub struct Simulator;

impl Simulator {
    /// Binds the listener and serves until `shutdown` is cancelled.
    ///
    /// # Errors
    ///
    /// A non-loopback address, a bad time scale, or a failed bind.
    pub async fn start(
        config: SimulatorConfig,
        shutdown: CancellationToken,
    ) -> Result<SimulatorHandle, SimError> {
        if !config.listen.ip().is_loopback() {
            return Err(SimError::NotLoopback(config.listen));
        }
        if !(config.time_scale.is_finite() && config.time_scale > 0.0) {
            return Err(SimError::BadTimeScale);
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| SimError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SimError::Bind {
            addr: config.listen,
            source,
        })?;
        let base_url = format!("http://{addr}");
        let shared = Shared::new(config, base_url.clone(), shutdown.clone());
        let control = Control::new(Arc::clone(&shared));
        let app = router(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "simulator server stopped");
            }
        });
        Ok(SimulatorHandle {
            base_url,
            control,
            server,
        })
    }
}

/// A running simulator.
#[derive(Debug)]
pub struct SimulatorHandle {
    base_url: String,
    control: Control,
    server: JoinHandle<()>,
}

impl SimulatorHandle {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn control(&self) -> &Control {
        &self.control
    }

    /// The server task; it ends after the shutdown token is cancelled.
    pub fn wait(self) -> JoinHandle<()> {
        self.server
    }
}

/// Everything the handlers and background tasks share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: SimulatorConfig,
    pub(crate) base_url: String,
    pub(crate) shutdown: CancellationToken,
    pub(crate) http: reqwest::Client,
    pub(crate) state: Mutex<SimState>,
    /// Bumped after every calendar change so EWS subscription tasks wake up.
    pub(crate) ews_tick: watch::Sender<u64>,
    pub(crate) runtime: tokio::runtime::Handle,
}

/// Most request and push records kept; older ones are dropped first.
pub(crate) const MAX_RECORDS: usize = 20_000;

/// Mutable state behind one lock. It is never held across an await.
#[derive(Debug)]
pub(crate) struct SimState {
    pub(crate) cal: calendar::Calendars,
    pub(crate) rng: busy::SplitMix64,
    pub(crate) tokens: HashMap<String, oauth::Token>,
    pub(crate) graph_subs: BTreeMap<String, graph::GraphSub>,
    pub(crate) ews_subs: BTreeMap<String, ews::EwsSub>,
    /// Graph delta links and parked pages.
    pub(crate) delta: graph::DeltaStore,
    /// Graph requests in flight, by mailbox (room address).
    pub(crate) mailbox_in_flight: HashMap<String, usize>,
    /// Bookings the calendar attendant has not finished with.
    pub(crate) attending: usize,
    /// Graph notifications waiting for delivery, by callback URL.
    pub(crate) graph_outboxes: push::outbox::Outboxes,
    pub(crate) faults: control::Faults,
    /// Part of every EWS watermark; bumping it makes every watermark issued so far unknown.
    pub(crate) ews_watermark_epoch: u32,
    pub(crate) requests: VecDeque<RequestRecord>,
    pub(crate) pushes: VecDeque<PushRecord>,
}

impl SimState {
    pub(crate) fn record_push(&mut self, record: PushRecord) {
        if self.pushes.len() >= MAX_RECORDS {
            self.pushes.pop_front();
        }
        self.pushes.push_back(record);
    }
}

impl Shared {
    fn new(config: SimulatorConfig, base_url: String, shutdown: CancellationToken) -> Arc<Self> {
        let state = SimState {
            cal: calendar::Calendars::new(config.seed, &config.rooms),
            rng: busy::SplitMix64::new(config.seed),
            tokens: HashMap::new(),
            graph_subs: BTreeMap::new(),
            ews_subs: BTreeMap::new(),
            delta: graph::DeltaStore::default(),
            mailbox_in_flight: HashMap::new(),
            attending: 0,
            graph_outboxes: push::outbox::Outboxes::default(),
            faults: control::Faults::default(),
            ews_watermark_epoch: 0,
            requests: VecDeque::new(),
            pushes: VecDeque::new(),
        };
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Arc::new(Self {
            config,
            base_url,
            shutdown,
            http,
            state: Mutex::new(state),
            ews_tick: watch::channel(0).0,
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// The state lock. A panic while holding it cannot leave the simulator's data in a
    /// state worse than the panic itself, so poisoning is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A simulated duration turned into wall-clock time.
    pub(crate) fn scaled(&self, simulated: Duration) -> Duration {
        simulated.div_f64(self.config.time_scale)
    }
}

pub(crate) type AppState = Arc<Shared>;

/// The whole HTTP surface: token endpoint, Graph, EWS and the control API.
pub fn router_for(control: &Control) -> Router {
    router(control.shared())
}

pub(crate) fn router(shared: AppState) -> Router {
    Router::new()
        .merge(oauth::routes())
        .merge(graph::routes(Arc::clone(&shared)))
        .merge(ews::routes(Arc::clone(&shared)))
        .merge(control::routes())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            record_request,
        ))
        .with_state(shared)
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "no such simulated endpoint").into_response()
}

/// The SOAP operation an EWS response answered (its local name, e.g. `SyncFolderItems`),
/// left on the response for [`record_request`].
#[derive(Debug, Clone)]
pub(crate) struct SoapOperation(pub(crate) String);

/// Records every request outside the control API with the status it got, and with what a
/// client test asserts on: its query, its `Prefer` and `X-AnchorMailbox` headers, how it
/// authenticated (the scheme, and for a bearer token the resource it was issued for; never
/// the credential itself) and, for EWS, the SOAP operation. Also where the configured
/// latency is spent, before the handler runs.
async fn record_request(State(shared): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let at = Utc::now();
    let control = path.starts_with("/_sim/");
    let headers = request.headers();
    let prefer = joined_header(headers, "prefer");
    let anchor_mailbox = joined_header(headers, "x-anchormailbox");
    let auth_scheme = auth_scheme(headers);
    let token_resource = bearer_token(headers).and_then(|t| {
        // Read before the handler runs: a revoked token is still recorded as what it was.
        shared.lock().tokens.get(t).map(|t| t.resource)
    });
    // Taken before the latency is spent: a request is in flight at Exchange for all of its
    // round trip, and the fifth at once for one mailbox is refused.
    let slot = if control {
        Ok(None)
    } else {
        graph::mailbox_slot(&shared, &path, headers)
    };
    let latency = shared.config.latency;
    if !control && !latency.is_zero() {
        tokio::select! {
            () = shared.shutdown.cancelled() => {
                return (StatusCode::SERVICE_UNAVAILABLE, "the simulator is stopping").into_response();
            }
            () = tokio::time::sleep(latency) => {}
        }
    }
    let response = match slot {
        Ok(_slot) => next.run(request).await,
        Err(throttled) => *throttled,
    };
    if !control {
        let operation = response
            .extensions()
            .get::<SoapOperation>()
            .map(|o| o.0.clone());
        let mut state = shared.lock();
        if state.requests.len() >= MAX_RECORDS {
            state.requests.pop_front();
        }
        state.requests.push_back(RequestRecord {
            method,
            path,
            query,
            operation,
            at,
            status: response.status().as_u16(),
            prefer,
            anchor_mailbox,
            auth_scheme,
            token_resource,
        });
    }
    response
}

/// Every value of a header, joined with `, ` as HTTP allows; `None` when absent.
pub(crate) fn joined_header(headers: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// The scheme of the `Authorization` header.
pub(crate) fn auth_scheme(headers: &HeaderMap) -> AuthScheme {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return AuthScheme::None;
    };
    let scheme = value.trim().split(' ').next().unwrap_or_default();
    if scheme.eq_ignore_ascii_case("bearer") {
        AuthScheme::Bearer
    } else if scheme.eq_ignore_ascii_case("basic") {
        AuthScheme::Basic
    } else if scheme.is_empty() {
        AuthScheme::None
    } else {
        AuthScheme::Other
    }
}

/// The token of a `Bearer` authorization header.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// What a request's bearer token is worth on a route of one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BearerCheck {
    /// A live token issued for this resource.
    Valid,
    /// A live token issued for another resource (a wrong audience).
    WrongResource(TokenResource),
    /// A token the simulator issued whose lifetime is over.
    Expired,
    /// No bearer token, or one that is unknown or revoked.
    Invalid,
}

/// Checks the request's bearer token against the resource the route belongs to.
pub(crate) fn check_bearer(
    shared: &Shared,
    headers: &HeaderMap,
    want: TokenResource,
) -> BearerCheck {
    let Some(token) = bearer_token(headers) else {
        return BearerCheck::Invalid;
    };
    let state = shared.lock();
    match state.tokens.get(token) {
        Some(t) if t.expires_at <= tokio::time::Instant::now() => BearerCheck::Expired,
        Some(t) if t.resource == want => BearerCheck::Valid,
        Some(t) => BearerCheck::WrongResource(t.resource),
        None => BearerCheck::Invalid,
    }
}

/// Graph's `dateTime` shape: seven fraction digits, no offset (the zone travels apart).
pub(crate) fn graph_datetime(at: DateTime<Utc>) -> String {
    // chrono has no seven-digit fraction specifier; Graph writes 100 ns ticks.
    format!(
        "{}.{:07}",
        at.format("%Y-%m-%dT%H:%M:%S"),
        at.timestamp_subsec_nanos() / 100
    )
}

/// Graph's `DateTimeOffset` shape in UTC, e.g. `2026-03-02T10:00:00.1234567Z`.
pub(crate) fn odata_time(at: DateTime<Utc>) -> String {
    format!("{}Z", graph_datetime(at))
}

/// `xs:dateTime` in UTC with `Z`, as EWS writes it.
pub(crate) fn ews_datetime(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A JSON body with a status.
pub(crate) fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    (status, axum::Json(body)).into_response()
}

/// Command-line arguments of `rooms-sync simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Address to listen on; loopback only.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Seed for ids, tokens and the busy-office generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Divides push retry delays, status frequency and token lifetime (60 = a minute per second).
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Room mailboxes (comma-separated SMTP addresses).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "room1@sim.example,room2@sim.example,room3@sim.example"
    )]
    pub rooms: Vec<String>,
    /// Milliseconds every Graph, EWS and token request waits before it is answered.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Busy-office mode: how many of the rooms get random bookings (0 = off).
    #[arg(long, default_value_t = 0)]
    pub busy_rooms: usize,
    /// Busy-office mode: changes per minute across the busy rooms.
    #[arg(long, default_value_t = 6.0)]
    pub busy_rate: f64,
}

/// The settings that point `rooms-sync serve` at a simulator at `base_url`: its endpoints, its
/// credentials and its rooms (read through Graph, the default backend).
#[must_use]
pub fn serve_settings(base_url: &str, config: &SimulatorConfig) -> Vec<(&'static str, String)> {
    vec![
        ("GraphBaseUrl", format!("{base_url}/v1.0")),
        ("AzureAuthorityHost", base_url.to_owned()),
        ("EwsUrl", format!("{base_url}/EWS/Exchange.asmx")),
        ("AzureTenantId", config.tenant_id.clone()),
        ("AzureClientId", config.client_id.clone()),
        ("AzureClientSecret", config.client_secret.clone()),
        ("ExchangeRoomMailboxes", config.rooms.join(",")),
    ]
}

/// [`serve_settings`], one `KEY=value` per line.
pub fn serve_environment(base_url: &str, config: &SimulatorConfig) -> String {
    serve_settings(base_url, config)
        .into_iter()
        .map(|(key, value)| format!("{key}={value}\n"))
        .collect()
}

/// What `rooms-sync simulate` prints when it is up: where it listens, the settings for
/// `rooms-sync serve`, the EWS service account, and where its control API and health
/// check are (a script waits for the health check before it drives the simulator).
pub fn banner(base_url: &str, config: &SimulatorConfig) -> String {
    format!(
        "Exchange simulator listening on {base_url}\nPoint `rooms-sync serve` at it with:\n{}(for EwsAuth=basic: EwsUsername={} EwsPassword={})\nControl API: {base_url}{} (health: {base_url}{})\n",
        serve_environment(base_url, config),
        ews::EWS_BASIC_USER,
        ews::EWS_BASIC_PASSWORD,
        control::CONTROL_PREFIX,
        control::HEALTH_PATH,
    )
}

/// Runs `rooms-sync simulate` until `shutdown` is cancelled.
///
/// # Errors
///
/// A non-loopback `--listen`, bad numbers, or a failed bind.
pub async fn run(args: SimulateArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    if !args.listen.ip().is_loopback() {
        anyhow::bail!(
            "--listen {} is not a loopback address; the simulator serves loopback only",
            args.listen
        );
    }
    if !(args.busy_rate.is_finite() && args.busy_rate > 0.0) {
        anyhow::bail!("--busy-rate must be a positive number of changes per minute");
    }
    let rooms: Vec<String> = args
        .rooms
        .iter()
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .collect();
    if rooms.is_empty() {
        anyhow::bail!("--rooms names no room");
    }
    let config = SimulatorConfig {
        listen: args.listen,
        seed: args.seed,
        time_scale: args.time_scale,
        rooms,
        latency: Duration::from_millis(args.latency_ms),
        ..SimulatorConfig::default()
    };
    let handle = Simulator::start(config.clone(), shutdown.clone()).await?;
    print!("{}", banner(handle.base_url(), &config));
    if args.busy_rooms > 0 {
        let busy: Vec<String> = config.rooms.iter().take(args.busy_rooms).cloned().collect();
        busy::spawn_busy_office(
            handle.control().clone(),
            busy,
            args.busy_rate,
            shutdown.clone(),
        );
    }
    handle.wait().await?;
    Ok(())
}
