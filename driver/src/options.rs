//! [`ClientOptions`]: how a client is set up, on any adapter.

use std::sync::Arc;
use std::time::Duration;

use token_keeper::{ManagerConfig, ProxySettings};

use crate::clock::{Clock, SystemClock};
use crate::proxy::proxy_from_env;
use crate::registry::random_seed;
use crate::store::FleetStore;
use crate::tls::TlsSettings;

/// Options of a client (`TokenClient::with_options`,
/// `AsyncTokenClient::with_options`): the same on every adapter.
#[derive(Clone)]
pub struct ClientOptions {
    /// The core's limits (response size, request deadline, number of keys).
    pub manager: ManagerConfig,
    /// Connect timeout for token and discovery requests (default 10 s).
    pub connect_timeout: Duration,
    /// Overall timeout for one token or discovery request, body included
    /// (default 10 s).
    pub timeout: Duration,
    /// The clock (default [`SystemClock`]).
    pub clock: Arc<dyn Clock>,
    /// Seed for the core's jitter (default: random per process).
    pub seed: u64,
    /// Which proxy token and discovery requests go through (an HTTP
    /// `CONNECT` tunnel), and on the ureq adapter the API requests of agents
    /// built by its middleware. Default: the environment, read once when the
    /// options are made, with curl's rules ([`proxy_from_env`]). A loopback
    /// destination is never proxied, whatever this says. A surf backend
    /// (`TokenTransport::surf`) cannot be told to use a proxy: a request the
    /// settings would tunnel fails with a transport error saying so (give
    /// `ProxySettings::none()` when the backend handles proxies itself).
    pub proxy: ProxySettings,
    /// Which certificates token and discovery requests trust (default: the
    /// Mozilla roots). The OS store needs the `platform-verifier` feature.
    /// Refused by `with_options` where it cannot apply: ureq cannot add CAs
    /// to the OS store; a surf backend's TLS is its own; a `DirectHttp` with
    /// roots of its own already chose.
    pub tls: TlsSettings,
    /// A token store shared with the other processes of a fleet (Redis:
    /// `token-keeper-redis`), so that they fetch one token per lifetime
    /// between them (default: none; see [`TokenManager::enable_store`](token_keeper::TokenManager::enable_store)).
    /// The store is an optimisation: while it is down or slow, the client
    /// behaves as without it.
    pub store: Option<FleetStore>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            manager: ManagerConfig::default(),
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
            clock: Arc::new(SystemClock::new()),
            seed: random_seed(),
            proxy: proxy_from_env(),
            tls: TlsSettings::default(),
            store: None,
        }
    }
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("manager", &self.manager)
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("proxy", &self.proxy)
            .field("tls", &self.tls)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl ClientOptions {
    /// The engine's settings from these options, logging under `log_target`
    /// (the adapter's crate name, which its users filter on).
    pub fn engine_settings(&self, log_target: &'static str) -> crate::EngineSettings {
        crate::EngineSettings {
            manager: self.manager.clone(),
            seed: self.seed,
            clock: Arc::clone(&self.clock),
            proxy: self.proxy.clone(),
            log_target,
            store: self.store.clone(),
        }
    }
}
