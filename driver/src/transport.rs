//! [`Transport`]: how the engine sends a token or discovery request. The one
//! thing an HTTP stack must supply; each adapter implements it in one short
//! file.

use token_keeper::proxy::Proxy;
use token_keeper::TransportError;

/// Sends one token or discovery request on the HTTP stack of an adapter.
///
/// Called only on the engine's own threads (never on a caller's, never with
/// the core's lock held), so it blocks: an async stack runs its future to
/// completion here (`block_on`). Everything else is the engine's: which
/// proxy to use (the core's decision, passed in as `via`), the size limit,
/// what the answer means.
///
/// An implementation must:
/// - send `request` as it is, and follow no redirect (a token request
///   carries the client's credentials);
/// - go through `via` with an HTTP `CONNECT` tunnel when it is `Some`, and
///   directly when it is `None`, whatever the environment says; refuse with a
///   [`TransportError`] what it cannot send that way;
/// - read at most `max_body + 1` bytes of the body (so the core can tell an
///   over-long body from one that fits), within its own timeouts;
/// - put no secret in its errors (the request's body holds the client's
///   credentials).
pub trait Transport: Send + Sync + 'static {
    /// Sends `request` (through `via`, if given) and returns the answer.
    fn send(
        &self,
        request: http::Request<Vec<u8>>,
        via: Option<&Proxy>,
        max_body: usize,
    ) -> Result<http::Response<Vec<u8>>, TransportError>;
}
