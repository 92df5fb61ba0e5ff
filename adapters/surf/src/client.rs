//! [`AsyncTokenClient`]: the runtime-agnostic async client.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use event_listener::Event;
use futures_lite::FutureExt;
use http::{HeaderValue, Method, Uri};
use token_keeper::discovery::{Discovery, DiscoveryStep, ServerMetadata, MAX_DISCOVERY_DOCUMENT};
use token_keeper::{
    Attach, ClientConfig, KeyId, KeyOverrides, ManagerConfig, RequestId, ResourceOutcome,
    ResourceResponse, TokenManager, TokenRequest, TransportError,
};
use token_keeper_common::{
    random_seed, start_forced_refresh, step, Authorized, ClientStats, Clock, Error, Registry, Step,
    SystemClock, TokenInfo,
};

use crate::transport;

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
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            manager: ManagerConfig::default(),
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
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// State shared by the client, its timer thread and its sender threads.
pub(crate) struct Shared {
    core: Mutex<TokenManager>,
    /// Notified whenever a token request ends: waiting tasks re-ask the core.
    flight_ended: Event,
    /// Signalled whenever the core's next deadline may have moved (timer thread).
    timers: Condvar,
    registry: Registry,
    clock: Arc<dyn Clock>,
    http: surf::Client,
    timeout: Duration,
    stopping: AtomicBool,
    request_deadline: Duration,
}

/// Stops the timer thread when the last client clone goes away.
struct TimerGuard {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    _on_clock_jump: Arc<dyn Fn() + Send + Sync>,
}

impl Drop for TimerGuard {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        {
            let _core = self.shared.lock_core();
            self.shared.timers.notify_all();
        }
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

/// A cheaply cloneable async token client that runs on any executor.
///
/// Waiting uses `event-listener` and timers use `async-io`: no executor
/// thread is ever blocked, no lock is held across an `.await`, and the same
/// client works under async-std, smol and tokio. Refreshes ahead of expiry run
/// on a background thread of the client's own (which drives its request to
/// completion with `async_io::block_on`), so they never occupy the caller's
/// executor; the thread stops when the last clone is dropped.
///
/// Every token request (the middleware's too) goes through the surf
/// [`Client`](surf::Client) given here, so the application's choice of HTTP
/// backend and TLS holds; give it one with keep-alive off (see
/// [`AsyncTokenClient::new`]).
///
/// ```no_run
/// use token_keeper::{ClientAuth, ClientConfig, ClientSecret};
/// use token_keeper_surf::AsyncTokenClient;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let http: surf::Client = surf::Config::new().set_http_keep_alive(false).try_into()?;
/// let tokens = AsyncTokenClient::new(http);
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
    shared: Arc<Shared>,
    _timer: Arc<TimerGuard>,
}

impl std::fmt::Debug for AsyncTokenClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncTokenClient")
            .field("registry", &self.shared.registry)
            .finish_non_exhaustive()
    }
}

impl AsyncTokenClient {
    /// A client sending token requests through `http`, with default options.
    ///
    /// Give it a surf client **with keep-alive off**, built with the backend
    /// of your choice:
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let http: surf::Client = surf::Config::new().set_http_keep_alive(false).try_into()?;
    /// let tokens = token_keeper_surf::AsyncTokenClient::new(http);
    /// # Ok(()) }
    /// ```
    ///
    /// surf's HTTP/1 pool (http-client 6) returns a connection to the pool
    /// even when an exchange on it was cancelled by a timeout or abandoned at
    /// the body size cap; the next request on that connection would read the
    /// previous one's late answer, and a token issued for one key could be
    /// cached for another. Token requests are rare, so a fresh connection
    /// each costs nothing that matters.
    pub fn new(http: surf::Client) -> AsyncTokenClient {
        AsyncTokenClient::with_options(http, ClientOptions::default())
    }

    /// A client with these options.
    pub fn with_options(http: surf::Client, options: ClientOptions) -> AsyncTokenClient {
        let shared = Arc::new(Shared {
            request_deadline: options.manager.request_timeout,
            registry: Registry::new(options.manager.max_keys),
            core: Mutex::new(TokenManager::new(options.manager, options.seed)),
            flight_ended: Event::new(),
            timers: Condvar::new(),
            clock: Arc::clone(&options.clock),
            http,
            timeout: options.timeout,
            stopping: AtomicBool::new(false),
        });
        let for_thread = Arc::clone(&shared);
        let thread = token_keeper_common::spawn_running("token-keeper-timer", move || {
            for_thread.run_timers()
        })
        .expect("spawning the token-keeper timer thread");
        let for_jump = Arc::downgrade(&shared);
        let on_clock_jump: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            if let Some(shared) = for_jump.upgrade() {
                let _core = shared.lock_core();
                shared.timers.notify_all();
                shared.flight_ended.notify(usize::MAX);
            }
        });
        options.clock.subscribe(Arc::downgrade(&on_clock_jump));
        AsyncTokenClient {
            _timer: Arc::new(TimerGuard {
                shared: Arc::clone(&shared),
                thread: Mutex::new(Some(thread)),
                _on_clock_jump: on_clock_jump,
            }),
            shared,
        }
    }

    /// Registers a named client.
    pub fn add_client(&self, name: &str, config: ClientConfig) -> Result<(), Error> {
        let mut core = self.shared.lock_core();
        self.shared.registry.add_client(&mut core, name, config)
    }

    /// The metadata of the authorization server at `issuer`
    /// (`/.well-known/openid-configuration`, falling back to
    /// `/.well-known/oauth-authorization-server`), fetched once and cached.
    pub async fn discover(&self, issuer: &str) -> Result<ServerMetadata, Error> {
        if let Some(metadata) = self.shared.registry.discovered(issuer) {
            return Ok(metadata);
        }
        let mut discovery = Discovery::new(issuer)?;
        let metadata = loop {
            let response = transport::send(
                &self.shared.http,
                discovery.request(),
                MAX_DISCOVERY_DOCUMENT,
                self.shared.timeout,
            )
            .await
            .map_err(Error::Transport)?;
            match discovery.handle_response(&response) {
                DiscoveryStep::Done(metadata) => break metadata,
                DiscoveryStep::TryNext => continue,
                DiscoveryStep::Failed(error) => return Err(Error::Discovery(error)),
            }
        };
        self.shared
            .registry
            .remember_discovery(issuer, metadata.clone());
        Ok(metadata)
    }

    /// The key of a named client's configured request.
    pub fn key(&self, name: &str) -> Result<KeyId, Error> {
        self.shared.registry.lookup(name).map(|(_, key)| key)
    }

    /// The key of a named client's request changed by per-call overrides.
    pub fn key_with(&self, name: &str, overrides: &KeyOverrides) -> Result<KeyId, Error> {
        let (handle, _) = self.shared.registry.lookup(name)?;
        Ok(self.shared.lock_core().key(handle, overrides)?)
    }

    /// The `Authorization` header value for the named client: the cached
    /// token when valid, otherwise fetched (one request per key, however many
    /// tasks ask). Awaits only when no valid token is cached.
    pub async fn header(&self, name: &str) -> Result<HeaderValue, Error> {
        let (_, key) = self.shared.registry.lookup(name)?;
        self.header_for(key).await
    }

    /// The `Authorization` header value for a key.
    pub async fn header_for(&self, key: KeyId) -> Result<HeaderValue, Error> {
        self.header_via(key, &self.shared.http).await
    }

    /// The header for a key, sending any token request this caller must make through `via`.
    pub(crate) async fn header_via(
        &self,
        key: KeyId,
        via: &surf::Client,
    ) -> Result<HeaderValue, Error> {
        let now = self.shared.clock.monotonic();
        if let Some(header) = self
            .shared
            .registry
            .with_fresh(key, now, |s| s.header().clone())
        {
            return Ok(header);
        }
        self.shared
            .acquire(key, None, |a| a.header().clone(), via)
            .await
    }

    /// Calls `f` with the named client's header without copying or
    /// reference-counting it when a Fresh token is cached.
    pub async fn with_header<R>(
        &self,
        name: &str,
        f: impl FnOnce(&HeaderValue) -> R,
    ) -> Result<R, Error> {
        let mut f = Some(f);
        let now = self.shared.clock.monotonic();
        let fast = self
            .shared
            .registry
            .with_fresh_named(name, now, |s| (f.take().expect("called once"))(s.header()))?;
        if let Some(result) = fast {
            return Ok(result);
        }
        let (_, key) = self.shared.registry.lookup(name)?;
        let f = f.take().expect("not called on the fast path");
        self.shared
            .acquire(key, None, |a| f(a.header()), &self.shared.http)
            .await
    }

    /// The named client's token with its remaining lifetime and scope, fetching one if needed.
    pub async fn token(&self, name: &str) -> Result<TokenInfo, Error> {
        let (_, key) = self.shared.registry.lookup(name)?;
        loop {
            self.shared
                .acquire(key, None, |_| (), &self.shared.http)
                .await?;
            let core = self.shared.lock_core();
            if let Some(info) = TokenInfo::of(&core, key, self.shared.clock.now()) {
                return Ok(info);
            }
        }
    }

    /// Fetches a new token for the named client now, even if the cached one
    /// is Fresh, and waits for the outcome. Respects backoff.
    pub async fn force_refresh(&self, name: &str) -> Result<(), Error> {
        let (_, key) = self.shared.registry.lookup(name)?;
        let (started, requests) = {
            let mut core = self.shared.lock_core();
            start_forced_refresh(
                &mut core,
                &self.shared.registry,
                key,
                self.shared.clock.now(),
            )
        };
        self.shared.dispatch(requests);
        let id = started?;
        self.shared.wait_for(key, id).await;
        self.shared
            .acquire(key, None, |_| (), &self.shared.http)
            .await
    }

    /// Drops the named client's cached token; the next call fetches a new one.
    pub fn invalidate(&self, name: &str) -> Result<(), Error> {
        let (_, key) = self.shared.registry.lookup(name)?;
        let requests = {
            let mut core = self.shared.lock_core();
            core.invalidate(key, self.shared.clock.now());
            self.shared.registry.drain(&mut core)
        };
        self.shared.dispatch(requests);
        Ok(())
    }

    /// The headers for a request about to be sent with `method` to `uri`:
    /// `Authorization`, and for a DPoP-bound token a fresh `DPoP` proof for
    /// exactly this request. Any token request this needs goes through `via`.
    pub async fn authorize_request(
        &self,
        key: KeyId,
        method: &Method,
        uri: &Uri,
        via: &surf::Client,
    ) -> Result<Authorized, Error> {
        let now = self.shared.clock.monotonic();
        let fast = self.shared.registry.with_fresh(key, now, |s| Authorized {
            authorization: s.header().clone(),
            dpop: None,
        });
        if let Some(authorized) = fast {
            return Ok(authorized);
        }
        self.shared
            .acquire(key, Some((method, uri)), Authorized::from_attach, via)
            .await?
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
        let (outcome, requests) = {
            let mut core = self.shared.lock_core();
            let response = ResourceResponse {
                status,
                headers,
                sent_authorization: Some(sent),
                uri: Some(uri),
                attempt,
            };
            let outcome = core.handle_resource_response(key, &response, self.shared.clock.now());
            (outcome, self.shared.registry.drain(&mut core))
        };
        self.shared.dispatch(requests);
        outcome
    }

    /// What the client has done so far.
    pub fn stats(&self) -> ClientStats {
        self.shared.registry.stats()
    }

    /// The surf client token requests go through by default.
    pub fn http_client(&self) -> &surf::Client {
        &self.shared.http
    }
}

impl Shared {
    fn lock_core(&self) -> MutexGuard<'_, TokenManager> {
        // Never held across an await: every use locks, calls the core, drains, unlocks.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The slow path: asks the core until it attaches or fails, sending this
    /// caller's own token request from this task and awaiting others' requests.
    async fn acquire<R>(
        self: &Arc<Self>,
        key: KeyId,
        request: Option<(&Method, &Uri)>,
        f: impl FnOnce(&Attach<'_>) -> R,
        via: &surf::Client,
    ) -> Result<R, Error> {
        let mut waited = false;
        let mut f = Some(f);
        loop {
            let round = {
                let mut core = self.lock_core();
                let round = step(
                    &mut core,
                    &self.registry,
                    key,
                    request,
                    self.clock.now(),
                    waited,
                    &mut f,
                );
                self.timers.notify_all();
                round
            };
            match round {
                Step::Done(result, others) => {
                    self.dispatch(others);
                    return result;
                }
                Step::Send { own, others } => {
                    self.dispatch(others);
                    let id = own.id();
                    let outcome = self.send(own, via).await;
                    self.finish(id, outcome);
                }
                Step::Wait { id, others } => {
                    self.dispatch(others);
                    self.wait_for(key, id).await;
                }
            }
            waited = true;
        }
    }

    /// Awaits the end of request `id` for `key`, bounded by the core's request deadline.
    async fn wait_for(self: &Arc<Self>, key: KeyId, id: RequestId) {
        let listener = {
            let core = self.lock_core();
            if core.in_flight(key) != Some(id) {
                return;
            }
            // Registered under the lock: the notification cannot slip in between.
            self.flight_ended.listen()
        };
        let deadline = async {
            async_io::Timer::after(self.request_deadline).await;
        };
        let ended = async {
            listener.await;
        };
        ended.or(deadline).await;
        let requests = {
            let mut core = self.lock_core();
            if core.in_flight(key) != Some(id) {
                return;
            }
            // Still in flight after the deadline: let the core give up on it.
            core.handle_timeout(self.clock.now());
            self.registry.drain(&mut core)
        };
        self.flight_ended.notify(usize::MAX);
        self.dispatch(requests);
    }

    async fn send(
        &self,
        request: TokenRequest,
        via: &surf::Client,
    ) -> Result<http::Response<Vec<u8>>, TransportError> {
        let max_body = self.lock_core().config().max_response_body;
        transport::send(via, request.into_request(), max_body, self.timeout).await
    }

    /// Sends each request on a thread of its own, off every caller's path and
    /// off every executor.
    fn dispatch(self: &Arc<Self>, requests: Vec<TokenRequest>) {
        for request in requests {
            let shared = Arc::clone(self);
            let id = request.id();
            let spawned = std::thread::Builder::new()
                .name("token-keeper-refresh".into())
                .spawn(move || {
                    let outcome = async_io::block_on(shared.send(request, &shared.http));
                    shared.finish(id, outcome);
                });
            if let Err(error) = spawned {
                let failure = TransportError::new(
                    token_keeper::TransportErrorKind::Other,
                    format!("could not start a thread for the token request: {error}"),
                );
                self.finish(id, Err(failure));
            }
        }
    }

    /// Feeds a request's outcome to the core and wakes everyone who waits.
    fn finish(
        self: &Arc<Self>,
        id: RequestId,
        outcome: Result<http::Response<Vec<u8>>, TransportError>,
    ) {
        let requests = {
            let mut core = self.lock_core();
            let now = self.clock.now();
            // An answer the core no longer waits for (it gave up on the request) is dropped.
            let _late = match outcome {
                Ok(response) => core.handle_response(id, response, now),
                Err(error) => core.handle_transport_error(id, error, now),
            };
            let requests = self.registry.drain(&mut core);
            self.timers.notify_all();
            requests
        };
        self.flight_ended.notify(usize::MAX);
        self.dispatch(requests);
    }

    /// The timer thread: sleeps until the core's next deadline, then lets the
    /// core act (refresh ahead, end backoffs, give up on lost requests).
    fn run_timers(self: &Arc<Self>) {
        let mut core = self.lock_core();
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let now = self.clock.now();
            let wait = match core.poll_timeout() {
                Some((deadline, _)) if deadline <= now.monotonic() => {
                    core.handle_timeout(now);
                    let requests = self.registry.drain(&mut core);
                    drop(core);
                    self.flight_ended.notify(usize::MAX);
                    self.dispatch(requests);
                    core = self.lock_core();
                    continue;
                }
                Some((deadline, _)) => deadline.saturating_duration_since(now.monotonic()),
                None => Duration::from_secs(3600),
            };
            core = self
                .timers
                .wait_timeout(core, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}
