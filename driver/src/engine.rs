//! [`Engine`]: what an adapter runs around the core, whether its callers
//! block or await: the core behind its lock, the timer thread that lets the
//! core act at its deadlines, and the threads that send every token request
//! (callers only ask and wait, so a caller that stops waiting strands nobody).
//!
//! No [`Signer`](token_keeper::jose::Signer) is called with the core's lock
//! held: a token request's JWTs are signed on its sender thread
//! ([`TokenRequest::into_request`]) and an API request's proof by its caller
//! after the round ([`Attached::sign`](crate::Attached::sign)), so a signer
//! that takes seconds holds up only its own request.
//!
//! Adapters add only what differs: how a caller waits (a condition variable
//! for threads, an event for tasks) and how a request is sent (the transport).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use token_keeper::{
    ClientConfig, Clock, KeyId, KeyOverrides, ManagerConfig, RequestId, ResourceOutcome,
    ResourceResponse, TokenManager, TokenRequest, TransportError,
};

use crate::error::Error;

use crate::registry::{ClientHealth, Registry};

/// Sends one token request and reads at most `max_body + 1` bytes of the
/// answer, blocking the calling thread (a sender thread of the engine).
pub type BlockingSend = dyn Fn(http::Request<Vec<u8>>, usize) -> Result<http::Response<Vec<u8>>, TransportError>
    + Send
    + Sync;

/// The state shared by an adapter's clients, its timer thread and its sender threads.
pub struct Engine {
    core: Mutex<TokenManager>,
    /// Signalled whenever the core's next deadline may have moved.
    timers: Condvar,
    /// Signalled whenever a token request ends: blocked callers re-ask the core.
    flight_ended: Condvar,
    /// Called whenever a token request ends, for waiters that are not threads.
    on_flight_end: Box<dyn Fn() + Send + Sync>,
    registry: Registry,
    clock: Arc<dyn Clock>,
    stopping: AtomicBool,
    request_deadline: Duration,
    /// [`ManagerConfig::max_response_body`], read once: no lock to send.
    max_response_body: usize,
    send: Box<BlockingSend>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

/// A running engine; cheap to clone. The timer thread stops (and is joined)
/// when the last clone is dropped.
#[derive(Clone)]
pub struct EngineHandle {
    engine: Arc<Engine>,
    _timer: Arc<TimerGuard>,
}

impl std::ops::Deref for EngineHandle {
    type Target = Arc<Engine>;

    fn deref(&self) -> &Arc<Engine> {
        &self.engine
    }
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.engine.fmt(f)
    }
}

struct TimerGuard {
    engine: Arc<Engine>,
    thread: Mutex<Option<JoinHandle<()>>>,
    _on_clock_jump: Arc<dyn Fn() + Send + Sync>,
}

impl Drop for TimerGuard {
    fn drop(&mut self) {
        self.engine.stopping.store(true, Ordering::SeqCst);
        {
            let _core = self.engine.lock_core();
            self.engine.timers.notify_all();
        }
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl Engine {
    /// Starts an engine: a core with `manager` limits and `seed`, reading
    /// `clock`, sending background requests with `send`, calling
    /// `on_flight_end` whenever a request ends, and logging what the core
    /// does under `log_target`: the adapter's crate name
    /// (`"token_keeper_ureq"`), which its users filter on.
    pub fn start(
        manager: ManagerConfig,
        seed: u64,
        clock: Arc<dyn Clock>,
        send: Box<BlockingSend>,
        on_flight_end: Box<dyn Fn() + Send + Sync>,
        log_target: &'static str,
    ) -> EngineHandle {
        let mut core = TokenManager::new(manager, seed);
        // `jti`s and jitter from the OS generator, not from the seed.
        core.set_random_source(Box::new(crate::OsRandom::new()));
        let (request_deadline, max_keys) = (core.config().request_timeout, core.config().max_keys);
        let max_response_body = core.config().max_response_body;
        let engine = Arc::new(Engine {
            request_deadline,
            max_response_body,
            registry: Registry::with_log_target(max_keys, log_target),
            core: Mutex::new(core),
            timers: Condvar::new(),
            flight_ended: Condvar::new(),
            on_flight_end,
            clock: Arc::clone(&clock),
            stopping: AtomicBool::new(false),
            send,
        });
        let for_thread = Arc::clone(&engine);
        let thread = crate::spawn_running("token-keeper-timer", move || for_thread.run_timers())
            .expect("spawning the token-keeper timer thread");
        let for_jump = Arc::downgrade(&engine);
        let on_clock_jump: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            if let Some(engine) = for_jump.upgrade() {
                let _core = engine.lock_core();
                engine.timers.notify_all();
                engine.flight_ended.notify_all();
                (engine.on_flight_end)();
            }
        });
        clock.subscribe(Arc::downgrade(&on_clock_jump));
        EngineHandle {
            _timer: Arc::new(TimerGuard {
                engine: Arc::clone(&engine),
                thread: Mutex::new(Some(thread)),
                _on_clock_jump: on_clock_jump,
            }),
            engine,
        }
    }

    /// The core. Never hold the guard across an `.await` or any I/O.
    pub fn lock_core(&self) -> MutexGuard<'_, TokenManager> {
        // A panic while holding the lock cannot leave the core in a state worse
        // than losing its tokens; keep serving rather than poisoning every caller.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Names, snapshots, discovery results and counters.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The clock the engine reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// How long a token request may stay in flight.
    pub fn request_deadline(&self) -> Duration {
        self.request_deadline
    }

    /// The health of every key of every named client, now (see
    /// [`Registry::health`]): the core's lock is held only to read it.
    pub fn health(&self) -> Vec<ClientHealth> {
        let core = self.lock_core();
        self.registry.health(&core, self.clock.now())
    }

    /// Registers a named client.
    pub fn add_client(&self, name: &str, config: ClientConfig) -> Result<(), Error> {
        let mut core = self.lock_core();
        self.registry.add_client(&mut core, name, config)
    }

    /// The key of a named client's request changed by per-call overrides.
    pub fn key_with(&self, name: &str, overrides: &KeyOverrides) -> Result<KeyId, Error> {
        let (handle, _) = self.registry.lookup(name)?;
        Ok(self.lock_core().key(handle, overrides)?)
    }

    /// Whether the named client binds its tokens with DPoP.
    pub fn uses_dpop(&self, name: &str) -> Result<bool, Error> {
        let (handle, _) = self.registry.lookup(name)?;
        Ok(self
            .lock_core()
            .client_config(handle)
            .dpop_signer()
            .is_some())
    }

    /// Drops the named client's cached token; the next call fetches a new one.
    pub fn invalidate(self: &Arc<Self>, name: &str) -> Result<(), Error> {
        let (_, key) = self.registry.lookup(name)?;
        let mut core = self.lock_core();
        core.invalidate(key, self.clock.now());
        let requests = self.registry.drain(&mut core);
        drop(core);
        self.dispatch(requests);
        Ok(())
    }

    /// Reports a protected resource's response to a request that carried
    /// `sent` for `key` to `uri`, and says whether to retry it (see
    /// [`TokenManager::handle_resource_response`]).
    pub fn handle_resource_response(
        self: &Arc<Self>,
        key: KeyId,
        status: http::StatusCode,
        headers: &http::HeaderMap,
        sent: &http::HeaderValue,
        uri: &http::Uri,
        attempt: u32,
    ) -> ResourceOutcome {
        let response = ResourceResponse {
            status,
            headers,
            sent_authorization: Some(sent),
            uri: Some(uri),
            attempt,
        };
        let mut core = self.lock_core();
        let outcome = core.handle_resource_response(key, &response, self.clock.now());
        let requests = self.registry.drain(&mut core);
        drop(core);
        self.dispatch(requests);
        outcome
    }

    /// Tells the timer thread that the core's next deadline may have moved.
    pub fn notify_timers(&self) {
        self.timers.notify_all();
    }

    /// Signs and sends each request on a thread of its own, off every
    /// caller's path and outside the core's lock.
    ///
    /// Call it with the core's lock released: it first writes the log lines
    /// of the events drained under the lock.
    pub fn dispatch(self: &Arc<Self>, requests: Vec<TokenRequest>) {
        self.registry.flush_logs();
        for request in requests {
            let engine = Arc::clone(self);
            let id = request.id();
            let spawned = std::thread::Builder::new()
                .name("token-keeper-refresh".into())
                .spawn(move || engine.send_blocking(request));
            if let Err(error) = spawned {
                let failure = TransportError::new(
                    token_keeper::TransportErrorKind::Other,
                    format!("could not start a thread for the token request: {error}"),
                );
                self.finish(id, Err(failure));
            }
        }
    }

    /// Signs `request`'s JWTs and sends it, on this thread and without the
    /// core's lock (a slow signer holds up this request only), then feeds the
    /// outcome to the core: the response, the transport error, or, if it
    /// could not be signed, the signing error (it was never sent).
    fn send_blocking(self: &Arc<Self>, request: TokenRequest) {
        let id = request.id();
        match request.into_request() {
            Ok(request) => {
                let outcome = (self.send)(request, self.max_response_body);
                self.finish(id, outcome);
            }
            Err(error) => self.end_flight(|core, now| {
                let _late = core.handle_signing_error(id, error, now);
            }),
        }
    }

    /// Feeds a request's outcome to the core, wakes everyone who waits, and
    /// sends whatever the core queued meanwhile.
    fn finish(
        self: &Arc<Self>,
        id: RequestId,
        outcome: Result<http::Response<Vec<u8>>, TransportError>,
    ) {
        self.end_flight(|core, now| {
            // An answer the core no longer waits for (it gave up on the request) is dropped.
            let _late = match outcome {
                Ok(response) => core.handle_response(id, response, now),
                Err(error) => core.handle_transport_error(id, error, now),
            };
        });
    }

    /// Feeds the end of a request to the core (`input`, under the lock),
    /// wakes everyone who waits, and sends whatever the core queued.
    fn end_flight(self: &Arc<Self>, input: impl FnOnce(&mut TokenManager, token_keeper::Now)) {
        let mut core = self.lock_core();
        input(&mut core, self.clock.now());
        let requests = self.registry.drain(&mut core);
        self.flight_ended.notify_all();
        (self.on_flight_end)();
        self.timers.notify_all();
        drop(core);
        self.dispatch(requests);
    }

    /// Blocks until some token request ends, at most the request deadline,
    /// after which the core gives up on the request `key` is waiting for.
    pub fn wait_for_flight<'a>(
        self: &'a Arc<Self>,
        core: MutexGuard<'a, TokenManager>,
    ) -> MutexGuard<'a, TokenManager> {
        let (core, timeout) = self
            .flight_ended
            .wait_timeout(core, self.request_deadline)
            .unwrap_or_else(|e| e.into_inner());
        if !timeout.timed_out() {
            return core;
        }
        drop(core);
        self.give_up_overdue();
        self.lock_core()
    }

    /// For a waiter whose wait for request `id` of `key` reached the request
    /// deadline: if it is still in flight, lets the core give up on it.
    pub fn give_up_if_still_in_flight(self: &Arc<Self>, key: KeyId, id: RequestId) {
        if self.lock_core().in_flight(key) == Some(id) {
            self.give_up_overdue();
        }
    }

    fn give_up_overdue(self: &Arc<Self>) {
        self.end_flight(|core, now| core.handle_timeout(now));
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
                    (self.on_flight_end)();
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
