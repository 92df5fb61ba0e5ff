//! [`Client`]: the one token client, generic over how its callers wait.
//!
//! `Client<Blocking>` is the ureq adapter's `TokenClient`, `Client<Async>`
//! the surf adapter's `AsyncTokenClient`: each adapter wraps it with the
//! constructor that gives it a [`Transport`], and nothing
//! else. Every method is written once here; the waiting ones as `async`
//! code that the blocking client runs with [`block_on`] (its waits block
//! inside `poll`, so its futures are never pending).

use std::future::Future;
use std::sync::Arc;

use http::{HeaderValue, Method, Uri};
use token_keeper::discovery::ServerMetadata;
use token_keeper::{
    ClientConfig, ConfigError, Instant, KeyId, KeyOverrides, ProxySettings, ResourceOutcome,
    ResourceResponse,
};

use crate::engine::{Engine, EngineHandle, EngineSettings};
use crate::error::Error;
use crate::registry::{ClientHealth, ClientStats, TokenInfo};
use crate::step::{start_forced_refresh, step, Attached, Authorized, Step};
use crate::transport::Transport;
use crate::wait::{block_on, Async, Blocking, Wait};

/// A thread-safe, cheaply cloneable token client: the named client
/// configurations, the core that caches their tokens, and the engine that
/// sends every token request and refreshes tokens ahead of expiry on a
/// background thread (stopped when the last clone is dropped). A cached
/// Fresh token is handed out without taking any lock.
///
/// Use it through an adapter: `token_keeper_ureq::TokenClient` (blocking,
/// `Client<Blocking>`) or `token_keeper_surf::AsyncTokenClient` (async,
/// `Client<Async>`). The methods that may wait for a token request are
/// plain functions on `Client<Blocking>` and `async` on `Client<Async>`;
/// the others are the same on both.
pub struct Client<W: Wait> {
    engine: EngineHandle,
    waiters: Arc<W>,
}

impl<W: Wait> Clone for Client<W> {
    fn clone(&self) -> Self {
        Client {
            engine: self.engine.clone(),
            waiters: Arc::clone(&self.waiters),
        }
    }
}

impl<W: Wait> std::fmt::Debug for Client<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("registry", self.engine.registry())
            .finish_non_exhaustive()
    }
}

/// What every client offers, blocking or async: nothing here waits for a
/// token request.
impl<W: Wait> Client<W> {
    /// A client sending token and discovery requests with `transport`.
    /// Adapters call it from their constructors.
    pub fn start(settings: EngineSettings, transport: Box<dyn Transport>) -> Client<W> {
        let waiters = Arc::new(W::new());
        let wake = Arc::clone(&waiters);
        let engine = Engine::start(settings, transport, Box::new(move || wake.wake_all()));
        Client { engine, waiters }
    }

    /// Registers a named client. If its authorization server was discovered
    /// by this client, the configuration is checked against the metadata
    /// (see [`ClientConfig::check_against`]).
    pub fn add_client(&self, name: &str, config: ClientConfig) -> Result<(), Error> {
        self.engine
            .input(|core, registry, _| registry.add_client(core, name, config))
    }

    /// The key of a named client's configured request.
    pub fn key(&self, name: &str) -> Result<KeyId, Error> {
        self.engine.registry().lookup(name).map(|(_, key)| key)
    }

    /// The key of a named client's request changed by per-call overrides
    /// (another scope, resource or parameter): a separate cached token.
    pub fn key_with(&self, name: &str, overrides: &KeyOverrides) -> Result<KeyId, Error> {
        let (handle, _) = self.engine.registry().lookup(name)?;
        Ok(self
            .engine
            .input(|core, _, _| core.key(handle, overrides))?)
    }

    /// Whether the named client binds its tokens with DPoP.
    pub fn uses_dpop(&self, name: &str) -> Result<bool, Error> {
        let (handle, _) = self.engine.registry().lookup(name)?;
        let core = self.engine.lock_core();
        Ok(core.client_config(handle).dpop_signer().is_some())
    }

    /// Drops the named client's cached token; the next call fetches a new one.
    pub fn invalidate(&self, name: &str) -> Result<(), Error> {
        let (_, key) = self.engine.registry().lookup(name)?;
        self.engine.input(|core, _, now| core.invalidate(key, now));
        Ok(())
    }

    /// Reports a protected resource's response to a request that carried
    /// `sent` for `key` to `uri`, and says whether to retry it (see
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
        let response = ResourceResponse {
            status,
            headers,
            sent_authorization: Some(sent),
            uri: Some(uri),
            attempt,
        };
        self.engine
            .input(|core, _, now| core.handle_resource_response(key, &response, now))
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
        let core = self.engine.lock_core();
        self.engine
            .registry()
            .health(&core, self.engine.clock().now())
    }

    /// The clock this client reads.
    pub fn clock(&self) -> &Arc<dyn token_keeper::Clock> {
        self.engine.clock()
    }

    /// The proxy settings token and discovery requests follow (a loopback
    /// destination is never proxied, whatever they say).
    pub fn proxy(&self) -> &ProxySettings {
        self.engine.proxy()
    }

    /// Waits until the fleet store has every write and lease release
    /// queued so far, at most `timeout` (whether it got there). Without a
    /// store it returns `true` at once.
    pub fn flush_store(&self, timeout: std::time::Duration) -> bool {
        self.engine.flush_store(timeout)
    }

    /// For a process about to stop: gives back the fleet-store leases this
    /// client holds (a token request still under way would otherwise make
    /// the fleet wait for its lease to lapse), then [`flush_store`](Self::flush_store)s.
    /// Dropping the last clone of a client does this, for at most 1 s; call
    /// it to choose the bound, or when clones outlive the work (a
    /// middleware's agent kept until exit).
    pub fn settle_store(&self, timeout: std::time::Duration) -> bool {
        self.engine.settle_store(timeout)
    }

    /// The header of `key`'s Fresh cached token, read lock-free, if there is one.
    fn fresh_header(&self, key: KeyId, now: Instant) -> Option<HeaderValue> {
        self.engine
            .registry()
            .with_fresh(key, now, |s| s.header().clone())
    }
}

/// The waiting methods, written once.
impl<W: Wait> Client<W> {
    /// The slow path: asks the core until it attaches or fails, waiting for
    /// the token requests the engine sends.
    async fn acquire(
        &self,
        key: KeyId,
        request: Option<(&Method, &Uri)>,
    ) -> Result<Authorized, Error> {
        let mut waited = false;
        loop {
            match self
                .engine
                .input(|core, _, now| step(core, key, request, now, waited))
            {
                // Signed with the lock released: a slow signer holds up this call only.
                Step::Done(result) => return result.and_then(Attached::sign),
                Step::Wait(id) => self.waiters.until_ended(&self.engine, key, id).await,
            }
            waited = true;
        }
    }

    async fn token_of(&self, name: &str) -> Result<TokenInfo, Error> {
        let (_, key) = self.engine.registry().lookup(name)?;
        loop {
            self.acquire(key, None).await?;
            let core = self.engine.lock_core();
            // The token may expire between the two steps; then ask again.
            if let Some(info) = TokenInfo::of(&core, key, self.engine.clock().now()) {
                return Ok(info);
            }
        }
    }

    async fn force_refresh_of(&self, name: &str) -> Result<(), Error> {
        let (_, key) = self.engine.registry().lookup(name)?;
        let started = self
            .engine
            .input(|core, _, now| start_forced_refresh(core, key, now))?;
        loop {
            let settled = {
                let core = self.engine.lock_core();
                match core.settled(key, started) {
                    Some(outcome) => Ok(outcome.map_err(Error::from_token_error)),
                    // Still in flight, or replaced by its DPoP nonce retry.
                    None => Err(core.in_flight(key)),
                }
            };
            match settled {
                Ok(outcome) => return outcome,
                Err(Some(id)) => self.waiters.until_ended(&self.engine, key, id).await,
                // Every end of a request settles it; kept total all the same.
                Err(None) => {
                    return Err(Error::Transport(token_keeper::TransportError::new(
                        token_keeper::TransportErrorKind::Other,
                        "the forced refresh ended without an outcome",
                    )))
                }
            }
        }
    }

    async fn discover_at(&self, issuer: &str) -> Result<ServerMetadata, Error> {
        if let Some(metadata) = self.engine.registry().discovered(issuer) {
            return Ok(metadata);
        }
        let engine = Arc::clone(&self.engine);
        let issuer = issuer.to_owned();
        self.waiters
            .unblock(move || engine.discover_blocking(&issuer))
            .await
    }

    async fn add_client_from_issuer_at(
        &self,
        name: &str,
        issuer: &str,
        configure: impl FnOnce(&str) -> Result<ClientConfig, ConfigError>,
    ) -> Result<(), Error> {
        let metadata = self.discover_at(issuer).await?;
        let config = configure(metadata.token_endpoint())?;
        config.check_against(&metadata)?;
        self.add_client(name, config)
    }
}

/// Declares the waiting methods of one kind of client, with the
/// documentation written once: the lock-free hit path first, in plain code
/// (no future, no waker on it), then the generic slow path, blocked on or
/// awaited.
macro_rules! waiting_methods {
    ($wait:ty, $($async:ident)?, $finish:ident, $same:ident) => {
        impl Client<$wait> {
            /// The `Authorization` header value for the named client: the
            /// cached token when valid, otherwise fetched (one request per
            /// key, however many callers ask). Waits only when no valid
            /// token is cached.
            pub $($async)? fn header(&self, name: &str) -> Result<HeaderValue, Error> {
                let (_, key) = self.engine.registry().lookup(name)?;
                $same!(self.header_for(key))
            }

            /// The `Authorization` header value for a key.
            pub $($async)? fn header_for(&self, key: KeyId) -> Result<HeaderValue, Error> {
                // The hit path, before any future exists.
                if let Some(header) = self.fresh_header(key, self.engine.clock().monotonic()) {
                    return Ok(header);
                }
                $finish!(self.acquire(key, None)).map(|a| a.authorization)
            }

            /// Calls `f` with the named client's header without copying or
            /// reference-counting it: the zero-contention hit path, for
            /// callers that only need to read the value (for example to
            /// write it into a buffer). `f` runs with no lock held, and may
            /// use the client.
            pub $($async)? fn with_header<R>(
                &self,
                name: &str,
                f: impl FnOnce(&HeaderValue) -> R,
            ) -> Result<R, Error> {
                $same!(self.with_header_at(name, self.engine.clock().monotonic(), f))
            }

            /// [`with_header`](Self::with_header) at a time the caller read
            /// from [`clock`](Self::clock) (for example once for a batch of
            /// requests): the hit path without its clock read. Falls back to
            /// the core, which reads the clock itself, when the snapshot is
            /// not Fresh at `now`.
            pub $($async)? fn with_header_at<R>(
                &self,
                name: &str,
                now: Instant,
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
                $finish!(self.acquire(key, None)).map(|a| f(&a.authorization))
            }

            /// The named client's token with its remaining lifetime and
            /// scope, fetching one if needed.
            pub $($async)? fn token(&self, name: &str) -> Result<TokenInfo, Error> {
                $finish!(self.token_of(name))
            }

            /// Fetches a new token for the named client now, even if the
            /// cached one is Fresh, and waits for the outcome of that request
            /// (after its DPoP nonce retry, if the server asks for one). Fails
            /// if it fails, even while the old token is still served; during
            /// a backoff, fails at once with [`Error::Unavailable`].
            pub $($async)? fn force_refresh(&self, name: &str) -> Result<(), Error> {
                $finish!(self.force_refresh_of(name))
            }

            /// The headers for a request about to be sent with `method` to
            /// `uri`: `Authorization`, and for a DPoP-bound token a fresh
            /// `DPoP` proof for exactly this request, signed with no lock
            /// held. A cached Fresh Bearer token is read lock-free.
            pub $($async)? fn authorize_request(
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
                $finish!(self.acquire(key, Some((method, uri))))
            }

            /// The metadata of the authorization server at `issuer`
            /// (`/.well-known/openid-configuration`, falling back to
            /// `/.well-known/oauth-authorization-server`), fetched once (on
            /// an engine thread, through the client's transport and proxy
            /// settings) and cached.
            pub $($async)? fn discover(&self, issuer: &str) -> Result<ServerMetadata, Error> {
                $finish!(self.discover_at(issuer))
            }

            /// Registers a named client of the authorization server at
            /// `issuer` in one step: discovers its metadata, calls
            /// `configure` with the token endpoint it publishes, and checks
            /// the configuration against the metadata (the endpoint, and a
            /// `private_key_jwt` audience) before adding it.
            pub $($async)? fn add_client_from_issuer(
                &self,
                name: &str,
                issuer: &str,
                configure: impl FnOnce(&str) -> Result<ClientConfig, ConfigError>,
            ) -> Result<(), Error> {
                $finish!(self.add_client_from_issuer_at(name, issuer, configure))
            }
        }
    };
}

macro_rules! blocking {
    ($future:expr) => {
        block_on($future)
    };
}

macro_rules! awaited {
    ($future:expr) => {
        $future.await
    };
}

/// A call of another method of the same kind: as it is when blocking…
macro_rules! direct {
    ($call:expr) => {
        $call
    };
}

waiting_methods!(Blocking, , blocking, direct);
waiting_methods!(Async, async, awaited, awaited);

/// Keeps `Client<W>`'s generic futures `Send`: an async client's futures
/// must be spawnable on multi-threaded executors.
#[allow(dead_code, clippy::manual_async_fn)]
fn futures_are_send(client: &Client<Async>) -> impl Future<Output = ()> + Send + '_ {
    async move {
        let _ = client.header("m2m").await;
        let _ = client.force_refresh("m2m").await;
        let _ = client.discover("https://issuer.example").await;
    }
}
