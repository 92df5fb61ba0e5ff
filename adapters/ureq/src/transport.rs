//! Sending the core's requests with ureq, and reading the answers within bounds.

use std::io::Read;
use std::time::Duration;

use token_keeper::{TransportError, TransportErrorKind};

/// An agent for token and discovery requests: 4xx/5xx are responses, not
/// errors (their headers and OAuth error bodies matter); no redirects are
/// followed (a token endpoint that redirects is misconfigured, and following
/// could carry credentials elsewhere); every call is bounded in time.
pub(crate) fn token_agent(connect_timeout: Duration, timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_connect(Some(connect_timeout))
        .timeout_global(Some(timeout))
        .user_agent(concat!("token-keeper/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// Sends `request` and reads at most `max_body + 1` bytes of the answer, so
/// the core can tell an over-long body from one that fits.
pub(crate) fn send(
    agent: &ureq::Agent,
    request: http::Request<Vec<u8>>,
    max_body: usize,
) -> Result<http::Response<Vec<u8>>, TransportError> {
    let response = agent.run(request).map_err(classify)?;
    let (parts, body) = response.into_parts();
    let mut bytes = Vec::new();
    body.into_reader()
        .take(max_body as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| {
            // ureq reports its own timeouts during the body read as an io::Error
            // of kind Other wrapping ureq::Error::Timeout.
            let ureq_timeout = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<ureq::Error>())
                .is_some_and(|inner| matches!(inner, ureq::Error::Timeout(_)));
            let kind = match e.kind() {
                _ if ureq_timeout => TransportErrorKind::Timeout,
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                    TransportErrorKind::Timeout
                }
                _ => TransportErrorKind::Io,
            };
            TransportError::new(kind, format!("reading the response body: {e}"))
        })?;
    Ok(http::Response::from_parts(parts, bytes))
}

/// Maps ureq's error to the core's transport error kinds.
pub(crate) fn classify(error: ureq::Error) -> TransportError {
    let kind = match &error {
        ureq::Error::Timeout(_) => TransportErrorKind::Timeout,
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => TransportErrorKind::Connect,
        ureq::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable => {
                TransportErrorKind::Connect
            }
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                TransportErrorKind::Timeout
            }
            _ => TransportErrorKind::Io,
        },
        _ => TransportErrorKind::Other,
    };
    TransportError::new(kind, error.to_string())
}
