//! Sealed store entries: a [`StoredToken`] encrypted with AES-256-GCM and
//! bound to its [`StoreKey`].
//!
//! # Format, version 1
//!
//! ```text
//! entry     = version (1 byte, 0x01) | key id (1 byte) | nonce (12 bytes)
//!             | AES-256-GCM ciphertext of the plaintext, with its 16-byte tag
//! AAD       = "token-keeper entry v1" | version | key id | store key bytes
//! plaintext = token type (1 byte: 1 Bearer, 2 DPoP)
//!             | lifetime in milliseconds (u64, big-endian, at least 1)
//!             | scope length (u32, big-endian; 0xFFFFFFFF: no scope, and no bytes follow)
//!             | scope (UTF-8)
//!             | token length (u32, big-endian) | token (visible ASCII)
//! ```
//!
//! The nonce is 12 fresh bytes from the operating system's random source
//! for every entry sealed. The AAD binds the entry to its store key, its key
//! id and its version: an entry copied under another key's name, or edited
//! to name another key id or version, does not open. Nothing may follow the
//! token. `RedisStore` passes as the store key the namespace, a zero byte
//! and the core's store key, so an entry does not open in another namespace
//! either, even one sharing the sealing key.
//!
//! [`open`] refuses, as [`StoreErrorKind::Invalid`] and without panicking,
//! whatever is not an entry sealed by [`seal`] for this store key with one of
//! these keys: an entry over [`MAX_ENTRY`] bytes (without decrypting it),
//! another version, an unknown key id, a failed tag, a malformed plaintext,
//! and a token that fails [`StoredToken::new`]'s checks.

use std::time::Duration;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use token_keeper::{StoreError, StoreErrorKind, StoreKey, StoredToken, TokenType};
use zeroize::Zeroizing;

use crate::keys::{EntryKey, StoreKeys};

/// The entry format's version: the first byte of every entry.
pub const VERSION: u8 = 1;
/// The largest entry [`open`] reads; a larger one is refused unopened.
pub const MAX_ENTRY: usize = 64 * 1024;
/// The first bytes of the additional authenticated data.
pub const AAD_LABEL: &[u8] = b"token-keeper entry v1";

const HEADER_LEN: usize = 2 + NONCE_LEN;
const TAG_LEN: usize = 16;
const NO_SCOPE: u32 = u32::MAX;
const TYPE_BEARER: u8 = 1;
const TYPE_DPOP: u8 = 2;

fn invalid(message: &str) -> StoreError {
    StoreError::new(StoreErrorKind::Invalid, message)
}

fn aad(key_id: u8, store_key: &StoreKey) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_LABEL.len() + 2 + store_key.as_bytes().len());
    aad.extend_from_slice(AAD_LABEL);
    aad.push(VERSION);
    aad.push(key_id);
    aad.extend_from_slice(store_key.as_bytes());
    aad
}

fn aead_key(key: &EntryKey) -> LessSafeKey {
    // A 32-byte key is always the length AES-256-GCM wants.
    let unbound = UnboundKey::new(&AES_256_GCM, &key.bytes[..]);
    LessSafeKey::new(unbound.unwrap_or_else(|_| unreachable!("AES-256 keys are 32 bytes")))
}

/// The plaintext of `token`, as the format above lays it out.
fn encode(token: &StoredToken) -> Zeroizing<Vec<u8>> {
    let access = token.access_token().expose_secret().as_bytes();
    let scope = token.scope().map(str::as_bytes);
    let mut out = Zeroizing::new(Vec::with_capacity(
        1 + 8 + 4 + scope.map_or(0, <[u8]>::len) + 4 + access.len() + TAG_LEN,
    ));
    out.push(match token.token_type() {
        TokenType::Bearer => TYPE_BEARER,
        TokenType::DPoP => TYPE_DPOP,
        // A token type this version does not know: sealed as 0, which
        // `open` refuses (the entry is then no entry, never a wrong one).
        _ => 0,
    });
    let lifetime_ms = u64::try_from(token.lifetime().as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    out.extend_from_slice(&lifetime_ms.to_be_bytes());
    match scope {
        // A scope is at most MAX_STORED_SCOPE (4 KiB) long: its length fits.
        Some(scope) => {
            out.extend_from_slice(&(scope.len() as u32).to_be_bytes());
            out.extend_from_slice(scope);
        }
        None => out.extend_from_slice(&NO_SCOPE.to_be_bytes()),
    }
    // A token is at most MAX_STORED_TOKEN (16 KiB) long: its length fits.
    out.extend_from_slice(&(access.len() as u32).to_be_bytes());
    out.extend_from_slice(access);
    out
}

/// Seals `token` for `store_key` with the current key of `keys`, under a
/// fresh random nonce.
///
/// Fails (as [`StoreErrorKind::Other`]) only if the operating system's
/// random source does: a nonce is never made up.
pub fn seal(
    keys: &StoreKeys,
    store_key: &StoreKey,
    token: &StoredToken,
) -> Result<Vec<u8>, StoreError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).map_err(|_| {
        StoreError::new(
            StoreErrorKind::Other,
            "the operating system's random source failed",
        )
    })?;
    Ok(seal_with_nonce(keys, store_key, token, nonce))
}

fn seal_with_nonce(
    keys: &StoreKeys,
    store_key: &StoreKey,
    token: &StoredToken,
    nonce: [u8; NONCE_LEN],
) -> Vec<u8> {
    let key = &keys.current;
    let plaintext = encode(token);
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
    out.push(VERSION);
    out.push(key.id);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&plaintext);
    let tag = aead_key(key)
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(key.id, store_key)),
            &mut out[HEADER_LEN..],
        )
        // Fails only for inputs over about 64 GiB.
        .unwrap_or_else(|_| unreachable!("entries are far below AES-GCM's limit"));
    out.extend_from_slice(tag.as_ref());
    out
}

/// Opens `bytes`, an entry read for `store_key`, with whichever of `keys`
/// its key id names: the token, or [`StoreErrorKind::Invalid`] with a
/// secret-free message.
pub fn open(
    keys: &StoreKeys,
    store_key: &StoreKey,
    bytes: &[u8],
) -> Result<StoredToken, StoreError> {
    if bytes.len() > MAX_ENTRY {
        return Err(invalid("the entry is too large"));
    }
    if bytes.len() < HEADER_LEN + TAG_LEN {
        return Err(invalid("the entry is truncated"));
    }
    if bytes[0] != VERSION {
        return Err(invalid("the entry has an unknown format version"));
    }
    let key_id = bytes[1];
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&bytes[2..HEADER_LEN]);
    let aad = aad(key_id, store_key);
    let mut candidates = keys.candidates(key_id).peekable();
    if candidates.peek().is_none() {
        return Err(invalid("the entry is sealed with an unknown key id"));
    }
    for key in candidates {
        let mut in_out = Zeroizing::new(bytes[HEADER_LEN..].to_vec());
        let opened = aead_key(key).open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&aad[..]),
            &mut in_out[..],
        );
        if let Ok(plaintext) = opened {
            return decode(plaintext);
        }
    }
    Err(invalid(
        "the entry does not open (wrong key, another store key, or altered)",
    ))
}

/// Reads a plaintext laid out by [`encode`].
fn decode(plaintext: &[u8]) -> Result<StoredToken, StoreError> {
    let malformed = || invalid("the entry's contents are malformed");
    let mut reader = Reader(plaintext);
    let token_type = match reader.take(1).ok_or_else(malformed)?[0] {
        TYPE_BEARER => TokenType::Bearer,
        TYPE_DPOP => TokenType::DPoP,
        _ => return Err(invalid("the entry has an unknown token type")),
    };
    let lifetime_ms = u64::from_be_bytes(reader.array().ok_or_else(malformed)?);
    let scope = match u32::from_be_bytes(reader.array().ok_or_else(malformed)?) {
        NO_SCOPE => None,
        len => {
            let bytes = reader.take(len as usize).ok_or_else(malformed)?;
            let scope = std::str::from_utf8(bytes).map_err(|_| malformed())?;
            Some(scope.to_owned())
        }
    };
    let token_len = u32::from_be_bytes(reader.array().ok_or_else(malformed)?);
    let token = reader.take(token_len as usize).ok_or_else(malformed)?;
    if !reader.0.is_empty() {
        return Err(malformed());
    }
    // Not UTF-8 is not visible ASCII either: StoredToken::new would refuse it.
    let token =
        std::str::from_utf8(token).map_err(|_| invalid("the stored token is not header-safe"))?;
    StoredToken::new(
        token.to_owned(),
        token_type,
        scope,
        Duration::from_millis(lifetime_ms),
    )
}

/// Reads fields off the front of a slice, never past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: [u8; 32] = [1; 32];
    const K2: [u8; 32] = [2; 32];

    fn store_key() -> StoreKey {
        StoreKey::from_bytes(b"\x01\x00\x00\x00\x09client-id\x00\x00\x00\x0borders.read")
    }

    fn token(scope: Option<&str>, token_type: TokenType) -> StoredToken {
        StoredToken::new(
            "eyJ.token-value_123~".to_owned(),
            token_type,
            scope.map(str::to_owned),
            Duration::from_secs(3600),
        )
        .unwrap()
    }

    fn assert_invalid(result: Result<StoredToken, StoreError>) {
        match result {
            Err(error) => assert_eq!(error.kind(), StoreErrorKind::Invalid, "{error}"),
            Ok(token) => panic!("opened {token:?}"),
        }
    }

    /// Seals `plaintext` as an entry would be, for malformed plaintexts.
    fn seal_raw(key_id: u8, key: &[u8; 32], version: u8, plaintext: &[u8]) -> Vec<u8> {
        let keys = StoreKeys::new(key_id, *key);
        let mut out = vec![version, key_id];
        out.extend_from_slice(&[9; NONCE_LEN]);
        out.extend_from_slice(plaintext);
        let mut aad = AAD_LABEL.to_vec();
        aad.push(version);
        aad.push(key_id);
        aad.extend_from_slice(store_key().as_bytes());
        let tag = aead_key(&keys.current)
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key([9; NONCE_LEN]),
                Aad::from(aad),
                &mut out[HEADER_LEN..],
            )
            .unwrap();
        out.extend_from_slice(tag.as_ref());
        out
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let keys = StoreKeys::new(1, K1);
        for (scope, token_type) in [
            (Some("orders.read orders.write"), TokenType::Bearer),
            (None, TokenType::DPoP),
            (Some(""), TokenType::Bearer),
        ] {
            let token = token(scope, token_type);
            let sealed = seal(&keys, &store_key(), &token).unwrap();
            assert_eq!(sealed[0], VERSION);
            assert_eq!(sealed[1], 1);
            let opened = open(&keys, &store_key(), &sealed).unwrap();
            assert_eq!(opened, token);
            assert_eq!(opened.scope(), scope);
            assert_eq!(opened.token_type(), token_type);
            assert_eq!(opened.lifetime(), Duration::from_secs(3600));
        }
    }

    #[test]
    fn sealed_entries_hide_the_token_and_use_fresh_nonces() {
        let keys = StoreKeys::new(1, K1);
        let token = token(Some("orders.read"), TokenType::Bearer);
        let a = seal(&keys, &store_key(), &token).unwrap();
        let b = seal(&keys, &store_key(), &token).unwrap();
        assert_ne!(a[2..HEADER_LEN], b[2..HEADER_LEN], "nonce reused");
        assert_ne!(a, b);
        for sealed in [&a, &b] {
            assert!(!sealed.windows(5).any(|w| w == b"token" || w == b"order"));
        }
    }

    #[test]
    fn sub_millisecond_lifetimes_round_up_to_one_millisecond() {
        let keys = StoreKeys::new(1, K1);
        let token = StoredToken::new(
            "t".to_owned(),
            TokenType::Bearer,
            None,
            Duration::from_micros(10),
        )
        .unwrap();
        let opened = open(
            &keys,
            &store_key(),
            &seal(&keys, &store_key(), &token).unwrap(),
        );
        assert_eq!(opened.unwrap().lifetime(), Duration::from_millis(1));
    }

    #[test]
    fn entries_are_bound_to_their_store_key() {
        let keys = StoreKeys::new(1, K1);
        let sealed = seal(&keys, &store_key(), &token(None, TokenType::Bearer)).unwrap();
        assert_invalid(open(&keys, &StoreKey::from_bytes(b"\x01other"), &sealed));
        let mut longer = store_key().as_bytes().to_vec();
        longer.push(0);
        assert_invalid(open(&keys, &StoreKey::from_bytes(&longer), &sealed));
    }

    #[test]
    fn rotation_reads_old_keys_and_writes_with_the_current_one() {
        let old = StoreKeys::new(1, K1);
        let rotated = StoreKeys::new(2, K2).with_old(1, K1);
        let token = token(Some("s"), TokenType::Bearer);
        let sealed_old = seal(&old, &store_key(), &token).unwrap();
        assert_eq!(open(&rotated, &store_key(), &sealed_old).unwrap(), token);
        let sealed_new = seal(&rotated, &store_key(), &token).unwrap();
        assert_eq!(sealed_new[1], 2);
        assert_eq!(open(&rotated, &store_key(), &sealed_new).unwrap(), token);
        // A process that has only the old key cannot read the new entries.
        assert_invalid(open(&old, &store_key(), &sealed_new));
        // Once key 1 is dropped, its entries are Invalid.
        assert_invalid(open(&StoreKeys::new(2, K2), &store_key(), &sealed_old));
        // The right id with the wrong key bytes does not open either.
        assert_invalid(open(&StoreKeys::new(1, K2), &store_key(), &sealed_old));
        // Two keys under one id: both are tried.
        let dup = StoreKeys::new(1, K2).with_old(1, K1);
        assert_eq!(open(&dup, &store_key(), &sealed_old).unwrap(), token);
    }

    #[test]
    fn altered_headers_do_not_open() {
        let keys = StoreKeys::new(1, K1).with_old(3, K1);
        let sealed = seal(&keys, &store_key(), &token(None, TokenType::Bearer)).unwrap();
        // Another version byte.
        for version in [0, 2, 0xff] {
            let mut bad = sealed.clone();
            bad[0] = version;
            assert_invalid(open(&keys, &store_key(), &bad));
        }
        // Another key id, even one that names the same key bytes (the AAD
        // binds the id).
        let mut bad = sealed.clone();
        bad[1] = 3;
        assert_invalid(open(&keys, &store_key(), &bad));
        // An unknown key id.
        bad[1] = 9;
        assert_invalid(open(&keys, &store_key(), &bad));
        // Every single bit flipped anywhere.
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_invalid(open(&keys, &store_key(), &bad));
        }
    }

    #[test]
    fn garbage_and_truncations_are_invalid() {
        let keys = StoreKeys::new(1, K1);
        let sealed = seal(&keys, &store_key(), &token(Some("a"), TokenType::DPoP)).unwrap();
        for len in 0..sealed.len() {
            assert_invalid(open(&keys, &store_key(), &sealed[..len]));
        }
        let mut extended = sealed.clone();
        extended.push(0);
        assert_invalid(open(&keys, &store_key(), &extended));
        assert_invalid(open(&keys, &store_key(), b""));
        assert_invalid(open(&keys, &store_key(), b"eyJhbGciOi.plain.jwt"));
        assert_invalid(open(&keys, &store_key(), &[1u8; 100]));
        assert_invalid(open(&keys, &store_key(), &[0xffu8; 31]));
    }

    #[test]
    fn entries_over_the_bound_are_refused_unopened() {
        let keys = StoreKeys::new(1, K1);
        let mut big = seal(&keys, &store_key(), &token(None, TokenType::Bearer)).unwrap();
        big.resize(MAX_ENTRY + 1, 0);
        let error = open(&keys, &store_key(), &big).unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Invalid);
        assert!(error.message().contains("too large"), "{error}");
        // The largest token and scope a StoredToken allows fit the bound.
        let largest = StoredToken::new(
            "a".repeat(token_keeper::store::MAX_STORED_TOKEN),
            TokenType::Bearer,
            Some("s".repeat(token_keeper::store::MAX_STORED_SCOPE)),
            Duration::from_secs(1),
        )
        .unwrap();
        let sealed = seal(&keys, &store_key(), &largest).unwrap();
        assert!(sealed.len() <= MAX_ENTRY);
        assert_eq!(open(&keys, &store_key(), &sealed).unwrap(), largest);
    }

    #[test]
    fn malformed_plaintexts_are_invalid() {
        let mut good = vec![TYPE_BEARER];
        good.extend_from_slice(&1000u64.to_be_bytes());
        good.extend_from_slice(&NO_SCOPE.to_be_bytes());
        good.extend_from_slice(&3u32.to_be_bytes());
        good.extend_from_slice(b"abc");
        let keys = StoreKeys::new(1, K1);
        let opened = open(&keys, &store_key(), &seal_raw(1, &K1, VERSION, &good)).unwrap();
        assert_eq!(opened.access_token().expose_secret(), "abc");
        assert_eq!(opened.scope(), None);

        let mut cases: Vec<Vec<u8>> = Vec::new();
        // Every truncation of a well-formed plaintext.
        for len in 0..good.len() {
            cases.push(good[..len].to_vec());
        }
        // A trailing byte.
        let mut trailing = good.clone();
        trailing.push(b'x');
        cases.push(trailing);
        // Unknown token types.
        for token_type in [0u8, 3, 0xff] {
            let mut bad = good.clone();
            bad[0] = token_type;
            cases.push(bad);
        }
        // A zero lifetime.
        let mut zero = good.clone();
        zero[1..9].copy_from_slice(&0u64.to_be_bytes());
        cases.push(zero);
        // A scope length past the end, and one that is not UTF-8.
        let mut long_scope = good.clone();
        long_scope[9..13].copy_from_slice(&1000u32.to_be_bytes());
        cases.push(long_scope);
        let mut bad_scope = vec![TYPE_BEARER];
        bad_scope.extend_from_slice(&1000u64.to_be_bytes());
        bad_scope.extend_from_slice(&2u32.to_be_bytes());
        bad_scope.extend_from_slice(&[0xc3, 0x28]);
        bad_scope.extend_from_slice(&3u32.to_be_bytes());
        bad_scope.extend_from_slice(b"abc");
        cases.push(bad_scope);
        // A token length past the end, an empty token, a token that is not
        // header-safe, or not UTF-8.
        for token in [&b""[..], b"a b", b"a\nb", &[0xff, 0xfe], b"\x7f"] {
            let mut bad = good[..13].to_vec();
            bad.extend_from_slice(&(token.len() as u32).to_be_bytes());
            bad.extend_from_slice(token);
            cases.push(bad);
        }
        let mut long_token = good.clone();
        long_token[13..17].copy_from_slice(&u32::MAX.to_be_bytes());
        cases.push(long_token);
        // A token over MAX_STORED_TOKEN.
        let huge = "a".repeat(token_keeper::store::MAX_STORED_TOKEN + 1);
        let mut too_long = good[..13].to_vec();
        too_long.extend_from_slice(&(huge.len() as u32).to_be_bytes());
        too_long.extend_from_slice(huge.as_bytes());
        cases.push(too_long);

        for case in cases {
            assert_invalid(open(&keys, &store_key(), &seal_raw(1, &K1, VERSION, &case)));
        }
        // A well-formed plaintext under a future version byte: refused
        // before decryption.
        assert_invalid(open(&keys, &store_key(), &seal_raw(1, &K1, 2, &good)));
    }

    #[test]
    fn errors_name_no_secret() {
        let keys = StoreKeys::new(1, K1);
        let sealed = seal(&keys, &store_key(), &token(None, TokenType::Bearer)).unwrap();
        let error = open(&StoreKeys::new(1, K2), &store_key(), &sealed).unwrap_err();
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains("token-value"), "{shown}");
        assert!(format!("{keys:?}").contains("current_id: 1"));
        assert!(!format!("{keys:?}").contains("[1, 1"));
    }
}
