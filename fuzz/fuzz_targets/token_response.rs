//! `parse_token_response` on arbitrary bodies.
//!
//! Input: the first byte picks the HTTP status from a small table, the rest
//! is the response body. Checks:
//! - it never panics;
//! - on error, neither `Display` nor `Debug` of the error contains the client
//!   secret (`hunter2`, passed as the sensitive string);
//! - on success, the token is non-empty visible ASCII (0x21..=0x7e) and
//!   `<scheme> <token>` is a valid `http::HeaderValue`.
#![no_main]

use http::{HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;
use token_keeper::response::parse_token_response;

const STATUSES: [u16; 7] = [200, 201, 400, 401, 429, 500, 302];
const SECRET: &str = "hunter2";
/// Small enough that the fuzzer also reaches the size check.
const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let status = StatusCode::from_u16(STATUSES[selector as usize % STATUSES.len()]).unwrap();
    match parse_token_response(status, body, LIMIT, &[SECRET]) {
        Err(err) => {
            let display = err.to_string();
            let debug = format!("{err:?}");
            assert!(
                !display.contains(SECRET),
                "the secret leaked into Display of the error: {display}"
            );
            assert!(
                !debug.contains(SECRET),
                "the secret leaked into Debug of the error: {debug}"
            );
            assert_eq!(err.status(), Some(status), "the error lost the status");
        }
        Ok(response) => {
            assert!(
                status.is_success(),
                "a token was accepted from a {status} response"
            );
            let token = response.access_token().expose_secret();
            assert!(!token.is_empty(), "an empty token was accepted");
            assert!(
                token.bytes().all(|b| (0x21..=0x7e).contains(&b)),
                "a token that is not visible ASCII was accepted"
            );
            let header = format!("{} {}", response.token_type().scheme(), token);
            assert!(
                HeaderValue::from_str(&header).is_ok(),
                "the Authorization header cannot be built from the token"
            );
        }
    }
});
