//! `Discovery::handle_response` on arbitrary discovery documents.
//!
//! Input: the first byte picks the HTTP status from a table (low 4 bits) and
//! whether the OpenID document was missing first (bit 7: a 404 comes before,
//! so the document answers the RFC 8414 fallback request); bit 6 picks the
//! configured issuer (with or without a path). The rest is the body. Checks:
//! - it never panics;
//! - a 404/405/410/501 gives `TryNext` on the first request (and the next
//!   request is the RFC 8414 location) and `Failed(NotFound)` on the second;
//! - `Done(metadata)` only for a 2xx, only if the body is a JSON object whose
//!   `issuer` equals the configured issuer exactly and whose `token_endpoint`
//!   is a string, equal to the metadata's, that is an `https` URL with a
//!   host or an `http` URL on a loopback host; the metadata's auth methods
//!   and DPoP algorithms are the document's strings, in order;
//! - a non-2xx other than the "missing" ones fails with that status;
//! - an error's `Display` is a single line (no control characters) of at
//!   most 1024 characters, whatever the document holds.
//!
//! A bug once tolerated here, fixed since (`TOLERATE_EMPTY_HOST_BUG`): a
//! `token_endpoint` such as `https://:xample/token` (empty host) is accepted.
//! See docs/FUZZING.md.
#![no_main]

use http::{Response, StatusCode, Uri};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use token_keeper::discovery::{Discovery, DiscoveryError, DiscoveryStep};

const STATUSES: [u16; 16] = [
    200, 200, 200, 200, 201, 203, 204, 299, 404, 405, 410, 501, 500, 302, 401, 429,
];
const ISSUERS: [&str; 2] = ["https://auth.example.com", "https://login.example.com/tenant/a"];
const FALLBACKS: [&str; 2] = [
    "https://auth.example.com/.well-known/oauth-authorization-server",
    "https://login.example.com/.well-known/oauth-authorization-server/tenant/a",
];
/// See `secure_endpoint`: a known bug in discovery.rs, reported, not fixed yet.
const TOLERATE_EMPTY_HOST_BUG: bool = false;
/// Longest error text accepted (issuers are quoted after truncation to 200 chars).
const MAX_ERROR_CHARS: usize = 1024;

fn missing(status: u16) -> bool {
    matches!(status, 404 | 405 | 410 | 501)
}

/// `https` with a host, or `http` on a loopback host (checked independently of the core).
fn secure_endpoint(endpoint: &str) -> bool {
    let Ok(uri) = endpoint.parse::<Uri>() else {
        return false;
    };
    match (uri.scheme_str(), uri.host()) {
        // KNOWN BUG (docs/FUZZING.md, regressions/discovery_document/empty-host-*):
        // parse_metadata accepts `https://:port/...`, whose host is empty.
        // Set TOLERATE_EMPTY_HOST_BUG to false once it refuses them.
        (Some("https"), Some(host)) => !host.is_empty() || TOLERATE_EMPTY_HOST_BUG,
        (Some("http"), Some(host)) => {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            host.eq_ignore_ascii_case("localhost")
                || bare
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.to_canonical().is_loopback())
        }
        _ => false,
    }
}

fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

fn check_error(error: &DiscoveryError) {
    let display = error.to_string();
    let chars = display.chars().count();
    assert!(
        chars <= MAX_ERROR_CHARS,
        "an error's Display is {chars} characters long: {:?}",
        display.chars().take(300).collect::<String>()
    );
    assert!(
        !display.chars().any(char::is_control),
        "an error's Display holds a control character: {display:?}"
    );
    let debug = format!("{error:?}");
    assert!(
        debug.chars().count() <= 2 * MAX_ERROR_CHARS,
        "an error's Debug is {} characters long",
        debug.chars().count()
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let status = STATUSES[usize::from(selector & 0x0f)];
    let fallback = selector & 0x80 != 0;
    let which = usize::from(selector >> 6 & 1);
    let issuer = ISSUERS[which];
    let mut discovery = Discovery::new(issuer).unwrap();

    if fallback {
        let not_found = Response::builder().status(404).body(Vec::<u8>::new()).unwrap();
        assert!(
            matches!(discovery.handle_response(&not_found), DiscoveryStep::TryNext),
            "a 404 for the OpenID document did not fall back"
        );
        assert_eq!(discovery.request().uri(), FALLBACKS[which], "wrong fallback location");
    }

    let response = Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .body(body)
        .unwrap();
    match discovery.handle_response(&response) {
        DiscoveryStep::TryNext => {
            assert!(
                missing(status) && !fallback,
                "TryNext for HTTP {status} (after a fallback: {fallback})"
            );
        }
        DiscoveryStep::Failed(error) => {
            check_error(&error);
            if missing(status) {
                assert!(fallback, "HTTP {status} on the first request did not fall back");
                assert_eq!(error, DiscoveryError::NotFound, "both documents missing");
            } else if !(200..300).contains(&status) {
                assert_eq!(
                    error,
                    DiscoveryError::Status(StatusCode::from_u16(status).unwrap()),
                    "a non-2xx failed with another error"
                );
            }
        }
        DiscoveryStep::Done(metadata) => {
            assert!((200..300).contains(&status), "metadata accepted from HTTP {status}");
            assert_eq!(metadata.issuer(), issuer, "metadata for another issuer");
            let document: Value = match serde_json::from_slice(body) {
                Ok(document) => document,
                // serde_json does not check the \uXXXX code points (lone or
                // bad surrogates, a lead surrogate not followed by `\u`) nor
                // the number ranges of members it skips, so such an escape or
                // a 1e999 in a member the core ignores gets through, which
                // serde_json::Value refuses. Nothing else may differ.
                Err(e)
                    if e.to_string().contains("unicode code point")
                        || e.to_string().contains("surrogate")
                        || e.to_string().contains("unexpected end of hex escape")
                        || e.to_string().contains("number out of range") =>
                {
                    return
                }
                Err(e) => panic!("accepted a document that is not JSON: {e}"),
            };
            let document = document.as_object().expect("accepted a document that is not an object");
            assert_eq!(
                document.get("issuer").and_then(Value::as_str),
                Some(issuer),
                "accepted a document whose issuer is not exactly the configured one"
            );
            assert_eq!(
                document.get("token_endpoint").and_then(Value::as_str),
                Some(metadata.token_endpoint()),
                "the token endpoint is not the document's"
            );
            assert!(
                secure_endpoint(metadata.token_endpoint()),
                "accepted an insecure token endpoint {:?}",
                metadata.token_endpoint()
            );
            assert_eq!(
                metadata.token_endpoint_auth_methods(),
                strings(document.get("token_endpoint_auth_methods_supported")),
                "auth methods differ from the document's"
            );
            assert_eq!(
                metadata.dpop_signing_algs(),
                strings(document.get("dpop_signing_alg_values_supported")),
                "DPoP algorithms differ from the document's"
            );
        }
    }
});
