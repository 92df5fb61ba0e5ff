//! # token-keeper-keys: private keys on `ring`
//!
//! Private keys for DPoP proofs (RFC 9449) and `private_key_jwt` client
//! assertions (RFC 7523), signing with `ring`. A crate of its own, like
//! rustls' crypto providers: the core and the driver need only the
//! [`Signer`] trait, so an application that keeps its keys in an HSM or a
//! KMS implements that trait and does without this crate.
//!
//! [`PrivateKey`] is the default [`Signer`] of the
//! [`token_keeper`] core. It signs ES256 (P-256, the fixed 64-byte `r || s`
//! form JOSE wants), EdDSA (Ed25519), RS256 and PS256, and comes from:
//!
//! - [`PrivateKey::generate`]: a fresh ephemeral key (ES256 or EdDSA), the
//!   usual choice for a DPoP key that lives as long as the process;
//! - [`PrivateKey::generate_pem`]: the same, plus its PKCS#8 PEM text to
//!   store, for a key that outlives the process (reload it with
//!   [`PrivateKey::from_file`]);
//! - [`PrivateKey::from_pem`]: an unencrypted PKCS#8 `-----BEGIN PRIVATE
//!   KEY-----` (EC P-256, Ed25519 or RSA);
//! - [`PrivateKey::from_jwk`]: a private JWK (`EC`/`P-256`, `OKP`/`Ed25519` or
//!   `RSA`);
//! - [`PrivateKey::from_file`]: either of those, told apart by the content.
//!
//! The public JWK is derived from the key pair itself (never copied from the
//! input) and built by [`PublicJwk::new`], so its RFC 7638 thumbprint is the
//! core's. Key material read or decoded on the way in (file bytes, DER,
//! JWK private members) is held in [`Zeroizing`] buffers and wiped when they
//! drop; `PrivateKey` keeps no copy of its own, so after loading the only
//! copy is inside `ring`'s key pair. `ring` 0.17 does not wipe its key pairs
//! (nor the PKCS#8 document of a generated key) on drop, and the PEM reader
//! (below) does not wipe the buffer it gathers a block's base64 text in;
//! neither can be fixed from outside without `unsafe`. A [`KeyError`] never
//! contains key material, and `Debug` of a key shows its algorithm and
//! thumbprint only.
//!
//! # Reading PEM
//!
//! PEM text is read by the PEM reader of `rustls-pki-types`
//! ([`rustls_pki_types::pem`], the crate rustls reads certificates with):
//! one pass over the lines, so time and memory stay linear in the input
//! whatever it holds, and blocks of labels it does not know are skipped.
//! (The hand-written reader it replaced reserved the whole input's length
//! for every `BEGIN` line: 1 MiB of empty blocks cost about 30 GiB of
//! allocations and 18 s.) The DER of the `PRIVATE KEY` block is handed over
//! and wiped here when done with. For the errors, the `BEGIN` lines are
//! looked at once more, holding only slices of the text, to say what the
//! text holds instead of a key (a SEC1, PKCS#1, encrypted or OpenSSH key,
//! or other labels). An error quotes no body line and at most three labels,
//! each cut to 40 characters with control characters escaped, so its text
//! stays under 300 characters whatever the input (`tests/pem_linear.rs`
//! checks both bounds).
//!
//! ```
//! use token_keeper::jose::{sign_jwt, Algorithm, Signer};
//! use token_keeper_keys::PrivateKey;
//!
//! let key = PrivateKey::generate(Algorithm::ES256)?;
//! let header = serde_json::json!({
//!     "typ": "dpop+jwt",
//!     "alg": key.algorithm().name(),
//!     "jwk": key.public_jwk().members(),
//! });
//! let claims = serde_json::json!({"htm": "POST", "htu": "https://as.example/token"});
//! let proof = sign_jwt(&key, &header, &claims)?;
//! assert_eq!(proof.split('.').count(), 3);
//! println!("jkt = {}", key.public_jwk().thumbprint());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Keys in other shapes convert with OpenSSL: SEC1 (`BEGIN EC PRIVATE KEY`),
//! PKCS#1 (`BEGIN RSA PRIVATE KEY`) and encrypted keys all become PKCS#8 with
//! `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pkcs8.pem`.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::rsa::{KeyPairComponents, PublicKeyComponents};
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaEncoding, RsaKeyPair};
use rustls_pki_types::pem::{self, PemObject as _, SectionKind};
use serde_json::{Map, Value};
use token_keeper::jose::{Algorithm, PublicJwk, SignError, Signer};
use zeroize::Zeroizing;

/// How to convert a key that is not unencrypted PKCS#8.
const CONVERT_HINT: &str = "convert it to PKCS#8 with \
     `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pkcs8.pem`";

/// The largest key file read: an RSA-4096 PEM is about 3.3 KB, a JWK of
/// one about 3.2 KB.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// A private key held in memory, signing with `ring`. Implements
/// [`token_keeper::jose::Signer`].
///
/// `Debug` is redacted: it shows the algorithm and the RFC 7638 thumbprint
/// only. Cloning is not offered (ring's key pairs cannot be cloned); share a
/// key as `Arc<PrivateKey>` or `Arc<dyn Signer>`.
pub struct PrivateKey {
    alg: Algorithm,
    pair: Pair,
    public: PublicJwk,
    rng: SystemRandom,
}

/// The ring key pair, with the RSA padding the algorithm asks for.
enum Pair {
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
    Rsa(RsaKeyPair, &'static dyn RsaEncoding),
}

/// The kinds of key this module reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    EcP256,
    Ed25519,
    Rsa,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::EcP256 => "an EC P-256 key",
            Kind::Ed25519 => "an Ed25519 key",
            Kind::Rsa => "an RSA key",
        }
    }

    fn default_alg(self) -> Algorithm {
        match self {
            Kind::EcP256 => Algorithm::ES256,
            Kind::Ed25519 => Algorithm::EdDSA,
            Kind::Rsa => Algorithm::RS256,
        }
    }

    fn signs(self, alg: Algorithm) -> bool {
        matches!(
            (self, alg),
            (Kind::EcP256, Algorithm::ES256)
                | (Kind::Ed25519, Algorithm::EdDSA)
                | (Kind::Rsa, Algorithm::RS256 | Algorithm::PS256)
        )
    }

    /// The algorithm to sign with: `requested`, if this kind of key can, or
    /// the kind's default.
    fn choose(self, requested: Option<Algorithm>) -> Result<Algorithm, KeyError> {
        match requested {
            None => Ok(self.default_alg()),
            Some(alg) if self.signs(alg) => Ok(alg),
            Some(alg) => Err(KeyError::new(format!(
                "{alg} was asked for, but this is {}, which signs {}",
                self.describe(),
                match self {
                    Kind::EcP256 => "ES256 only",
                    Kind::Ed25519 => "EdDSA only",
                    Kind::Rsa => "RS256 or PS256",
                }
            ))),
        }
    }
}

impl PrivateKey {
    /// Generates a fresh ephemeral key: ES256 (P-256) or EdDSA (Ed25519).
    ///
    /// `ring` cannot generate RSA keys, so RS256 and PS256 return an error
    /// that says how to make one with OpenSSL.
    pub fn generate(alg: Algorithm) -> Result<PrivateKey, KeyError> {
        let pkcs8 = generate_pkcs8(alg)?;
        PrivateKey::from_pkcs8(&pkcs8, Some(alg))
    }

    /// Generates a fresh key, as [`PrivateKey::generate`] does, and returns it
    /// with its unencrypted PKCS#8 PEM text (`-----BEGIN PRIVATE KEY-----`,
    /// base64 in 64-column lines), so that the key can be stored and outlive
    /// the process.
    ///
    /// [`PrivateKey::from_pem`] and [`PrivateKey::from_file`] read the text
    /// back to the same key: the same public JWK, so the same RFC 7638
    /// thumbprint. That is how a DPoP key survives a restart, and with it the
    /// tokens bound to it (`cnf.jkt`) and any registration of its thumbprint.
    /// OpenSSL reads the text too: Ed25519 keys are written in the PKCS#8 v1
    /// form OpenSSL itself writes (the seed only; before 3.5 OpenSSL refuses
    /// the v2 form `ring` generates).
    ///
    /// The PEM text is the private key: it comes in a [`Zeroizing`] buffer,
    /// wiped when it drops, and so is every buffer it was built in. Write it
    /// where only its owner can read it (mode `0600`). RS256 and PS256 are
    /// refused as by [`PrivateKey::generate`].
    ///
    /// ```
    /// use token_keeper::jose::{Algorithm, Signer};
    /// use token_keeper_keys::PrivateKey;
    ///
    /// let (key, pem) = PrivateKey::generate_pem(Algorithm::ES256)?;
    /// assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    ///
    /// // Store it (readable by its owner only, in a real application) ...
    /// let path = std::env::temp_dir().join(format!("dpop-doc-{}.pem", std::process::id()));
    /// std::fs::write(&path, pem.as_bytes())?;
    /// drop(pem); // wipes the text in memory
    ///
    /// // ... and after a restart, load it: the same key, the same thumbprint.
    /// let reloaded = PrivateKey::from_file(&path, None)?;
    /// assert_eq!(reloaded.public_jwk().thumbprint(), key.public_jwk().thumbprint());
    /// assert_eq!(reloaded.algorithm(), Algorithm::ES256);
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn generate_pem(alg: Algorithm) -> Result<(PrivateKey, Zeroizing<String>), KeyError> {
        let pkcs8 = generate_pkcs8(alg)?;
        let key = PrivateKey::from_pkcs8(&pkcs8, Some(alg))?;
        let stored = match alg {
            // Should ring's document ever differ from the v2 form expected,
            // it is handed out as is (this module reads either form).
            Algorithm::EdDSA => ed25519_pkcs8_v1(&pkcs8).unwrap_or(pkcs8),
            _ => pkcs8,
        };
        // What is handed out must load back to this very key.
        let reloaded = PrivateKey::from_pkcs8(&stored, Some(alg))?;
        if reloaded.public != key.public {
            return Err(KeyError::new(
                "the generated key's PKCS#8 document does not load back to the same key",
            ));
        }
        Ok((key, pkcs8_pem(&stored)))
    }

    /// Loads an unencrypted PKCS#8 PEM key (`-----BEGIN PRIVATE KEY-----`):
    /// EC P-256, Ed25519 or RSA (2048 to 8192 bits).
    ///
    /// With `alg` `None` the key signs ES256 (EC), EdDSA (Ed25519) or RS256
    /// (RSA); `Some(PS256)` picks RSA-PSS for an RSA key. An `alg` the key
    /// cannot sign with is an error. SEC1 (`BEGIN EC PRIVATE KEY`), PKCS#1
    /// (`BEGIN RSA PRIVATE KEY`) and encrypted keys are refused with the
    /// OpenSSL command that converts them. Text around the block (such as
    /// OpenSSL's `Bag Attributes`) is ignored, and so are blocks of other
    /// labels, but a `-----BEGIN` line must start its line, and the body of
    /// a block whose label `rustls-pki-types` knows (`CERTIFICATE`,
    /// `PUBLIC KEY`, ...) must be valid base64 too. See [Reading
    /// PEM](self#reading-pem).
    pub fn from_pem(pem: &str, alg: Option<Algorithm>) -> Result<PrivateKey, KeyError> {
        let der = pkcs8_section(pem)?;
        PrivateKey::from_pkcs8(&der, alg)
    }

    /// Loads a private JWK (RFC 7517/7518/8037): `EC` with `crv` `P-256`
    /// (`d`, `x`, `y`), `OKP` with `crv` `Ed25519` (`d`, `x`), or `RSA` (`n`,
    /// `e`, `d`, `p`, `q`, `dp`, `dq`, `qi`).
    ///
    /// The algorithm is the JWK's `alg` member if it has one (then `alg`, if
    /// given, must agree), else `alg`, else the key type's default as for
    /// [`PrivateKey::from_pem`]. The public members derived from the private
    /// key must equal the JWK's `x`/`y` (or `n`/`e`), so a JWK whose halves
    /// belong to different keys is refused. A JWK marked `"use": "enc"`, or
    /// whose `key_ops` lacks `"sign"`, is refused too.
    pub fn from_jwk(jwk: &str, alg: Option<Algorithm>) -> Result<PrivateKey, KeyError> {
        let value: Value = serde_json::from_str(jwk).map_err(|e| {
            KeyError::new(format!(
                "the JWK is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let Value::Object(mut members) = value else {
            return Err(KeyError::new("the JWK is not a JSON object"));
        };
        // Move the private members out at once, so they are wiped on drop.
        let private = PrivateMembers::take(&mut members)?;
        let kty = match members.get("kty") {
            Some(Value::String(kty)) => kty.as_str(),
            Some(_) => return Err(KeyError::new("the JWK's kty is not a string")),
            None if members.contains_key("keys") => {
                return Err(KeyError::new(
                    "this is a JWK Set; give a single JWK (one element of its \"keys\")",
                ))
            }
            None => return Err(KeyError::new("the JWK has no kty member")),
        };
        check_usage(&members)?;
        let kind = jwk_kind(kty, &members)?;
        let alg = jwk_algorithm(kind, &members, alg)?;
        let rng = SystemRandom::new();
        let (pair, given): (Pair, &[&str]) = match kind {
            Kind::EcP256 => {
                let x = public_bytes(&members, "EC", "x", Some(32))?;
                let y = public_bytes(&members, "EC", "y", Some(32))?;
                let short = private.bytes("EC", "d")?;
                if short.len() > 32 {
                    return Err(KeyError::new("the EC JWK's d is longer than 32 bytes"));
                }
                // RFC 7518 §6.2.2.1 wants the full 32 bytes; some encoders drop leading zeros.
                let mut d = Zeroizing::new([0u8; 32]);
                d[32 - short.len()..].copy_from_slice(&short);
                let mut point = Vec::with_capacity(65);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                let pair = EcdsaKeyPair::from_private_key_and_public_key(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    &d[..],
                    &point,
                    &rng,
                )
                .map_err(|e| rejected_jwk(kind, e))?;
                (Pair::Ec(pair), &["x", "y"])
            }
            Kind::Ed25519 => {
                let x = public_bytes(&members, "OKP", "x", Some(32))?;
                let d = private.bytes("OKP", "d")?;
                if d.len() != 32 {
                    return Err(KeyError::new("the Ed25519 JWK's d is not 32 bytes"));
                }
                let pair = Ed25519KeyPair::from_seed_and_public_key(&d, &x)
                    .map_err(|e| rejected_jwk(kind, e))?;
                (Pair::Ed(pair), &["x"])
            }
            Kind::Rsa => {
                if private.multi_prime {
                    return Err(KeyError::new(
                        "multi-prime RSA keys (JWK \"oth\") are not supported",
                    ));
                }
                let n = public_bytes(&members, "RSA", "n", None)?;
                let e = public_bytes(&members, "RSA", "e", None)?;
                if n[0] == 0 || e[0] == 0 {
                    return Err(KeyError::new(
                        "the RSA JWK's n or e starts with a zero byte, which RFC 7518 §6.3.1 \
                         forbids (and which would change its thumbprint)",
                    ));
                }
                let components = KeyPairComponents {
                    public_key: PublicKeyComponents { n, e },
                    d: private.bytes("RSA", "d")?,
                    p: private.bytes("RSA", "p")?,
                    q: private.bytes("RSA", "q")?,
                    dP: private.bytes("RSA", "dp")?,
                    dQ: private.bytes("RSA", "dq")?,
                    qInv: private.bytes("RSA", "qi")?,
                };
                let pair =
                    RsaKeyPair::from_components(&components).map_err(|e| rejected_jwk(kind, e))?;
                (Pair::Rsa(pair, rsa_padding(alg)), &["n", "e"])
            }
        };
        let key = PrivateKey::assemble(alg, pair, rng)?;
        // ring checked the halves belong together; check the JWK's own
        // spelling of the public members too, since others compute the
        // thumbprint from it.
        for name in given {
            if members.get(*name) != key.public.members().get(*name) {
                return Err(KeyError::new(format!(
                    "the {kty} JWK's public members ({}) do not match its private key",
                    given.join(", ")
                )));
            }
        }
        Ok(key)
    }

    /// Loads a key file: a PKCS#8 PEM key ([`PrivateKey::from_pem`]) or a
    /// private JWK ([`PrivateKey::from_jwk`]), told apart by the content (a
    /// JSON object starts with `{`, PEM has a `-----BEGIN` line).
    ///
    /// Error messages name the path, never the key material.
    pub fn from_file(path: &Path, alg: Option<Algorithm>) -> Result<PrivateKey, KeyError> {
        use std::io::Read;
        let shown = path.display();
        let cannot =
            |e: std::io::Error| KeyError::new(format!("cannot read the key file {shown}: {e}"));
        // A regular file, read at most MAX_KEY_FILE bytes: `/dev/zero` would
        // take all memory, a FIFO would hang the caller.
        let file = std::fs::File::open(path).map_err(cannot)?;
        if !file.metadata().map_err(cannot)?.is_file() {
            return Err(KeyError::new(format!(
                "the key file {shown} is not a regular file"
            )));
        }
        let mut bytes = Zeroizing::new(Vec::new());
        file.take(MAX_KEY_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(cannot)?;
        if bytes.len() as u64 > MAX_KEY_FILE {
            return Err(KeyError::new(format!(
                "the key file {shown} is larger than {MAX_KEY_FILE} bytes: not a key"
            )));
        }
        let in_file = |e: KeyError| KeyError::new(format!("key file {shown}: {}", e.message()));
        let Ok(text) = std::str::from_utf8(&bytes) else {
            return Err(in_file(KeyError::new(if bytes.first() == Some(&0x30) {
                "this looks like binary DER; convert it to PEM with \
                 `openssl pkcs8 -topk8 -nocrypt -inform DER -in KEY.der -out KEY.pem`"
            } else {
                "not text: expected a PEM key or a JWK"
            })));
        };
        // A byte order mark (some Windows editors write one) is not JSON.
        let text = text.trim_start_matches('\u{feff}');
        if text.trim_start().starts_with('{') {
            PrivateKey::from_jwk(text, alg).map_err(in_file)
        } else if text.contains("-----BEGIN") {
            PrivateKey::from_pem(text, alg).map_err(in_file)
        } else {
            Err(in_file(KeyError::new(
                "neither a PEM key (no -----BEGIN line) nor a JWK (does not start with {)",
            )))
        }
    }

    /// A key from PKCS#8 DER.
    fn from_pkcs8(der: &[u8], alg: Option<Algorithm>) -> Result<PrivateKey, KeyError> {
        let kind = pkcs8_kind(der)?;
        let alg = kind.choose(alg)?;
        let rng = SystemRandom::new();
        let pair = match kind {
            Kind::EcP256 => Pair::Ec(
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
                    .map_err(|e| rejected_pkcs8(kind, e))?,
            ),
            // OpenSSL writes PKCS#8 v1 Ed25519 keys, without the public key;
            // v2 keys with one are checked for consistency.
            Kind::Ed25519 => Pair::Ed(
                Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                    .map_err(|e| rejected_pkcs8(kind, e))?,
            ),
            Kind::Rsa => Pair::Rsa(
                RsaKeyPair::from_pkcs8(der).map_err(|e| rejected_pkcs8(kind, e))?,
                rsa_padding(alg),
            ),
        };
        PrivateKey::assemble(alg, pair, rng)
    }

    /// Builds the public JWK from the key pair and puts the key together.
    fn assemble(alg: Algorithm, pair: Pair, rng: SystemRandom) -> Result<PrivateKey, KeyError> {
        let mut members = Map::new();
        match &pair {
            Pair::Ec(pair) => {
                // SEC1 uncompressed point: 0x04 || x || y.
                let point = pair.public_key().as_ref();
                if point.len() != 65 || point[0] != 0x04 {
                    return Err(KeyError::new("unexpected P-256 public key encoding"));
                }
                members.insert("kty".into(), "EC".into());
                members.insert("crv".into(), "P-256".into());
                members.insert("x".into(), B64URL.encode(&point[1..33]).into());
                members.insert("y".into(), B64URL.encode(&point[33..]).into());
            }
            Pair::Ed(pair) => {
                members.insert("kty".into(), "OKP".into());
                members.insert("crv".into(), "Ed25519".into());
                members.insert("x".into(), B64URL.encode(pair.public_key().as_ref()).into());
            }
            Pair::Rsa(pair, _) => {
                // Big-endian without leading zeros, as RFC 7518 §6.3.1 wants.
                let public = PublicKeyComponents::<Vec<u8>>::from(pair.public());
                members.insert("kty".into(), "RSA".into());
                members.insert("n".into(), B64URL.encode(&public.n).into());
                members.insert("e".into(), B64URL.encode(&public.e).into());
            }
        }
        let public = PublicJwk::new(&members)
            .map_err(|e| KeyError::new(format!("cannot build the public JWK: {}", e.0)))?;
        let key = PrivateKey {
            alg,
            pair,
            public,
            rng,
        };
        // ring checks an RSA key's CRT members (dp, dq, qi) only loosely when
        // loading, and then refuses to sign with a key whose members do not
        // match: find out now, at configuration time, not at the first request.
        if matches!(key.pair, Pair::Rsa(..)) && key.sign(b"token-keeper key check").is_err() {
            return Err(KeyError::new(
                "the RSA key's CRT members (dp, dq, qi) do not match its primes; the key is corrupt",
            ));
        }
        Ok(key)
    }
}

impl Signer for PrivateKey {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }

    fn public_jwk(&self) -> &PublicJwk {
        &self.public
    }

    fn sign(&self, signing_input: &[u8]) -> Result<Vec<u8>, SignError> {
        match &self.pair {
            Pair::Ec(pair) => pair
                .sign(&self.rng, signing_input)
                .map(|signature| signature.as_ref().to_vec())
                .map_err(|_| SignError("ECDSA P-256 signing failed".into())),
            Pair::Ed(pair) => Ok(pair.sign(signing_input).as_ref().to_vec()),
            Pair::Rsa(pair, padding) => {
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(*padding, &self.rng, signing_input, &mut signature)
                    .map_err(|_| SignError(format!("{} signing failed", self.alg)))?;
                Ok(signature)
            }
        }
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("alg", &self.alg)
            .field("thumbprint", &self.public.thumbprint())
            .finish_non_exhaustive()
    }
}

/// Why a key could not be loaded or generated. The message says what to do
/// and never contains key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError(String);

impl KeyError {
    fn new(message: impl Into<String>) -> KeyError {
        KeyError(message.into())
    }

    /// The message (the same text `Display` shows).
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

/// A fresh key pair as PKCS#8 DER.
fn generate_pkcs8(alg: Algorithm) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let rng = SystemRandom::new();
    let document = match alg {
        Algorithm::ES256 => {
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        }
        Algorithm::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng),
        Algorithm::RS256 | Algorithm::PS256 => {
            return Err(KeyError::new(format!(
                "cannot generate an RSA key for {alg} (ring does not generate RSA keys): \
                 create one with `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 \
                 -out key.pem` and load it with PrivateKey::from_file, or use ES256 or EdDSA"
            )))
        }
        other => return Err(KeyError::new(format!("cannot generate a key for {other}"))),
    }
    .map_err(|_| KeyError::new("the system random number generator failed"))?;
    Ok(Zeroizing::new(document.as_ref().to_vec()))
}

/// The PKCS#8 v1 form (RFC 8410 §7: the seed only) of ring's PKCS#8 v2
/// Ed25519 document (seed and public key, RFC 5958). OpenSSL writes v1, and
/// before 3.5 refuses v2; ring reads both (the public key is derived from
/// the seed). The seed is copied into a buffer that is wiped on drop.
/// `None` if `v2` is not in the form ring 0.17 generates.
fn ed25519_pkcs8_v1(v2: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    /// After the outer SEQUENCE's tag and length: INTEGER 1 (v2), the
    /// Ed25519 AlgorithmIdentifier, OCTET STRING { OCTET STRING (32 bytes) }.
    const V2_INNER_PREFIX: &[u8] = &[
        0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
    ];
    /// v1 up to the seed: SEQUENCE (46 bytes), INTEGER 0, then as above.
    const V1_PREFIX: &[u8] = &[
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let seed = match v2 {
        [0x30, len, rest @ ..] if usize::from(*len) == rest.len() => rest
            .strip_prefix(V2_INNER_PREFIX)
            .and_then(|rest| rest.get(..32)),
        _ => None,
    }?;
    let mut v1 = Zeroizing::new(Vec::with_capacity(V1_PREFIX.len() + seed.len()));
    v1.extend_from_slice(V1_PREFIX);
    v1.extend_from_slice(seed);
    Some(v1)
}

/// PKCS#8 DER as PEM text (RFC 7468: `PRIVATE KEY`, base64 in 64-column
/// lines). Both the base64 and the text are built in buffers reserved at
/// their final size, so they are never reallocated (which would leave
/// unwiped copies behind), and both are wiped when they drop.
fn pkcs8_pem(der: &[u8]) -> Zeroizing<String> {
    const BEGIN: &str = "-----BEGIN PRIVATE KEY-----\n";
    const END: &str = "-----END PRIVATE KEY-----\n";
    const COLUMNS: usize = 64;
    let encoded_len =
        base64::encoded_len(der.len(), true).expect("a PKCS#8 key is far below usize::MAX");
    let mut body = Zeroizing::new(vec![0u8; encoded_len]);
    let written = B64
        .encode_slice(der, &mut body[..])
        .expect("the buffer has the encoded length");
    debug_assert_eq!(written, encoded_len);
    let lines = encoded_len.div_ceil(COLUMNS);
    let pem_len = BEGIN.len() + encoded_len + lines + END.len();
    let mut pem = Zeroizing::new(String::with_capacity(pem_len));
    let reserved = pem.capacity();
    pem.push_str(BEGIN);
    for line in body.chunks(COLUMNS) {
        // Standard base64 is ASCII, so this never fails.
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str(END);
    debug_assert_eq!((pem.len(), pem.capacity()), (pem_len, reserved));
    pem
}

fn rsa_padding(alg: Algorithm) -> &'static dyn RsaEncoding {
    if alg == Algorithm::PS256 {
        &signature::RSA_PSS_SHA256
    } else {
        &signature::RSA_PKCS1_SHA256
    }
}

/// What ring said about a PKCS#8 key it refused (ring's reasons are fixed
/// words such as `InvalidEncoding`, never key bytes).
fn rejected_pkcs8(kind: Kind, e: ring::error::KeyRejected) -> KeyError {
    let hint = match e.to_string().as_str() {
        "TooSmall" | "TooLarge" => {
            ": RSA keys need a 2048- to 8192-bit modulus and an exponent of at least 65537"
        }
        "PublicKeyIsMissing" => {
            ": the EC key lacks its public key; re-export it with \
             `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pkcs8.pem`"
        }
        _ => "",
    };
    KeyError::new(format!(
        "the PKCS#8 PRIVATE KEY holds {}, but ring refused it ({e}){hint}",
        kind.describe()
    ))
}

/// What ring said about a JWK it refused.
fn rejected_jwk(kind: Kind, e: ring::error::KeyRejected) -> KeyError {
    let what = match e.to_string().as_str() {
        "InconsistentComponents" => "its public members do not match its private key",
        "TooSmall" | "TooLarge" => {
            "RSA keys need a 2048- to 8192-bit modulus and an exponent of at least 65537"
        }
        _ => "its members do not form a valid key",
    };
    KeyError::new(format!("the JWK is {}, but {what} ({e})", kind.describe()))
}

// ---- JWK members -----------------------------------------------------------

/// The kind of key a JWK's `kty` (and `crv`) name.
fn jwk_kind(kty: &str, members: &Map<String, Value>) -> Result<Kind, KeyError> {
    Ok(match kty {
        "EC" => match public_member(members, "EC", "crv")? {
            "P-256" => Kind::EcP256,
            crv => {
                return Err(KeyError::new(format!(
                    "EC curve {crv:?} is not supported: only P-256 (ES256)"
                )))
            }
        },
        "OKP" => match public_member(members, "OKP", "crv")? {
            "Ed25519" => Kind::Ed25519,
            "X25519" | "X448" => {
                return Err(KeyError::new(
                    "an OKP X25519/X448 key is for key agreement and cannot sign",
                ))
            }
            crv => {
                return Err(KeyError::new(format!(
                    "OKP curve {crv:?} is not supported: only Ed25519 (EdDSA)"
                )))
            }
        },
        "RSA" => Kind::Rsa,
        "oct" => {
            return Err(KeyError::new(
                "a symmetric (oct) JWK cannot sign DPoP proofs or private_key_jwt \
                 assertions: use an EC, OKP or RSA key",
            ))
        }
        other => {
            return Err(KeyError::new(format!(
                "JWK kty {other:?} is not supported: use EC (P-256), OKP (Ed25519) or RSA"
            )))
        }
    })
}

/// The algorithm for a JWK: its `alg` member, which `requested` must agree
/// with, else `requested`, else the kind's default.
fn jwk_algorithm(
    kind: Kind,
    members: &Map<String, Value>,
    requested: Option<Algorithm>,
) -> Result<Algorithm, KeyError> {
    Ok(match members.get("alg") {
        None => kind.choose(requested)?,
        Some(Value::String(name)) => {
            let named = Algorithm::from_name(name).ok_or_else(|| {
                KeyError::new(format!(
                    "the JWK's alg {name:?} is not supported (ES256, EdDSA, RS256, PS256)"
                ))
            })?;
            if let Some(requested) = requested.filter(|requested| *requested != named) {
                return Err(KeyError::new(format!(
                    "{requested} was asked for, but the JWK says \"alg\": \"{named}\""
                )));
            }
            kind.choose(Some(named)).map_err(|_| {
                KeyError::new(format!(
                    "the JWK says \"alg\": \"{named}\", but it is {}",
                    kind.describe()
                ))
            })?
        }
        Some(_) => return Err(KeyError::new("the JWK's alg is not a string")),
    })
}

/// The private members of a JWK, moved out of the parsed JSON so that they
/// are wiped when dropped.
struct PrivateMembers {
    taken: Vec<(&'static str, Zeroizing<String>)>,
    /// Whether the JWK had an `oth` member (a multi-prime RSA key).
    multi_prime: bool,
}

/// Zeroizes every string in a JSON value as it drops.
fn wipe(value: Value) {
    match value {
        Value::String(text) => drop(Zeroizing::new(text)),
        Value::Array(items) => items.into_iter().for_each(wipe),
        Value::Object(members) => members.into_iter().for_each(|(_, value)| wipe(value)),
        _ => {}
    }
}

impl PrivateMembers {
    const NAMES: [&'static str; 6] = ["d", "p", "q", "dp", "dq", "qi"];

    fn take(members: &mut Map<String, Value>) -> Result<PrivateMembers, KeyError> {
        let mut taken = Vec::new();
        let mut wrong_type = None;
        for name in Self::NAMES {
            match members.remove(name) {
                None => {}
                Some(Value::String(value)) => taken.push((name, Zeroizing::new(value))),
                Some(_) => wrong_type = wrong_type.or(Some(name)),
            }
        }
        // Other members that hold key material (RSA "oth" primes, an oct
        // key's "k") are wiped at once; "oth" is remembered to refuse the key.
        let multi_prime = members.contains_key("oth");
        for name in ["oth", "k"] {
            if let Some(value) = members.remove(name) {
                wipe(value);
            }
        }
        match wrong_type {
            Some(name) => Err(KeyError::new(format!(
                "the JWK member {name} is not a string"
            ))),
            None => Ok(PrivateMembers { taken, multi_prime }),
        }
    }

    /// The member decoded from base64url.
    fn bytes(&self, kty: &str, name: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let Some((_, value)) = self.taken.iter().find(|(n, _)| *n == name) else {
            return Err(KeyError::new(if name == "d" {
                format!("the {kty} JWK has no d member: it is a public key, and signing needs the private one")
            } else {
                format!("the {kty} JWK has no {name} member")
            }));
        };
        let mut decoded = Zeroizing::new(Vec::new());
        B64URL
            .decode_vec(value.as_bytes(), &mut decoded)
            .map_err(|_| {
                KeyError::new(format!("the JWK member {name} is not unpadded base64url"))
            })?;
        if decoded.is_empty() {
            return Err(KeyError::new(format!("the JWK member {name} is empty")));
        }
        Ok(decoded)
    }
}

fn public_member<'a>(
    members: &'a Map<String, Value>,
    kty: &str,
    name: &str,
) -> Result<&'a str, KeyError> {
    match members.get(name) {
        Some(Value::String(value)) => Ok(value),
        Some(_) => Err(KeyError::new(format!(
            "the JWK member {name} is not a string"
        ))),
        None => Err(KeyError::new(format!("the {kty} JWK has no {name} member"))),
    }
}

fn public_bytes(
    members: &Map<String, Value>,
    kty: &str,
    name: &str,
    len: Option<usize>,
) -> Result<Vec<u8>, KeyError> {
    let decoded = B64URL
        .decode(public_member(members, kty, name)?)
        .map_err(|_| KeyError::new(format!("the JWK member {name} is not unpadded base64url")))?;
    match len {
        Some(len) if decoded.len() != len => Err(KeyError::new(format!(
            "the {kty} JWK's {name} is {} bytes, not {len}",
            decoded.len()
        ))),
        None if decoded.is_empty() => Err(KeyError::new(format!("the JWK member {name} is empty"))),
        _ => Ok(decoded),
    }
}

/// Refuses JWKs marked for something other than signing (RFC 7517 §4.2, §4.3).
fn check_usage(members: &Map<String, Value>) -> Result<(), KeyError> {
    match members.get("use") {
        None => {}
        Some(Value::String(usage)) if usage == "sig" => {}
        Some(_) => return Err(KeyError::new("the JWK's \"use\" is not \"sig\"")),
    }
    match members.get("key_ops") {
        None => Ok(()),
        Some(Value::Array(ops)) if ops.iter().any(|op| op == "sign") => Ok(()),
        Some(_) => Err(KeyError::new(
            "the JWK's \"key_ops\" does not include \"sign\"",
        )),
    }
}

// ---- PEM armor -------------------------------------------------------------
//
// rustls-pki-types reads the armor: one pass over the lines, memory linear
// in the input (a body is collected once, a label once per BEGIN line), and
// sections of labels it does not know (`ENCRYPTED PRIVATE KEY`, `OPENSSH
// PRIVATE KEY`, ...) skipped. Errors are worded here, from its error's kind,
// never from its `Display` (which quotes whole lines); the only input they
// quote is a label, cut to `EXCERPT` characters, and at most `LISTED_LABELS`
// of them, so an error stays under 300 characters whatever the input.

/// The most characters of a label (input text) an error quotes.
const EXCERPT: usize = 40;
/// The most distinct labels an error lists.
const LISTED_LABELS: usize = 3;

/// The DER of the one `PRIVATE KEY` section of `text`, in a buffer wiped on
/// drop.
fn pkcs8_section(text: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let mut key = None;
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(text.as_bytes()) {
        let (kind, der) = section.map_err(|e| pem_error(text, &e))?;
        // Other sections (an EC or RSA private key among them) are wiped too.
        let der = Zeroizing::new(der);
        if kind == SectionKind::PrivateKey {
            if key.is_some() {
                return Err(KeyError::new(
                    "the PEM text holds several PRIVATE KEY blocks; give one key",
                ));
            }
            key = Some(der);
        }
    }
    match key {
        Some(der) if der.is_empty() => Err(KeyError::new("the PEM block is empty")),
        Some(der) => Ok(der),
        None => Err(no_private_key_block(&PemLabels::scan(text))),
    }
}

/// The error for what the PEM reader refused.
fn pem_error(text: &str, error: &pem::Error) -> KeyError {
    match error {
        pem::Error::MissingSectionEnd { end_marker } => KeyError::new(format!(
            "the PEM block BEGIN {} has no END line (or one with another label)",
            excerpt(label_only(end_marker))
        )),
        pem::Error::IllegalSectionStart { line } => KeyError::new(format!(
            "a PEM BEGIN line does not end in five dashes: {}",
            excerpt(label_only(
                line.strip_prefix(b"-----BEGIN ").unwrap_or(line)
            ))
        )),
        pem::Error::Base64Decode(_) => {
            // The bodies of other blocks are decoded too (not only PRIVATE
            // KEY's): without a PRIVATE KEY block, say what is there instead.
            let labels = PemLabels::scan(text);
            if !labels.private_key {
                no_private_key_block(&labels)
            } else if labels.special == Some(Special::Encrypted) {
                encrypted_error()
            } else {
                KeyError::new("the PEM body is not valid base64")
            }
        }
        pem::Error::SectionTooLarge => KeyError::new("a PEM block is larger than 256 MB"),
        // No I/O on a slice; NoItemsFound comes from from_pem_slice only.
        _ => KeyError::new("the PEM text cannot be read"),
    }
}

/// The label at the start of `text`, without whatever follows its closing
/// dashes: on a PEM text joined into one line, that would be the key's
/// base64 body.
fn label_only(text: &[u8]) -> &[u8] {
    let text = text.strip_prefix(b"-----END ").unwrap_or(text);
    match text.windows(5).position(|w| w == b"-----") {
        Some(end) => &text[..end],
        None => text,
    }
}

/// Input text for an error: quoted, control characters escaped, at most
/// `EXCERPT` characters between the quotes (counted after escaping, which
/// can take up to 10 characters for one), then `...` if cut.
fn excerpt(text: &[u8]) -> String {
    // Enough bytes for EXCERPT characters (4 bytes at most each); a
    // character cut here shows as U+FFFD.
    let head = String::from_utf8_lossy(&text[..text.len().min(4 * EXCERPT + 4)]);
    let mut shown = String::from("\"");
    let mut count = 0;
    for c in head.chars() {
        let escaped = c.escape_debug();
        count += escaped.len();
        if count > EXCERPT {
            shown.push_str("\"...");
            return shown;
        }
        shown.extend(escaped);
    }
    shown.push('"');
    shown
}

/// A label that gets an error of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Special {
    /// `ENCRYPTED PRIVATE KEY`, or a block with a `Proc-Type: 4,ENCRYPTED` header.
    Encrypted,
    /// `EC PRIVATE KEY`.
    Sec1,
    /// `RSA PRIVATE KEY`.
    Pkcs1,
    /// `OPENSSH PRIVATE KEY`.
    OpenSsh,
}

/// What the BEGIN lines of a PEM text say, for an error when it has no key
/// to load: one pass over the lines, split as the PEM reader splits them
/// (at CR or LF; a BEGIN line starts its line), holding slices of the text
/// and a few counters only.
#[derive(Default)]
struct PemLabels<'a> {
    /// How many BEGIN lines.
    blocks: usize,
    /// The first `LISTED_LABELS` distinct labels.
    listed: Vec<&'a str>,
    /// Whether there are more distinct labels than listed.
    more: bool,
    /// Whether one of them is `PRIVATE KEY`.
    private_key: bool,
    /// The first block that gets an error of its own.
    special: Option<Special>,
}

impl<'a> PemLabels<'a> {
    fn scan(text: &'a str) -> PemLabels<'a> {
        let mut labels = PemLabels::default();
        // The block the lines are in: its number, and whether it decided `special`.
        let mut inside: Option<(usize, bool)> = None;
        for line in text.split(['\n', '\r']) {
            if let Some(rest) = line.strip_prefix("-----BEGIN ") {
                labels.blocks += 1;
                let label = rest.trim_end_matches(' ');
                let label = label.strip_suffix("-----").unwrap_or(label);
                // The first block with an error of its own decides.
                let mut decided = false;
                if labels.special.is_none() {
                    labels.special = match label {
                        "ENCRYPTED PRIVATE KEY" => Some(Special::Encrypted),
                        "EC PRIVATE KEY" => Some(Special::Sec1),
                        "RSA PRIVATE KEY" => Some(Special::Pkcs1),
                        "OPENSSH PRIVATE KEY" => Some(Special::OpenSsh),
                        _ => None,
                    };
                    decided = labels.special.is_some();
                }
                inside = Some((labels.blocks, decided));
                labels.private_key |= label == "PRIVATE KEY";
                if !labels.listed.contains(&label) {
                    if labels.listed.len() < LISTED_LABELS {
                        labels.listed.push(label);
                    } else {
                        labels.more = true;
                    }
                }
            } else if line.starts_with("-----END ") {
                inside = None;
            } else if let (Some((_, decided)), Some((name, value))) = (inside, line.split_once(':'))
            {
                // RFC 1421 headers (Proc-Type, DEK-Info) of legacy OpenSSL keys:
                // an encrypted block decides, unless an earlier block did.
                if name.trim() == "Proc-Type"
                    && value.contains("ENCRYPTED")
                    && (labels.special.is_none() || decided)
                {
                    labels.special = Some(Special::Encrypted);
                    inside = inside.map(|(block, _)| (block, true));
                }
            }
        }
        labels
    }
}

fn encrypted_error() -> KeyError {
    KeyError::new(format!(
        "the private key is encrypted; token-keeper reads unencrypted keys only: decrypt and \
         {CONVERT_HINT} (it asks for the passphrase), and protect the file with permissions"
    ))
}

/// The error for PEM text without a `PRIVATE KEY` block, from what it has.
fn no_private_key_block(labels: &PemLabels<'_>) -> KeyError {
    let message = match labels.special {
        Some(Special::Encrypted) => return encrypted_error(),
        Some(Special::Sec1) => format!(
            "this is a SEC1 \"EC PRIVATE KEY\"; token-keeper reads PKCS#8 \"PRIVATE KEY\": \
             {CONVERT_HINT}"
        ),
        Some(Special::Pkcs1) => format!(
            "this is a PKCS#1 \"RSA PRIVATE KEY\"; token-keeper reads PKCS#8 \
             \"PRIVATE KEY\": {CONVERT_HINT}"
        ),
        Some(Special::OpenSsh) => format!(
            "this is an OpenSSH private key; {CONVERT_HINT} (after \
             `ssh-keygen -p -m PKCS8 -f KEY` on a copy)"
        ),
        None if labels.blocks == 0 => {
            "no PEM block found: expected -----BEGIN PRIVATE KEY----- at the start of a line"
                .to_owned()
        }
        None => {
            let mut found = labels
                .listed
                .iter()
                .map(|label| excerpt(label.as_bytes()))
                .collect::<Vec<_>>()
                .join(", ");
            if labels.more {
                found.push_str(", ...");
            }
            if labels.blocks > 1 {
                found = format!("{} blocks: {found}", labels.blocks);
            }
            format!(
                "no PRIVATE KEY block (found {found}): a private key is needed, not a public \
                 key or certificate"
            )
        }
    };
    KeyError::new(message)
}

// ---- PKCS#8 (RFC 5208 / 5958) algorithm identifier ---------------------------

const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_RSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];

/// One DER element: (tag, contents, what follows).
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        (
            bytes.iter().fold(0, |len, &b| (len << 8) | usize::from(b)),
            rest,
        )
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// Which kind of key a PKCS#8 `PrivateKeyInfo` holds, from its algorithm
/// identifier, so that errors can say what the key is.
fn pkcs8_kind(der: &[u8]) -> Result<Kind, KeyError> {
    const SEQUENCE: u8 = 0x30;
    const INTEGER: u8 = 0x02;
    const OID: u8 = 0x06;
    let not_pkcs8 = || KeyError::new("the PRIVATE KEY block does not hold a PKCS#8 key");
    let (oid, parameters) = (|| {
        let (tag, info, _) = der_element(der)?;
        let (version_tag, _, rest) = der_element(info)?;
        let (alg_tag, algorithm, _) = der_element(rest)?;
        let (oid_tag, oid, parameters) = der_element(algorithm)?;
        (tag == SEQUENCE && version_tag == INTEGER && alg_tag == SEQUENCE && oid_tag == OID)
            .then_some((oid, parameters))
    })()
    .ok_or_else(not_pkcs8)?;
    match oid {
        OID_EC_PUBLIC_KEY => match der_element(parameters) {
            Some((OID, OID_P256, _)) => Ok(Kind::EcP256),
            _ => Err(KeyError::new(
                "the EC key is not on P-256: only P-256 (ES256) is supported",
            )),
        },
        OID_ED25519 => Ok(Kind::Ed25519),
        OID_RSA => Ok(Kind::Rsa),
        OID_RSA_PSS => Err(KeyError::new(
            "RSASSA-PSS-only keys (OID 1.2.840.113549.1.1.10) are not supported: use a plain \
             RSA key (`openssl genpkey -algorithm RSA`) and ask for PS256",
        )),
        [0x2b, 0x65, 0x71] => Err(KeyError::new("Ed448 keys are not supported: use Ed25519")),
        [0x2b, 0x65, 0x6e] | [0x2b, 0x65, 0x6f] => Err(KeyError::new(
            "an X25519/X448 key is for key agreement and cannot sign",
        )),
        other => Err(KeyError::new(format!(
            "unsupported key algorithm (OID {}): use EC P-256, Ed25519 or RSA",
            oid_text(other)
        ))),
    }
}

/// An OID in dotted form, for error messages.
fn oid_text(oid: &[u8]) -> String {
    let mut arcs = Vec::new();
    let mut value: u64 = 0;
    for &byte in oid {
        value = (value << 7) | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (value / 40).min(2);
                arcs.push(first);
                arcs.push(value - first * 40);
            } else {
                arcs.push(value);
            }
            value = 0;
        }
    }
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;
    use token_keeper::jose::sign_jwt;

    // ---- Test keys: generated for these tests with OpenSSL 3.0 (`openssl genpkey`),
    // ---- converted to JWK with Python's `cryptography`. TEST KEYS ONLY, never use them.

    /// TEST KEY: EC P-256, PKCS#8.
    const EC_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg1IF627d3Q/k8GRot
kBi/ETIGulrz0u6wOMurr9XdnWChRANCAATSxY9q+i/eztQLSQERYuqHpfAMT8+8
d6e7EtPGgJCBG0isACmj7FVJN0v0/KF8ab/GBFQXAbSrX6OdqAzk0mxa
-----END PRIVATE KEY-----
";
    /// TEST KEY: the same EC key as a JWK.
    const EC_JWK: &str = r#"{"kty": "EC", "crv": "P-256", "x": "0sWPavov3s7UC0kBEWLqh6XwDE_PvHenuxLTxoCQgRs", "y": "SKwAKaPsVUk3S_T8oXxpv8YEVBcBtKtfo52oDOTSbFo", "d": "1IF627d3Q_k8GRotkBi_ETIGulrz0u6wOMurr9XdnWA"}"#;
    const EC_D: &str = "1IF627d3Q_k8GRotkBi_ETIGulrz0u6wOMurr9XdnWA";
    /// RFC 7638 thumbprint of EC_JWK, computed with Python (hashlib), not the core.
    const EC_THUMBPRINT: &str = "WJu7PDA1jCz41WToiSlmCo4hcROPg3d_9p9HAM4d_wA";
    /// TEST KEY: the same EC key in SEC1 form (`openssl pkey -traditional`).
    const EC_SEC1_PEM: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEINSBetu3d0P5PBkaLZAYvxEyBrpa89LusDjLq6/V3Z1goAoGCCqGSM49
AwEHoUQDQgAE0sWPavov3s7UC0kBEWLqh6XwDE/PvHenuxLTxoCQgRtIrAApo+xV
STdL9PyhfGm/xgRUFwG0q1+jnagM5NJsWg==
-----END EC PRIVATE KEY-----
";
    /// TEST KEY: the same EC key, encrypted PKCS#8 (passphrase "test").
    const EC_ENCRYPTED_PEM: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----
MIHsMFcGCSqGSIb3DQEFDTBKMCkGCSqGSIb3DQEFDDAcBAiqUh4t/ea0EQICCAAw
DAYIKoZIhvcNAgkFADAdBglghkgBZQMEASoEEKtI8If1mK+najxKguheFd8EgZBL
JZWdoOySmUbI1G6nmi9zhsQACP3K/YjAS6IupMERSp3MOd1BhgwEsTElWhMzLhuw
agaAQnF4ohytFM48C8j1X+7dzkkqiyy7ZavfJgdUNMZTk+EcfPofCbXdaLY2DnxU
6HG+C/mH604YxfkkVG1+kNK65JKt2GwGeXCQsWz+XEcUHqMcR9DOs5nUfQyYHYM=
-----END ENCRYPTED PRIVATE KEY-----
";
    /// TEST KEY: EC P-384, PKCS#8 (a curve this module refuses).
    const P384_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDDRrM0jqlPuD+ggu9aI
TExU+TuYryQU9+IBPIEWS2dA5ajUUdh2+KMeTm305BS2HIuhZANiAATasRN84JgW
VljPgbUICkBDOSmXkYO8G2zbzmoqwqu4FSq+i/1WDHDrb+Z2pFizl5IfKKscv1QV
fdQcx0+jr9RBsRlaRlEeStrzjRlGt4Nyrg5S6skA86BVb/0d71GRIvU=
-----END PRIVATE KEY-----
";

    /// TEST KEY: Ed25519, PKCS#8 v1 (as OpenSSL writes it: no public key).
    const ED_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIKUTE310cnWRYBlXFGs/JHcW7evnXCFPlLJLrvMb3Bnr
-----END PRIVATE KEY-----
";
    /// TEST KEY: the same Ed25519 key as a JWK.
    const ED_JWK: &str = r#"{"kty": "OKP", "crv": "Ed25519", "x": "feygBKqpDRl2X8UOqZ74c7Kk7Gr2F2TdKpH4ZC1zM50", "d": "pRMTfXRydZFgGVcUaz8kdxbt6-dcIU-Uskuu8xvcGes"}"#;
    const ED_THUMBPRINT: &str = "ZJqd3stez4bQhTzNETUtyAUiD4xfisw--G4SkMJfIso";
    /// `openssl pkeyutl -sign -rawin` of "EdDSA known answer" with ED_PEM.
    const ED_KAT_SIGNATURE: &str =
        "nU4CmH8SkkMZ4oe-YzrqeUmDgWj4-1EzbkDWXfAXua5xwfAh86qIGnTpGks072kjabYgPjR4RJ414cmlhj8WCw";

    /// TEST KEY: RSA 2048, PKCS#8.
    const RSA_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7YGiLfxrg33Ai
/0fZuqCFxsUd5meZy9vXfjgFp3qW6crZAgV/GQ4IA3hSCDHVMuZYij2nqMg9jO7V
B7Zyt1hzutOwnDZCpJe6SS9VFb0Sz6s9bE6GfazRrUnc4LCjyrcudgQ0LrHgnhT+
o/8f5mTXPypKfSimx/D7V1WZw4qgGlX+vUYItZT/VeCW9gAFhp2u9WYOFqZA25VL
Obv2C7l/rgJBGCrQIu2mu5mwxQqGG1u9uxPSc2OjliRFQkGowcJlTZqPAPCzkOnR
oFQqVCXetKuzFPYa98QOJxa1jdLldedVz7hIam7gxSAnviKNUJNu38ALRqaEnn30
f4f9e+N3AgMBAAECggEAG0x0br5Z4CEtaSvf/+ycrmDDHxQOS+3TXZXZ+5jm103A
a9VLj7TKwoge43SmLfV4cbXSPbbtVWpO8WJqRlRH4rR5WuWnUhZAtLcs2iyMm0z+
GbjJx/ZPU0z30eI6WeKSxYYUHrYe3Car0F18Md2TG3jsZGXPolzG0xdqNTiz3Zc4
Nl5u9dd8NxcoDKRjzTKAQXT+TbWjwBb9JMtnD3h0saaKOzsdCEv44rqvF336dLaw
Uffmn8ed7DEHAs4Bq0U9CVuyjHxD4VRyO3fe7noRrqatTwTsaWIbDuPTUo4s5LXW
+aI4dA1JVkmDlY3lqgEJ+sTpXLq/tkZBq48J3t4bIQKBgQD78LcinFez09jET4jf
DdwGeRuySgb1MNX1pHXp1qSQAZp/+/+dYg/yCACuguh7w3IR4khWIDoURRzKLjN0
oISD8800BjrVAmwEl9sBCzGEulaQutw2MD0ycy8f0jEmP7BoKYvaxOHPCfvNfZfK
DoYQm+fJ9pN2CbQ6QSLuxwsBcwKBgQC+ZVwdhG6OF1fPtao/fY6PYeVKlzu7NGmn
DqxWY6AbLA1mH6FksROzsRS+SpNBXNpF3xa06RMVkVZpG/bDxk+uqXcSjfQbir2g
sl4yBsNjq31sN8J4iRDkKMekx6bnjmzrL3NR7HuAv6bYpFGWYTm6K0NaUDgqIAYL
BnWn9jNE7QKBgQCyJ2LpF5Mw94IWN4O67ysCbMt4BL7szU7POC+lXoHZzzh4fjMg
EILkDGKnBKzvL6LPIKs0M++9+61DDu6V7xgl0tXtjuY1UFQf314fW9H1YGrsRyaH
Lw9nSGovX0wgFvNghNh/p69h31Zu1fvrBuAoiIacmz9lPbFzbDIOlTOkHwKBgCnN
bVUZv4A5BdGX7EI2WfeHIeWnoLiwgEXqhdIN25g7qtFyPmgyLMY2KfzBuOUP8uiG
W6Dqz4LbvyIivqIrR1Fs6bTML/1gD9RZdS78pyeZ/lalQ3Bdf7ToczTtlOqgLa/R
YjtpdZBGA+bq5PLkc905JHeOx1YQY+NFzs1K0+TdAoGAKh4ZOILfKH0kWL2MhY83
Pck6/0BkhgdN83Mx935pfzwiZbe9rrSjei5JWEOdq5tFcazCRyGsxluL2OqMzDZ4
a3dZvP4fkOluOdmO+qZI7RLLRydogvPrOdxJLsOWtijIMes/6F4GZ4tHBHx4QLdQ
t9C5Es5XiCAdbT2D1jB4YCw=
-----END PRIVATE KEY-----
";
    /// TEST KEY: the same RSA key as a JWK.
    const RSA_JWK: &str = r#"{"kty": "RSA", "n": "u2Boi38a4N9wIv9H2bqghcbFHeZnmcvb1344Bad6lunK2QIFfxkOCAN4Uggx1TLmWIo9p6jIPYzu1Qe2crdYc7rTsJw2QqSXukkvVRW9Es-rPWxOhn2s0a1J3OCwo8q3LnYENC6x4J4U_qP_H-Zk1z8qSn0opsfw-1dVmcOKoBpV_r1GCLWU_1XglvYABYadrvVmDhamQNuVSzm79gu5f64CQRgq0CLtpruZsMUKhhtbvbsT0nNjo5YkRUJBqMHCZU2ajwDws5Dp0aBUKlQl3rSrsxT2GvfEDicWtY3S5XXnVc-4SGpu4MUgJ74ijVCTbt_AC0amhJ599H-H_Xvjdw", "e": "AQAB", "d": "G0x0br5Z4CEtaSvf_-ycrmDDHxQOS-3TXZXZ-5jm103Aa9VLj7TKwoge43SmLfV4cbXSPbbtVWpO8WJqRlRH4rR5WuWnUhZAtLcs2iyMm0z-GbjJx_ZPU0z30eI6WeKSxYYUHrYe3Car0F18Md2TG3jsZGXPolzG0xdqNTiz3Zc4Nl5u9dd8NxcoDKRjzTKAQXT-TbWjwBb9JMtnD3h0saaKOzsdCEv44rqvF336dLawUffmn8ed7DEHAs4Bq0U9CVuyjHxD4VRyO3fe7noRrqatTwTsaWIbDuPTUo4s5LXW-aI4dA1JVkmDlY3lqgEJ-sTpXLq_tkZBq48J3t4bIQ", "p": "-_C3IpxXs9PYxE-I3w3cBnkbskoG9TDV9aR16dakkAGaf_v_nWIP8ggAroLoe8NyEeJIViA6FEUcyi4zdKCEg_PNNAY61QJsBJfbAQsxhLpWkLrcNjA9MnMvH9IxJj-waCmL2sThzwn7zX2Xyg6GEJvnyfaTdgm0OkEi7scLAXM", "q": "vmVcHYRujhdXz7WqP32Oj2HlSpc7uzRppw6sVmOgGywNZh-hZLETs7EUvkqTQVzaRd8WtOkTFZFWaRv2w8ZPrql3Eo30G4q9oLJeMgbDY6t9bDfCeIkQ5CjHpMem545s6y9zUex7gL-m2KRRlmE5uitDWlA4KiAGCwZ1p_YzRO0", "dp": "sidi6ReTMPeCFjeDuu8rAmzLeAS-7M1OzzgvpV6B2c84eH4zIBCC5AxipwSs7y-izyCrNDPvvfutQw7ule8YJdLV7Y7mNVBUH99eH1vR9WBq7Ecmhy8PZ0hqL19MIBbzYITYf6evYd9WbtX76wbgKIiGnJs_ZT2xc2wyDpUzpB8", "dq": "Kc1tVRm_gDkF0ZfsQjZZ94ch5aeguLCAReqF0g3bmDuq0XI-aDIsxjYp_MG45Q_y6IZboOrPgtu_IiK-oitHUWzptMwv_WAP1Fl1LvynJ5n-VqVDcF1_tOhzNO2U6qAtr9FiO2l1kEYD5urk8uRz3Tkkd47HVhBj40XOzUrT5N0", "qi": "Kh4ZOILfKH0kWL2MhY83Pck6_0BkhgdN83Mx935pfzwiZbe9rrSjei5JWEOdq5tFcazCRyGsxluL2OqMzDZ4a3dZvP4fkOluOdmO-qZI7RLLRydogvPrOdxJLsOWtijIMes_6F4GZ4tHBHx4QLdQt9C5Es5XiCAdbT2D1jB4YCw"}"#;
    const RSA_THUMBPRINT: &str = "W2nyFE_TcZLT1TuaMDh5oGMt23EOkOoeajyiadcBoiY";
    /// `openssl dgst -sha256 -sign` (RSASSA-PKCS1-v1_5) of "RS256 known answer" with RSA_PEM.
    const RSA_KAT_SIGNATURE: &str = "da27KolfLGycLtGjZ71EkhGLLSoedsHzesVLfV94l0n0fN-fa8-69n-qgFkFk43SZB6vihsV5wizBINE5VXe3b34gig6M5TEB2SaRWi38DCYodqiRmKu84sbp3bvJfV4q5J8gszi6n100RNf4kJN5krKKVwJSMXk-GF-3vSHm3aXLD3yjAI0o71dziUrB-bP4bT2zbQDiJTuuJ0_Enpjco0lBWhwAC4wfYB9qHOEGFkHxV6gSKAwedk3eflScuhiE5nGEqQvVP0WkBGN0aqsJB1THgtfSLvu9WmjDDR_Acw82F2t5gICswVmjhGnaTnXc_1zVzFPiJymPPqUqt-zWg";

    // ---- helpers ---------------------------------------------------------------

    fn jwk_member(jwk: &str, name: &str) -> String {
        let value: Value = serde_json::from_str(jwk).unwrap();
        value[name].as_str().unwrap().to_owned()
    }

    /// Every private member of the fixtures, and every PEM body line: none may
    /// appear in an error or a Debug.
    fn secrets() -> Vec<String> {
        let mut secrets = Vec::new();
        for jwk in [EC_JWK, ED_JWK, RSA_JWK] {
            let value: Value = serde_json::from_str(jwk).unwrap();
            for name in PrivateMembers::NAMES {
                if let Some(member) = value[name].as_str() {
                    secrets.push(member.to_owned());
                    // A fragment is enough to leak: check a 12-character prefix too.
                    secrets.push(member[..12].to_owned());
                }
            }
        }
        for pem in [
            EC_PEM,
            ED_PEM,
            RSA_PEM,
            EC_SEC1_PEM,
            EC_ENCRYPTED_PEM,
            P384_PEM,
        ] {
            for line in pem.lines().filter(|line| !line.starts_with("-----")) {
                secrets.push(line[..line.len().min(16)].to_owned());
            }
        }
        secrets
    }

    fn assert_no_secret(text: &str) {
        for secret in secrets() {
            assert!(!text.contains(&secret), "{text:?} leaks {secret:?}");
        }
    }

    /// The error, checked for leaks in both Display and Debug.
    fn error_of(result: Result<PrivateKey, KeyError>) -> String {
        let error = result.expect_err("should fail");
        assert_no_secret(&error.to_string());
        assert_no_secret(&format!("{error:?}"));
        assert_eq!(error.to_string(), error.message());
        error.to_string()
    }

    fn pem(label: &str, der: &[u8]) -> String {
        let body = B64.encode(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|chunk| std::str::from_utf8(chunk).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    /// The base64 body of a PEM text, without line breaks.
    fn pem_body(pem: &str) -> String {
        pem.lines().filter(|l| !l.starts_with("-----")).collect()
    }

    /// A PKCS#8 shell around `algorithm` (an AlgorithmIdentifier's contents).
    fn pkcs8_with_algorithm(algorithm: &[u8]) -> String {
        let mut alg_id = vec![0x30, algorithm.len() as u8];
        alg_id.extend_from_slice(algorithm);
        let mut info = vec![0x02, 0x01, 0x00];
        info.extend_from_slice(&alg_id);
        info.extend_from_slice(&[0x04, 0x02, 0x04, 0x00]);
        let mut der = vec![0x30, info.len() as u8];
        der.extend_from_slice(&info);
        pem("PRIVATE KEY", &der)
    }

    fn oid(oid: &[u8]) -> Vec<u8> {
        let mut der = vec![0x06, oid.len() as u8];
        der.extend_from_slice(oid);
        der
    }

    fn jsonwebtoken_alg(alg: Algorithm) -> jsonwebtoken::Algorithm {
        match alg {
            Algorithm::ES256 => jsonwebtoken::Algorithm::ES256,
            Algorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
            Algorithm::RS256 => jsonwebtoken::Algorithm::RS256,
            Algorithm::PS256 => jsonwebtoken::Algorithm::PS256,
            other => panic!("no jsonwebtoken algorithm for {other}"),
        }
    }

    /// Verifies `token` with jsonwebtoken, from the public JWK members only,
    /// and returns its claims.
    fn verify(
        token: &str,
        public: &PublicJwk,
        alg: Algorithm,
    ) -> Result<Value, jsonwebtoken::errors::Error> {
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(Value::Object(public.members().clone())).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk)?;
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken_alg(alg));
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_aud = false;
        jsonwebtoken::decode::<Value>(token, &key, &validation).map(|data| data.claims)
    }

    /// Signs a DPoP-shaped JWT through the core's `sign_jwt`, verifies it
    /// independently, and checks that tampering is caught.
    fn sign_and_verify(key: &PrivateKey) {
        let alg = key.algorithm();
        let header =
            json!({"typ": "dpop+jwt", "alg": alg.name(), "jwk": key.public_jwk().members()});
        let claims = json!({
            "jti": "e1j3V_bKic8-LAEB",
            "htm": "POST",
            "htu": "https://as.example/token",
            "iat": 1_700_000_000,
            "nested": {"list": [1, "two", null]},
        });
        let token = sign_jwt(key, &header, &claims).unwrap();
        let verified = verify(&token, key.public_jwk(), alg)
            .unwrap_or_else(|e| panic!("{alg}: jsonwebtoken refused the signature: {e}"));
        assert_eq!(verified, claims, "{alg}");

        let parts: Vec<&str> = token.split('.').collect();
        let signature = B64URL.decode(parts[2]).unwrap();
        match alg {
            Algorithm::ES256 | Algorithm::EdDSA => assert_eq!(signature.len(), 64, "{alg}"),
            _ => assert_eq!(signature.len(), 256, "{alg}"),
        }

        // A different payload under the same signature.
        let mut forged = claims.clone();
        forged["htm"] = json!("GET");
        let forged_payload = B64URL.encode(serde_json::to_vec(&forged).unwrap());
        let tampered = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
        assert!(
            verify(&tampered, key.public_jwk(), alg).is_err(),
            "{alg}: tampered payload"
        );
        // One bit of the signature flipped.
        let mut bad = signature.clone();
        bad[10] ^= 0x01;
        let tampered = format!("{}.{}.{}", parts[0], parts[1], B64URL.encode(&bad));
        assert!(
            verify(&tampered, key.public_jwk(), alg).is_err(),
            "{alg}: tampered signature"
        );
        // Another key of the same kind does not verify it.
        if matches!(alg, Algorithm::ES256 | Algorithm::EdDSA) {
            let other = PrivateKey::generate(alg).unwrap();
            assert!(
                verify(&token, other.public_jwk(), alg).is_err(),
                "{alg}: other key"
            );
        }
    }

    // ---- signing, verified independently ---------------------------------------

    #[test]
    fn generated_keys_sign_what_jsonwebtoken_verifies() {
        for alg in [Algorithm::ES256, Algorithm::EdDSA] {
            let key = PrivateKey::generate(alg).unwrap();
            assert_eq!(key.algorithm(), alg);
            sign_and_verify(&key);
        }
    }

    #[test]
    fn loaded_keys_sign_what_jsonwebtoken_verifies() {
        let cases = [
            (EC_PEM, EC_JWK, None, Algorithm::ES256),
            (ED_PEM, ED_JWK, None, Algorithm::EdDSA),
            (RSA_PEM, RSA_JWK, None, Algorithm::RS256),
            (RSA_PEM, RSA_JWK, Some(Algorithm::PS256), Algorithm::PS256),
            (RSA_PEM, RSA_JWK, Some(Algorithm::RS256), Algorithm::RS256),
            (EC_PEM, EC_JWK, Some(Algorithm::ES256), Algorithm::ES256),
        ];
        for (pem, jwk, requested, expected) in cases {
            for key in [
                PrivateKey::from_pem(pem, requested).unwrap(),
                PrivateKey::from_jwk(jwk, requested).unwrap(),
            ] {
                assert_eq!(key.algorithm(), expected);
                sign_and_verify(&key);
            }
        }
    }

    #[test]
    fn deterministic_signatures_match_known_answers() {
        // RFC 8037 §A.1, A.3, A.4: the Ed25519 key, its thumbprint and a JWS.
        let rfc = PrivateKey::from_jwk(
            r#"{"kty":"OKP","crv":"Ed25519",
                "d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A",
                "x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#,
            None,
        )
        .unwrap();
        assert_eq!(
            rfc.public_jwk().thumbprint(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        let signature = rfc
            .sign(b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc")
            .unwrap();
        assert_eq!(
            B64URL.encode(signature),
            "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
        );

        // Signatures OpenSSL made with the fixtures (RSASSA-PKCS1-v1_5 and
        // Ed25519 are deterministic), from both key forms.
        for key in [
            PrivateKey::from_pem(ED_PEM, None),
            PrivateKey::from_jwk(ED_JWK, None),
        ] {
            let signature = key.unwrap().sign(b"EdDSA known answer").unwrap();
            assert_eq!(B64URL.encode(signature), ED_KAT_SIGNATURE);
        }
        for key in [
            PrivateKey::from_pem(RSA_PEM, None),
            PrivateKey::from_jwk(RSA_JWK, None),
        ] {
            let signature = key.unwrap().sign(b"RS256 known answer").unwrap();
            assert_eq!(B64URL.encode(signature), RSA_KAT_SIGNATURE);
        }
        // PS256 is randomized: same key, PSS padding, different from the PKCS#1 answer.
        let pss = PrivateKey::from_pem(RSA_PEM, Some(Algorithm::PS256)).unwrap();
        let first = pss.sign(b"RS256 known answer").unwrap();
        assert_ne!(B64URL.encode(&first), RSA_KAT_SIGNATURE);
        assert_ne!(first, pss.sign(b"RS256 known answer").unwrap());
    }

    #[test]
    fn signer_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<PrivateKey>();
        let key: Arc<dyn Signer> = Arc::new(PrivateKey::generate(Algorithm::ES256).unwrap());
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let key = Arc::clone(&key);
                std::thread::spawn(move || {
                    let header = json!({"alg": "ES256", "typ": "JWT"});
                    sign_jwt(key.as_ref(), &header, &json!({ "i": i })).unwrap()
                })
            })
            .collect();
        for (i, handle) in handles.into_iter().enumerate() {
            let token = handle.join().unwrap();
            assert_eq!(
                verify(&token, key.public_jwk(), Algorithm::ES256).unwrap(),
                json!({ "i": i })
            );
        }
    }

    // ---- public JWKs and thumbprints -----------------------------------------------

    #[test]
    fn pem_and_jwk_forms_agree_and_thumbprints_are_rfc_7638() {
        let cases = [
            (EC_PEM, EC_JWK, EC_THUMBPRINT, &["kty", "crv", "x", "y"][..]),
            (ED_PEM, ED_JWK, ED_THUMBPRINT, &["kty", "crv", "x"][..]),
            (RSA_PEM, RSA_JWK, RSA_THUMBPRINT, &["kty", "n", "e"][..]),
        ];
        for (pem, jwk, thumbprint, public_names) in cases {
            let from_pem = PrivateKey::from_pem(pem, None).unwrap();
            let from_jwk = PrivateKey::from_jwk(jwk, None).unwrap();
            // The public members derived from the PEM key are the JWK's own.
            let given: Value = serde_json::from_str(jwk).unwrap();
            let mut expected = Map::new();
            for name in public_names {
                expected.insert((*name).to_owned(), given[*name].clone());
            }
            assert_eq!(from_pem.public_jwk().members(), &expected);
            assert_eq!(from_jwk.public_jwk().members(), &expected);
            // Thumbprint: the one Python computed, and the core's from the public members.
            let core = PublicJwk::new(given.as_object().unwrap()).unwrap();
            assert_eq!(core.thumbprint(), thumbprint);
            assert_eq!(from_pem.public_jwk().thumbprint(), thumbprint);
            assert_eq!(from_jwk.public_jwk().thumbprint(), thumbprint);
            assert!(!from_pem.public_jwk().members().contains_key("d"));
        }
    }

    #[test]
    fn generated_keys_round_trip_through_pkcs8_pem() {
        for alg in [Algorithm::ES256, Algorithm::EdDSA] {
            let (key, pem) = PrivateKey::generate_pem(alg).unwrap();
            assert_eq!(key.algorithm(), alg);
            let loaded = PrivateKey::from_pem(&pem, None).unwrap();
            assert_eq!(loaded.algorithm(), alg);
            assert_eq!(loaded.public_jwk(), key.public_jwk());
            assert_eq!(
                loaded.public_jwk().thumbprint(),
                key.public_jwk().thumbprint()
            );
            // Asking for the algorithm explicitly gives the same key.
            let explicit = PrivateKey::from_pem(&pem, Some(alg)).unwrap();
            assert_eq!(explicit.public_jwk(), key.public_jwk());
            // Both directions: the original signs what verifies under the reloaded key too.
            sign_and_verify(&loaded);
            let token = sign_jwt(&key, &json!({"alg": alg.name()}), &json!({"b": 2})).unwrap();
            assert_eq!(
                verify(&token, loaded.public_jwk(), alg).unwrap(),
                json!({"b": 2})
            );
            // What the reloaded key signs verifies under the original public key.
            let token = sign_jwt(&loaded, &json!({"alg": alg.name()}), &json!({"a": 1})).unwrap();
            assert_eq!(
                verify(&token, key.public_jwk(), alg).unwrap(),
                json!({"a": 1})
            );
            // Each generation is a new key.
            let again = PrivateKey::generate(alg).unwrap();
            assert_ne!(
                again.public_jwk().thumbprint(),
                key.public_jwk().thumbprint()
            );
        }
    }

    #[test]
    fn ed25519_documents_are_rewritten_as_pkcs8_v1() {
        let v2 = generate_pkcs8(Algorithm::EdDSA).unwrap();
        // ring's v2 document: the seed and the public key ([1], 33 bytes).
        assert_eq!(v2[1], 81);
        assert_eq!(v2[..5], [0x30, 81, 0x02, 0x01, 0x01]);
        assert_eq!(v2[48..51], [0x81, 0x21, 0x00]);
        let v1 = ed25519_pkcs8_v1(&v2).unwrap();
        assert_eq!(v1[16..], v2[16..48], "the same seed");
        let from_v2 = PrivateKey::from_pkcs8(&v2, None).unwrap();
        let from_v1 = PrivateKey::from_pkcs8(&v1, None).unwrap();
        assert_eq!(from_v1.public_jwk(), from_v2.public_jwk());
        // Anything but ring's v2 form is not rewritten (generate_pem then
        // hands out ring's document as is): a v1 document, a truncated one.
        let openssl = Zeroizing::new(B64.decode(pem_body(ED_PEM)).unwrap());
        assert!(ed25519_pkcs8_v1(&openssl).is_none());
        assert!(ed25519_pkcs8_v1(&v2[..40]).is_none(), "truncated");
        assert!(ed25519_pkcs8_v1(&v2[..83 - 1]).is_none(), "length mismatch");
    }

    #[test]
    fn generated_pem_is_pkcs8_armour_in_64_column_lines() {
        for alg in [Algorithm::ES256, Algorithm::EdDSA] {
            let (key, pem) = PrivateKey::generate_pem(alg).unwrap();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{alg}");
            assert!(pem.ends_with("\n-----END PRIVATE KEY-----\n"), "{alg}");
            assert!(!pem.contains('\r'), "{alg}");
            let lines: Vec<&str> = pem.lines().collect();
            assert_eq!(lines.first(), Some(&"-----BEGIN PRIVATE KEY-----"));
            assert_eq!(lines.last(), Some(&"-----END PRIVATE KEY-----"));
            let body = &lines[1..lines.len() - 1];
            assert!(!body.is_empty(), "{alg}");
            let (last, full) = body.split_last().unwrap();
            for line in full {
                assert_eq!(line.len(), 64, "{alg}: {line:?}");
            }
            assert!((1..=64).contains(&last.len()), "{alg}: {last:?}");
            assert!(
                body.iter().all(|line| line
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))),
                "{alg}: standard base64 only"
            );
            // The body is the PKCS#8 DER of the key's kind; the text is exactly
            // what the test helper's independent armouring makes of it.
            let der = B64.decode(body.concat()).unwrap();
            let kind = pkcs8_kind(&der).unwrap();
            assert_eq!(kind.default_alg(), alg);
            assert_eq!(pem.as_str(), self::pem("PRIVATE KEY", &der));
            if alg == Algorithm::EdDSA {
                // PKCS#8 v1, as OpenSSL writes it (the fixture): the same
                // 16 bytes before the 32-byte seed, nothing after it.
                let openssl = B64.decode(pem_body(ED_PEM)).unwrap();
                assert_eq!(der.len(), 48);
                assert_eq!(der[..16], openssl[..16]);
            }
            // Each call is a new key.
            let (other, other_pem) = PrivateKey::generate_pem(alg).unwrap();
            assert_ne!(other.public_jwk(), key.public_jwk(), "{alg}");
            assert_ne!(other_pem.as_str(), pem.as_str(), "{alg}");
        }
        // An RSA-sized document (longer than a few lines) is armoured the same way.
        let der = B64.decode(pem_body(RSA_PEM)).unwrap();
        assert_eq!(pkcs8_pem(&der).as_str(), RSA_PEM);
        assert_eq!(
            pkcs8_pem(&[0x30, 0x00]).as_str(),
            pem("PRIVATE KEY", &[0x30, 0x00])
        );
    }

    #[test]
    fn algorithm_comes_from_the_key_the_jwk_or_the_caller() {
        let rsa = |jwk_alg: Option<&str>| {
            let mut value: Value = serde_json::from_str(RSA_JWK).unwrap();
            if let Some(alg) = jwk_alg {
                value["alg"] = json!(alg);
            }
            value.to_string()
        };
        assert_eq!(
            PrivateKey::from_jwk(&rsa(Some("PS256")), None)
                .unwrap()
                .algorithm(),
            Algorithm::PS256
        );
        assert_eq!(
            PrivateKey::from_jwk(&rsa(Some("PS256")), Some(Algorithm::PS256))
                .unwrap()
                .algorithm(),
            Algorithm::PS256
        );
        assert_eq!(
            PrivateKey::from_jwk(&rsa(None), Some(Algorithm::PS256))
                .unwrap()
                .algorithm(),
            Algorithm::PS256
        );
        let conflict = error_of(PrivateKey::from_jwk(
            &rsa(Some("RS256")),
            Some(Algorithm::PS256),
        ));
        assert!(
            conflict.contains("PS256") && conflict.contains("RS256"),
            "{conflict}"
        );
        let wrong = error_of(PrivateKey::from_jwk(&rsa(Some("ES256")), None));
        assert!(wrong.contains("ES256") && wrong.contains("RSA"), "{wrong}");
        let unknown = error_of(PrivateKey::from_jwk(&rsa(Some("RS512")), None));
        assert!(unknown.contains("RS512"), "{unknown}");
        // Extra members (kid, use, key_ops) are fine when they allow signing.
        let mut value: Value = serde_json::from_str(EC_JWK).unwrap();
        value["kid"] = json!("k1");
        value["use"] = json!("sig");
        value["key_ops"] = json!(["sign", "verify"]);
        assert_eq!(
            PrivateKey::from_jwk(&value.to_string(), None)
                .unwrap()
                .public_jwk()
                .thumbprint(),
            EC_THUMBPRINT
        );
    }

    // ---- errors ------------------------------------------------------------------

    #[test]
    fn wrong_algorithm_for_the_key_is_refused() {
        for (pem, alg) in [
            (EC_PEM, Algorithm::RS256),
            (EC_PEM, Algorithm::EdDSA),
            (RSA_PEM, Algorithm::ES256),
            (RSA_PEM, Algorithm::EdDSA),
            (ED_PEM, Algorithm::ES256),
            (ED_PEM, Algorithm::PS256),
        ] {
            let message = error_of(PrivateKey::from_pem(pem, Some(alg)));
            assert!(message.contains(alg.name()), "{message}");
        }
        for (jwk, alg) in [
            (EC_JWK, Algorithm::RS256),
            (RSA_JWK, Algorithm::ES256),
            (ED_JWK, Algorithm::ES256),
        ] {
            let message = error_of(PrivateKey::from_jwk(jwk, Some(alg)));
            assert!(message.contains(alg.name()), "{message}");
        }
    }

    #[test]
    fn rsa_keys_cannot_be_generated() {
        for alg in [Algorithm::RS256, Algorithm::PS256] {
            let message = error_of(PrivateKey::generate(alg));
            assert!(
                message.contains("openssl genpkey -algorithm RSA"),
                "{message}"
            );
            // generate_pem refuses them the same way.
            let error = PrivateKey::generate_pem(alg).expect_err("RSA generation");
            assert_eq!(error.message(), message);
        }
    }

    #[test]
    fn other_pem_shapes_get_a_conversion_hint() {
        let sec1 = error_of(PrivateKey::from_pem(EC_SEC1_PEM, None));
        assert!(
            sec1.contains("EC PRIVATE KEY") && sec1.contains("openssl pkcs8 -topk8 -nocrypt"),
            "{sec1}"
        );
        let pkcs1 = error_of(PrivateKey::from_pem(
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu2Boi38a\n-----END RSA PRIVATE KEY-----\n",
            None,
        ));
        assert!(
            pkcs1.contains("PKCS#1") && pkcs1.contains("openssl pkcs8 -topk8 -nocrypt"),
            "{pkcs1}"
        );
        let encrypted = error_of(PrivateKey::from_pem(EC_ENCRYPTED_PEM, None));
        assert!(
            encrypted.contains("encrypted") && encrypted.contains("openssl pkcs8"),
            "{encrypted}"
        );
        let legacy = error_of(PrivateKey::from_pem(
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n",
            None,
        ));
        assert!(legacy.contains("encrypted"), "{legacy}");
        let public = error_of(PrivateKey::from_pem(
            "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE0sWPavov3s7UC0kBEWLqh6XwDE/P\n-----END PUBLIC KEY-----\n",
            None,
        ));
        assert!(
            public.contains("PUBLIC KEY") && public.contains("private key is needed"),
            "{public}"
        );
        // Surrounding text (OpenSSL's "Bag Attributes") is skipped.
        let with_preamble = format!("Bag Attributes\n    localKeyID: 01\n{EC_PEM}");
        assert_eq!(
            PrivateKey::from_pem(&with_preamble, None)
                .unwrap()
                .public_jwk()
                .thumbprint(),
            EC_THUMBPRINT
        );
        // CRLF line endings are fine.
        let crlf = EC_PEM.replace('\n', "\r\n");
        assert_eq!(
            PrivateKey::from_pem(&crlf, None)
                .unwrap()
                .public_jwk()
                .thumbprint(),
            EC_THUMBPRINT
        );
        // Two keys are ambiguous.
        let two = error_of(PrivateKey::from_pem(&format!("{EC_PEM}{ED_PEM}"), None));
        assert!(two.contains("several"), "{two}");
    }

    /// The `PRIVATE KEY` bodies (base64, whitespace removed) as the
    /// hand-written reader this module had before `rustls-pki-types` found
    /// them: lines trimmed, RFC 1421 headers skipped. A reference for the
    /// test below (on small inputs: it is the quadratic one).
    fn old_private_key_bodies(text: &str) -> Vec<String> {
        let mut bodies = Vec::new();
        let mut lines = text.lines().map(str::trim);
        while let Some(line) = lines.next() {
            let Some(label) = line
                .strip_prefix("-----BEGIN ")
                .and_then(|rest| rest.strip_suffix("-----"))
            else {
                continue;
            };
            let mut body = String::new();
            for line in lines.by_ref() {
                if line.starts_with("-----END ") {
                    break;
                }
                if !line.contains(':') {
                    body.extend(line.chars().filter(|c| !c.is_whitespace()));
                }
            }
            if label == "PRIVATE KEY" {
                bodies.push(body);
            }
        }
        bodies
    }

    #[test]
    fn the_pem_reader_loads_every_key_the_old_one_loaded() {
        let (es256, es256_pem) = PrivateKey::generate_pem(Algorithm::ES256).unwrap();
        let (eddsa, eddsa_pem) = PrivateKey::generate_pem(Algorithm::EdDSA).unwrap();
        let fixtures = [
            (EC_PEM, EC_THUMBPRINT),
            (ED_PEM, ED_THUMBPRINT),
            (RSA_PEM, RSA_THUMBPRINT),
            (es256_pem.as_str(), es256.public_jwk().thumbprint()),
            (eddsa_pem.as_str(), eddsa.public_jwk().thumbprint()),
        ];
        let mut cases: Vec<(String, &str)> = Vec::new();
        for (pem, thumbprint) in fixtures {
            let body = pem_body(pem);
            let variants = [
                pem.to_owned(),
                // OpenSSL's PKCS#12 export, and other text around the block.
                format!("Bag Attributes\n    localKeyID: 01 02\nsubject=/CN=x\n{pem}trailer\n"),
                pem.replace('\n', "\r\n"),
                pem.trim_end().to_owned(),
                pem.replace('\n', "  \n"),
                // The body in one line, and in 76-column lines (RFC 2045).
                format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n"),
                format!(
                    "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                    body.as_bytes()
                        .chunks(76)
                        .map(|line| std::str::from_utf8(line).unwrap())
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
                // Blocks of other labels around it, known to rustls-pki-types or not.
                format!("{EC_SEC1_PEM}{pem}{EC_ENCRYPTED_PEM}"),
                format!(
                    "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE0sWPavov3s7UC0kBEWLqh6XwDE/P\n\
                     -----END PUBLIC KEY-----\n{pem}-----BEGIN NOTES-----\nnot base64!\n-----END NOTES-----\n"
                ),
            ];
            cases.extend(variants.into_iter().map(|text| (text, thumbprint)));
        }
        for (text, thumbprint) in &cases {
            let old = old_private_key_bodies(text);
            assert_eq!(old.len(), 1, "{text}");
            let old_der = B64.decode(&old[0]).unwrap();
            let der = pkcs8_section(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(der.as_slice(), old_der.as_slice(), "{text}");
            let key = PrivateKey::from_pem(text, None).unwrap();
            assert_eq!(key.public_jwk().thumbprint(), *thumbprint, "{text}");
        }
        // Two shapes the old reader took and this one refuses (no known
        // writer makes them): an indented BEGIN line, and headers in a
        // PKCS#8 block (RFC 7468 has none).
        let indented = EC_PEM.replace("-----BEGIN", "  -----BEGIN");
        assert_eq!(old_private_key_bodies(&indented).len(), 1);
        let message = error_of(PrivateKey::from_pem(&indented, None));
        assert!(message.contains("start of a line"), "{message}");
        let header = EC_PEM.replace("KEY-----\n", "KEY-----\nComment: test\n");
        assert_eq!(old_private_key_bodies(&header).len(), 1);
        let message = error_of(PrivateKey::from_pem(&header, None));
        assert!(message.contains("base64"), "{message}");
    }

    #[test]
    fn a_pem_text_joined_into_one_line_shows_no_key_material() {
        let (_, pem) = PrivateKey::generate_pem(Algorithm::EdDSA).unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let joined = pem.replace('\n', " ");
        let error = PrivateKey::from_pem(&joined, None).unwrap_err().to_string();
        assert!(error.len() < 300, "{error}");
        for window in body.as_bytes().windows(8) {
            let window = std::str::from_utf8(window).unwrap();
            assert!(!error.contains(window), "{window:?} of the key in: {error}");
        }
    }

    #[test]
    fn pem_errors_quote_a_few_short_labels() {
        assert_eq!(excerpt(b"PUBLIC KEY"), "\"PUBLIC KEY\"");
        let forty = "L".repeat(EXCERPT);
        assert_eq!(excerpt(forty.as_bytes()), format!("\"{forty}\""));
        assert_eq!(
            excerpt(format!("{forty}X").as_bytes()),
            format!("\"{forty}\"...")
        );
        assert_eq!(excerpt(b"A\x1b[31mB\x07"), "\"A\\u{1b}[31mB\\u{7}\"");
        // Escapes count as what they show: six of `\u{12}` (36), not seven.
        assert_eq!(
            excerpt(&[0x12; 100]),
            format!("\"{}\"...", "\\u{12}".repeat(6))
        );
        assert_eq!(excerpt(&[0xff, b'A']), "\"\u{fffd}A\"");
        let accents = excerpt("é".repeat(1000).as_bytes());
        assert_eq!(accents, format!("\"{}\"...", "é".repeat(EXCERPT)));

        let block = |label: &str| format!("-----BEGIN {label}-----\n-----END {label}-----\n");
        let cases = [
            (
                format!("{}{}{}{}", block("A").repeat(5), block("B"), block("C"), block("D")),
                "no PRIVATE KEY block (found 8 blocks: \"A\", \"B\", \"C\", ...): a private key is \
                 needed, not a public key or certificate"
                    .to_owned(),
            ),
            (
                format!("{}{}", block("A"), block("A")),
                "no PRIVATE KEY block (found 2 blocks: \"A\"): a private key is needed, not a \
                 public key or certificate"
                    .to_owned(),
            ),
            (
                block(&"L".repeat(100_000)),
                format!(
                    "no PRIVATE KEY block (found \"{forty}\"...): a private key is needed, not a \
                     public key or certificate"
                ),
            ),
            (
                format!("-----BEGIN {}-----\nAAAA\n", "L".repeat(100_000)),
                format!(
                    "the PEM block BEGIN \"{forty}\"... has no END line (or one with another label)"
                ),
            ),
            (
                format!("-----BEGIN {}\n", "L".repeat(100_000)),
                format!("a PEM BEGIN line does not end in five dashes: \"{forty}\"..."),
            ),
            // The fuzzer's find (jwk_input): a label of control characters
            // made a 309-character error when they were escaped after the cut.
            (
                format!(
                    "-----BEGIN {}PRIVATE EYK-----\nMIGHAgEAMB\0.\0\0\0BFQXAbSr PRIVATE KEY-----\n",
                    "\u{12}".repeat(102)
                ),
                format!(
                    "the PEM block BEGIN \"{}\"... has no END line (or one with another label)",
                    "\\u{12}".repeat(6)
                ),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(error_of(PrivateKey::from_pem(&text, None)), expected);
        }

        // The first block with an error of its own decides, as before.
        let public = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE0sWPavov3s7UC0kBEWLqh6XwDE/P\n-----END PUBLIC KEY-----\n";
        let openssh = block("OPENSSH PRIVATE KEY");
        for (text, expected) in [
            (format!("{public}{EC_SEC1_PEM}"), "SEC1"),
            (format!("{EC_SEC1_PEM}{EC_ENCRYPTED_PEM}"), "SEC1"),
            (format!("{EC_ENCRYPTED_PEM}{EC_SEC1_PEM}"), "encrypted"),
            (format!("{openssh}{EC_SEC1_PEM}"), "OpenSSH"),
            (format!("{public}{openssh}"), "OpenSSH"),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu2Boi38a\n-----END RSA PRIVATE KEY-----\n"
                    .to_owned(),
                "PKCS#1",
            ),
            // Legacy encryption headers: in a block after a SEC1 one, the SEC1 one decides.
            (
                format!("{EC_SEC1_PEM}-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\nAAAA\n-----END RSA PRIVATE KEY-----\n"),
                "SEC1",
            ),
            (
                format!("{public}-----BEGIN X-----\nProc-Type: 4,ENCRYPTED\n\nAAAA\n-----END X-----\n{EC_SEC1_PEM}"),
                "encrypted",
            ),
        ] {
            let message = error_of(PrivateKey::from_pem(&text, None));
            assert!(message.contains(expected), "{text}: {message}");
        }
    }

    #[test]
    fn garbage_pem_is_refused() {
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "no PEM block"),
            ("just some text".into(), "no PEM block"),
            ("-----BEGIN PRIVATE KEY-----\nMIGHAgEA\n".into(), "no END"),
            (
                "-----BEGIN PRIVATE KEY-----\nMIGHAgEA\n-----END EC PRIVATE KEY-----\n".into(),
                "no END",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\n!!!notbase64***\n-----END PRIVATE KEY-----\n".into(),
                "base64",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n".into(),
                "empty",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\naGVsbG8gd29ybGQ=\n-----END PRIVATE KEY-----\n".into(),
                "PKCS#8",
            ),
            // Truncated: the last line of the EC key dropped (base64 still valid).
            (
                EC_PEM
                    .lines()
                    .filter(|l| !l.starts_with("d6e7"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                "",
            ),
            (P384_PEM.into(), "P-256"),
            (pkcs8_with_algorithm(&oid(OID_RSA_PSS)), "RSASSA-PSS"),
            (pkcs8_with_algorithm(&oid(&[0x2b, 0x65, 0x71])), "Ed448"),
            (
                pkcs8_with_algorithm(&oid(&[0x2b, 0x65, 0x6e])),
                "key agreement",
            ),
            // DSA, 1.2.840.10040.4.1.
            (
                pkcs8_with_algorithm(&oid(&[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x01])),
                "OID 1.2.840.10040.4.1",
            ),
            // An EC algorithm identifier without curve parameters.
            (pkcs8_with_algorithm(&oid(OID_EC_PUBLIC_KEY)), "P-256"),
            // Right algorithm, key bytes ring refuses.
            (pkcs8_with_algorithm(&oid(OID_ED25519)), "ring refused"),
            (pkcs8_with_algorithm(&oid(OID_RSA)), "ring refused"),
        ];
        for (pem, expected) in cases {
            let message = error_of(PrivateKey::from_pem(&pem, None));
            assert!(message.contains(expected), "{pem:?}: {message}");
        }
        // Corrupted key bytes with an intact structure.
        let mut der = B64
            .decode(
                EC_PEM
                    .lines()
                    .filter(|l| !l.starts_with("-----"))
                    .collect::<String>(),
            )
            .unwrap();
        der[40] ^= 0xff;
        error_of(PrivateKey::from_pem(&pem("PRIVATE KEY", &der), None));
    }

    #[test]
    fn bad_jwks_are_refused() {
        let edit = |jwk: &str, change: &dyn Fn(&mut Map<String, Value>)| {
            let mut value: Value = serde_json::from_str(jwk).unwrap();
            change(value.as_object_mut().unwrap());
            value.to_string()
        };
        let other_ec = PrivateKey::generate(Algorithm::ES256).unwrap();
        let other_x = other_ec.public_jwk().members()["x"].clone();
        let other_ed = PrivateKey::generate(Algorithm::EdDSA).unwrap();
        let other_ed_x = other_ed.public_jwk().members()["x"].clone();
        let rsa_n = jwk_member(RSA_JWK, "n");
        let cases: Vec<(String, &str)> = vec![
            ("not json".into(), "not valid JSON"),
            (format!("[{EC_JWK}]"), "not a JSON object"),
            (format!("{{\"keys\": [{EC_JWK}]}}"), "JWK Set"),
            (
                edit(EC_JWK, &|m| {
                    m.remove("kty");
                }),
                "no kty",
            ),
            (
                edit(EC_JWK, &|m| {
                    m.remove("d");
                }),
                "public key",
            ),
            (
                edit(RSA_JWK, &|m| {
                    m.remove("d");
                }),
                "public key",
            ),
            (
                edit(EC_JWK, &|m| {
                    m.remove("y");
                }),
                "no y",
            ),
            (
                edit(EC_JWK, &|m| {
                    m.remove("crv");
                }),
                "no crv",
            ),
            (
                edit(ED_JWK, &|m| {
                    m.remove("x");
                }),
                "no x",
            ),
            (
                edit(RSA_JWK, &|m| {
                    m.remove("dp");
                }),
                "no dp",
            ),
            (
                edit(RSA_JWK, &|m| {
                    m.remove("qi");
                }),
                "no qi",
            ),
            (
                edit(EC_JWK, &|m| {
                    m.insert("x".into(), other_x.clone());
                }),
                "do not match",
            ),
            (
                edit(ED_JWK, &|m| {
                    m.insert("x".into(), other_ed_x.clone());
                }),
                "do not match",
            ),
            // n with a leading zero byte: the same number, but not the JWK spelling.
            (
                edit(RSA_JWK, &|m| {
                    let mut n = B64URL.decode(&rsa_n).unwrap();
                    n.insert(0, 0);
                    m.insert("n".into(), B64URL.encode(n).into());
                }),
                "zero byte",
            ),
            // n of another key (one byte changed): p * q is no longer n.
            (
                edit(RSA_JWK, &|m| {
                    let mut n = B64URL.decode(&rsa_n).unwrap();
                    n[100] ^= 0x10;
                    m.insert("n".into(), B64URL.encode(n).into());
                }),
                "do not match",
            ),
            (
                edit(RSA_JWK, &|m| {
                    m.insert("e".into(), "AQAA".into());
                }),
                "exponent",
            ),
            (
                edit(RSA_JWK, &|m| {
                    m.insert("oth".into(), json!([]));
                }),
                "multi-prime",
            ),
            (
                edit(EC_JWK, &|m| {
                    m.insert("crv".into(), "P-384".into());
                }),
                "P-384",
            ),
            (
                edit(EC_JWK, &|m| {
                    m.insert("crv".into(), "secp256k1".into());
                }),
                "secp256k1",
            ),
            (
                edit(ED_JWK, &|m| {
                    m.insert("crv".into(), "Ed448".into());
                }),
                "Ed448",
            ),
            (
                edit(ED_JWK, &|m| {
                    m.insert("crv".into(), "X25519".into());
                }),
                "key agreement",
            ),
            (
                r#"{"kty":"oct","k":"c2VjcmV0c2VjcmV0c2VjcmV0"}"#.into(),
                "symmetric",
            ),
            (
                edit(EC_JWK, &|m| {
                    m.insert("kty".into(), "DSA".into());
                }),
                "\"DSA\"",
            ),
            (
                edit(EC_JWK, &|m| {
                    m.insert("kty".into(), json!(1));
                }),
                "kty is not a string",
            ),
            (
                edit(EC_JWK, &|m| {
                    m.insert("d".into(), json!(12345));
                }),
                "d is not a string",
            ),
            (
                edit(EC_JWK, &|m| {
                    m.insert("d".into(), "not base64!".into());
                }),
                "base64url",
            ),
            (
                edit(EC_JWK, &|m| {
                    m.insert("d".into(), format!("{EC_D}==").into());
                }),
                "base64url",
            ),
            (
                edit(EC_JWK, &|m| {
                    m.insert("d".into(), "".into());
                }),
                "empty",
            ),
            (
                edit(EC_JWK, &|m| {
                    m.insert("d".into(), B64URL.encode([7u8; 33]).into());
                }),
                "longer",
            ),
            (
                edit(ED_JWK, &|m| {
                    m.insert("d".into(), B64URL.encode([7u8; 31]).into());
                }),
                "32 bytes",
            ),
            (
                edit(EC_JWK, &|m| {
                    m.insert("x".into(), "AAAA".into());
                }),
                "not 32",
            ),
            (
                edit(EC_JWK, &|m| {
                    m.insert("use".into(), "enc".into());
                }),
                "\"use\"",
            ),
            (
                edit(EC_JWK, &|m| {
                    m.insert("key_ops".into(), json!(["verify"]));
                }),
                "key_ops",
            ),
            (
                edit(EC_JWK, &|m| {
                    m.insert("alg".into(), json!(7));
                }),
                "alg is not a string",
            ),
        ];
        for (jwk, expected) in cases {
            let message = error_of(PrivateKey::from_jwk(&jwk, None));
            assert!(message.contains(expected), "{jwk}: {message}");
        }
        // A d of 31 bytes for EC is left-padded (some encoders drop leading
        // zeros), and then refused as not matching x/y.
        let short = edit(EC_JWK, &|m| {
            m.insert("d".into(), B64URL.encode([7u8; 31]).into());
        });
        assert!(error_of(PrivateKey::from_jwk(&short, None)).contains("do not match"));
    }

    #[test]
    fn files_are_sniffed_and_errors_name_the_path() {
        let dir =
            std::env::temp_dir().join(format!("token-keeper-keys-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, content: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, content).unwrap();
            path
        };
        let pem_path = write("ec.pem", EC_PEM.as_bytes());
        let jwk_path = write("ed.jwk", format!("\u{feff}\n  {ED_JWK}\n").as_bytes());
        let rsa_path = write("rsa.json", RSA_JWK.as_bytes());
        assert_eq!(
            PrivateKey::from_file(&pem_path, None)
                .unwrap()
                .public_jwk()
                .thumbprint(),
            EC_THUMBPRINT
        );
        assert_eq!(
            PrivateKey::from_file(&jwk_path, None)
                .unwrap()
                .public_jwk()
                .thumbprint(),
            ED_THUMBPRINT
        );
        let rsa = PrivateKey::from_file(&rsa_path, Some(Algorithm::PS256)).unwrap();
        assert_eq!(rsa.algorithm(), Algorithm::PS256);

        let der = B64
            .decode(
                EC_PEM
                    .lines()
                    .filter(|l| !l.starts_with("-----"))
                    .collect::<String>(),
            )
            .unwrap();
        let cases = [
            (write("sec1.pem", EC_SEC1_PEM.as_bytes()), "openssl pkcs8"),
            (write("key.der", &der), "DER"),
            (write("binary", &[0xff, 0xfe, 0x00]), "not text"),
            (write("junk.txt", b"hello"), "neither"),
            (
                write(
                    "bad.jwk",
                    format!("{{\"kty\":\"EC\",\"crv\":\"P-256\",\"d\":\"{EC_D}\"}}").as_bytes(),
                ),
                "no x",
            ),
            (dir.join("missing.pem"), "cannot read"),
            (write("huge.pem", &vec![b'A'; 70 * 1024]), "larger than"),
            // A directory stands for what is not a regular file (a FIFO,
            // `/dev/zero`): refused before anything is read.
            (dir.clone(), "not a regular file"),
        ];
        for (path, expected) in cases {
            let message = error_of(PrivateKey::from_file(&path, None));
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains(expected), "{message}");
        }
        let wrong = error_of(PrivateKey::from_file(&pem_path, Some(Algorithm::EdDSA)));
        assert!(
            wrong.contains("ec.pem") && wrong.contains("EdDSA"),
            "{wrong}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_shows_alg_and_thumbprint_only() {
        let keys = [
            PrivateKey::from_pem(EC_PEM, None).unwrap(),
            PrivateKey::from_jwk(ED_JWK, None).unwrap(),
            PrivateKey::from_pem(RSA_PEM, Some(Algorithm::PS256)).unwrap(),
        ];
        for key in &keys {
            let debug = format!("{key:?}");
            assert_no_secret(&debug);
            assert!(debug.contains(key.algorithm().name()), "{debug}");
            assert!(debug.contains(key.public_jwk().thumbprint()), "{debug}");
            assert!(!debug.contains("\"d\"") && !debug.contains("d:"), "{debug}");
        }
        assert_eq!(
            format!("{:?}", keys[0]),
            format!("PrivateKey {{ alg: ES256, thumbprint: \"{EC_THUMBPRINT}\", .. }}")
        );
        // Also for generated keys: neither their PEM body nor d shows.
        let (key, pem) = PrivateKey::generate_pem(Algorithm::EdDSA).unwrap();
        let debug = format!("{key:?}");
        for line in pem.lines().filter(|line| !line.starts_with("-----")) {
            assert!(!debug.contains(line), "{debug}");
        }
        // Ed25519 PKCS#8 (v1, as written) has a 16-byte prefix, then the 32-byte seed (d).
        let der = B64
            .decode(
                pem.lines()
                    .filter(|line| !line.starts_with("-----"))
                    .collect::<String>(),
            )
            .unwrap();
        let d = Zeroizing::new(B64URL.encode(&der[16..48]));
        assert!(!debug.contains(d.as_str()), "{debug}");
        assert!(!debug.contains(&d[..12]), "{debug}");
        // That really is d: the same key comes back from it as a JWK.
        let x = key.public_jwk().members()["x"].as_str().unwrap();
        let jwk = format!(
            r#"{{"kty":"OKP","crv":"Ed25519","x":"{x}","d":"{}"}}"#,
            d.as_str()
        );
        assert_eq!(
            PrivateKey::from_jwk(&jwk, None).unwrap().public_jwk(),
            key.public_jwk()
        );
        assert_no_secret(&format!("{:?}", key.public_jwk()));
    }

    #[test]
    fn oid_text_is_dotted() {
        assert_eq!(oid_text(OID_RSA), "1.2.840.113549.1.1.1");
        assert_eq!(oid_text(OID_P256), "1.2.840.10045.3.1.7");
        assert_eq!(oid_text(OID_ED25519), "1.3.101.112");
    }

    #[test]
    fn a_corrupt_rsa_key_is_refused_when_loaded() {
        // The fuzzer's find: ring loads a key whose dp does not match its primes,
        // then fails every signature. One character of dp changed:
        let corrupt = RSA_JWK.replace("\"dp\": \"sidi6", "\"dp\": \"tidi6");
        assert_ne!(corrupt, RSA_JWK);
        let error = PrivateKey::from_jwk(&corrupt, None).unwrap_err();
        assert!(error.message().contains("CRT"), "{error}");
        assert!(PrivateKey::from_jwk(RSA_JWK, None).is_ok());
    }
}
