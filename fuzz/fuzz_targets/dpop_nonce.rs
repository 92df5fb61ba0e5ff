//! `nonce_from_headers` and `NonceStore` on arbitrary `DPoP-Nonce` values.
//!
//! Input: the first byte picks a request URI from a small table and a nonce
//! lifetime; the rest is split at `\n` into up to three `DPoP-Nonce` field
//! values (those `http::HeaderValue::from_bytes` accepts; the first field of
//! the input must be one, else the input is skipped). Checks:
//! - it never panics;
//! - the nonce read is exactly the first field, trimmed, when that is
//!   non-empty, at most 512 bytes of visible ASCII (0x21..=0x7e) without `"`
//!   or `\`, and nothing otherwise (the later fields never matter);
//! - `NonceStore::update_from` stores exactly when a nonce was read; reading
//!   it back for the same origin (also spelled with another case or an
//!   explicit default port) gives it back until `now + lifetime` and not at
//!   that instant; another origin (other scheme, host or port) never sees it
//!   and keeps the nonce it had.
#![no_main]

use std::time::Duration;

use http::{HeaderMap, HeaderValue, Uri};
use libfuzzer_sys::fuzz_target;
use token_keeper::dpop::{nonce_from_headers, origin_of, NonceStore, DPOP_NONCE};
use token_keeper::Instant;

/// (request URI, the same origin spelled differently)
const URIS: [(&str, &str); 4] = [
    ("https://as.example/token", "HTTPS://AS.EXAMPLE:443/other?q=1"),
    ("https://as.example:8443/token", "https://As.Example:8443/"),
    ("http://127.0.0.1:3000/token", "http://127.0.0.1:3000/x"),
    ("https://api.example/v1/items?id=7", "https://api.example:443"),
];
/// Origins that differ from every entry above in one part only, plus the others.
const OTHERS: [&str; 6] = [
    "http://as.example",
    "https://as.example:444",
    "https://as.example.evil",
    "https://evil.as.example",
    "http://127.0.0.1:3001",
    "https://127.0.0.1:3000",
];
const LIFETIMES: [Duration; 4] = [
    Duration::from_secs(300),
    Duration::from_nanos(1),
    Duration::from_secs(0),
    Duration::MAX,
];

/// The nonce RFC 9449 §8.1 allows (and this crate bounds), from the first field.
fn model(first: &HeaderValue) -> Option<String> {
    let text = first.to_str().ok()?;
    let trimmed = text.trim_matches(|c| c == ' ' || c == '\t');
    let ok = !trimmed.is_empty()
        && trimmed.len() <= 512
        && trimmed
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\');
    ok.then(|| trimmed.to_owned())
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut fields = rest.split(|&b| b == b'\n').take(3);
    let Some(Ok(first)) = fields.next().map(HeaderValue::from_bytes) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.append(DPOP_NONCE, first.clone());
    for field in fields {
        if let Ok(value) = HeaderValue::from_bytes(field) {
            headers.append(DPOP_NONCE, value);
        }
    }

    let nonce = nonce_from_headers(&headers);
    if let Some(nonce) = &nonce {
        assert!(!nonce.is_empty(), "an empty nonce was accepted");
        assert!(nonce.len() <= 512, "a nonce of {} bytes was accepted", nonce.len());
        assert!(
            nonce
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\'),
            "a nonce with a byte outside visible ASCII (or a quote or backslash) was accepted: {nonce:?}"
        );
    }
    assert_eq!(nonce, model(&first), "the nonce read differs from the first field's");

    let (uri, same) = URIS[usize::from(selector & 3)];
    let lifetime = LIFETIMES[usize::from(selector >> 2 & 3)];
    let uri: Uri = uri.parse().unwrap();
    let origin = origin_of(&uri).unwrap();
    assert_eq!(
        origin_of(&same.parse().unwrap()).as_deref(),
        Some(origin.as_str()),
        "one origin, two spellings"
    );
    let now = Instant::from_secs(1_000 + u64::from(selector >> 4));

    let mut store = NonceStore::default();
    // Another origin already holds a nonce (the first table entry that differs).
    let other_uri: Uri = URIS
        .iter()
        .map(|(u, _)| u.parse::<Uri>().unwrap())
        .find(|u| origin_of(u).as_deref() != Some(origin.as_str()))
        .unwrap();
    let other_origin = origin_of(&other_uri).unwrap();
    store.store(other_origin.clone(), "other-nonce".into(), now, Duration::from_secs(600));

    let stored = store.update_from(&uri, &headers, now, lifetime);
    assert_eq!(stored, nonce.is_some(), "update_from stored without a nonce, or not with one");
    let expires = now.saturating_add(lifetime);
    match &nonce {
        Some(nonce) if expires > now => {
            assert_eq!(store.get(&origin, now), Some(nonce.as_str()), "stored nonce not read back");
            let last = Instant::from_nanos(expires.as_nanos() - 1);
            assert_eq!(store.get(&origin, last), Some(nonce.as_str()), "nonce gone before its expiry");
            if expires < Instant::MAX {
                assert_eq!(store.get(&origin, expires), None, "nonce outlived its lifetime");
            }
        }
        _ => assert_eq!(store.get(&origin, now), None, "a nonce appeared from nowhere"),
    }
    assert_eq!(
        store.get(&other_origin, now),
        Some("other-nonce"),
        "another origin's nonce was changed"
    );
    for other in OTHERS.iter().copied().filter(|o| *o != origin) {
        let got = store.get(other, now);
        assert!(
            got.is_none() || (other == other_origin && got == Some("other-nonce")),
            "origin {other} sees the nonce stored for {origin}: {got:?}"
        );
    }
});
