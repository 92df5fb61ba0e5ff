//! [`Registry`]: named clients, published snapshots, discovery cache,
//! counters, the health view and the log lines of the core's events.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use token_keeper::discovery::ServerMetadata;
use token_keeper::{
    AccessToken, ClientConfig, ClientHandle, ConfigError, Event, Instant, KeyHealth, KeyId, Now,
    RequestReason, Scope, Snapshot, TokenManager, TokenRequest, TokenType,
};

use crate::error::Error;

/// Counts of what a client (every named client it holds, every key) did,
/// for reports and demos.
///
/// Requests and tokens are counted apart: one token may cost more than one
/// request. A server that demands a DPoP nonce (`use_dpop_nonce`) answers
/// the first request with that demand, and the one retry, with the nonce,
/// gets the token: two `token_requests`, one `tokens_acquired`, one
/// `dpop_nonce_retries`. A failed request counts in `failures` (and is
/// retried after a backoff, which is another request).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientStats {
    /// Token requests started: every request to the token endpoint, the
    /// retries after `use_dpop_nonce` included (and one whose JWTs could not
    /// be signed, which fails without being sent).
    pub token_requests: u64,
    /// Tokens received and cached.
    pub tokens_acquired: u64,
    /// Token requests that failed (an error answer, a transport error, a
    /// timeout, a signing error). A `use_dpop_nonce` answer that is retried
    /// is not a failure.
    pub failures: u64,
    /// Of `token_requests`, the retries after a `use_dpop_nonce` answer (at
    /// most one per token sought).
    pub dpop_nonce_retries: u64,
    /// Tokens taken from the shared store (another process fetched them):
    /// no token request was made for these.
    pub store_hits: u64,
}

/// A cached token with its remaining life.
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

impl TokenInfo {
    /// The cached token of `key`, if it may still be used at `now`.
    pub fn of(core: &TokenManager, key: KeyId, now: Now) -> Option<TokenInfo> {
        let view = core.token(key, now)?;
        Some(TokenInfo {
            access_token: view.access_token().clone(),
            token_type: view.token_type(),
            expires_in: view.remaining(),
            scope: view.scope().map(str::to_owned),
        })
    }
}

#[derive(Default)]
struct Counters {
    token_requests: AtomicU64,
    tokens_acquired: AtomicU64,
    failures: AtomicU64,
    dpop_nonce_retries: AtomicU64,
    store_hits: AtomicU64,
}

/// One key of a named client and its health, from [`Registry::health`]
/// (and the adapters' `health()`). Owned and secret-free: no token, secret
/// or proof, so it may be served as it is (as JSON at `/healthz`, say).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientHealth {
    /// The name the client was registered under.
    pub name: String,
    /// The key.
    pub key: KeyId,
    /// What sets the key apart from the client's configured request
    /// (per-call overrides: scope, resources, audience, parameter names);
    /// `None` for the configured request itself.
    pub overrides: Option<String>,
    /// Where the key stands.
    pub health: KeyHealth,
}

/// Most named clients one adapter holds.
pub const MAX_CLIENTS: usize = 256;

/// One named client in the lock-free name table.
struct NameEntry {
    name: Box<str>,
    handle: ClientHandle,
    key: KeyId,
}

/// FNV-1a: short client names hash in a few nanoseconds.
fn name_hash(name: &str) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash as usize
}

/// What an adapter keeps next to its core: read lock-free on the hit path,
/// written only while the core's lock is held.
pub struct Registry {
    /// Open addressing over set-once cells: a lookup reads, never writes.
    names: Box<[OnceLock<NameEntry>]>,
    snapshots: Box<[ArcSwapOption<Snapshot>]>,
    discovered: Mutex<HashMap<String, ServerMetadata>>,
    counters: Counters,
    /// The `log` target of the events' lines: the adapter's crate.
    log_target: &'static str,
    /// Events drained under the core's lock, logged after it is released by
    /// [`Registry::flush_logs`]: a `log` backend is the application's code
    /// and may do I/O, or call the client. At most [`MAX_PENDING_LOGS`].
    pending_logs: Mutex<Vec<(String, Event)>>,
    /// Held while lines are written, so that a flush returns only once every
    /// line drained before it is written, by it or by a flush running already.
    log_writer: Mutex<()>,
}

/// What [`Registry::drain`] took out of the core after an input.
#[derive(Debug, Default)]
pub struct Drained {
    /// The token requests to send.
    pub requests: Vec<TokenRequest>,
    /// The shared-store operations to carry out.
    pub store_requests: Vec<token_keeper::StoreRequest>,
    /// Whether the core reported anything (a request started or ended, a
    /// token cached or dropped): only then may a waiter's request have ended,
    /// so only then are waiters woken. A caller that merely joins a wait
    /// wakes nobody.
    pub events: bool,
}

/// Events kept for logging between a drain and the next flush; more are
/// dropped (a flush follows every drain, so this bound is never near).
const MAX_PENDING_LOGS: usize = 4096;

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self
            .names
            .iter()
            .filter_map(|cell| Some(&*cell.get()?.name))
            .collect();
        names.sort_unstable();
        f.debug_struct("Registry")
            .field("clients", &names)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// A registry with room for `max_keys` snapshot cells (the core's
    /// [`ManagerConfig::max_keys`](token_keeper::ManagerConfig::max_keys)),
    /// logging under this module's target (see [`Registry::with_log_target`]).
    pub fn new(max_keys: usize) -> Registry {
        Registry::with_log_target(max_keys, module_path!())
    }

    /// [`Registry::new`], logging the core's events under `log_target`: the
    /// adapter's crate (`"token_keeper_ureq"`), the one its users know, so
    /// that `RUST_LOG=token_keeper_ureq=info` shows them.
    pub fn with_log_target(max_keys: usize, log_target: &'static str) -> Registry {
        Registry {
            names: (0..MAX_CLIENTS * 2).map(|_| OnceLock::new()).collect(),
            snapshots: (0..max_keys).map(|_| ArcSwapOption::empty()).collect(),
            discovered: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            log_target,
            pending_logs: Mutex::new(Vec::new()),
            log_writer: Mutex::new(()),
        }
    }

    /// The `log` target the core's events are logged under.
    pub fn log_target(&self) -> &'static str {
        self.log_target
    }

    /// Registers a named client in the core and makes its name resolvable.
    /// Call with the core's lock held (registrations must not race).
    pub fn add_client(
        &self,
        core: &mut TokenManager,
        name: &str,
        config: ClientConfig,
    ) -> Result<(), Error> {
        let mask = self.names.len() - 1;
        let mut index = name_hash(name) & mask;
        let mut used = 0;
        while let Some(entry) = self.names[index].get() {
            if &*entry.name == name {
                return Err(Error::Config(ConfigError::new(
                    "a client with this name is already registered",
                )));
            }
            used += 1;
            index = (index + 1) & mask;
        }
        if used >= MAX_CLIENTS
            || self.names.iter().filter(|c| c.get().is_some()).count() >= MAX_CLIENTS
        {
            return Err(Error::Config(ConfigError::new(
                "too many named clients (at most 256)",
            )));
        }
        // A client of a server discovered earlier is checked against its
        // metadata: an issuer audience for private_key_jwt must name that issuer.
        if let Some(metadata) = self.discovered_for(config.token_endpoint()) {
            config.check_against(&metadata)?;
        }
        let handle = core.add_client(name, config)?;
        let key = core.default_key(handle);
        let entry = NameEntry {
            name: name.into(),
            handle,
            key,
        };
        if self.names[index].set(entry).is_err() {
            return Err(Error::Config(ConfigError::new(
                "clients were registered concurrently",
            )));
        }
        Ok(())
    }

    /// The handle and default key of a named client.
    #[inline]
    pub fn lookup(&self, name: &str) -> Result<(ClientHandle, KeyId), Error> {
        let mask = self.names.len() - 1;
        let mut index = name_hash(name) & mask;
        while let Some(entry) = self.names[index].get() {
            if &*entry.name == name {
                return Ok((entry.handle, entry.key));
            }
            index = (index + 1) & mask;
        }
        Err(Error::UnknownClient(name.to_owned()))
    }

    /// The lock-free hit path: one guard load of the key's snapshot and one
    /// compare; `f` runs only if the snapshot is Fresh at `now`. Writes no
    /// shared memory (no reference count is touched).
    #[inline]
    pub fn with_fresh<R>(
        &self,
        key: KeyId,
        now: Instant,
        f: impl FnOnce(&Snapshot) -> R,
    ) -> Option<R> {
        let guard = self.snapshots.get(key.index())?.load();
        let snapshot = guard.as_ref()?;
        snapshot.is_fresh(now).then(|| f(snapshot))
    }

    /// [`Registry::with_fresh`] for a client name.
    #[inline]
    pub fn with_fresh_named<R>(
        &self,
        name: &str,
        now: Instant,
        f: impl FnOnce(&Snapshot) -> R,
    ) -> Result<Option<R>, Error> {
        let (_, key) = self.lookup(name)?;
        Ok(self.with_fresh(key, now, f))
    }

    /// Empties the core's outputs after an input, as its run loop requires:
    /// publishes snapshots, counts events and logs them (under
    /// [`Registry::log_target`], naming the client), and returns the token
    /// requests to send. Call with the core's lock held.
    pub fn drain(&self, core: &mut TokenManager) -> Drained {
        let mut events = false;
        while let Some((key, snapshot)) = core.poll_snapshot() {
            if let Some(cell) = self.snapshots.get(key.index()) {
                cell.store(snapshot);
            }
        }
        while let Some(event) = core.poll_event() {
            events = true;
            let counters = &self.counters;
            let counted: &[&AtomicU64] = match &event {
                Event::RequestStarted {
                    reason: RequestReason::DPoPNonce,
                    ..
                } => &[&counters.token_requests, &counters.dpop_nonce_retries],
                Event::RequestStarted { .. } => &[&counters.token_requests],
                Event::TokenAcquired { .. } => &[&counters.tokens_acquired],
                Event::RequestFailed { .. } => &[&counters.failures],
                Event::TokenFromStore { .. } => &[&counters.store_hits],
                _ => &[],
            };
            for counter in counted {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            if log::log_enabled!(target: self.log_target, log::Level::Error) {
                let label = key_label(core, event_key(&event));
                let mut pending = self.pending_logs.lock().unwrap_or_else(|e| e.into_inner());
                if pending.len() < MAX_PENDING_LOGS {
                    pending.push((label, event));
                }
            }
        }
        Drained {
            requests: std::iter::from_fn(|| core.poll_request()).collect(),
            store_requests: std::iter::from_fn(|| core.poll_store_request()).collect(),
            events,
        }
    }

    /// Logs the events drained so far. Call it with the core's lock
    /// released (the backend is the application's code). Returns once every
    /// line drained before the call is written, whichever flush wrote it:
    /// whoever the engine wakes afterwards finds the lines of what woke it.
    pub fn flush_logs(&self) {
        let _writing = self.log_writer.lock().unwrap_or_else(|e| e.into_inner());
        let pending =
            std::mem::take(&mut *self.pending_logs.lock().unwrap_or_else(|e| e.into_inner()));
        for (label, event) in &pending {
            log_event(self.log_target, label, event);
        }
    }

    /// What the client has done so far.
    pub fn stats(&self) -> ClientStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ClientStats {
            token_requests: load(&self.counters.token_requests),
            tokens_acquired: load(&self.counters.tokens_acquired),
            failures: load(&self.counters.failures),
            dpop_nonce_retries: load(&self.counters.dpop_nonce_retries),
            store_hits: load(&self.counters.store_hits),
        }
    }

    /// The health of every key of every named client at `now`, in the order
    /// the keys were made (see [`TokenManager::health`]). Call with the
    /// core's lock held; it only reads.
    pub fn health(&self, core: &TokenManager, now: Now) -> Vec<ClientHealth> {
        core.keys()
            .map(|key| ClientHealth {
                name: core.client_name(core.client_of(key)).to_owned(),
                key,
                overrides: core.key_overrides(key),
                health: core.health(key, now),
            })
            .collect()
    }

    /// A discovery result fetched earlier for `issuer`.
    pub fn discovered(&self, issuer: &str) -> Option<ServerMetadata> {
        self.discovered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(issuer)
            .cloned()
    }

    /// The discovery result whose token endpoint is `endpoint`, if any.
    fn discovered_for(&self, endpoint: &http::Uri) -> Option<ServerMetadata> {
        self.discovered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .find(|m| {
                m.token_endpoint()
                    .parse::<http::Uri>()
                    .is_ok_and(|u| u == *endpoint)
            })
            .cloned()
    }

    /// Remembers a discovery result.
    pub fn remember_discovery(&self, issuer: &str, metadata: ServerMetadata) {
        self.discovered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(issuer.to_owned(), metadata);
    }
}

/// The key an event is about.
fn event_key(event: &Event) -> Option<KeyId> {
    match event {
        Event::RequestStarted { key, .. }
        | Event::TokenAcquired { key, .. }
        | Event::RequestFailed { key, .. }
        | Event::BackoffEntered { key, .. }
        | Event::TokenInvalidated { key, .. }
        | Event::TokenExpired { key }
        | Event::TokenNotBound { key }
        | Event::ScopeDiffers { key, .. }
        | Event::RejectionDamped { key }
        | Event::TokenFromStore { key, .. }
        | Event::StoreEntryRefused { key, .. } => Some(*key),
        _ => None,
    }
}

/// How log lines name `key`: its client's name, followed by what sets the
/// key apart from the client's configured request, if anything
/// (`m2m (scope="reports.read")`).
fn key_label(core: &TokenManager, key: Option<KeyId>) -> String {
    let Some(key) = key.filter(|key| key.index() < core.key_count()) else {
        return "token-keeper".to_owned();
    };
    let name = core.client_name(core.client_of(key));
    match core.key_overrides(key) {
        None => name.to_owned(),
        Some(overrides) => format!("{name} ({overrides})"),
    }
}

/// Logs an event through the `log` facade under `target` (the adapter's
/// crate), naming the client as `client` (see [`Registry::drain`]). Events
/// carry no secrets.
pub fn log_event(target: &str, client: &str, event: &Event) {
    match event {
        Event::RequestStarted { id, reason, .. } => {
            log::debug!(target: target, "{client}: token request {id} started ({reason:?})")
        }
        Event::TokenAcquired {
            lifetime,
            token_type,
            scope,
            ..
        } => log::info!(
            target: target,
            "{client}: {} token acquired, lifetime {} s, scope {:?}",
            token_type.scheme(),
            lifetime.as_secs(),
            scope.as_deref().unwrap_or("")
        ),
        Event::RequestFailed { id, error, .. } => {
            log::warn!(target: target, "{client}: token request {id} failed: {error}")
        }
        Event::BackoffEntered {
            delay,
            failures,
            serving_cached,
            ..
        } => log::warn!(
            target: target,
            "{client}: backing off {:.1} s after {failures} failure(s){}",
            delay.as_secs_f64(),
            if *serving_cached {
                "; still serving the cached token"
            } else {
                ""
            }
        ),
        Event::TokenInvalidated { reason, .. } => {
            log::info!(target: target, "{client}: token invalidated ({reason:?})")
        }
        Event::TokenExpired { .. } => log::debug!(target: target, "{client}: token expired"),
        Event::ScopeDiffers {
            requested, granted, ..
        } => {
            let granted_set = Scope::parse(granted);
            let requested_set = Scope::parse(requested);
            let missing: Vec<&str> = requested_set
                .iter()
                .filter(|scope| !granted_set.iter().any(|g| g == *scope))
                .collect();
            if missing.is_empty() {
                log::warn!(
                    target: target,
                    "{client}: the server granted scope {granted:?}, more than the {requested:?} requested"
                )
            } else {
                log::warn!(
                    target: target,
                    "{client}: the server granted scope {granted:?}, not the {requested:?} requested: \
                     API calls that need {:?} will likely be refused (403)",
                    missing.join(" ")
                )
            }
        }
        Event::RejectionDamped { .. } => log::warn!(
            target: target,
            "{client}: the API rejected a token fetched after its last rejection; \
             not fetching another within the damping window (check the audience, scope or resource)"
        ),
        Event::TokenFromStore {
            lifetime,
            remaining,
            ..
        } => log::info!(
            target: target,
            "{client}: token taken from the shared store, {} s of {} s left",
            remaining.as_secs(),
            lifetime.as_secs()
        ),
        Event::StoreUnavailable { error, retry_in } => log::warn!(
            target: target,
            "{client}: {error}; going on without it (trying again in {:.1} s)",
            retry_in.as_secs_f64()
        ),
        Event::StoreRecovered => {
            log::info!(target: target, "{client}: the shared token store answers again")
        }
        Event::StoreEntryRefused { error, .. } => log::warn!(
            target: target,
            "{client}: {error}; fetching a new token"
        ),
        other => log::debug!(target: target, "{client}: {other:?}"),
    }
}

/// A seed for the core's jitter that differs between processes.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(u64::from(std::process::id()));
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use token_keeper::{Authorization, ClientAuth, ClientSecret, ManagerConfig};

    #[test]
    fn drain_publishes_counts_and_hands_out_requests() {
        let registry = Registry::new(16);
        let mut core = TokenManager::new(ManagerConfig::default(), 1);
        let config = ClientConfig::new(
            "https://as.example/t",
            "c",
            ClientAuth::Basic(ClientSecret::new("s")),
        )
        .unwrap();
        registry.add_client(&mut core, "m2m", config).unwrap();
        let (_, key) = registry.lookup("m2m").unwrap();
        assert!(matches!(
            registry.lookup("other"),
            Err(Error::UnknownClient(_))
        ));
        let Authorization::Fetch(id) = core.authorize(key, Now::from_secs(0)) else {
            panic!()
        };
        let drained = registry.drain(&mut core);
        assert_eq!(drained.requests.len(), 1);
        assert!(drained.events, "a request started");
        assert_eq!(registry.stats().token_requests, 1);
        let response = http::Response::builder()
            .status(200)
            .body(r#"{"access_token":"t","token_type":"Bearer","expires_in":60}"#)
            .unwrap();
        core.handle_response(id, response, Now::from_secs(0))
            .unwrap();
        let drained = registry.drain(&mut core);
        assert!(drained.requests.is_empty());
        assert!(drained.events, "a request ended");
        assert!(!registry.drain(&mut core).events, "nothing happened since");
        assert_eq!(registry.stats().tokens_acquired, 1);
        let header = registry.with_fresh(key, Instant::from_secs(1), |s| s.header().clone());
        assert_eq!(header.unwrap(), "Bearer t");
        assert!(
            registry
                .with_fresh(key, Instant::from_secs(59), |_| ())
                .is_none(),
            "stale: ask the core"
        );
        assert_eq!(
            TokenInfo::of(&core, key, Now::from_secs(1))
                .unwrap()
                .access_token
                .expose_secret(),
            "t"
        );
    }

    #[test]
    fn health_and_log_lines_name_each_key_by_its_client() {
        let registry = Registry::with_log_target(16, "token_keeper_test");
        assert_eq!(registry.log_target(), "token_keeper_test");
        let mut core = TokenManager::new(ManagerConfig::default(), 1);
        let config = ClientConfig::new(
            "https://as.example/t",
            "c",
            ClientAuth::Basic(ClientSecret::new("s")),
        )
        .unwrap()
        .scope("api");
        registry.add_client(&mut core, "orders", config).unwrap();
        let (handle, key) = registry.lookup("orders").unwrap();
        let reports = core
            .key(handle, &token_keeper::KeyOverrides::new().scope("reports"))
            .unwrap();
        assert_eq!(key_label(&core, Some(key)), "orders");
        assert_eq!(
            key_label(&core, Some(reports)),
            r#"orders (scope="reports")"#
        );
        let Authorization::Fetch(_) = core.authorize(reports, Now::from_secs(0)) else {
            panic!()
        };
        registry.drain(&mut core);
        let health = registry.health(&core, Now::from_secs(1));
        let summary: Vec<_> = health
            .iter()
            .map(|h| {
                (
                    h.name.as_str(),
                    h.key,
                    h.overrides.as_deref(),
                    h.health.state,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("orders", key, None, token_keeper::HealthState::Empty),
                (
                    "orders",
                    reports,
                    Some(r#"scope="reports""#),
                    token_keeper::HealthState::Fetching
                ),
            ]
        );
        assert_eq!(health[1].health.token_requests, 1);
        assert_eq!(registry.stats().token_requests, 1);
    }

    #[test]
    fn the_name_table_holds_many_clients_and_refuses_duplicates() {
        let registry = Registry::new(1024);
        let mut core = TokenManager::new(ManagerConfig::default(), 1);
        let config = || {
            ClientConfig::new(
                "https://as.example/t",
                "c",
                ClientAuth::Basic(ClientSecret::new("s")),
            )
            .unwrap()
        };
        for i in 0..MAX_CLIENTS {
            registry
                .add_client(&mut core, &format!("client-{i}"), config())
                .unwrap();
        }
        for i in 0..MAX_CLIENTS {
            let (handle, key) = registry.lookup(&format!("client-{i}")).unwrap();
            assert_eq!(core.default_key(handle), key);
        }
        assert!(matches!(
            registry.add_client(&mut core, "client-7", config()),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            registry.add_client(&mut core, "one-too-many", config()),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            registry.lookup("client-x"),
            Err(Error::UnknownClient(_))
        ));
        assert!(format!("{registry:?}").contains("client-255"));
    }
}
