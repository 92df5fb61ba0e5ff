//! [`TokenClient`]: the thread-safe blocking client.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use http::HeaderValue;
use token_keeper::discovery::{Discovery, DiscoveryStep, ServerMetadata, MAX_DISCOVERY_DOCUMENT};
use token_keeper::{
    AccessToken, Authorization, ClientConfig, ClientHandle, Event, ForcedRefresh, KeyId,
    KeyOverrides, ManagerConfig, RequestId, ResourceOutcome, ResourceResponse, Snapshot,
    TokenManager, TokenRequest, TokenType,
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

/// A token as [`TokenClient::token`] returns it.
#[derive(Clone, Debug)]
pub struct TokenInfo {
    /// The access token (redacted in `Debug`).
    pub access_token: AccessToken,
    /// Its type.
    pub token_type: TokenType,
    /// How long it may still be used.
    pub expires_in: Duration,
    /// The scope granted, when the server said.
    pub scope: Option<String>,
}

/// Counts of what the client did, for reports and demos.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Token requests started.
    pub token_requests: u64,
    /// Tokens received and cached.
    pub tokens_acquired: u64,
    /// Token requests that failed.
    pub failures: u64,
}

#[derive(Default)]
struct Counters {
    token_requests: AtomicU64,
    tokens_acquired: AtomicU64,
    failures: AtomicU64,
}

/// What the hit path reads without a lock: client names and per-key snapshots.
struct Published {
    names: ArcSwap<HashMap<String, (ClientHandle, KeyId)>>,
    snapshots: Box<[ArcSwapOption<Snapshot>]>,
}

/// State shared by the client, its timer thread and its sender threads.
pub(crate) struct Shared {
    core: Mutex<TokenManager>,
    /// Signalled whenever a token request ends: waiters re-ask the core.
    flight_ended: Condvar,
    /// Signalled whenever the core's next deadline may have moved.
    timers: Condvar,
    published: Published,
    clock: Arc<dyn Clock>,
    agent: ureq::Agent,
    stopping: AtomicBool,
    discovered: Mutex<HashMap<String, ServerMetadata>>,
    request_deadline: Duration,
    counters: Counters,
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
        let names: Vec<String> = self.shared.published.names.load().keys().cloned().collect();
        f.debug_struct("TokenClient")
            .field("clients", &names)
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
        let snapshots = (0..options.manager.max_keys)
            .map(|_| ArcSwapOption::empty())
            .collect::<Vec<_>>()
            .into_boxed_slice();
        let shared = Arc::new(Shared {
            request_deadline: options.manager.request_timeout,
            core: Mutex::new(TokenManager::new(options.manager, options.seed)),
            flight_ended: Condvar::new(),
            timers: Condvar::new(),
            published: Published {
                names: ArcSwap::from_pointee(HashMap::new()),
                snapshots,
            },
            clock: Arc::clone(&options.clock),
            agent: transport::token_agent(options.connect_timeout, options.timeout),
            stopping: AtomicBool::new(false),
            discovered: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        });
        let for_thread = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("token-keeper-timer".into())
            .spawn(move || for_thread.run_timers())
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
        let handle = core.add_client(name, config)?;
        let key = core.default_key(handle);
        let mut names = HashMap::clone(&self.shared.published.names.load());
        names.insert(name.to_owned(), (handle, key));
        self.shared.published.names.store(Arc::new(names));
        Ok(())
    }

    /// The metadata of the authorization server at `issuer`
    /// (`/.well-known/openid-configuration`, falling back to
    /// `/.well-known/oauth-authorization-server`), fetched once and cached.
    pub fn discover(&self, issuer: &str) -> Result<ServerMetadata, Error> {
        let cached = self
            .shared
            .discovered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(issuer)
            .cloned();
        if let Some(metadata) = cached {
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
            .discovered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(issuer.to_owned(), metadata.clone());
        Ok(metadata)
    }

    /// The key of a named client's configured request.
    pub fn key(&self, name: &str) -> Result<KeyId, Error> {
        self.shared.lookup(name).map(|(_, key)| key)
    }

    /// The key of a named client's request changed by per-call overrides
    /// (another scope, resource or parameter): a separate cached token.
    pub fn key_with(&self, name: &str, overrides: &KeyOverrides) -> Result<KeyId, Error> {
        let (handle, _) = self.shared.lookup(name)?;
        Ok(self.shared.lock_core().key(handle, overrides)?)
    }

    /// The `Authorization` header value for the named client: the cached
    /// token when valid, otherwise fetched (one request per key, however many
    /// threads ask). Blocks only when no valid token is cached.
    pub fn header(&self, name: &str) -> Result<HeaderValue, Error> {
        let (_, key) = self.shared.lookup(name)?;
        self.header_for(key)
    }

    /// The `Authorization` header value for a key.
    pub fn header_for(&self, key: KeyId) -> Result<HeaderValue, Error> {
        if let Some(header) = self.shared.with_fresh_snapshot(key, |s| s.header().clone()) {
            return Ok(header);
        }
        self.shared.acquire(key, |header| header.clone())
    }

    /// Calls `f` with the named client's header without copying or
    /// reference-counting it: the zero-contention hit path, for callers that
    /// only need to read the value (for example to write it into a buffer).
    pub fn with_header<R>(
        &self,
        name: &str,
        f: impl FnOnce(&HeaderValue) -> R,
    ) -> Result<R, Error> {
        let names = self.shared.published.names.load();
        let Some(&(_, key)) = names.get(name) else {
            return Err(Error::UnknownClient(name.to_owned()));
        };
        let mut f = Some(f);
        if let Some(result) = self
            .shared
            .with_fresh_snapshot(key, |s| (f.take().expect("called once"))(s.header()))
        {
            return Ok(result);
        }
        let f = f.take().expect("not called on the fast path");
        self.shared.acquire(key, f)
    }

    /// The named client's token with its remaining lifetime and scope,
    /// fetching one if needed.
    pub fn token(&self, name: &str) -> Result<TokenInfo, Error> {
        let (_, key) = self.shared.lookup(name)?;
        loop {
            self.shared.acquire(key, |_| ())?;
            let core = self.shared.lock_core();
            // The token may expire between the two steps; then ask again.
            if let Some(view) = core.token(key, self.shared.clock.now()) {
                return Ok(TokenInfo {
                    access_token: view.access_token().clone(),
                    token_type: view.token_type(),
                    expires_in: view.remaining(),
                    scope: view.scope().map(str::to_owned),
                });
            }
        }
    }

    /// Fetches a new token for the named client now, even if the cached one
    /// is Fresh, and waits for the outcome. Respects backoff.
    pub fn force_refresh(&self, name: &str) -> Result<(), Error> {
        let (_, key) = self.shared.lookup(name)?;
        let mut core = self.shared.lock_core();
        let now = self.shared.clock.now();
        let id = match core.force_refresh(key, now) {
            ForcedRefresh::Started(id) | ForcedRefresh::InFlight(id) => id,
            ForcedRefresh::BackingOff { retry_at } => {
                let retry_in = retry_at.saturating_duration_since(now.monotonic());
                let cause = match core.authorize(key, now) {
                    Authorization::Unavailable { error, .. } => error.clone(),
                    _ => token_keeper::TokenError::Transport(token_keeper::TransportError::new(
                        token_keeper::TransportErrorKind::Other,
                        "backing off after a failed refresh",
                    )),
                };
                let requests = self.shared.drain(&mut core);
                drop(core);
                self.shared.dispatch(requests, None);
                return Err(Error::Unavailable { cause, retry_in });
            }
        };
        let requests = self.shared.drain(&mut core);
        drop(core);
        self.shared.dispatch(requests, None);
        let mut core = self.shared.lock_core();
        while core.in_flight(key) == Some(id) {
            core = self.shared.wait_for_flight(core);
        }
        drop(core);
        self.shared.acquire(key, |_| ()).map(|_| ())
    }

    /// Drops the named client's cached token; the next call fetches a new one.
    pub fn invalidate(&self, name: &str) -> Result<(), Error> {
        let (_, key) = self.shared.lookup(name)?;
        let mut core = self.shared.lock_core();
        core.invalidate(key, self.shared.clock.now());
        let requests = self.shared.drain(&mut core);
        drop(core);
        self.shared.dispatch(requests, None);
        Ok(())
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
        attempt: u32,
    ) -> ResourceOutcome {
        let mut core = self.shared.lock_core();
        let response = ResourceResponse {
            status,
            headers,
            sent_authorization: Some(sent),
            attempt,
        };
        let outcome = core.handle_resource_response(key, &response, self.shared.clock.now());
        let requests = self.shared.drain(&mut core);
        drop(core);
        self.shared.dispatch(requests, None);
        outcome
    }

    /// What the client has done so far.
    pub fn stats(&self) -> ClientStats {
        let c = &self.shared.counters;
        ClientStats {
            token_requests: c.token_requests.load(Ordering::Relaxed),
            tokens_acquired: c.tokens_acquired.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
        }
    }

    /// The clock this client reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.shared.clock
    }
}

/// The outcome of one round with the core.
enum Round<R> {
    Done(Result<R, Error>),
    Send(RequestId),
    Wait(RequestId),
}

impl Shared {
    pub(crate) fn lock_core(&self) -> MutexGuard<'_, TokenManager> {
        // A panic while holding the lock cannot leave the core half-updated in a
        // way that matters more than losing all tokens; keep serving.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lookup(&self, name: &str) -> Result<(ClientHandle, KeyId), Error> {
        self.published
            .names
            .load()
            .get(name)
            .copied()
            .ok_or_else(|| Error::UnknownClient(name.to_owned()))
    }

    /// The lock-free hit path: a guard load of the key's snapshot and one compare.
    #[inline]
    fn with_fresh_snapshot<R>(&self, key: KeyId, f: impl FnOnce(&Snapshot) -> R) -> Option<R> {
        let cell = self.published.snapshots.get(key.index())?;
        let guard = cell.load();
        let snapshot = guard.as_ref()?;
        snapshot
            .is_fresh(self.clock.monotonic())
            .then(|| f(snapshot))
    }

    /// The slow path: asks the core until it attaches or fails, sending this
    /// caller's own token request inline and waiting on others' requests.
    fn acquire<R>(
        self: &Arc<Self>,
        key: KeyId,
        f: impl FnOnce(&HeaderValue) -> R,
    ) -> Result<R, Error> {
        let mut waited = false;
        let mut f = Some(f);
        let mut core = self.lock_core();
        loop {
            let now = self.clock.now();
            let round = match core.authorize(key, now) {
                Authorization::Attach(attach) => {
                    Round::Done(Ok((f.take().expect("called once"))(attach.header())))
                }
                Authorization::Unavailable { error, retry_at } => Round::Done(Err(if waited {
                    // This caller saw the request fail: report the failure itself.
                    Error::from_token_error(error)
                } else {
                    Error::Unavailable {
                        cause: error.clone(),
                        retry_in: retry_at.saturating_duration_since(now.monotonic()),
                    }
                })),
                Authorization::Fetch(id) => Round::Send(id),
                Authorization::Wait(id) => Round::Wait(id),
            };
            let mut requests = self.drain(&mut core);
            match round {
                Round::Done(result) => {
                    drop(core);
                    self.dispatch(requests, None);
                    return result;
                }
                Round::Send(id) => {
                    let own = requests
                        .iter()
                        .position(|r| r.id() == id)
                        .map(|i| requests.swap_remove(i));
                    drop(core);
                    self.dispatch(requests, own);
                    waited = true;
                    core = self.lock_core();
                }
                Round::Wait(id) => {
                    if !requests.is_empty() {
                        drop(core);
                        self.dispatch(requests, None);
                        core = self.lock_core();
                    }
                    // Checked under the lock, so the end of the flight cannot be missed.
                    if core.in_flight(key) == Some(id) {
                        core = self.wait_for_flight(core);
                    }
                    waited = true;
                }
            }
        }
    }

    /// Waits until some token request ends, bounded by the core's request deadline.
    fn wait_for_flight<'a>(
        &'a self,
        core: MutexGuard<'a, TokenManager>,
    ) -> MutexGuard<'a, TokenManager> {
        let (mut core, timeout) = self
            .flight_ended
            .wait_timeout(core, self.request_deadline)
            .unwrap_or_else(|e| e.into_inner());
        if timeout.timed_out() {
            // The request outlived the core's deadline: let the core give up on it.
            core.handle_timeout(self.clock.now());
        }
        core
    }

    /// Drains the core's outputs after an input: publishes snapshots, logs
    /// events, wakes the timer thread, and returns the requests to send.
    fn drain(&self, core: &mut TokenManager) -> Vec<TokenRequest> {
        while let Some((key, snapshot)) = core.poll_snapshot() {
            if let Some(cell) = self.published.snapshots.get(key.index()) {
                cell.store(snapshot);
            }
        }
        while let Some(event) = core.poll_event() {
            let counter = match &event {
                Event::RequestStarted { .. } => Some(&self.counters.token_requests),
                Event::TokenAcquired { .. } => Some(&self.counters.tokens_acquired),
                Event::RequestFailed { .. } => Some(&self.counters.failures),
                _ => None,
            };
            if let Some(counter) = counter {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            log_event(&event);
        }
        self.timers.notify_all();
        std::iter::from_fn(|| core.poll_request()).collect()
    }

    /// Sends `own` on this thread (the caller waits for it anyway) and every
    /// other request on a thread of its own, off every caller's path.
    fn dispatch(self: &Arc<Self>, requests: Vec<TokenRequest>, own: Option<TokenRequest>) {
        for request in requests {
            self.spawn_sender(request);
        }
        if let Some(request) = own {
            self.send_and_handle(request);
        }
    }

    fn spawn_sender(self: &Arc<Self>, request: TokenRequest) {
        // Sender threads need the shared state; callers hold it through an Arc.
        let shared = Arc::clone(self);
        let id = request.id();
        let spawned = std::thread::Builder::new()
            .name("token-keeper-refresh".into())
            .spawn(move || shared.send_and_handle(request));
        if let Err(error) = spawned {
            let mut core = self.lock_core();
            let failure = token_keeper::TransportError::new(
                token_keeper::TransportErrorKind::Other,
                format!("could not start a thread for the token request: {error}"),
            );
            let _ = core.handle_transport_error(id, failure, self.clock.now());
            let requests = self.drain(&mut core);
            self.flight_ended.notify_all();
            drop(core);
            for request in requests {
                self.spawn_sender(request);
            }
        }
    }

    fn send_and_handle(self: &Arc<Self>, request: TokenRequest) {
        let id = request.id();
        let max_body = self.lock_core().config().max_response_body;
        let outcome = transport::send(&self.agent, request.into_request(), max_body);
        let mut core = self.lock_core();
        let now = self.clock.now();
        let _late = match outcome {
            Ok(response) => core.handle_response(id, response, now),
            Err(error) => core.handle_transport_error(id, error, now),
        };
        let requests = self.drain(&mut core);
        self.flight_ended.notify_all();
        drop(core);
        for request in requests {
            self.spawn_sender(request);
        }
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
                    let requests = self.drain(&mut core);
                    self.flight_ended.notify_all();
                    drop(core);
                    for request in requests {
                        self.spawn_sender(request);
                    }
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

fn log_event(event: &Event) {
    match event {
        Event::RequestStarted { key, id, reason } => {
            log::debug!("{key}: token request {id} started ({reason:?})")
        }
        Event::TokenAcquired {
            key,
            lifetime,
            token_type,
            scope,
        } => log::info!(
            "{key}: {} token acquired, lifetime {} s, scope {:?}",
            token_type.scheme(),
            lifetime.as_secs(),
            scope.as_deref().unwrap_or("")
        ),
        Event::RequestFailed { key, id, error } => {
            log::warn!("{key}: token request {id} failed: {error}")
        }
        Event::BackoffEntered {
            key,
            delay,
            failures,
            serving_cached,
            ..
        } => log::warn!(
            "{key}: backing off {:.1} s after {failures} failure(s){}",
            delay.as_secs_f64(),
            if *serving_cached {
                "; still serving the cached token"
            } else {
                ""
            }
        ),
        Event::TokenInvalidated { key, reason } => {
            log::info!("{key}: token invalidated ({reason:?})")
        }
        Event::TokenExpired { key } => log::debug!("{key}: token expired"),
        other => log::debug!("{other:?}"),
    }
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(std::process::id() as u64);
    hasher.finish()
}
