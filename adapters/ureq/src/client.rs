//! [`TokenClient`]: the thread-safe blocking client.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Uri};
use token_keeper::discovery::{Discovery, DiscoveryStep, ServerMetadata, MAX_DISCOVERY_DOCUMENT};
use token_keeper::{Attach, ClientConfig, KeyId, KeyOverrides, ManagerConfig, ResourceOutcome};
use token_keeper_common::{
    random_seed, start_forced_refresh, step, Authorized, BlockingSend, ClientStats, Engine,
    EngineHandle, Step, TokenInfo,
};

use crate::clock::{Clock, SystemClock};
use crate::error::Error;
use crate::transport;

/// Options of a [`TokenClient`].
#[derive(Clone)]
pub struct ClientOptions {
    /// The core's limits (response size, request deadline, number of keys).
    pub manager: ManagerConfig,
    /// Connect timeout for token and discovery requests (default 10 s).
    pub connect_timeout: Duration,
    /// Overall timeout for one token or discovery request, body included (default 10 s).
    pub timeout: Duration,
    /// The clock (default [`SystemClock`]).
    pub clock: Arc<dyn Clock>,
    /// Seed for the core's jitter (default: random per process).
    pub seed: u64,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            manager: ManagerConfig::default(),
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
            clock: Arc::new(SystemClock::new()),
            seed: random_seed(),
        }
    }
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("manager", &self.manager)
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A thread-safe, cheaply cloneable token client.
///
/// It owns the core and the named client configurations, sends token
/// requests with ureq, and refreshes tokens ahead of expiry on a background
/// thread that stops when the last clone is dropped. A cached Fresh token is
/// handed out without taking any lock.
///
/// ```no_run
/// use token_keeper::{ClientAuth, ClientConfig, ClientSecret};
/// use token_keeper_ureq::TokenClient;
///
/// let tokens = TokenClient::new();
/// tokens.add_client(
///     "m2m",
///     ClientConfig::new("https://auth.example.com/connect/token", "m2m",
///                       ClientAuth::Basic(ClientSecret::new(std::env::var("CLIENT_SECRET")?)))?
///         .scope("api"),
/// )?;
/// let header = tokens.header("m2m")?; // "Bearer …", fetched once, then cached
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct TokenClient {
    engine: EngineHandle,
    /// Sends discovery requests; the engine sends token requests with a clone.
    /// Behind an `Arc` so the client stays two pointers wide.
    agent: Arc<ureq::Agent>,
}

impl std::fmt::Debug for TokenClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenClient")
            .field("registry", self.engine.registry())
            .finish_non_exhaustive()
    }
}

impl Default for TokenClient {
    fn default() -> Self {
        TokenClient::new()
    }
}

impl TokenClient {
    /// A client with default options.
    pub fn new() -> TokenClient {
        TokenClient::with_options(ClientOptions::default())
    }

    /// A client with these options.
    pub fn with_options(options: ClientOptions) -> TokenClient {
        let agent = transport::token_agent(options.connect_timeout, options.timeout);
        let sender = agent.clone();
        let send: Box<BlockingSend> =
            Box::new(move |request, max_body| transport::send(&sender, request, max_body));
        // Blocked callers wait on the engine's condition variable; nothing else to wake.
        let engine = Engine::start(
            options.manager,
            options.seed,
            options.clock,
            send,
            Box::new(|| {}),
        );
        TokenClient {
            engine,
            agent: Arc::new(agent),
        }
    }

    /// Registers a named client.
    pub fn add_client(&self, name: &str, config: ClientConfig) -> Result<(), Error> {
        self.engine.add_client(name, config)
    }

    /// The metadata of the authorization server at `issuer`
    /// (`/.well-known/openid-configuration`, falling back to
    /// `/.well-known/oauth-authorization-server`), fetched once and cached.
    pub fn discover(&self, issuer: &str) -> Result<ServerMetadata, Error> {
        if let Some(metadata) = self.engine.registry().discovered(issuer) {
            return Ok(metadata);
        }
        let mut discovery = Discovery::new(issuer)?;
        let metadata = loop {
            let response =
                transport::send(&self.agent, discovery.request(), MAX_DISCOVERY_DOCUMENT)
                    .map_err(Error::Transport)?;
            match discovery.handle_response(&response) {
                DiscoveryStep::Done(metadata) => break metadata,
                DiscoveryStep::TryNext => continue,
                DiscoveryStep::Failed(error) => return Err(Error::Discovery(error)),
            }
        };
        self.engine
            .registry()
            .remember_discovery(issuer, metadata.clone());
        Ok(metadata)
    }

    /// The key of a named client's configured request.
    pub fn key(&self, name: &str) -> Result<KeyId, Error> {
        self.engine.registry().lookup(name).map(|(_, key)| key)
    }

    /// The key of a named client's request changed by per-call overrides
    /// (another scope, resource or parameter): a separate cached token.
    pub fn key_with(&self, name: &str, overrides: &KeyOverrides) -> Result<KeyId, Error> {
        self.engine.key_with(name, overrides)
    }

    /// The `Authorization` header value for the named client: the cached
    /// token when valid, otherwise fetched (one request per key, however many
    /// threads ask). Blocks only when no valid token is cached.
    pub fn header(&self, name: &str) -> Result<HeaderValue, Error> {
        let (_, key) = self.engine.registry().lookup(name)?;
        self.header_for(key)
    }

    /// The `Authorization` header value for a key.
    pub fn header_for(&self, key: KeyId) -> Result<HeaderValue, Error> {
        let now = self.engine.clock().monotonic();
        if let Some(header) = self
            .engine
            .registry()
            .with_fresh(key, now, |s| s.header().clone())
        {
            return Ok(header);
        }
        self.acquire(key, None, |a| a.header().clone())
    }

    /// Calls `f` with the named client's header without copying or
    /// reference-counting it: the zero-contention hit path, for callers that
    /// only need to read the value (for example to write it into a buffer).
    pub fn with_header<R>(
        &self,
        name: &str,
        f: impl FnOnce(&HeaderValue) -> R,
    ) -> Result<R, Error> {
        self.with_header_at(name, self.engine.clock().monotonic(), f)
    }

    /// [`TokenClient::with_header`] at a time the caller read from
    /// [`TokenClient::clock`] (for example once for a batch of requests):
    /// the hit path without its clock read. Falls back to the core, which
    /// reads the clock itself, when the snapshot is not Fresh at `now`.
    pub fn with_header_at<R>(
        &self,
        name: &str,
        now: token_keeper::Instant,
        f: impl FnOnce(&HeaderValue) -> R,
    ) -> Result<R, Error> {
        let mut f = Some(f);
        let fast = self
            .engine
            .registry()
            .with_fresh_named(name, now, |s| (f.take().expect("called once"))(s.header()))?;
        if let Some(result) = fast {
            return Ok(result);
        }
        let (_, key) = self.engine.registry().lookup(name)?;
        let f = f.take().expect("not called on the fast path");
        self.acquire(key, None, |a| f(a.header()))
    }

    /// The named client's token with its remaining lifetime and scope,
    /// fetching one if needed.
    pub fn token(&self, name: &str) -> Result<TokenInfo, Error> {
        let (_, key) = self.engine.registry().lookup(name)?;
        loop {
            self.acquire(key, None, |_| ())?;
            let core = self.engine.lock_core();
            // The token may expire between the two steps; then ask again.
            if let Some(info) = TokenInfo::of(&core, key, self.engine.clock().now()) {
                return Ok(info);
            }
        }
    }

    /// Fetches a new token for the named client now, even if the cached one
    /// is Fresh, and waits for the outcome. Respects backoff.
    pub fn force_refresh(&self, name: &str) -> Result<(), Error> {
        let (_, key) = self.engine.registry().lookup(name)?;
        let mut core = self.engine.lock_core();
        let (started, requests) = start_forced_refresh(
            &mut core,
            self.engine.registry(),
            key,
            self.engine.clock().now(),
        );
        drop(core);
        self.engine.dispatch(requests);
        let id = started?;
        let mut core = self.engine.lock_core();
        while core.in_flight(key) == Some(id) {
            core = self.engine.wait_for_flight(core);
        }
        drop(core);
        self.acquire(key, None, |_| ()).map(|_| ())
    }

    /// Drops the named client's cached token; the next call fetches a new one.
    pub fn invalidate(&self, name: &str) -> Result<(), Error> {
        self.engine.invalidate(name)
    }

    /// The headers for a request about to be sent with `method` to `uri`:
    /// `Authorization`, and for a DPoP-bound token a fresh `DPoP` proof for
    /// exactly this request. A cached Fresh Bearer token is read lock-free.
    pub fn authorize_request(
        &self,
        key: KeyId,
        method: &Method,
        uri: &Uri,
    ) -> Result<Authorized, Error> {
        let now = self.engine.clock().monotonic();
        let fast = self.engine.registry().with_fresh(key, now, |s| Authorized {
            authorization: s.header().clone(),
            dpop: None,
        });
        if let Some(authorized) = fast {
            return Ok(authorized);
        }
        self.acquire(key, Some((method, uri)), Authorized::from_attach)?
    }

    /// Whether the named client binds its tokens with DPoP.
    pub fn uses_dpop(&self, name: &str) -> Result<bool, Error> {
        self.engine.uses_dpop(name)
    }

    /// Reports a protected resource's response to a request that carried
    /// `sent` for `key`, and says whether to retry it (see
    /// [`TokenManager::handle_resource_response`](token_keeper::TokenManager::handle_resource_response)).
    pub fn handle_resource_response(
        &self,
        key: KeyId,
        status: http::StatusCode,
        headers: &http::HeaderMap,
        sent: &HeaderValue,
        uri: &Uri,
        attempt: u32,
    ) -> ResourceOutcome {
        self.engine
            .handle_resource_response(key, status, headers, sent, uri, attempt)
    }

    /// What the client has done so far.
    pub fn stats(&self) -> ClientStats {
        self.engine.registry().stats()
    }

    /// The clock this client reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        self.engine.clock()
    }
}

impl TokenClient {
    /// The slow path: asks the core until it attaches or fails, sending this
    /// caller's own token request inline and waiting on others' requests.
    fn acquire<R>(
        &self,
        key: KeyId,
        request: Option<(&Method, &Uri)>,
        f: impl FnOnce(&Attach<'_>) -> R,
    ) -> Result<R, Error> {
        let engine = &*self.engine;
        let mut waited = false;
        let mut f = Some(f);
        let mut core = engine.lock_core();
        loop {
            let round = step(
                &mut core,
                engine.registry(),
                key,
                request,
                engine.clock().now(),
                waited,
                &mut f,
            );
            engine.notify_timers();
            match round {
                Step::Done(result, others) => {
                    drop(core);
                    engine.dispatch(others);
                    return result;
                }
                Step::Send { own, others } => {
                    drop(core);
                    engine.dispatch(others);
                    engine.send_blocking(own);
                    core = engine.lock_core();
                }
                Step::Wait { id, others } => {
                    if !others.is_empty() {
                        drop(core);
                        engine.dispatch(others);
                        core = engine.lock_core();
                    }
                    // Checked under the lock, so the end of the flight cannot be missed.
                    if core.in_flight(key) == Some(id) {
                        core = engine.wait_for_flight(core);
                    }
                }
            }
            waited = true;
        }
    }
}
