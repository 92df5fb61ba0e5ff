//! Command-line parsing (by hand with `lexopt`: small, exact errors, no magic).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::Duration;

use lexopt::prelude::*;
use token_keeper::jose::Algorithm;

/// A usage error: printed with a hint, exit code 2.
#[derive(Debug)]
pub struct Usage(pub String);

impl From<lexopt::Error> for Usage {
    fn from(e: lexopt::Error) -> Self {
        Usage(e.to_string())
    }
}

/// How to authenticate the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    Basic,
    Post,
    PrivateKeyJwt,
}

/// Which adapter drives the core.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AdapterKind {
    /// The blocking ureq adapter.
    #[default]
    Ureq,
    /// The async surf adapter.
    Surf,
}

/// The flags that describe a client, shared by `token` and `call`.
#[derive(Clone, Debug, Default)]
pub struct ClientFlags {
    pub adapter: AdapterKind,
    pub token_url: Option<String>,
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub client_secret_env: Option<String>,
    pub auth: Option<AuthMethod>,
    /// The private_key_jwt key file (JWK or PKCS#8 PEM).
    pub private_key: Option<std::path::PathBuf>,
    /// The JWS algorithm for the private_key_jwt key.
    pub alg: Option<String>,
    /// DPoP with an ephemeral ES256 key.
    pub dpop: bool,
    /// DPoP with this key file (JWK or PKCS#8 PEM).
    pub dpop_key: Option<std::path::PathBuf>,
    pub scope: Option<String>,
    pub resources: Vec<String>,
    pub audience: Option<String>,
    pub params: Vec<(String, String)>,
    /// Extra CA certificates (PEM) for token, discovery and API requests.
    pub cacert: Option<std::path::PathBuf>,
    /// Where TLS trust starts.
    pub tls_roots: TlsRootsFlag,
    /// `--proxy URL` or `--proxy none`; the environment otherwise.
    pub proxy: Option<String>,
    /// The fleet store: `--store URL` or `--store-env VAR`.
    pub store: Option<StoreUrl>,
    /// `--store-key-env VAR`: the store's sealing key (base64 of 32 bytes).
    pub store_key_env: Option<String>,
    /// `--store-old-key-env VAR`: an older key still accepted when reading.
    pub store_old_key_env: Option<String>,
    /// `--store-namespace NAME`.
    pub store_namespace: Option<String>,
    /// `--token-timeout SECS`: the bound on one token request.
    pub token_timeout: Option<Duration>,
}

/// Where the fleet store is: the URL itself (it may hold a password, so its
/// `Debug` shows nothing), or the environment variable that holds it.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `--store URL`.
    Given(String),
    /// `--store-env VAR`.
    Env(String),
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Given(_) => f.write_str("StoreUrl::Given(<redacted>)"),
            StoreUrl::Env(var) => write!(f, "StoreUrl::Env({var:?})"),
        }
    }
}

/// `--tls-roots`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsRootsFlag {
    /// The Mozilla roots (webpki-roots).
    #[default]
    Webpki,
    /// The operating system's store (rustls-platform-verifier).
    Platform,
}

#[derive(Debug)]
pub enum Command {
    Help,
    Version,
    Token {
        client: ClientFlags,
        json: bool,
    },
    Call {
        client: ClientFlags,
        url: String,
        amount: Amount,
        concurrency: usize,
        json: bool,
        /// `--rate R`: at most R calls per second (all workers together).
        rate: Option<f64>,
        /// `--ticks`: one line per second on stdout.
        ticks: bool,
    },
    Demo {
        /// `--duration SECS`; `None`: the default of the kind of demo.
        duration: Option<Duration>,
        /// `--fleet N`: N processes, without and with a Redis store.
        fleet: Option<usize>,
        /// `--plot FILE.svg` (with `--fleet`).
        plot: Option<std::path::PathBuf>,
        /// The store flags (`--store`, `--store-key-env`, …; not with
        /// `--fleet`, which runs its own Redis): the demo's client shares
        /// its tokens through that store.
        store: Box<ClientFlags>,
    },
    /// A new key, as PKCS#8 PEM, to `out` (created, never overwritten) or stdout.
    Keygen {
        alg: Algorithm,
        out: Option<std::path::PathBuf>,
    },
    /// The embedded local token server and its API, in the foreground.
    Serve(ServeFlags),
}

/// `tokenctl serve`'s flags, validated: a loopback address, a bounded token
/// lifetime, a printable client id and a variable name. The secret itself is
/// read from `secret_env` when the server starts, never from the command line
/// (the process list would show it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeFlags {
    /// `--listen ADDR`: loopback only.
    pub listen: SocketAddr,
    /// `--ttl SECS`: `expires_in` of the tokens issued.
    pub ttl_secs: u64,
    /// `--client-id ID`: the one client the server accepts.
    pub client_id: String,
    /// `--client-secret-env VAR`: where that client's secret is.
    pub secret_env: String,
}

impl Default for ServeFlags {
    fn default() -> Self {
        ServeFlags {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            ttl_secs: SERVE_DEFAULT_TTL,
            client_id: "m2m".into(),
            secret_env: "TK_CLIENT_SECRET".into(),
        }
    }
}

/// `serve --ttl` default: long enough not to churn while a developer pokes
/// at a service, short enough that refresh-ahead shows within minutes.
pub const SERVE_DEFAULT_TTL: u64 = 300;
/// `serve --ttl` bound: a day, like every other duration flag here.
pub const SERVE_MAX_TTL: u64 = 86_400;

/// How many requests `call` makes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Amount {
    Requests(u64),
    Duration(Duration),
}

pub const USAGE: &str = "\
tokenctl: OAuth 2.0 client-credentials tokens, managed by token-keeper

USAGE:
    tokenctl token  [CLIENT FLAGS] [STORE FLAGS] [--json]
    tokenctl call URL [CLIENT FLAGS] [STORE FLAGS] [--requests N | --duration SECS]
                  [--concurrency C] [--rate R] [--ticks] [--json]
    tokenctl demo   [--duration SECS] [--store URL --store-key-env VAR [--store-namespace NAME]]
    tokenctl demo   --fleet N [--duration SECS] [--plot FILE.svg]
    tokenctl keygen [--alg ES256|EdDSA] [--out FILE]
    tokenctl serve  [--listen 127.0.0.1:8443] [--ttl SECS] [--client-id ID]
                    [--client-secret-env VAR]

CLIENT FLAGS:
    --token-url URL          token endpoint (or --issuer URL to discover it)
    --issuer URL             issuer: reads /.well-known/openid-configuration
    --client-id ID
    --client-secret-env VAR  read the secret from this environment variable (recommended)
    --client-secret S        the secret itself (visible in the process list: avoid)
    --auth basic|post        client authentication (default basic)
    --scope \"a b\"            space-separated scopes
    --resource URI           RFC 8707 resource indicator (repeatable)
    --audience A
    --param k=v              extra form parameter (repeatable)
    --adapter ureq|surf      blocking ureq (default) or async surf; same output and exit codes
    --auth private-key-jwt --private-key FILE [--alg ES256|EdDSA|RS256|PS256]
                             RFC 7523 client assertion signed with FILE (JWK or PKCS#8 PEM)
    --dpop                   bind tokens with DPoP (RFC 9449), ephemeral ES256 key
    --dpop-key FILE          bind tokens with DPoP, key from FILE (JWK or PKCS#8 PEM)
    --cacert FILE            also trust the CA certificates in FILE (PEM), for token,
                             discovery and API requests
    --tls-roots webpki|platform
                             start trust from the Mozilla roots (default) or the
                             operating system's store (honours SSL_CERT_FILE on Linux)
    --proxy URL|none         tunnel through this http:// proxy, or through none; default:
                             https_proxy/HTTPS_PROXY, all_proxy/ALL_PROXY and no_proxy/NO_PROXY
                             as curl reads them. A loopback host is never proxied
    --token-timeout SECS     the bound on one token request (default 10 s; the core gives
                             up after 30 s). With a store, a lease lasts this + 5 s

STORE FLAGS: share tokens with the other processes of a fleet through Redis
    --store redis://[:PASSWORD@]HOST:PORT[/DB]
                             the fleet store: one token request per token lifetime for
                             the whole fleet. Only redis:// (no TLS). The password is
                             never printed; it is visible in the process list: prefer
    --store-env VAR          the store URL from this environment variable
    --store-key-env VAR      required with a store: the key that seals every entry
                             (AES-256-GCM), standard base64 of 32 bytes, the same on every
                             process (`openssl rand -base64 32`): tokens never sit in
                             Redis in clear
    --store-old-key-env VAR  also open entries sealed with this older key (rotation)
    --store-namespace NAME   fleets sharing one Redis with different namespaces never
                             see each other's tokens (default token-keeper)
    With a store, a store failure makes the client go to the token endpoint as without
    one. `token` says on stderr where the token came from (token source: ...).

CALL FLAGS:
    --requests N | --duration SECS   how many calls (default 1 request)
    --concurrency C          C workers (default 1)
    --rate R                 at most R calls per second, all workers together
    --ticks                  one line per second on stdout, before the summary:
                             tick t=SECS calls=N failed=N p50_us=N p99_us=N max_us=N
                             token_requests=N store_hits=N (counts of that second,
                             the last two since the start)

DEMO FLAGS:
    --duration SECS          how long the threads (or processes) call (default 8, fleet 12)
    --fleet N                N tokenctl processes against a local token server (3 s
                             tokens), first each on its own, then sharing a Redis store
                             (runs redis-server from PATH on a free 127.0.0.1 port);
                             prints token requests per token lifetime for both runs
    --plot FILE.svg          with --fleet: draw both runs over time to FILE.svg

KEYGEN FLAGS: a new private key to keep (a DPoP key that survives restarts)
    --alg ES256|EdDSA        P-256 (default) or Ed25519; RSA keys come from
                             `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`
    --out FILE               write the key (PKCS#8 PEM) to FILE, created with mode 0600;
                             an existing FILE is never overwritten. Without --out: stdout
    The key's RFC 7638 thumbprint (the DPoP jkt, to register) goes to stderr as one
    line, `thumbprint: <base64url>`. Use FILE as --dpop-key FILE or --private-key FILE.

SERVE FLAGS: the embedded local token server and its protected API in the foreground,
to point a service at during development (a fixture: never in production)
    --listen ADDR            loopback address to listen on (default 127.0.0.1:8443; port 0:
                             any free port). Other addresses are refused
    --ttl SECS               token lifetime (default 300, at most 86400)
    --client-id ID           the one client the server accepts (default m2m)
    --client-secret-env VAR  the variable holding that client's secret (default
                             TK_CLIENT_SECRET); required, never printed
    Serves POST /token (client_secret_basic or client_secret_post; a DPoP proof gets a
    DPoP-bound token), the discovery document, and GET /api/v1/integration/health-records
    (JSON with a valid token, 401 with WWW-Authenticate otherwise). Prints its URLs on
    stdout, then one line per token request and API call on stderr (method, path, status;
    never a token or secret), until stopped (Ctrl-C).

EXIT CODES:
    0 success   2 usage   3 the authorization server refused (OAuth error)
    4 transport failure   5 invalid response   1 anything else
";

fn value(parser: &mut lexopt::Parser, flag: &str) -> Result<String, Usage> {
    let v: OsString = parser
        .value()
        .map_err(|_| Usage(format!("{flag} needs a value")))?;
    v.into_string()
        .map_err(|_| Usage(format!("{flag}: the value is not valid UTF-8")))
}

fn number<T: std::str::FromStr>(parser: &mut lexopt::Parser, flag: &str) -> Result<T, Usage> {
    let text = value(parser, flag)?;
    text.parse()
        .map_err(|_| Usage(format!("{flag}: {text:?} is not a valid number")))
}

fn seconds(parser: &mut lexopt::Parser, flag: &str) -> Result<Duration, Usage> {
    let secs: f64 = number(parser, flag)?;
    if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0) {
        return Err(Usage(format!(
            "{flag}: expected seconds between 0 and 86400"
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The name of an environment variable: not empty, no `=` nor NUL.
fn env_name(parser: &mut lexopt::Parser, flag: &str) -> Result<String, Usage> {
    let name = value(parser, flag)?;
    if name.is_empty() || name.contains(['=', '\0']) {
        return Err(Usage(format!(
            "{flag}: {name:?} is not an environment variable name"
        )));
    }
    Ok(name)
}

/// An argument detached from the parser, so the parser can be used again.
enum Owned {
    Long(String),
    Short(char),
    Value(OsString),
}

impl Owned {
    fn of(arg: lexopt::Arg<'_>) -> Owned {
        match arg {
            Long(name) => Owned::Long(name.to_owned()),
            Short(c) => Owned::Short(c),
            Value(v) => Owned::Value(v),
        }
    }

    fn unexpected(self) -> Usage {
        match self {
            Owned::Long(name) => Usage(format!("unexpected option --{name}")),
            Owned::Short(c) => Usage(format!("unexpected option -{c}")),
            Owned::Value(v) => Usage(format!("unexpected argument {:?}", v.to_string_lossy())),
        }
    }
}

/// Reads one client flag; `Ok(false)` when `arg` is not a client flag.
fn client_flag(
    arg: &Owned,
    parser: &mut lexopt::Parser,
    client: &mut ClientFlags,
) -> Result<bool, Usage> {
    let Owned::Long(name) = arg else {
        return Ok(false);
    };
    let flag = format!("--{name}");
    match name.as_str() {
        "token-url" => client.token_url = Some(value(parser, &flag)?),
        "issuer" => client.issuer = Some(value(parser, &flag)?),
        "client-id" => client.client_id = Some(value(parser, &flag)?),
        "client-secret" => client.client_secret = Some(value(parser, &flag)?),
        "client-secret-env" => client.client_secret_env = Some(value(parser, &flag)?),
        "auth" => {
            client.auth = Some(match value(parser, &flag)?.as_str() {
                "basic" => AuthMethod::Basic,
                "post" => AuthMethod::Post,
                "private-key-jwt" => AuthMethod::PrivateKeyJwt,
                other => {
                    return Err(Usage(format!(
                        "--auth: {other:?} is not one of basic, post, private-key-jwt"
                    )))
                }
            })
        }
        "scope" => client.scope = Some(value(parser, &flag)?),
        "private-key" => client.private_key = Some(value(parser, &flag)?.into()),
        "alg" => client.alg = Some(value(parser, &flag)?),
        "dpop" => client.dpop = true,
        "dpop-key" => client.dpop_key = Some(value(parser, &flag)?.into()),
        "adapter" => {
            client.adapter = match value(parser, &flag)?.as_str() {
                "ureq" => AdapterKind::Ureq,
                "surf" => AdapterKind::Surf,
                other => {
                    return Err(Usage(format!(
                        "--adapter: {other:?} is not one of ureq, surf"
                    )))
                }
            }
        }
        "resource" => client.resources.push(value(parser, &flag)?),
        "cacert" => client.cacert = Some(value(parser, &flag)?.into()),
        "tls-roots" => {
            client.tls_roots = match value(parser, &flag)?.as_str() {
                "webpki" => TlsRootsFlag::Webpki,
                "platform" => TlsRootsFlag::Platform,
                other => {
                    return Err(Usage(format!(
                        "--tls-roots: {other:?} is not one of webpki, platform"
                    )))
                }
            }
        }
        "proxy" => client.proxy = Some(value(parser, &flag)?),
        "store" | "store-env" => {
            if client.store.is_some() {
                return Err(Usage("give --store URL or --store-env VAR, once".into()));
            }
            client.store = Some(if name == "store" {
                let url = value(parser, &flag)?;
                if url.is_empty() {
                    return Err(Usage("--store needs a redis:// URL".into()));
                }
                StoreUrl::Given(url)
            } else {
                StoreUrl::Env(env_name(parser, &flag)?)
            })
        }
        "store-key-env" => client.store_key_env = Some(env_name(parser, &flag)?),
        "store-old-key-env" => client.store_old_key_env = Some(env_name(parser, &flag)?),
        "store-namespace" => client.store_namespace = Some(value(parser, &flag)?),
        "token-timeout" => client.token_timeout = Some(seconds(parser, &flag)?),
        "audience" => client.audience = Some(value(parser, &flag)?),
        "param" => {
            let pair = value(parser, &flag)?;
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| Usage(format!("--param: expected k=v, got {pair:?}")))?;
            client.params.push((k.to_owned(), v.to_owned()));
        }
        _ => return Ok(false),
    }
    Ok(true)
}

pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, Usage> {
    let mut parser = lexopt::Parser::from_args(args);
    let sub = match parser.next()? {
        None => return Ok(Command::Help),
        Some(Short('h') | Long("help")) => return Ok(Command::Help),
        Some(Short('V') | Long("version")) => return Ok(Command::Version),
        Some(Value(v)) => v
            .into_string()
            .map_err(|_| Usage("invalid command".into()))?,
        Some(other) => {
            return Err(Usage(format!(
                "expected a command, got {}",
                other.unexpected()
            )))
        }
    };
    let mut client = ClientFlags::default();
    let mut json = false;
    match sub.as_str() {
        "token" => {
            while let Some(arg) = parser.next()?.map(Owned::of) {
                if client_flag(&arg, &mut parser, &mut client)? {
                    continue;
                }
                match arg {
                    Owned::Long(name) if name == "json" => json = true,
                    Owned::Short('h') => return Ok(Command::Help),
                    Owned::Long(name) if name == "help" => return Ok(Command::Help),
                    other => return Err(other.unexpected()),
                }
            }
            validate_client(&client)?;
            Ok(Command::Token { client, json })
        }
        "call" => {
            let mut url = None;
            let mut requests = None;
            let mut duration = None;
            let mut concurrency = 1;
            let mut rate = None;
            let mut ticks = false;
            while let Some(arg) = parser.next()?.map(Owned::of) {
                if client_flag(&arg, &mut parser, &mut client)? {
                    continue;
                }
                match arg {
                    Owned::Long(name) => match name.as_str() {
                        "json" => json = true,
                        "requests" => requests = Some(number::<u64>(&mut parser, "--requests")?),
                        "duration" => duration = Some(seconds(&mut parser, "--duration")?),
                        "concurrency" => {
                            concurrency = number::<usize>(&mut parser, "--concurrency")?
                        }
                        "rate" => {
                            let r: f64 = number(&mut parser, "--rate")?;
                            if !(r.is_finite() && r > 0.0 && r <= 1_000_000.0) {
                                return Err(Usage(
                                    "--rate: expected calls per second between 0 and 1000000"
                                        .into(),
                                ));
                            }
                            rate = Some(r);
                        }
                        "ticks" => ticks = true,
                        "help" => return Ok(Command::Help),
                        _ => return Err(Owned::Long(name).unexpected()),
                    },
                    Owned::Short('h') => return Ok(Command::Help),
                    Owned::Value(v) if url.is_none() => {
                        url = Some(
                            v.into_string()
                                .map_err(|_| Usage("URL is not valid UTF-8".into()))?,
                        )
                    }
                    other => return Err(other.unexpected()),
                }
            }
            let url = url.ok_or_else(|| Usage("call needs a URL".into()))?;
            let amount = match (requests, duration) {
                (Some(_), Some(_)) => {
                    return Err(Usage("use --requests or --duration, not both".into()))
                }
                (Some(0), None) => return Err(Usage("--requests must be at least 1".into())),
                (Some(n), None) => Amount::Requests(n),
                (None, Some(d)) => Amount::Duration(d),
                (None, None) => Amount::Requests(1),
            };
            if !(1..=1024).contains(&concurrency) {
                return Err(Usage("--concurrency must be between 1 and 1024".into()));
            }
            validate_client(&client)?;
            Ok(Command::Call {
                client,
                url,
                amount,
                concurrency,
                json,
                rate,
                ticks,
            })
        }
        "demo" => {
            let mut duration = None;
            let mut fleet = None;
            let mut plot = None;
            let mut store = ClientFlags::default();
            while let Some(arg) = parser.next()?.map(Owned::of) {
                match arg {
                    Owned::Long(ref name) if name.starts_with("store") => {
                        if !client_flag(&arg, &mut parser, &mut store)? {
                            return Err(arg.unexpected());
                        }
                    }
                    Owned::Long(name) if name == "duration" => {
                        duration = Some(seconds(&mut parser, "--duration")?)
                    }
                    Owned::Long(name) if name == "fleet" => {
                        let n = number::<usize>(&mut parser, "--fleet")?;
                        if !(1..=64).contains(&n) {
                            return Err(Usage("--fleet: expected 1 to 64 processes".into()));
                        }
                        fleet = Some(n);
                    }
                    Owned::Long(name) if name == "plot" => {
                        let path = value(&mut parser, "--plot")?;
                        if path.is_empty() {
                            return Err(Usage("--plot needs a file name".into()));
                        }
                        plot = Some(path.into());
                    }
                    Owned::Short('h') => return Ok(Command::Help),
                    Owned::Long(name) if name == "help" => return Ok(Command::Help),
                    other => return Err(other.unexpected()),
                }
            }
            if plot.is_some() && fleet.is_none() {
                return Err(Usage("--plot goes with --fleet N".into()));
            }
            if fleet.is_some() && store.store.is_some() {
                return Err(Usage(
                    "--fleet runs a Redis of its own: leave out --store".into(),
                ));
            }
            validate_store(&store)?;
            Ok(Command::Demo {
                duration,
                fleet,
                plot,
                store: Box::new(store),
            })
        }
        "keygen" => {
            let mut alg = Algorithm::ES256;
            let mut out = None;
            while let Some(arg) = parser.next()?.map(Owned::of) {
                match arg {
                    Owned::Long(name) if name == "alg" => alg = keygen_alg(&mut parser)?,
                    Owned::Long(name) if name == "out" => {
                        let path = value(&mut parser, "--out")?;
                        if path.is_empty() {
                            return Err(Usage("--out needs a file name".into()));
                        }
                        out = Some(path.into());
                    }
                    Owned::Short('h') => return Ok(Command::Help),
                    Owned::Long(name) if name == "help" => return Ok(Command::Help),
                    other => return Err(other.unexpected()),
                }
            }
            Ok(Command::Keygen { alg, out })
        }
        "serve" => {
            let mut flags = ServeFlags::default();
            while let Some(arg) = parser.next()?.map(Owned::of) {
                match arg {
                    Owned::Long(name) if name == "listen" => flags.listen = listen(&mut parser)?,
                    Owned::Long(name) if name == "ttl" => {
                        let ttl: u64 = number(&mut parser, "--ttl")?;
                        if !(1..=SERVE_MAX_TTL).contains(&ttl) {
                            return Err(Usage(format!(
                                "--ttl: expected whole seconds from 1 to {SERVE_MAX_TTL}"
                            )));
                        }
                        flags.ttl_secs = ttl;
                    }
                    Owned::Long(name) if name == "client-id" => {
                        let id = value(&mut parser, "--client-id")?;
                        // Printed in the banner: no control characters.
                        if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
                            return Err(Usage(
                                "--client-id: expected 1 to 256 printable characters".into(),
                            ));
                        }
                        flags.client_id = id;
                    }
                    Owned::Long(name) if name == "client-secret-env" => {
                        flags.secret_env = env_name(&mut parser, "--client-secret-env")?
                    }
                    Owned::Long(name) if name == "client-secret" => {
                        return Err(Usage(
                            "serve reads the secret from an environment variable only \
                             (--client-secret-env VAR, default TK_CLIENT_SECRET)"
                                .into(),
                        ))
                    }
                    Owned::Short('h') => return Ok(Command::Help),
                    Owned::Long(name) if name == "help" => return Ok(Command::Help),
                    other => return Err(other.unexpected()),
                }
            }
            Ok(Command::Serve(flags))
        }
        "help" => Ok(Command::Help),
        other => Err(Usage(format!("unknown command {other:?}"))),
    }
}

/// `serve --listen`: `IP:PORT` (`[::1]:PORT` for IPv6) or `localhost:PORT`,
/// on loopback only. The server is a development fixture: its client secret
/// is whatever the developer exported, it checks DPoP proofs for shape and
/// key binding but not their signatures, so it must not be reachable from
/// another machine.
fn listen(parser: &mut lexopt::Parser) -> Result<SocketAddr, Usage> {
    let text = value(parser, "--listen")?;
    let addr = match text.parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => match text
            .strip_prefix("localhost:")
            .and_then(|port| port.parse::<u16>().ok())
        {
            Some(port) => SocketAddr::from(([127, 0, 0, 1], port)),
            None => {
                return Err(Usage(format!(
                    "--listen: {text:?} is not an address such as 127.0.0.1:8443 or [::1]:8443"
                )))
            }
        },
    };
    if !addr.ip().is_loopback() {
        return Err(Usage(format!(
            "--listen: {addr} is not a loopback address; serve is a development fixture \
             (known client secret, unsigned-proof checks) and listens on 127.0.0.0/8 or ::1 only"
        )));
    }
    Ok(addr)
}

/// `keygen --alg`: the algorithms `ring` generates keys for.
fn keygen_alg(parser: &mut lexopt::Parser) -> Result<Algorithm, Usage> {
    let name = value(parser, "--alg")?;
    match Algorithm::from_name(&name) {
        Some(alg @ (Algorithm::ES256 | Algorithm::EdDSA)) => Ok(alg),
        Some(rsa) => Err(Usage(format!(
            "--alg: keygen makes ES256 or EdDSA keys, not {rsa}; make an RSA key with \
             `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out key.pem`"
        ))),
        None => Err(Usage(format!("--alg: {name:?} is not one of ES256, EdDSA"))),
    }
}

fn validate_client(client: &ClientFlags) -> Result<(), Usage> {
    match (&client.token_url, &client.issuer) {
        (None, None) => return Err(Usage("give --token-url or --issuer".into())),
        (Some(_), Some(_)) => return Err(Usage("give --token-url or --issuer, not both".into())),
        _ => {}
    }
    if client.client_id.is_none() {
        return Err(Usage("--client-id is required".into()));
    }
    if client.client_secret.is_some() && client.client_secret_env.is_some() {
        return Err(Usage(
            "give --client-secret or --client-secret-env, not both".into(),
        ));
    }
    let has_secret = client.client_secret.is_some() || client.client_secret_env.is_some();
    if client.auth == Some(AuthMethod::PrivateKeyJwt) {
        if client.private_key.is_none() {
            return Err(Usage(
                "--auth private-key-jwt needs --private-key FILE".into(),
            ));
        }
        if has_secret {
            return Err(Usage(
                "--auth private-key-jwt takes no client secret".into(),
            ));
        }
    } else {
        if client.private_key.is_some() {
            return Err(Usage(
                "--private-key goes with --auth private-key-jwt".into(),
            ));
        }
        if !has_secret {
            return Err(Usage(
                "give --client-secret-env VAR (or --client-secret)".into(),
            ));
        }
    }
    if client.alg.is_some() && client.private_key.is_none() {
        return Err(Usage("--alg goes with --private-key".into()));
    }
    if client.dpop && client.dpop_key.is_some() {
        return Err(Usage("give --dpop or --dpop-key FILE, not both".into()));
    }
    validate_store(client)
}

/// The store flags go together: a store needs its key, and the other store
/// flags need a store.
fn validate_store(client: &ClientFlags) -> Result<(), Usage> {
    if client.store.is_none() {
        for (given, flag) in [
            (client.store_key_env.is_some(), "--store-key-env"),
            (client.store_old_key_env.is_some(), "--store-old-key-env"),
            (client.store_namespace.is_some(), "--store-namespace"),
        ] {
            if given {
                return Err(Usage(format!(
                    "{flag} goes with --store URL (or --store-env VAR)"
                )));
            }
        }
        return Ok(());
    }
    if client.store_key_env.is_none() {
        return Err(Usage(
            "--store needs --store-key-env VAR, a variable holding 32 random bytes in \
             base64 (`openssl rand -base64 32`), the same on every process: tokens never \
             sit in Redis in clear"
                .into(),
        ));
    }
    if let Some(namespace) = &client.store_namespace {
        if namespace.is_empty() {
            return Err(Usage("--store-namespace must not be empty".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(line: &str) -> Result<Command, Usage> {
        parse(line.split_whitespace().map(OsString::from))
    }

    #[test]
    fn token_flags() {
        let cmd = parse_str("token --token-url http://127.0.0.1:1/t --client-id c --client-secret-env S --auth post --scope a --resource https://r/ --resource urn:x --param k=v=w --adapter surf --json").unwrap();
        let Command::Token { client, json } = cmd else {
            panic!()
        };
        assert!(json);
        assert_eq!(client.auth, Some(AuthMethod::Post));
        assert_eq!(client.adapter, AdapterKind::Surf);
        assert_eq!(client.resources, vec!["https://r/", "urn:x"]);
        assert_eq!(client.params, vec![("k".to_owned(), "v=w".to_owned())]);
    }

    #[test]
    fn key_flags() {
        let cmd = parse_str("token --token-url u --client-id c --auth private-key-jwt --private-key k.pem --alg PS256 --dpop-key d.jwk").unwrap();
        let Command::Token { client, .. } = cmd else {
            panic!()
        };
        assert_eq!(client.auth, Some(AuthMethod::PrivateKeyJwt));
        assert_eq!(
            client.private_key.as_deref(),
            Some(std::path::Path::new("k.pem"))
        );
        assert_eq!(client.alg.as_deref(), Some("PS256"));
        assert_eq!(
            client.dpop_key.as_deref(),
            Some(std::path::Path::new("d.jwk"))
        );
        let Command::Token { client, .. } =
            parse_str("token --token-url u --client-id c --client-secret s --dpop").unwrap()
        else {
            panic!()
        };
        assert!(client.dpop);
    }

    #[test]
    fn call_flags() {
        let cmd = parse_str("call http://127.0.0.1:1/api --issuer http://127.0.0.1:1 --client-id c --client-secret s --duration 2.5 --concurrency 4").unwrap();
        let Command::Call {
            url,
            amount,
            concurrency,
            ..
        } = cmd
        else {
            panic!()
        };
        assert_eq!(url, "http://127.0.0.1:1/api");
        assert_eq!(amount, Amount::Duration(Duration::from_millis(2500)));
        assert_eq!(concurrency, 4);
    }

    #[test]
    fn keygen_flags() {
        let Command::Keygen { alg, out } = parse_str("keygen").unwrap() else {
            panic!()
        };
        assert_eq!((alg, out), (Algorithm::ES256, None));
        let Command::Keygen { alg, out } = parse_str("keygen --alg EdDSA --out k.pem").unwrap()
        else {
            panic!()
        };
        assert_eq!(alg, Algorithm::EdDSA);
        assert_eq!(out.as_deref(), Some(std::path::Path::new("k.pem")));
        let Command::Keygen { alg, .. } = parse_str("keygen --alg=ES256").unwrap() else {
            panic!()
        };
        assert_eq!(alg, Algorithm::ES256);
        assert!(matches!(parse_str("keygen --help"), Ok(Command::Help)));
        for (line, expected) in [
            ("keygen --alg RS256", "openssl genpkey"),
            ("keygen --alg PS256", "openssl genpkey"),
            ("keygen --alg es256", "not one of ES256, EdDSA"),
            ("keygen --alg", "--alg needs a value"),
            ("keygen --out", "--out needs a value"),
            ("keygen k.pem", "unexpected argument"),
            ("keygen --dpop", "unexpected option --dpop"),
        ] {
            let Err(Usage(message)) = parse_str(line) else {
                panic!("{line}")
            };
            assert!(message.contains(expected), "{line}: {message}");
        }
        assert!(parse(["keygen", "--out", ""].map(OsString::from)).is_err());
        assert!(USAGE.contains("tokenctl keygen [--alg ES256|EdDSA] [--out FILE]"));
    }

    #[test]
    fn store_and_pace_flags() {
        let cmd = parse_str("call http://127.0.0.1:1/api --token-url u --client-id c --client-secret-env S --store redis://:pw@127.0.0.1:6379/2 --store-key-env K --store-old-key-env OLD --store-namespace orders --token-timeout 2 --rate 40 --ticks --duration 3").unwrap();
        let Command::Call {
            client,
            rate,
            ticks,
            ..
        } = cmd
        else {
            panic!()
        };
        assert_eq!(
            client.store,
            Some(StoreUrl::Given("redis://:pw@127.0.0.1:6379/2".into()))
        );
        assert!(!format!("{client:?}").contains(":pw@"));
        assert_eq!(client.store_key_env.as_deref(), Some("K"));
        assert_eq!(client.store_old_key_env.as_deref(), Some("OLD"));
        assert_eq!(client.store_namespace.as_deref(), Some("orders"));
        assert_eq!(client.token_timeout, Some(Duration::from_secs(2)));
        assert_eq!((rate, ticks), (Some(40.0), true));
        let Command::Token { client, .. } = parse_str(
            "token --token-url u --client-id c --client-secret s --store-env URL --store-key-env K",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(client.store, Some(StoreUrl::Env("URL".into())));
        for (line, expected) in [
            (
                "token --token-url u --client-id c --client-secret s --store redis://h",
                "tokens never sit in Redis in clear",
            ),
            (
                "token --token-url u --client-id c --client-secret s --store-key-env K",
                "--store-key-env goes with --store",
            ),
            (
                "token --token-url u --client-id c --client-secret s --store-namespace n",
                "--store-namespace goes with --store",
            ),
            (
                "token --token-url u --client-id c --client-secret s --store redis://h --store-env U --store-key-env K",
                "once",
            ),
            (
                "token --token-url u --client-id c --client-secret s --store redis://h --store-key-env A=B",
                "not an environment variable name",
            ),
            (
                "call u --token-url u --client-id c --client-secret s --rate 0",
                "--rate",
            ),
            ("demo --plot f.svg", "--plot goes with --fleet"),
            ("demo --fleet 0", "1 to 64"),
            ("demo --fleet 65", "1 to 64"),
            ("demo --store redis://127.0.0.1:1", "--store-key-env"),
            ("demo --store-key-env K", "goes with --store"),
            (
                "demo --fleet 2 --store redis://127.0.0.1:1 --store-key-env K",
                "Redis of its own",
            ),
            ("demo --storage x", "--storage"),
        ] {
            let Err(Usage(message)) = parse_str(line) else {
                panic!("{line}")
            };
            assert!(message.contains(expected), "{line}: {message}");
        }
        let Command::Demo {
            duration,
            fleet,
            plot,
            ..
        } = parse_str("demo --fleet 8 --duration 6 --plot f.svg").unwrap()
        else {
            panic!()
        };
        assert_eq!(duration, Some(Duration::from_secs(6)));
        assert_eq!(fleet, Some(8));
        assert_eq!(plot.as_deref(), Some(std::path::Path::new("f.svg")));
        let Command::Demo {
            duration, fleet, ..
        } = parse_str("demo").unwrap()
        else {
            panic!()
        };
        assert_eq!((duration, fleet), (None, None));
        let Command::Demo { store, .. } = parse_str(
            "demo --store redis://127.0.0.1:6379 --store-key-env K --store-namespace demo",
        )
        .unwrap() else {
            panic!()
        };
        assert!(store.store.is_some());
        assert_eq!(store.store_key_env.as_deref(), Some("K"));
        assert_eq!(store.store_namespace.as_deref(), Some("demo"));
    }

    #[test]
    fn serve_flags() {
        let Command::Serve(flags) = parse_str("serve").unwrap() else {
            panic!()
        };
        assert_eq!(flags, ServeFlags::default());
        assert_eq!(flags.listen.to_string(), "127.0.0.1:8443");
        assert_eq!(flags.ttl_secs, 300);
        assert_eq!(flags.client_id, "m2m");
        assert_eq!(flags.secret_env, "TK_CLIENT_SECRET");
        let Command::Serve(flags) = parse_str(
            "serve --listen [::1]:0 --ttl 86400 --client-id svc --client-secret-env MY_SECRET",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(flags.listen.to_string(), "[::1]:0");
        assert_eq!(flags.ttl_secs, 86_400);
        assert_eq!(flags.client_id, "svc");
        assert_eq!(flags.secret_env, "MY_SECRET");
        let Command::Serve(flags) = parse_str("serve --listen localhost:9000").unwrap() else {
            panic!()
        };
        assert_eq!(flags.listen.to_string(), "127.0.0.1:9000");
        let Command::Serve(flags) = parse_str("serve --listen=127.0.0.2:1").unwrap() else {
            panic!()
        };
        assert_eq!(flags.listen.to_string(), "127.0.0.2:1");
        assert!(matches!(parse_str("serve --help"), Ok(Command::Help)));
        for (line, expected) in [
            ("serve --listen 0.0.0.0:8443", "not a loopback address"),
            ("serve --listen [::]:8443", "not a loopback address"),
            ("serve --listen 192.0.2.1:8443", "not a loopback address"),
            (
                "serve --listen [::ffff:127.0.0.1]:1",
                "not a loopback address",
            ),
            ("serve --listen example.com:8443", "not an address"),
            ("serve --listen 127.0.0.1", "not an address"),
            ("serve --listen localhost:99999", "not an address"),
            ("serve --listen", "--listen needs a value"),
            ("serve --ttl 0", "from 1 to 86400"),
            ("serve --ttl 86401", "from 1 to 86400"),
            ("serve --ttl -5", "not a valid number"),
            ("serve --ttl 1.5", "not a valid number"),
            (
                "serve --client-secret-env A=B",
                "not an environment variable name",
            ),
            ("serve --client-secret s3cret", "environment variable only"),
            (
                "serve --token-url http://x",
                "unexpected option --token-url",
            ),
            ("serve extra", "unexpected argument"),
        ] {
            let Err(Usage(message)) = parse_str(line) else {
                panic!("{line}")
            };
            assert!(message.contains(expected), "{line}: {message}");
            assert!(!message.contains("s3cret"), "{line}: {message}");
        }
        for bad_id in ["", "a\u{1b}[31m", &"x".repeat(257)] {
            let args = ["serve", "--client-id", bad_id].map(OsString::from);
            let Err(Usage(message)) = parse(args) else {
                panic!("{bad_id:?}")
            };
            assert!(message.contains("printable"), "{message}");
        }
        assert!(USAGE.contains("tokenctl serve  [--listen 127.0.0.1:8443]"));
    }

    #[test]
    fn usage_errors() {
        for line in [
            "token --client-id c --client-secret s",
            "token --token-url u --issuer i --client-id c --client-secret s",
            "token --token-url u --client-secret s",
            "token --token-url u --client-id c",
            "token --token-url u --client-id c --client-secret s --auth jwt",
            "token --token-url u --client-id c --client-secret s --param novalue",
            "call --token-url u --client-id c --client-secret s",
            "call u --token-url u --client-id c --client-secret s --requests 3 --duration 1",
            "call u --token-url u --client-id c --client-secret s --concurrency 0",
            "call u --token-url u --client-id c --client-secret s --requests x",
            "demo --duration -1",
            "frobnicate",
            "token --bogus",
            "token --token-url u --client-id c --client-secret s --adapter hyper",
            "token --token-url u --client-id c --auth private-key-jwt",
            "token --token-url u --client-id c --auth private-key-jwt --private-key k.pem --client-secret s",
            "token --token-url u --client-id c --client-secret s --private-key k.pem",
            "token --token-url u --client-id c --client-secret s --alg RS256",
            "token --token-url u --client-id c --client-secret s --dpop --dpop-key k.jwk",
        ] {
            assert!(parse_str(line).is_err(), "{line}");
        }
        assert!(matches!(parse_str(""), Ok(Command::Help)));
        assert!(matches!(parse_str("demo"), Ok(Command::Demo { .. })));
    }
}
