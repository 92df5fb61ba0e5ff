//! Interop with a real authorization server: panva's `oidc-provider` (npm,
//! 9.x), run by `tests/interop/server.mjs` together with a protected API that
//! verifies its JWT access tokens through the provider's JWKS and checks DPoP
//! proofs with its own nonce (see `tests/interop/README.md`).
//!
//! This file is about interop *timing* as much as interop: unlike the rest of
//! the suite, which moves a `ManualClock`, it runs on the adapters' real clock
//! against a server that issues 10 s tokens and enforces `exp` to the second,
//! for a little over two token lifetimes. Every client type (basic, post,
//! private_key_jwt with ES256 and RS256), with and without DPoP, goes through
//! the four adapters (ureq, surf, and reqwest and tower on tokio), and
//! `tokenctl` goes through the same server. The whole file runs in about
//! 45 s on two cores (the four ~23 s tests run in parallel), plus a build of
//! tokenctl when its binary is missing or stale.
//!
//! The fixture's launcher is `token_keeper_testkit::oidc_provider` (the
//! example service's tests use it too). Needs `npm ci` in `tests/interop`
//! (and Node.js 20 or later, and `openssl` for the RS256 key). Without
//! `tests/interop/node_modules` the tests skip, unless
//! `TOKEN_KEEPER_INTEROP=required` (as in CI), where they fail. `NODE`
//! overrides the node binary, `TOKENCTL` the tokenctl binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use token_keeper::discovery::ServerMetadata;
use token_keeper::jose::{sha256_base64url, sign_jwt, Algorithm, Signer};
use token_keeper::{
    AssertionAudience, ClientAuth, ClientConfig, ClientSecret, PrivateKeyJwt, RefreshPolicy,
};
use token_keeper_driver::ClientStats;
use token_keeper_keys::PrivateKey;
use token_keeper_testkit::oidc_provider::{self, Fixture};

/// Lifetime of the access tokens the server issues (`expires_in`).
const TOKEN_TTL: Duration = Duration::from_secs(10);
/// How long each client keeps calling the API: a little over two lifetimes.
const RUN_FOR: Duration = Duration::from_secs(21);
/// Pause between two API calls of one client.
const CALL_EVERY: Duration = Duration::from_millis(250);
/// How often the API rotates its DPoP nonce (it accepts only the current one).
const API_NONCE_EVERY: Duration = Duration::from_secs(4);
/// Longest wait for the server's ready line.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// The secret of the `client_secret_*` clients: it needs the RFC 6749 §2.3.1
/// form-urlencoding (space, `:`, `+`, `/`, `%`, `&`, `=`).
const SECRET: &str = "interop s3cret: a+b/c%d&e=f";
const SCOPE: &str = "api:read";

// ---- logging: token-keeper's log lines go to the test's captured output ---------

struct TestLogger;

impl log::Log for TestLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        // Only token-keeper's own lines (async-h1, behind surf, would log
        // whole requests, Authorization included, at TRACE).
        metadata.level() <= log::Level::Debug && metadata.target().starts_with("token_keeper")
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!("[{} {}] {}", record.level(), record.target(), record.args());
        }
    }
    fn flush(&self) {}
}

fn init_logging() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if log::set_logger(&TestLogger).is_ok() {
            log::set_max_level(log::LevelFilter::Debug);
        }
    });
}

// ---- the Node fixture (token_keeper_testkit::oidc_provider) ---------------------

/// Whether the fixture is installed; `false` means "skip" (see
/// [`oidc_provider::installed`]).
fn fixture_installed(test: &str) -> bool {
    oidc_provider::installed(test)
}

/// Starts `server.mjs` with this file's settings and these `private_key_jwt`
/// clients (id → public JWK).
fn start_fixture(jwt_clients: &Value) -> Fixture {
    Fixture::start(&oidc_provider::Options {
        client_secret: SECRET.to_owned(),
        jwt_clients: jwt_clients.clone(),
        token_ttl: TOKEN_TTL,
        api_nonce_every: API_NONCE_EVERY,
        time_limit: Duration::from_secs(300),
        ready_within: READY_WITHIN,
    })
}

// ---- keys ----------------------------------------------------------------------

/// A scratch directory under the target dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "interop-{name}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `private_key_jwt` keys: ES256 generated in memory, RS256 from a PEM
/// that `openssl genpkey` writes at test time (ring cannot generate RSA keys).
struct Keys {
    es256: Arc<PrivateKey>,
    rs256: Arc<PrivateKey>,
    rs256_pem: PathBuf,
    _dir: TempDir,
}

impl Keys {
    fn new(test: &str) -> Keys {
        let dir = TempDir::new(test);
        let rs256_pem = dir.0.join("rs256.pem");
        let output = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&rs256_pem)
            .output()
            .expect("running `openssl genpkey` (openssl is needed for the RS256 key)");
        assert!(
            output.status.success(),
            "openssl genpkey failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let rs256 = PrivateKey::from_file(&rs256_pem, Some(Algorithm::RS256)).expect("RS256 PEM");
        let es256 = PrivateKey::generate(Algorithm::ES256).expect("ES256 key");
        Keys {
            es256: Arc::new(es256),
            rs256: Arc::new(rs256),
            rs256_pem,
            _dir: dir,
        }
    }

    /// `INTEROP_JWT_CLIENTS`: client id → public JWK with its `alg`.
    fn jwt_clients(&self) -> Value {
        let public = |key: &PrivateKey| {
            let mut jwk = key.public_jwk().members().clone();
            jwk.insert("alg".into(), key.algorithm().name().into());
            Value::Object(jwk)
        };
        json!({ "jwt-es256": public(&self.es256), "jwt-rs256": public(&self.rs256) })
    }
}

// ---- the client types ------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Auth {
    Basic,
    Post,
    JwtEs256,
    JwtRs256,
}

impl Auth {
    const ALL: [Auth; 4] = [Auth::Basic, Auth::Post, Auth::JwtEs256, Auth::JwtRs256];

    fn client_id(self, dpop: bool) -> String {
        let base = match self {
            Auth::Basic => "basic",
            Auth::Post => "post",
            Auth::JwtEs256 => "jwt-es256",
            Auth::JwtRs256 => "jwt-rs256",
        };
        if dpop {
            format!("{base}-dpop")
        } else {
            base.to_owned()
        }
    }

    /// The discovery name of the method, and how the fixture counts it.
    fn method(self) -> (&'static str, &'static str) {
        match self {
            Auth::Basic => ("client_secret_basic", "basic"),
            Auth::Post => ("client_secret_post", "post"),
            Auth::JwtEs256 | Auth::JwtRs256 => ("private_key_jwt", "private_key_jwt"),
        }
    }
}

/// One client type, with or without DPoP.
#[derive(Clone, Copy, Debug)]
struct Combo {
    auth: Auth,
    dpop: bool,
}

fn all_combos() -> Vec<Combo> {
    Auth::ALL
        .iter()
        .flat_map(|&auth| [false, true].map(|dpop| Combo { auth, dpop }))
        .collect()
}

/// The configuration of `combo`, against the discovered token endpoint.
/// Variety on purpose: the `post` clients name the API with an RFC 8707
/// `resource` (the others get it from the server's default), and the RS256
/// clients put the issuer, not the token endpoint, in the assertion's `aud`.
fn client_config(
    combo: Combo,
    metadata: &ServerMetadata,
    fixture: &Fixture,
    keys: &Keys,
    dpop_key: Option<&Arc<PrivateKey>>,
) -> ClientConfig {
    let auth = match combo.auth {
        Auth::Basic => ClientAuth::Basic(ClientSecret::new(SECRET)),
        Auth::Post => ClientAuth::Post(ClientSecret::new(SECRET)),
        Auth::JwtEs256 => ClientAuth::PrivateKeyJwt(PrivateKeyJwt::new(keys.es256.clone())),
        Auth::JwtRs256 => ClientAuth::PrivateKeyJwt(
            PrivateKeyJwt::new(keys.rs256.clone())
                .audience(AssertionAudience::Issuer(fixture.issuer.clone())),
        ),
    };
    let mut config = ClientConfig::new(
        metadata.token_endpoint(),
        combo.auth.client_id(combo.dpop),
        auth,
    )
    .expect("client config")
    .scope(SCOPE);
    if combo.auth == Auth::Post {
        config = config.resource(&fixture.resource).expect("resource");
    }
    if let Some(key) = dpop_key {
        config = config.dpop(key.clone());
    }
    config
}

/// What discovery must have found on oidc-provider.
fn check_metadata(metadata: &ServerMetadata, fixture: &Fixture, combo: Combo) {
    assert_eq!(metadata.issuer(), fixture.issuer);
    assert_eq!(
        metadata.token_endpoint(),
        format!("{}/token", fixture.issuer)
    );
    let (method, _) = combo.auth.method();
    assert!(
        metadata
            .token_endpoint_auth_methods()
            .iter()
            .any(|m| m == method),
        "{method} not in {:?}",
        metadata.token_endpoint_auth_methods()
    );
    assert!(
        metadata.dpop_signing_algs().iter().any(|a| a == "ES256"),
        "ES256 not in dpop_signing_alg_values_supported {:?}",
        metadata.dpop_signing_algs()
    );
}

// ---- the adapters behind one face ------------------------------------------------
//
// To add an adapter: a value of `Adapter`, a variant of `Driver` holding its
// token client and API client, one arm in each of `Driver::new`, `get` and
// `stats`, and a `lifetimes_on_…` test. An async adapter on tokio runs its
// calls on a runtime of the driver's own (`tokio_runtime`), blocked on at the
// edge of each call, as the synchronous test must.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Adapter {
    Ureq,
    Surf,
    Reqwest,
    Tower,
}

const CLIENT: &str = "interop";

enum Driver {
    Ureq {
        tokens: token_keeper_ureq::TokenClient,
        agent: ureq::Agent,
    },
    Surf {
        tokens: token_keeper_surf::AsyncTokenClient,
        api: surf::Client,
    },
    Reqwest {
        tokens: token_keeper_reqwest::ReqwestTokenClient,
        api: reqwest_middleware::ClientWithMiddleware,
        /// The application's runtime: API calls run on it; token requests
        /// run on the client's own.
        runtime: tokio::runtime::Runtime,
    },
    Tower {
        tokens: token_keeper_tower::ReqwestTokenClient,
        api: token_keeper_tower::TokenService<
            hyper_util::client::legacy::Client<
                hyper_util::client::legacy::connect::HttpConnector,
                http_body_util::Full<bytes::Bytes>,
            >,
        >,
        /// The application's runtime: API calls run on it; token requests
        /// run on the client's own.
        runtime: tokio::runtime::Runtime,
    },
}

/// A one-worker tokio runtime for one driver's API calls.
fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

impl Driver {
    /// Discovers the issuer, registers `combo` and routes the API to it.
    fn new(
        adapter: Adapter,
        fixture: &Fixture,
        keys: &Keys,
        combo: Combo,
        dpop_key: Option<&Arc<PrivateKey>>,
    ) -> Driver {
        match adapter {
            Adapter::Ureq => {
                let tokens = token_keeper_ureq::TokenClient::new();
                let metadata = tokens.discover(&fixture.issuer).expect("ureq discovery");
                check_metadata(&metadata, fixture, combo);
                let config = client_config(combo, &metadata, fixture, keys, dpop_key);
                tokens.add_client(CLIENT, config).unwrap();
                let agent = token_keeper_ureq::TokenMiddleware::new(tokens.clone())
                    .route(&fixture.api, CLIENT)
                    .unwrap()
                    .build_agent(|| {
                        ureq::Agent::config_builder()
                            .http_status_as_error(false)
                            .timeout_global(Some(Duration::from_secs(10)))
                    });
                Driver::Ureq { tokens, agent }
            }
            Adapter::Surf => {
                let tokens =
                    token_keeper_surf::AsyncTokenClient::new(token_keeper_surf::DirectHttp::new());
                let metadata = async_std::task::block_on(tokens.discover(&fixture.issuer))
                    .expect("surf discovery");
                check_metadata(&metadata, fixture, combo);
                let config = client_config(combo, &metadata, fixture, keys, dpop_key);
                tokens.add_client(CLIENT, config).unwrap();
                let http: surf::Client = surf::Config::new()
                    .set_timeout(Some(Duration::from_secs(10)))
                    .try_into()
                    .expect("surf client");
                let api = http.with(
                    token_keeper_surf::TokenMiddleware::new(tokens.clone())
                        .route(&fixture.api, CLIENT)
                        .unwrap(),
                );
                Driver::Surf { tokens, api }
            }
            Adapter::Reqwest => {
                let runtime = tokio_runtime();
                let tokens = token_keeper_reqwest::ReqwestTokenClient::new();
                let metadata = runtime
                    .block_on(tokens.discover(&fixture.issuer))
                    .expect("reqwest discovery");
                check_metadata(&metadata, fixture, combo);
                let config = client_config(combo, &metadata, fixture, keys, dpop_key);
                tokens.add_client(CLIENT, config).unwrap();
                let http = token_keeper_reqwest::TokenMiddleware::client_builder()
                    .timeout(Duration::from_secs(10))
                    .no_proxy()
                    .build()
                    .expect("reqwest client");
                let api = reqwest_middleware::ClientBuilder::new(http)
                    .with(
                        token_keeper_reqwest::TokenMiddleware::new(tokens.clone())
                            .route(&fixture.api, CLIENT)
                            .unwrap(),
                    )
                    .build();
                Driver::Reqwest {
                    tokens,
                    api,
                    runtime,
                }
            }
            Adapter::Tower => {
                let runtime = tokio_runtime();
                let tokens = token_keeper_tower::ReqwestTokenClient::new();
                let metadata = runtime
                    .block_on(tokens.discover(&fixture.issuer))
                    .expect("tower discovery");
                check_metadata(&metadata, fixture, combo);
                let config = client_config(combo, &metadata, fixture, keys, dpop_key);
                tokens.add_client(CLIENT, config).unwrap();
                let http = {
                    let _entered = runtime.enter();
                    hyper_util::client::legacy::Client::builder(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .build_http()
                };
                let layer = token_keeper_tower::TokenLayer::new(&tokens)
                    .route(&fixture.api, CLIENT)
                    .unwrap();
                let api = tower::ServiceBuilder::new().layer(layer).service(http);
                Driver::Tower {
                    tokens,
                    api,
                    runtime,
                }
            }
        }
    }

    /// `GET url` through the middleware: the status and the body.
    fn get(&self, url: &str) -> Result<(u16, String), String> {
        match self {
            Driver::Ureq { agent, .. } => {
                let mut response = agent.get(url).call().map_err(|e| e.to_string())?;
                let status = response.status().as_u16();
                let body = response
                    .body_mut()
                    .read_to_string()
                    .map_err(|e| e.to_string())?;
                Ok((status, body))
            }
            Driver::Surf { api, .. } => async_std::task::block_on(async {
                let mut response = api.get(url).await.map_err(|e| e.to_string())?;
                let status = response.status() as u16;
                let body = response.body_string().await.map_err(|e| e.to_string())?;
                Ok((status, body))
            }),
            Driver::Reqwest { api, runtime, .. } => runtime.block_on(async {
                let response =
                    api.get(url).send().await.map_err(
                        |e| match token_keeper_reqwest::token_failure(&e) {
                            Some(no_token) => format!("no token: {no_token}"),
                            None => e.to_string(),
                        },
                    )?;
                let status = response.status().as_u16();
                let body = response.text().await.map_err(|e| e.to_string())?;
                Ok((status, body))
            }),
            Driver::Tower { api, runtime, .. } => runtime.block_on(async {
                use http_body_util::BodyExt;
                use tower::ServiceExt;
                let request = http::Request::get(url)
                    .body(http_body_util::Full::default())
                    .map_err(|e| e.to_string())?;
                let response = api.clone().oneshot(request).await.map_err(|e| {
                    match token_keeper_tower::token_failure(&*e) {
                        Some(no_token) => format!("no token: {no_token}"),
                        None => e.to_string(),
                    }
                })?;
                let status = response.status().as_u16();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                Ok((status, String::from_utf8_lossy(&body).into_owned()))
            }),
        }
    }

    fn stats(&self) -> ClientStats {
        match self {
            Driver::Ureq { tokens, .. } => tokens.stats(),
            Driver::Surf { tokens, .. } => tokens.stats(),
            Driver::Reqwest { tokens, .. } => tokens.stats(),
            Driver::Tower { tokens, .. } => tokens.stats(),
        }
    }
}

// ---- the lifetime run ----------------------------------------------------------

/// What one client saw.
struct Run {
    combo: Combo,
    client_id: String,
    calls: u64,
    /// From the first call to the end of the last one.
    elapsed: Duration,
    client: ClientStats,
}

/// Calls the API every `CALL_EVERY` for `RUN_FOR`; every call must succeed
/// and carry the token type (and, with DPoP, the key) it should.
fn run_client(adapter: Adapter, fixture: &Fixture, keys: &Keys, combo: Combo) -> Run {
    let client_id = combo.auth.client_id(combo.dpop);
    let dpop_key = combo
        .dpop
        .then(|| Arc::new(PrivateKey::generate(Algorithm::ES256).expect("DPoP key")));
    let driver = Driver::new(adapter, fixture, keys, combo, dpop_key.as_ref());
    let expected_type = if combo.dpop { "DPoP" } else { "Bearer" };
    let expected_jkt = dpop_key
        .as_ref()
        .map_or(Value::Null, |k| k.public_jwk().thumbprint().into());
    let start = Instant::now();
    let mut calls = 0;
    while start.elapsed() < RUN_FOR {
        let url = fixture.data_url(calls);
        let (status, body) = driver
            .get(&url)
            .unwrap_or_else(|e| panic!("{adapter:?} {client_id}: call {calls} failed: {e}"));
        assert_eq!(
            status,
            200,
            "{adapter:?} {client_id}: call {calls} after {:?} answered {status} {body}",
            start.elapsed()
        );
        let body: Value = serde_json::from_str(&body).expect("API answers JSON");
        assert_eq!(body["client_id"], client_id.as_str(), "{body}");
        assert_eq!(body["token_type"], expected_type, "{client_id}: {body}");
        assert_eq!(
            body["jkt"], expected_jkt,
            "{client_id}: bound to the wrong key: {body}"
        );
        assert_eq!(body["scope"], SCOPE, "{body}");
        calls += 1;
        std::thread::sleep(CALL_EVERY);
    }
    Run {
        combo,
        client_id,
        calls,
        elapsed: start.elapsed(),
        client: driver.stats(),
    }
}

/// Token requests a client may make in `elapsed` with refresh-ahead: one,
/// plus one per earliest refresh point (the default `RefreshPolicy`: usable
/// for `ttl - min(60 s, ttl/4)`, refreshed from 70 % of that), plus one spare.
fn token_bounds(elapsed: Duration) -> (u64, u64) {
    let policy = RefreshPolicy::default();
    let usable = TOKEN_TTL.as_secs_f64()
        - policy
            .expiry_buffer
            .as_secs_f64()
            .min(TOKEN_TTL.as_secs_f64() / 4.0);
    let earliest_refresh = usable * (policy.refresh_at - policy.refresh_jitter);
    let e = elapsed.as_secs_f64();
    // Calls spanning `e` seconds need a token for each `usable` stretch…
    let least = 1 + (e / usable).floor() as u64;
    // …and refresh-ahead never asks more often than every `earliest_refresh`.
    let most = 2 + (e / earliest_refresh).floor() as u64;
    (least, most)
}

fn counter(value: &Value, path: &[&str]) -> u64 {
    let mut v = value;
    for p in path {
        v = &v[*p];
    }
    v.as_u64().unwrap_or(0)
}

/// Checks one run against the server's counters; returns the problems.
fn check_run(run: &Run, stats: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut expect = |ok: bool, what: String| {
        if !ok {
            problems.push(format!("{}: {what}", run.client_id));
        }
    };
    let token = &stats["token"][&run.client_id];
    let api = &stats["api"][&run.client_id];
    let t = |name: &str| counter(token, &[name]);
    let a = |name: &str| counter(api, &[name]);
    let (least, most) = token_bounds(run.elapsed);
    let issued = t("issued");

    // At least two lifetimes went by, on real time.
    expect(
        run.elapsed >= 2 * TOKEN_TTL,
        format!("ran only {:?}", run.elapsed),
    );
    // Caching and refresh-ahead: a handful of tokens, never one per call.
    expect(
        (least..=most).contains(&issued),
        format!(
            "{issued} tokens issued in {:?}; expected {least}..={most} ({} calls)",
            run.elapsed, run.calls
        ),
    );
    expect(
        run.calls >= 4 * issued,
        format!("{} calls for {issued} tokens", run.calls),
    );
    // Token endpoint traffic: nothing failed, and every request is accounted for.
    expect(t("errors") == 0, format!("token endpoint errors: {token}"));
    expect(
        t("requests") == issued + t("use_dpop_nonce"),
        format!("token requests do not add up: {token}"),
    );
    expect(
        run.client.token_requests == t("requests"),
        format!(
            "client counted {} token requests, server {}",
            run.client.token_requests,
            t("requests")
        ),
    );
    expect(
        run.client.tokens_acquired == issued,
        format!(
            "client acquired {} tokens, server issued {issued}",
            run.client.tokens_acquired
        ),
    );
    let (_, sent_as) = run.combo.auth.method();
    expect(
        counter(token, &["auth", sent_as]) == t("requests"),
        format!("client authentication was not always {sent_as}: {token}"),
    );
    // The API saw every call succeed, with the refreshed tokens too.
    expect(a("rejected") == 0, format!("API rejections: {api}"));
    expect(
        a("ok") == run.calls,
        format!("{} calls, API: {api}", run.calls),
    );
    expect(
        a("distinct_tokens") >= least && a("distinct_tokens") <= issued,
        format!(
            "API saw {} distinct tokens, {issued} issued",
            a("distinct_tokens")
        ),
    );
    if run.combo.dpop {
        expect(
            t("issued_dpop") == issued && t("with_dpop_proof") == t("requests"),
            format!("not every token request was DPoP: {token}"),
        );
        // oidc-provider demands a nonce: one challenge, then the nonce is kept.
        expect(
            (1..=2).contains(&t("use_dpop_nonce")),
            format!("token endpoint nonce challenges: {token}"),
        );
        // The API's nonce: asked for at first, then again after each rotation,
        // and every challenged call was retried once and succeeded.
        expect(
            a("use_dpop_nonce") >= 2,
            format!("the API's nonce flow did not run (first + stale): {api}"),
        );
        expect(
            a("requests") == a("ok") + a("use_dpop_nonce"),
            format!("API requests do not add up: {api}"),
        );
        expect(a("ok_dpop") == run.calls, format!("not all DPoP: {api}"));
    } else {
        expect(
            t("use_dpop_nonce") == 0 && t("with_dpop_proof") == 0 && t("issued_dpop") == 0,
            format!("DPoP where none was configured: {token}"),
        );
        expect(
            a("ok_bearer") == run.calls && a("requests") == run.calls,
            format!("not all Bearer: {api}"),
        );
    }
    problems
}

/// Every client type, with and without DPoP, in parallel on one adapter.
fn lifetimes(adapter: Adapter, test: &str) {
    if !fixture_installed(test) {
        return;
    }
    init_logging();
    let keys = Keys::new(test);
    let fixture = start_fixture(&keys.jwt_clients());
    let runs: Vec<Run> = std::thread::scope(|s| {
        let handles: Vec<_> = all_combos()
            .into_iter()
            .map(|combo| {
                let (fixture, keys) = (&fixture, &keys);
                s.spawn(move || run_client(adapter, fixture, keys, combo))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| panic!("server log:\n{}", fixture.log()))
            })
            .collect()
    });
    let stats = fixture.stats();
    let problems: Vec<String> = runs.iter().flat_map(|run| check_run(run, &stats)).collect();
    for run in &runs {
        eprintln!(
            "{adapter:?} {:>16}: {} calls in {:.1?}, {} token requests, {} tokens; server {}",
            run.client_id,
            run.calls,
            run.elapsed,
            run.client.token_requests,
            run.client.tokens_acquired,
            stats["api"][&run.client_id]
        );
    }
    assert!(
        problems.is_empty(),
        "{adapter:?}:\n{}\nserver stats: {stats:#}\nserver log:\n{}",
        problems.join("\n"),
        fixture.log()
    );
}

#[test]
fn lifetimes_on_ureq_every_client_type_with_and_without_dpop() {
    lifetimes(Adapter::Ureq, "lifetimes_ureq");
}

#[test]
fn lifetimes_on_surf_every_client_type_with_and_without_dpop() {
    lifetimes(Adapter::Surf, "lifetimes_surf");
}

#[test]
fn lifetimes_on_reqwest_every_client_type_with_and_without_dpop() {
    lifetimes(Adapter::Reqwest, "lifetimes_reqwest");
}

#[test]
fn lifetimes_on_tower_every_client_type_with_and_without_dpop() {
    lifetimes(Adapter::Tower, "lifetimes_tower");
}

// ---- the fixture is no rubber stamp ----------------------------------------------

/// A response to a hand-made request.
struct Raw {
    status: u16,
    challenge: String,
    nonce: Option<String>,
    body: String,
}

/// A plain GET with an explicit `Authorization` (and optional `DPoP`) header.
fn raw_get(url: &str, authorization: Option<&str>, dpop: Option<&str>) -> Raw {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut request = agent.get(url);
    if let Some(value) = authorization {
        request = request.header("Authorization", value);
    }
    if let Some(value) = dpop {
        request = request.header("DPoP", value);
    }
    let mut response = request.call().expect("raw GET");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or_default().to_owned())
    };
    let challenge = header("www-authenticate").unwrap_or_default();
    let nonce = header("dpop-nonce");
    Raw {
        status: response.status().as_u16(),
        challenge,
        nonce,
        body: response.body_mut().read_to_string().unwrap_or_default(),
    }
}

/// A DPoP proof made by hand, for the claims the API must check.
fn proof(key: &PrivateKey, htu: &str, token: &str, nonce: Option<&str>) -> String {
    static JTI: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let jti = JTI.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let iat = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = json!({
        "typ": "dpop+jwt",
        "alg": key.algorithm().name(),
        "jwk": Value::Object(key.public_jwk().members().clone()),
    });
    let mut claims = json!({
        "jti": format!("hand-made-{}-{jti}", std::process::id()),
        "htm": "GET",
        "htu": htu,
        "iat": iat,
        "ath": sha256_base64url(token.as_bytes()),
    });
    if let Some(nonce) = nonce {
        claims["nonce"] = nonce.into();
    }
    sign_jwt(key, &header, &claims).expect("signing a proof")
}

/// The server refuses what it should, so the successes above mean something:
/// a DPoP-bound token as Bearer or without a proof, proofs that are replayed,
/// for another token, by another key, for another URL or without the API's
/// nonce, no token, an unbound token as DPoP, a DPoP-only client without a
/// proof, a wrong secret.
#[test]
fn fixture_refuses_misused_tokens_and_bad_clients() {
    if !fixture_installed("fixture_refuses") {
        return;
    }
    init_logging();
    let fixture = start_fixture(&json!({}));
    let tokens = token_keeper_ureq::TokenClient::new();
    let metadata = tokens.discover(&fixture.issuer).expect("discovery");
    let endpoint = metadata.token_endpoint();
    let dpop_key = Arc::new(PrivateKey::generate(Algorithm::ES256).unwrap());
    let secret = || ClientAuth::Basic(ClientSecret::new(SECRET));
    tokens
        .add_client(
            "bound",
            ClientConfig::new(endpoint, "basic-dpop", secret())
                .unwrap()
                .scope(SCOPE)
                .dpop(dpop_key.clone()),
        )
        .unwrap();
    tokens
        .add_client(
            "plain",
            ClientConfig::new(endpoint, "basic", secret())
                .unwrap()
                .scope(SCOPE),
        )
        .unwrap();
    tokens
        .add_client(
            "bound-without-proof",
            ClientConfig::new(endpoint, "basic-dpop", secret())
                .unwrap()
                .scope(SCOPE),
        )
        .unwrap();
    tokens
        .add_client(
            "wrong-secret",
            ClientConfig::new(
                endpoint,
                "basic",
                ClientAuth::Basic(ClientSecret::new("nope")),
            )
            .unwrap()
            .scope(SCOPE),
        )
        .unwrap();

    let bound = tokens.header("bound").expect("DPoP token");
    let bound = bound.to_str().unwrap();
    let token = bound.strip_prefix("DPoP ").expect("a DPoP token");
    let plain = tokens.header("plain").expect("Bearer token");
    let plain = plain.to_str().unwrap();
    let plain_token = plain.strip_prefix("Bearer ").expect("a Bearer token");
    let url = fixture.data_url(0);
    let htu = format!("{}/data", fixture.api);
    let refused = |raw: &Raw, what: &str, error: &str| {
        assert_eq!(raw.status, 401, "{what}: {}", raw.body);
        assert!(raw.challenge.contains(error), "{what}: {}", raw.challenge);
    };

    // Tokens in the wrong place.
    let raw = raw_get(&url, Some(&format!("Bearer {token}")), None);
    refused(&raw, "DPoP-bound token as Bearer", "invalid_token");
    refused(
        &raw_get(&url, Some(bound), None),
        "no proof",
        "invalid_dpop_proof",
    );
    refused(&raw_get(&url, None, None), "no token", "invalid_request");
    let raw = raw_get(&url, Some(&format!("DPoP {plain_token}")), None);
    refused(&raw, "unbound token as DPoP", "invalid_token");
    assert_eq!(raw_get(&url, Some(plain), None).status, 200, "plain Bearer");

    // Hand-made proofs: the API's nonce first, then each claim in turn.
    let raw = raw_get(
        &url,
        Some(bound),
        Some(&proof(&dpop_key, &htu, token, None)),
    );
    refused(&raw, "proof without the API's nonce", "use_dpop_nonce");
    let nonce = raw.nonce.expect("a DPoP-Nonce with use_dpop_nonce");
    let good = proof(&dpop_key, &htu, token, Some(&nonce));
    let raw = raw_get(&url, Some(bound), Some(&good));
    assert_eq!(raw.status, 200, "a good hand-made proof: {}", raw.body);
    let raw = raw_get(&url, Some(bound), Some(&good));
    refused(&raw, "replayed proof", "invalid_dpop_proof");
    let raw = raw_get(
        &url,
        Some(bound),
        Some(&proof(&dpop_key, &htu, plain_token, Some(&nonce))),
    );
    refused(&raw, "proof for another token (ath)", "invalid_dpop_proof");
    let other_key = PrivateKey::generate(Algorithm::ES256).unwrap();
    let raw = raw_get(
        &url,
        Some(bound),
        Some(&proof(&other_key, &htu, token, Some(&nonce))),
    );
    refused(&raw, "proof by another key (cnf.jkt)", "invalid_token");
    let raw = raw_get(
        &url,
        Some(bound),
        Some(&proof(&dpop_key, &url, token, Some(&nonce))),
    );
    refused(&raw, "htu with a query", "invalid_dpop_proof");
    let elsewhere = format!("{}/elsewhere", fixture.api);
    let raw = raw_get(
        &url,
        Some(bound),
        Some(&proof(&dpop_key, &elsewhere, token, Some(&nonce))),
    );
    refused(&raw, "htu of another URL", "invalid_dpop_proof");

    // The token endpoint.
    let error = tokens.header("bound-without-proof").unwrap_err();
    assert!(
        matches!(&error, token_keeper_ureq::Error::OAuth(e) if e.code() == "invalid_grant"),
        "a DPoP-only client without a proof: {error:?}"
    );
    let error = tokens.header("wrong-secret").unwrap_err();
    assert!(
        matches!(&error, token_keeper_ureq::Error::OAuth(e) if e.code() == "invalid_client"),
        "a wrong secret: {error:?}"
    );

    let stats = fixture.stats();
    let reasons: Vec<&str> = stats["rejections"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["reason"].as_str())
        .collect();
    for expected in [
        "presented as Bearer",
        "expected one DPoP header, got 0",
        "replayed proof",
        "ath",
        "thumbprint",
        "without query and fragment",
        "/elsewhere",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "no rejection for {expected:?}: {reasons:#?}"
        );
    }
    let log = fixture.log();
    assert!(log.contains("DPoP proof JWT not provided"), "{log}");
    assert!(log.contains("invalid secret provided"), "{log}");
}

// ---- tokenctl ------------------------------------------------------------------

/// The `tokenctl` binary of this build.
///
/// `CARGO_BIN_EXE_tokenctl` exists only inside the tokenctl package, so it is
/// found where cargo puts it: `<target>/<profile>/tokenctl`, beside this
/// test's `deps/` directory (which honours `CARGO_TARGET_DIR`). A workspace
/// `cargo test` has built it before any test runs (tokenctl's own integration
/// tests need it). When it is missing, or older than a source file it is built
/// from (as after `cargo test -p token-keeper-testkit`), it is built here
/// with the same cargo, target dir and profile; nested cargo does not block,
/// since cargo holds no build lock while tests run. `TOKENCTL` overrides all this.
fn tokenctl() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("TOKENCTL") {
            return path.into();
        }
        let exe = std::env::current_exe().expect("test binary path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("<target>/<profile>/deps/<test>");
        let bin = profile_dir.join(format!("tokenctl{}", std::env::consts::EXE_SUFFIX));
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        if is_fresh(&bin, workspace) {
            return bin;
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args(["build", "-p", "tokenctl", "--bin", "tokenctl"])
            .current_dir(workspace)
            .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap());
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("running cargo build -p tokenctl");
        assert!(status.success(), "cargo build -p tokenctl failed");
        assert!(bin.is_file(), "{} was not built", bin.display());
        bin
    })
    .clone()
}

/// Whether `bin` exists and is newer than every source it is built from.
fn is_fresh(bin: &Path, workspace: &Path) -> bool {
    fn newest(path: &Path, newest_seen: &mut SystemTime) {
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
                newest(&entry.path(), newest_seen);
            }
        } else if let Ok(modified) = meta.modified() {
            *newest_seen = (*newest_seen).max(modified);
        }
    }
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return false;
    };
    let mut sources = SystemTime::UNIX_EPOCH;
    for dir in [
        "core",
        "keys",
        "driver",
        "adapters/ureq",
        "adapters/surf",
        "testkit",
        "tokenctl",
    ] {
        newest(&workspace.join(dir).join("src"), &mut sources);
        newest(&workspace.join(dir).join("Cargo.toml"), &mut sources);
    }
    newest(&workspace.join("Cargo.toml"), &mut sources);
    newest(&workspace.join("Cargo.lock"), &mut sources);
    built >= sources
}

/// Runs tokenctl with `args` (and the secret in `TK_INTEROP_SECRET`), bounded in time.
fn run_tokenctl(args: &[&str]) -> Output {
    let mut child = Command::new(tokenctl())
        .args(args)
        .env("TK_INTEROP_SECRET", SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting tokenctl");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("tokenctl status").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("tokenctl output");
    eprintln!(
        "tokenctl {}: {} {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    output
}

fn json_output(output: &Output, what: &str) -> Value {
    assert!(
        output.status.success(),
        "tokenctl {what}: {}; stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "tokenctl {what}: stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// `tokenctl token --issuer … --json` for basic, post, private-key-jwt and
/// `--dpop`, and `tokenctl call` on both adapters, against the same server.
#[test]
fn tokenctl_token_and_call() {
    if !fixture_installed("tokenctl") {
        return;
    }
    init_logging();
    let tokenctl_bin = tokenctl();
    eprintln!("tokenctl: {}", tokenctl_bin.display());
    let keys = Keys::new("tokenctl");
    let fixture = start_fixture(&keys.jwt_clients());
    let issuer = fixture.issuer.as_str();
    let pem = keys.rs256_pem.to_str().unwrap();
    let secret = ["--client-secret-env", "TK_INTEROP_SECRET"];
    let pkjwt = [
        "--auth",
        "private-key-jwt",
        "--private-key",
        pem,
        "--alg",
        "RS256",
    ];
    let common = ["--issuer", issuer, "--scope", SCOPE];

    // (client id, extra flags, token type, how the server saw the client authenticate)
    let cases: Vec<(&str, Vec<&str>, &str, &str)> = vec![
        (
            "basic",
            [&secret[..], &["--auth", "basic"]].concat(),
            "Bearer",
            "basic",
        ),
        (
            "post",
            [
                &secret[..],
                &["--auth", "post", "--resource", &fixture.resource],
            ]
            .concat(),
            "Bearer",
            "post",
        ),
        ("jwt-rs256", pkjwt.to_vec(), "Bearer", "private_key_jwt"),
        (
            "basic-dpop",
            [&secret[..], &["--dpop"]].concat(),
            "DPoP",
            "basic",
        ),
        (
            "jwt-rs256-dpop",
            [&pkjwt[..], &["--dpop", "--adapter", "surf"]].concat(),
            "DPoP",
            "private_key_jwt",
        ),
    ];
    for (client_id, flags, token_type, sent_as) in &cases {
        let args = [
            &["token", "--client-id", client_id],
            &common[..],
            &flags[..],
            &["--json"],
        ]
        .concat();
        let out = json_output(&run_tokenctl(&args), &format!("token {client_id}"));
        assert_eq!(out["token_type"], *token_type, "{client_id}");
        assert_eq!(out["scope"], SCOPE, "{client_id}");
        let expires_in = out["expires_in"].as_u64().expect("expires_in");
        assert!(
            (1..=TOKEN_TTL.as_secs()).contains(&expires_in),
            "{client_id}: expires_in {expires_in}"
        );
        // The token is a JWT the API accepts as Bearer, unless it is DPoP-bound.
        let token = out["access_token"].as_str().expect("access_token");
        let raw = raw_get(&fixture.data_url(0), Some(&format!("Bearer {token}")), None);
        let expected = if *token_type == "DPoP" { 401 } else { 200 };
        assert_eq!(raw.status, expected, "{client_id}: {}", raw.body);
        let stats = fixture.stats();
        let token_stats = &stats["token"][*client_id];
        assert_eq!(
            counter(token_stats, &["issued"]),
            1,
            "{client_id}: {token_stats}"
        );
        assert_eq!(
            counter(token_stats, &["errors"]),
            0,
            "{client_id}: {token_stats}"
        );
        assert_eq!(
            counter(token_stats, &["auth", sent_as]),
            counter(token_stats, &["requests"]),
            "{client_id}: {token_stats}"
        );
    }

    // `call`: many requests, one token (plus one nonce challenge with DPoP).
    let calls: [(&str, Vec<&str>, &str); 3] = [
        (
            "post-dpop",
            [&secret[..], &["--auth", "post", "--dpop"]].concat(),
            "ureq",
        ),
        (
            "basic",
            [&secret[..], &["--auth", "basic"]].concat(),
            "surf",
        ),
        ("jwt-rs256-dpop", [&pkjwt[..], &["--dpop"]].concat(), "surf"),
    ];
    let data = format!("{}/data", fixture.api);
    for (client_id, flags, adapter) in &calls {
        let before = fixture.stats();
        let args = [
            &[
                "call",
                &data,
                "--client-id",
                client_id,
                "--adapter",
                adapter,
            ][..],
            &common[..],
            &flags[..],
            &["--requests", "40", "--concurrency", "4", "--json"],
        ]
        .concat();
        let out = json_output(&run_tokenctl(&args), &format!("call {client_id}"));
        assert_eq!(out["requests"], 40, "{out}");
        assert_eq!(out["succeeded"], 40, "{out}");
        assert_eq!(out["failed"], 0, "{out}");
        let after = fixture.stats();
        let delta = |kind: &str, name: &str| {
            counter(&after[kind][*client_id], &[name]) - counter(&before[kind][*client_id], &[name])
        };
        assert_eq!(delta("token", "issued"), 1, "{client_id}: {after:#}");
        assert_eq!(
            out["token_requests"].as_u64(),
            Some(delta("token", "requests")),
            "{client_id}: {out} vs {after:#}"
        );
        assert_eq!(delta("api", "ok"), 40, "{client_id}: {after:#}");
        assert_eq!(delta("api", "rejected"), 0, "{client_id}: {after:#}");
    }
}
