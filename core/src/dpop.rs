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
//! port), with an expiry, and any response's `DPoP-Nonce` replaces it; a nonce
//! is never sent to another origin.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Method, Uri};
use serde_json::{json, Value};

use crate::jose::{sha256_base64url, sign_jwt, SignError, Signer};
use crate::time::Instant;

/// The `DPoP` request header.
pub const DPOP: &str = "dpop";
/// The `DPoP-Nonce` response header.
pub const DPOP_NONCE: &str = "dpop-nonce";

/// Longest nonce accepted from a server (a nonce is an opaque token; RFC 9449 §8.1).
const MAX_NONCE_LEN: usize = 512;
/// Most origins whose nonces are remembered; the oldest is forgotten first.
const MAX_ORIGINS: usize = 1024;

/// `scheme://host[:port]`, lowercased, default ports dropped: what nonces are kept per.
pub fn origin_of(uri: &Uri) -> Option<String> {
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let host = uri.host()?.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    Some(match uri.port_u16() {
        Some(port) if port != default => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// The `htu` claim: the URI without query and fragment (RFC 9449 §4.2).
pub fn htu_of(uri: &Uri) -> Option<String> {
    let origin = origin_of(uri)?;
    Some(format!("{origin}{}", uri.path()))
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

/// Builds a DPoP proof for a request.
pub fn proof(
    signer: &dyn Signer,
    method: &Method,
    uri: &Uri,
    wall: SystemTime,
    jti: &str,
    nonce: Option<&str>,
    access_token: Option<&str>,
) -> Result<HeaderValue, SignError> {
    let htu =
        htu_of(uri).ok_or_else(|| SignError("the request URI has no http(s) origin".into()))?;
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
    let jwt = sign_jwt(signer, &header, &claims)?;
    HeaderValue::from_str(&jwt)
        .map_err(|_| SignError("the proof is not a valid header value".into()))
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
