//! DPoP (RFC 9449) and private_key_jwt (RFC 7523) in the core, driven by hand.
//!
//! A fake signer stands in for a key here ("signature" = SHA-256 of the
//! signing input), so these tests check what the core builds and decides:
//! claims, nonces, retries, origins. Real signatures are verified by an
//! independent JOSE implementation in the adapters' and the testkit's tests.
//!
//! The core hands out its JWTs unsigned; these tests sign them as the driver
//! does ([`TokenRequest::into_request`], [`Attach::dpop_proof_to_sign`]).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use serde_json::{json, Map, Value};
use token_keeper::jose::{sha256_base64url, Algorithm, PublicJwk, SignError, Signer};
use token_keeper::request::JWT_BEARER_ASSERTION;
use token_keeper::{
    AssertionAudience, Attach, Authorization, ClientAuth, ClientConfig, ClientSecret, Event, KeyId,
    ManagerConfig, Now, PrivateKeyJwt, RandomSource, RequestId, RequestReason, ResourceOutcome,
    ResourceResponse, ResponseProblem, TokenError, TokenManager, TokenRequest, UnknownRequest,
};

#[derive(Debug)]
struct FakeSigner {
    jwk: PublicJwk,
    fail: bool,
}

impl FakeSigner {
    fn new(x: &str) -> Arc<FakeSigner> {
        let members =
            json!({"kty": "EC", "crv": "P-256", "x": x, "y": "y-coordinate", "d": "PRIVATE-D"});
        Arc::new(FakeSigner {
            jwk: PublicJwk::new(members.as_object().unwrap()).unwrap(),
            fail: false,
        })
    }
}

impl Signer for FakeSigner {
    fn algorithm(&self) -> Algorithm {
        Algorithm::ES256
    }
    fn public_jwk(&self) -> &PublicJwk {
        &self.jwk
    }
    fn sign(&self, input: &[u8]) -> Result<Vec<u8>, SignError> {
        if self.fail {
            return Err(SignError("the KMS is unreachable".into()));
        }
        Ok(sha256_base64url(input).into_bytes())
    }
}

/// Decodes a compact JWS made by the fake signer, checking its "signature".
fn decode(jwt: &str) -> (Map<String, Value>, Map<String, Value>) {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "{jwt}");
    let signing_input = format!("{}.{}", parts[0], parts[1]);
    assert_eq!(
        B64URL.decode(parts[2]).unwrap(),
        sha256_base64url(signing_input.as_bytes()).into_bytes()
    );
    let part = |p: &str| -> Map<String, Value> {
        serde_json::from_slice(&B64URL.decode(p).unwrap()).unwrap()
    };
    (part(parts[0]), part(parts[1]))
}

const TOKEN_URL: &str = "https://as.example/token?tenant=1";

fn dpop_manager(auth: ClientAuth) -> (TokenManager, KeyId, Arc<FakeSigner>) {
    let signer = FakeSigner::new("dpop-key");
    let mut m = TokenManager::new(ManagerConfig::default(), 9);
    let config = ClientConfig::new(TOKEN_URL, "m2m", auth)
        .unwrap()
        .scope("api")
        .dpop(signer.clone());
    let client = m.add_client("m2m", config).unwrap();
    let key = m.default_key(client);
    (m, key, signer)
}

fn secret() -> ClientAuth {
    ClientAuth::Basic(ClientSecret::new("s"))
}

fn at(secs: u64) -> Now {
    Now::from_secs(secs)
}

/// A token request as the driver sends it: signed.
struct Sent {
    id: RequestId,
    http: http::Request<Vec<u8>>,
}

impl Sent {
    fn id(&self) -> RequestId {
        self.id
    }

    fn request(&self) -> &http::Request<Vec<u8>> {
        &self.http
    }
}

fn signed(request: TokenRequest) -> Sent {
    Sent {
        id: request.id(),
        http: request.into_request().expect("the fake signer signs"),
    }
}

fn fetch(m: &mut TokenManager, key: KeyId, now: Now) -> Sent {
    assert!(matches!(m.authorize(key, now), Authorization::Fetch(_)));
    signed(m.poll_request().expect("a request"))
}

/// The `DPoP` header an API request goes with, signed as the driver signs it.
fn api_proof(attach: Attach<'_>) -> Option<String> {
    let proof = attach.dpop_proof_to_sign().expect("a proof can be made")?;
    let header = proof.sign_header_value().expect("the fake signer signs");
    Some(header.to_str().unwrap().to_owned())
}

fn proof_of(request: &http::Request<Vec<u8>>) -> (Map<String, Value>, Map<String, Value>) {
    decode(request.headers()["dpop"].to_str().unwrap())
}

fn respond(
    m: &mut TokenManager,
    request: &Sent,
    status: u16,
    body: &str,
    nonce: Option<&str>,
    now: Now,
) {
    let mut builder = http::Response::builder().status(status);
    if let Some(n) = nonce {
        builder = builder.header("DPoP-Nonce", n);
    }
    m.handle_response(request.id(), builder.body(body.to_owned()).unwrap(), now)
        .unwrap();
}

const USE_NONCE: &str = r#"{"error":"use_dpop_nonce","error_description":"Authorization server requires nonce in DPoP proof"}"#;
const DPOP_TOKEN: &str = r#"{"access_token":"dpop-tok","token_type":"DPoP","expires_in":3600}"#;

#[test]
fn token_requests_carry_a_proof_for_the_token_endpoint() {
    let (mut m, key, signer) = dpop_manager(secret());
    let request = fetch(&mut m, key, at(100));
    let (header, claims) = proof_of(request.request());
    assert_eq!(header["typ"], "dpop+jwt");
    assert_eq!(header["alg"], "ES256");
    let jwk = header["jwk"].as_object().unwrap();
    assert_eq!(jwk, signer.public_jwk().members());
    assert!(!jwk.contains_key("d"), "never the private key");
    assert_eq!(claims["htm"], "POST");
    assert_eq!(
        claims["htu"], "https://as.example/token",
        "no query, no fragment"
    );
    assert_eq!(
        claims["iat"],
        json!(Now::from_secs(100)
            .wall()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs())
    );
    assert!(claims["jti"].as_str().unwrap().len() >= 22);
    assert!(!claims.contains_key("nonce") && !claims.contains_key("ath"));
}

#[test]
fn use_dpop_nonce_at_the_token_endpoint_retries_once_with_fresh_proof_and_assertion() {
    let key_signer = FakeSigner::new("client-key");
    let auth = ClientAuth::PrivateKeyJwt(PrivateKeyJwt::new(key_signer));
    let (mut m, key, _) = dpop_manager(auth);
    let first = fetch(&mut m, key, at(0));
    let (_, first_proof) = proof_of(first.request());
    let first_assertion = assertion_claims(first.request());
    respond(&mut m, &first, 400, USE_NONCE, Some("nonce-A"), at(1));
    let retry = signed(m.poll_request().expect("one retry"));
    assert_ne!(retry.id(), first.id());
    let (_, retry_proof) = proof_of(retry.request());
    assert_eq!(retry_proof["nonce"], "nonce-A");
    assert_ne!(retry_proof["jti"], first_proof["jti"], "fresh proof");
    assert_ne!(
        assertion_claims(retry.request())["jti"],
        first_assertion["jti"],
        "fresh assertion"
    );
    let events: Vec<Event> = std::iter::from_fn(|| m.poll_event()).collect();
    assert!(events.iter().any(|e| matches!(
        e,
        Event::RequestStarted {
            reason: RequestReason::DPoPNonce,
            ..
        }
    )));
    assert!(!events
        .iter()
        .any(|e| matches!(e, Event::BackoffEntered { .. })));
    // Waiters are told to wait for the retry, not released with an error.
    assert!(matches!(m.authorize(key, at(1)), Authorization::Wait(id) if id == retry.id()));
    // A second use_dpop_nonce is a failure: no third request.
    respond(&mut m, &retry, 400, USE_NONCE, Some("nonce-B"), at(2));
    assert!(m.poll_request().is_none());
    match m.authorize(key, at(2)) {
        Authorization::Unavailable { error, .. } => {
            assert!(matches!(error, TokenError::OAuth(e) if e.code() == "use_dpop_nonce"))
        }
        other => panic!("{other:?}"),
    }
    // After the backoff the next request carries the latest nonce.
    let next = fetch(&mut m, key, at(60));
    assert_eq!(proof_of(next.request()).1["nonce"], "nonce-B");
}

#[test]
fn use_dpop_nonce_without_a_nonce_is_not_retried() {
    let (mut m, key, _) = dpop_manager(secret());
    let first = fetch(&mut m, key, at(0));
    respond(&mut m, &first, 400, USE_NONCE, None, at(0));
    assert!(m.poll_request().is_none());
    assert!(matches!(
        m.authorize(key, at(0)),
        Authorization::Unavailable { .. }
    ));
}

#[test]
fn dpop_tokens_are_attached_with_a_proof_bound_to_the_request() {
    let (mut m, key, _) = dpop_manager(secret());
    let request = fetch(&mut m, key, at(0));
    respond(&mut m, &request, 200, DPOP_TOKEN, Some("as-nonce"), at(0));
    let uri: Uri = "https://api.example/orders/7?expand=1#frag"
        .parse()
        .unwrap();
    let Authorization::Attach(attach) = m.authorize_request(key, &Method::DELETE, &uri, at(1))
    else {
        panic!()
    };
    assert_eq!(attach.header(), "DPoP dpop-tok");
    assert!(attach.is_dpop());
    let proof = api_proof(attach).expect("a proof");
    let (_, claims) = decode(&proof);
    assert_eq!(claims["htm"], "DELETE");
    assert_eq!(claims["htu"], "https://api.example/orders/7");
    assert_eq!(claims["ath"], sha256_base64url(b"dpop-tok"));
    assert!(
        !claims.contains_key("nonce"),
        "the token endpoint's nonce never goes to another origin"
    );
    // Each request gets its own proof.
    let Authorization::Attach(again) = m.authorize_request(key, &Method::DELETE, &uri, at(1))
    else {
        panic!()
    };
    let (_, again) = decode(&api_proof(again).unwrap());
    assert_ne!(again["jti"], claims["jti"]);
    // And lock-free readers are sent to the core for every request.
    let snapshot = m.snapshot(key).unwrap();
    assert!(!snapshot.is_fresh(at(1).monotonic()));
}

fn resource(
    m: &mut TokenManager,
    key: KeyId,
    uri: &Uri,
    status: u16,
    headers: &HeaderMap,
    attempt: u32,
) -> ResourceOutcome {
    let sent = HeaderValue::from_static("DPoP dpop-tok");
    let response = ResourceResponse {
        status: StatusCode::from_u16(status).unwrap(),
        headers,
        sent_authorization: Some(&sent),
        uri: Some(uri),
        attempt,
    };
    m.handle_resource_response(key, &response, at(2))
}

fn api_nonce_in_next_proof(m: &mut TokenManager, key: KeyId, uri: &Uri) -> Option<String> {
    let Authorization::Attach(attach) = m.authorize_request(key, &Method::GET, uri, at(3)) else {
        panic!()
    };
    let (_, claims) = decode(&api_proof(attach).unwrap());
    claims.get("nonce").map(|n| n.as_str().unwrap().to_owned())
}

#[test]
fn resource_nonces_are_per_origin_and_retried_once() {
    let (mut m, key, _) = dpop_manager(secret());
    let request = fetch(&mut m, key, at(0));
    respond(&mut m, &request, 200, DPOP_TOKEN, None, at(0));
    let api: Uri = "https://api.example/orders".parse().unwrap();
    let other: Uri = "https://other.example/x".parse().unwrap();
    let mut challenge = HeaderMap::new();
    challenge.insert("www-authenticate", HeaderValue::from_static(r#"DPoP error="use_dpop_nonce", error_description="Resource server requires nonce in DPoP proof""#));
    challenge.insert("dpop-nonce", HeaderValue::from_static("api-nonce-1"));
    assert_eq!(
        resource(&mut m, key, &api, 401, &challenge, 0),
        ResourceOutcome::Retry
    );
    assert_eq!(
        m.token(key, at(2))
            .map(|t| t.access_token().expose_secret().to_owned()),
        Some("dpop-tok".to_owned()),
        "the token stays"
    );
    assert_eq!(
        api_nonce_in_next_proof(&mut m, key, &api).as_deref(),
        Some("api-nonce-1")
    );
    assert_eq!(
        api_nonce_in_next_proof(&mut m, key, &other),
        None,
        "never to another origin"
    );
    // The retry's own use_dpop_nonce is handed back.
    assert_eq!(
        resource(&mut m, key, &api, 401, &challenge, 1),
        ResourceOutcome::Deliver
    );
    // A nonce on a success replaces the stored one.
    let mut ok = HeaderMap::new();
    ok.insert("dpop-nonce", HeaderValue::from_static("api-nonce-2"));
    assert_eq!(
        resource(&mut m, key, &api, 200, &ok, 0),
        ResourceOutcome::Deliver
    );
    assert_eq!(
        api_nonce_in_next_proof(&mut m, key, &api).as_deref(),
        Some("api-nonce-2")
    );
    // use_dpop_nonce without a nonce header: nothing to retry with.
    let mut bare = HeaderMap::new();
    bare.insert(
        "www-authenticate",
        HeaderValue::from_static(r#"DPoP error="use_dpop_nonce""#),
    );
    assert_eq!(
        resource(&mut m, key, &other, 401, &bare, 0),
        ResourceOutcome::Deliver
    );
}

#[test]
fn use_dpop_nonce_is_retried_even_while_rejections_are_damped() {
    let (mut m, key, _) = dpop_manager(secret());
    let request = fetch(&mut m, key, at(0));
    respond(&mut m, &request, 200, DPOP_TOKEN, None, at(0));
    let api: Uri = "https://api.example/orders".parse().unwrap();
    // A plain 401 throws the token away; the next one is fetched after it.
    assert_eq!(
        resource(&mut m, key, &api, 401, &HeaderMap::new(), 0),
        ResourceOutcome::Retry
    );
    let request = fetch(&mut m, key, at(2));
    respond(&mut m, &request, 200, DPOP_TOKEN, None, at(2));
    while m.poll_event().is_some() {}
    // A nonce challenge asks for a new proof, not a new token: retried as always.
    let mut challenge = HeaderMap::new();
    challenge.insert(
        "www-authenticate",
        HeaderValue::from_static(r#"DPoP error="use_dpop_nonce""#),
    );
    challenge.insert("dpop-nonce", HeaderValue::from_static("api-nonce"));
    assert_eq!(
        resource(&mut m, key, &api, 401, &challenge, 0),
        ResourceOutcome::Retry
    );
    assert!(std::iter::from_fn(|| m.poll_event()).next().is_none());
    // A plain 401 within the window is damped.
    assert_eq!(
        resource(&mut m, key, &api, 401, &HeaderMap::new(), 0),
        ResourceOutcome::Deliver
    );
    assert_eq!(m.poll_event(), Some(Event::RejectionDamped { key }));
}

#[test]
fn a_bearer_answer_to_a_dpop_client_is_used_as_bearer_and_reported() {
    let (mut m, key, _) = dpop_manager(secret());
    let request = fetch(&mut m, key, at(0));
    respond(
        &mut m,
        &request,
        200,
        r#"{"access_token":"plain","token_type":"Bearer","expires_in":60}"#,
        None,
        at(0),
    );
    let events: Vec<Event> = std::iter::from_fn(|| m.poll_event()).collect();
    assert!(events.contains(&Event::TokenNotBound { key }));
    let uri: Uri = "https://api.example/".parse().unwrap();
    let Authorization::Attach(attach) = m.authorize_request(key, &Method::GET, &uri, at(1)) else {
        panic!()
    };
    assert_eq!(attach.header(), "Bearer plain");
    assert!(api_proof(attach).is_none());
}

#[test]
fn a_client_that_requires_dpop_refuses_an_unbound_bearer_answer() {
    let mut m = TokenManager::new(ManagerConfig::default(), 9);
    let config = ClientConfig::new(TOKEN_URL, "m2m", secret())
        .unwrap()
        .dpop(FakeSigner::new("dpop-key"))
        .require_dpop_bound(true);
    assert!(config.requires_dpop_bound());
    let client = m.add_client("m2m", config).unwrap();
    let key = m.default_key(client);
    let request = fetch(&mut m, key, at(0));
    respond(
        &mut m,
        &request,
        200,
        r#"{"access_token":"plain-secret-token","token_type":"Bearer","expires_in":3600}"#,
        None,
        at(0),
    );
    let events: Vec<Event> = std::iter::from_fn(|| m.poll_event()).collect();
    assert!(!events
        .iter()
        .any(|e| matches!(e, Event::TokenAcquired { .. } | Event::TokenNotBound { .. })));
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::BackoffEntered { failures: 1, .. })));
    let Some(Event::RequestFailed { error, .. }) = events
        .iter()
        .find(|e| matches!(e, Event::RequestFailed { .. }))
    else {
        panic!("no failure in {events:?}")
    };
    let TokenError::InvalidResponse(invalid) = error else {
        panic!("{error:?}")
    };
    assert_eq!(invalid.problem(), &ResponseProblem::NotDPoPBound);
    assert_eq!(invalid.status(), StatusCode::OK);
    assert_eq!(invalid.excerpt(), None, "the body holds a token");
    let text = format!("{error} {error:?}");
    assert!(
        text.contains("unbound Bearer token") && text.contains("DPoP was required"),
        "{text}"
    );
    assert!(!text.contains("plain-secret-token"), "{text}");
    // Neither cached nor attached: the caller fails fast until the backoff ends.
    assert!(m.token(key, at(0)).is_none());
    assert!(m.snapshot(key).is_none());
    match m.authorize(key, at(0)) {
        Authorization::Unavailable { error: e, .. } => assert_eq!(e, error),
        other => panic!("{other:?}"),
    }
    // After the backoff, a bound token is taken.
    let request = fetch(&mut m, key, at(60));
    respond(&mut m, &request, 200, DPOP_TOKEN, None, at(60));
    let uri: Uri = "https://api.example/".parse().unwrap();
    let Authorization::Attach(attach) = m.authorize_request(key, &Method::GET, &uri, at(61)) else {
        panic!()
    };
    assert_eq!(attach.header(), "DPoP dpop-tok");
}

#[test]
fn requiring_bound_tokens_needs_a_dpop_key() {
    let mut m = TokenManager::new(ManagerConfig::default(), 9);
    let config = ClientConfig::new(TOKEN_URL, "m2m", secret())
        .unwrap()
        .require_dpop_bound(true);
    let error = m.add_client("m2m", config).unwrap_err();
    assert!(error.to_string().contains("DPoP"), "{error}");
    let default = ClientConfig::new(TOKEN_URL, "m2m", secret()).unwrap();
    assert!(
        !default.requires_dpop_bound(),
        "off by default, for interop"
    );
}

fn assertion_claims(request: &http::Request<Vec<u8>>) -> Map<String, Value> {
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(request.body()).unwrap();
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    assert_eq!(
        field("client_assertion_type").as_deref(),
        Some(JWT_BEARER_ASSERTION)
    );
    assert_eq!(field("client_id").as_deref(), Some("m2m"));
    assert!(field("client_secret").is_none());
    decode(&field("client_assertion").unwrap()).1
}

#[test]
fn private_key_jwt_assertions() {
    let signer = FakeSigner::new("client-key");
    let mut m = TokenManager::new(ManagerConfig::default(), 5);
    let plain = ClientConfig::new(
        TOKEN_URL,
        "m2m",
        ClientAuth::PrivateKeyJwt(PrivateKeyJwt::new(signer.clone())),
    )
    .unwrap();
    let to_issuer = ClientConfig::new(
        TOKEN_URL,
        "m2m",
        ClientAuth::PrivateKeyJwt(
            PrivateKeyJwt::new(signer)
                .audience(AssertionAudience::Issuer("https://as.example".into()))
                .lifetime(Duration::from_secs(30)),
        ),
    )
    .unwrap();
    let a = m.add_client("a", plain).unwrap();
    let b = m.add_client("b", to_issuer).unwrap();
    let (ka, kb) = (m.default_key(a), m.default_key(b));
    let first = fetch(&mut m, ka, at(10));
    let claims = assertion_claims(first.request());
    assert_eq!(claims["iss"], "m2m");
    assert_eq!(claims["sub"], "m2m");
    assert_eq!(claims["aud"], TOKEN_URL);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        60
    );
    assert!(first.request().headers().get("authorization").is_none());
    let other = assertion_claims(fetch(&mut m, kb, at(10)).request());
    assert_eq!(other["aud"], "https://as.example");
    assert_eq!(
        other["exp"].as_u64().unwrap() - other["iat"].as_u64().unwrap(),
        30
    );
    // A retry (after a failure and its backoff) gets a fresh jti.
    respond(&mut m, &first, 500, "", None, at(10));
    let again = fetch(&mut m, ka, at(100));
    assert_ne!(assertion_claims(again.request())["jti"], claims["jti"]);
}

fn pkjwt(audience: AssertionAudience) -> ClientAuth {
    ClientAuth::PrivateKeyJwt(PrivateKeyJwt::new(FakeSigner::new("client-key")).audience(audience))
}

fn issuer_audience(issuer: &str) -> ClientAuth {
    pkjwt(AssertionAudience::Issuer(issuer.to_owned()))
}

#[test]
fn an_issuer_audience_must_be_an_issuer_identifier() {
    const ENDPOINT: &str = "https://as.example/token";
    for issuer in [
        "https://as.example",
        "https://as.example/realms/acme",
        "http://127.0.0.1:8080/realms/acme",
        "http://localhost:9000",
    ] {
        assert!(
            ClientConfig::new(ENDPOINT, "m2m", issuer_audience(issuer)).is_ok(),
            "{issuer}"
        );
    }
    for (issuer, why) in [
        ("", "not a valid URL"),
        ("as.example", "https"),
        ("/realms/acme", "no host"),
        ("http://as.example", "https"),
        ("ftp://as.example", "https"),
        ("https://as.example/?tenant=1", "query"),
        ("https://as.example/#x", "fragment"),
        ("https://:443/", "no host"),
    ] {
        let error = ClientConfig::new(ENDPOINT, "m2m", issuer_audience(issuer)).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("assertion audience") && text.contains(why),
            "{issuer:?}: {text}"
        );
    }
}

#[test]
fn an_issuer_audience_is_sent_as_a_single_string() {
    let mut m = TokenManager::new(ManagerConfig::default(), 5);
    let config = ClientConfig::new(
        "https://as.example/token",
        "m2m",
        issuer_audience("https://as.example/realms/acme"),
    )
    .unwrap();
    let client = m.add_client("m2m", config).unwrap();
    let key = m.default_key(client);
    let claims = assertion_claims(fetch(&mut m, key, at(0)).request());
    // draft-ietf-oauth-rfc7523bis: `aud` is the issuer identifier, as a string, never an array.
    assert_eq!(claims["aud"], Value::from("https://as.example/realms/acme"));
}

#[test]
fn a_client_is_checked_against_discovered_metadata() {
    let metadata = token_keeper::discovery::parse_metadata(
        br#"{"issuer":"https://as.example/realms/acme",
             "token_endpoint":"https://as.example/realms/acme/token"}"#,
        "https://as.example/realms/acme",
    )
    .unwrap();
    let endpoint = "https://as.example/realms/acme/token";
    let check = |endpoint: &str, auth: ClientAuth| {
        ClientConfig::new(endpoint, "m2m", auth)
            .unwrap()
            .check_against(&metadata)
    };
    // Agreeing configurations pass.
    assert_eq!(check(endpoint, secret()), Ok(()));
    assert_eq!(
        check(endpoint, pkjwt(AssertionAudience::TokenEndpoint)),
        Ok(())
    );
    assert_eq!(
        check(endpoint, issuer_audience("https://as.example/realms/acme")),
        Ok(())
    );
    // An assertion for another issuer would be refused by this server (or,
    // worse, accepted by the other one): refuse it here.
    for other in [
        "https://as.example/realms/other",
        "https://as.example/realms/acme/",
        "https://AS.example/realms/acme",
    ] {
        let error = check(endpoint, issuer_audience(other)).unwrap_err();
        assert!(error.to_string().contains("issuer"), "{other}: {error}");
        assert!(!error.to_string().contains(other), "{error}");
    }
    // So is a token endpoint other than the discovered one.
    for other in [
        "https://as.example/realms/other/token",
        "https://evil.example/realms/acme/token",
        "https://as.example:8443/realms/acme/token",
        "https://as.example/realms/acme/token?x=1",
    ] {
        for auth in [secret(), issuer_audience("https://as.example/realms/acme")] {
            let error = check(other, auth).unwrap_err();
            assert!(
                error.to_string().contains("token endpoint"),
                "{other}: {error}"
            );
        }
    }
}

/// A source of known bytes: the `n`-th call fills its buffer with `n`.
#[derive(Default)]
struct CountingSource(AtomicU8);

impl RandomSource for CountingSource {
    fn fill(&self, dest: &mut [u8]) {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        dest.fill(n);
    }
}

/// A source that always gives the same byte.
struct ConstantSource(u8);

impl RandomSource for ConstantSource {
    fn fill(&self, dest: &mut [u8]) {
        dest.fill(self.0);
    }
}

/// The jtis of the first token request (assertion, proof) and of the first
/// API proof of a DPoP + private_key_jwt client.
fn first_jtis(m: &mut TokenManager, key: KeyId) -> [String; 3] {
    let request = fetch(m, key, at(0));
    let assertion = assertion_claims(request.request())["jti"].clone();
    let proof = proof_of(request.request()).1["jti"].clone();
    respond(m, &request, 200, DPOP_TOKEN, None, at(0));
    let uri: Uri = "https://api.example/".parse().unwrap();
    let Authorization::Attach(attach) = m.authorize_request(key, &Method::GET, &uri, at(1)) else {
        panic!()
    };
    let api = decode(&api_proof(attach).unwrap()).1["jti"].clone();
    [assertion, proof, api].map(|v| v.as_str().unwrap().to_owned())
}

fn pkjwt_dpop_manager() -> (TokenManager, KeyId) {
    let (m, key, _) = dpop_manager(pkjwt(AssertionAudience::TokenEndpoint));
    (m, key)
}

#[test]
fn jtis_come_from_the_injected_random_source() {
    let (mut m, key) = pkjwt_dpop_manager();
    m.set_random_source(Box::new(CountingSource::default()));
    let [assertion, proof, api] = first_jtis(&mut m, key);
    // 16 bytes each, base64url without padding: the 1st and 2nd draws go to the
    // token request, the 3rd to the refresh jitter, the 4th to the API proof.
    assert_eq!(assertion, "AQEBAQEBAQEBAQEBAQEBAQ");
    assert_eq!(proof, B64URL.encode([2u8; 16]));
    assert_eq!(api, B64URL.encode([4u8; 16]));
    assert_eq!(B64URL.decode(&api).unwrap().len(), 16, "128 bits");
}

#[test]
fn jitter_comes_from_the_injected_random_source() {
    // A one-hour token requested at 0: usable for 3540 s, refreshed between
    // 70 % and 80 % of that, the point drawn from the source whatever the seed.
    let refresh_point = |seed: u64, byte: u8| {
        let mut m = TokenManager::new(ManagerConfig::default(), seed);
        m.set_random_source(Box::new(ConstantSource(byte)));
        let client = m
            .add_client(
                "m2m",
                ClientConfig::new(TOKEN_URL, "m2m", secret()).unwrap(),
            )
            .unwrap();
        let key = m.default_key(client);
        let request = fetch(&mut m, key, at(0));
        let body = r#"{"access_token":"t","token_type":"Bearer","expires_in":3600}"#;
        respond(&mut m, &request, 200, body, None, at(0));
        m.snapshot(key).unwrap().fresh_until()
    };
    for seed in [1, 2, 3] {
        assert_eq!(refresh_point(seed, 0), Now::from_secs(2832).monotonic());
        let latest_jitter = refresh_point(seed, 0xFF);
        assert!(
            latest_jitter > Now::from_secs(2477).monotonic()
                && latest_jitter < Now::from_secs(2479).monotonic(),
            "{latest_jitter:?}"
        );
    }
}

#[test]
fn without_a_source_the_seed_still_decides_everything() {
    let (mut a, ka) = pkjwt_dpop_manager();
    let (mut b, kb) = pkjwt_dpop_manager();
    let jtis = first_jtis(&mut a, ka);
    assert_eq!(jtis, first_jtis(&mut b, kb), "same seed, same jtis");
    // And the same values as before random sources existed (seed 9).
    assert_eq!(
        jtis,
        [
            "ZGBwvv5Sr65i6q-HXootwA",
            "tom1ROUr7ENgYDGX1ozpyA",
            "_muOgKX0Vh3MuKxaprhTpQ"
        ]
    );
}

fn broken_signer() -> Arc<FakeSigner> {
    Arc::new(FakeSigner {
        fail: true,
        ..Arc::try_unwrap(FakeSigner::new("k")).unwrap()
    })
}

/// A client whose token requests cannot be signed: with `private_key_jwt`,
/// or with DPoP.
fn broken_clients() -> Vec<(&'static str, ClientConfig)> {
    let assertion = ClientConfig::new(
        TOKEN_URL,
        "m2m",
        ClientAuth::PrivateKeyJwt(PrivateKeyJwt::new(broken_signer())),
    )
    .unwrap();
    let proof = ClientConfig::new(TOKEN_URL, "m2m", secret())
        .unwrap()
        .dpop(broken_signer());
    vec![("private_key_jwt", assertion), ("dpop", proof)]
}

#[test]
fn a_signer_that_fails_backs_off_without_sending_anything() {
    for (what, config) in broken_clients() {
        let mut m = TokenManager::new(ManagerConfig::default(), 5);
        let client = m.add_client("m2m", config).unwrap();
        let key = m.default_key(client);
        // The core builds the request and leaves the signing to the driver…
        let Authorization::Fetch(id) = m.authorize(key, at(0)) else {
            panic!("{what}")
        };
        let request = m.poll_request().expect(what);
        assert!(request.needs_signing(), "{what}");
        // …whose signer fails: nothing is sent, and the core is told.
        let error = request.into_request().unwrap_err();
        assert!(error.to_string().contains("KMS"), "{what}: {error}");
        while m.poll_event().is_some() {}
        m.handle_signing_error(id, error.clone(), at(1)).unwrap();
        // As any failed request: the error, an event, a backoff.
        let events: Vec<Event> = std::iter::from_fn(|| m.poll_event()).collect();
        assert!(
            matches!(
                &events[..],
                [
                    Event::RequestFailed { key: k, id: i, error: TokenError::Signing(e) },
                    Event::BackoffEntered { key: b, failures: 1, serving_cached: false, .. },
                ] if *k == key && *i == id && *e == error && *b == key
            ),
            "{what}: {events:?}"
        );
        assert_eq!(m.in_flight(key), None, "{what}");
        let retry_at = match m.authorize(key, at(1)) {
            Authorization::Unavailable { error, retry_at } => {
                assert!(matches!(error, TokenError::Signing(_)), "{what}");
                assert!(error.to_string().contains("KMS"), "{what}");
                retry_at
            }
            other => panic!("{what}: {other:?}"),
        };
        assert!(retry_at > at(1).monotonic(), "{what}");
        assert!(m.poll_request().is_none(), "{what}");
        // A second report of the same request is refused, and changes nothing.
        assert_eq!(
            m.handle_signing_error(id, error, at(1)),
            Err(UnknownRequest),
            "{what}"
        );
        assert!(m.poll_event().is_none(), "{what}");
        // After the backoff, a new attempt, with a new id.
        let secs = retry_at
            .saturating_duration_since(at(0).monotonic())
            .as_secs()
            + 1;
        let Authorization::Fetch(next) = m.authorize(key, at(secs)) else {
            panic!("{what}")
        };
        assert_ne!(next, id, "{what}");
        // A second failure in a row backs off longer.
        let error = m.poll_request().unwrap().into_request().unwrap_err();
        while m.poll_event().is_some() {}
        m.handle_signing_error(next, error, at(secs)).unwrap();
        assert!(
            std::iter::from_fn(|| m.poll_event())
                .any(|e| matches!(e, Event::BackoffEntered { failures: 2, .. })),
            "{what}"
        );
    }
}

#[test]
fn debug_output_never_shows_the_private_key() {
    let (m, _, signer) = dpop_manager(secret());
    assert!(!format!("{m:?} {signer:?}").contains("PRIVATE-D"));
}

mod properties {
    //! Random exchanges with several origins: every proof carries the latest
    //! nonce of its own origin (never another's), and nonce retries are bounded.

    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Clone, Debug)]
    enum Step {
        /// The token endpoint answers the request in flight.
        TokenAnswer {
            use_nonce: bool,
            nonce: Option<u8>,
            success: bool,
        },
        /// An API call to origin `origin`, answered with `status` and maybe a nonce.
        Api {
            origin: usize,
            status: u16,
            nonce: Option<u8>,
            challenge: bool,
        },
        /// Time passes.
        Wait { secs: u16 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (any::<bool>(), proptest::option::of(0u8..4), any::<bool>()).prop_map(
                |(use_nonce, nonce, success)| Step::TokenAnswer {
                    use_nonce,
                    nonce,
                    success
                }
            ),
            (
                0usize..3,
                prop_oneof![Just(200u16), Just(401), Just(500)],
                proptest::option::of(0u8..4),
                any::<bool>()
            )
                .prop_map(|(origin, status, nonce, challenge)| Step::Api {
                    origin,
                    status,
                    nonce,
                    challenge
                }),
            (1u16..4000).prop_map(|secs| Step::Wait { secs }),
        ]
    }

    const ORIGINS: [&str; 3] = [
        "https://api-a.example",
        "https://api-b.example:8443",
        "https://as.example",
    ];

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn nonces_stay_with_their_origin_and_retries_are_bounded(steps in proptest::collection::vec(step(), 1..40)) {
            let (mut m, key, _) = dpop_manager(secret());
            let mut t = 0u64;
            // The latest nonce each origin handed out and when, as the server side sees it;
            // the core forgets a nonce after ManagerConfig::dpop_nonce_lifetime (1 h).
            let mut handed_out: HashMap<String, (String, u64)> = HashMap::new();
            let live = |handed_out: &HashMap<String, (String, u64)>, origin: &str, t: u64| -> Option<String> {
                handed_out.get(origin).filter(|(_, at)| t < at + 3600).map(|(n, _)| n.clone())
            };
            let mut in_flight: Option<(Sent, u32)> = None;
            let mut attempts_per_flight = 0u32;
            let token_origin = "https://as.example".to_owned();
            for (i, step) in steps.into_iter().enumerate() {
                let now = at(t);
                if in_flight.is_none() {
                    if let Authorization::Fetch(_) = m.authorize(key, now) {
                        let request = signed(m.poll_request().unwrap());
                        let (_, proof) = proof_of(request.request());
                        let expected = live(&handed_out, &token_origin, t);
                        prop_assert_eq!(proof.get("nonce").and_then(Value::as_str), expected.as_deref());
                        in_flight = Some((request, 0));
                        attempts_per_flight = 1;
                    }
                }
                match step {
                    Step::TokenAnswer { use_nonce, nonce, success } => {
                        let Some((request, _)) = in_flight.take() else { continue };
                        let nonce = nonce.map(|n| format!("as-{i}-{n}"));
                        if let Some(n) = &nonce {
                            handed_out.insert(token_origin.clone(), (n.clone(), t));
                        }
                        let body = if use_nonce { USE_NONCE } else if success { DPOP_TOKEN } else { "{}" };
                        let status = if use_nonce { 400 } else if success { 200 } else { 500 };
                        respond(&mut m, &request, status, body, nonce.as_deref(), now);
                        if let Some(retry) = m.poll_request().map(signed) {
                            // Only a use_dpop_nonce with a nonce is retried, and only once per flight.
                            prop_assert!(use_nonce && nonce.is_some());
                            attempts_per_flight += 1;
                            prop_assert!(attempts_per_flight <= 2, "more than one nonce retry");
                            let (_, proof) = proof_of(retry.request());
                            prop_assert_eq!(proof.get("nonce").and_then(Value::as_str), nonce.as_deref());
                            in_flight = Some((retry, 1));
                        }
                    }
                    Step::Api { origin, status, nonce, challenge } => {
                        let uri: Uri = format!("{}/resource", ORIGINS[origin]).parse().unwrap();
                        let Authorization::Attach(attach) = m.authorize_request(key, &Method::GET, &uri, now) else { continue };
                        let sent = attach.header().clone();
                        if let Some(proof) = api_proof(attach) {
                            let (_, claims) = decode(&proof);
                            let expected = live(&handed_out, ORIGINS[origin], t);
                            prop_assert_eq!(claims.get("nonce").and_then(Value::as_str), expected.as_deref());
                            prop_assert_eq!(claims["htu"].as_str().unwrap(), format!("{}/resource", ORIGINS[origin]));
                        }
                        let mut headers = HeaderMap::new();
                        let nonce = nonce.map(|n| format!("api-{i}-{n}"));
                        if let Some(n) = &nonce {
                            headers.insert("dpop-nonce", HeaderValue::from_str(n).unwrap());
                            handed_out.insert(ORIGINS[origin].to_owned(), (n.clone(), t));
                        }
                        if challenge && status == 401 {
                            headers.insert("www-authenticate", HeaderValue::from_static(r#"DPoP error="use_dpop_nonce""#));
                        }
                        let response = ResourceResponse {
                            status: StatusCode::from_u16(status).unwrap(),
                            headers: &headers,
                            sent_authorization: Some(&sent),
                            uri: Some(&uri),
                            attempt: 1,
                        };
                        // The retry of a retry is never allowed.
                        prop_assert_eq!(m.handle_resource_response(key, &response, now), ResourceOutcome::Deliver);
                    }
                    Step::Wait { secs } => t += u64::from(secs),
                }
                while m.poll_event().is_some() {}
            }
        }
    }
}
