//! `http1::ResponseReader` (`token-keeper-driver`) on arbitrary byte streams.
//!
//! Input: the first byte picks the limits (low 4 bits: head 64 to 1024 bytes
//! in steps of 64; bits 4 to 6: body 0, 1, 2, 16, 64, 100, 256 or 512 bytes)
//! and whether the request was HEAD (bit 7). The second byte picks how the
//! stream is split: pieces of 1 + (bits 0 to 5) bytes, every other piece one
//! byte long (bit 6), an empty piece after each (bit 7). The rest is what the
//! server sends before it closes the connection. Checks:
//! - it never panics;
//! - the split feed gives what one whole feed gives: the same status,
//!   version, headers and body, completed by the same call (`receive` or
//!   `end_of_stream`), or the same error;
//! - no response is interim (1xx); a body has at most `body + 1` bytes;
//! - while a head is read, the reader's heap (counted by this harness's
//!   global allocator) never exceeds the head limit; while it waits for more,
//!   its `Debug` says it buffers at most `head` bytes of head and `body`
//!   bytes of body (one more completes the response, cut at the limit);
//! - a finished reader answers `AlreadyComplete` (or its error again);
//! - `Debug` stays short whatever was fed, and an error's `Display` is one
//!   line.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use libfuzzer_sys::fuzz_target;
use token_keeper_surf::http1::{Http1Error, ResponseLimits, ResponseReader};

/// The system allocator, counting the bytes live on the Rust heap.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE.fetch_add(new_size, Ordering::Relaxed);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const BODY_LIMITS: [usize; 8] = [0, 1, 2, 16, 64, 100, 256, 512];

/// A response as far as the comparison goes.
#[derive(Debug, PartialEq, Eq)]
struct Got {
    status: u16,
    version: http::Version,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    at_close: bool,
}

fn got(response: http::Response<Vec<u8>>, at_close: bool) -> Got {
    Got {
        status: response.status().as_u16(),
        version: response.version(),
        headers: response
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
            .collect(),
        body: response.into_body(),
        at_close,
    }
}

/// The number after `name: ` in the reader's `Debug`.
fn debug_field(debug: &str, name: &str) -> usize {
    let key = format!("{name}: ");
    let start = debug
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {debug}"))
        + key.len();
    let digits: String = debug[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number for {name} in {debug}"))
}

/// Feeds `pieces`, then the close unless the response was complete; checks
/// the bounds after every call and the answers of a finished reader.
fn run(limits: ResponseLimits, head_request: bool, pieces: &[&[u8]]) -> Result<Got, Http1Error> {
    let mut reader = ResponseReader::new(limits, head_request);
    let base = LIVE.load(Ordering::Relaxed);
    let mut outcome = None;
    for piece in pieces {
        let result = reader.receive(piece);
        let live = LIVE.load(Ordering::Relaxed).saturating_sub(base);
        match result {
            Ok(None) => {
                let debug = format!("{reader:?}");
                assert!(debug.len() < 400, "Debug grows with the input: {debug}");
                let head = debug_field(&debug, "head_buffered");
                let body = debug_field(&debug, "body_buffered");
                assert!(
                    head <= limits.head,
                    "{head} bytes of head buffered: {debug}"
                );
                // At `body + 1` bytes the response is complete (cut).
                assert!(
                    body <= limits.body,
                    "{body} bytes of body buffered, still waiting: {debug}"
                );
                if debug.contains("state: \"head\"") {
                    assert!(
                        live <= limits.head,
                        "{live} bytes on the heap while reading a head: {debug}"
                    );
                }
            }
            Ok(Some(response)) => {
                outcome = Some(Ok(got(response, false)));
                break;
            }
            Err(error) => {
                outcome = Some(Err(error));
                break;
            }
        }
    }
    let outcome = match outcome {
        Some(outcome) => outcome,
        None => reader.end_of_stream().map(|response| got(response, true)),
    };
    let again = match &outcome {
        Ok(_) => Http1Error::AlreadyComplete,
        Err(error) => error.clone(),
    };
    assert_eq!(
        reader.receive(b"HTTP/1.1 200 OK\r\n\r\n").err(),
        Some(again.clone())
    );
    assert_eq!(reader.end_of_stream().err(), Some(again));
    assert!(format!("{reader:?}").len() < 400);
    outcome
}

fuzz_target!(|data: &[u8]| {
    let [limits_byte, split_byte, stream @ ..] = data else {
        return;
    };
    let limits = ResponseLimits {
        head: 64 * (1 + usize::from(limits_byte & 0x0f)),
        body: BODY_LIMITS[usize::from((limits_byte >> 4) & 0x07)],
    };
    let head_request = limits_byte & 0x80 != 0;

    let step = 1 + usize::from(split_byte & 0x3f);
    let mut pieces: Vec<&[u8]> = Vec::new();
    let mut rest = stream;
    let mut odd = false;
    while !rest.is_empty() {
        let size = if odd && split_byte & 0x40 != 0 {
            1
        } else {
            step
        };
        let (piece, tail) = rest.split_at(size.min(rest.len()));
        pieces.push(piece);
        if split_byte & 0x80 != 0 {
            pieces.push(&[]);
        }
        rest = tail;
        odd = !odd;
    }

    let whole = run(limits, head_request, &[stream]);
    let split = run(limits, head_request, &pieces);
    assert_eq!(whole, split, "the split feed disagrees with the whole feed");

    match &whole {
        Ok(got) => {
            assert!(
                got.status >= 200,
                "an interim response {} was handed out",
                got.status
            );
            assert!(
                got.body.len() <= limits.body + 1,
                "{} bytes of body",
                got.body.len()
            );
            if got.at_close {
                // Only a body that runs until the close needs the close, and
                // it was not cut, or `receive` would have completed it.
                assert!(got.body.len() <= limits.body);
            }
        }
        Err(error) => {
            let text = error.to_string();
            assert!(!text.contains('\n') && text.len() < 200, "{text:?}");
            if let Http1Error::HeadTooLarge { limit } = error {
                assert_eq!(*limit, limits.head);
            }
            assert_ne!(*error, Http1Error::AlreadyComplete);
        }
    }
});
