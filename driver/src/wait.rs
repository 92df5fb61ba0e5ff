//! [`Wait`]: how a caller waits, the one thing in which the blocking and the
//! async clients differ. [`Blocking`] parks the calling thread on a
//! condition variable; [`Async`] awaits an event, on any executor.
//!
//! The [`Client`](crate::Client) is written once, as `async` code generic
//! over its `Wait`. With [`Blocking`] its futures never return `Pending`
//! (every wait blocks inside `poll`), and [`block_on`] runs them on the
//! calling thread.

use std::future::Future;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use token_keeper::{KeyId, RequestId};

use crate::engine::Engine;

/// How callers of one kind wait for a token request to end.
///
/// No waiter has a deadline of its own: the engine's timer thread gives up on
/// a request at the core's request deadline, which ends the wait like any
/// other outcome.
pub trait Wait: Send + Sync + Sized + 'static {
    /// A waiter set with nobody waiting yet.
    fn new() -> Self;

    /// Wakes every caller waiting here: called by the engine, with the
    /// core's lock released, after every input that reported an event (the
    /// only inputs that may have ended a request).
    fn wake_all(&self);

    /// Returns once request `id` of `key` is no longer in flight.
    fn until_ended(
        &self,
        engine: &Engine,
        key: KeyId,
        id: RequestId,
    ) -> impl Future<Output = ()> + Send;

    /// Runs blocking `work` (a discovery request) without blocking the
    /// caller's executor, if it has one.
    fn unblock<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = T> + Send;
}

/// Waiting for threads: a condition variable paired with the core's lock.
#[derive(Debug, Default)]
pub struct Blocking {
    ended: Condvar,
}

impl Wait for Blocking {
    fn new() -> Self {
        Blocking::default()
    }

    fn wake_all(&self) {
        self.ended.notify_all();
    }

    fn until_ended(
        &self,
        engine: &Engine,
        key: KeyId,
        id: RequestId,
    ) -> impl Future<Output = ()> + Send {
        let mut core = engine.lock_core();
        // Checked and waited on under the lock: the end cannot slip in between.
        while core.in_flight(key) == Some(id) {
            core = self.ended.wait(core).unwrap_or_else(|e| e.into_inner());
        }
        std::future::ready(())
    }

    fn unblock<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = T> + Send {
        std::future::ready(work())
    }
}

/// Waiting for tasks, on any executor: an [`event_listener::Event`].
#[derive(Debug, Default)]
pub struct Async {
    ended: event_listener::Event,
}

impl Wait for Async {
    fn new() -> Self {
        Async::default()
    }

    fn wake_all(&self) {
        self.ended.notify(usize::MAX);
    }

    async fn until_ended(&self, engine: &Engine, key: KeyId, id: RequestId) {
        loop {
            let listener = {
                let core = engine.lock_core();
                if core.in_flight(key) != Some(id) {
                    return;
                }
                // Registered under the lock: the wake-up cannot slip in between.
                self.ended.listen()
            };
            listener.await;
        }
    }

    async fn unblock<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        // The work stays reachable here until the thread takes it: if no
        // thread can be started, it runs on the caller's instead.
        let work = Arc::new(Mutex::new(Some(work)));
        let slot = Arc::new((Mutex::new(None), event_listener::Event::new()));
        let (for_thread, done) = (Arc::clone(&work), Arc::clone(&slot));
        let spawned = std::thread::Builder::new()
            .name("token-keeper-discovery".into())
            .spawn(move || {
                if let Some(work) = take(&for_thread) {
                    *done.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(work());
                    done.1.notify(usize::MAX);
                }
            });
        if spawned.is_err() {
            if let Some(work) = take(&work) {
                return work();
            }
        }
        loop {
            let listener = slot.1.listen();
            if let Some(value) = take(&slot.0) {
                return value;
            }
            listener.await;
        }
    }
}

fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    slot.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// Runs `future` to completion on the calling thread, parking it while the
/// future is pending. For the [`Blocking`] client's futures, which never are.
pub fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let mut future = std::pin::pin!(future);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(value) = future.as_mut().poll(&mut context) {
            return value;
        }
        std::thread::park();
    }
}
