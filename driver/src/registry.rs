//! [`Registry`]: named clients, published snapshots, discovery cache, counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use token_keeper::discovery::ServerMetadata;
use token_keeper::{
    AccessToken, ClientConfig, ClientHandle, ConfigError, Event, Instant, KeyId, Now, Snapshot,
    TokenManager, TokenRequest, TokenType,
};

use crate::error::Error;

/// Counts of what a client did, for reports and demos.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Token requests started.
    pub token_requests: u64,
    /// Tokens received and cached.
    pub tokens_acquired: u64,
    /// Token requests that failed.
    pub failures: u64,
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
}

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
    /// [`ManagerConfig::max_keys`](token_keeper::ManagerConfig::max_keys)).
    pub fn new(max_keys: usize) -> Registry {
        Registry {
            names: (0..MAX_CLIENTS * 2).map(|_| OnceLock::new()).collect(),
            snapshots: (0..max_keys).map(|_| ArcSwapOption::empty()).collect(),
            discovered: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        }
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
    /// publishes snapshots, counts and logs events, and returns the token
    /// requests to send. Call with the core's lock held.
    pub fn drain(&self, core: &mut TokenManager) -> Vec<TokenRequest> {
        while let Some((key, snapshot)) = core.poll_snapshot() {
            if let Some(cell) = self.snapshots.get(key.index()) {
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
        std::iter::from_fn(|| core.poll_request()).collect()
    }

    /// What the client has done so far.
    pub fn stats(&self) -> ClientStats {
        ClientStats {
            token_requests: self.counters.token_requests.load(Ordering::Relaxed),
            tokens_acquired: self.counters.tokens_acquired.load(Ordering::Relaxed),
            failures: self.counters.failures.load(Ordering::Relaxed),
        }
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

/// Logs an event through the `log` facade. Events carry no secrets.
pub fn log_event(event: &Event) {
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
        Event::RejectionDamped { key } => log::warn!(
            "{key}: the API rejected a token fetched after its last rejection; \
             not fetching another within the damping window (check the audience, scope or resource)"
        ),
        other => log::debug!("{other:?}"),
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
        let requests = registry.drain(&mut core);
        assert_eq!(requests.len(), 1);
        assert_eq!(registry.stats().token_requests, 1);
        let response = http::Response::builder()
            .status(200)
            .body(r#"{"access_token":"t","token_type":"Bearer","expires_in":60}"#)
            .unwrap();
        core.handle_response(id, response, Now::from_secs(0))
            .unwrap();
        assert!(registry.drain(&mut core).is_empty());
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
