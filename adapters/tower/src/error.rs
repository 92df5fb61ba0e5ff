//! [`NoToken`]: a call failed because no token could be had.

use token_keeper_driver::Error;

/// What a [`TokenService`](crate::TokenService) call fails with when no
/// token (or no DPoP proof) could be had: the request was not sent. Its
/// `Display` reads `no token, so the request was not sent: ` and the
/// [`Error`]'s message; [`NoToken::error`] (or [`token_failure`] on any
/// error chain) gives the typed error.
#[derive(Debug)]
pub struct NoToken(Error);

impl NoToken {
    pub(crate) fn new(error: Error) -> NoToken {
        NoToken(error)
    }

    /// The token client's error.
    pub fn error(&self) -> &Error {
        &self.0
    }
}

impl std::fmt::Display for NoToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no token, so the request was not sent: {}", self.0)
    }
}

impl std::error::Error for NoToken {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// The token client's [`Error`] behind a failed call through a
/// [`TokenService`](crate::TokenService): `Some` when the call failed
/// because no token could be had (the request was not sent), found anywhere
/// in `error`'s source chain (a `tonic::Status` made from the service's
/// error keeps it as its source); `None` for every other failure.
///
/// ```
/// # fn check(error: &(dyn std::error::Error + 'static)) {
/// match token_keeper_tower::token_failure(error) {
///     Some(no_token) if no_token.oauth_code() == Some("invalid_client") => {
///         eprintln!("check the client's id and secret: {no_token}")
///     }
///     Some(no_token) => eprintln!("no token for the API: {no_token}"),
///     None => eprintln!("calling the API: {error}"),
/// }
/// # }
/// ```
pub fn token_failure<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Error> {
    let mut next = Some(error);
    // Bounded: a cyclic chain (a bug elsewhere) must not hang the caller.
    for _ in 0..32 {
        let current = next?;
        if let Some(no_token) = current.downcast_ref::<NoToken>() {
            return Some(&no_token.0);
        }
        next = current.source();
    }
    None
}
