//! # token-keeper-driver: what every adapter needs around the core
//!
//! None of this is protocol logic (that lives in the sans-IO
//! [`token_keeper`] core). It is the plumbing that the blocking and the async
//! adapters would otherwise each write again:
//!
//! - [`SystemClock`]: the monotonic clock that keeps counting through suspend;
//! - [`Error`]: the one error type both adapters return, so tools behave the
//!   same on either;
//! - [`Registry`]: named clients, the per-key snapshot cells read lock-free on
//!   the hit path, discovery results, and counters, plus
//!   [`Registry::drain`], which empties the core's outputs after every input;
//! - [`Client`]: the one token client, generic over how its callers wait
//!   ([`Blocking`] or [`Async`]): each adapter's client is a `Client` given a
//!   [`Transport`];
//! - [`Engine`]: the core behind its lock ([`Engine::input`], the one way
//!   in), the timer thread, and the threads that sign and send token
//!   requests off the callers' path, through the adapter's [`Transport`];
//! - [`step()`]: one round of "ask the core for a header", turned into what
//!   the caller does next (done, or wait for that request), with any DPoP
//!   proof left to sign after the lock is released ([`Attached`]);
//! - [`proxy_from_env`]: the proxy environment, read once for the core's
//!   proxy decision;

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod client;
pub mod clock;
pub mod engine;
pub mod error;
pub mod options;
pub mod proxy;
pub mod random;
pub mod registry;
pub mod step;
pub mod store;
pub mod tls;
pub mod transport;
pub mod wait;

pub use client::Client;
pub use clock::{Clock, ManualClock, SystemClock};
pub use engine::{Engine, EngineHandle, EngineSettings};
pub use error::Error;
pub use options::ClientOptions;
pub use proxy::proxy_from_env;
pub use random::OsRandom;
pub use registry::{random_seed, ClientHealth, ClientStats, Drained, Registry, TokenInfo};
pub use step::{start_forced_refresh, step, Attached, Authorized, Step};
pub use store::{FleetStore, Store};
pub use transport::Transport;
pub use wait::{block_on, Async, Blocking, Wait};

/// Spawns a named thread and returns once it runs, so that it is visible
/// (by name, to tools and tests) as soon as its owner exists.
pub fn spawn_running(
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let (started, running) = std::sync::mpsc::sync_channel(1);
    let handle = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _ = started.send(());
            f();
        })?;
    let _ = running.recv();
    Ok(handle)
}
