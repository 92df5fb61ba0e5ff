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
//! Every input reaches the core through [`Engine::input`], which locks,
//! applies it, drains every output, unlocks, writes the log lines, wakes
//! whoever must be woken and sends the token requests the core queued: the
//! run-loop contract, written once.
//!
//! Adapters add only what differs: how a caller waits ([`Wait`](crate::Wait))
//! and how a request is sent ([`Transport`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use token_keeper::discovery::{
    Discovery, DiscoveryError, DiscoveryStep, ServerMetadata, MAX_DISCOVERY_DOCUMENT,
};
use token_keeper::{
    Clock, ManagerConfig, Now, ProxyDecision, ProxySettings, StoreRequest, TokenManager,
    TokenRequest, TransportError, TransportErrorKind,
};

use crate::error::Error;
use crate::registry::{Drained, Registry};
use crate::store::{FleetStore, Store};
use crate::transport::Transport;

/// What an engine is started with, apart from its transport and waiters.
#[derive(Clone)]
pub struct EngineSettings {
    /// The core's limits.
    pub manager: ManagerConfig,
    /// Seed for the core's jitter.
    pub seed: u64,
    /// The clock the engine reads.
    pub clock: Arc<dyn Clock>,
    /// Which proxy token and discovery requests go through.
    pub proxy: ProxySettings,
    /// The adapter's crate name (`"token_keeper_ureq"`): the log target its
    /// users filter on.
    pub log_target: &'static str,
    /// The store shared with the rest of the fleet, if any.
    pub store: Option<FleetStore>,
}

/// The state shared by an adapter's clients, its timer thread and its sender threads.
pub struct Engine {
    core: Mutex<TokenManager>,
    /// Signalled whenever the core's next deadline may have moved.
    timers: Condvar,
    /// Wakes the callers waiting for a request to end ([`Wait::wake_all`](crate::Wait::wake_all)).
    wake: Box<dyn Fn() + Send + Sync>,
    registry: Registry,
    clock: Arc<dyn Clock>,
    stopping: AtomicBool,
    /// [`ManagerConfig::max_response_body`], read once: no lock to send.
    max_response_body: usize,
    proxy: ProxySettings,
    transport: Box<dyn Transport>,
    /// Store operations go to the store thread, one at a time, in order; at
    /// most [`MAX_QUEUED_STORE_OPS`] wait.
    store_queue: Option<mpsc::SyncSender<StoreRequest>>,
    /// Store operations queued and not yet fed back, and a signal when that
    /// falls to zero ([`Engine::flush_store`]).
    store_pending: Mutex<usize>,
    store_idle: Condvar,
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

/// How long dropping the last clone of a client with a store waits for its
/// last writes and lease releases.
const FLUSH_ON_DROP: Duration = Duration::from_secs(1);

impl Drop for TimerGuard {
    fn drop(&mut self) {
        // A process that stops right after fetching must not lose the
        // fleet's copy of its token, or leave its leases to lapse.
        self.engine.settle_store(FLUSH_ON_DROP);
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
    /// Starts an engine: a core with `settings`, sending token and
    /// discovery requests with `transport`, and calling `wake` after every
    /// input that may have ended a request.
    pub fn start(
        settings: EngineSettings,
        transport: Box<dyn Transport>,
        wake: Box<dyn Fn() + Send + Sync>,
    ) -> EngineHandle {
        let EngineSettings {
            manager,
            seed,
            clock,
            proxy,
            log_target,
            store,
        } = settings;
        let mut core = TokenManager::new(manager, seed);
        // `jti`s, jitter and the lease-owner id from the OS generator, not from the seed.
        core.set_random_source(Box::new(crate::OsRandom::new()));
        let (store_queue, store_work) = match store {
            Some(fleet) => {
                core.enable_store(fleet.settings.clone());
                let (queue, work) = mpsc::sync_channel(MAX_QUEUED_STORE_OPS);
                (Some(queue), Some((fleet.store, work)))
            }
            None => (None, None),
        };
        let (max_keys, max_response_body) =
            (core.config().max_keys, core.config().max_response_body);
        let engine = Arc::new(Engine {
            max_response_body,
            registry: Registry::with_log_target(max_keys, log_target),
            core: Mutex::new(core),
            timers: Condvar::new(),
            wake,
            clock: Arc::clone(&clock),
            stopping: AtomicBool::new(false),
            proxy,
            transport,
            store_queue,
            store_pending: Mutex::new(0),
            store_idle: Condvar::new(),
        });
        if let Some((store, work)) = store_work {
            let engine = Arc::downgrade(&engine);
            crate::spawn_running("token-keeper-store", move || {
                run_store(&engine, &*store, &work)
            })
            .expect("spawning the token-keeper store thread");
        }
        let for_thread = Arc::clone(&engine);
        let thread = crate::spawn_running("token-keeper-timer", move || for_thread.run_timers())
            .expect("spawning the token-keeper timer thread");
        let for_jump = Arc::downgrade(&engine);
        let on_clock_jump: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            if let Some(engine) = for_jump.upgrade() {
                // Time moved under every deadline: let the timer thread and
                // the waiters look again.
                drop(engine.lock_core());
                engine.timers.notify_all();
                (engine.wake)();
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

    /// Applies one input to the core: locks it, calls `input` with the time
    /// now, drains every output, unlocks, then writes the log lines, wakes
    /// the timer thread (the next deadline may have moved) and, if the core
    /// reported anything, every waiter, and sends the queued token requests.
    /// The one way anything reaches the core.
    pub fn input<R>(
        self: &Arc<Self>,
        input: impl FnOnce(&mut TokenManager, &Registry, Now) -> R,
    ) -> R {
        let mut core = self.lock_core();
        let result = input(&mut core, &self.registry, self.clock.now());
        let drained = self.registry.drain(&mut core);
        if !drained.store_requests.is_empty() && self.store_queue.is_some() {
            // Counted before the unlock: whoever sees this input's outcome
            // (and drops the client, say) finds its writes under way.
            *self.store_pending.lock().unwrap_or_else(|e| e.into_inner()) +=
                drained.store_requests.len();
        }
        drop(core);
        self.after_input(drained);
        result
    }

    /// What follows every input, with the lock released. Log lines first:
    /// whoever is woken finds the lines of what woke it.
    fn after_input(self: &Arc<Self>, drained: Drained) {
        self.registry.flush_logs();
        self.timers.notify_all();
        if drained.events {
            (self.wake)();
        }
        for request in drained.requests {
            self.dispatch(request);
        }
        if let Some(queue) = &self.store_queue {
            for request in drained.store_requests {
                // A store stuck past its own timeouts must not grow the queue
                // without bound: an operation that finds it full fails at
                // once, and the core goes on without the store.
                if let Err(mpsc::TrySendError::Full(request)) = queue.try_send(request) {
                    self.store_op_done();
                    let error = token_keeper::StoreError::new(
                        token_keeper::StoreErrorKind::Unavailable,
                        "the store is not keeping up (its queue is full)",
                    );
                    let _late = self.input(|core, _, now| {
                        core.handle_store_reply(request.id(), Err(error), now)
                    });
                }
            }
        }
    }

    /// The core, to read. Never hold the guard across an `.await` or any
    /// I/O; change the core only through [`Engine::input`].
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

    /// Waits until every store operation queued so far has been carried
    /// out and fed back (a token's write, a lease's release), at most
    /// `timeout`. Whether it got there.
    pub fn flush_store(&self, timeout: Duration) -> bool {
        let pending = self.store_pending.lock().unwrap_or_else(|e| e.into_inner());
        let (pending, _) = self
            .store_idle
            .wait_timeout_while(pending, timeout, |pending| *pending > 0)
            .unwrap_or_else(|e| e.into_inner());
        *pending == 0
    }

    /// For a process about to stop: gives back every lease it holds, then
    /// waits (at most `timeout`) until its writes and releases are done.
    /// Whether it got there; `true` at once without a store.
    pub fn settle_store(self: &Arc<Self>, timeout: Duration) -> bool {
        if self.store_queue.is_none() {
            return true;
        }
        self.input(|core, _, _| core.release_leases());
        self.flush_store(timeout)
    }

    /// One store operation fewer under way.
    fn store_op_done(&self) {
        let mut pending = self.store_pending.lock().unwrap_or_else(|e| e.into_inner());
        *pending = pending.saturating_sub(1);
        if *pending == 0 {
            self.store_idle.notify_all();
        }
    }

    /// The proxy settings token and discovery requests follow.
    pub fn proxy(&self) -> &ProxySettings {
        &self.proxy
    }

    /// Signs and sends `request` on a thread of its own, off every caller's
    /// path and outside the core's lock.
    fn dispatch(self: &Arc<Self>, request: TokenRequest) {
        let engine = Arc::clone(self);
        let id = request.id();
        let spawned = std::thread::Builder::new()
            .name("token-keeper-refresh".into())
            .spawn(move || engine.send_token_request(request));
        if let Err(error) = spawned {
            let failure = TransportError::new(
                TransportErrorKind::Other,
                format!("could not start a thread for the token request: {error}"),
            );
            self.input(|core, _, now| core.handle_transport_error(id, failure, now))
                .ok();
        }
    }

    /// Signs `request`'s JWTs and sends it, on this thread and without the
    /// core's lock (a slow signer holds up this request only), then feeds the
    /// outcome to the core: the response, the transport error, or, if it
    /// could not be signed, the signing error (it was never sent). A request
    /// the core gave up on while it was being signed is not sent.
    fn send_token_request(self: &Arc<Self>, request: TokenRequest) {
        let (id, key) = (request.id(), request.key());
        let signed = request.into_request();
        if self.lock_core().in_flight(key) != Some(id) {
            return;
        }
        // An answer the core no longer waits for (it gave up) is dropped.
        match signed {
            Ok(request) => match self.send(request, self.max_response_body) {
                Ok(response) => self.input(|core, _, now| core.handle_response(id, response, now)),
                Err(error) => {
                    self.input(|core, _, now| core.handle_transport_error(id, error, now))
                }
            }
            .ok(),
            Err(error) => self
                .input(|core, _, now| core.handle_signing_error(id, error, now))
                .ok(),
        };
    }

    /// Sends a token or discovery request the way the proxy settings decide
    /// for its destination (a loopback one never through a proxy).
    fn send(
        &self,
        request: http::Request<Vec<u8>>,
        max_body: usize,
    ) -> Result<http::Response<Vec<u8>>, TransportError> {
        let via = match self.proxy.decide(request.uri()) {
            ProxyDecision::Direct => None,
            ProxyDecision::Tunnel(via) => Some(via),
            ProxyDecision::Unsupported(reason) => {
                return Err(TransportError::new(
                    TransportErrorKind::Connect,
                    reason.to_owned(),
                ))
            }
        };
        self.transport.send(request, via, max_body)
    }

    /// The metadata of the authorization server at `issuer`, from the
    /// registry's cache or fetched now on this thread (blocking).
    pub fn discover_blocking(&self, issuer: &str) -> Result<ServerMetadata, Error> {
        if let Some(metadata) = self.registry.discovered(issuer) {
            return Ok(metadata);
        }
        let mut discovery = Discovery::new(issuer)?;
        let metadata = loop {
            let response = self
                .send(discovery.request(), MAX_DISCOVERY_DOCUMENT)
                .map_err(|e| Error::Discovery(DiscoveryError::unreachable(e)))?;
            match discovery.handle_response(&response) {
                DiscoveryStep::Done(metadata) => break metadata,
                DiscoveryStep::TryNext => continue,
                DiscoveryStep::Failed(error) => return Err(Error::Discovery(error)),
            }
        };
        self.registry.remember_discovery(issuer, metadata.clone());
        Ok(metadata)
    }

    /// The timer thread: sleeps until the core's next deadline, then lets the
    /// core act (refresh ahead, end backoffs, give up on requests past the
    /// request deadline, which ends their waiters' waits).
    fn run_timers(self: &Arc<Self>) {
        let mut core = self.lock_core();
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let now = self.clock.now();
            let wait = match core.poll_timeout() {
                Some((deadline, _)) if deadline <= now.monotonic() => {
                    drop(core);
                    self.input(|core, _, now| core.handle_timeout(now));
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

/// Store operations that may wait for the store thread.
const MAX_QUEUED_STORE_OPS: usize = 1024;

/// The store thread: carries out the core's store operations one at a time
/// and feeds each outcome back. Holds the engine weakly, and stops when the
/// engine is gone (its queue's sender with it).
fn run_store(engine: &Weak<Engine>, store: &dyn Store, work: &mpsc::Receiver<StoreRequest>) {
    while let Ok(request) = work.recv() {
        let Some(engine) = engine.upgrade() else {
            return;
        };
        // A write's time to live counts from now, not from when it was queued.
        let op = request.op_at(engine.clock().monotonic());
        let reply = store.execute(request.key(), &op);
        // A reply the core stopped waiting for only tells it the store answers.
        let _late = engine.input(|core, _, now| core.handle_store_reply(request.id(), reply, now));
        engine.store_op_done();
    }
}
