//! `parse_challenges` and `parse_www_authenticate` on arbitrary input.
//!
//! Checks:
//! - neither parser panics;
//! - `parse_challenges` (on input that is UTF-8): an error's offset is within
//!   the input and on a char boundary; a success holds at most 64 challenges
//!   and survives a round trip (written back in canonical form, it parses to
//!   the same challenges);
//! - `parse_www_authenticate` on a `HeaderMap` with one `WWW-Authenticate`
//!   field per `\n`-separated piece of the input (pieces that
//!   `HeaderValue::from_bytes` refuses are left out): an error's offset is
//!   within the longest field, and the result agrees with parsing each field
//!   on its own (fields never share challenges; at most 64 in total).
#![no_main]

use http::header::{HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use libfuzzer_sys::fuzz_target;
use token_keeper::challenge::{parse_challenges, parse_www_authenticate, Challenge};

const MAX_CHALLENGES: usize = 64;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check_one_value(text);
    }
    check_header_map(data);
});

fn check_one_value(text: &str) {
    match parse_challenges(text) {
        Err(e) => {
            assert!(
                e.offset() <= text.len(),
                "offset {} past the end of a {}-byte value: {e}",
                e.offset(),
                text.len()
            );
            assert!(
                text.is_char_boundary(e.offset()),
                "offset {} is inside a character: {e}",
                e.offset()
            );
            assert!(!e.reason().is_empty());
        }
        Ok(challenges) => {
            assert!(
                challenges.len() <= MAX_CHALLENGES,
                "too many challenges accepted"
            );
            for c in &challenges {
                assert!(!c.scheme().is_empty(), "a challenge without a scheme");
                assert!(
                    c.token68().is_none() || c.params().next().is_none(),
                    "a challenge with both a token68 and auth-params"
                );
            }
            let canonical = serialize(&challenges);
            match parse_challenges(&canonical) {
                Ok(again) => assert_eq!(again, challenges, "round trip via {canonical:?}"),
                Err(e) => panic!("canonical form {canonical:?} does not parse: {e}"),
            }
        }
    }
}

fn check_header_map(data: &[u8]) {
    let mut headers = HeaderMap::new();
    let mut fields = Vec::new();
    for piece in data.split(|&b| b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(piece) {
            headers.append(WWW_AUTHENTICATE, value.clone());
            fields.push(value);
        }
    }
    let longest = fields.iter().map(|v| v.len()).max().unwrap_or(0);
    let combined = parse_www_authenticate(&headers);

    // Each field on its own, as the function documents it: not text is an error,
    // otherwise `parse_challenges`.
    let mut alone: Vec<Challenge> = Vec::new();
    let mut first_error = None;
    for value in &fields {
        match value.to_str() {
            Err(_) => {
                first_error = Some(());
                break;
            }
            Ok(text) => match parse_challenges(text) {
                Ok(mut cs) => alone.append(&mut cs),
                Err(_) => {
                    first_error = Some(());
                    break;
                }
            },
        }
    }

    match combined {
        Err(e) => {
            assert!(
                e.offset() <= longest,
                "offset {} past the longest field ({longest} bytes): {e}",
                e.offset()
            );
            assert!(
                first_error.is_some() || alone.len() > MAX_CHALLENGES,
                "the header map was refused ({e}) though every field parses alone"
            );
        }
        Ok(challenges) => {
            assert!(
                first_error.is_none(),
                "the header map was accepted though one field is refused alone"
            );
            assert!(
                challenges.len() <= MAX_CHALLENGES,
                "too many challenges accepted"
            );
            assert_eq!(challenges, alone, "fields parsed together and alone differ");
        }
    }
}

/// Writes challenges back in canonical form, quoting every param value.
fn serialize(challenges: &[Challenge]) -> String {
    let mut out = String::new();
    for (i, c) in challenges.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(c.scheme());
        if let Some(t) = c.token68() {
            out.push(' ');
            out.push_str(t);
        }
        for (j, (name, value)) in c.params().enumerate() {
            out.push_str(if j == 0 { " " } else { ", " });
            out.push_str(name);
            out.push_str("=\"");
            for ch in value.chars() {
                if ch == '"' || ch == '\\' {
                    out.push('\\');
                }
                out.push(ch);
            }
            out.push('"');
        }
    }
    out
}
