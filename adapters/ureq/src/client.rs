//! [`TokenClient`]: the thread-safe blocking client.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Uri};
use token_keeper::discovery::{
    Discovery, DiscoveryError, DiscoveryStep, ServerMetadata, MAX_DISCOVERY_DOCUMENT,
};
use token_keeper::{
    ClientConfig, KeyId, KeyOverrides, ManagerConfig, ProxySettings, ResourceOutcome,
};
use token_keeper_driver::tls::TlsSettings;
use token_keeper_driver::{
    proxy_from_env, random_seed, start_forced_refresh, step, Attached, Authorized, BlockingSend,
    ClientHealth, ClientStats, Engine, EngineHandle, Step, TokenInfo,
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
    /// Which proxy token and discovery requests (and the API requests of
    /// agents built by [`TokenMiddleware::build_agent`](crate::TokenMiddleware::build_agent))
    /// go through. Default: the environment, read once when the options are
    /// made, with curl's rules ([`proxy_from_env`](token_keeper_driver::proxy_from_env)).
    /// A loopback destination is never proxied, whatever this says.
    pub proxy: ProxySettings,
    /// Which certificates token and discovery requests trust (default: the
    /// Mozilla roots). The OS store needs the `platform-verifier` feature;
    /// ureq cannot add CAs to it (refused by [`TokenClient::with_options`]).
    pub tls: TlsSettings,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            manager: ManagerConfig::default(),
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
            clock: Arc::new(SystemClock::new()),
            seed: random_seed(),
            proxy: proxy_from_env(),
            tls: TlsSettings::default(),
        }
    }
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("manager", &self.manager)
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("proxy", &self.proxy)
            .field("tls", &self.tls)
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
    io: Arc<UreqIo>,
}

/// What the blocking side adds to the engine.
struct UreqIo {
    agent: ureq::Agent,
    proxy: Arc<ProxySettings>,
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
        TokenClient::with_options(ClientOptions::default()).expect("the default options are valid")
    }

    /// A client with these options; refuses TLS settings this build cannot
    /// apply (see [`ClientOptions::tls`]).
    pub fn with_options(options: ClientOptions) -> Result<TokenClient, Error> {
        let agent = transport::token_agent(options.connect_timeout, options.timeout, &options.tls)?;
        let proxy = Arc::new(options.proxy);
        let sender = agent.clone();
        let sender_proxy = Arc::clone(&proxy);
        let send: Box<BlockingSend> = Box::new(move |request, max_body| {
            transport::send(&sender, &sender_proxy, request, max_body)
        });
        // Blocked callers wait on the engine's condition variable; nothing else to wake.
        let engine = Engine::start(
            options.manager,
            options.seed,
            options.clock,
            send,
            Box::new(|| {}),
            // Log lines under this crate's name, the one its users filter on.
            env!("CARGO_CRATE_NAME"),
        );
        Ok(TokenClient {
            engine,
            io: Arc::new(UreqIo { agent, proxy }),
        })
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
            let response = transport::send(
                &self.io.agent,
                &self.io.proxy,
                discovery.request(),
                MAX_DISCOVERY_DOCUMENT,
            )
            .map_err(|e| Error::Discovery(DiscoveryError::unreachable(e)))?;
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
        self.acquire(key, None).map(|a| a.authorization)
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
        // Called after the core's lock is released: `f` may use the client.
        self.acquire(key, None).map(|a| f(&a.authorization))
    }

    /// The named client's token with its remaining lifetime and scope,
    /// fetching one if needed.
    pub fn token(&self, name: &str) -> Result<TokenInfo, Error> {
        let (_, key) = self.engine.registry().lookup(name)?;
        loop {
            self.acquire(key, None)?;
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
        self.acquire(key, None).map(|_| ())
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
        self.acquire(key, Some((method, uri)))
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

    /// The health of every key of every named client, now: its state
    /// (empty, fetching, fresh, stale, expired, backing off), how long its
    /// token may still be used, when the next token request may start, the
    /// last error (its message, never a secret, and how long ago) and the
    /// token requests made. Owned and secret-free, to serve as it is (as
    /// JSON at `/healthz`, say). Takes the core's lock only to read it.
    pub fn health(&self) -> Vec<ClientHealth> {
        self.engine.health()
    }

    /// The clock this client reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        self.engine.clock()
    }

    /// The proxy settings this client applies (see [`ClientOptions::proxy`]).
    pub fn proxy(&self) -> &ProxySettings {
        &self.io.proxy
    }
}

impl TokenClient {
    /// The slow path: asks the core until it attaches or fails, waiting for
    /// the token requests the engine sends on its own threads.
    fn acquire(&self, key: KeyId, request: Option<(&Method, &Uri)>) -> Result<Authorized, Error> {
        let engine = &*self.engine;
        let mut waited = false;
        let mut core = engine.lock_core();
        loop {
            let round = step(
                &mut core,
                engine.registry(),
                key,
                request,
                engine.clock().now(),
                waited,
            );
            engine.notify_timers();
            match round {
                Step::Done(result, requests) => {
                    drop(core);
                    engine.dispatch(requests);
                    // Signed with the lock released: a slow signer holds up this call only.
                    return result.and_then(Attached::sign);
                }
                Step::Wait { id, requests } => {
                    if !requests.is_empty() || engine.registry().logs_pending() {
                        drop(core);
                        engine.dispatch(requests);
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
