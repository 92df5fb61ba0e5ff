//! [`AsyncTokenClient`]: the runtime-agnostic async client.

use std::sync::Arc;
use std::time::Duration;

use event_listener::Event;
use futures_lite::FutureExt;
use http::{HeaderValue, Method, Uri};
use token_keeper::discovery::{
    Discovery, DiscoveryError, DiscoveryStep, ServerMetadata, MAX_DISCOVERY_DOCUMENT,
};
use token_keeper::{
    ClientConfig, KeyId, KeyOverrides, ManagerConfig, ProxySettings, RequestId, ResourceOutcome,
};
use token_keeper_driver::{
    proxy_from_env, random_seed, start_forced_refresh, step, Attached, Authorized, BlockingSend,
    ClientHealth, ClientStats, Clock, Engine, EngineHandle, Error, Step, SystemClock, TokenInfo,
};

use crate::transport::{self, TokenTransport};
use crate::DirectHttp;
use token_keeper::ConfigError;
use token_keeper_driver::tls::TlsSettings;

/// Options of an [`AsyncTokenClient`].
#[derive(Clone)]
pub struct ClientOptions {
    /// The core's limits (response size, request deadline, number of keys).
    pub manager: ManagerConfig,
    /// Overall timeout for one token or discovery request, body included (default 10 s).
    pub timeout: Duration,
    /// The clock (default [`SystemClock`]).
    pub clock: Arc<dyn Clock>,
    /// Seed for the core's jitter (default: random per process).
    pub seed: u64,
    /// Which proxy [`DirectHttp`](crate::DirectHttp) tunnels token and
    /// discovery requests through (HTTP `CONNECT`). Default: the environment,
    /// read once when the options are made, with curl's rules
    /// ([`proxy_from_env`](token_keeper_driver::proxy_from_env)). A loopback
    /// destination is never proxied, whatever this says. A surf backend
    /// ([`TokenTransport::surf`]) cannot be told to use a proxy: a request
    /// the settings would tunnel fails with a transport error saying so (give
    /// `ProxySettings::none()` when the backend handles proxies itself).
    pub proxy: ProxySettings,
    /// Which certificates [`DirectHttp`](crate::DirectHttp) trusts for token
    /// and discovery requests (default: the Mozilla roots). Refused by
    /// [`AsyncTokenClient::with_options`] with a surf backend (its TLS is its
    /// own) or a `DirectHttp` that has roots of its own.
    pub tls: TlsSettings,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            manager: ManagerConfig::default(),
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
            .field("timeout", &self.timeout)
            .field("proxy", &self.proxy)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// A cheaply cloneable async token client that runs on any executor.
///
/// Waiting uses `event-listener` and timers use `async-io`: no executor
/// thread is ever blocked, no lock is held across an `.await`, and the same
/// client works under async-std, smol and tokio. Every token request (the
/// first fetch as much as a refresh ahead of expiry) runs on a thread of the
/// client's own, which drives it to completion with `async_io::block_on`: it
/// never occupies the caller's executor, and a caller whose future is dropped
/// while it waits (a timeout, `select!`) leaves the request running and every
/// other waiter to be woken by its outcome. The timer thread stops when the
/// last clone is dropped. One exception to "never blocks": the `DPoP` proof
/// of an API request is signed on the calling task, after the client's lock
/// is released; a [`Signer`](token_keeper::jose::Signer) that blocks (an HSM)
/// holds that executor thread while it signs (token requests are signed on
/// the client's own threads).
///
/// Every token and discovery request (the middleware's too) goes through the
/// [`TokenTransport`] given here: [`DirectHttp`](crate::DirectHttp)
/// (recommended: bounded reads, rustls) or a surf backend of your choice (see
/// [`AsyncTokenClient::new`]).
///
/// ```no_run
/// use token_keeper::{ClientAuth, ClientConfig, ClientSecret};
/// use token_keeper_surf::{AsyncTokenClient, DirectHttp};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let tokens = AsyncTokenClient::new(DirectHttp::new());
/// tokens.add_client(
///     "m2m",
///     ClientConfig::new("https://auth.example.com/connect/token", "m2m",
///                       ClientAuth::Basic(ClientSecret::new(std::env::var("CLIENT_SECRET")?)))?
///         .scope("api"),
/// )?;
/// let header = tokens.header("m2m").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AsyncTokenClient {
    engine: EngineHandle,
    io: Arc<AsyncIo>,
}

/// What the async side adds to the engine.
struct AsyncIo {
    /// Token and discovery requests go through this transport.
    http: TokenTransport,
    /// The proxy decision `DirectHttp` applies.
    proxy: Arc<ProxySettings>,
    timeout: Duration,
    /// Notified by the engine whenever a token request ends: waiting tasks re-ask the core.
    flight_ended: Arc<Event>,
}

impl std::fmt::Debug for AsyncTokenClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncTokenClient")
            .field("registry", self.engine.registry())
            .finish_non_exhaustive()
    }
}

impl AsyncTokenClient {
    /// A client sending token requests through `http`, with default options.
    ///
    /// The recommended transport is [`DirectHttp`](crate::DirectHttp): a
    /// connection of its own per token request, TLS through rustls, and hard
    /// bounds on what it reads, whatever the server sends:
    ///
    /// ```
    /// let tokens = token_keeper_surf::AsyncTokenClient::new(token_keeper_surf::DirectHttp::new());
    /// ```
    ///
    /// To keep token requests on a surf backend instead (its TLS settings),
    /// build the transport from a surf configuration with
    /// [`TokenTransport::surf`]: this crate builds a surf client of its own
    /// from it, with no middleware (token requests never pass through surf's
    /// `Redirect` or a logger) and keep-alive off:
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use token_keeper_surf::{AsyncTokenClient, TokenTransport};
    /// let tokens = AsyncTokenClient::new(TokenTransport::surf(surf::Config::new())?);
    /// # Ok(()) }
    /// ```
    ///
    /// surf's HTTP/1 pool (http-client 6) returns a connection to the pool
    /// even when an exchange on it was cancelled by a timeout or abandoned at
    /// the body size cap; the next request on that connection would read the
    /// previous one's late answer, and a token issued for one key could be
    /// cached for another. Token requests are rare, so a fresh connection
    /// each costs nothing that matters. The backend's own limits then apply:
    /// async-h1 (surf's `h1-client`) buffers an endless header line until the
    /// timeout, reads a body without `Content-Length` or chunking as empty and
    /// takes a `100 Continue` for the answer ([`DirectHttp`](crate::DirectHttp)
    /// does none of these).
    pub fn new(http: impl Into<TokenTransport>) -> AsyncTokenClient {
        AsyncTokenClient::with_options(http, ClientOptions::default())
            .expect("the default options are valid with every transport")
    }

    /// A client with these options. Refuses TLS settings the transport
    /// cannot apply (see [`ClientOptions::tls`]).
    pub fn with_options(
        http: impl Into<TokenTransport>,
        options: ClientOptions,
    ) -> Result<AsyncTokenClient, Error> {
        let mut http = http.into();
        if options.tls != TlsSettings::default() {
            http =
                match http {
                    TokenTransport::Direct(direct) if !direct.has_own_roots() => {
                        TokenTransport::Direct(DirectHttp::with_tls(&options.tls)?)
                    }
                    TokenTransport::Direct(_) => return Err(Error::Config(ConfigError::new(
                        "ClientOptions::tls and DirectHttp::with_root_certificates both set the \
                         roots of token requests: choose one",
                    ))),
                    _ => {
                        return Err(Error::Config(ConfigError::new(
                            "ClientOptions::tls applies to DirectHttp only: a surf backend's TLS \
                         is its own",
                        )))
                    }
                };
        }
        let flight_ended = Arc::new(Event::new());
        let notify = Arc::clone(&flight_ended);
        let sender = http.clone();
        let proxy = Arc::new(options.proxy);
        let sender_proxy = Arc::clone(&proxy);
        let timeout = options.timeout;
        // Background requests run on the engine's own threads, driven by async-io.
        let send: Box<BlockingSend> = Box::new(move |request, max_body| {
            async_io::block_on(transport::send(
                &sender,
                &sender_proxy,
                request,
                max_body,
                timeout,
            ))
        });
        let engine = Engine::start(
            options.manager,
            options.seed,
            options.clock,
            send,
            Box::new(move || {
                notify.notify(usize::MAX);
            }),
            // Log lines under this crate's name, the one its users filter on.
            env!("CARGO_CRATE_NAME"),
        );
        Ok(AsyncTokenClient {
            engine,
            io: Arc::new(AsyncIo {
                http,
                proxy,
                timeout,
                flight_ended,
            }),
        })
    }

    /// Registers a named client.
    pub fn add_client(&self, name: &str, config: ClientConfig) -> Result<(), Error> {
        self.engine.add_client(name, config)
    }

    /// The metadata of the authorization server at `issuer`
    /// (`/.well-known/openid-configuration`, falling back to
    /// `/.well-known/oauth-authorization-server`), fetched once and cached.
    pub async fn discover(&self, issuer: &str) -> Result<ServerMetadata, Error> {
        if let Some(metadata) = self.engine.registry().discovered(issuer) {
            return Ok(metadata);
        }
        let mut discovery = Discovery::new(issuer)?;
        let metadata = loop {
            let response = transport::send(
                &self.io.http,
                &self.io.proxy,
                discovery.request(),
                MAX_DISCOVERY_DOCUMENT,
                self.io.timeout,
            )
            .await
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

    /// The key of a named client's request changed by per-call overrides.
    pub fn key_with(&self, name: &str, overrides: &KeyOverrides) -> Result<KeyId, Error> {
        self.engine.key_with(name, overrides)
    }

    /// The `Authorization` header value for the named client: the cached
    /// token when valid, otherwise fetched (one request per key, however many
    /// tasks ask). Awaits only when no valid token is cached.
    pub async fn header(&self, name: &str) -> Result<HeaderValue, Error> {
        let (_, key) = self.engine.registry().lookup(name)?;
        self.header_for(key).await
    }

    /// The `Authorization` header value for a key.
    pub async fn header_for(&self, key: KeyId) -> Result<HeaderValue, Error> {
        let now = self.engine.clock().monotonic();
        if let Some(header) = self
            .engine
            .registry()
            .with_fresh(key, now, |s| s.header().clone())
        {
            return Ok(header);
        }
        self.acquire(key, None).await.map(|a| a.authorization)
    }

    /// Calls `f` with the named client's header without copying or
    /// reference-counting it when a Fresh token is cached.
    pub async fn with_header<R>(
        &self,
        name: &str,
        f: impl FnOnce(&HeaderValue) -> R,
    ) -> Result<R, Error> {
        let now = self.engine.clock().monotonic();
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
        self.acquire(key, None).await.map(|a| f(&a.authorization))
    }

    /// The named client's token with its remaining lifetime and scope, fetching one if needed.
    pub async fn token(&self, name: &str) -> Result<TokenInfo, Error> {
        let (_, key) = self.engine.registry().lookup(name)?;
        loop {
            self.acquire(key, None).await?;
            let core = self.engine.lock_core();
            if let Some(info) = TokenInfo::of(&core, key, self.engine.clock().now()) {
                return Ok(info);
            }
        }
    }

    /// Fetches a new token for the named client now, even if the cached one
    /// is Fresh, and waits for the outcome. Respects backoff.
    pub async fn force_refresh(&self, name: &str) -> Result<(), Error> {
        let (_, key) = self.engine.registry().lookup(name)?;
        let (started, requests) = {
            let mut core = self.engine.lock_core();
            start_forced_refresh(
                &mut core,
                self.engine.registry(),
                key,
                self.engine.clock().now(),
            )
        };
        self.engine.dispatch(requests);
        let id = started?;
        self.wait_for(key, id).await;
        self.acquire(key, None).await.map(|_| ())
    }

    /// Drops the named client's cached token; the next call fetches a new one.
    pub fn invalidate(&self, name: &str) -> Result<(), Error> {
        self.engine.invalidate(name)
    }

    /// The headers for a request about to be sent with `method` to `uri`:
    /// `Authorization`, and for a DPoP-bound token a fresh `DPoP` proof for
    /// exactly this request. Any token request this needs goes through the
    /// client's own surf client.
    pub async fn authorize_request(
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
        self.acquire(key, Some((method, uri))).await
    }

    /// Reports a protected resource's response to a request that carried
    /// `sent` for `key`, and says whether to retry it.
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

    /// The proxy settings this client applies (see [`ClientOptions::proxy`]).
    pub fn proxy(&self) -> &ProxySettings {
        &self.io.proxy
    }

    /// How token and discovery requests are sent.
    pub fn transport(&self) -> &TokenTransport {
        &self.io.http
    }
}

impl AsyncTokenClient {
    /// The slow path: asks the core until it attaches or fails, awaiting the
    /// token requests the engine sends on its own threads. Cancel-safe: a
    /// caller dropped while it waits leaves the request and every other
    /// waiter to the engine.
    async fn acquire(
        &self,
        key: KeyId,
        request: Option<(&Method, &Uri)>,
    ) -> Result<Authorized, Error> {
        let engine = &*self.engine;
        let mut waited = false;
        loop {
            let round = {
                let mut core = engine.lock_core();
                let round = step(
                    &mut core,
                    engine.registry(),
                    key,
                    request,
                    engine.clock().now(),
                    waited,
                );
                engine.notify_timers();
                round
            };
            match round {
                Step::Done(result, requests) => {
                    engine.dispatch(requests);
                    // Signed with the lock released: a slow signer holds up this call only.
                    return result.and_then(Attached::sign);
                }
                Step::Wait { id, requests } => {
                    engine.dispatch(requests);
                    self.wait_for(key, id).await;
                }
            }
            waited = true;
        }
    }

    /// Awaits the end of request `id` for `key`, bounded by the core's request deadline.
    async fn wait_for(&self, key: KeyId, id: RequestId) {
        let listener = {
            let core = self.engine.lock_core();
            if core.in_flight(key) != Some(id) {
                return;
            }
            // Registered under the lock: the notification cannot slip in between.
            self.io.flight_ended.listen()
        };
        let deadline = async {
            async_io::Timer::after(self.engine.request_deadline()).await;
            true
        };
        let ended = async {
            listener.await;
            false
        };
        // Only past the deadline may a waiter make the core give up: giving
        // up wakes every waiter, and waiters woken for another reason that
        // gave up in turn would wake each other without end.
        if ended.or(deadline).await {
            self.engine.give_up_if_still_in_flight(key, id);
        }
    }
}
