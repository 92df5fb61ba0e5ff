//! JOSE pieces the core needs: signers, public JWKs and thumbprints, and
//! compact JWTs, for DPoP proofs (RFC 9449) and `private_key_jwt` client
//! assertions (RFC 7523).
//!
//! The core never holds key material in a particular library's types: it
//! signs through the [`Signer`] trait, so an HSM or a cloud KMS can stand in
//! for a local key. A default implementation on `ring` (ES256, EdDSA, RS256,
//! PS256; generated, JWK or PKCS#8 PEM keys) ships in `token-keeper-keys`.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// A JWS algorithm this crate can sign with (asymmetric only, as RFC 9449 requires).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// ECDSA P-256 with SHA-256 (the default).
    ES256,
    /// Ed25519.
    EdDSA,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (several providers require it for `private_key_jwt`).
    RS256,
    /// RSASSA-PSS with SHA-256.
    PS256,
}

impl Algorithm {
    /// The `alg` header value.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::ES256 => "ES256",
            Algorithm::EdDSA => "EdDSA",
            Algorithm::RS256 => "RS256",
            Algorithm::PS256 => "PS256",
        }
    }

    /// Parses an `alg` name (exact, as JOSE names are case-sensitive).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Some(match name {
            "ES256" => Algorithm::ES256,
            "EdDSA" => Algorithm::EdDSA,
            "RS256" => Algorithm::RS256,
            "PS256" => Algorithm::PS256,
            _ => return None,
        })
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a signature could not be made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignError(pub String);

impl fmt::Display for SignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "signing failed: {}", self.0)
    }
}

impl std::error::Error for SignError {}

/// A public key as a JWK: only public members, never private ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicJwk {
    members: Map<String, Value>,
    thumbprint: String,
}

/// The members RFC 7638 §3.2 hashes, per key type, in lexicographic order.
fn required_members(kty: &str) -> Option<&'static [&'static str]> {
    Some(match kty {
        "EC" => &["crv", "kty", "x", "y"],
        "OKP" => &["crv", "kty", "x"],
        "RSA" => &["e", "kty", "n"],
        _ => return None,
    })
}

impl PublicJwk {
    /// A public JWK from its members. Only the members RFC 7638 requires
    /// for its key type are kept (so no private member can slip through),
    /// and each must be a string.
    pub fn new(members: &Map<String, Value>) -> Result<PublicJwk, SignError> {
        let kty = members
            .get("kty")
            .and_then(Value::as_str)
            .ok_or_else(|| SignError("JWK has no kty".into()))?;
        let required = required_members(kty)
            .ok_or_else(|| SignError(format!("unsupported JWK kty {kty:?}")))?;
        let mut kept = Map::new();
        let mut canonical = String::from("{");
        for (i, name) in required.iter().enumerate() {
            let value = members.get(*name).and_then(Value::as_str).ok_or_else(|| {
                SignError(format!("JWK member {name} is missing or not a string"))
            })?;
            if i > 0 {
                canonical.push(',');
            }
            // serde_json escapes exactly as RFC 7638 asks (no whitespace, JSON string rules).
            canonical.push_str(&format!("{}:{}", Value::from(*name), Value::from(value)));
            kept.insert((*name).to_owned(), Value::from(value));
        }
        canonical.push('}');
        let thumbprint = B64URL.encode(Sha256::digest(canonical.as_bytes()));
        Ok(PublicJwk {
            members: kept,
            thumbprint,
        })
    }

    /// The JWK's members (public only).
    pub fn members(&self) -> &Map<String, Value> {
        &self.members
    }

    /// The RFC 7638 SHA-256 thumbprint, base64url without padding (the `jkt` of `cnf`).
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }
}

/// Signs JWTs. Implement it to keep the private key in an HSM or KMS.
pub trait Signer: Send + Sync + fmt::Debug {
    /// The algorithm of the signatures.
    fn algorithm(&self) -> Algorithm;

    /// The public key, for the DPoP proof's `jwk` header and thumbprints.
    fn public_jwk(&self) -> &PublicJwk;

    /// Signs `signing_input` (the ASCII `header.payload`), returning the raw
    /// JWS signature (for ES256 the 64-byte `r || s`, not DER).
    fn sign(&self, signing_input: &[u8]) -> Result<Vec<u8>, SignError>;
}

/// base64url without padding, as JOSE uses it.
pub fn base64url(bytes: &[u8]) -> String {
    B64URL.encode(bytes)
}

/// SHA-256 of `bytes`, base64url without padding (`ath`, thumbprints).
pub fn sha256_base64url(bytes: &[u8]) -> String {
    B64URL.encode(Sha256::digest(bytes))
}

/// Builds and signs a compact JWS: `base64url(header).base64url(claims).base64url(signature)`.
pub fn sign_jwt(signer: &dyn Signer, header: &Value, claims: &Value) -> Result<String, SignError> {
    let header = serde_json::to_vec(header).map_err(|e| SignError(e.to_string()))?;
    let claims = serde_json::to_vec(claims).map_err(|e| SignError(e.to_string()))?;
    let mut jws = format!("{}.{}", B64URL.encode(header), B64URL.encode(claims));
    let signature = signer.sign(jws.as_bytes())?;
    jws.push('.');
    jws.push_str(&B64URL.encode(signature));
    Ok(jws)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc_7638_example_thumbprint() {
        // RFC 7638 §3.1.
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        let jwk = PublicJwk::new(jwk.as_object().unwrap()).unwrap();
        assert_eq!(
            jwk.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        assert!(!jwk.members().contains_key("kid") && !jwk.members().contains_key("alg"));
    }

    #[test]
    fn private_members_are_dropped_and_bad_keys_refused() {
        let jwk = json!({"kty":"EC","crv":"P-256","x":"a","y":"b","d":"SECRET"});
        let public = PublicJwk::new(jwk.as_object().unwrap()).unwrap();
        assert!(!public.members().contains_key("d"));
        assert!(!format!("{public:?}").contains("SECRET"));
        for bad in [
            json!({"kty":"EC","crv":"P-256","x":"a"}),
            json!({"kty":"oct","k":"x"}),
            json!({"x":"a"}),
            json!({"kty":"OKP","crv":"Ed25519","x":5}),
        ] {
            assert!(PublicJwk::new(bad.as_object().unwrap()).is_err(), "{bad}");
        }
    }

    #[test]
    fn sha256_vectors() {
        // FIPS 180-2 "abc", and the RFC 9449 §7.1 ath example is checked in the dpop module.
        assert_eq!(
            sha256_base64url(b"abc"),
            "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"
        );
        assert_eq!(Algorithm::from_name("ES256"), Some(Algorithm::ES256));
        assert_eq!(Algorithm::from_name("es256"), None);
        assert_eq!(Algorithm::PS256.to_string(), "PS256");
    }
}
