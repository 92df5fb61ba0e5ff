//! Token requests (RFC 6749 §4.4.2): what the core hands adapters to send.
//!
//! A request becomes an `http::Request<Vec<u8>>`: a `POST` to the token
//! endpoint with a form body, `Accept: application/json`, and client
//! authentication in the `Authorization` header (`client_secret_basic`), in
//! the body (`client_secret_post`) or as a signed assertion
//! (`private_key_jwt`), plus a `DPoP` proof for a DPoP client. Each carries a
//! [`RequestId`] that the adapter hands back with the response, like
//! quinn-proto's `Transmit`. The core signs nothing: its [`TokenRequest`]
//! holds the JWTs unsigned, and [`TokenRequest::into_request`] signs them
//! where the adapter sends from, with no lock held.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method};

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::json;
use zeroize::Zeroizing;

use crate::config::{AssertionAudience, ClientAuth, ClientConfig, PrivateKeyJwt};
use crate::dpop::{self, unix_seconds};
use crate::jose::{SignError, UnsignedJwt};
use crate::key::{KeyDescriptor, KeyId};

/// Identifies one token request while it is in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub(crate) u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request#{}", self.0)
    }
}

/// A token request to send. Hand its response back with
/// [`TokenManager::handle_response`](crate::TokenManager::handle_response)
/// under the same [`id`](TokenRequest::id), or its failure with
/// [`TokenManager::handle_transport_error`](crate::TokenManager::handle_transport_error).
///
/// The core builds it without signing anything: the JWTs it needs (the
/// `private_key_jwt` client assertion, the DPoP proof) are complete but
/// unsigned, and [`TokenRequest::into_request`] signs them, so that a slow
/// [`Signer`](crate::jose::Signer) runs where the caller chooses (the driver:
/// on the thread that sends the request, with the core's lock released). If
/// signing fails, report it with
/// [`TokenManager::handle_signing_error`](crate::TokenManager::handle_signing_error).
pub struct TokenRequest {
    pub(crate) id: RequestId,
    pub(crate) key: KeyId,
    /// Complete but for the JWTs below: the form ends before `client_assertion`,
    /// and there is no `DPoP` header yet.
    pub(crate) request: http::Request<Vec<u8>>,
    /// `private_key_jwt`: the assertion, the form's last field once signed.
    pub(crate) assertion: Option<UnsignedJwt>,
    /// DPoP: the proof for the token endpoint, the `DPoP` header once signed.
    pub(crate) proof: Option<UnsignedJwt>,
}

impl TokenRequest {
    /// The id to report the outcome under.
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The cache key the token is for.
    pub fn key(&self) -> KeyId {
        self.key
    }

    /// The HTTP request as the core built it, before signing: complete for a
    /// client that signs nothing (secret-based, no DPoP); otherwise without
    /// the `client_assertion` form field and the `DPoP` header, which
    /// [`TokenRequest::into_request`] adds.
    pub fn request(&self) -> &http::Request<Vec<u8>> {
        &self.request
    }

    /// Whether [`TokenRequest::into_request`] has JWTs to sign (and so may
    /// take as long as the signer does).
    pub fn needs_signing(&self) -> bool {
        self.assertion.is_some() || self.proof.is_some()
    }

    /// Signs the request's JWTs and takes out the finished HTTP request, to
    /// send it. Signing may take as long as the [`Signer`](crate::jose::Signer)
    /// does (an HSM, a KMS): call it with no lock held that others wait for.
    ///
    /// On an error nothing is sent; hand the error to
    /// [`TokenManager::handle_signing_error`](crate::TokenManager::handle_signing_error)
    /// under [`TokenRequest::id`].
    pub fn into_request(self) -> Result<http::Request<Vec<u8>>, SignError> {
        let TokenRequest {
            mut request,
            assertion,
            proof,
            ..
        } = self;
        let signed = assertion
            .map(UnsignedJwt::sign)
            .transpose()
            .and_then(|assertion| {
                let proof = proof.map(UnsignedJwt::sign_header_value).transpose()?;
                Ok((assertion, proof))
            });
        let (assertion, proof) = match signed {
            Ok(signed) => signed,
            Err(error) => {
                // Never sent: wipe the body (with `client_secret_post`, it holds the secret).
                drop(Zeroizing::new(std::mem::take(request.body_mut())));
                return Err(error);
            }
        };
        if let Some(assertion) = assertion {
            let body = Zeroizing::new(std::mem::take(request.body_mut()));
            *request.body_mut() = append_form_field(&body, "client_assertion", &assertion);
        }
        if let Some(proof) = proof {
            request.headers_mut().insert(dpop::DPOP, proof);
        }
        Ok(request)
    }
}

/// `body` (a form) with `name=value` appended, in a buffer sized up front:
/// one that grows leaves copies behind in freed memory.
fn append_form_field(body: &[u8], name: &str, value: &str) -> Vec<u8> {
    let body = std::str::from_utf8(body).expect("the core builds form bodies as text");
    let mut text = String::with_capacity(body.len() + 3 * (name.len() + value.len()) + 2);
    text.push_str(body);
    let mut serializer = form_urlencoded::Serializer::for_suffix(text, 0);
    serializer.append_pair(name, value);
    serializer.finish().into_bytes()
}

impl fmt::Debug for TokenRequest {
    // The body and the Authorization header hold credentials: show neither.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRequest")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("method", self.request.method())
            .field("uri", self.request.uri())
            .field("body_len", &self.request.body().len())
            .field("needs_signing", &self.needs_signing())
            .finish_non_exhaustive()
    }
}

/// The `Authorization` header value for `client_secret_basic`.
///
/// With `form_encode` (the RFC 6749 §2.3.1 rule), the id and the secret are
/// each `application/x-www-form-urlencoded` before joining, so a `:` in the id
/// cannot be confused with the separator and a space becomes `+`. Without it,
/// they are joined as they are, for servers that do not decode.
///
/// ```
/// use token_keeper::request::basic_credentials;
/// // RFC 6749 §2.3.1 encoding: ':' → %3A, ' ' → '+'.
/// let header = basic_credentials("a:b", "c d", true);
/// assert_eq!(header.to_str().unwrap(), "Basic YSUzQWI6Yytk"); // base64("a%3Ab:c+d")
/// ```
pub fn basic_credentials(client_id: &str, secret: &str, form_encode: bool) -> HeaderValue {
    let token68 = basic_token68(client_id, secret, form_encode);
    let mut text = Zeroizing::new(String::with_capacity("Basic ".len() + token68.len()));
    text.push_str("Basic ");
    text.push_str(&token68);
    let mut value =
        HeaderValue::from_str(&text).expect("base64 output is always a valid header value");
    value.set_sensitive(true);
    value
}

/// The credentials of `client_secret_basic` after `Basic `:
/// `base64(id ":" secret)`, each form-urlencoded first when `form_encode`.
/// Held in memory that is wiped on drop, since it decodes to the secret.
pub(crate) fn basic_token68(client_id: &str, secret: &str, form_encode: bool) -> Zeroizing<String> {
    // Every buffer is sized up front: a buffer that grows moves, and the copy
    // it leaves behind would not be wiped.
    let mut joined = Zeroizing::new(String::with_capacity(
        3 * (client_id.len() + secret.len()) + 1,
    ));
    if form_encode {
        joined.push_str(&form_encoded(client_id));
        joined.push(':');
        joined.push_str(&form_encoded(secret));
    } else {
        joined.push_str(client_id);
        joined.push(':');
        joined.push_str(secret);
    }
    let mut encoded = Zeroizing::new(String::with_capacity(joined.len().div_ceil(3) * 4));
    BASE64.encode_string(joined.as_bytes(), &mut encoded);
    encoded
}

/// `value` as `application/x-www-form-urlencoded` (a space becomes `+`), in
/// memory that is wiped on drop: used for the client secret.
pub(crate) fn form_encoded(value: &str) -> Zeroizing<String> {
    // Three bytes out for each byte in at most, so the buffer never moves.
    let mut out = Zeroizing::new(String::with_capacity(value.len() * 3));
    out.extend(form_urlencoded::byte_serialize(value.as_bytes()));
    out
}

/// What differs between two attempts of the same token request: the time
/// and the unique ids of the signed JWTs (a retry never reuses them), and the
/// server's latest DPoP nonce.
#[derive(Debug)]
pub(crate) struct Attempt<'a> {
    pub(crate) wall: SystemTime,
    pub(crate) assertion_jti: String,
    pub(crate) proof_jti: String,
    pub(crate) nonce: Option<&'a str>,
}

/// The `client_assertion` of `private_key_jwt` (RFC 7523 §3), to sign.
fn client_assertion(
    client: &ClientConfig,
    settings: &PrivateKeyJwt,
    attempt: &Attempt<'_>,
) -> UnsignedJwt {
    let iat = unix_seconds(attempt.wall);
    let aud = match &settings.audience {
        AssertionAudience::TokenEndpoint => client.token_endpoint.to_string(),
        AssertionAudience::Issuer(issuer) => issuer.clone(),
    };
    let header = json!({ "alg": settings.signer.algorithm().name(), "typ": "JWT" });
    let claims = json!({
        "iss": client.client_id,
        "sub": client.client_id,
        "aud": aud,
        "iat": iat,
        "exp": iat.saturating_add(settings.lifetime.as_secs().max(1)),
        "jti": attempt.assertion_jti,
    });
    UnsignedJwt::new(Arc::clone(&settings.signer), header, claims)
}

/// Builds token request `id` for `key` of `client`, its JWTs unsigned.
/// Fails only if the DPoP proof cannot be made (no `htu` for the endpoint).
pub(crate) fn build_token_request(
    id: RequestId,
    key: KeyId,
    client: &ClientConfig,
    descriptor: &KeyDescriptor,
    attempt: &Attempt<'_>,
) -> Result<TokenRequest, SignError> {
    let scope = descriptor.scope.to_request_string();
    let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
    if !scope.is_empty() {
        form.push(("scope", &scope));
    }
    for resource in &descriptor.resources {
        form.push(("resource", resource));
    }
    if let Some(audience) = &descriptor.audience {
        form.push(("audience", audience));
    }
    for (name, value) in &descriptor.params {
        form.push((name, value));
    }
    let mut authorization = None;
    let mut assertion = None;
    match &client.auth {
        ClientAuth::Basic(secret) => {
            authorization = Some(basic_credentials(
                &client.client_id,
                secret.expose_secret(),
                true,
            ))
        }
        ClientAuth::BasicRaw(secret) => {
            authorization = Some(basic_credentials(
                &client.client_id,
                secret.expose_secret(),
                false,
            ))
        }
        ClientAuth::Post(secret) => {
            form.push(("client_id", &client.client_id));
            form.push(("client_secret", secret.expose_secret()));
        }
        ClientAuth::None => form.push(("client_id", &client.client_id)),
        ClientAuth::PrivateKeyJwt(settings) => {
            form.push(("client_id", &client.client_id));
            form.push(("client_assertion_type", JWT_BEARER_ASSERTION));
            // `client_assertion` comes last, appended once signed (`into_request`).
            assertion = Some(client_assertion(client, settings, attempt));
        }
    }
    // Sized up front (three bytes out per byte in, at most): with
    // `client_secret_post` the body holds the secret, and a buffer that grows
    // leaves copies behind in freed memory. The body itself goes to the adapter.
    let capacity = form
        .iter()
        .map(|(name, value)| 3 * (name.len() + value.len()) + 2)
        .sum();
    let mut serializer = form_urlencoded::Serializer::new(String::with_capacity(capacity));
    serializer.extend_pairs(&form);
    let body = serializer.finish().into_bytes();

    let mut builder = http::Request::builder()
        .method(Method::POST)
        .uri(client.token_endpoint.clone())
        .header(ACCEPT, HeaderValue::from_static("application/json"))
        .header(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
    if let Some(authorization) = authorization {
        builder = builder.header(AUTHORIZATION, authorization);
    }
    let proof = match &client.dpop {
        Some(signer) => Some(dpop::unsigned_proof(
            signer,
            &Method::POST,
            &client.token_endpoint,
            attempt.wall,
            &attempt.proof_jti,
            attempt.nonce,
            None,
        )?),
        None => None,
    };
    let request = builder
        .body(body)
        .expect("method, validated URI and checked headers always build");
    Ok(TokenRequest {
        id,
        key,
        request,
        assertion,
        proof,
    })
}

/// The `client_assertion_type` of RFC 7523 §2.2.
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientSecret;
    use crate::key::{KeyOverrides, Scope};

    fn attempt() -> Attempt<'static> {
        Attempt {
            wall: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000),
            assertion_jti: "a-1".into(),
            proof_jti: "p-1".into(),
            nonce: None,
        }
    }

    fn decode_basic(value: &HeaderValue) -> String {
        let text = value.to_str().unwrap();
        let b64 = text.strip_prefix("Basic ").unwrap();
        String::from_utf8(BASE64.decode(b64).unwrap()).unwrap()
    }

    #[test]
    fn basic_auth_vectors() {
        let cases = [
            ("client", "secret", "client:secret"),
            ("my client", "my secret", "my+client:my+secret"),
            ("a:b", "c:d", "a%3Ab:c%3Ad"),
            ("100%", "50%off", "100%25:50%25off"),
            ("plus+id", "p+w", "plus%2Bid:p%2Bw"),
            ("clïent", "sécret€", "cl%C3%AFent:s%C3%A9cret%E2%82%AC"),
            ("id", "a/b=c&d", "id:a%2Fb%3Dc%26d"),
        ];
        for (id, secret, expected) in cases {
            let value = basic_credentials(id, secret, true);
            assert_eq!(decode_basic(&value), expected, "{id} / {secret}");
            assert!(value.is_sensitive());
        }
    }

    /// The forms the secret takes on its way out are held in memory that is
    /// wiped on drop, like the secret itself: these only compile while the
    /// helpers return `Zeroizing<String>`.
    #[test]
    fn the_encoded_forms_of_the_secret_are_zeroized() {
        fn zeroizing(value: Zeroizing<String>) -> String {
            value.as_str().to_owned()
        }
        assert_eq!(zeroizing(form_encoded("p&ss w:rd%")), "p%26ss+w%3Ard%25");
        assert_eq!(
            zeroizing(basic_token68("a:b", "c d", true)),
            BASE64.encode("a%3Ab:c+d")
        );
        assert_eq!(
            zeroizing(basic_token68("my client", "p:w d%", false)),
            BASE64.encode("my client:p:w d%")
        );
        // The header is built from the same form.
        let header = basic_credentials("a:b", "c d", true);
        assert_eq!(
            header.to_str().unwrap(),
            format!("Basic {}", *basic_token68("a:b", "c d", true))
        );
    }

    #[test]
    fn basic_raw_joins_without_encoding() {
        let value = basic_credentials("my client", "p:w d%", false);
        assert_eq!(decode_basic(&value), "my client:p:w d%");
    }

    fn client(auth: ClientAuth) -> ClientConfig {
        ClientConfig::new("https://as.example/connect/token", "m2m", auth)
            .unwrap()
            .scope("b a")
            .resource("https://api.example/v1?x=1")
            .unwrap()
            .resource("urn:example:other")
            .unwrap()
            .audience("aud one")
            .param("tenant", "acme & co")
            .unwrap()
    }

    fn descriptor(config: &ClientConfig) -> KeyDescriptor {
        KeyDescriptor::new(
            0,
            &config.scope,
            &config.resources,
            config.audience.as_ref(),
            &config.params,
            &KeyOverrides::new(),
        )
    }

    fn build(config: &ClientConfig, key: &KeyDescriptor) -> TokenRequest {
        build_token_request(RequestId(7), KeyId(0), config, key, &attempt()).unwrap()
    }

    fn form(request: &http::Request<Vec<u8>>) -> Vec<(String, String)> {
        serde_urlencoded::from_bytes(request.body()).unwrap()
    }

    #[test]
    fn basic_request_shape() {
        let config = client(ClientAuth::Basic(ClientSecret::new("s e:c")));
        let request = build(&config, &descriptor(&config)).into_request().unwrap();
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri(), "https://as.example/connect/token");
        assert_eq!(request.headers()[ACCEPT], "application/json");
        assert_eq!(
            request.headers()[CONTENT_TYPE],
            "application/x-www-form-urlencoded"
        );
        assert_eq!(
            decode_basic(&request.headers()[AUTHORIZATION]),
            "m2m:s+e%3Ac"
        );
        let body = std::str::from_utf8(request.body()).unwrap();
        assert!(
            body.starts_with("grant_type=client_credentials&scope=a+b&"),
            "{body}"
        );
        assert_eq!(
            form(&request),
            vec![
                ("grant_type".into(), "client_credentials".into()),
                ("scope".into(), "a b".into()),
                ("resource".into(), "https://api.example/v1?x=1".into()),
                ("resource".into(), "urn:example:other".into()),
                ("audience".into(), "aud one".into()),
                ("tenant".into(), "acme & co".into()),
            ]
        );
        assert!(!body.contains("client_secret"));
    }

    #[test]
    fn post_request_carries_credentials_in_body() {
        let config = client(ClientAuth::Post(ClientSecret::new("p&ss=w rd")));
        let request = build(&config, &descriptor(&config)).into_request().unwrap();
        assert!(request.headers().get(AUTHORIZATION).is_none());
        let fields = form(&request);
        assert!(fields.contains(&("client_id".into(), "m2m".into())));
        assert!(fields.contains(&("client_secret".into(), "p&ss=w rd".into())));
    }

    #[test]
    fn public_client_sends_only_its_id() {
        let config = ClientConfig::new("https://as.example/t", "pub", ClientAuth::None).unwrap();
        let key = KeyDescriptor::new(0, &Scope::default(), &[], None, &[], &KeyOverrides::new());
        let request = build(&config, &key).into_request().unwrap();
        assert_eq!(
            form(&request),
            vec![
                ("grant_type".into(), "client_credentials".into()),
                ("client_id".into(), "pub".into())
            ]
        );
    }

    #[test]
    fn debug_shows_no_credentials() {
        let config = client(ClientAuth::Post(ClientSecret::new("topsecret")));
        let request = build(&config, &descriptor(&config));
        let debug = format!("{request:?}");
        assert!(!debug.contains("topsecret"), "{debug}");
        assert!(debug.starts_with("TokenRequest"), "{debug}");
        let basic = client(ClientAuth::Basic(ClientSecret::new("topsecret")));
        let request = build(&basic, &descriptor(&basic)).into_request().unwrap();
        let debug = format!("{:?}", request.headers());
        assert!(!debug.contains(&BASE64.encode("m2m:topsecret")), "{debug}");
    }

    /// Signs what it is given as the bytes of its length, or fails.
    #[derive(Debug)]
    struct TestSigner(crate::jose::PublicJwk, bool);

    impl crate::jose::Signer for TestSigner {
        fn algorithm(&self) -> crate::jose::Algorithm {
            crate::jose::Algorithm::ES256
        }
        fn public_jwk(&self) -> &crate::jose::PublicJwk {
            &self.0
        }
        fn sign(&self, input: &[u8]) -> Result<Vec<u8>, SignError> {
            if self.1 {
                Ok(input.len().to_be_bytes().to_vec())
            } else {
                Err(SignError("the HSM said no".into()))
            }
        }
    }

    fn signer(works: bool) -> Arc<dyn crate::jose::Signer> {
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": "x", "y": "y"});
        let jwk = crate::jose::PublicJwk::new(jwk.as_object().unwrap()).unwrap();
        Arc::new(TestSigner(jwk, works))
    }

    fn claims_of(jws: &str) -> serde_json::Value {
        let claims = jws.split('.').nth(1).unwrap();
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap();
        serde_json::from_slice(&claims).unwrap()
    }

    #[test]
    fn jwts_are_built_by_the_core_and_signed_by_into_request() {
        let auth = ClientAuth::PrivateKeyJwt(PrivateKeyJwt::new(signer(true)));
        let config = client(auth).dpop(signer(true));
        let request = build(&config, &descriptor(&config));
        assert!(request.needs_signing());
        // Before signing: the form stops before the assertion; no proof yet.
        let unsigned = form(request.request());
        assert_eq!(unsigned.last().unwrap().0, "client_assertion_type");
        assert!(request.request().headers().get(dpop::DPOP).is_none());
        assert_eq!(request.assertion.as_ref().unwrap().claims()["jti"], "a-1");
        assert_eq!(request.proof.as_ref().unwrap().claims()["jti"], "p-1");

        let signed = request.into_request().unwrap();
        let fields = form(&signed);
        assert_eq!(fields[..unsigned.len()], unsigned[..]);
        assert_eq!(fields.len(), unsigned.len() + 1);
        let (name, assertion) = fields.last().unwrap();
        assert_eq!(name, "client_assertion");
        let claims = claims_of(assertion);
        assert_eq!(claims["jti"], "a-1");
        assert_eq!(claims["aud"], "https://as.example/connect/token");
        assert_eq!(claims["exp"], claims["iat"].as_u64().unwrap() + 60);
        let proof = claims_of(signed.headers()[dpop::DPOP].to_str().unwrap());
        assert_eq!(proof["jti"], "p-1");
        assert_eq!(proof["htm"], "POST");
        assert_eq!(proof["htu"], "https://as.example/connect/token");
    }

    #[test]
    fn a_request_that_signs_nothing_is_complete_before_into_request() {
        let config = client(ClientAuth::Post(ClientSecret::new("s")));
        let request = build(&config, &descriptor(&config));
        assert!(!request.needs_signing());
        let before = request.request().clone();
        let after = request.into_request().unwrap();
        assert_eq!(before.body(), after.body());
        assert_eq!(before.headers(), after.headers());
    }

    #[test]
    fn a_signing_failure_is_returned_by_into_request() {
        let auth = ClientAuth::PrivateKeyJwt(PrivateKeyJwt::new(signer(false)));
        let config = client(auth);
        let error = build(&config, &descriptor(&config))
            .into_request()
            .unwrap_err();
        assert_eq!(error, SignError("the HSM said no".into()));
        let config = client(ClientAuth::Post(ClientSecret::new("s"))).dpop(signer(false));
        let error = build(&config, &descriptor(&config))
            .into_request()
            .unwrap_err();
        assert_eq!(error, SignError("the HSM said no".into()));
    }
}
