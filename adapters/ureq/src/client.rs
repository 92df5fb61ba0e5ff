//! [`TokenClient`]: the blocking client, a [`Client`] given ureq.

use std::sync::Arc;
use std::time::Duration;

use token_keeper::{ManagerConfig, ProxySettings};
use token_keeper_driver::tls::TlsSettings;
use token_keeper_driver::{
    proxy_from_env, random_seed, Blocking, Client, EngineSettings, FleetStore,
};

use crate::clock::{Clock, SystemClock};
use crate::error::Error;
use crate::transport::{self, UreqTransport};

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
    /// Which proxy token and discovery requests (and the API requests of
    /// agents built by [`TokenMiddleware::build_agent`](crate::TokenMiddleware::build_agent))
    /// go through. Default: the environment, read once when the options are
    /// made, with curl's rules ([`proxy_from_env`](token_keeper_driver::proxy_from_env)).
    /// A loopback destination is never proxied, whatever this says.
    pub proxy: ProxySettings,
    /// Which certificates token and discovery requests trust (default: the
    /// Mozilla roots). The OS store needs the `platform-verifier` feature;
    /// ureq cannot add CAs to it (refused by [`TokenClient::with_options`]).
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

/// The blocking token client: a [`Client`] whose callers wait on a
/// condition variable, sending token and discovery requests with ureq.
/// Cheap to clone; every method is [`Client`]'s (through `Deref`).
///
/// It owns the core and the named client configurations, and refreshes
/// tokens ahead of expiry on a background thread that stops when the last
/// clone is dropped. A cached Fresh token is handed out without taking any
/// lock.
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
///
/// // Or in one step from the issuer's metadata (discovery):
/// tokens.add_client_from_issuer("reports", "https://auth.example.com", |token_endpoint| {
///     Ok(ClientConfig::new(token_endpoint, "reports",
///                          ClientAuth::Basic(ClientSecret::new("…")))?.scope("reports.read"))
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct TokenClient(Client<Blocking>);

impl std::ops::Deref for TokenClient {
    type Target = Client<Blocking>;

    fn deref(&self) -> &Client<Blocking> {
        &self.0
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
        TokenClient::with_options(ClientOptions::default()).expect("the default options are valid")
    }

    /// A client with these options; refuses TLS settings this build cannot
    /// apply (see [`ClientOptions::tls`]).
    pub fn with_options(options: ClientOptions) -> Result<TokenClient, Error> {
        let agent = transport::token_agent(options.connect_timeout, options.timeout, &options.tls)?;
        let settings = EngineSettings {
            manager: options.manager,
            seed: options.seed,
            clock: options.clock,
            proxy: options.proxy,
            // Log lines under this crate's name, the one its users filter on.
            log_target: env!("CARGO_CRATE_NAME"),
            store: options.store,
        };
        Ok(TokenClient(Client::start(
            settings,
            Box::new(UreqTransport(agent)),
        )))
    }
}
