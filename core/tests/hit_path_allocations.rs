//! The hit path allocates nothing: `TokenManager::authorize` on a key with a
//! Fresh token, and an adapter's guard load of the published snapshot.
//!
//! A counting global allocator counts only on threads that asked for it (a
//! thread-local flag and a thread-local count), so tests running in parallel
//! on other threads, or the harness itself, cannot disturb a measurement.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use token_keeper::{
    Authorization, ClientAuth, ClientConfig, ClientSecret, Instant, KeyId, ManagerConfig, Now,
    Snapshot, TokenManager, TokenState,
};

struct CountingAllocator;

thread_local! {
    // Const-initialised and without destructors: usable from inside the
    // allocator, at any point of a thread's life, without allocating.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn note_allocation() {
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: every call is forwarded unchanged to `System`; the counting touches
// only thread-local `Cell`s, which neither allocate nor re-enter the allocator.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: the caller upholds `GlobalAlloc::alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
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

/// The number of allocations (`alloc`, `alloc_zeroed`, `realloc`) `f` makes
/// on the current thread.
fn allocations_in<R>(f: impl FnOnce() -> R) -> (u64, R) {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    let result = f();
    COUNTING.with(|c| c.set(false));
    (ALLOCATIONS.with(Cell::get), result)
}

const CALLS: u64 = 10_000;

fn now_at(nanos: u64) -> Now {
    Now::new(Instant::from_nanos(nanos), SystemTime::UNIX_EPOCH)
}

fn manager() -> (TokenManager, KeyId) {
    let mut manager = TokenManager::new(ManagerConfig::default(), 7);
    let config = ClientConfig::new(
        "https://auth.example.com/connect/token",
        "m2m",
        ClientAuth::Basic(ClientSecret::new("s3cret")),
    )
    .expect("valid config")
    .scope("api.read api.write");
    let client = manager.add_client("m2m", config).expect("client added");
    let key = manager.default_key(client);
    (manager, key)
}

/// A manager whose key holds a Fresh token from a real response, and the
/// snapshot the core published for it.
fn manager_with_token() -> (TokenManager, KeyId, Arc<Snapshot>) {
    let (mut manager, key) = manager();
    let t0 = Now::from_secs(1);
    let Authorization::Fetch(id) = manager.authorize(key, t0) else {
        panic!("an empty key must fetch");
    };
    manager.poll_request().expect("request queued");
    let response = http::Response::builder()
        .status(200)
        .body(r#"{"access_token":"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJtMm0ifQ.c2lnbmF0dXJl","token_type":"Bearer","expires_in":3600,"scope":"api.read api.write"}"#)
        .expect("valid response");
    manager
        .handle_response(id, response, t0)
        .expect("known request");
    while manager.poll_event().is_some() {}
    let snapshot = manager.snapshot(key).expect("a snapshot was published");
    while manager.poll_snapshot().is_some() {}
    (manager, key, snapshot)
}

#[test]
fn the_counter_sees_allocations() {
    let (count, v) = allocations_in(|| black_box(Vec::<u8>::with_capacity(16)));
    drop(v);
    assert_eq!(count, 1, "the counting allocator is not installed");
}

#[test]
fn authorize_on_a_fresh_key_does_not_allocate() {
    let (mut manager, key, snapshot) = manager_with_token();
    let start = snapshot.fresh_until().as_nanos() - 10 * CALLS * 1_000;
    assert!(start > Now::from_secs(1).monotonic().as_nanos());
    // Warm up outside the window.
    assert!(matches!(
        manager.authorize(key, now_at(start)),
        Authorization::Attach(a) if a.state() == TokenState::Fresh
    ));

    let (count, attached) = allocations_in(|| {
        let mut attached = 0u64;
        for i in 0..CALLS {
            // Time moves by 1 µs per call, ending just before the refresh point.
            let now = now_at(start + i * 1_000);
            if let Authorization::Attach(a) = manager.authorize(black_box(key), black_box(now)) {
                if a.state() == TokenState::Fresh && a.header().len() > 7 {
                    attached += 1;
                }
            }
        }
        attached
    });
    assert_eq!(attached, CALLS, "every call must attach a Fresh token");
    assert_eq!(
        count, 0,
        "authorize on a Fresh key allocated {count} times in {CALLS} calls"
    );
    assert!(
        manager.poll_request().is_none(),
        "the hit path queued a request"
    );
}

#[test]
fn snapshot_guard_read_does_not_allocate() {
    let (_manager, _key, snapshot) = manager_with_token();
    let now = Now::from_secs(2).monotonic();
    let cell = ArcSwapOption::from(Some(snapshot));
    let read = |cell: &ArcSwapOption<Snapshot>| {
        let guard = cell.load();
        match guard.as_ref() {
            Some(s) if s.is_fresh(now) => s.header().len(),
            _ => 0,
        }
    };
    // The first load on a thread registers it with arc-swap (which may
    // allocate once per thread): do that outside the window.
    assert!(read(&cell) > 0);

    let (count, fresh) =
        allocations_in(|| (0..CALLS).filter(|_| read(black_box(&cell)) > 0).count() as u64);
    assert_eq!(fresh, CALLS, "every read must see a Fresh snapshot");
    assert_eq!(
        count, 0,
        "a snapshot guard read allocated {count} times in {CALLS} reads"
    );
}

/// Control: the count is not zero merely because nothing is counted. A miss
/// builds a token request, which allocates.
#[test]
fn authorize_on_an_empty_key_allocates() {
    let (mut manager, key) = manager();
    let (count, fetched) =
        allocations_in(|| matches!(manager.authorize(key, now_at(0)), Authorization::Fetch(_)));
    assert!(fetched, "an empty key must fetch");
    assert!(count > 0, "building a token request must allocate");
}
