//! token-keeper's integration tests live in `tests/`; the support they run
//! on (the local authorization server, the scenario table, a recording
//! proxy, a TLS front) is the `token-keeper-testkit` crate in `testkit/`.

#![forbid(unsafe_code)]

/// The README's examples, compiled as doctests here, where every crate they use is a dependency.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
