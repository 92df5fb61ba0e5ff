//! The flags and their environment fallbacks, parsed by hand with `lexopt`
//! (as tokenctl does): small, exact errors, no magic.
//!
//! Every setting is a flag or an environment variable; a flag wins over its
//! variable, and an empty variable counts as unset. The client secret is
//! never a flag (a flag is visible in the process list): `--client-secret-env`
//! names the variable that holds it. Errors name flags and variables, never a
//! value read from a variable.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use lexopt::prelude::*;
use reqwest::header::HeaderValue;
use reqwest::Url;
use token_keeper::ClientSecret;
use zeroize::Zeroizing;

/// `--help`.
pub const USAGE: &str = "\
health-records-service: GET /records calls a protected API with a managed OAuth 2.0
client-credentials token (client \"m2m\"); GET /healthz shows that token's health.

USAGE:
    health-records-service --token-url URL | --issuer URL  --client-id ID  --api URL [OPTIONS]

Each flag falls back to the environment variable in brackets (a flag wins; empty = unset).

    --listen ADDR            where to listen, IP:PORT (port 0: any free port)
                             [TK_LISTEN; default 127.0.0.1:8080]
    --token-url URL          the token endpoint                            [TK_TOKEN_URL]
    --issuer URL             or the issuer, whose token endpoint is discovered
                             (/.well-known/openid-configuration)          [TK_ISSUER]
    --client-id ID           the OAuth client id                           [TK_CLIENT_ID]
    --client-secret-env VAR  the NAME of the variable holding the client secret
                             (the secret is never a flag)                  [default TK_CLIENT_SECRET]
    --scope S                the scope to ask for (space-separated)        [TK_SCOPE]
    --resource URI           an RFC 8707 resource; repeatable    [TK_RESOURCE, space-separated]
    --api URL                the protected API's health-records URL        [TK_API]
    --dpop                   DPoP-bound tokens with a new ES256 key        [TK_DPOP=1]
    --dpop-key FILE          DPoP with the key in FILE (PKCS#8 PEM or JWK) [TK_DPOP_KEY]
    --store URL              share tokens with a fleet through Redis, redis://… [TK_STORE]
    --store-key-env VAR      the NAME of the variable holding the store key
                             (base64 of 32 bytes)                          [default TK_STORE_KEY]
    --store-old-key-env VAR  an older store key still accepted when reading (rotation)
    --store-namespace NAME   the fleet's namespace in Redis  [TK_STORE_NAMESPACE; default token-keeper]
    -h, --help               this text

Exit codes: 0 after SIGINT or SIGTERM (graceful shutdown), 2 bad flags or settings,
1 anything else (the port is taken, discovery failed).
";

/// A usage error: printed as one line with a hint, exit code 2.
#[derive(Debug, PartialEq, Eq)]
pub struct Usage(pub String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<lexopt::Error> for Usage {
    fn from(error: lexopt::Error) -> Self {
        Usage(error.to_string())
    }
}

/// Where the token endpoint comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `--token-url`.
    TokenUrl(String),
    /// `--issuer`: discovered at startup.
    Issuer(String),
}

/// Which DPoP key, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dpop {
    /// Bearer tokens.
    Off,
    /// `--dpop`: a new ES256 key for this process.
    Ephemeral,
    /// `--dpop-key FILE`: the same key (and thumbprint) across restarts.
    File(PathBuf),
}

/// The fleet store's settings (`--store …`).
pub struct StoreSettings {
    /// The Redis URL (it may hold a password: never printed).
    pub url: Zeroizing<String>,
    /// The sealing key, standard base64 of 32 bytes, and the variable it came from.
    pub key: Zeroizing<String>,
    /// An older key still accepted when reading.
    pub old_key: Option<Zeroizing<String>>,
    /// The fleet's namespace (`None`: the store's default).
    pub namespace: Option<String>,
}

/// Everything the service needs, checked. No `Debug`: it holds the secret.
pub struct Config {
    /// `--listen`.
    pub listen: SocketAddr,
    /// `--token-url` or `--issuer`.
    pub endpoint: Endpoint,
    /// `--client-id`.
    pub client_id: String,
    /// The secret read from the variable `--client-secret-env` names.
    pub secret: ClientSecret,
    /// `--scope`.
    pub scope: Option<String>,
    /// `--resource`, in order.
    pub resources: Vec<String>,
    /// `--api`: http(s), with a host.
    pub api: Url,
    /// `--dpop` / `--dpop-key`.
    pub dpop: Dpop,
    /// `--store` and its key flags.
    pub store: Option<StoreSettings>,
    /// The hidden `--fixed-authorization-env VAR`: `/records` sends this
    /// `Authorization` header without the token middleware (the bench's
    /// baseline, mode A).
    pub fixed_authorization: Option<HeaderValue>,
}

/// What the command line asks for.
pub enum Parsed {
    /// `--help`.
    Help,
    /// Run the service.
    Run(Box<Config>),
}

/// The flags as given, before the environment fills the gaps.
#[derive(Default)]
struct Flags {
    listen: Option<String>,
    token_url: Option<String>,
    issuer: Option<String>,
    client_id: Option<String>,
    client_secret_env: Option<String>,
    scope: Option<String>,
    resources: Vec<String>,
    api: Option<String>,
    dpop: bool,
    dpop_key: Option<PathBuf>,
    store: Option<String>,
    store_key_env: Option<String>,
    store_old_key_env: Option<String>,
    store_namespace: Option<String>,
    fixed_authorization_env: Option<String>,
}

/// The default of `--client-secret-env`.
pub const DEFAULT_SECRET_VAR: &str = "TK_CLIENT_SECRET";
/// The default of `--store-key-env`.
pub const DEFAULT_STORE_KEY_VAR: &str = "TK_STORE_KEY";
/// The default of `--listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

fn text(value: OsString, flag: &str) -> Result<String, Usage> {
    value
        .into_string()
        .map_err(|_| Usage(format!("{flag}: the value is not UTF-8")))
}

/// Sets a single-valued flag, refusing a second one.
fn once(slot: &mut Option<String>, value: String, flag: &str) -> Result<(), Usage> {
    if slot.replace(value).is_some() {
        return Err(Usage(format!("{flag} is given twice")));
    }
    Ok(())
}

/// Parses `args` (without the program name), reading the environment
/// through `env` (so that tests need not touch the process environment).
pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Parsed, Usage> {
    let mut flags = Flags::default();
    let mut parser = lexopt::Parser::from_args(args);
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Parsed::Help),
            Long("listen") => once(
                &mut flags.listen,
                text(parser.value()?, "--listen")?,
                "--listen",
            )?,
            Long("token-url") => once(
                &mut flags.token_url,
                text(parser.value()?, "--token-url")?,
                "--token-url",
            )?,
            Long("issuer") => once(
                &mut flags.issuer,
                text(parser.value()?, "--issuer")?,
                "--issuer",
            )?,
            Long("client-id") => once(
                &mut flags.client_id,
                text(parser.value()?, "--client-id")?,
                "--client-id",
            )?,
            Long("client-secret-env") => once(
                &mut flags.client_secret_env,
                text(parser.value()?, "--client-secret-env")?,
                "--client-secret-env",
            )?,
            Long("client-secret") => {
                return Err(Usage(
                    "--client-secret is not accepted (a flag shows in the process list): put the \
                     secret in a variable and name it with --client-secret-env VAR"
                        .into(),
                ))
            }
            Long("scope") => once(
                &mut flags.scope,
                text(parser.value()?, "--scope")?,
                "--scope",
            )?,
            Long("resource") => flags.resources.push(text(parser.value()?, "--resource")?),
            Long("api") => once(&mut flags.api, text(parser.value()?, "--api")?, "--api")?,
            Long("dpop") => flags.dpop = true,
            Long("dpop-key") => {
                if flags.dpop_key.replace(parser.value()?.into()).is_some() {
                    return Err(Usage("--dpop-key is given twice".into()));
                }
            }
            Long("store") => once(
                &mut flags.store,
                text(parser.value()?, "--store")?,
                "--store",
            )?,
            Long("store-key-env") => once(
                &mut flags.store_key_env,
                text(parser.value()?, "--store-key-env")?,
                "--store-key-env",
            )?,
            Long("store-old-key-env") => once(
                &mut flags.store_old_key_env,
                text(parser.value()?, "--store-old-key-env")?,
                "--store-old-key-env",
            )?,
            Long("store-namespace") => once(
                &mut flags.store_namespace,
                text(parser.value()?, "--store-namespace")?,
                "--store-namespace",
            )?,
            Long("fixed-authorization-env") => once(
                &mut flags.fixed_authorization_env,
                text(parser.value()?, "--fixed-authorization-env")?,
                "--fixed-authorization-env",
            )?,
            other => return Err(other.unexpected().into()),
        }
    }
    let config = resolve(flags, env)?;
    Ok(Parsed::Run(Box::new(config)))
}

/// The flags completed from the environment, and checked.
fn resolve(flags: Flags, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, Usage> {
    // An empty variable counts as unset.
    let var = |name: &str| env(name).filter(|v| !v.is_empty());
    // Errors name where a value came from (flag or variable) and never
    // quote a value read from a variable (README: Flags).
    let (listen_text, listen_from) = match flags.listen {
        Some(text) => (text, "--listen"),
        None => match var("TK_LISTEN") {
            Some(text) => (text, "TK_LISTEN"),
            None => (DEFAULT_LISTEN.to_owned(), "--listen"),
        },
    };
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        Usage(format!(
            "{listen_from}: not IP:PORT (for example 127.0.0.1:8080)"
        ))
    })?;

    // The endpoint: flags first; the environment only when neither flag is given.
    let endpoint = match (flags.token_url, flags.issuer) {
        (Some(_), Some(_)) => {
            return Err(Usage("give --token-url or --issuer, not both".into()));
        }
        (Some(url), None) => Endpoint::TokenUrl(url),
        (None, Some(issuer)) => Endpoint::Issuer(issuer),
        (None, None) => match (var("TK_TOKEN_URL"), var("TK_ISSUER")) {
            (Some(_), Some(_)) => {
                return Err(Usage(
                    "TK_TOKEN_URL and TK_ISSUER are both set: set one (or give --token-url or \
                     --issuer)"
                        .into(),
                ));
            }
            (Some(url), None) => Endpoint::TokenUrl(url),
            (None, Some(issuer)) => Endpoint::Issuer(issuer),
            (None, None) => {
                return Err(Usage(
                    "the token endpoint is missing: give --token-url URL or --issuer URL (or \
                     TK_TOKEN_URL / TK_ISSUER)"
                        .into(),
                ));
            }
        },
    };

    let client_id = flags
        .client_id
        .or_else(|| var("TK_CLIENT_ID"))
        .ok_or_else(|| Usage("--client-id ID is required (or TK_CLIENT_ID)".into()))?;

    let secret_var = flags
        .client_secret_env
        .unwrap_or_else(|| DEFAULT_SECRET_VAR.to_owned());
    let secret = Zeroizing::new(var(&secret_var).ok_or_else(|| {
        Usage(format!(
            "--client-secret-env: environment variable {secret_var} is not set (or empty): it \
             must hold the client secret"
        ))
    })?);
    let secret = ClientSecret::new(secret.as_str());

    let scope = flags.scope.or_else(|| var("TK_SCOPE"));
    let resources = if flags.resources.is_empty() {
        var("TK_RESOURCE")
            .map(|v| v.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    } else {
        flags.resources
    };

    let (api_text, api_from) = match flags.api {
        Some(text) => (text, "--api"),
        None => (
            var("TK_API").ok_or_else(|| Usage("--api URL is required (or TK_API)".into()))?,
            "TK_API",
        ),
    };
    // The URL is never quoted: it may hold user information (refused below).
    let api = Url::parse(&api_text).map_err(|e| Usage(format!("{api_from}: not a URL ({e})")))?;
    if !matches!(api.scheme(), "http" | "https") || api.host_str().is_none() {
        return Err(Usage(format!("{api_from}: not an http(s) URL with a host")));
    }
    if !api.username().is_empty() || api.password().is_some() {
        return Err(Usage(format!(
            "{api_from}: a URL with user information is refused"
        )));
    }
    // The URL goes into the startup line and transport errors' log lines:
    // a query (an API key in `?code=`) would go with it.
    if api.query().is_some() || api.fragment().is_some() {
        return Err(Usage(format!(
            "{api_from}: a query or fragment is refused (the URL is logged; keep keys out of it)"
        )));
    }

    let dpop_on = flags.dpop
        || match var("TK_DPOP").as_deref() {
            None | Some("0" | "false" | "no") => false,
            Some("1" | "true" | "yes") => true,
            Some(_) => {
                return Err(Usage(
                    "TK_DPOP: expected 1, true, yes, 0, false or no".into(),
                ))
            }
        };
    let dpop = match flags
        .dpop_key
        .or_else(|| var("TK_DPOP_KEY").map(PathBuf::from))
    {
        Some(file) => Dpop::File(file),
        None if dpop_on => Dpop::Ephemeral,
        None => Dpop::Off,
    };

    let store = store_settings(
        flags.store.or_else(|| var("TK_STORE")),
        flags.store_key_env,
        flags.store_old_key_env,
        flags.store_namespace.or_else(|| var("TK_STORE_NAMESPACE")),
        &var,
    )?;

    let fixed_authorization = match flags.fixed_authorization_env {
        None => None,
        Some(name) => {
            let value = Zeroizing::new(var(&name).ok_or_else(|| {
                Usage(format!(
                    "--fixed-authorization-env: environment variable {name} is not set (or empty)"
                ))
            })?);
            let mut header = HeaderValue::from_str(&value).map_err(|_| {
                Usage(format!(
                    "--fixed-authorization-env: {name} does not hold a valid header value"
                ))
            })?;
            header.set_sensitive(true);
            Some(header)
        }
    };

    Ok(Config {
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
    })
}

/// The store flags: all or nothing. A key flag without `--store` is an
/// error (it would silently do nothing).
fn store_settings(
    url: Option<String>,
    key_env: Option<String>,
    old_key_env: Option<String>,
    namespace: Option<String>,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<StoreSettings>, Usage> {
    let Some(url) = url else {
        for (flag, given) in [
            ("--store-key-env", key_env.is_some()),
            ("--store-old-key-env", old_key_env.is_some()),
        ] {
            if given {
                return Err(Usage(format!("{flag} needs --store (or TK_STORE)")));
            }
        }
        return Ok(None);
    };
    let url = Zeroizing::new(url);
    let key_var = key_env.unwrap_or_else(|| DEFAULT_STORE_KEY_VAR.to_owned());
    let key = Zeroizing::new(var(&key_var).ok_or_else(|| {
        Usage(format!(
            "--store-key-env: environment variable {key_var} is not set (or empty): it must hold \
             the store key, standard base64 of 32 random bytes (`openssl rand -base64 32`)"
        ))
    })?);
    let old_key = match old_key_env {
        None => None,
        Some(name) => Some(Zeroizing::new(var(&name).ok_or_else(|| {
            Usage(format!(
                "--store-old-key-env: environment variable {name} is not set (or empty)"
            ))
        })?)),
    };
    Ok(Some(StoreSettings {
        url,
        key,
        old_key,
        namespace,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Config, Usage> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let lookup = move |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        match parse(args.iter().map(OsString::from), &lookup)? {
            Parsed::Help => panic!("help"),
            Parsed::Run(config) => Ok(*config),
        }
    }

    const BASE: [&str; 6] = [
        "--token-url",
        "https://as.example/token",
        "--client-id",
        "m2m",
        "--api",
        "https://api.example/api/v1/integration/health-records",
    ];
    const SECRET: (&str, &str) = ("TK_CLIENT_SECRET", "unit-s3cret");

    #[test]
    fn flags_win_over_the_environment_and_defaults_fill_the_rest() {
        let config = run(
            &[
                &BASE[..],
                &[
                    "--scope",
                    "a b",
                    "--resource",
                    "https://r1",
                    "--resource",
                    "https://r2",
                ],
            ]
            .concat(),
            &[SECRET, ("TK_SCOPE", "ignored"), ("TK_CLIENT_ID", "ignored")],
        )
        .unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.client_id, "m2m");
        assert_eq!(config.scope.as_deref(), Some("a b"));
        assert_eq!(config.resources, ["https://r1", "https://r2"]);
        assert_eq!(config.secret.expose_secret(), "unit-s3cret");
        assert_eq!(config.dpop, Dpop::Off);
        assert!(config.store.is_none());

        let config = run(
            &[],
            &[
                SECRET,
                ("TK_LISTEN", "127.0.0.1:0"),
                ("TK_ISSUER", "https://as.example"),
                ("TK_TOKEN_URL", ""),
                ("TK_CLIENT_ID", "svc"),
                ("TK_API", "http://127.0.0.1:1/x"),
                ("TK_RESOURCE", "https://r1  https://r2"),
                ("TK_DPOP", "1"),
            ],
        )
        .unwrap();
        assert_eq!(config.listen.port(), 0);
        assert_eq!(
            config.endpoint,
            Endpoint::Issuer("https://as.example".into())
        );
        assert_eq!(config.client_id, "svc");
        assert_eq!(config.resources, ["https://r1", "https://r2"]);
        assert_eq!(config.dpop, Dpop::Ephemeral);
    }

    #[test]
    fn each_mistake_has_a_message_naming_the_flag_and_no_value() {
        // (flags, environment, what the message must say)
        type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
        let cases: Vec<Case> = vec![
            (
                BASE[2..].to_vec(),
                vec![SECRET],
                "--token-url URL or --issuer URL",
            ),
            (
                [&BASE[..], &["--issuer", "https://as.example"]].concat(),
                vec![SECRET],
                "not both",
            ),
            (
                BASE[2..].to_vec(),
                vec![
                    SECRET,
                    ("TK_TOKEN_URL", "https://a/t"),
                    ("TK_ISSUER", "https://a"),
                ],
                "both set",
            ),
            (
                vec![BASE[0], BASE[1], BASE[4], BASE[5]],
                vec![SECRET],
                "--client-id ID is required",
            ),
            (BASE.to_vec(), vec![], "TK_CLIENT_SECRET is not set"),
            (
                [&BASE[..], &["--client-secret-env", "NOPE_VAR"]].concat(),
                vec![SECRET],
                "NOPE_VAR is not set",
            ),
            (
                [&BASE[..], &["--client-secret", "unit-s3cret"]].concat(),
                vec![SECRET],
                "--client-secret-env VAR",
            ),
            (BASE[..4].to_vec(), vec![SECRET], "--api URL is required"),
            (
                [&BASE[..4], &["--api", "ftp://x/y"]].concat(),
                vec![SECRET],
                "not an http(s) URL",
            ),
            (
                [&BASE[..], &["--listen", "localhost:80"]].concat(),
                vec![SECRET],
                "--listen",
            ),
            ([&BASE[..], &["--bogus"]].concat(), vec![SECRET], "--bogus"),
            (
                [&BASE[..], &["--scope", "a", "--scope", "b"]].concat(),
                vec![SECRET],
                "given twice",
            ),
            (
                [&BASE[..], &["--store-key-env", "K"]].concat(),
                vec![SECRET],
                "needs --store",
            ),
            (
                [&BASE[..], &["--store", "redis://:pw-unit@127.0.0.1"]].concat(),
                vec![SECRET],
                "TK_STORE_KEY is not set",
            ),
            (
                [&BASE[..], &["--fixed-authorization-env", "TK_FIXED"]].concat(),
                vec![SECRET],
                "TK_FIXED is not set",
            ),
            (
                [&BASE[..], &["--fixed-authorization-env", "TK_FIXED"]].concat(),
                vec![SECRET, ("TK_FIXED", "Bearer a\nb")],
                "not hold a valid header",
            ),
            (BASE.to_vec(), vec![SECRET, ("TK_DPOP", "maybe")], "TK_DPOP"),
            // From a variable: named as the variable, its value never quoted
            // (a URL that fails to parse may still hold a password).
            (
                BASE[..4].to_vec(),
                vec![SECRET, ("TK_API", "https://u:pw-unit@h:99999/")],
                "TK_API: not a URL",
            ),
            (
                BASE[..4].to_vec(),
                vec![SECRET, ("TK_API", "https://u:pw-unit@h/")],
                "TK_API: a URL with user information",
            ),
            (
                [&BASE[..4], &["--api", "https://h/records?code=pw-unit"]].concat(),
                vec![SECRET],
                "--api: a query or fragment is refused",
            ),
            (
                BASE.to_vec(),
                vec![SECRET, ("TK_LISTEN", "pw-unit")],
                "TK_LISTEN: not IP:PORT",
            ),
        ];
        for (args, env, expected) in cases {
            let error = match run(&args, &env) {
                Ok(_) => panic!("{args:?} {env:?} was accepted"),
                Err(error) => error.0,
            };
            assert!(error.contains(expected), "{args:?}: {error}");
            for secret in ["unit-s3cret", "pw-unit", "Bearer a"] {
                assert!(!error.contains(secret), "{args:?}: {error}");
            }
        }
    }

    #[test]
    fn help_prints_usage_and_a_bad_flag_before_it_is_an_error() {
        let none = |_: &str| None;
        assert!(parse(["--bogus-later", "--help"].map(OsString::from), &none).is_err());
        assert!(matches!(
            parse(["--help"].map(OsString::from), &none),
            Ok(Parsed::Help)
        ));
    }
}
