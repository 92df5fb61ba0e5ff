//! DPoP (RFC 9449) and `private_key_jwt` (RFC 7523) end to end over loopback,
//! on both adapters, with real keys (`PrivateKey`: ES256 and EdDSA generated,
//! RS256 and PS256 from a PKCS#8 PEM).
//!
//! The local server enforces the protocol's shape (claims, nonces, replays,
//! key binding), refuses signatures that do not verify, and records every
//! proof and assertion with the request it came with. Each test then verifies
//! every recorded JWT with jsonwebtoken, a JOSE implementation independent of
//! token-keeper's, against the key it claims: a proof against the `jwk` in its
//! own header, an assertion against the client's registered public key.
//!
//! Nothing sleeps: the clients and the server share one `ManualClock` that
//! never moves here, and every expectation is an exact count of recorded calls.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use jsonwebtoken::{jwk::Jwk, DecodingKey, Validation};
use serde_json::{Map, Value};
use token_keeper::jose::{sha256_base64url, Algorithm, PublicJwk, Signer};
use token_keeper::request::JWT_BEARER_ASSERTION;
use token_keeper::time::{Clock, ManualClock};
use token_keeper::{
    ClientAuth, ClientConfig, ClientSecret, ManagerConfig, PrivateKeyJwt, TokenError,
};
use token_keeper_driver::Error;
use token_keeper_keys::PrivateKey;
use token_keeper_testkit::server::{
    ApiFault, Endpoint, JwsVerifier, LocalAuthServer, RecordedCall, ServerConfig,
};

/// A 2048-bit RSA key (PKCS#8, `openssl genpkey -algorithm RSA`), for tests only.
const RSA_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQDEOXKz5JC+Tjhv
+XIdu+sV5uOih5KiDfk/+Q2O+1yzqGwfYxwSHP6HkIIn9cBJ8dZxE+V9SUsGQPZR
rDMmjjxB6RNETX3VTi5bfayuNYXnLs/Asv7IT9y8ArAvKrzrdFF2dCUTnyW6bDj7
GkA5VxVj9LyjaZo3I1hhyVDe6a7KrlpNsS50zXayqF53KNuSjsp6pNHky8Az7YLh
+8B4wCrt32hcgXP5M1PwMBNpyD+vfQUWNVTwNAd5Rw13l0HuVDLReVmNKV0hEoPi
QCUIQBzF2Wl7V30ARRRTlsVh6nYz94np4Suyher7TV9hco76k5IGTE8z43x/LqYg
TZe++nx9AgMBAAECggEABRUd2PX/H8bD5HaYE5gV9zvDQqbzT9o/zf3j8YOmO4sN
veRhykBRAW7nSCSv5dprPQOQaqXW2SMeni/xJTsC6YwhcR/2tesv/TOsoNiHDt1i
CTI5sjOLWp1RNe+L9CdPottQSIlTP1hlQ2/DIRkV10B0EGGAWpRCSkoeG5/+5IYC
8wJOt5hxyfS5qL6b0I2cRbyMzDHg34iKgafetQH6GR2uji6pFqwBzT4RPsjBv5M9
0xqEw30IKLt7bOVvqjIgzzoBOSMKEHoUQDmUjU6Avyar5+QMiy32hJQWVJhekwZt
G6ePvIkXlfZKn8Pmw4Ho2t6FOX3jB1jscKUl/R3IqwKBgQDvYXMo0/O96ADneOVp
i6lM+Qynb+0A5DnCppFTPBeVHHf8Ytcsd6OaHRBoh9jPjm+gbgvPi335XdJCauqy
kKpnf1GY4CViusp9J1QdoAuBnKh7TP1BXSAYZh+mwpFUzGWeMOAwLTvvKKdwmeY4
DbRVC+Ifwpbvk+8oToNlrYiXWwKBgQDR2PmrwpuHt8z/yE75NCaXUVyqiF+arYTX
zd7yuOXy7d1nn0wiDhoZGVhzB6My2aUy1mi7AVuymeOdX1a9ax3Xe6fy38yGbJf/
JNDqsd4vFRIBebBa+KcaddtsCS/IcUwTX5+TXyjwIHwR6N+VEp+xSTtYPB8nUCWo
3YooEyNbBwKBgH33ovkOKAp8JtWn6dlTtCCcQgtuO6Kndrm2m2zYh3RhCcbXYHG2
93Gm77aCHhaC1rzui+qIdh8ePwHSb3TN6c4S0qaG9UVyFBIt+van/MYU4RgZWH/n
+Ha+btN7Oa0M7kCDacYQV6SvmQUJB3vhwk6qtTCPXovuJgDo5/4+hk1XAoGAW3U4
Y56ekIkP5I7VtJEBHMQOIhjrqgtkMXX9bEYfmkAHVgk8cj85KqU8Qm4at6fZ8w01
egN+hpnBdS4/LLEJwYeYTCc0CYY8vKu8Df3VeymwvkneDdf/ZG3nYu+iDrcqU+tC
LkW0HuvZhyi6gUsrpGXpYmxZm5W3xCBB/XNR3nMCgYBM5BoRRqDNqVEp59p898F4
khxvdMFE5bAdVNEL3IDiOnvW2NDFJ3ZHKLGoJvSV4knrIPTQ8Vx4lr4twpOtt3kU
eTp2K5KgyyIAGLUzu9lZqohhQGpP+CCEYng+U44o6L1GNwe1Scuv5/90tB3SPJod
xIJfHP+ZINC6dxcfjw2zXA==
-----END PRIVATE KEY-----
";

const CLIENT_ID: &str = "m2m";
const SECRET: &str = "s3cret-e2e-4b7d";
const ALGORITHMS: [Algorithm; 4] = [
    Algorithm::ES256,
    Algorithm::EdDSA,
    Algorithm::RS256,
    Algorithm::PS256,
];

/// A key for `alg`: generated for ES256 and EdDSA, the PEM above for RSA.
fn signing_key(alg: Algorithm) -> Arc<PrivateKey> {
    let key = match alg {
        Algorithm::ES256 | Algorithm::EdDSA => PrivateKey::generate(alg),
        _ => PrivateKey::from_pem(RSA_PEM, Some(alg)),
    };
    let key = key.unwrap_or_else(|e| panic!("{alg} key: {e}"));
    assert_eq!(key.algorithm(), alg);
    Arc::new(key)
}

/// The clock the clients and the server share; it never moves in these tests.
fn clock() -> ManualClock {
    let clock = ManualClock::new();
    clock.advance(Duration::from_secs(1_000));
    clock
}

fn unix_seconds(clock: &ManualClock) -> u64 {
    clock.wall().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn jsonwebtoken_alg(alg: Algorithm) -> jsonwebtoken::Algorithm {
    alg.name()
        .parse()
        .expect("jsonwebtoken knows every alg the keys sign")
}

/// The server's signature check: jsonwebtoken, from the public JWK it is given.
fn verifier() -> JwsVerifier {
    JwsVerifier::new(|jws, jwk| {
        let jwk: Jwk = serde_json::from_str(jwk).map_err(|e| e.to_string())?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
        let header = jsonwebtoken::decode_header(jws).map_err(|e| e.to_string())?;
        let mut validation = Validation::new(header.alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_aud = false;
        jsonwebtoken::decode::<Value>(jws, &key, &validation)
            .map(drop)
            .map_err(|e| e.to_string())
    })
}

fn server_config(clock: &ManualClock) -> ServerConfig {
    ServerConfig {
        clients: vec![(CLIENT_ID.to_owned(), SECRET.to_owned())],
        clock: Some(clock.clone()),
        jws_verifier: Some(verifier()),
        ..ServerConfig::default()
    }
}

// ---- the two adapters behind one face ------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Adapter {
    Ureq,
    Surf,
    Reqwest,
}

const ADAPTERS: [Adapter; 3] = [Adapter::Ureq, Adapter::Surf, Adapter::Reqwest];

enum Client {
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
        runtime: tokio::runtime::Runtime,
    },
}

/// An adapter error, flattened.
#[derive(Debug)]
struct Failure {
    oauth_code: Option<String>,
    text: String,
}

fn failure(error: &Error) -> Failure {
    let oauth_code = match error {
        Error::OAuth(e)
        | Error::Unavailable {
            cause: TokenError::OAuth(e),
            ..
        } => Some(e.code().to_owned()),
        _ => None,
    };
    Failure {
        oauth_code,
        text: format!("{error} / {error:?}"),
    }
}

fn ureq_failure(error: ureq::Error) -> Failure {
    match error {
        ureq::Error::Other(inner) => match inner.downcast::<Error>() {
            Ok(error) => failure(&error),
            Err(other) => Failure {
                oauth_code: None,
                text: other.to_string(),
            },
        },
        other => Failure {
            oauth_code: None,
            text: other.to_string(),
        },
    }
}

fn reqwest_failure(error: reqwest_middleware::Error) -> Failure {
    match token_keeper_reqwest::token_failure(&error) {
        Some(error) => failure(error),
        None => Failure {
            oauth_code: None,
            text: error.to_string(),
        },
    }
}

fn surf_failure(error: surf::Error) -> Failure {
    match error.downcast_ref::<Error>() {
        Some(error) => failure(error),
        None => Failure {
            oauth_code: None,
            text: error.to_string(),
        },
    }
}

impl Client {
    /// A client `"m2m"` of `token_url`, whose middleware attaches its tokens
    /// to requests for `api_origin`.
    fn new(
        adapter: Adapter,
        clock: &ManualClock,
        token_url: &str,
        api_origin: &str,
        auth: ClientAuth,
        dpop: Option<Arc<PrivateKey>>,
    ) -> Client {
        let mut config = ClientConfig::new(token_url, CLIENT_ID, auth)
            .unwrap()
            .scope("api");
        if let Some(key) = dpop {
            config = config.dpop(key);
        }
        let timeout = Duration::from_secs(10);
        match adapter {
            Adapter::Ureq => {
                let tokens = token_keeper_ureq::TokenClient::with_options(
                    token_keeper_ureq::ClientOptions {
                        manager: ManagerConfig::default(),
                        timeout,
                        connect_timeout: timeout,
                        clock: Arc::new(clock.clone()),
                        seed: 7,
                        ..Default::default()
                    },
                )
                .unwrap();
                tokens.add_client(CLIENT_ID, config).unwrap();
                let agent = token_keeper_ureq::TokenMiddleware::new(tokens.clone())
                    .route(api_origin, CLIENT_ID)
                    .unwrap()
                    .build_agent(|| ureq::Agent::config_builder().http_status_as_error(false));
                Client::Ureq { tokens, agent }
            }
            Adapter::Surf => {
                let tokens = token_keeper_surf::AsyncTokenClient::with_options(
                    token_keeper_surf::DirectHttp::new(),
                    token_keeper_surf::ClientOptions {
                        manager: ManagerConfig::default(),
                        timeout,
                        clock: Arc::new(clock.clone()),
                        seed: 7,
                        ..Default::default()
                    },
                )
                .unwrap();
                tokens.add_client(CLIENT_ID, config).unwrap();
                let middleware = token_keeper_surf::TokenMiddleware::new(tokens.clone())
                    .route(api_origin, CLIENT_ID)
                    .unwrap();
                let api = surf::Client::new().with(middleware);
                Client::Surf { tokens, api }
            }
            Adapter::Reqwest => {
                let tokens = token_keeper_reqwest::ReqwestTokenClient::with_options(
                    token_keeper_reqwest::ClientOptions {
                        manager: ManagerConfig::default(),
                        timeout,
                        clock: Arc::new(clock.clone()),
                        seed: 7,
                        ..Default::default()
                    },
                )
                .unwrap();
                tokens.add_client(CLIENT_ID, config).unwrap();
                let middleware = token_keeper_reqwest::TokenMiddleware::new(tokens.clone())
                    .route(api_origin, CLIENT_ID)
                    .unwrap();
                let http = token_keeper_reqwest::TokenMiddleware::client_builder()
                    .no_proxy()
                    .build()
                    .unwrap();
                let api = reqwest_middleware::ClientBuilder::new(http)
                    .with(middleware)
                    .build();
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .unwrap();
                Client::Reqwest {
                    tokens,
                    api,
                    runtime,
                }
            }
        }
    }

    /// A GET through the middleware: the status.
    fn get(&self, url: &str) -> Result<u16, Failure> {
        match self {
            Client::Ureq { agent, .. } => agent
                .get(url)
                .call()
                .map(|r| r.status().as_u16())
                .map_err(ureq_failure),
            Client::Surf { api, .. } => async_std::task::block_on(api.get(url))
                .map(|r| u16::from(r.status()))
                .map_err(surf_failure),
            Client::Reqwest { api, runtime, .. } => runtime
                .block_on(api.get(url).send())
                .map(|r| r.status().as_u16())
                .map_err(reqwest_failure),
        }
    }

    /// A POST through the middleware: the status.
    fn post(&self, url: &str, body: &[u8]) -> Result<u16, Failure> {
        match self {
            Client::Ureq { agent, .. } => agent
                .post(url)
                .send(body)
                .map(|r| r.status().as_u16())
                .map_err(ureq_failure),
            Client::Surf { api, .. } => async_std::task::block_on(api.post(url).body_bytes(body))
                .map(|r| u16::from(r.status()))
                .map_err(surf_failure),
            Client::Reqwest { api, runtime, .. } => runtime
                .block_on(api.post(url).body(body.to_vec()).send())
                .map(|r| r.status().as_u16())
                .map_err(reqwest_failure),
        }
    }

    /// Fetches a new token now and waits for it.
    fn force_refresh(&self) -> Result<(), Failure> {
        match self {
            Client::Ureq { tokens, .. } => tokens.force_refresh(CLIENT_ID),
            Client::Surf { tokens, .. } => {
                async_std::task::block_on(tokens.force_refresh(CLIENT_ID))
            }
            Client::Reqwest {
                tokens, runtime, ..
            } => runtime.block_on(tokens.force_refresh(CLIENT_ID)),
        }
        .map_err(|e| failure(&e))
    }
}

/// A request sent past the adapters, with a plain agent.
fn raw_request(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> u16 {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    agent
        .run(request.body(body.to_owned()).unwrap())
        .unwrap()
        .status()
        .as_u16()
}

/// A token request by hand with a client assertion, and `extra` form fields.
fn raw_assertion_request(server: &LocalAuthServer, assertion: &str, extra: &str) -> u16 {
    let body = format!(
        "grant_type=client_credentials&client_id={CLIENT_ID}&client_assertion_type={}&client_assertion={assertion}{extra}",
        JWT_BEARER_ASSERTION.replace(':', "%3A")
    );
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    raw_request("POST", &server.token_url(), &form, &body)
}

// ---- independent verification of what the server recorded -----------------------

/// `"400 use_dpop_nonce"`, `"200"`: what the server answered each call.
fn outcomes(calls: &[RecordedCall]) -> Vec<String> {
    calls
        .iter()
        .map(|c| format!("{} {}", c.status, c.error.as_deref().unwrap_or("")))
        .map(|s| s.trim_end().to_owned())
        .collect()
}

/// One part of a compact JWS, as JSON.
fn jwt_part(jwt: &str, index: usize) -> Map<String, Value> {
    let part = jwt.split('.').nth(index).expect("a compact JWS");
    serde_json::from_slice(&B64URL.decode(part).unwrap()).unwrap()
}

/// Verifies a DPoP proof with jsonwebtoken against the JWK in its own header
/// and checks what RFC 9449 §4.2 asks of it for the request it came with.
/// Returns its claims.
fn check_proof(
    call: &RecordedCall,
    key: &PrivateKey,
    iat: u64,
    jtis: &mut HashSet<String>,
) -> Map<String, Value> {
    let proof = call.dpop.as_deref().expect("a DPoP proof");
    let header = jsonwebtoken::decode_header(proof).unwrap();
    let jwk = header.jwk.expect("a jwk header");
    let mut validation = Validation::new(jsonwebtoken_alg(key.algorithm()));
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<Map<String, Value>>(
        proof,
        &DecodingKey::from_jwk(&jwk).unwrap(),
        &validation,
    )
    .unwrap_or_else(|e| panic!("jsonwebtoken refused a {} proof: {e}", key.algorithm()))
    .claims;
    let raw_header = jwt_part(proof, 0);
    assert_eq!(raw_header["typ"], "dpop+jwt");
    assert_eq!(raw_header["alg"], key.algorithm().name());
    assert_eq!(
        raw_header["jwk"],
        Value::Object(key.public_jwk().members().clone()),
        "the jwk is the public key, and nothing else"
    );
    assert_eq!(claims["htm"], call.method.as_str());
    let htu = claims["htu"].as_str().unwrap();
    assert!(
        !htu.contains(['?', '#']),
        "htu {htu} has a query or fragment"
    );
    assert_eq!(htu, call.url.split('?').next().unwrap());
    assert_eq!(claims["iat"], iat);
    let jti = claims["jti"].as_str().unwrap();
    assert!(jti.len() >= 16, "jti {jti:?} is too short to be unique");
    assert!(jtis.insert(jti.to_owned()), "jti {jti} used twice");
    match call.endpoint {
        Endpoint::Token => assert!(!claims.contains_key("ath")),
        Endpoint::Api => {
            let token = call
                .authorization
                .as_deref()
                .and_then(|a| a.strip_prefix("DPoP "))
                .expect("a DPoP-bound token goes with the DPoP scheme");
            assert_eq!(claims["ath"], sha256_base64url(token.as_bytes()));
        }
    }
    claims
}

/// Whether jsonwebtoken verifies `jws` with `key`'s public JWK.
fn verifies(jws: &str, key: &PrivateKey) -> bool {
    let jwk: Jwk =
        serde_json::from_value(Value::Object(key.public_jwk().members().clone())).unwrap();
    let mut validation = Validation::new(jsonwebtoken_alg(key.algorithm()));
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_aud = false;
    jsonwebtoken::decode::<Value>(jws, &DecodingKey::from_jwk(&jwk).unwrap(), &validation).is_ok()
}

/// `jws` with one claim changed and the signature kept.
fn tamper(jws: &str, claim: &str, value: &str) -> String {
    let parts: Vec<&str> = jws.split('.').collect();
    let mut claims = jwt_part(jws, 1);
    claims.insert(claim.to_owned(), Value::from(value));
    let claims = B64URL.encode(serde_json::to_vec(&claims).unwrap());
    format!("{}.{claims}.{}", parts[0], parts[2])
}

/// Verifies a client assertion with jsonwebtoken against the client's
/// registered public key, including `iss`, `sub` and `aud`; returns its claims.
fn verify_assertion(
    assertion: &str,
    registered: &PublicJwk,
    alg: Algorithm,
    token_url: &str,
) -> Result<Map<String, Value>, jsonwebtoken::errors::Error> {
    let jwk: Jwk = serde_json::from_value(Value::Object(registered.members().clone())).unwrap();
    let mut validation = Validation::new(jsonwebtoken_alg(alg));
    validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    // Dated by the shared ManualClock, not the system clock: checked below.
    validation.validate_exp = false;
    validation.set_audience(&[token_url]);
    validation.set_issuer(&[CLIENT_ID]);
    validation.sub = Some(CLIENT_ID.to_owned());
    let key = DecodingKey::from_jwk(&jwk)?;
    jsonwebtoken::decode::<Map<String, Value>>(assertion, &key, &validation).map(|d| d.claims)
}

/// Checks every recorded assertion as RFC 7523 §3 asks, the `i`th issued at
/// `iats[i]` (or at the last of them); returns their `jti`s.
fn check_assertions(
    server: &LocalAuthServer,
    registered: &PublicJwk,
    alg: Algorithm,
    iats: &[u64],
) -> Vec<String> {
    let mut jtis = Vec::new();
    for (i, call) in server.client_assertions().into_iter().enumerate() {
        let iat = iats[i.min(iats.len() - 1)];
        assert_eq!(
            call.client_assertion_type.as_deref(),
            Some(JWT_BEARER_ASSERTION)
        );
        assert_eq!(call.client_id.as_deref(), Some(CLIENT_ID));
        assert_eq!(call.authorization, None, "one authentication method only");
        let assertion = call.client_assertion.as_deref().unwrap();
        let header = jwt_part(assertion, 0);
        assert_eq!(header["alg"], alg.name());
        let claims = verify_assertion(assertion, registered, alg, &server.token_url())
            .unwrap_or_else(|e| panic!("jsonwebtoken refused a {alg} assertion: {e}"));
        assert_eq!(claims["iss"], CLIENT_ID);
        assert_eq!(claims["sub"], CLIENT_ID);
        assert_eq!(claims["aud"], server.token_url());
        assert_eq!(claims["iat"], iat);
        assert_eq!(claims["exp"], iat + 60, "a short lifetime");
        let jti = claims["jti"].as_str().unwrap().to_owned();
        assert!(jti.len() >= 16, "jti {jti:?} is too short to be unique");
        assert!(!jtis.contains(&jti), "assertion jti {jti} used twice");
        jtis.push(jti);
    }
    jtis
}

// ---- DPoP ---------------------------------------------------------------------

/// An authorization server and a resource server at two origins, each
/// demanding its own nonce: every demand costs exactly one retry, the token is
/// DPoP-bound, every proof verifies and fits its request, and no nonce leaves
/// its origin.
fn dpop_with_nonces_at_two_origins(adapter: Adapter, alg: Algorithm) {
    let what = format!("{adapter:?} {alg}");
    let clock = clock();
    let issuer = LocalAuthServer::start(ServerConfig {
        dpop_nonce_required_at_token_endpoint: true,
        ..server_config(&clock)
    })
    .unwrap();
    let resource = LocalAuthServer::start_resource_server(
        ServerConfig {
            dpop_nonce_required_at_api: true,
            ..server_config(&clock)
        },
        &issuer,
    )
    .unwrap();
    let key = signing_key(alg);
    let client = Client::new(
        adapter,
        &clock,
        &issuer.token_url(),
        &resource.base_url(),
        ClientAuth::Basic(ClientSecret::new(SECRET)),
        Some(key.clone()),
    );
    let orders = format!("{}/orders/7?expand=items", resource.api_url());

    // First call: each server demands its nonce once; one retry each.
    assert_eq!(client.get(&orders).unwrap(), 200, "{what}");
    let token_calls = issuer.calls_to(Endpoint::Token);
    assert_eq!(
        outcomes(&token_calls),
        ["400 use_dpop_nonce", "200"],
        "{what}"
    );
    let issuer_nonce = issuer.dpop_nonces_issued()[0].clone();
    assert_eq!(
        token_calls[0].nonce_sent.as_deref(),
        Some(issuer_nonce.as_str())
    );
    assert_eq!(token_calls[0].proof_nonce(), None);
    assert_eq!(token_calls[1].proof_nonce(), Some(issuer_nonce.clone()));
    assert_eq!(token_calls[1].token_type.as_deref(), Some("DPoP"));
    assert_eq!(
        token_calls[1].jkt.as_deref(),
        Some(key.public_jwk().thumbprint()),
        "{what}: the token is bound to the proof key's RFC 7638 thumbprint"
    );
    let api_calls = resource.calls_to(Endpoint::Api);
    assert_eq!(
        outcomes(&api_calls),
        ["401 use_dpop_nonce", "200"],
        "{what}"
    );
    assert_eq!(
        api_calls[0].proof_nonce(),
        None,
        "{what}: the authorization server's nonce never goes to the API's origin"
    );
    let api_nonce = resource.dpop_nonces_issued()[0].clone();
    assert_eq!(api_calls[1].proof_nonce(), Some(api_nonce.clone()));

    // The nonce is kept: one request each, also with a body.
    assert_eq!(client.post(&resource.api_url(), b"{\"n\":1}").unwrap(), 200);
    assert_eq!(client.get(&orders).unwrap(), 200);
    assert_eq!(resource.api_requests(), 4, "{what}");

    // The resource server replaces its nonce: exactly one retry, with the new
    // one and the same body.
    let rotated = resource.rotate_dpop_nonce();
    let body = br#"{"order":7,"note":"replayed after use_dpop_nonce"}"#;
    assert_eq!(client.post(&orders, body).unwrap(), 200);
    let api_calls = resource.calls_to(Endpoint::Api);
    assert_eq!(
        outcomes(&api_calls[4..]),
        ["401 use_dpop_nonce", "200"],
        "{what}"
    );
    assert_eq!(api_calls[4].proof_nonce(), Some(api_nonce.clone()));
    assert_eq!(api_calls[5].proof_nonce(), Some(rotated.clone()));
    assert_eq!(api_calls[4].method, "POST");
    assert_eq!(
        (api_calls[4].body_len, api_calls[5].body_len),
        (body.len(), body.len())
    );

    // The token is revoked: a new DPoP token (the issuer's nonce still holds, so
    // no new demand there), and the request is retried once with it.
    resource.push_api_fault(ApiFault::UnauthorizedOnce);
    assert_eq!(client.get(&orders).unwrap(), 200, "{what}");
    let api_calls = resource.calls_to(Endpoint::Api);
    assert_eq!(
        outcomes(&api_calls[6..]),
        ["401 invalid_token", "200"],
        "{what}"
    );
    let token_calls = issuer.calls_to(Endpoint::Token);
    assert_eq!(
        outcomes(&token_calls),
        ["400 use_dpop_nonce", "200", "200"],
        "{what}"
    );
    assert_eq!(token_calls[2].proof_nonce(), Some(issuer_nonce.clone()));
    assert_eq!(token_calls[2].token_type.as_deref(), Some("DPoP"));
    assert_ne!(token_calls[2].access_token, token_calls[1].access_token);
    assert_eq!(
        api_calls[7].authorization,
        token_calls[2]
            .access_token
            .as_ref()
            .map(|t| format!("DPoP {t}"))
    );

    // Every proof, verified independently, fits its request; no jti twice.
    let iat = unix_seconds(&clock);
    let mut jtis = HashSet::new();
    let proofs: Vec<RecordedCall> = [issuer.dpop_proofs(), resource.dpop_proofs()].concat();
    assert_eq!(proofs.len(), 3 + 8, "{what}: every request carried a proof");
    for call in &proofs {
        check_proof(call, &key, iat, &mut jtis);
    }
    // (And the verification is not vacuous: a changed claim fails it.)
    let proof = proofs[0].dpop.as_deref().unwrap();
    assert!(!verifies(&tamper(proof, "htm", "GET"), &key), "{what}");
    assert!(verifies(proof, &key));
    // Nonces never cross origins.
    let (issuer_nonces, api_nonces) = (issuer.dpop_nonces_issued(), resource.dpop_nonces_issued());
    assert!(issuer_nonces.iter().all(|n| !api_nonces.contains(n)));
    for call in issuer.dpop_proofs() {
        let nonce = call.proof_nonce();
        assert!(nonce.is_none_or(|n| issuer_nonces.contains(&n)), "{what}");
    }
    for call in resource.dpop_proofs() {
        let nonce = call.proof_nonce();
        assert!(nonce.is_none_or(|n| api_nonces.contains(&n)), "{what}");
    }
    // A DPoP-bound token is never sent as Bearer...
    for authorization in resource.api_authorizations() {
        let authorization = authorization.expect("every API call carried a token");
        assert!(
            authorization.starts_with("DPoP "),
            "{what}: {authorization}"
        );
    }
    // ...and the resource server would refuse it.
    let token = token_calls[2].access_token.clone().unwrap();
    let bearer = format!("Bearer {token}");
    let status = raw_request("GET", &orders, &[("Authorization", &bearer)], "");
    assert_eq!(status, 401);
    let refused = resource.calls_to(Endpoint::Api).pop().unwrap();
    assert_eq!(refused.error.as_deref(), Some("invalid_token"));
    assert_eq!(issuer.calls_dropped() + resource.calls_dropped(), 0);
}

#[test]
fn ureq_dpop_with_nonces_at_two_origins() {
    for alg in ALGORITHMS {
        dpop_with_nonces_at_two_origins(Adapter::Ureq, alg);
    }
}

#[test]
fn surf_dpop_with_nonces_at_two_origins() {
    for alg in ALGORITHMS {
        dpop_with_nonces_at_two_origins(Adapter::Surf, alg);
    }
}

#[test]
fn reqwest_dpop_with_nonces_at_two_origins() {
    for alg in ALGORITHMS {
        dpop_with_nonces_at_two_origins(Adapter::Reqwest, alg);
    }
}

/// One origin whose every success carries the next nonce (RFC 9449 §8.2):
/// the client uses the latest one, from the token endpoint's answer as from
/// the API's, so after the first demand no request is ever refused.
#[test]
fn a_nonce_on_a_success_replaces_the_stored_one() {
    for adapter in ADAPTERS {
        let clock = clock();
        let server = LocalAuthServer::start(ServerConfig {
            dpop_nonce_required_at_token_endpoint: true,
            dpop_nonce_required_at_api: true,
            dpop_nonce_rotates_on_success: true,
            ..server_config(&clock)
        })
        .unwrap();
        let key = signing_key(Algorithm::ES256);
        let client = Client::new(
            adapter,
            &clock,
            &server.token_url(),
            &server.base_url(),
            ClientAuth::Basic(ClientSecret::new(SECRET)),
            Some(key.clone()),
        );
        for i in 0..5 {
            let url = format!("{}/items/{i}", server.api_url());
            assert_eq!(client.get(&url).unwrap(), 200, "{adapter:?}");
        }
        let calls = server.calls();
        assert_eq!(
            outcomes(&calls),
            [
                "400 use_dpop_nonce",
                "200",
                "200",
                "200",
                "200",
                "200",
                "200"
            ],
            "{adapter:?}: {calls:#?}"
        );
        // Each proof carries the nonce of the answer before it.
        for pair in calls.windows(2) {
            assert_eq!(pair[1].proof_nonce(), pair[0].nonce_sent, "{adapter:?}");
        }
        let mut jtis = HashSet::new();
        for call in &calls {
            check_proof(call, &key, unix_seconds(&clock), &mut jtis);
        }
    }
}

// ---- private_key_jwt --------------------------------------------------------------

/// `private_key_jwt` with a key of `alg`, with or without a DPoP key (ES256)
/// and a nonce demand: every assertion verifies against the registered key
/// with RFC 7523's claims, each attempt (the nonce retry included) has a
/// fresh `jti`, and the server refuses a replayed one.
fn private_key_jwt(adapter: Adapter, alg: Algorithm, dpop: bool) {
    let what = format!("{adapter:?} {alg} dpop={dpop}");
    let clock = clock();
    let client_key = signing_key(alg);
    let server = LocalAuthServer::start(ServerConfig {
        clients: Vec::new(),
        jwt_clients: vec![(CLIENT_ID.to_owned(), client_key.public_jwk().clone())],
        dpop_nonce_required_at_token_endpoint: dpop,
        ..server_config(&clock)
    })
    .unwrap();
    let dpop_key = dpop.then(|| signing_key(Algorithm::ES256));
    let client = Client::new(
        adapter,
        &clock,
        &server.token_url(),
        &server.base_url(),
        ClientAuth::PrivateKeyJwt(PrivateKeyJwt::new(client_key.clone())),
        dpop_key.clone(),
    );
    assert_eq!(client.get(&server.api_url()).unwrap(), 200, "{what}");
    client.force_refresh().unwrap();
    assert_eq!(client.get(&server.api_url()).unwrap(), 200, "{what}");

    let token_calls = server.calls_to(Endpoint::Token);
    let expected: &[&str] = if dpop {
        &["400 use_dpop_nonce", "200", "200"]
    } else {
        &["200", "200"]
    };
    assert_eq!(outcomes(&token_calls), expected, "{what}");
    let token_type = if dpop { "DPoP" } else { "Bearer" };
    assert_eq!(token_calls[1].token_type.as_deref(), Some(token_type));
    let iat = unix_seconds(&clock);
    let jtis = check_assertions(&server, client_key.public_jwk(), alg, &[iat]);
    assert_eq!(
        jtis.len(),
        token_calls.len(),
        "{what}: every attempt authenticated"
    );
    if let Some(dpop_key) = &dpop_key {
        let mut proof_jtis = HashSet::new();
        for call in server.dpop_proofs() {
            check_proof(&call, dpop_key, iat, &mut proof_jtis);
        }
        assert_eq!(proof_jtis.len(), 3 + 2, "{what}");
    }
    for authorization in server.api_authorizations() {
        let authorization = authorization.unwrap();
        assert!(
            authorization.starts_with(&format!("{token_type} ")),
            "{what}"
        );
    }

    // The server refuses an assertion used twice.
    let used = token_calls
        .last()
        .unwrap()
        .client_assertion
        .clone()
        .unwrap();
    assert_eq!(raw_assertion_request(&server, &used, ""), 400);
    let replay = server.calls_to(Endpoint::Token).pop().unwrap();
    assert_eq!(replay.error.as_deref(), Some("invalid_client"), "{what}");
    assert!(replay.reason.unwrap().contains("replay"), "{what}");
}

#[test]
fn ureq_private_key_jwt() {
    for alg in ALGORITHMS {
        private_key_jwt(Adapter::Ureq, alg, false);
    }
}

#[test]
fn surf_private_key_jwt() {
    for alg in ALGORITHMS {
        private_key_jwt(Adapter::Surf, alg, false);
    }
}

#[test]
fn ureq_private_key_jwt_with_dpop_and_a_nonce_retry() {
    for alg in ALGORITHMS {
        private_key_jwt(Adapter::Ureq, alg, true);
    }
}

#[test]
fn surf_private_key_jwt_with_dpop_and_a_nonce_retry() {
    for alg in ALGORITHMS {
        private_key_jwt(Adapter::Surf, alg, true);
    }
}

#[test]
fn reqwest_private_key_jwt() {
    for alg in ALGORITHMS {
        private_key_jwt(Adapter::Reqwest, alg, false);
    }
}

#[test]
fn reqwest_private_key_jwt_with_dpop_and_a_nonce_retry() {
    for alg in ALGORITHMS {
        private_key_jwt(Adapter::Reqwest, alg, true);
    }
}

/// A refresh ahead of expiry, started by the client's timer when the shared
/// clock passes the refresh point, meets a rotated nonce: it is retried once,
/// with a fresh assertion and a fresh proof carrying the new nonce, off the
/// callers' path; the client keeps working throughout.
#[test]
fn a_background_refresh_retries_a_nonce_demand_with_fresh_jwts() {
    for adapter in ADAPTERS {
        let clock = clock();
        let client_key = signing_key(Algorithm::EdDSA);
        let dpop_key = signing_key(Algorithm::ES256);
        let server = LocalAuthServer::start(ServerConfig {
            clients: Vec::new(),
            jwt_clients: vec![(CLIENT_ID.to_owned(), client_key.public_jwk().clone())],
            dpop_nonce_required_at_token_endpoint: true,
            ..server_config(&clock)
        })
        .unwrap();
        let client = Client::new(
            adapter,
            &clock,
            &server.token_url(),
            &server.base_url(),
            ClientAuth::PrivateKeyJwt(PrivateKeyJwt::new(client_key.clone())),
            Some(dpop_key.clone()),
        );
        assert_eq!(client.get(&server.api_url()).unwrap(), 200, "{adapter:?}");
        let before = unix_seconds(&clock);
        let rotated = server.rotate_dpop_nonce();
        // Past the refresh point of a 3600 s token, well before its end.
        clock.advance(Duration::from_secs(2900));
        let after = unix_seconds(&clock);
        assert!(
            server.wait_for_calls(5, Duration::from_secs(10)),
            "{adapter:?}: the refresh should run on its own: {:?}",
            outcomes(&server.calls())
        );
        let token_calls = server.calls_to(Endpoint::Token);
        assert_eq!(
            outcomes(&token_calls),
            ["400 use_dpop_nonce", "200", "400 use_dpop_nonce", "200"],
            "{adapter:?}"
        );
        assert_eq!(token_calls[3].proof_nonce(), Some(rotated), "{adapter:?}");
        assert_eq!(token_calls[3].token_type.as_deref(), Some("DPoP"));
        let jtis = check_assertions(
            &server,
            client_key.public_jwk(),
            Algorithm::EdDSA,
            &[before, before, after],
        );
        assert_eq!(jtis.len(), 4, "{adapter:?}");
        // The API keeps answering (with the old token or the new one).
        assert_eq!(client.get(&server.api_url()).unwrap(), 200, "{adapter:?}");
        let mut proof_jtis = HashSet::new();
        for (i, call) in server.dpop_proofs().iter().enumerate() {
            let iat = if i < 3 { before } else { after };
            check_proof(call, &dpop_key, iat, &mut proof_jtis);
        }
        assert_eq!(proof_jtis.len(), 6, "{adapter:?}");
    }
}

/// An assertion signed by another key than the registered one is refused
/// with a typed `invalid_client`, after one request, and no API call is made.
#[test]
fn a_wrong_key_is_a_typed_invalid_client() {
    // (registered, used): the same kind of key, or a key of another kind.
    let cases = [
        (Algorithm::ES256, Algorithm::ES256),
        (Algorithm::EdDSA, Algorithm::EdDSA),
        (Algorithm::RS256, Algorithm::ES256),
    ];
    for adapter in ADAPTERS {
        for (registered, used) in cases {
            let what = format!("{adapter:?} registered {registered}, signed {used}");
            let clock = clock();
            let registered = signing_key(registered);
            let used = signing_key(used);
            let server = LocalAuthServer::start(ServerConfig {
                clients: Vec::new(),
                jwt_clients: vec![(CLIENT_ID.to_owned(), registered.public_jwk().clone())],
                ..server_config(&clock)
            })
            .unwrap();
            let client = Client::new(
                adapter,
                &clock,
                &server.token_url(),
                &server.base_url(),
                ClientAuth::PrivateKeyJwt(PrivateKeyJwt::new(used.clone())),
                None,
            );
            let error = client.get(&server.api_url()).unwrap_err();
            assert_eq!(
                error.oauth_code.as_deref(),
                Some("invalid_client"),
                "{what}: {}",
                error.text
            );
            assert_eq!(server.token_requests(), 1, "{what}");
            assert_eq!(server.api_requests(), 0, "{what}: no call without a token");
            let calls = server.client_assertions();
            assert_eq!(outcomes(&calls), ["400 invalid_client"], "{what}");
            let assertion = calls[0].client_assertion.as_deref().unwrap();
            let token_url = server.token_url();
            assert!(
                verify_assertion(
                    assertion,
                    registered.public_jwk(),
                    registered.algorithm(),
                    &token_url
                )
                .is_err(),
                "{what}: the registered key must not verify it"
            );
            verify_assertion(assertion, used.public_jwk(), used.algorithm(), &token_url)
                .unwrap_or_else(|e| panic!("{what}: the signing key must verify it: {e}"));
        }
    }
}

// ---- the server's own checks, so that the passes above mean something -------------

/// A DPoP proof made by the core's own builder, for requests sent by hand.
fn proof(
    key: &PrivateKey,
    method: &str,
    url: &str,
    wall: SystemTime,
    jti: &str,
    access_token: Option<&str>,
) -> String {
    let method: http::Method = method.parse().unwrap();
    let uri: http::Uri = url.parse().unwrap();
    token_keeper::dpop::proof(key, &method, &uri, wall, jti, None, access_token)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

/// The last call the server recorded for `endpoint`: its error and reason.
fn last_refusal(server: &LocalAuthServer, endpoint: Endpoint) -> (String, String) {
    let call = server.calls_to(endpoint).pop().unwrap();
    (
        call.error.unwrap_or_default(),
        call.reason.unwrap_or_default(),
    )
}

#[test]
fn the_server_refuses_proofs_that_do_not_fit() {
    let clock = clock();
    let server = LocalAuthServer::start(server_config(&clock)).unwrap();
    let key = signing_key(Algorithm::ES256);
    let other_key = signing_key(Algorithm::ES256);
    let wall = clock.wall();
    let token_url = server.token_url();
    let basic = token_keeper::request::basic_credentials(CLIENT_ID, SECRET, true);
    let token_request = |proof: &str| {
        let headers = [
            ("Authorization", basic.to_str().unwrap()),
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("DPoP", proof),
        ];
        raw_request(
            "POST",
            &token_url,
            &headers,
            "grant_type=client_credentials",
        )
    };

    // Token endpoint: no ath there; a fitting proof binds the token; no replay.
    let with_ath = proof(
        &key,
        "POST",
        &token_url,
        wall,
        "jti-token-with-ath",
        Some("t"),
    );
    assert_eq!(token_request(&with_ath), 400);
    let (error, reason) = last_refusal(&server, Endpoint::Token);
    assert_eq!(
        (error.as_str(), reason.contains("ath")),
        ("invalid_dpop_proof", true)
    );
    let good = proof(&key, "POST", &token_url, wall, "jti-token-good-one", None);
    assert_eq!(token_request(&good), 200);
    let issued = server.calls_to(Endpoint::Token).pop().unwrap();
    assert_eq!(issued.token_type.as_deref(), Some("DPoP"));
    assert_eq!(issued.jkt.as_deref(), Some(key.public_jwk().thumbprint()));
    let token = issued.access_token.unwrap();
    assert_eq!(token_request(&good), 400);
    assert!(last_refusal(&server, Endpoint::Token).1.contains("replay"));

    // The API: each proof differs from a fitting one in one way.
    let url = format!("{}/x?q=1", server.api_url());
    let api = |scheme: &str, proofs: &[&str]| {
        let authorization = format!("{scheme} {token}");
        let mut headers = vec![("Authorization", authorization.as_str())];
        headers.extend(proofs.iter().map(|p| ("DPoP", *p)));
        raw_request("GET", &url, &headers, "")
    };
    let fitting = |jti: &str| proof(&key, "GET", &url, wall, jti, Some(&token));
    let first = fitting("jti-api-fitting-01");
    assert_eq!(api("DPoP", &[&first]), 200);
    let header =
        serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": key.public_jwk().members()});
    let claims = serde_json::json!({
        "jti": "jti-api-handmade-1", "htm": "GET", "htu": url.split('?').next().unwrap(),
        "iat": unix_seconds(&clock), "ath": sha256_base64url(token.as_bytes()),
    });
    let sign = |header: &Value, claims: &Value| {
        token_keeper::jose::sign_jwt(key.as_ref(), header, claims).unwrap()
    };
    assert_eq!(
        api("DPoP", &[&sign(&header, &claims)]),
        200,
        "the hand-made control fits"
    );
    let mut wrong_typ = header.clone();
    wrong_typ["typ"] = "JWT".into();
    let mut private_jwk = header.clone();
    private_jwk["jwk"]["d"] = "AAAA".into();
    let mut other_jti = claims.clone();
    other_jti["jti"] = "jti-api-handmade-2".into();
    let two = [fitting("jti-api-two-one-01"), fitting("jti-api-two-two-02")];
    let cases: Vec<(&str, String, &str)> = vec![
        ("replayed", first.clone(), "replay"),
        (
            "POST for a GET",
            proof(&key, "POST", &url, wall, "jti-api-htm-00001", Some(&token)),
            "htm",
        ),
        (
            "another path",
            proof(
                &key,
                "GET",
                &server.api_url(),
                wall,
                "jti-api-htu-00001",
                Some(&token),
            ),
            "htu",
        ),
        (
            "no ath",
            proof(&key, "GET", &url, wall, "jti-api-no-ath-01", None),
            "ath",
        ),
        (
            "another token's ath",
            proof(&key, "GET", &url, wall, "jti-api-ath-00001", Some("other")),
            "ath",
        ),
        (
            "another key",
            proof(
                &other_key,
                "GET",
                &url,
                wall,
                "jti-api-key-00001",
                Some(&token),
            ),
            "key",
        ),
        (
            "two minutes old",
            proof(
                &key,
                "GET",
                &url,
                wall - Duration::from_secs(120),
                "jti-api-old-00001",
                Some(&token),
            ),
            "iat",
        ),
        ("typ JWT", sign(&wrong_typ, &other_jti), "typ"),
        ("a private jwk", sign(&private_jwk, &other_jti), "private"),
        (
            "an added claim",
            tamper(&fitting("jti-api-tamper-01"), "note", "forged"),
            "signature",
        ),
    ];
    for (what, proof, reason) in cases {
        assert_eq!(api("DPoP", &[&proof]), 401, "{what}");
        let (error, said) = last_refusal(&server, Endpoint::Api);
        assert_eq!(error, "invalid_dpop_proof", "{what}: {said}");
        assert!(said.contains(reason), "{what}: {said}");
    }
    assert_eq!(api("DPoP", &[]), 401, "no proof");
    assert!(last_refusal(&server, Endpoint::Api)
        .1
        .contains("no DPoP proof"));
    assert_eq!(api("DPoP", &[&two[0], &two[1]]), 401, "two proofs");
    assert!(last_refusal(&server, Endpoint::Api)
        .1
        .contains("more than one"));
    assert_eq!(
        api("Bearer", &[&fitting("jti-api-bearer-001")]),
        401,
        "as Bearer"
    );
    let (error, said) = last_refusal(&server, Endpoint::Api);
    assert_eq!(error, "invalid_token");
    assert!(said.contains("Bearer"), "{said}");
    assert_eq!(
        api("DPoP", &[&fitting("jti-api-fitting-02")]),
        200,
        "still usable"
    );
}

#[test]
fn the_server_refuses_assertions_that_do_not_fit() {
    let clock = clock();
    let key = signing_key(Algorithm::ES256);
    let server = LocalAuthServer::start(ServerConfig {
        clients: Vec::new(),
        jwt_clients: vec![(CLIENT_ID.to_owned(), key.public_jwk().clone())],
        ..server_config(&clock)
    })
    .unwrap();
    let now = unix_seconds(&clock);
    let header = serde_json::json!({"alg": "ES256", "typ": "JWT"});
    let claims = |jti: &str| {
        serde_json::json!({
            "iss": CLIENT_ID, "sub": CLIENT_ID, "aud": server.token_url(),
            "iat": now, "exp": now + 60, "jti": jti,
        })
    };
    let sign = |header: &Value, claims: &Value| {
        token_keeper::jose::sign_jwt(key.as_ref(), header, claims).unwrap()
    };
    let good = sign(&header, &claims("jti-assertion-good-1"));
    assert_eq!(raw_assertion_request(&server, &good, ""), 200);
    let changed = |jti: &str, name: &str, value: Value| {
        let mut claims = claims(jti);
        match value {
            Value::Null => drop(claims.as_object_mut().unwrap().remove(name)),
            value => claims[name] = value,
        }
        sign(&header, &claims)
    };
    // Also accepted: the issuer as audience, and an audience list.
    for (jti, aud) in [
        ("jti-assertion-aud-is", Value::from(server.base_url())),
        (
            "jti-assertion-aud-ls",
            serde_json::json!(["urn:x", server.token_url()]),
        ),
    ] {
        assert_eq!(
            raw_assertion_request(&server, &changed(jti, "aud", aud), ""),
            200
        );
    }
    let mut none = header.clone();
    none["alg"] = "none".into();
    let mut eddsa = header.clone();
    eddsa["alg"] = "EdDSA".into();
    let other_key = signing_key(Algorithm::ES256);
    let by_other_key =
        token_keeper::jose::sign_jwt(other_key.as_ref(), &header, &claims("jti-assertion-other"))
            .unwrap();
    let cases: Vec<(&str, String, &str, &str)> = vec![
        ("replayed", good.clone(), "", "replay"),
        (
            "another audience",
            changed(
                "jti-assertion-aud-xx",
                "aud",
                "https://elsewhere.example/token".into(),
            ),
            "",
            "aud",
        ),
        (
            "expired",
            changed("jti-assertion-exp-xx", "exp", Value::from(now - 61)),
            "",
            "expired",
        ),
        (
            "from the future",
            changed("jti-assertion-iat-xx", "iat", Value::from(now + 120)),
            "",
            "future",
        ),
        (
            "sub is not iss",
            changed("jti-assertion-sub-xx", "sub", "someone".into()),
            "",
            "sub",
        ),
        (
            "no exp",
            changed("jti-assertion-noexp-x", "exp", Value::Null),
            "",
            "exp",
        ),
        ("no jti", changed("unused", "jti", Value::Null), "", "jti"),
        (
            "another client",
            changed("jti-assertion-iss-xx", "iss", "other".into()),
            "",
            "sub",
        ),
        (
            "alg none",
            sign(&none, &claims("jti-assertion-none-x")),
            "",
            "asymmetric",
        ),
        (
            "alg of another key type",
            sign(&eddsa, &claims("jti-assertion-eddsa")),
            "",
            "fit",
        ),
        ("another key", by_other_key, "", "signature"),
        (
            "and a secret",
            sign(&header, &claims("jti-assertion-secret")),
            "&client_secret=x",
            "more than one",
        ),
    ];
    for (what, assertion, extra, reason) in cases {
        assert_eq!(
            raw_assertion_request(&server, &assertion, extra),
            400,
            "{what}"
        );
        let (error, said) = last_refusal(&server, Endpoint::Token);
        assert_eq!(error, "invalid_client", "{what}: {said}");
        assert!(said.contains(reason), "{what}: {said}");
    }
    assert_eq!(server.tokens_issued(), 3);
}

/// An agent built with ureq's default `http_status_as_error(true)` still sees
/// the `DPoP-Nonce` and `WWW-Authenticate` headers of the API's `401
/// use_dpop_nonce` (`build_agent` turns ureq's setting off underneath and
/// applies it itself), so the nonce retry works and the good token is kept.
/// Without that, the core saw a bare 401, threw the token away and the retry
/// failed again.
#[test]
fn ureq_agent_with_default_status_errors_keeps_api_nonces() {
    let clock = clock();
    let server = LocalAuthServer::start(ServerConfig {
        dpop_nonce_required_at_api: true,
        ..server_config(&clock)
    })
    .unwrap();
    let tokens = token_keeper_ureq::TokenClient::with_options(token_keeper_ureq::ClientOptions {
        manager: ManagerConfig::default(),
        timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(10),
        clock: Arc::new(clock.clone()),
        seed: 7,
        ..Default::default()
    })
    .unwrap();
    let config = ClientConfig::new(
        &server.token_url(),
        CLIENT_ID,
        ClientAuth::Basic(ClientSecret::new(SECRET)),
    )
    .unwrap()
    .dpop(signing_key(Algorithm::ES256));
    tokens.add_client(CLIENT_ID, config).unwrap();
    let agent = token_keeper_ureq::TokenMiddleware::new(tokens)
        .route(&server.base_url(), CLIENT_ID)
        .unwrap()
        .build_agent(ureq::Agent::config_builder); // ureq's default: 4xx/5xx are errors
    let status = agent
        .get(&server.api_url())
        .call()
        .map(|r| r.status().as_u16());
    // Today: Err(StatusCode(401)), calls ["200", "401 use_dpop_nonce", "200", "401 use_dpop_nonce"].
    assert_eq!(status.ok(), Some(200), "{:?}", outcomes(&server.calls()));
    assert_eq!(
        outcomes(&server.calls()),
        ["200", "401 use_dpop_nonce", "200"]
    );
    assert_eq!(
        server.tokens_issued(),
        1,
        "a nonce demand does not cost the token"
    );
}
