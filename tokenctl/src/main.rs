//! `tokenctl`: fetch tokens, call APIs through the managed client, demo
//! token-keeper's caching, refresh-ahead and single-flight on a local server,
//! generate keys to keep (DPoP or `private_key_jwt`), and run that local
//! server in the foreground for a service under development (`serve`).

#![forbid(unsafe_code)]

mod args;
mod call;
mod fleet;
mod plot;
mod serve;
mod store;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use std::sync::Arc;

use token_keeper::jose::{Algorithm, Signer};
use token_keeper::{ClientAuth, ClientConfig, ClientSecret, PrivateKeyJwt, ProxySettings};
use token_keeper_driver::tls::TlsSettings;
use token_keeper_driver::{ClientStats, FleetStore};
use token_keeper_keys::PrivateKey;
use token_keeper_surf::AsyncTokenClient;
use token_keeper_ureq::{Error, TokenClient, TokenInfo};

use crate::args::{AdapterKind, AuthMethod, ClientFlags, Command, TlsRootsFlag, Usage};

/// The name the command line's client is registered under.
const CLIENT: &str = "cli";

/// Why a command failed; each kind has its exit code.
#[derive(Debug)]
pub enum Failure {
    Usage(String),
    Token(Error),
    Other(String),
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Token(error) => token_exit_code(error),
            Failure::Other(_) => 1,
        }
    }
}

/// 3 refused (OAuth), 4 transport, 5 invalid response, 2 configuration, 1 otherwise.
/// A client backing off exits as the failure it backs off after.
pub fn token_exit_code(error: &Error) -> u8 {
    if error.is_oauth() {
        3
    } else if error.is_transport()
        || matches!(
            error,
            Error::Discovery(token_keeper::discovery::DiscoveryError::Unreachable(_))
        )
    {
        // An issuer that cannot be reached is a transport failure too.
        4
    } else if error.is_invalid_response() || error.is_discovery() {
        5
    } else if error.is_config() || error.is_tls() {
        2
    } else {
        1
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Usage(m) => write!(f, "{m} (see tokenctl --help)"),
            Failure::Token(e) => e.fmt(f),
            Failure::Other(m) => f.write_str(m),
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        match e {
            Error::Config(c) => Failure::Usage(c.to_string()),
            other => Failure::Token(other),
        }
    }
}

fn main() -> ExitCode {
    // One clear line on stderr, never a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        eprintln!("tokenctl: internal error: {message}");
    }));
    let result = match args::parse(std::env::args_os().skip(1)) {
        Err(Usage(message)) => Err(Failure::Usage(message)),
        Ok(command) => run(command),
    };
    match result {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("tokenctl: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}

fn run(command: Command) -> Result<ExitCode, Failure> {
    match command {
        Command::Help => {
            print!("{}", args::USAGE);
            Ok(ExitCode::SUCCESS)
        }
        Command::Version => {
            println!("tokenctl {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { client, json } => token(&client, json),
        Command::Call {
            client,
            url,
            amount,
            concurrency,
            json,
            rate,
            ticks,
        } => {
            let tokens = build_client(&client)?;
            let tls = tls_settings(&client)?;
            let pace = call::Pace { rate, ticks };
            call::call(
                &tokens,
                CLIENT,
                &url,
                amount,
                concurrency,
                json,
                &tls,
                pace,
                client.store.is_some(),
            )
        }
        Command::Demo {
            duration,
            fleet: None,
            store,
            ..
        } => call::demo(duration.unwrap_or(Duration::from_secs(8)), &store),
        Command::Demo {
            duration,
            fleet: Some(processes),
            plot,
            ..
        } => fleet::demo(
            processes,
            duration.unwrap_or(fleet::DEFAULT_DURATION),
            plot.as_deref(),
        ),
        Command::Keygen { alg, out } => keygen(alg, out.as_deref()),
        Command::Serve(flags) => serve::serve(&flags),
    }
}

/// `tokenctl keygen`: a new key as PKCS#8 PEM, to a new file (mode 0600) or
/// stdout, and its RFC 7638 thumbprint on stderr.
fn keygen(alg: Algorithm, out: Option<&Path>) -> Result<ExitCode, Failure> {
    let (key, pem) = PrivateKey::generate_pem(alg).map_err(|e| Failure::Other(e.to_string()))?;
    match out {
        Some(path) => write_new_key_file(path, pem.as_bytes())?,
        None => write_key_to_stdout(pem.as_bytes())
            .map_err(|e| Failure::Other(format!("writing the key to stdout: {e}")))?,
    }
    drop(pem);
    eprintln!("thumbprint: {}", key.public_jwk().thumbprint());
    Ok(ExitCode::SUCCESS)
}

/// Creates `path`, readable and writable by its owner only, and writes the
/// key to it. An existing file is never replaced (it may be the key that
/// tokens and registrations are bound to). Errors name the path, never the key.
fn write_new_key_file(path: &Path, pem: &[u8]) -> Result<(), Failure> {
    let shown = path.display();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| {
        Failure::Other(if e.kind() == std::io::ErrorKind::AlreadyExists {
            format!(
                "{shown} already exists; keygen never overwrites a key file \
                 (choose another --out, or remove the old key first)"
            )
        } else {
            format!("cannot create the key file {shown}: {e}")
        })
    })?;
    if let Err(e) = file.write_all(pem).and_then(|()| file.sync_all()) {
        // A partial key is no key: remove the file this call created.
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(Failure::Other(format!("writing the key file {shown}: {e}")));
    }
    Ok(())
}

/// Writes the key to stdout without passing it through std's stdout buffer
/// (which would keep an unwiped copy for the life of the process): straight
/// to a duplicate of the file descriptor, on Unix.
fn write_key_to_stdout(pem: &[u8]) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        let stdout = std::io::stdout();
        stdout.lock().flush()?;
        let mut raw = std::fs::File::from(stdout.as_fd().try_clone_to_owned()?);
        raw.write_all(pem)
    }
    #[cfg(not(unix))]
    {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(pem)?;
        stdout.flush()
    }
}

/// The managed client, on the adapter the command line chose.
#[derive(Clone)]
pub enum Managed {
    /// Blocking, on ureq.
    Ureq(TokenClient),
    /// Async, on surf (driven here with async-std).
    Surf(AsyncTokenClient),
}

/// What the client flags set beyond the adapter: TLS, proxy, fleet store
/// and the bound on a token request.
struct ManagedOptions {
    tls: TlsSettings,
    proxy: ProxySettings,
    store: Option<FleetStore>,
    token_timeout: Option<Duration>,
}

impl Managed {
    fn new(kind: AdapterKind, options: ManagedOptions) -> Result<Managed, Error> {
        let ManagedOptions {
            tls,
            proxy,
            store,
            token_timeout,
        } = options;
        // `--token-timeout`: the adapter's bound on a token request and the
        // core's deadline alike (a store's lease lasts that + 5 s).
        let mut driver = token_keeper_driver::ClientOptions {
            tls,
            proxy,
            store,
            ..Default::default()
        };
        if let Some(timeout) = token_timeout {
            driver.timeout = timeout;
            driver.connect_timeout = driver.connect_timeout.min(timeout);
            driver.manager.request_timeout = timeout;
        }
        Ok(match kind {
            AdapterKind::Ureq => Managed::Ureq(TokenClient::with_options(
                token_keeper_ureq::ClientOptions {
                    manager: driver.manager,
                    connect_timeout: driver.connect_timeout,
                    timeout: driver.timeout,
                    tls: driver.tls,
                    proxy: driver.proxy,
                    store: driver.store,
                    ..Default::default()
                },
            )?),
            AdapterKind::Surf => Managed::Surf(AsyncTokenClient::with_options(
                token_keeper_surf::DirectHttp::new(),
                driver,
            )?),
        })
    }

    fn discover(&self, issuer: &str) -> Result<String, Error> {
        let metadata = match self {
            Managed::Ureq(c) => c.discover(issuer)?,
            Managed::Surf(c) => async_std::task::block_on(c.discover(issuer))?,
        };
        Ok(metadata.token_endpoint().to_owned())
    }

    fn add_client(&self, name: &str, config: ClientConfig) -> Result<(), Error> {
        match self {
            Managed::Ureq(c) => c.add_client(name, config),
            Managed::Surf(c) => c.add_client(name, config),
        }
    }

    fn token(&self, name: &str) -> Result<TokenInfo, Error> {
        match self {
            Managed::Ureq(c) => c.token(name),
            Managed::Surf(c) => async_std::task::block_on(c.token(name)),
        }
    }

    /// Token requests made so far.
    pub fn token_requests(&self) -> u64 {
        self.stats().token_requests
    }

    /// The client's counters (token requests, store hits, …).
    pub fn stats(&self) -> ClientStats {
        match self {
            Managed::Ureq(c) => c.stats(),
            Managed::Surf(c) => c.stats(),
        }
    }

    /// Before exit: the store gets this process's writes and lease releases
    /// (at most `wait`; nothing to do without a store).
    pub fn settle_store(&self, wait: std::time::Duration) {
        match self {
            Managed::Ureq(c) => c.settle_store(wait),
            Managed::Surf(c) => c.settle_store(wait),
        };
    }
}

/// Builds the managed client from the command line's client flags (settle
/// its store, if it has one, before exit: [`Managed::settle_store`]).
pub fn build_client(flags: &ClientFlags) -> Result<Managed, Failure> {
    let auth = match flags.auth.unwrap_or(AuthMethod::Basic) {
        AuthMethod::PrivateKeyJwt => {
            let path = flags
                .private_key
                .as_deref()
                .ok_or_else(|| Failure::Usage("--private-key is required".into()))?;
            let alg = match flags.alg.as_deref() {
                Some(name) => Some(Algorithm::from_name(name).ok_or_else(|| {
                    Failure::Usage(format!(
                        "--alg: {name:?} is not one of ES256, EdDSA, RS256, PS256"
                    ))
                })?),
                None => None,
            };
            let key =
                PrivateKey::from_file(path, alg).map_err(|e| Failure::Usage(e.to_string()))?;
            ClientAuth::PrivateKeyJwt(PrivateKeyJwt::new(Arc::new(key)))
        }
        method => {
            let secret = match (&flags.client_secret, &flags.client_secret_env) {
                (Some(secret), _) => secret.clone(),
                (None, Some(var)) => std::env::var(var).map_err(|_| {
                    Failure::Usage(format!(
                        "environment variable {var} is not set (or not UTF-8)"
                    ))
                })?,
                (None, None) => return Err(Failure::Usage("no client secret given".into())),
            };
            let secret = ClientSecret::new(secret);
            if method == AuthMethod::Post {
                ClientAuth::Post(secret)
            } else {
                ClientAuth::Basic(secret)
            }
        }
    };
    let dpop: Option<Arc<dyn Signer>> = match (&flags.dpop_key, flags.dpop) {
        (Some(path), _) => Some(Arc::new(
            PrivateKey::from_file(path, None).map_err(|e| Failure::Usage(e.to_string()))?,
        )),
        (None, true) => Some(Arc::new(
            PrivateKey::generate(Algorithm::ES256).map_err(|e| Failure::Other(e.to_string()))?,
        )),
        (None, false) => None,
    };
    let tls = tls_settings(flags)?;
    let proxy = proxy_settings(flags)?;
    let store = store::fleet_store(flags).map_err(|e| Failure::Usage(e.to_string()))?;
    if store.is_some() {
        // A store that does not answer is worth a line: the client goes on
        // without it, and would otherwise say nothing.
        store::show_warnings();
    }
    let tokens = Managed::new(
        flags.adapter,
        ManagedOptions {
            tls,
            proxy,
            store,
            token_timeout: flags.token_timeout,
        },
    )?;
    let token_url = match (&flags.token_url, &flags.issuer) {
        (Some(url), _) => url.clone(),
        (None, Some(issuer)) => tokens.discover(issuer)?,
        (None, None) => return Err(Failure::Usage("give --token-url or --issuer".into())),
    };
    let client_id = flags.client_id.clone().unwrap_or_default();
    let mut config = ClientConfig::new(&token_url, client_id, auth)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    if let Some(signer) = dpop {
        config = config.dpop(signer);
    }
    if let Some(scope) = &flags.scope {
        config = config.scope(scope);
    }
    for resource in &flags.resources {
        config = config
            .resource(resource)
            .map_err(|e| Failure::Usage(e.to_string()))?;
    }
    if let Some(audience) = &flags.audience {
        config = config.audience(audience.clone());
    }
    for (k, v) in &flags.params {
        config = config
            .param(k.clone(), v.clone())
            .map_err(|e| Failure::Usage(e.to_string()))?;
    }
    tokens.add_client(CLIENT, config)?;
    Ok(tokens)
}

/// `--tls-roots` and `--cacert` as TLS settings.
pub fn tls_settings(flags: &ClientFlags) -> Result<TlsSettings, Failure> {
    let roots = match flags.tls_roots {
        TlsRootsFlag::Webpki => TlsSettings::webpki(),
        TlsRootsFlag::Platform => TlsSettings::platform(),
    };
    match &flags.cacert {
        Some(path) => roots
            .with_ca_file(path)
            .map_err(|e| Failure::Usage(format!("--cacert: {e}"))),
        None => Ok(roots),
    }
}

/// `--proxy URL|none`, or the environment read with curl's rules.
fn proxy_settings(flags: &ClientFlags) -> Result<ProxySettings, Failure> {
    match flags.proxy.as_deref() {
        None => Ok(token_keeper_driver::proxy_from_env()),
        Some("none") => Ok(ProxySettings::none()),
        Some(url) => {
            ProxySettings::explicit(url, "").map_err(|e| Failure::Usage(format!("--proxy: {e}")))
        }
    }
}

fn token(flags: &ClientFlags, json: bool) -> Result<ExitCode, Failure> {
    let tokens = build_client(flags)?;
    let info = tokens.token(CLIENT);
    // The token just fetched goes to the store before this process ends.
    tokens.settle_store(store::SETTLE_WAIT);
    let info = info?;
    // With a store, where the token came from: a store hit, or this
    // process's own token request (then written to the store, if it answers).
    let source = flags.store.is_some().then(|| {
        if tokens.stats().store_hits > 0 {
            "store"
        } else {
            "token_endpoint"
        }
    });
    let mut out = std::io::stdout().lock();
    let written = if json {
        let mut value = serde_json::json!({
            "access_token": info.access_token.expose_secret(),
            "token_type": info.token_type.scheme(),
            "expires_in": info.expires_in.as_secs(),
            "scope": info.scope,
        });
        if let Some(source) = source {
            value["source"] = source.into();
        }
        writeln!(out, "{value}")
    } else {
        writeln!(out, "{}", info.access_token.expose_secret())
    };
    written.map_err(|e| Failure::Other(format!("writing to stdout: {e}")))?;
    if let (Some(source), false) = (source, json) {
        let said = if source == "store" {
            "the fleet store (another process fetched it)"
        } else {
            "the token endpoint"
        };
        eprintln!("token source: {said}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Formats a duration in milliseconds with two decimals.
pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}
