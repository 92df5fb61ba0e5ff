//! [`TokenClient`]: the thread-safe blocking client.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use http::{HeaderValue, Method, Uri};
use token_keeper::discovery::{Discovery, DiscoveryStep, ServerMetadata, MAX_DISCOVERY_DOCUMENT};
use token_keeper::{
    Attach, ClientConfig, KeyId, KeyOverrides, ManagerConfig, ResourceOutcome, ResourceResponse,
    TokenManager, TokenRequest,
};
use token_keeper_common::{
    random_seed, start_forced_refresh, step, Authorized, ClientStats, Registry, Step, TokenInfo,
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

/// State shared by the client, its timer thread and its sender threads.
pub(crate) struct Shared {
    core: Mutex<TokenManager>,
    /// Signalled whenever a token request ends: waiters re-ask the core.
    flight_ended: Condvar,
    /// Signalled whenever the core's next deadline may have moved.
    timers: Condvar,
    registry: Registry,
    clock: Arc<dyn Clock>,
    agent: ureq::Agent,
    stopping: AtomicBool,
    request_deadline: Duration,
}

/// Stops the timer thread when the last [`TokenClient`] clone goes away.
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
    shared: Arc<Shared>,
    _timer: Arc<TimerGuard>,
}

impl std::fmt::Debug for TokenClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenClient")
            .field("registry", &self.shared.registry)
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
        let shared = Arc::new(Shared {
            request_deadline: options.manager.request_timeout,
            registry: Registry::new(options.manager.max_keys),
            core: Mutex::new(TokenManager::new(options.manager, options.seed)),
            flight_ended: Condvar::new(),
            timers: Condvar::new(),
            clock: Arc::clone(&options.clock),
            agent: transport::token_agent(options.connect_timeout, options.timeout),
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
                shared.flight_ended.notify_all();
            }
        });
        options.clock.subscribe(Arc::downgrade(&on_clock_jump));
        TokenClient {
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
    pub fn discover(&self, issuer: &str) -> Result<ServerMetadata, Error> {
        if let Some(metadata) = self.shared.registry.discovered(issuer) {
            return Ok(metadata);
        }
        let mut discovery = Discovery::new(issuer)?;
        let metadata = loop {
            let response = transport::send(
                &self.shared.agent,
                discovery.request(),
                MAX_DISCOVERY_DOCUMENT,
            )
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

    /// The key of a named client's request changed by per-call overrides
    /// (another scope, resource or parameter): a separate cached token.
    pub fn key_with(&self, name: &str, overrides: &KeyOverrides) -> Result<KeyId, Error> {
        let (handle, _) = self.shared.registry.lookup(name)?;
        Ok(self.shared.lock_core().key(handle, overrides)?)
    }

    /// The `Authorization` header value for the named client: the cached
    /// token when valid, otherwise fetched (one request per key, however many
    /// threads ask). Blocks only when no valid token is cached.
    pub fn header(&self, name: &str) -> Result<HeaderValue, Error> {
        let (_, key) = self.shared.registry.lookup(name)?;
        self.header_for(key)
    }

    /// The `Authorization` header value for a key.
    pub fn header_for(&self, key: KeyId) -> Result<HeaderValue, Error> {
        let now = self.shared.clock.monotonic();
        if let Some(header) = self
            .shared
            .registry
            .with_fresh(key, now, |s| s.header().clone())
        {
            return Ok(header);
        }
        self.shared.acquire(key, None, |a| a.header().clone())
    }

    /// Calls `f` with the named client's header without copying or
    /// reference-counting it: the zero-contention hit path, for callers that
    /// only need to read the value (for example to write it into a buffer).
    pub fn with_header<R>(
        &self,
        name: &str,
        f: impl FnOnce(&HeaderValue) -> R,
    ) -> Result<R, Error> {
        self.with_header_at(name, self.shared.clock.monotonic(), f)
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
            .shared
            .registry
            .with_fresh_named(name, now, |s| (f.take().expect("called once"))(s.header()))?;
        if let Some(result) = fast {
            return Ok(result);
        }
        let (_, key) = self.shared.registry.lookup(name)?;
        let f = f.take().expect("not called on the fast path");
        self.shared.acquire(key, None, |a| f(a.header()))
    }

    /// The named client's token with its remaining lifetime and scope,
    /// fetching one if needed.
    pub fn token(&self, name: &str) -> Result<TokenInfo, Error> {
        let (_, key) = self.shared.registry.lookup(name)?;
        loop {
            self.shared.acquire(key, None, |_| ())?;
            let core = self.shared.lock_core();
            // The token may expire between the two steps; then ask again.
            if let Some(info) = TokenInfo::of(&core, key, self.shared.clock.now()) {
                return Ok(info);
            }
        }
    }

    /// Fetches a new token for the named client now, even if the cached one
    /// is Fresh, and waits for the outcome. Respects backoff.
    pub fn force_refresh(&self, name: &str) -> Result<(), Error> {
        let (_, key) = self.shared.registry.lookup(name)?;
        let mut core = self.shared.lock_core();
        let (started, requests) = start_forced_refresh(
            &mut core,
            &self.shared.registry,
            key,
            self.shared.clock.now(),
        );
        drop(core);
        self.shared.dispatch(requests);
        let id = started?;
        let mut core = self.shared.lock_core();
        while core.in_flight(key) == Some(id) {
            core = self.shared.wait_for_flight(core);
        }
        drop(core);
        self.shared.acquire(key, None, |_| ()).map(|_| ())
    }

    /// Drops the named client's cached token; the next call fetches a new one.
    pub fn invalidate(&self, name: &str) -> Result<(), Error> {
        let (_, key) = self.shared.registry.lookup(name)?;
        let mut core = self.shared.lock_core();
        core.invalidate(key, self.shared.clock.now());
        let requests = self.shared.registry.drain(&mut core);
        drop(core);
        self.shared.dispatch(requests);
        Ok(())
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
        let now = self.shared.clock.monotonic();
        let fast = self.shared.registry.with_fresh(key, now, |s| Authorized {
            authorization: s.header().clone(),
            dpop: None,
        });
        if let Some(authorized) = fast {
            return Ok(authorized);
        }
        self.shared
            .acquire(key, Some((method, uri)), Authorized::from_attach)?
    }

    /// Whether the named client binds its tokens with DPoP.
    pub fn uses_dpop(&self, name: &str) -> Result<bool, Error> {
        let (handle, _) = self.shared.registry.lookup(name)?;
        Ok(self
            .shared
            .lock_core()
            .client_config(handle)
            .dpop_signer()
            .is_some())
    }

    /// Reports a protected resource's response to a request that carried
    /// `sent` for `key`, and says whether to retry it (see
    /// [`TokenManager::handle_resource_response`]).
    pub fn handle_resource_response(
        &self,
        key: KeyId,
        status: http::StatusCode,
        headers: &http::HeaderMap,
        sent: &HeaderValue,
        uri: &Uri,
        attempt: u32,
    ) -> ResourceOutcome {
        let mut core = self.shared.lock_core();
        let response = ResourceResponse {
            status,
            headers,
            sent_authorization: Some(sent),
            uri: Some(uri),
            attempt,
        };
        let outcome = core.handle_resource_response(key, &response, self.shared.clock.now());
        let requests = self.shared.registry.drain(&mut core);
        drop(core);
        self.shared.dispatch(requests);
        outcome
    }

    /// What the client has done so far.
    pub fn stats(&self) -> ClientStats {
        self.shared.registry.stats()
    }

    /// The clock this client reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.shared.clock
    }
}

impl Shared {
    fn lock_core(&self) -> MutexGuard<'_, TokenManager> {
        // A panic while holding the lock cannot leave the core in a state worse
        // than losing its tokens; keep serving rather than poisoning every caller.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The slow path: asks the core until it attaches or fails, sending this
    /// caller's own token request inline and waiting on others' requests.
    fn acquire<R>(
        self: &Arc<Self>,
        key: KeyId,
        request: Option<(&Method, &Uri)>,
        f: impl FnOnce(&Attach<'_>) -> R,
    ) -> Result<R, Error> {
        let mut waited = false;
        let mut f = Some(f);
        let mut core = self.lock_core();
        loop {
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
            match round {
                Step::Done(result, others) => {
                    drop(core);
                    self.dispatch(others);
                    return result;
                }
                Step::Send { own, others } => {
                    drop(core);
                    self.dispatch(others);
                    self.send_and_handle(own);
                    core = self.lock_core();
                }
                Step::Wait { id, others } => {
                    if !others.is_empty() {
                        drop(core);
                        self.dispatch(others);
                        core = self.lock_core();
                    }
                    // Checked under the lock, so the end of the flight cannot be missed.
                    if core.in_flight(key) == Some(id) {
                        core = self.wait_for_flight(core);
                    }
                }
            }
            waited = true;
        }
    }

    /// Waits until some token request ends, bounded by the core's request deadline.
    fn wait_for_flight<'a>(
        self: &'a Arc<Self>,
        core: MutexGuard<'a, TokenManager>,
    ) -> MutexGuard<'a, TokenManager> {
        let (mut core, timeout) = self
            .flight_ended
            .wait_timeout(core, self.request_deadline)
            .unwrap_or_else(|e| e.into_inner());
        if timeout.timed_out() {
            // The request outlived the core's deadline: let the core give up on it.
            core.handle_timeout(self.clock.now());
            let requests = self.registry.drain(&mut core);
            self.flight_ended.notify_all();
            drop(core);
            self.dispatch(requests);
            return self.lock_core();
        }
        core
    }

    /// Sends each request on a thread of its own, off every caller's path.
    fn dispatch(self: &Arc<Self>, requests: Vec<TokenRequest>) {
        for request in requests {
            let shared = Arc::clone(self);
            let id = request.id();
            let spawned = std::thread::Builder::new()
                .name("token-keeper-refresh".into())
                .spawn(move || shared.send_and_handle(request));
            if let Err(error) = spawned {
                let failure = token_keeper::TransportError::new(
                    token_keeper::TransportErrorKind::Other,
                    format!("could not start a thread for the token request: {error}"),
                );
                self.finish(id, Err(failure));
            }
        }
    }

    fn send_and_handle(self: &Arc<Self>, request: TokenRequest) {
        let id = request.id();
        let max_body = self.lock_core().config().max_response_body;
        let outcome = transport::send(&self.agent, request.into_request(), max_body);
        self.finish(id, outcome);
    }

    /// Feeds a request's outcome to the core and wakes everyone who waits.
    fn finish(
        self: &Arc<Self>,
        id: token_keeper::RequestId,
        outcome: Result<http::Response<Vec<u8>>, token_keeper::TransportError>,
    ) {
        let mut core = self.lock_core();
        let now = self.clock.now();
        // An answer the core no longer waits for (it gave up on the request) is dropped.
        let _late = match outcome {
            Ok(response) => core.handle_response(id, response, now),
            Err(error) => core.handle_transport_error(id, error, now),
        };
        let requests = self.registry.drain(&mut core);
        self.flight_ended.notify_all();
        self.timers.notify_all();
        drop(core);
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
                    self.flight_ended.notify_all();
                    drop(core);
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
