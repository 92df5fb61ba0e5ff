//! JOSE pieces the core needs: signers, public JWKs and thumbprints, and
//! compact JWTs, for DPoP proofs (RFC 9449) and `private_key_jwt` client
//! assertions (RFC 7523).
//!
//! The core never holds key material in a particular library's types: it
//! signs through the [`Signer`] trait, so an HSM or a cloud KMS can stand in
//! for a local key. A default implementation on `ring` (ES256, EdDSA, RS256,
//! PS256; generated, JWK or PKCS#8 PEM keys) ships in `token-keeper-keys`.

use std::fmt;
use std::sync::Arc;

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
///
/// [`Signer::sign`] may take its time (a remote KMS): drivers call it with
/// no lock held, on a thread of their own for token requests. The getters
/// ([`Signer::algorithm`], [`Signer::public_jwk`]) are read while the core
/// builds a JWT, under the driver's lock: answer them from memory, never
/// block in them.
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

/// A JWT the core built but did not sign: its header and claims are final
/// (`jti`, `iat`, nonce, `htu`, `ath`, `aud`, `exp` drawn or decided by the
/// core), the signature is left to the caller, which makes it with
/// [`UnsignedJwt::sign`] after releasing whatever lock guards the core: a
/// [`Signer`] backed by an HSM or a KMS may take seconds.
///
/// Owned and `Send`: it can be carried to another thread and signed there.
/// Signing consumes it, so each `jti` is signed at most once.
pub struct UnsignedJwt {
    signer: Arc<dyn Signer>,
    header: Value,
    claims: Value,
}

impl UnsignedJwt {
    /// A JWT with this header and these claims, to sign with `signer`.
    pub fn new(signer: Arc<dyn Signer>, header: Value, claims: Value) -> UnsignedJwt {
        UnsignedJwt {
            signer,
            header,
            claims,
        }
    }

    /// The JOSE header.
    pub fn header(&self) -> &Value {
        &self.header
    }

    /// The claims.
    pub fn claims(&self) -> &Value {
        &self.claims
    }

    /// Signs it: the compact JWS, through [`Signer::sign`] (see [`sign_jwt`]).
    /// May block as long as the signer does: never call it under a lock
    /// others wait for.
    pub fn sign(self) -> Result<String, SignError> {
        sign_jwt(self.signer.as_ref(), &self.header, &self.claims)
    }

    /// [`UnsignedJwt::sign`], as a header value (the `DPoP` header).
    pub fn sign_header_value(self) -> Result<http::HeaderValue, SignError> {
        let jws = self.sign()?;
        let mut value = http::HeaderValue::from_str(&jws)
            .map_err(|_| SignError("the JWS is not a valid header value".into()))?;
        // A proof is a credential for its request: kept out of `Debug` output.
        value.set_sensitive(true);
        Ok(value)
    }
}

impl fmt::Debug for UnsignedJwt {
    // Terse: the kind of JWT, not its claims.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let member = |name: &str| self.header.get(name).and_then(Value::as_str);
        f.debug_struct("UnsignedJwt")
            .field("alg", &member("alg"))
            .field("typ", &member("typ"))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug)]
    struct Echo(PublicJwk);

    impl Signer for Echo {
        fn algorithm(&self) -> Algorithm {
            Algorithm::ES256
        }
        fn public_jwk(&self) -> &PublicJwk {
            &self.0
        }
        fn sign(&self, input: &[u8]) -> Result<Vec<u8>, SignError> {
            Ok(input.len().to_be_bytes().to_vec())
        }
    }

    #[test]
    fn an_unsigned_jwt_signs_as_sign_jwt_does_and_shows_no_claims() {
        fn send<T: Send + 'static>(value: T) -> T {
            value
        }
        let jwk = json!({"kty":"EC","crv":"P-256","x":"a","y":"b"});
        let signer: Arc<dyn Signer> =
            Arc::new(Echo(PublicJwk::new(jwk.as_object().unwrap()).unwrap()));
        let header = json!({"alg": "ES256", "typ": "dpop+jwt"});
        let claims = json!({"jti": "j-1", "htu": "https://api.example/secretive"});
        let unsigned = send(UnsignedJwt::new(
            Arc::clone(&signer),
            header.clone(),
            claims.clone(),
        ));
        assert_eq!(unsigned.claims()["jti"], "j-1");
        let debug = format!("{unsigned:?}");
        assert!(
            debug.contains("dpop+jwt") && !debug.contains("secretive"),
            "{debug}"
        );
        assert_eq!(
            unsigned.sign().unwrap(),
            sign_jwt(signer.as_ref(), &header, &claims).unwrap()
        );
    }

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
