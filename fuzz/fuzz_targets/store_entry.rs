//! `token_keeper_redis::entry`: opening arbitrary bytes as a sealed store
//! entry, and sealing tokens built from the input.
//!
//! Input: the whole input is opened as an entry with fixed keys (current id
//! 1, old id 2) for a fixed store key. Then the input is read as a token: the
//! first byte picks the token type (bit 0), whether there is a scope (bit
//! 1) and which byte of the sealed entry to flip (the rest); the next 8
//! bytes (big-endian) are the lifetime in milliseconds; the next byte the
//! scope's length; then the scope and the token (lossy UTF-8). Checks:
//! - it never panics;
//! - `open` fails only as `Invalid`, with a message that quotes no input;
//!   what it accepts is a token `StoredToken::new` accepts, with a lifetime
//!   of whole milliseconds;
//! - a token that `StoredToken::new` accepts seals and opens back to itself
//!   (the lifetime rounded down to whole milliseconds, at least 1), under
//!   the rotated keys too, but not for another store key, not with other
//!   keys, and not with any one byte changed.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use token_keeper::{StoreErrorKind, StoreKey, StoredToken, TokenType};
use token_keeper_redis::{entry, StoreKeys};

const K1: [u8; 32] = [0x5a; 32];
const K2: [u8; 32] = [0xa5; 32];

fuzz_target!(|data: &[u8]| {
    let keys = StoreKeys::new(1, K1).with_old(2, K2);
    let store_key = StoreKey::from_bytes(b"\x01\x00\x00\x00\x06client\x00\x00\x00\x05scope");

    // 1. Arbitrary bytes as an entry.
    match entry::open(&keys, &store_key, data) {
        Ok(token) => {
            let again = StoredToken::new(
                token.access_token().expose_secret().to_owned(),
                token.token_type(),
                token.scope().map(str::to_owned),
                token.lifetime(),
            )
            .expect("an opened token passes StoredToken::new");
            assert_eq!(again, token);
            assert_eq!(token.lifetime().subsec_nanos() % 1_000_000, 0);
        }
        Err(error) => {
            assert_eq!(error.kind(), StoreErrorKind::Invalid);
            assert!(error.message().len() < 200);
        }
    }

    // 2. A token from the input, sealed and opened.
    if data.len() < 10 {
        return;
    }
    let flags = data[0];
    let lifetime_ms = u64::from_be_bytes(data[1..9].try_into().unwrap());
    let scope_len = usize::from(data[9]).min(data.len() - 10);
    let scope = String::from_utf8_lossy(&data[10..10 + scope_len]).into_owned();
    let access = String::from_utf8_lossy(&data[10 + scope_len..]).into_owned();
    let token_type = if flags & 1 == 0 {
        TokenType::Bearer
    } else {
        TokenType::DPoP
    };
    let scope = (flags & 2 != 0).then_some(scope);
    let Ok(token) = StoredToken::new(
        access,
        token_type,
        scope,
        Duration::from_millis(lifetime_ms),
    ) else {
        return;
    };
    let sealed = entry::seal(&keys, &store_key, &token).expect("the OS random source works");
    assert!(sealed.len() <= entry::MAX_ENTRY);
    let opened = entry::open(&keys, &store_key, &sealed).expect("a sealed entry opens");
    assert_eq!(
        opened.access_token().expose_secret(),
        token.access_token().expose_secret()
    );
    assert_eq!(opened.token_type(), token.token_type());
    assert_eq!(opened.scope(), token.scope());
    assert_eq!(opened.lifetime(), Duration::from_millis(lifetime_ms));

    // Rotation: a store whose current key is 2 and old key 1 reads it.
    let rotated = StoreKeys::new(2, K2).with_old(1, K1);
    assert!(entry::open(&rotated, &store_key, &sealed).is_ok());
    // Other keys, another store key, any changed byte: Invalid.
    let invalid = |result: Result<StoredToken, token_keeper::StoreError>| {
        assert_eq!(result.unwrap_err().kind(), StoreErrorKind::Invalid);
    };
    invalid(entry::open(&StoreKeys::new(1, K2), &store_key, &sealed));
    invalid(entry::open(&StoreKeys::new(3, K1), &store_key, &sealed));
    invalid(entry::open(
        &keys,
        &StoreKey::from_bytes(b"\x01other"),
        &sealed,
    ));
    let mut altered = sealed.clone();
    let at = usize::from(flags >> 2) * altered.len() / 64;
    altered[at] ^= 1 << (flags & 7);
    invalid(entry::open(&keys, &store_key, &altered));
    invalid(entry::open(&keys, &store_key, &sealed[..sealed.len() - 1]));
});
