//! The one error type of the blocking adapter.

use std::fmt;
use std::time::Duration;

use token_keeper::discovery::DiscoveryError;
use token_keeper::jose::SignError;
use token_keeper::{ConfigError, InvalidResponse, OAuthError, TokenError, TransportError};

use crate::tls::TlsError;

/// Why a token (or a header) could not be had. Messages say what to do and
/// never contain a secret or a token.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Error {
    /// The authorization server refused the token request (RFC 6749 §5.2).
    OAuth(OAuthError),
    /// The token endpoint answered with something unusable.
    InvalidResponse(InvalidResponse),
    /// The token request got no answer (connection refused, reset, timeout).
    Transport(TransportError),
    /// The client is backing off after a failed token request and has no valid
    /// token: the call fails at once rather than hammering the token endpoint.
    Unavailable {
        /// The failure that started the backoff.
        cause: TokenError,
        /// How long until a new token request may be made.
        retry_in: Duration,
    },
    /// Discovery of the authorization server failed.
    Discovery(DiscoveryError),
    /// A configuration value was refused.
    Config(ConfigError),
    /// No client is registered under this name.
    UnknownClient(String),
    /// A client assertion or DPoP proof could not be signed.
    Signing(SignError),
    /// A TLS setting (a CA certificate, the operating system's store) could
    /// not be used.
    Tls(TlsError),
}

impl Error {
    /// The underlying token error, for the kinds that have one.
    pub fn token_error(&self) -> Option<&TokenError> {
        match self {
            Error::Unavailable { cause, .. } => Some(cause),
            _ => None,
        }
    }

    pub(crate) fn from_token_error(error: &TokenError) -> Error {
        match error {
            TokenError::OAuth(e) => Error::OAuth(e.clone()),
            TokenError::InvalidResponse(e) => Error::InvalidResponse(e.clone()),
            TokenError::Transport(e) => Error::Transport(e.clone()),
            TokenError::Signing(e) => Error::Signing(e.clone()),
            other => Error::Unavailable {
                cause: other.clone(),
                retry_in: Duration::ZERO,
            },
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::OAuth(e) => e.fmt(f),
            Error::InvalidResponse(e) => e.fmt(f),
            Error::Transport(e) => e.fmt(f),
            Error::Unavailable { cause, retry_in } => write!(
                f,
                "no token available; backing off for {:.1} s after: {cause}",
                retry_in.as_secs_f64()
            ),
            Error::Discovery(e) => e.fmt(f),
            Error::Config(e) => e.fmt(f),
            Error::UnknownClient(name) => write!(f, "no client named {name:?} is registered"),
            Error::Signing(e) => e.fmt(f),
            Error::Tls(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::OAuth(e) => Some(e),
            Error::InvalidResponse(e) => Some(e),
            Error::Transport(e) => Some(e),
            Error::Unavailable { cause, .. } => Some(cause),
            Error::Discovery(e) => Some(e),
            Error::Config(e) => Some(e),
            Error::UnknownClient(_) => None,
            Error::Signing(e) => Some(e),
            Error::Tls(e) => Some(e),
        }
    }
}

impl From<TlsError> for Error {
    fn from(e: TlsError) -> Self {
        Error::Tls(e)
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}

impl From<DiscoveryError> for Error {
    fn from(e: DiscoveryError) -> Self {
        Error::Discovery(e)
    }
}
