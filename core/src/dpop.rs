//! DPoP (RFC 9449): proofs and server nonces.
//!
//! A proof is a JWT signed by the client's DPoP key, sent in the `DPoP`
//! header of every token request and every API request:
//!
//! ```text
//! header { "typ": "dpop+jwt", "alg": "ES256", "jwk": { public members only } }
//! claims { "jti": unique, "htm": "GET", "htu": "https://api/path" (no query, no fragment),
//!          "iat": now, "nonce": last DPoP-Nonce from that origin (once known),
//!          "ath": base64url(SHA-256(access token)) (API requests only) }
//! ```
//!
//! Servers may demand a nonce: the token endpoint with `400
//! {"error":"use_dpop_nonce"}` and a resource server with `401` and
//! `WWW-Authenticate: DPoP error="use_dpop_nonce"`, each with a `DPoP-Nonce`
//! header. The [`NonceStore`] keeps the latest nonce per origin (scheme, host,
//! port: an [`Origin`], shown as [`origin_of`] shows it), with an expiry, and
//! any response's `DPoP-Nonce` replaces it; a nonce is never sent to another
//! origin. Origins and `htu` come from [`crate::url`], the crate's one URL
//! check: a URI with user information or an invalid port has neither, so no
//! proof is made for it and no nonce is kept for it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Method, Uri};
use serde_json::{json, Value};

use crate::jose::{sha256_base64url, sign_jwt, SignError, Signer, UnsignedJwt};
use crate::time::Instant;
use crate::url::{HttpUrl, Origin};

/// The `DPoP` request header.
pub const DPOP: &str = "dpop";
/// The `DPoP-Nonce` response header.
pub const DPOP_NONCE: &str = "dpop-nonce";

/// Longest nonce accepted from a server (a nonce is an opaque token; RFC 9449 §8.1).
const MAX_NONCE_LEN: usize = 512;
/// Most origins whose nonces are remembered; the oldest is forgotten first.
const MAX_ORIGINS: usize = 1024;

/// The [`Origin`] of `uri` as nonces are kept per: `scheme://host[:port]`,
/// lowercase, the default port left out, IPv6 bracketed. `None` unless `uri`
/// is an absolute `http(s)` URL that passes [`Origin::of`]'s checks (no user
/// information, a valid port).
pub fn origin_of(uri: &Uri) -> Option<String> {
    Origin::of(uri).ok().map(|origin| origin.to_string())
}

/// The `htu` claim ([`HttpUrl::htu`]): the URI without query and fragment
/// (RFC 9449 §4.2); `None` when [`origin_of`] is.
pub fn htu_of(uri: &Uri) -> Option<String> {
    HttpUrl::from_uri(uri.clone()).ok().map(|url| url.htu())
}

/// A server nonce, if the header holds a usable one (visible ASCII, bounded).
pub fn nonce_from_headers(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(DPOP_NONCE)?.to_str().ok()?.trim();
    let usable = !value.is_empty()
        && value.len() <= MAX_NONCE_LEN
        && value
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\');
    usable.then(|| value.to_owned())
}

/// The latest `DPoP-Nonce` per origin, each with an expiry.
#[derive(Clone, Debug, Default)]
pub struct NonceStore {
    nonces: HashMap<String, (String, Instant)>,
}

impl NonceStore {
    /// Remembers `nonce` for `origin` until `now + lifetime`.
    pub fn store(&mut self, origin: String, nonce: String, now: Instant, lifetime: Duration) {
        if self.nonces.len() >= MAX_ORIGINS && !self.nonces.contains_key(&origin) {
            if let Some(oldest) = self
                .nonces
                .iter()
                .min_by_key(|(_, (_, until))| *until)
                .map(|(o, _)| o.clone())
            {
                self.nonces.remove(&oldest);
            }
        }
        self.nonces
            .insert(origin, (nonce, now.saturating_add(lifetime)));
    }

    /// The nonce for `origin`, unless it has expired.
    pub fn get(&self, origin: &str, now: Instant) -> Option<&str> {
        self.nonces
            .get(origin)
            .filter(|(_, until)| now < *until)
            .map(|(nonce, _)| nonce.as_str())
    }

    /// Remembers the nonce a response carries, if any, for the origin of `uri`.
    /// Returns whether one was stored.
    pub fn update_from(
        &mut self,
        uri: &Uri,
        headers: &HeaderMap,
        now: Instant,
        lifetime: Duration,
    ) -> bool {
        match (origin_of(uri), nonce_from_headers(headers)) {
            (Some(origin), Some(nonce)) => {
                self.store(origin, nonce, now, lifetime);
                true
            }
            _ => false,
        }
    }
}

/// Seconds since the Unix epoch, for `iat`/`exp` (0 before 1970).
pub(crate) fn unix_seconds(wall: SystemTime) -> u64 {
    wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Builds and signs a DPoP proof for a request, at once.
///
/// The core itself never signs: it hands out [`unsigned_proof`]s, signed by
/// the driver after the core's lock is released. This is for callers that
/// hold no lock (tests, tools).
pub fn proof(
    signer: &dyn Signer,
    method: &Method,
    uri: &Uri,
    wall: SystemTime,
    jti: &str,
    nonce: Option<&str>,
    access_token: Option<&str>,
) -> Result<HeaderValue, SignError> {
    let (header, claims) = proof_parts(signer, method, uri, wall, jti, nonce, access_token)?;
    let jwt = sign_jwt(signer, &header, &claims)?;
    HeaderValue::from_str(&jwt)
        .map_err(|_| SignError("the proof is not a valid header value".into()))
}

/// A DPoP proof for a request, to sign later ([`UnsignedJwt::sign_header_value`]
/// gives the `DPoP` header). Fails, without signing, when `uri` has no
/// `http(s)` origin (so no `htu`).
pub fn unsigned_proof(
    signer: &Arc<dyn Signer>,
    method: &Method,
    uri: &Uri,
    wall: SystemTime,
    jti: &str,
    nonce: Option<&str>,
    access_token: Option<&str>,
) -> Result<UnsignedJwt, SignError> {
    let (header, claims) =
        proof_parts(signer.as_ref(), method, uri, wall, jti, nonce, access_token)?;
    Ok(UnsignedJwt::new(Arc::clone(signer), header, claims))
}

/// The header and claims of a proof (RFC 9449 §4.2).
fn proof_parts(
    signer: &dyn Signer,
    method: &Method,
    uri: &Uri,
    wall: SystemTime,
    jti: &str,
    nonce: Option<&str>,
    access_token: Option<&str>,
) -> Result<(Value, Value), SignError> {
    let htu = HttpUrl::from_uri(uri.clone())
        .map_err(|error| SignError(format!("the request URI has no http(s) origin: {error}")))?
        .htu();
    let header = json!({
        "typ": "dpop+jwt",
        "alg": signer.algorithm().name(),
        "jwk": Value::Object(signer.public_jwk().members().clone()),
    });
    let mut claims = json!({
        "jti": jti,
        "htm": method.as_str(),
        "htu": htu,
        "iat": unix_seconds(wall),
    });
    if let Some(nonce) = nonce {
        claims["nonce"] = Value::from(nonce);
    }
    if let Some(token) = access_token {
        claims["ath"] = Value::from(sha256_base64url(token.as_bytes()));
    }
    Ok((header, claims))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_and_htu() {
        let uri: Uri = "HTTPS://API.Example.com:443/a/b?q=1".parse().unwrap();
        assert_eq!(origin_of(&uri).unwrap(), "https://api.example.com");
        assert_eq!(htu_of(&uri).unwrap(), "https://api.example.com/a/b");
        let uri: Uri = "http://127.0.0.1:8080/token".parse().unwrap();
        assert_eq!(origin_of(&uri).unwrap(), "http://127.0.0.1:8080");
        assert!(origin_of(&"/relative".parse().unwrap()).is_none());
        let uri: Uri = "http://[::1]:8080/t?x".parse().unwrap();
        assert_eq!(origin_of(&uri).unwrap(), "http://[::1]:8080");
        assert_eq!(htu_of(&uri).unwrap(), "http://[::1]:8080/t");
        let uri: Uri = "https://[2001:DB8::1]:443".parse().unwrap();
        assert_eq!(origin_of(&uri).unwrap(), "https://[2001:db8::1]");
        assert_eq!(htu_of(&uri).unwrap(), "https://[2001:db8::1]/");
    }

    #[test]
    fn no_origin_for_urls_the_shared_rules_refuse() {
        // Before, user information was dropped and `:99999` read as the
        // default port, so a nonce from one server was keyed to another
        // origin, and `htu` named a port the request never went to.
        for text in [
            "https://user:pw@api.example/x",
            "https://api.example:99999/x",
            "https://api.example:0/x",
            "https://api.example:x/x",
            "ftp://api.example/x",
            "https://:443/x",
        ] {
            let uri: Uri = text.parse().unwrap();
            assert_eq!(origin_of(&uri), None, "{text}");
            assert_eq!(htu_of(&uri), None, "{text}");
            let mut store = NonceStore::default();
            let mut headers = HeaderMap::new();
            headers.insert(DPOP_NONCE, HeaderValue::from_static("n-1"));
            assert!(
                !store.update_from(
                    &uri,
                    &headers,
                    Instant::from_secs(0),
                    Duration::from_secs(9)
                ),
                "{text}"
            );
            assert_eq!(
                store.get("https://api.example", Instant::from_secs(1)),
                None,
                "{text}"
            );
        }
    }

    #[derive(Debug)]
    struct FakeSigner(crate::jose::PublicJwk);

    impl Signer for FakeSigner {
        fn algorithm(&self) -> crate::jose::Algorithm {
            crate::jose::Algorithm::ES256
        }
        fn public_jwk(&self) -> &crate::jose::PublicJwk {
            &self.0
        }
        fn sign(&self, input: &[u8]) -> Result<Vec<u8>, SignError> {
            Ok(sha256_base64url(input).into_bytes())
        }
    }

    /// The claims of a proof for `uri`, or why none was made.
    fn proof_claims(uri: &str) -> Result<Value, SignError> {
        use base64::Engine as _;
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": "x", "y": "y"});
        let signer: Arc<dyn Signer> = Arc::new(FakeSigner(
            crate::jose::PublicJwk::new(jwk.as_object().unwrap()).unwrap(),
        ));
        let uri: Uri = uri.parse().unwrap();
        let wall = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let unsigned = unsigned_proof(&signer, &Method::GET, &uri, wall, "j-1", None, None)?;
        let header = unsigned.sign_header_value()?;
        // Signed later or at once, the same proof.
        assert_eq!(
            header,
            proof(signer.as_ref(), &Method::GET, &uri, wall, "j-1", None, None)?
        );
        let claims = header
            .to_str()
            .unwrap()
            .split('.')
            .nth(1)
            .unwrap()
            .to_owned();
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap();
        Ok(serde_json::from_slice(&claims).unwrap())
    }

    #[test]
    fn proofs_name_the_htu_of_the_shared_url_type() {
        for (uri, htu) in [
            (
                "HTTPS://API.Example.com:443/a/b?q=1",
                "https://api.example.com/a/b",
            ),
            ("http://[::1]:8080/token", "http://[::1]:8080/token"),
            ("https://api.example.com", "https://api.example.com/"),
        ] {
            assert_eq!(proof_claims(uri).unwrap()["htu"], htu, "{uri}");
        }
        // Refused now (before: a proof for the default port, user
        // information dropped); the error never shows the password.
        for (uri, why) in [
            ("https://api.example:99999/x", "invalid port"),
            ("https://user:pw@api.example/x", "user information"),
            ("ftp://api.example/x", "http or https"),
        ] {
            let error = proof_claims(uri).unwrap_err().to_string();
            assert!(error.contains("no http(s) origin"), "{uri}: {error}");
            assert!(error.contains(why), "{uri}: {error}");
            assert!(!error.contains("pw"), "{uri}: {error}");
        }
    }

    #[test]
    fn ath_matches_rfc_9449_example() {
        // RFC 9449 §7.1: the access token and its ath.
        let token = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU";
        assert_eq!(
            sha256_base64url(token.as_bytes()),
            "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
        );
    }

    #[test]
    fn nonces_are_kept_per_origin_with_expiry() {
        let mut store = NonceStore::default();
        let a: Uri = "https://a.example/x".parse().unwrap();
        let b: Uri = "https://b.example/x".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(DPOP_NONCE, HeaderValue::from_static("n-1"));
        assert!(store.update_from(&a, &headers, Instant::from_secs(0), Duration::from_secs(10)));
        assert_eq!(
            store.get("https://a.example", Instant::from_secs(5)),
            Some("n-1")
        );
        assert_eq!(store.get("https://b.example", Instant::from_secs(5)), None);
        assert_eq!(
            store.get("https://a.example", Instant::from_secs(10)),
            None,
            "expired"
        );
        assert!(!store.update_from(
            &b,
            &HeaderMap::new(),
            Instant::from_secs(0),
            Duration::from_secs(10)
        ));
        for bad in ["", "has space", "quo\"te"] {
            let mut h = HeaderMap::new();
            h.insert(DPOP_NONCE, HeaderValue::from_str(bad).unwrap());
            assert!(nonce_from_headers(&h).is_none(), "{bad:?}");
        }
        let mut h = HeaderMap::new();
        h.insert(DPOP_NONCE, HeaderValue::from_str(&"n".repeat(600)).unwrap());
        assert!(nonce_from_headers(&h).is_none());
    }

    #[test]
    fn the_store_is_bounded() {
        let mut store = NonceStore::default();
        for i in 0..(MAX_ORIGINS + 10) {
            store.store(
                format!("https://o{i}.example"),
                "n".into(),
                Instant::from_secs(i as u64),
                Duration::from_secs(60),
            );
        }
        assert_eq!(store.nonces.len(), MAX_ORIGINS);
        assert!(
            store
                .get("https://o0.example", Instant::from_secs(1))
                .is_none(),
            "oldest forgotten"
        );
    }
}
