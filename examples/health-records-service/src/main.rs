//! # health-records-service
//!
//! The Rust counterpart of an ASP.NET Core host that calls
//! `GET /api/v1/integration/health-records` through
//! `IHttpClientFactory.CreateClient("m2m")` with Duende's
//! `AccessTokenRequestHandler` in the client's handler chain:
//!
//! - `GET /records` calls the protected API (`--api`) through a
//!   `reqwest_middleware` client whose chain holds token-keeper's
//!   [`TokenMiddleware`], routed to
//!   the API's origin with the token client named `m2m`. The middleware
//!   takes the cached token (or has one fetched, once for every concurrent
//!   caller), attaches it (with a DPoP proof for a DPoP-bound token), and
//!   on a 401 lets the core decide whether to retry once with a new token.
//!   The API's status and JSON body come back as they are.
//! - `GET /healthz` serves the token's health (`Client::health`): state,
//!   usable life, next refresh, last error, token requests. Never a token,
//!   never a secret.
//!
//! A token that cannot be had is a 503 with a short JSON error; any other
//! failure to reach the API a 502. SIGINT and SIGTERM stop the service
//! gracefully (exit 0). `README.md` beside this file walks through the
//! seed's sequence step by step, with every flag, field and answer.

#![forbid(unsafe_code)]

mod args;
mod logger;
mod service;

use std::future::IntoFuture;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use token_keeper::jose::{Algorithm, Signer};
use token_keeper::proxy::is_loopback_host;
use token_keeper::{ClientAuth, ClientConfig, ConfigError};
use token_keeper_redis::{RedisStore, RedisStoreOptions, StoreKeys};
use token_keeper_reqwest::{
    ClientOptions, FleetStore, PrivateKey, ReqwestTokenClient, TokenMiddleware,
};

use crate::args::{Config, Dpop, Endpoint, Parsed, StoreSettings, USAGE};
use crate::service::{App, CLIENT};

/// How long open requests may take to finish after SIGINT or SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long, before exiting, the store gets to receive a token this process
/// fetched and the release of a lease it holds (as tokenctl does).
const SETTLE_WAIT: Duration = Duration::from_secs(1);
/// The bound on one API call (connect, answer and body).
const API_TIMEOUT: Duration = Duration::from_secs(30);
/// The bound on connecting to the API.
const API_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the service stopped before serving: a bad setting (exit 2) or
/// anything else (exit 1). Messages name flags, never a secret.
enum Failure {
    Usage(String),
    Runtime(String),
}

fn main() -> ExitCode {
    logger::init();
    let env = |name: &str| std::env::var(name).ok();
    let config = match args::parse(std::env::args_os().skip(1), &env) {
        Ok(Parsed::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Run(config)) => *config,
        Err(usage) => {
            eprintln!("health-records-service: {usage} (see --help)");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("health-records-service: starting the tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let has_store = config.store.is_some();
    let outcome = runtime.block_on(run(config));
    // Bounded: a blocking task stuck in a DNS lookup must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(tokens) => {
            if has_store && !tokens.settle_store(SETTLE_WAIT) {
                eprintln!(
                    "health-records-service: the fleet store did not settle within {SETTLE_WAIT:?}"
                );
            }
            ExitCode::SUCCESS
        }
        Err(Failure::Usage(message)) => {
            eprintln!("health-records-service: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(message)) => {
            eprintln!("health-records-service: {message}");
            ExitCode::from(1)
        }
    }
}

/// The fleet store the settings describe. Nothing connects here: with Redis
/// down the client goes to the token endpoint as without a store.
fn fleet_store(settings: StoreSettings) -> Result<FleetStore, Failure> {
    let usage = |flag: &str, e: &dyn std::fmt::Display| Failure::Usage(format!("{flag}: {e}"));
    let mut keys =
        StoreKeys::from_base64(1, &settings.key).map_err(|e| usage("--store-key-env", &e))?;
    if let Some(old) = &settings.old_key {
        keys = keys
            .with_old_base64(1, old)
            .map_err(|e| usage("--store-old-key-env", &e))?;
    }
    let mut options = RedisStoreOptions::new(settings.url.as_str(), keys);
    if let Some(namespace) = settings.namespace {
        options = options.namespace(namespace);
    }
    let store = RedisStore::new(options).map_err(|e| usage("--store", &e))?;
    Ok(FleetStore::new(store))
}

/// Sets everything up, prints the startup line, serves until SIGINT or
/// SIGTERM; gives back the token client (to settle its store).
async fn run(config: Config) -> Result<ReqwestTokenClient, Failure> {
    let Config {
        listen,
        endpoint,
        client_id,
        secret,
        scope,
        resources,
        api,
        dpop,
        store,
        fixed_authorization,
    } = config;
    let runtime_error =
        |what: &str, e: &dyn std::fmt::Display| Failure::Runtime(format!("{what}: {e}"));

    // The signal handlers first: a signal that arrives once the startup line
    // is out must find them in place.
    let shutdown =
        shutdown_signal().map_err(|e| runtime_error("installing signal handlers", &e))?;

    let dpop_key: Option<Arc<PrivateKey>> = match &dpop {
        Dpop::Off => None,
        Dpop::Ephemeral => Some(Arc::new(
            PrivateKey::generate(Algorithm::ES256)
                .map_err(|e| runtime_error("making a DPoP key", &e))?,
        )),
        Dpop::File(path) => Some(Arc::new(
            PrivateKey::from_file(path, None)
                .map_err(|e| Failure::Usage(format!("--dpop-key {}: {e}", path.display())))?,
        )),
    };
    let fleet = store.map(fleet_store).transpose()?;
    let has_store = fleet.is_some();
    let tokens = ReqwestTokenClient::with_options(ClientOptions {
        store: fleet,
        ..ClientOptions::default()
    })
    .map_err(|e| Failure::Usage(e.to_string()))?;

    // `services.AddClientCredentialsTokenManagement().AddClient("m2m", …)`.
    let mut token_endpoint = String::new();
    let configure = |endpoint: &str| -> Result<ClientConfig, ConfigError> {
        token_endpoint = endpoint.to_owned();
        let mut config =
            ClientConfig::new(endpoint, client_id.as_str(), ClientAuth::Basic(secret))?;
        if let Some(scope) = &scope {
            config = config.scope(scope);
        }
        for resource in &resources {
            config = config.resource(resource)?;
        }
        if let Some(key) = &dpop_key {
            config = config.dpop(key.clone());
        }
        Ok(config)
    };
    let discovered_from = match &endpoint {
        Endpoint::TokenUrl(url) => {
            let config = configure(url).map_err(|e| Failure::Usage(format!("--token-url: {e}")))?;
            tokens
                .add_client(CLIENT, config)
                .map_err(|e| Failure::Usage(e.to_string()))?;
            None
        }
        Endpoint::Issuer(issuer) => {
            tokens
                .add_client_from_issuer(CLIENT, issuer, configure)
                .await
                .map_err(|e| {
                    if e.is_config() {
                        Failure::Usage(format!("--issuer: {e}"))
                    } else {
                        Failure::Runtime(format!("--issuer {issuer}: {e}"))
                    }
                })?;
            Some(issuer.clone())
        }
    };

    // `.AddHttpClient("m2m", …).AddClientCredentialsTokenHandler("m2m")`:
    // the middleware routed to the API's origin, over a client that follows
    // no redirect (a token or a proof never follows one).
    let origin = api.origin().ascii_serialization();
    let middleware = TokenMiddleware::new(tokens.clone())
        .route(&origin, CLIENT)
        .map_err(|e| Failure::Usage(format!("--api: {e}")))?;
    let mut builder = TokenMiddleware::client_builder()
        .timeout(API_TIMEOUT)
        .connect_timeout(API_CONNECT_TIMEOUT);
    if api.host_str().is_some_and(is_loopback_host) {
        // A loopback destination is never proxied (token-keeper's rule).
        builder = builder.no_proxy();
    }
    let http = builder
        .build()
        .map_err(|e| runtime_error("building the API client", &e))?;
    let app = Arc::new(App {
        api_url: api.clone(),
        api: reqwest_middleware::ClientBuilder::new(http.clone())
            .with(middleware)
            .build(),
        bare: reqwest_middleware::ClientBuilder::new(http).build(),
        fixed_authorization,
        tokens: tokens.clone(),
    });

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| runtime_error(&format!("--listen {listen}"), &e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| runtime_error("reading the bound address", &e))?;

    // The one startup line (tests and the bench read the address from it).
    let mut line = format!(
        "health-records-service: listening on http://{bound} (token endpoint {token_endpoint}"
    );
    if let Some(issuer) = discovered_from {
        line.push_str(&format!(", discovered from {issuer}"));
    }
    line.push_str(&format!(", API {api}, client id {client_id}"));
    if let Some(key) = &dpop_key {
        line.push_str(&format!(", DPoP key jkt {}", key.public_jwk().thumbprint()));
    }
    if has_store {
        line.push_str(", fleet store on");
    }
    if app.fixed_authorization.is_some() {
        line.push_str(", FIXED Authorization header without the token middleware (bench mode A)");
    }
    line.push(')');
    eprintln!("{line}");

    // Graceful shutdown: stop accepting, let open requests finish, within
    // SHUTDOWN_GRACE.
    let (stopping_tx, mut stopping_rx) = tokio::sync::watch::channel(false);
    let serve = axum::serve(listener, service::router(app)).with_graceful_shutdown(async move {
        let signal = shutdown.await;
        eprintln!("health-records-service: {signal}, shutting down");
        let _ = stopping_tx.send(true);
    });
    let overdue = async move {
        let _ = stopping_rx.wait_for(|stopping| *stopping).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = serve.into_future() => {
            served.map_err(|e| runtime_error("serving", &e))?;
        }
        () = overdue => {
            eprintln!(
                "health-records-service: open requests still running after {SHUTDOWN_GRACE:?}; \
                 stopping anyway"
            );
        }
    }
    Ok(tokens)
}

/// A future that ends on SIGINT or SIGTERM (SIGINT only off Unix), naming
/// the signal. The handlers are installed when this is called, not when the
/// future is first polled.
fn shutdown_signal(
) -> std::io::Result<impl std::future::Future<Output = &'static str> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => "SIGINT",
                _ = terminate.recv() => "SIGTERM",
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        })
    }
}
