//! The state machine: [`TokenManager`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use zeroize::Zeroizing;

use crate::challenge::parse_www_authenticate;
use crate::config::{ClientAuth, ClientConfig, ManagerConfig};
use crate::dpop::{self, NonceStore};
use crate::error::{
    ConfigError, InvalidResponse, ResponseProblem, TokenError, TransportError, UnknownRequest,
};
use crate::event::{Event, InvalidationReason, RequestReason};
use crate::health::{HealthError, HealthState, KeyHealth};
use crate::jose::{SignError, UnsignedJwt};
use crate::key::{KeyDescriptor, KeyId, KeyOverrides, Scope};
use crate::lifecycle::{backoff_delay, reached, Phase, TokenTimes};
use crate::random::{RandomSource, Randomness};
use crate::request::{
    basic_token68, build_token_request, form_encoded, Attempt, RequestId, TokenRequest,
};
use crate::response::{parse_token_response, AccessToken, TokenResponse, TokenType};
use crate::retry_after::retry_after_from_headers;
use crate::snapshot::Snapshot;
use crate::store::{
    OwnerId, StoreError, StoreErrorKind, StoreKey, StoreOp, StoreOpId, StoreReply, StoreRequest,
    StoreSettings, StoredToken,
};
use crate::time::{Instant, Now};

/// A named client registered with [`TokenManager::add_client`]. Cheap to copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientHandle(u32);

/// Where a cached token stands in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenState {
    /// Before its refresh point: attached, no refresh needed.
    Fresh,
    /// Past its refresh point but still usable: attached while one refresh runs.
    Stale,
}

/// What to do about an outgoing API call, from [`TokenManager::authorize`].
#[derive(Debug)]
pub enum Authorization<'a> {
    /// Attach this header. When the token is [`TokenState::Stale`], a refresh
    /// has been queued (or is already in flight): the caller need not wait for it.
    Attach(Attach<'a>),
    /// No valid token: a token request (or, with a shared store, a read of
    /// the store) was queued just now for this caller. Send it (see
    /// [`TokenManager::poll_request`], [`TokenManager::poll_store_request`]),
    /// then wait until [`TokenManager::in_flight`] no longer names this id.
    Fetch(RequestId),
    /// No valid token, and a request for this key is already in flight: wait
    /// until its outcome is handed to the core, then ask again.
    Wait(RequestId),
    /// No valid token, and the key is backing off after a failure: fail the
    /// call now with the last error rather than hammering the token endpoint.
    Unavailable {
        /// The failure that started the backoff.
        error: &'a TokenError,
        /// When a new token request may be made.
        retry_at: Instant,
    },
}

/// A header to attach, with what identifies the token behind it.
#[derive(Debug)]
pub struct Attach<'a> {
    header: &'a HeaderValue,
    generation: u64,
    state: TokenState,
    proof: Option<Result<UnsignedJwt, SignError>>,
}

impl<'a> Attach<'a> {
    /// The `Authorization` header value (`Bearer …`), marked sensitive.
    pub fn header(&self) -> &'a HeaderValue {
        self.header
    }

    /// Identifies the token; changes whenever a new one is cached.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Fresh or Stale.
    pub fn state(&self) -> TokenState {
        self.state
    }

    /// The DPoP proof to sign and send (its signature is the `DPoP` header:
    /// [`UnsignedJwt::sign_header_value`]) with the request, for a DPoP-bound
    /// token asked for with [`TokenManager::authorize_request`]; `Ok(None)`
    /// for a Bearer token. The core builds it (`jti`, `htm`, `htu`, `iat`,
    /// `ath`, the origin's nonce) but does not sign it: sign it after
    /// releasing any lock that guards the core, since a signer may be slow.
    ///
    /// An error, or a failure to sign, means no proof can be made: do not
    /// send the request (a DPoP-bound token is never downgraded to Bearer).
    /// Read [`Attach::header`] first: this consumes the `Attach`.
    pub fn dpop_proof_to_sign(self) -> Result<Option<UnsignedJwt>, SignError> {
        self.proof.transpose()
    }

    /// Whether the token is DPoP-bound (and so needs a proof on every request).
    pub fn is_dpop(&self) -> bool {
        self.header.as_bytes().starts_with(b"DPoP ")
    }
}

/// The outcome of [`TokenManager::force_refresh`].
#[derive(Debug, PartialEq, Eq)]
pub enum ForcedRefresh {
    /// A token request was queued.
    Started(RequestId),
    /// A request for this key was already in flight; its result is the refresh.
    InFlight(RequestId),
    /// The key is backing off; no request before `retry_at`.
    BackingOff {
        /// End of the backoff.
        retry_at: Instant,
    },
}

/// Why [`TokenManager::poll_timeout`] wants to be woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeoutReason {
    /// A token request has been in flight for [`ManagerConfig::request_timeout`].
    RequestDeadline,
    /// A backoff ends.
    BackoffEnds,
    /// A cached token reaches its refresh point (proactive refresh).
    RefreshDue,
    /// A cached token reaches the end of its usable life.
    TokenExpires,
    /// A shared-store operation has been out for its deadline.
    StoreDeadline,
    /// Time to read the shared store again for another process's token.
    StorePoll,
}

/// A response from a protected resource, as the adapter saw it.
#[derive(Debug)]
pub struct ResourceResponse<'a> {
    /// The response status.
    pub status: StatusCode,
    /// The response headers (`WWW-Authenticate`, and later `DPoP-Nonce`).
    pub headers: &'a HeaderMap,
    /// The `Authorization` header the request carried, if the adapter attached one.
    pub sent_authorization: Option<&'a HeaderValue>,
    /// The request's URI: its origin's `DPoP-Nonce` is remembered from the response.
    pub uri: Option<&'a Uri>,
    /// 0 for the first attempt, 1 for the retry.
    pub attempt: u32,
}

/// What to do with a protected resource's response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceOutcome {
    /// Hand the response to the caller.
    Deliver,
    /// Send the request once more, with a token from [`TokenManager::authorize`]
    /// (only if the request can be replayed; otherwise deliver).
    Retry,
}

/// A view of a cached token, from [`TokenManager::token`].
#[derive(Debug)]
pub struct TokenView<'a> {
    token: &'a CachedToken,
    remaining: Duration,
}

impl TokenView<'_> {
    /// The access token.
    pub fn access_token(&self) -> &AccessToken {
        &self.token.access_token
    }

    /// The token type.
    pub fn token_type(&self) -> TokenType {
        self.token.token_type
    }

    /// The `Authorization` header value.
    pub fn header(&self) -> &HeaderValue {
        &self.token.header
    }

    /// How long it may still be attached.
    pub fn remaining(&self) -> Duration {
        self.remaining
    }

    /// The lifetime it was issued with (after defaulting and clamping).
    pub fn lifetime(&self) -> Duration {
        self.token.times.lifetime
    }

    /// The scope the server granted, when it said.
    pub fn scope(&self) -> Option<&str> {
        self.token.scope.as_deref()
    }
}

struct Client {
    name: String,
    config: ClientConfig,
    default_key: KeyId,
    /// Strings that must never appear in an error excerpt (the secret and its
    /// encodings), wiped on drop.
    sensitive: Vec<Zeroizing<String>>,
}

impl std::fmt::Debug for Client {
    // `sensitive` holds the secret in several encodings: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("default_key", &self.default_key)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct CachedToken {
    access_token: AccessToken,
    header: HeaderValue,
    token_type: TokenType,
    scope: Option<String>,
    times: TokenTimes,
    generation: u64,
    /// Whether it was requested after the key's latest invalidation by a 401
    /// (see [`ManagerConfig::resource_rejection_damping`]).
    after_rejection: bool,
}

#[derive(Debug)]
struct Flight {
    id: RequestId,
    requested_at: Instant,
    deadline: Instant,
    /// Whether this flight already retried after `use_dpop_nonce` (at most once).
    nonce_retried: bool,
    /// [`Slot::rejections`] when the request was made.
    rejections: u64,
}

#[derive(Debug)]
struct Backoff {
    until: Instant,
    error: TokenError,
}

/// A failed token request, kept for [`TokenManager::health`].
#[derive(Debug)]
struct Failure {
    error: TokenError,
    at: Instant,
}

#[derive(Debug)]
struct Slot {
    descriptor: KeyDescriptor,
    token: Option<CachedToken>,
    flight: Option<Flight>,
    backoff: Option<Backoff>,
    failures: u32,
    /// The last failure, kept after later successes (health only).
    last_failure: Option<Failure>,
    /// Whether the last token was dropped at the end of its usable life and
    /// none has been cached since (health only).
    expired: bool,
    /// Token requests started (health only).
    token_requests: u64,
    /// The last request that ended, and whether it cached a token.
    settled: Option<(RequestId, bool)>,
    /// Where the key stands with the shared store, if there is one.
    store: StorePhase,
    /// Whether this process holds the key's lease in the shared store (its
    /// token request is the fleet's).
    lease_held: bool,
    /// What names this key in the shared store, once first asked for.
    store_key: Option<StoreKey>,
    /// The tokens last refused (a 401) or dropped by hand, at most
    /// [`MAX_REFUSED`]: never taken back from the shared store, which may
    /// still hold them (or be made to hold them again).
    refused: VecDeque<AccessToken>,
    /// How many times a 401 invalidated this key's token, and when it last did.
    rejections: u64,
    rejected_at: Option<Instant>,
    snapshot: Option<Arc<Snapshot>>,
    publish_pending: bool,
}

/// Where a key stands with the shared store, while it has no token request
/// of its own in flight (see [`TokenManager::enable_store`]).
#[derive(Debug)]
enum StorePhase {
    /// Nothing asked of the store.
    Idle,
    /// A read or a lease is out; callers wait for `wait`.
    Asking {
        op: StoreOpId,
        asked: Asked,
        reason: RequestReason,
        wait: RequestId,
        deadline: Instant,
        /// While following: when the lease was first found taken.
        following_since: Option<Instant>,
    },
    /// Another process holds the lease: read the store again at `next_poll`
    /// (and take the lease if it has lapsed without a token).
    Following {
        reason: RequestReason,
        wait: RequestId,
        next_poll: Instant,
        /// When the lease was first found taken: two leases' lives later with
        /// no token, the lease is stuck (no time to live, a broken store), and
        /// the key stops following and fetches.
        since: Instant,
    },
}

/// How many refused tokens a key remembers, so that a store replaying old
/// entries cannot hand them back in turn.
const MAX_REFUSED: usize = 8;

/// Store operations given up at their deadline, remembered (at most this
/// many) so that a lease granted late can still be released.
const MAX_LATE_STORE_OPS: usize = 256;

/// What [`TokenManager::take_stored`] made of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Taken {
    /// Not taken: the key goes on to the lease.
    No,
    /// Cached, and Fresh here: done.
    Settled,
    /// Cached, but past its refresh point here too: served while the lease
    /// decides who fetches the next one.
    Due,
}

/// What a [`StorePhase::Asking`] waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Asked {
    Read,
    Lease,
    /// A read once the lease is taken: the token may have been written
    /// between the first read and the lease (the writer's write releases its
    /// lease), and then there is nothing to fetch.
    Recheck,
}

impl StorePhase {
    /// The id callers wait on while the store is being asked.
    fn wait(&self) -> Option<RequestId> {
        match self {
            StorePhase::Idle => None,
            StorePhase::Asking { wait, .. } | StorePhase::Following { wait, .. } => Some(*wait),
        }
    }
}

/// The kinds of deadline a key can have, after quinn-proto's `Timer`. A
/// key's deadlines are not stored apart from its state: [`Slot::deadline`]
/// derives each from the flight, backoff and token it belongs to, so that no
/// state change can leave a stale timer behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timer {
    /// The request in flight has waited [`ManagerConfig::request_timeout`].
    RequestDeadline,
    /// The backoff ends.
    BackoffEnds,
    /// The cached token stops being attachable.
    TokenExpires,
    /// The cached token reaches its refresh point, with proactive refresh on
    /// and nothing else under way.
    RefreshDue,
    /// A store operation has waited [`StoreSettings::op_deadline`].
    StoreDeadline,
    /// Time to read the store again for the token another process fetches.
    StorePoll,
}

impl Timer {
    /// Every kind, in the order [`TokenManager::handle_timeout`] acts on them
    /// within a key (a timed-out request backs off before the backoff is
    /// looked at; a token is expired before a refresh of it is considered)
    /// and in which [`TokenManager::poll_timeout`] breaks ties.
    const VALUES: [Timer; 6] = [
        Timer::RequestDeadline,
        Timer::StoreDeadline,
        Timer::BackoffEnds,
        Timer::TokenExpires,
        Timer::RefreshDue,
        Timer::StorePoll,
    ];

    /// What [`TokenManager::poll_timeout`] reports for it.
    fn reason(self) -> TimeoutReason {
        match self {
            Timer::RequestDeadline => TimeoutReason::RequestDeadline,
            Timer::BackoffEnds => TimeoutReason::BackoffEnds,
            Timer::TokenExpires => TimeoutReason::TokenExpires,
            Timer::RefreshDue => TimeoutReason::RefreshDue,
            Timer::StoreDeadline => TimeoutReason::StoreDeadline,
            Timer::StorePoll => TimeoutReason::StorePoll,
        }
    }
}

impl Slot {
    /// The one place that says when each of the key's deadlines is, or
    /// `None` while it is not armed. `proactive` is the client's
    /// [`RefreshPolicy::proactive`](crate::RefreshPolicy::proactive): without
    /// it, only callers start refreshes.
    fn deadline(&self, timer: Timer, proactive: bool) -> Option<Instant> {
        match timer {
            Timer::RequestDeadline => self.flight.as_ref().map(|f| f.deadline),
            Timer::BackoffEnds => self.backoff.as_ref().map(|b| b.until),
            Timer::TokenExpires => self.token.as_ref().map(|tok| tok.times.attach_until),
            // A refresh in flight is the refresh; a backoff holds it back
            // (its own timer clears the way first).
            Timer::RefreshDue => self
                .token
                .as_ref()
                .filter(|_| proactive && !self.busy() && self.backoff.is_none())
                .map(|tok| tok.times.refresh_at),
            Timer::StoreDeadline => match &self.store {
                StorePhase::Asking { deadline, .. } => Some(*deadline),
                _ => None,
            },
            Timer::StorePoll => match &self.store {
                StorePhase::Following { next_poll, .. } => Some(*next_poll),
                _ => None,
            },
        }
    }

    /// The key's earliest armed deadline and its kind; on a tie, the kind
    /// first in [`Timer::VALUES`].
    fn next_deadline(&self, proactive: bool) -> Option<(Instant, Timer)> {
        earliest(
            Timer::VALUES
                .into_iter()
                .filter_map(|timer| Some((self.deadline(timer, proactive)?, timer))),
        )
    }

    /// The backoff still in force at `t`, if any (one that has ended but
    /// whose timer has not been handled yet does not count).
    fn backoff_at(&self, t: Instant) -> Option<&Backoff> {
        self.backoff.as_ref().filter(|b| !reached(b.until, t))
    }

    /// Whether a token request may start at `t`: none in flight (single
    /// flight) and no backoff in force.
    fn may_request(&self, t: Instant) -> bool {
        !self.busy() && self.backoff_at(t).is_none()
    }

    /// Remembers `token` as refused, forgetting the oldest beyond [`MAX_REFUSED`].
    fn refuse(&mut self, token: AccessToken) {
        if self.refused.len() == MAX_REFUSED {
            self.refused.pop_front();
        }
        self.refused.push_back(token);
    }

    /// Whether a token is being sought: a token request in flight, or the
    /// shared store being asked (single flight covers both).
    fn busy(&self) -> bool {
        self.flight.is_some() || !matches!(self.store, StorePhase::Idle)
    }

    /// The id callers wait on while the key is [`busy`](Slot::busy).
    fn waiting_on(&self) -> Option<RequestId> {
        self.flight.as_ref().map(|f| f.id).or(self.store.wait())
    }

    /// Until when adapters may attach `token` without asking the core (see
    /// [`Snapshot::fresh_until`]): the first instant at which
    /// [`TokenManager::authorize`] could do more than hand back this header.
    /// That is the refresh point (a refresh starts), or, during a backoff,
    /// its end (the refresh is retried), and never past the end of the
    /// usable life (the token is refused); while a refresh is in flight the
    /// Stale token is handed back with no more work, so only the end of life
    /// counts. Every input that changes any of these republishes the
    /// snapshot ([`TokenManager::mark_changed`]).
    fn lock_free_until(&self, token: &CachedToken) -> Instant {
        if token.token_type == TokenType::DPoP {
            // Every request with a DPoP-bound token needs a fresh proof from the core.
            return Instant::ZERO;
        }
        let next_work = match (self.busy(), &self.backoff) {
            (true, _) => None,
            (false, Some(backoff)) => Some(backoff.until),
            (false, None) => Some(token.times.refresh_at),
        };
        next_work.map_or(token.times.attach_until, |at| {
            at.min(token.times.attach_until)
        })
    }
}

/// The earliest of `deadlines`; on a tie, the first.
fn earliest<T>(deadlines: impl IntoIterator<Item = (Instant, T)>) -> Option<(Instant, T)> {
    deadlines
        .into_iter()
        .fold(None, |best, (at, what)| match best {
            Some((best_at, _)) if best_at <= at => best,
            _ => Some((at, what)),
        })
}

/// The sans-IO token lifecycle engine. See the [crate docs](crate) for the run loop.
#[derive(Debug)]
pub struct TokenManager {
    config: ManagerConfig,
    clients: Vec<Client>,
    keys: HashMap<KeyDescriptor, KeyId>,
    slots: Vec<Slot>,
    in_flight: HashMap<RequestId, KeyId>,
    requests: VecDeque<TokenRequest>,
    events: VecDeque<Event>,
    published: VecDeque<KeyId>,
    next_request: u64,
    next_generation: u64,
    random: Randomness,
    latest: Instant,
    nonces: NonceStore,
    /// The shared store, once [`TokenManager::enable_store`] was called.
    store: Option<SharedStore>,
    store_requests: VecDeque<StoreRequest>,
    /// Store operations whose reply is awaited, and their key.
    store_ops: HashMap<StoreOpId, KeyId>,
    /// Operations given up at their deadline (see [`MAX_LATE_STORE_OPS`]).
    late_store_ops: HashMap<StoreOpId, KeyId>,
    next_store_op: u64,
}

/// The shared store as the core sees it: its settings, this process's
/// identity as a lease owner, and whether it is in an outage.
#[derive(Debug)]
struct SharedStore {
    settings: StoreSettings,
    owner: OwnerId,
    lease_ttl: Duration,
    /// Failures in a row; 0 when the store last answered.
    failures: u32,
    /// Until when the store is not asked, after a failure.
    resting_until: Option<Instant>,
}

impl SharedStore {
    /// Whether the store may be asked at `t`.
    fn usable(&self, t: Instant) -> bool {
        self.resting_until.is_none_or(|until| reached(until, t))
    }
}

impl TokenManager {
    /// A manager with no clients. `seed` feeds the generator that spreads
    /// refreshes and retries and makes the `jti`s of signed JWTs; tests pass
    /// a fixed one to be reproducible. Adapters pass a random value and also
    /// inject a secure source with [`TokenManager::set_random_source`] (see
    /// [`random`](crate::random)): a seeded generator is predictable.
    pub fn new(config: ManagerConfig, seed: u64) -> TokenManager {
        TokenManager {
            config,
            clients: Vec::new(),
            keys: HashMap::new(),
            slots: Vec::new(),
            in_flight: HashMap::new(),
            requests: VecDeque::new(),
            events: VecDeque::new(),
            published: VecDeque::new(),
            next_request: 0,
            next_generation: 0,
            random: Randomness::new(seed),
            latest: Instant::ZERO,
            nonces: NonceStore::default(),
            store: None,
            store_requests: VecDeque::new(),
            store_ops: HashMap::new(),
            late_store_ops: HashMap::new(),
            next_store_op: 0,
        }
    }

    /// Draws every `jti` (16 bytes each) and the refresh and backoff jitter
    /// from `source` from now on, instead of from the generator seeded in
    /// [`TokenManager::new`], whose output can be predicted from one `jti` and
    /// repeats in forked processes. Adapters pass the operating system's
    /// generator; tests may keep the seed, or pass a source of known bytes.
    pub fn set_random_source(&mut self, source: Box<dyn RandomSource>) {
        self.random.set_source(source);
    }

    /// The manager-wide limits.
    pub fn config(&self) -> &ManagerConfig {
        &self.config
    }

    /// Registers a named client; its configured request becomes its default key.
    ///
    /// Refused when the name is taken, when there are too many clients, and
    /// when the client requires DPoP-bound tokens without a DPoP key.
    pub fn add_client(
        &mut self,
        name: impl Into<String>,
        config: ClientConfig,
    ) -> Result<ClientHandle, ConfigError> {
        let name = name.into();
        if self.clients.iter().any(|c| c.name == name) {
            return Err(ConfigError::new(
                "a client with this name is already registered",
            ));
        }
        if config.require_dpop_bound && config.dpop.is_none() {
            return Err(ConfigError::new(
                "require_dpop_bound needs a DPoP key (ClientConfig::dpop)",
            ));
        }
        let index =
            u32::try_from(self.clients.len()).map_err(|_| ConfigError::new("too many clients"))?;
        let default_key = self.intern(descriptor(index, &config, &KeyOverrides::new()))?;
        let sensitive = sensitive_strings(&config);
        self.clients.push(Client {
            name,
            config,
            default_key,
            sensitive,
        });
        Ok(ClientHandle(index))
    }

    /// The client registered under `name`.
    pub fn client(&self, name: &str) -> Option<ClientHandle> {
        self.clients
            .iter()
            .position(|c| c.name == name)
            .map(|i| ClientHandle(i as u32))
    }

    /// A client's configuration.
    pub fn client_config(&self, client: ClientHandle) -> &ClientConfig {
        &self.clients[client.0 as usize].config
    }

    /// The key of a client's configured request.
    pub fn default_key(&self, client: ClientHandle) -> KeyId {
        self.clients[client.0 as usize].default_key
    }

    /// The key of a client's request changed by per-call `overrides`. Equal
    /// requests get equal keys, so they share one token.
    pub fn key(
        &mut self,
        client: ClientHandle,
        overrides: &KeyOverrides,
    ) -> Result<KeyId, ConfigError> {
        let descriptor = descriptor(client.0, &self.clients[client.0 as usize].config, overrides);
        self.intern(descriptor)
    }

    fn intern(&mut self, descriptor: KeyDescriptor) -> Result<KeyId, ConfigError> {
        if let Some(&key) = self.keys.get(&descriptor) {
            return Ok(key);
        }
        if self.slots.len() >= self.config.max_keys {
            return Err(ConfigError::new(
                "too many distinct cache keys (see ManagerConfig::max_keys)",
            ));
        }
        let key = KeyId(self.slots.len() as u32);
        self.keys.insert(descriptor.clone(), key);
        self.slots.push(Slot {
            descriptor,
            token: None,
            flight: None,
            backoff: None,
            failures: 0,
            last_failure: None,
            expired: false,
            token_requests: 0,
            settled: None,
            store: StorePhase::Idle,
            lease_held: false,
            store_key: None,
            refused: VecDeque::new(),
            rejections: 0,
            rejected_at: None,
            snapshot: None,
            publish_pending: false,
        });
        Ok(key)
    }

    /// The number of keys interned so far; [`KeyId::index`] is below it.
    pub fn key_count(&self) -> usize {
        self.slots.len()
    }

    /// Every key interned so far, in the order they were made (each
    /// client's default key when it was added, then any made by
    /// [`TokenManager::key`]).
    pub fn keys(&self) -> impl Iterator<Item = KeyId> {
        (0..self.slots.len() as u32).map(KeyId)
    }

    /// Moves the core's clock. Time that goes backwards is ignored, so a
    /// token is never used beyond the lifetime it was issued with.
    fn advance(&mut self, now: Now) -> Instant {
        self.latest = self.latest.max(now.monotonic());
        self.latest
    }

    /// Decides what an outgoing API call for `key` should do at `now`.
    ///
    /// This is the hit path: with a Fresh Bearer token cached it only compares
    /// instants and returns a reference, with no allocation. For a DPoP-bound
    /// token use [`TokenManager::authorize_request`], which also builds the proof.
    pub fn authorize(&mut self, key: KeyId, now: Now) -> Authorization<'_> {
        self.decide(key, None, now)
    }

    /// [`TokenManager::authorize`] for a request about to be sent with
    /// `method` to `uri`: when the token is DPoP-bound, the [`Attach`] also
    /// carries a fresh proof for that request (with `ath` and the origin's
    /// latest nonce), to sign ([`Attach::dpop_proof_to_sign`]).
    pub fn authorize_request(
        &mut self,
        key: KeyId,
        method: &Method,
        uri: &Uri,
        now: Now,
    ) -> Authorization<'_> {
        self.decide(key, Some((method, uri)), now)
    }

    fn decide(
        &mut self,
        key: KeyId,
        request: Option<(&Method, &Uri)>,
        now: Now,
    ) -> Authorization<'_> {
        let t = self.advance(now);
        let slot = &self.slots[key.index()];
        let phase = slot.token.as_ref().map(|tok| tok.times.phase(t));
        match phase {
            Some(Phase::Fresh) => {}
            Some(Phase::Stale) => {
                // Refresh-ahead: one refresh, unless one runs or a backoff holds.
                if slot.may_request(t) {
                    self.begin(key, RequestReason::RefreshAhead, now);
                }
            }
            Some(Phase::Expired) | None => {
                return self.decide_without_token(key, phase.is_some(), now);
            }
        }
        let proof = match request {
            Some((method, uri)) => self.resource_proof(key, method, uri, now),
            None => None,
        };
        let token = self.slots[key.index()]
            .token
            .as_ref()
            .expect("attachable above; a refresh only replaces it when answered");
        // The same token at the same `t`, so the same phase as above. Asked
        // again rather than carried across the calls above: on the hit path
        // that saves keeping it in a register (or on the stack).
        let state = if token.times.refresh_due(t) {
            TokenState::Stale
        } else {
            TokenState::Fresh
        };
        Authorization::Attach(Attach {
            header: &token.header,
            generation: token.generation,
            state,
            proof,
        })
    }

    /// [`TokenManager::decide`] for a key with no attachable token: drops an
    /// expired one, then waits for the flight, fetches, or fails fast during
    /// a backoff.
    ///
    /// Out of line and cold: kept out of `decide`, the hit path there has
    /// fewer registers to save (61 instructions per Fresh `authorize` under
    /// callgrind, against 63 with this inlined).
    #[cold]
    #[inline(never)]
    fn decide_without_token(&mut self, key: KeyId, expired: bool, now: Now) -> Authorization<'_> {
        let t = self.latest;
        if expired {
            self.expire(key);
        }
        let slot = &self.slots[key.index()];
        if let Some(id) = slot.waiting_on() {
            return Authorization::Wait(id);
        }
        if slot.backoff_at(t).is_none() {
            let reason = if expired {
                RequestReason::Expired
            } else {
                RequestReason::Missing
            };
            if let Some(id) = self.begin(key, reason, now) {
                return Authorization::Fetch(id);
            }
        }
        // Backing off (or the request could not even be signed, which backs off too).
        let backoff = self.slots[key.index()]
            .backoff
            .as_ref()
            .expect("a failure always backs off");
        Authorization::Unavailable {
            error: &backoff.error,
            retry_at: backoff.until,
        }
    }

    /// A DPoP proof, to sign, for an API request with the cached DPoP-bound
    /// token of `key`; `None` when the token is a Bearer token.
    fn resource_proof(
        &mut self,
        key: KeyId,
        method: &Method,
        uri: &Uri,
        now: Now,
    ) -> Option<Result<UnsignedJwt, SignError>> {
        let slot = &self.slots[key.index()];
        let token = slot.token.as_ref()?;
        if token.token_type != TokenType::DPoP {
            return None;
        }
        let jti = self.random.jti();
        let Some(signer) = self.clients[slot.descriptor.client as usize]
            .config
            .dpop
            .as_ref()
        else {
            return Some(Err(SignError("a DPoP-bound token but no DPoP key".into())));
        };
        let nonce = dpop::origin_of(uri).and_then(|origin| self.nonces.get(&origin, self.latest));
        Some(dpop::unsigned_proof(
            signer,
            method,
            uri,
            now.wall(),
            &jti,
            nonce,
            Some(token.access_token.expose_secret()),
        ))
    }

    /// Starts a token request for `key` now, even if a Fresh token is cached,
    /// unless one is in flight already or the key is backing off.
    pub fn force_refresh(&mut self, key: KeyId, now: Now) -> ForcedRefresh {
        let t = self.advance(now);
        let slot = &mut self.slots[key.index()];
        if let Some(flight) = &slot.flight {
            return ForcedRefresh::InFlight(flight.id);
        }
        // A read or lease of the shared store could end with a token some
        // other process fetched: a forced refresh makes its own request
        // (a lease granted meanwhile is given back when its reply comes).
        slot.store = StorePhase::Idle;
        let slot = &self.slots[key.index()];
        if let Some(backoff) = slot.backoff_at(t) {
            return ForcedRefresh::BackingOff {
                retry_at: backoff.until,
            };
        }
        match self.start_request(key, RequestReason::Forced, now) {
            Some(id) => ForcedRefresh::Started(id),
            None => ForcedRefresh::BackingOff {
                retry_at: self.slots[key.index()]
                    .backoff
                    .as_ref()
                    .map_or(t, |b| b.until),
            },
        }
    }

    /// Drops the cached token for `key`; the next call fetches a new one.
    pub fn invalidate(&mut self, key: KeyId, now: Now) {
        self.advance(now);
        let slot = &mut self.slots[key.index()];
        if let Some(token) = slot.token.take() {
            // The shared store may still hold it: never take it back from there.
            slot.refuse(token.access_token);
            self.events.push_back(Event::TokenInvalidated {
                key,
                reason: InvalidationReason::Manual,
            });
            self.mark_changed(key);
        }
    }

    /// The failure that started `key`'s current backoff, if it is backing
    /// off: what a caller refused during the backoff is told, even while a
    /// still-valid token keeps being served.
    pub fn backoff_error(&self, key: KeyId) -> Option<&TokenError> {
        self.slots[key.index()].backoff.as_ref().map(|b| &b.error)
    }

    /// How request `id` of `key` ended, or the retry that took its place
    /// (after a `use_dpop_nonce` answer): `Ok` if it cached a token, the
    /// error if it failed; `None` while it is still in flight (one request
    /// per key is in flight at a time, so any later request that ended
    /// ended after it). What a forced
    /// refresh reports: its own outcome, not the cache's (a failed refresh
    /// fails even while the old token is still served).
    pub fn settled(&self, key: KeyId, id: RequestId) -> Option<Result<(), &TokenError>> {
        let slot = &self.slots[key.index()];
        match slot.settled {
            Some((ended, ok)) if ended >= id => Some(if ok {
                Ok(())
            } else {
                slot.last_failure
                    .as_ref()
                    .map_or(Ok(()), |failure| Err(&failure.error))
            }),
            _ => None,
        }
    }

    /// The token request in flight for `key`, if any.
    pub fn in_flight(&self, key: KeyId) -> Option<RequestId> {
        self.slots[key.index()].waiting_on()
    }

    /// The next token request to send, if any.
    pub fn poll_request(&mut self) -> Option<TokenRequest> {
        self.requests.pop_front()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next key whose [`Snapshot`] changed, with the new snapshot (`None`:
    /// nothing may be attached without asking the core). Adapters store it
    /// where their lock-free readers find it.
    pub fn poll_snapshot(&mut self) -> Option<(KeyId, Option<Arc<Snapshot>>)> {
        let key = self.published.pop_front()?;
        let slot = &mut self.slots[key.index()];
        slot.publish_pending = false;
        Some((key, slot.snapshot.clone()))
    }

    /// The current snapshot of `key`.
    pub fn snapshot(&self, key: KeyId) -> Option<Arc<Snapshot>> {
        self.slots[key.index()].snapshot.clone()
    }

    /// The cached token of `key`, if it may still be attached at `now`.
    pub fn token(&self, key: KeyId, now: Now) -> Option<TokenView<'_>> {
        let t = self.latest.max(now.monotonic());
        let token = self.slots[key.index()].token.as_ref()?;
        token.times.attachable(t).then(|| TokenView {
            token,
            remaining: token.times.remaining(t),
        })
    }

    /// Where `key` stands at `now`, as a health check reports it: its
    /// state, how long its token may still be attached, when the next token
    /// request may start, its last failure (its `Display`, and how long ago)
    /// and how many token requests it made. Owned and secret-free (see
    /// [`health`](crate::health)); reads the state only, like
    /// [`TokenManager::token`]: time that has passed without an input (a
    /// refresh point, an expiry, the end of a backoff) counts as passed.
    pub fn health(&self, key: KeyId, now: Now) -> KeyHealth {
        let t = self.latest.max(now.monotonic());
        let slot = &self.slots[key.index()];
        let usable = slot.token.as_ref().filter(|tok| tok.times.attachable(t));
        let backoff = slot.backoff_at(t);
        let state = match (backoff, usable) {
            (Some(_), _) => HealthState::BackingOff,
            (None, Some(tok)) if tok.times.refresh_due(t) => HealthState::Stale,
            (None, Some(_)) => HealthState::Fresh,
            (None, None) if slot.busy() => HealthState::Fetching,
            // Expired, whether the timer has dropped it yet or not.
            (None, None) if slot.expired || slot.token.is_some() => HealthState::Expired,
            (None, None) => HealthState::Empty,
        };
        let refresh_in = if slot.busy() {
            Some(Duration::ZERO)
        } else if let Some(backoff) = backoff {
            Some(backoff.until.saturating_duration_since(t))
        } else {
            usable.map(|tok| tok.times.refresh_at.saturating_duration_since(t))
        };
        KeyHealth {
            state,
            usable_for: usable.map(|tok| tok.times.remaining(t)),
            refresh_in,
            last_error: slot.last_failure.as_ref().map(|failure| HealthError {
                message: failure.error.to_string(),
                ago: t.saturating_duration_since(failure.at),
            }),
            token_requests: slot.token_requests,
        }
    }

    /// The client `key` belongs to.
    pub fn client_of(&self, key: KeyId) -> ClientHandle {
        ClientHandle(self.slots[key.index()].descriptor.client)
    }

    /// The name a client was registered under.
    pub fn client_name(&self, client: ClientHandle) -> &str {
        &self.clients[client.0 as usize].name
    }

    /// What sets `key` apart from its client's configured request, for logs
    /// and health views; `None` for the client's default key. Lists the
    /// scope, resources and audience that differ, and the names (not the
    /// values) of the parameters that do, for example
    /// `scope="reports.read" params=[tenant]`.
    pub fn key_overrides(&self, key: KeyId) -> Option<String> {
        use std::fmt::Write as _;
        let own = &self.slots[key.index()].descriptor;
        let client = &self.clients[own.client as usize];
        if client.default_key == key {
            return None;
        }
        let base = &self.slots[client.default_key.index()].descriptor;
        let mut out = String::new();
        let mut part = |args: std::fmt::Arguments<'_>| {
            if !out.is_empty() {
                out.push(' ');
            }
            let _ = out.write_fmt(args);
        };
        if own.scope != base.scope {
            part(format_args!("scope={:?}", own.scope.to_request_string()));
        }
        if own.resources != base.resources {
            part(format_args!("resources={:?}", own.resources));
        }
        if own.audience != base.audience {
            part(format_args!(
                "audience={:?}",
                own.audience.as_deref().unwrap_or("")
            ));
        }
        let changed: Vec<&str> = own
            .params
            .iter()
            .filter(|param| !base.params.contains(param))
            .map(|(name, _)| name.as_str())
            .collect();
        if !changed.is_empty() {
            part(format_args!("params=[{}]", changed.join(",")));
        }
        if out.is_empty() {
            let _ = write!(out, "{key}");
        }
        Some(out)
    }

    /// Hands the core the response to token request `id`.
    ///
    /// The body should be read up to [`ManagerConfig::max_response_body`]
    /// plus one byte: a longer body is refused here as too large.
    pub fn handle_response<B: AsRef<[u8]>>(
        &mut self,
        id: RequestId,
        response: http::Response<B>,
        now: Now,
    ) -> Result<(), UnknownRequest> {
        let t = self.advance(now);
        let (key, flight) = self.finish_flight(id)?;
        let client = &self.clients[self.slots[key.index()].descriptor.client as usize];
        let has_dpop = client.config.dpop.is_some();
        // Any answer from the token endpoint may carry its next nonce.
        let nonce_stored = has_dpop
            && self.nonces.update_from(
                &client.config.token_endpoint,
                response.headers(),
                t,
                self.config.dpop_nonce_lifetime,
            );
        let sensitive: Vec<&str> = client.sensitive.iter().map(|s| s.as_str()).collect();
        let parsed = parse_token_response(
            response.status(),
            response.body().as_ref(),
            self.config.max_response_body,
            &sensitive,
        );
        // RFC 9449 §8: the server wants a nonce; retry once with a fresh proof
        // (and a fresh client assertion), never more.
        let wants_nonce =
            matches!(&parsed, Err(TokenError::OAuth(e)) if e.code() == "use_dpop_nonce");
        if wants_nonce && nonce_stored && !flight.nonce_retried {
            if self
                .start_request(key, RequestReason::DPoPNonce, now)
                .is_some()
            {
                if let Some(retry) = self.slots[key.index()].flight.as_mut() {
                    retry.nonce_retried = true;
                }
            }
            return Ok(());
        }
        let outcome =
            parsed.and_then(|token| self.accept_token(key, &flight, token, response.status(), t));
        if let Err(error) = outcome {
            let retry_after = retry_after_from_headers(response.headers(), now.wall());
            self.fail(key, id, error, retry_after, t);
        }
        Ok(())
    }

    /// Tells the core that token request `id` got no HTTP response.
    pub fn handle_transport_error(
        &mut self,
        id: RequestId,
        error: TransportError,
        now: Now,
    ) -> Result<(), UnknownRequest> {
        let t = self.advance(now);
        let (key, _) = self.finish_flight(id)?;
        self.fail(key, id, TokenError::Transport(error), None, t);
        Ok(())
    }

    /// Tells the core that token request `id` could not be signed
    /// ([`TokenRequest::into_request`] failed), so it was never sent.
    ///
    /// The key fails as with any other failure: [`TokenError::Signing`],
    /// [`Event::RequestFailed`] and a backoff ([`Event::BackoffEntered`]),
    /// during which callers get that error instead of a new attempt.
    pub fn handle_signing_error(
        &mut self,
        id: RequestId,
        error: SignError,
        now: Now,
    ) -> Result<(), UnknownRequest> {
        let t = self.advance(now);
        let (key, _) = self.finish_flight(id)?;
        self.fail(key, id, TokenError::Signing(error), None, t);
        Ok(())
    }

    /// Hands the core a protected resource's response to a request that went
    /// out with a token for `key`, and says whether to retry it.
    ///
    /// On a 401, the cached token is invalidated only if it is the one the
    /// request carried (compare-and-invalidate): a 401 for an older token must
    /// not throw away the newer one. One retry is allowed (`attempt == 0`).
    ///
    /// A 401 that does not call for a new token is delivered as it is: a
    /// Bearer `insufficient_scope`, and a DPoP `use_dpop_nonce` (retried once
    /// when the response carried a new nonce). And a 401 for a token that was
    /// itself fetched after the key's last 401 invalidation is damped: within
    /// [`ManagerConfig::resource_rejection_damping`] of that invalidation the
    /// token is kept, the response is delivered without a retry and
    /// [`Event::RejectionDamped`] is emitted, so that an API that rejects
    /// every token costs one token request per window instead of two per call.
    pub fn handle_resource_response(
        &mut self,
        key: KeyId,
        response: &ResourceResponse<'_>,
        now: Now,
    ) -> ResourceOutcome {
        let t = self.advance(now);
        // A DPoP-Nonce on any response replaces that origin's nonce.
        let nonce_stored = response.uri.is_some_and(|uri| {
            self.nonces
                .update_from(uri, response.headers, t, self.config.dpop_nonce_lifetime)
        });
        if response.status != StatusCode::UNAUTHORIZED {
            return ResourceOutcome::Deliver;
        }
        let Some(sent) = response.sent_authorization else {
            return ResourceOutcome::Deliver;
        };
        let challenges = parse_www_authenticate(response.headers).unwrap_or_default();
        // DPoP `use_dpop_nonce`: the token is fine; retry once with the new nonce.
        let wants_nonce = challenges
            .iter()
            .any(|c| c.is_scheme("DPoP") && c.param("error") == Some("use_dpop_nonce"));
        if wants_nonce {
            return if nonce_stored && response.attempt == 0 {
                ResourceOutcome::Retry
            } else {
                ResourceOutcome::Deliver
            };
        }
        // A Bearer `insufficient_scope` is not cured by a new token of the same scope.
        if challenges
            .iter()
            .any(|c| c.param("error") == Some("insufficient_scope"))
        {
            return ResourceOutcome::Deliver;
        }
        let damping = self.config.resource_rejection_damping;
        let slot = &mut self.slots[key.index()];
        if let Some(token) = slot.token.as_ref().filter(|tok| tok.header == *sent) {
            // A token fetched after the last 401 is rejected too: the API
            // rejects every token. Within the window, keep it and hand the 401
            // to the caller rather than pay a token request per call.
            let damped = token.after_rejection
                && slot
                    .rejected_at
                    .is_some_and(|at| !reached(at.saturating_add(damping), t));
            if damped {
                self.events.push_back(Event::RejectionDamped { key });
                return ResourceOutcome::Deliver;
            }
            // The shared store may still hold it: never take it back from there.
            if let Some(token) = slot.token.take() {
                slot.refuse(token.access_token);
            }
            slot.rejections += 1;
            slot.rejected_at = Some(t);
            self.events.push_back(Event::TokenInvalidated {
                key,
                reason: InvalidationReason::RejectedByResource,
            });
            self.mark_changed(key);
        }
        if response.attempt == 0 {
            ResourceOutcome::Retry
        } else {
            ResourceOutcome::Deliver
        }
    }

    /// Shares tokens with the other processes of a fleet through a store
    /// (Redis), after this call. The protocol, decided here and carried out
    /// by the driver ([`TokenManager::poll_store_request`],
    /// [`TokenManager::handle_store_reply`]):
    ///
    /// 1. A key with no usable token first **reads** the store. An entry
    ///    that is still usable here (its lifetime and the store's remaining
    ///    time to live give every process the same refresh point; wall
    ///    clocks are never compared) is cached ([`Event::TokenFromStore`]).
    /// 2. On a miss, or an entry past its refresh point, the key takes the
    ///    **lease** (`ttl` at least the request deadline), and reads once
    ///    more (a token written in between needs no fetch). Only the holder
    ///    requests a token; it **writes** it to the store (time to live: the
    ///    token's remaining life), which releases the lease, or releases the
    ///    lease if the request fails.
    /// 3. A key that finds the lease taken **follows**: it reads the store
    ///    every [`StoreSettings::poll_interval`] until the token shows up,
    ///    and takes the lease itself once it has lapsed (the holder died).
    ///    A lease found taken for two leases' lives on end is stuck: the key
    ///    fetches, as without a store ([`Event::StoreEntryRefused`]).
    ///    Refresh-ahead works the same way, fleet-wide: the cached token
    ///    keeps being served meanwhile.
    /// 4. The store is an optimisation, never a dependency: a store failure
    ///    or a reply past [`StoreSettings::op_deadline`] sends the key
    ///    straight to the token endpoint, as without a store, and rests the
    ///    store (1 s, doubling, at most 30 s by default;
    ///    [`Event::StoreUnavailable`] once per outage, [`Event::StoreRecovered`]
    ///    after). An entry this process cannot use, or the very token a
    ///    resource just refused, counts as no entry
    ///    ([`Event::StoreEntryRefused`]).
    ///
    /// Forced refreshes and DPoP nonce retries go to the token endpoint
    /// directly (their token is still written). Call it before the first
    /// input, after [`TokenManager::set_random_source`]: this process's
    /// lease-owner id is drawn from it.
    pub fn enable_store(&mut self, settings: StoreSettings) {
        let floor = self.config.request_timeout + Duration::from_secs(5);
        let lease_ttl = settings.lease_ttl.map_or(floor, |ttl| ttl.max(floor));
        self.store = Some(SharedStore {
            owner: OwnerId(self.random.bytes16()),
            lease_ttl,
            settings,
            failures: 0,
            resting_until: None,
        });
    }

    /// Gives back every lease this process holds (queues their release):
    /// for a process that stops, so that the fleet need not wait for its
    /// leases to lapse. A token request under way goes on; its token is
    /// still written if it comes.
    pub fn release_leases(&mut self) {
        let Some(owner) = self.store.as_ref().map(|s| s.owner) else {
            return;
        };
        for index in 0..self.slots.len() {
            if std::mem::take(&mut self.slots[index].lease_held) {
                self.queue_store(KeyId(index as u32), StoreOp::Release { owner });
            }
        }
    }

    /// This process's lease-owner id, once the store is enabled.
    pub fn store_owner(&self) -> Option<OwnerId> {
        self.store.as_ref().map(|store| store.owner)
    }

    /// The next store operation to carry out, if any.
    pub fn poll_store_request(&mut self) -> Option<StoreRequest> {
        self.store_requests.pop_front()
    }

    /// Hands the core the outcome of store operation `id`. A reply to an
    /// operation the core stopped waiting for (past its deadline) only
    /// releases the lease it may have been granted.
    pub fn handle_store_reply(
        &mut self,
        id: StoreOpId,
        reply: Result<StoreReply, StoreError>,
        now: Now,
    ) -> Result<(), UnknownRequest> {
        self.advance(now);
        if let Some(key) = self.late_store_ops.remove(&id) {
            // Given up at its deadline; a lease it was granted is given back.
            self.release_unexpected_lease(key, &reply);
            return Ok(());
        }
        let Some(&key) = self.store_ops.get(&id) else {
            return Err(UnknownRequest);
        };
        let overdue = matches!(
            self.slots[key.index()].store,
            StorePhase::Asking { op, deadline, .. } if op == id && reached(deadline, self.latest)
        );
        if overdue {
            // The deadline passed before the reply came: as if it had fired
            // first (the key went on without the store), then the reply.
            self.on_timer(key, Timer::StoreDeadline, now);
            if let Some(key) = self.late_store_ops.remove(&id) {
                self.release_unexpected_lease(key, &reply);
            }
            return Ok(());
        }
        self.store_reply(id, reply, now);
        Ok(())
    }

    /// What every store reply does, on time or at its deadline.
    fn store_reply(&mut self, id: StoreOpId, reply: Result<StoreReply, StoreError>, now: Now) {
        let t = self.latest;
        let Some(key) = self.store_ops.remove(&id) else {
            return;
        };
        match &reply {
            Err(error) if error.kind() != StoreErrorKind::Invalid => self.store_failed(error, t),
            _ => self.store_answered(),
        }
        let (asked, reason, wait, following_since) = match self.slots[key.index()].store {
            StorePhase::Asking {
                op,
                asked,
                reason,
                wait,
                following_since,
                ..
            } if op == id => (asked, reason, wait, following_since),
            // A write, a release, or an operation the key moved on from (a
            // forced refresh): a lease granted all the same is given back.
            _ => {
                self.release_unexpected_lease(key, &reply);
                return;
            }
        };
        self.slots[key.index()].store = StorePhase::Idle;
        self.mark_changed(key);
        match (asked, reply) {
            (Asked::Read, Ok(StoreReply::Entry(Some((token, remaining))))) => {
                match self.take_stored(key, token, remaining, wait) {
                    Taken::Settled => {}
                    // The waiters have a token now: the lease goes on under
                    // a new id, so that their waits end.
                    Taken::Due => {
                        let wait = self.next_wait_id();
                        self.ask_store_following(
                            key,
                            Asked::Lease,
                            reason,
                            wait,
                            following_since,
                            now,
                        );
                    }
                    Taken::No => self.ask_store_following(
                        key,
                        Asked::Lease,
                        reason,
                        wait,
                        following_since,
                        now,
                    ),
                }
            }
            (Asked::Read, Ok(StoreReply::Entry(None))) => {
                self.ask_store_following(key, Asked::Lease, reason, wait, following_since, now);
            }
            (Asked::Read, Err(error)) if error.kind() == StoreErrorKind::Invalid => {
                self.events
                    .push_back(Event::StoreEntryRefused { key, error });
                self.ask_store_following(key, Asked::Lease, reason, wait, following_since, now);
            }
            (Asked::Lease, Ok(StoreReply::Lease(true))) => {
                self.slots[key.index()].lease_held = true;
                self.ask_store(key, Asked::Recheck, reason, wait, now);
            }
            (Asked::Recheck, Ok(StoreReply::Entry(Some((token, remaining))))) => {
                if self.take_stored(key, token, remaining, wait) == Taken::Settled {
                    // Written just before the lease was taken: give it back.
                    self.slots[key.index()].lease_held = false;
                    if let Some(owner) = self.store.as_ref().map(|s| s.owner) {
                        self.queue_store(key, StoreOp::Release { owner });
                    }
                } else {
                    self.fetch_unless_cached(key, reason, now);
                }
            }
            (Asked::Recheck, Ok(StoreReply::Entry(None))) => {
                self.fetch_unless_cached(key, reason, now);
            }
            (Asked::Recheck, Err(error)) if error.kind() == StoreErrorKind::Invalid => {
                self.events
                    .push_back(Event::StoreEntryRefused { key, error });
                self.fetch_unless_cached(key, reason, now);
            }
            (Asked::Lease, Ok(StoreReply::Lease(false))) => {
                let Some(store) = self.store.as_ref() else {
                    return;
                };
                let since = following_since.unwrap_or(t);
                // A lease outlives the request it covers by design, and the
                // next holder takes over when one lapses; found taken for two
                // leases' lives on end, the lease is stuck (no time to live,
                // a broken store): fetch, as without a store.
                if reached(since.saturating_add(store.lease_ttl.saturating_mul(2)), t) {
                    let error = StoreError::new(
                        StoreErrorKind::Invalid,
                        "the lease outlived its time to live",
                    );
                    self.events
                        .push_back(Event::StoreEntryRefused { key, error });
                    self.fetch_unless_cached(key, reason, now);
                    return;
                }
                self.slots[key.index()].store = StorePhase::Following {
                    reason,
                    wait,
                    next_poll: t.saturating_add(store.settings.poll_interval),
                    since,
                };
            }
            (_, Ok(_)) => {
                let error = StoreError::new(
                    StoreErrorKind::Other,
                    "the store answered with a reply of another operation",
                );
                self.store_failed(&error, t);
                self.fetch_unless_cached(key, reason, now);
            }
            // Down, slow or confused: as without a store.
            (_, Err(_)) => self.fetch_unless_cached(key, reason, now),
        }
    }

    /// Gives back a lease granted to an operation the key no longer waits
    /// for (answered past its deadline, or overtaken by a forced refresh),
    /// unless the key holds it on purpose.
    fn release_unexpected_lease(&mut self, key: KeyId, reply: &Result<StoreReply, StoreError>) {
        if matches!(reply, Ok(StoreReply::Lease(true))) && !self.slots[key.index()].lease_held {
            if let Some(owner) = self.store.as_ref().map(|s| s.owner) {
                self.queue_store(key, StoreOp::Release { owner });
            }
        }
    }

    /// A fresh id for callers to wait on.
    fn next_wait_id(&mut self) -> RequestId {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        id
    }

    /// Goes on to the token endpoint for `key`, unless a Fresh token is
    /// cached meanwhile (a refresh another way got there first).
    fn fetch_unless_cached(&mut self, key: KeyId, reason: RequestReason, now: Now) {
        let t = self.latest;
        let slot = &self.slots[key.index()];
        let fresh = slot
            .token
            .as_ref()
            .is_some_and(|tok| tok.times.phase(t) == Phase::Fresh);
        if fresh || slot.busy() || slot.backoff_at(t).is_some() {
            if std::mem::take(&mut self.slots[key.index()].lease_held) {
                if let Some(owner) = self.store.as_ref().map(|s| s.owner) {
                    self.queue_store(key, StoreOp::Release { owner });
                }
            }
            return;
        }
        self.start_request(key, reason, now);
    }

    /// Starts seeking a token for `key`: through the shared store when there
    /// is one and it is not resting (the id callers wait on), otherwise
    /// straight to the token endpoint ([`TokenManager::start_request`]).
    fn begin(&mut self, key: KeyId, reason: RequestReason, now: Now) -> Option<RequestId> {
        let t = self.latest;
        let via_store = self.store.as_ref().is_some_and(|s| s.usable(t))
            && !matches!(reason, RequestReason::Forced | RequestReason::DPoPNonce);
        if !via_store {
            return self.start_request(key, reason, now);
        }
        let wait = self.next_wait_id();
        self.ask_store(key, Asked::Read, reason, wait, now);
        Some(wait)
    }

    /// Asks the store to read `key`'s entry or take its lease, callers
    /// waiting on `wait`; if the store is resting, goes to the token
    /// endpoint instead.
    fn ask_store(
        &mut self,
        key: KeyId,
        asked: Asked,
        reason: RequestReason,
        wait: RequestId,
        now: Now,
    ) {
        self.ask_store_following(key, asked, reason, wait, None, now);
    }

    /// [`TokenManager::ask_store`] for a key that has been following
    /// another process's lease `since` then, if so.
    fn ask_store_following(
        &mut self,
        key: KeyId,
        asked: Asked,
        reason: RequestReason,
        wait: RequestId,
        following_since: Option<Instant>,
        now: Now,
    ) {
        let t = self.latest;
        let Some(store) = self.store.as_ref().filter(|s| s.usable(t)) else {
            self.slots[key.index()].store = StorePhase::Idle;
            self.fetch_unless_cached(key, reason, now);
            return;
        };
        let deadline = t.saturating_add(store.settings.op_deadline);
        let op = match asked {
            Asked::Read | Asked::Recheck => StoreOp::Read,
            Asked::Lease => StoreOp::Lease {
                owner: store.owner,
                ttl: store.lease_ttl,
            },
        };
        let op = self.queue_store(key, op);
        self.slots[key.index()].store = StorePhase::Asking {
            op,
            asked,
            reason,
            wait,
            deadline,
            following_since,
        };
        self.mark_changed(key);
    }

    /// Queues a store operation on `key`.
    fn queue_store(&mut self, key: KeyId, op: StoreOp) -> StoreOpId {
        let id = StoreOpId(self.next_store_op);
        self.next_store_op += 1;
        self.store_ops.insert(id, key);
        // Encoded once per key: a follower asks every poll interval.
        let store_key = match &self.slots[key.index()].store_key {
            Some(store_key) => store_key.clone(),
            None => {
                let store_key = self.store_key(key);
                self.slots[key.index()].store_key = Some(store_key.clone());
                store_key
            }
        };
        self.store_requests.push_back(StoreRequest {
            id,
            key: store_key,
            op,
            expires_at: None,
        });
        id
    }

    /// What sets `key`'s token apart, for the store: the same in every
    /// process configured alike.
    fn store_key(&self, key: KeyId) -> StoreKey {
        let descriptor = &self.slots[key.index()].descriptor;
        let config = &self.clients[descriptor.client as usize].config;
        let endpoint = config.token_endpoint.to_string();
        let scope = descriptor.scope.to_request_string();
        let resources = descriptor.resources.join(" ");
        let params: Vec<u8> = descriptor
            .params
            .iter()
            .flat_map(|(name, value)| {
                let mut pair = Vec::with_capacity(name.len() + value.len() + 8);
                pair.extend_from_slice(&(name.len() as u32).to_be_bytes());
                pair.extend_from_slice(name.as_bytes());
                pair.extend_from_slice(&(value.len() as u32).to_be_bytes());
                pair.extend_from_slice(value.as_bytes());
                pair
            })
            .collect();
        StoreKey::encode([
            endpoint.as_bytes(),
            config.client_id.as_bytes(),
            scope.as_bytes(),
            resources.as_bytes(),
            descriptor.audience.as_deref().unwrap_or("").as_bytes(),
            &params,
            descriptor.dpop_jkt.as_deref().unwrap_or("").as_bytes(),
        ])
    }

    /// Caches a token another process stored, if this process may use it
    /// now: not one of those refused, of a type this client takes, still
    /// attachable here, and not the one already cached (which is due, or the
    /// store would not have been asked).
    fn take_stored(
        &mut self,
        key: KeyId,
        token: StoredToken,
        remaining: Duration,
        wait: RequestId,
    ) -> Taken {
        let t = self.latest;
        let slot = &self.slots[key.index()];
        let config = &self.clients[slot.descriptor.client as usize].config;
        let refused = |why: &str| StoreError::new(StoreErrorKind::Invalid, why.to_owned());
        let problem = if slot.refused.contains(token.access_token()) {
            Some(refused("the entry holds a token refused or dropped"))
        } else {
            match (token.token_type(), config.dpop.is_some()) {
                (TokenType::DPoP, false) => {
                    Some(refused("a DPoP-bound token for a client without DPoP"))
                }
                (TokenType::Bearer, true) if config.require_dpop_bound => Some(refused(
                    "a Bearer token for a client that requires DPoP-bound tokens",
                )),
                _ => None,
            }
        };
        if let Some(error) = problem {
            self.events
                .push_back(Event::StoreEntryRefused { key, error });
            return Taken::No;
        }
        // The token already cached: it is due here (that is why the store was
        // asked), whatever a new jitter draw would say; the lease decides.
        let same = slot
            .token
            .as_ref()
            .is_some_and(|cached| cached.access_token == *token.access_token());
        if same {
            return Taken::No;
        }
        // The store's remaining time to live, never more than the lifetime:
        // a process never attaches a token past its usable life, whatever
        // the store says.
        let lifetime = token.lifetime();
        let elapsed = lifetime - remaining.min(lifetime);
        let remaining = lifetime - elapsed;
        let policy = &config.refresh;
        let expires_in = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
        // The times of a token requested `elapsed` ago: those of one
        // requested now, moved back. (Moving the request time back instead
        // would stop at the clock's origin, and a clock that started less
        // than `elapsed` ago would buy the token life.)
        let mut times = TokenTimes::new(policy, t, Some(expires_in), self.random.unit());
        times.refresh_at = times.refresh_at.saturating_sub(elapsed);
        times.attach_until = times.attach_until.saturating_sub(elapsed);
        if !times.attachable(t) {
            return Taken::No;
        }
        {
            let generation = self.next_generation;
            self.next_generation += 1;
            self.events.push_back(Event::TokenFromStore {
                key,
                lifetime: times.lifetime,
                remaining,
            });
            let (access_token, token_type, scope) = token.into_parts();
            let slot = &mut self.slots[key.index()];
            slot.token = Some(CachedToken {
                header: authorization_header(token_type, &access_token),
                access_token,
                token_type,
                scope,
                times,
                generation,
                after_rejection: false,
            });
            slot.expired = false;
            slot.settled = Some((wait, true));
            self.mark_changed(key);
        }
        // Past its refresh point here too: the fleet needs a new one (the
        // lease decides who fetches it), while this one is served.
        if times.refresh_due(t) {
            Taken::Due
        } else {
            Taken::Settled
        }
    }

    /// A store operation failed: rest the store, saying so once per outage.
    fn store_failed(&mut self, error: &StoreError, t: Instant) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        store.failures = store.failures.saturating_add(1);
        let doublings = store.failures.saturating_sub(1).min(16);
        let delay = store
            .settings
            .retry_min
            .saturating_mul(1 << doublings)
            .min(store.settings.retry_max);
        store.resting_until = Some(t.saturating_add(delay));
        if store.failures == 1 {
            self.events.push_back(Event::StoreUnavailable {
                error: error.clone(),
                retry_in: delay,
            });
        }
    }

    /// A store operation got an answer: an outage, if any, is over.
    fn store_answered(&mut self) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        if store.failures > 0 {
            store.failures = 0;
            store.resting_until = None;
            self.events.push_back(Event::StoreRecovered);
        }
    }

    /// The next instant at which the core wants [`TokenManager::handle_timeout`]
    /// to be called, and why. Changes after every input.
    pub fn poll_timeout(&self) -> Option<(Instant, TimeoutReason)> {
        earliest(
            self.slots
                .iter()
                .filter_map(|slot| slot.next_deadline(self.proactive(slot))),
        )
        .map(|(at, timer)| (at, timer.reason()))
    }

    /// Acts on every deadline that has passed by `now`: gives up on requests
    /// in flight too long, ends backoffs, drops expired tokens, and starts
    /// proactive refreshes.
    pub fn handle_timeout(&mut self, now: Now) {
        let t = self.advance(now);
        for index in 0..self.slots.len() {
            let key = KeyId(index as u32);
            // In `Timer::VALUES` order, each deadline derived again after the
            // one before it was handled, since handling one changes the
            // others: a timed-out request starts a backoff, which holds back
            // the refresh; an ended backoff lets it run.
            for timer in Timer::VALUES {
                let slot = &self.slots[index];
                let due = slot
                    .deadline(timer, self.proactive(slot))
                    .is_some_and(|at| reached(at, t));
                if due {
                    self.on_timer(key, timer, now);
                }
            }
        }
    }

    /// What `timer` firing does to `key`: one arm per kind.
    fn on_timer(&mut self, key: KeyId, timer: Timer, now: Now) {
        let t = self.latest;
        match timer {
            Timer::RequestDeadline => {
                let id = self.slots[key.index()]
                    .flight
                    .as_ref()
                    .expect("the timer is armed by a flight")
                    .id;
                let (_, flight) = self.finish_flight(id).expect("the flight is registered");
                let waited = t.saturating_duration_since(flight.requested_at);
                self.fail(
                    key,
                    id,
                    TokenError::Transport(TransportError::core_timeout(waited)),
                    None,
                    t,
                );
            }
            Timer::BackoffEnds => {
                self.slots[key.index()].backoff = None;
                self.mark_changed(key);
            }
            Timer::TokenExpires => self.expire(key),
            Timer::RefreshDue => {
                self.begin(key, RequestReason::RefreshAhead, now);
            }
            Timer::StoreDeadline => {
                let StorePhase::Asking { op, .. } = self.slots[key.index()].store else {
                    unreachable!("the timer is armed by a store operation");
                };
                if self.late_store_ops.len() < MAX_LATE_STORE_OPS {
                    self.late_store_ops.insert(op, key);
                }
                let error = StoreError::new(
                    StoreErrorKind::Unavailable,
                    "no answer within the store operation deadline",
                );
                self.store_reply(op, Err(error), now);
            }
            Timer::StorePoll => {
                let StorePhase::Following {
                    reason,
                    wait,
                    since,
                    ..
                } = self.slots[key.index()].store
                else {
                    unreachable!("the timer is armed by a wait for another process");
                };
                self.ask_store_following(key, Asked::Read, reason, wait, Some(since), now);
            }
        }
    }

    /// Whether `slot`'s client refreshes on the timer, ahead of callers.
    fn proactive(&self, slot: &Slot) -> bool {
        self.clients[slot.descriptor.client as usize]
            .config
            .refresh
            .proactive
    }

    /// Queues a token request for `key` (its JWTs unsigned: the driver signs
    /// them, see [`TokenRequest::into_request`]), or, when its DPoP proof
    /// cannot even be made, fails at once (which backs off) and returns `None`.
    fn start_request(&mut self, key: KeyId, reason: RequestReason, now: Now) -> Option<RequestId> {
        let t = self.latest;
        let id = RequestId(self.next_request);
        self.next_request += 1;
        let assertion_jti = self.random.jti();
        let proof_jti = self.random.jti();
        let slot = &self.slots[key.index()];
        let client = &self.clients[slot.descriptor.client as usize];
        let nonce = match &client.config.dpop {
            Some(_) => dpop::origin_of(&client.config.token_endpoint)
                .and_then(|origin| self.nonces.get(&origin, t))
                .map(str::to_owned),
            None => None,
        };
        let attempt = Attempt {
            wall: now.wall(),
            assertion_jti,
            proof_jti,
            nonce: nonce.as_deref(),
        };
        let request = match build_token_request(id, key, &client.config, &slot.descriptor, &attempt)
        {
            Ok(request) => request,
            Err(error) => {
                self.fail(key, id, TokenError::Signing(error), None, t);
                return None;
            }
        };
        self.slots[key.index()].flight = Some(Flight {
            id,
            requested_at: t,
            deadline: t.saturating_add(self.config.request_timeout),
            nonce_retried: false,
            rejections: self.slots[key.index()].rejections,
        });
        self.slots[key.index()].token_requests += 1;
        self.in_flight.insert(id, key);
        self.requests.push_back(request);
        self.events
            .push_back(Event::RequestStarted { key, id, reason });
        self.mark_changed(key);
        Some(id)
    }

    fn finish_flight(&mut self, id: RequestId) -> Result<(KeyId, Flight), UnknownRequest> {
        let key = self.in_flight.remove(&id).ok_or(UnknownRequest)?;
        let flight = self.slots[key.index()]
            .flight
            .take()
            .ok_or(UnknownRequest)?;
        debug_assert_eq!(flight.id, id);
        self.mark_changed(key);
        Ok((key, flight))
    }

    fn accept_token(
        &mut self,
        key: KeyId,
        flight: &Flight,
        response: TokenResponse,
        status: StatusCode,
        t: Instant,
    ) -> Result<(), TokenError> {
        let invalid = |problem| {
            TokenError::InvalidResponse(InvalidResponse {
                status,
                problem,
                excerpt: None,
            })
        };
        let config = &self.clients[self.slots[key.index()].descriptor.client as usize].config;
        let (has_dpop, require_bound) = (config.dpop.is_some(), config.require_dpop_bound);
        match (response.token_type, has_dpop) {
            (TokenType::Bearer, false) | (TokenType::DPoP, true) => {}
            // RFC 9449 §7.1 allows a server to issue a Bearer token anyway: refuse
            // it when the client requires bound tokens (a stolen Bearer token can
            // be replayed) ...
            (TokenType::Bearer, true) if require_bound => {
                return Err(invalid(ResponseProblem::NotDPoPBound));
            }
            // ... otherwise use it as such, and say so.
            (TokenType::Bearer, true) => self.events.push_back(Event::TokenNotBound { key }),
            (TokenType::DPoP, false) => {
                // A DPoP-bound token needs a key to sign proofs with; none is configured.
                return Err(invalid(ResponseProblem::UnsupportedTokenType(
                    "DPoP".to_owned(),
                )));
            }
        }
        let slot = &self.slots[key.index()];
        let policy = &self.clients[slot.descriptor.client as usize].config.refresh;
        let times = TokenTimes::new(
            policy,
            flight.requested_at,
            response.expires_in,
            self.random.unit(),
        );
        if !times.attachable(t) {
            return Err(invalid(ResponseProblem::ExpiredOnArrival));
        }
        let header = authorization_header(response.token_type, &response.access_token);
        let generation = self.next_generation;
        self.next_generation += 1;
        self.events.push_back(Event::TokenAcquired {
            key,
            lifetime: times.lifetime,
            token_type: response.token_type,
            scope: response.scope.clone(),
        });
        // RFC 6749 §5.1: a server that grants other than what was asked must
        // say so; a scope quietly dropped shows up only as 403s later.
        let requested = &self.slots[key.index()].descriptor.scope;
        if let Some(granted) = response.scope.as_deref() {
            if !requested.is_empty() && Scope::parse(granted) != *requested {
                self.events.push_back(Event::ScopeDiffers {
                    key,
                    requested: requested.to_request_string(),
                    granted: granted.to_owned(),
                });
            }
        }
        // The fleet's copy: kept as long as the token lives, from the request on.
        let store_ttl = flight
            .requested_at
            .saturating_add(times.lifetime)
            .saturating_duration_since(t);
        if let Some(store) = self.store.as_ref().filter(|store| store.usable(t)) {
            let op = StoreOp::Write {
                owner: store.owner,
                token: StoredToken::from_parts(
                    response.access_token.clone(),
                    response.token_type,
                    response.scope.clone(),
                    times.lifetime,
                ),
                ttl: store_ttl,
            };
            let id = self.queue_store(key, op);
            if let Some(request) = self.store_requests.back_mut().filter(|r| r.id == id) {
                request.expires_at = Some(t.saturating_add(store_ttl));
            }
        }
        let slot = &mut self.slots[key.index()];
        // Written with the token: the write releases it.
        slot.lease_held = false;
        slot.token = Some(CachedToken {
            access_token: response.access_token,
            header,
            token_type: response.token_type,
            scope: response.scope,
            times,
            generation,
            after_rejection: slot.rejections > 0 && flight.rejections == slot.rejections,
        });
        slot.failures = 0;
        slot.backoff = None;
        slot.expired = false;
        slot.settled = Some((flight.id, true));
        self.mark_changed(key);
        Ok(())
    }

    fn fail(
        &mut self,
        key: KeyId,
        id: RequestId,
        error: TokenError,
        retry_after: Option<Duration>,
        t: Instant,
    ) {
        if std::mem::take(&mut self.slots[key.index()].lease_held) {
            // Let another process try: its own backoff paces it.
            if let Some(owner) = self.store.as_ref().filter(|s| s.usable(t)).map(|s| s.owner) {
                self.queue_store(key, StoreOp::Release { owner });
            }
        }
        let slot = &mut self.slots[key.index()];
        slot.failures = slot.failures.saturating_add(1);
        let failures = slot.failures;
        let policy = &self.clients[slot.descriptor.client as usize].config.backoff;
        let delay = backoff_delay(policy, failures, retry_after, self.random.unit());
        let until = t.saturating_add(delay);
        let serving_cached = slot
            .token
            .as_ref()
            .is_some_and(|tok| tok.times.attachable(t));
        slot.backoff = Some(Backoff {
            until,
            error: error.clone(),
        });
        slot.last_failure = Some(Failure {
            error: error.clone(),
            at: t,
        });
        slot.settled = Some((id, false));
        self.events
            .push_back(Event::RequestFailed { key, id, error });
        self.events.push_back(Event::BackoffEntered {
            key,
            until,
            delay,
            failures,
            serving_cached,
        });
        self.mark_changed(key);
    }

    fn expire(&mut self, key: KeyId) {
        let slot = &mut self.slots[key.index()];
        if slot.token.take().is_some() {
            slot.expired = true;
            self.events.push_back(Event::TokenExpired { key });
            self.mark_changed(key);
        }
    }

    /// Recomputes `key`'s snapshot and queues it for adapters.
    fn mark_changed(&mut self, key: KeyId) {
        let slot = &mut self.slots[key.index()];
        let snapshot = slot.token.as_ref().map(|token| {
            Arc::new(Snapshot {
                key,
                header: token.header.clone(),
                generation: token.generation,
                fresh_until: slot.lock_free_until(token),
                attach_until: token.times.attach_until,
            })
        });
        let unchanged = match (&slot.snapshot, &snapshot) {
            (None, None) => true,
            (Some(a), Some(b)) => a.generation == b.generation && a.fresh_until == b.fresh_until,
            _ => false,
        };
        if unchanged {
            return;
        }
        slot.snapshot = snapshot;
        if !slot.publish_pending {
            slot.publish_pending = true;
            self.published.push_back(key);
        }
    }
}

/// The cache key of `config`'s request changed by `overrides`: everything that
/// changes the token, including the thumbprint of the DPoP key it is bound to.
fn descriptor(client: u32, config: &ClientConfig, overrides: &KeyOverrides) -> KeyDescriptor {
    let mut descriptor = KeyDescriptor::new(
        client,
        &config.scope,
        &config.resources,
        config.audience.as_ref(),
        &config.params,
        overrides,
    );
    descriptor.dpop_jkt = config
        .dpop
        .as_ref()
        .map(|s| s.public_jwk().thumbprint().to_owned());
    descriptor
}

/// `Authorization: <scheme> <token>`, marked sensitive. The token was checked
/// to be visible ASCII, so this cannot fail.
fn authorization_header(token_type: TokenType, token: &AccessToken) -> HeaderValue {
    let (scheme, secret) = (token_type.scheme(), token.expose_secret());
    // Sized up front: a growing buffer would leave an unwiped copy behind.
    let mut text = Zeroizing::new(String::with_capacity(scheme.len() + 1 + secret.len()));
    text.push_str(scheme);
    text.push(' ');
    text.push_str(secret);
    let mut value = HeaderValue::from_str(&text).expect("token checked to be visible ASCII");
    value.set_sensitive(true);
    value
}

/// The secret and the forms it travels in, to keep out of error excerpts.
/// Held for the client's lifetime, so wiped on drop like the secret itself.
fn sensitive_strings(config: &ClientConfig) -> Vec<Zeroizing<String>> {
    let Some(secret) = config.auth.secret() else {
        return Vec::new();
    };
    let raw = secret.expose_secret();
    let mut out = vec![Zeroizing::new(raw.to_owned()), form_encoded(raw)];
    if matches!(config.auth, ClientAuth::Basic(_) | ClientAuth::BasicRaw(_)) {
        for encode in [true, false] {
            out.push(basic_token68(&config.client_id, raw, encode));
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientSecret;

    /// Only compiles while the strings kept to scrub error excerpts are wiped on drop.
    fn zeroizing(forms: &[Zeroizing<String>]) -> Vec<&str> {
        forms.iter().map(|s| s.as_str()).collect()
    }

    #[test]
    fn the_earliest_deadline_wins_and_a_tie_goes_to_the_first() {
        let at = Instant::from_secs;
        assert_eq!(earliest::<Timer>([]), None);
        assert_eq!(
            earliest([(at(5), Timer::BackoffEnds), (at(3), Timer::TokenExpires)]),
            Some((at(3), Timer::TokenExpires))
        );
        assert_eq!(
            earliest([(at(3), Timer::TokenExpires), (at(3), Timer::RefreshDue)]),
            Some((at(3), Timer::TokenExpires))
        );
    }

    #[test]
    fn every_timer_has_its_own_reason() {
        let reasons: std::collections::HashSet<_> =
            Timer::VALUES.iter().map(|t| t.reason()).collect();
        assert_eq!(reasons.len(), Timer::VALUES.len());
    }

    #[test]
    fn the_secret_forms_kept_for_scrubbing_are_zeroized() {
        let mut m = TokenManager::new(ManagerConfig::default(), 1);
        let config = ClientConfig::new(
            "https://as.example/token",
            "m2m",
            ClientAuth::Basic(ClientSecret::new("s e:c")),
        )
        .unwrap();
        m.add_client("basic", config).unwrap();
        let forms = zeroizing(&m.clients[0].sensitive);
        assert!(forms.contains(&"s e:c"), "the secret itself");
        assert!(forms.contains(&"s+e%3Ac"), "its form encoding");
        let b64 = |s: &str| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(s)
        };
        assert!(forms.contains(&b64("m2m:s+e%3Ac").as_str()), "basic");
        assert!(forms.contains(&b64("m2m:s e:c").as_str()), "basic, raw");
        assert!(!format!("{m:?}").contains("s e:c"));
    }
}
