//! Hostile PEM text costs linear memory and gets a short error (security
//! review, finding 4).
//!
//! `PrivateKey::from_pem` once reserved the whole input's length for every
//! `-----BEGIN` line: 1 MiB of `-----BEGIN A-----\n-----END A-----\n` made it
//! allocate about 30 GiB in total (18.6 s) and its error listed all 30 000
//! labels. Here the bytes allocated while loading such inputs must stay
//! within a small multiple of the input's size, grow linearly with it, and
//! every error must stay under 300 characters.
//!
//! A counting global allocator (hence a test binary of its own) counts the
//! bytes asked of it (`alloc`, `alloc_zeroed`, and the new size of each
//! `realloc`), only on threads that asked for it, so tests running in
//! parallel on other threads cannot disturb a measurement.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;

use token_keeper_keys::{KeyError, PrivateKey};

struct CountingAllocator;

thread_local! {
    // Const-initialised and without destructors: usable from inside the
    // allocator, at any point of a thread's life, without allocating.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
}

fn note_allocation(size: usize) {
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = BYTES.try_with(|n| n.set(n.get() + size as u64));
    }
}

// SAFETY: every call is forwarded unchanged to `System`; the counting touches
// only thread-local `Cell`s, which neither allocate nor re-enter the allocator.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation(new_size);
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// The bytes allocated on the current thread while `f` runs.
fn bytes_allocated_in<R>(f: impl FnOnce() -> R) -> (u64, R) {
    BYTES.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    let result = f();
    COUNTING.with(|c| c.set(false));
    (BYTES.with(Cell::get), result)
}

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// Sizes of hostile input, smallest first (so that a quadratic reader fails
/// fast, on the smallest).
const SIZES: [usize; 3] = [64 * KIB, 256 * KIB, MIB];
/// Bytes allocated per byte of input, at most.
const FACTOR: u64 = 8;
/// The longest error `Display` allowed, in characters.
const MAX_ERROR: usize = 300;

/// `unit` repeated to `size` bytes (whole units; at least one).
fn repeated(unit: &str, size: usize) -> String {
    unit.repeat((size / unit.len()).max(1))
}

/// The finding's input: empty blocks of one unknown label, back to back.
fn empty_blocks(size: usize) -> String {
    repeated("-----BEGIN A-----\n-----END A-----\n", size)
}

/// Hostile shapes of PEM text, each about `size` bytes, by name.
fn hostile_inputs(size: usize) -> Vec<(&'static str, String)> {
    let long_label = "L".repeat(size);
    let mut distinct = String::with_capacity(size + 64);
    let mut distinct_control = String::with_capacity(size + 64);
    let mut i = 0u64;
    while distinct.len() < size {
        distinct.push_str(&format!("-----BEGIN L{i}-----\n-----END L{i}-----\n"));
        i += 1;
    }
    while distinct_control.len() < size {
        // Escaped, each of these control characters takes 6 (`\u{12}`).
        let label = format!("{}{i}", "\u{12}".repeat(64));
        distinct_control.push_str(&format!("-----BEGIN {label}-----\n-----END {label}-----\n"));
        i += 1;
    }
    vec![
        ("empty blocks of one label", empty_blocks(size)),
        ("empty blocks, CRLF", repeated("-----BEGIN A-----\r\n-----END A-----\r\n", size)),
        ("empty blocks of distinct labels", distinct),
        (
            "a huge label, no END",
            format!("-----BEGIN {long_label}-----\nAAAA\n"),
        ),
        (
            "a huge label, with END",
            format!("-----BEGIN {long_label}-----\nAAAA\n-----END {long_label}-----\n"),
        ),
        (
            "a huge label with control characters and non-ASCII text",
            format!(
                "-----BEGIN \u{1b}[31m{}-----\n-----END X-----\n",
                "é\u{7}".repeat(size / 3)
            ),
        ),
        (
            "a huge label of control characters, no END",
            format!("-----BEGIN {}-----\n", "\u{12}".repeat(size)),
        ),
        (
            "empty blocks of distinct control-character labels",
            distinct_control,
        ),
        (
            "a malformed BEGIN line",
            format!("-----BEGIN {}\n", "x".repeat(size)),
        ),
        (
            "BEGIN PRIVATE KEY lines only",
            repeated("-----BEGIN PRIVATE KEY-----\n", size),
        ),
        (
            "BEGIN lines of unknown labels only",
            repeated("-----BEGIN A-----\n", size),
        ),
        (
            "END lines only",
            repeated("-----END PRIVATE KEY-----\n", size),
        ),
        (
            "a PRIVATE KEY block with a huge body that is not base64",
            format!(
                "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                "!".repeat(size)
            ),
        ),
        (
            "a PRIVATE KEY block with a huge valid body",
            format!(
                "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                repeated("MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7YGiLfxrg33Ai\n", size)
            ),
        ),
        (
            "many PRIVATE KEY blocks",
            repeated(
                "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIKUTE310cnWRYBlXFGs/JHcW7evnXCFPlLJLrvMb3Bnr\n-----END PRIVATE KEY-----\n",
                size,
            ),
        ),
        (
            "legacy encrypted headers",
            format!(
                "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: {}\n\nAAAA\n-----END RSA PRIVATE KEY-----\n",
                "Z".repeat(size)
            ),
        ),
        (
            "a mismatched END line per block",
            repeated("-----BEGIN A-----\n-----END B-----\n", size),
        ),
    ]
}

/// Loads `pem`, counting the bytes allocated.
fn load(pem: &str) -> (u64, Result<(), KeyError>) {
    bytes_allocated_in(|| PrivateKey::from_pem(black_box(pem), None).map(drop))
}

/// Checks an error: short, and the same text in `Display` and `message()`.
fn check_error(name: &str, input_len: usize, error: &KeyError) {
    let shown = error.to_string();
    assert_eq!(shown, error.message(), "{name}");
    assert!(
        shown.chars().count() < MAX_ERROR,
        "{name} ({input_len} bytes): the error has {} characters: {}",
        shown.chars().count(),
        shown.chars().take(600).collect::<String>()
    );
}

#[test]
fn the_counter_sees_allocations() {
    let (bytes, v) = bytes_allocated_in(|| black_box(Vec::<u8>::with_capacity(1000)));
    drop(v);
    assert_eq!(bytes, 1000, "the counting allocator is not installed");
}

#[test]
fn the_findings_input_costs_linear_memory() {
    let mut measured = Vec::new();
    for size in SIZES {
        let pem = empty_blocks(size);
        let (bytes, result) = load(&pem);
        assert!(
            bytes <= FACTOR * pem.len() as u64,
            "{} bytes of empty PEM blocks allocated {bytes} bytes ({:.1} per input byte)",
            pem.len(),
            bytes as f64 / pem.len() as f64
        );
        let error = result.expect_err("no key in the input");
        check_error("empty blocks", pem.len(), &error);
        assert!(
            error.message().contains("PRIVATE KEY"),
            "the error should say what was expected: {error}"
        );
        measured.push((pem.len() as u64, bytes));
    }
    // Four times the input, at most about four times the bytes (a reader
    // quadratic in the input would take sixteen times). The floor keeps a
    // reader that allocates next to nothing from failing on noise.
    let (small_len, small) = measured[1];
    let (large_len, large) = measured[2];
    assert_eq!(large_len / small_len, 4);
    assert!(
        large <= 6 * small.max(4 * KIB as u64),
        "256 KiB allocated {small} bytes, 1 MiB {large} bytes: not linear"
    );
}

#[test]
fn hostile_pem_costs_linear_memory_and_gets_a_short_error() {
    for size in SIZES {
        for (name, pem) in hostile_inputs(size) {
            let (bytes, result) = load(&pem);
            assert!(
                bytes <= FACTOR * pem.len() as u64,
                "{name}: {} bytes of input allocated {bytes} bytes",
                pem.len()
            );
            check_error(name, pem.len(), &result.expect_err(name));
        }
    }
}

#[test]
fn the_error_names_few_labels() {
    let pem = empty_blocks(MIB);
    let error = PrivateKey::from_pem(&pem, None).unwrap_err();
    let shown = error.to_string();
    assert!(shown.len() < MAX_ERROR, "{shown}");
    // Whatever the error quotes of the labels, it is not all of them.
    assert!(shown.matches('A').count() < 10, "{shown}");
}

#[test]
fn a_hostile_key_file_costs_linear_memory_and_gets_a_short_error() {
    let dir = std::env::temp_dir().join(format!("tk-pem-linear-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, pem) in hostile_inputs(MIB) {
        let path = dir.join("hostile.pem");
        std::fs::write(&path, pem.as_bytes()).unwrap();
        let (bytes, result) =
            bytes_allocated_in(|| PrivateKey::from_file(black_box(&path), None).map(drop));
        // The path is the caller's, not the input's: count the rest.
        let shown = result.expect_err(name).to_string();
        let rest = shown.replace(&path.display().to_string(), "");
        assert!(
            rest.chars().count() < MAX_ERROR,
            "{name}: {} characters besides the path",
            rest.chars().count()
        );
        assert!(
            bytes <= FACTOR * pem.len() as u64,
            "{name}: a {} byte key file allocated {bytes} bytes",
            pem.len()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
