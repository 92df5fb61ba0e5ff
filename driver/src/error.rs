//! The one error type of the blocking adapter.

use std::fmt;
use std::time::Duration;

use token_keeper::discovery::DiscoveryError;
use token_keeper::jose::SignError;
use token_keeper::{ConfigError, InvalidResponse, OAuthError, TokenError, TransportError};

use crate::tls::TlsError;

/// Why a token (or a header) could not be had. Messages say what to do and
/// never contain a secret or a token.
///
/// # Classifying an error: one call
///
/// Ask the predicates rather than matching the variants: a failed token
/// request reaches its first callers as itself ([`Error::OAuth`],
/// [`Error::Transport`] …) and later callers, while the client backs off, as
/// [`Error::Unavailable`] wrapping the same failure. The predicates of the
/// token request ([`is_oauth`](Error::is_oauth),
/// [`is_invalid_response`](Error::is_invalid_response),
/// [`is_transport`](Error::is_transport), [`is_signing`](Error::is_signing),
/// [`oauth_code`](Error::oauth_code)) see through `Unavailable`, so both shapes
/// answer the same; [`is_unavailable`](Error::is_unavailable) and
/// [`retry_in`](Error::retry_in) say, in addition, that the client is backing
/// off. Every error answers exactly one of `is_oauth`, `is_invalid_response`,
/// `is_transport`, `is_signing`, `is_discovery`, `is_config`, `is_tls`,
/// `is_unknown_client` (a kind added later may answer none).
///
/// | to decide | ask |
/// |---|---|
/// | **retry later** (nothing to change on your side) | [`is_unavailable`](Error::is_unavailable): the client is backing off, a new token request is made on the first call after [`retry_in`](Error::retry_in); [`is_transport`](Error::is_transport): no answer from the token endpoint (refused, reset, timed out); [`is_invalid_response`](Error::is_invalid_response): an answer that is not a token response (an overloaded server's or a proxy's page) |
/// | **fix the configuration** (retrying will not help) | [`is_oauth`](Error::is_oauth): the server refused the client, see [`oauth_code`](Error::oauth_code) (`invalid_client`: the credentials; `invalid_scope`, `invalid_target`, `unauthorized_client`: what the client asks for); [`is_config`](Error::is_config), [`is_tls`](Error::is_tls), [`is_unknown_client`](Error::is_unknown_client); [`is_signing`](Error::is_signing): the key or the signer (an HSM or KMS may also fail for a while); [`is_discovery`](Error::is_discovery): the issuer (except [`DiscoveryError::Unreachable`], which is transient) |
///
/// An error that is both (`is_unavailable()` and `is_oauth()`) says the
/// configuration is wrong *and* that asking again before `retry_in` sends
/// nothing to the server.
///
/// ```
/// use std::time::Duration;
/// use token_keeper_driver::Error;
///
/// fn advice(error: &Error) -> String {
///     if let Some(code) = error.oauth_code() {
///         // Also while backing off: the same refusal, seen through `Unavailable`.
///         format!("the server refused the client ({code}): fix its configuration")
///     } else if error.is_transport() || error.is_invalid_response() {
///         let wait = error.retry_in().unwrap_or(Duration::ZERO);
///         format!("try again in {:.0} s", wait.as_secs_f64())
///     } else {
///         format!("fix the configuration: {error}")
///     }
/// }
/// # let _ = advice;
/// ```
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
    /// The failure that started the backoff, for [`Error::Unavailable`] only
    /// (`None` for every other kind, [`Error::OAuth`] included). To classify
    /// an error, use the predicates ([`is_oauth`](Error::is_oauth) …), which
    /// answer the same for both shapes of one failure.
    pub fn token_error(&self) -> Option<&TokenError> {
        match self {
            Error::Unavailable { cause, .. } => Some(cause),
            _ => None,
        }
    }

    /// Whether the authorization server refused the token request with an
    /// OAuth error (RFC 6749 §5.2), now or, while backing off
    /// ([`Error::Unavailable`]), at the last attempt. Retrying will not help:
    /// see [`oauth_code`](Error::oauth_code).
    pub fn is_oauth(&self) -> bool {
        self.oauth_error().is_some()
    }

    /// The OAuth error the server answered, seen through [`Error::Unavailable`]:
    /// its code, description, `error_uri` and HTTP status.
    pub fn oauth_error(&self) -> Option<&OAuthError> {
        match self {
            Error::OAuth(e)
            | Error::Unavailable {
                cause: TokenError::OAuth(e),
                ..
            } => Some(e),
            _ => None,
        }
    }

    /// The OAuth `error` code (`invalid_client`, `invalid_scope`,
    /// `invalid_target` …), seen through [`Error::Unavailable`].
    pub fn oauth_code(&self) -> Option<&str> {
        self.oauth_error().map(OAuthError::code)
    }

    /// Whether the token endpoint answered with something that is not a
    /// usable token response (seen through [`Error::Unavailable`]). Often
    /// transient: an overloaded server's or a proxy's page.
    pub fn is_invalid_response(&self) -> bool {
        matches!(
            self,
            Error::InvalidResponse(_)
                | Error::Unavailable {
                    cause: TokenError::InvalidResponse(_),
                    ..
                }
        )
    }

    /// Whether the token request got no answer: connection refused, reset,
    /// timed out (seen through [`Error::Unavailable`]). Transient.
    pub fn is_transport(&self) -> bool {
        matches!(
            self,
            Error::Transport(_)
                | Error::Unavailable {
                    cause: TokenError::Transport(_),
                    ..
                }
        )
    }

    /// Whether a client assertion or a DPoP proof could not be signed (seen
    /// through [`Error::Unavailable`]): the key, or the signer behind it.
    pub fn is_signing(&self) -> bool {
        matches!(
            self,
            Error::Signing(_)
                | Error::Unavailable {
                    cause: TokenError::Signing(_),
                    ..
                }
        )
    }

    /// Whether the client is backing off after a failed token request and
    /// has no valid token: the call failed at once, without asking the
    /// server. The failure itself answers its own predicate too
    /// ([`is_oauth`](Error::is_oauth) …); [`retry_in`](Error::retry_in) says
    /// when a call will ask the server again.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }

    /// How long until a call makes a new token request, while backing off
    /// ([`is_unavailable`](Error::is_unavailable)); `None` otherwise.
    pub fn retry_in(&self) -> Option<Duration> {
        match self {
            Error::Unavailable { retry_in, .. } => Some(*retry_in),
            _ => None,
        }
    }

    /// Whether a configuration value was refused.
    pub fn is_config(&self) -> bool {
        matches!(self, Error::Config(_))
    }

    /// Whether a TLS setting (a CA certificate, the operating system's
    /// store) could not be used.
    pub fn is_tls(&self) -> bool {
        matches!(self, Error::Tls(_))
    }

    /// Whether discovery of the authorization server failed (its metadata
    /// could not be fetched or used).
    pub fn is_discovery(&self) -> bool {
        matches!(self, Error::Discovery(_))
    }

    /// Whether no client is registered under the name asked for.
    pub fn is_unknown_client(&self) -> bool {
        matches!(self, Error::UnknownClient(_))
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use token_keeper::response::parse_token_response;
    use token_keeper::TransportErrorKind;

    fn oauth(code: &str) -> TokenError {
        let body = format!(r#"{{"error":"{code}"}}"#);
        parse_token_response(StatusCode::UNAUTHORIZED, body.as_bytes(), 1 << 20, &[]).unwrap_err()
    }

    fn invalid() -> TokenError {
        parse_token_response(StatusCode::BAD_GATEWAY, b"<html>", 1 << 20, &[]).unwrap_err()
    }

    fn transport() -> TokenError {
        TokenError::Transport(TransportError::new(TransportErrorKind::Connect, "refused"))
    }

    fn signing() -> TokenError {
        TokenError::Signing(SignError("the KMS said no".to_owned()))
    }

    fn backing_off(cause: TokenError) -> Error {
        Error::Unavailable {
            cause,
            retry_in: Duration::from_secs(3),
        }
    }

    /// A predicate of `Error`, by name.
    type Predicate = (&'static str, fn(&Error) -> bool);

    /// The `is_*` predicates an error answers, by name.
    fn answers(error: &Error) -> Vec<&'static str> {
        let predicates: [Predicate; 9] = [
            ("oauth", Error::is_oauth),
            ("invalid_response", Error::is_invalid_response),
            ("transport", Error::is_transport),
            ("signing", Error::is_signing),
            ("discovery", Error::is_discovery),
            ("config", Error::is_config),
            ("tls", Error::is_tls),
            ("unknown_client", Error::is_unknown_client),
            ("unavailable", Error::is_unavailable),
        ];
        predicates
            .iter()
            .filter(|(_, p)| p(error))
            .map(|(name, _)| *name)
            .collect()
    }

    #[test]
    fn every_kind_answers_exactly_one_family_and_unavailable_sees_through() {
        // The error, the predicates it answers, its OAuth code.
        type Row = (Error, &'static [&'static str], Option<&'static str>);
        let table: Vec<Row> = vec![
            (
                Error::from_token_error(&oauth("invalid_client")),
                &["oauth"],
                Some("invalid_client"),
            ),
            (
                Error::from_token_error(&invalid()),
                &["invalid_response"],
                None,
            ),
            (Error::from_token_error(&transport()), &["transport"], None),
            (Error::from_token_error(&signing()), &["signing"], None),
            (
                backing_off(oauth("invalid_scope")),
                &["oauth", "unavailable"],
                Some("invalid_scope"),
            ),
            (
                backing_off(invalid()),
                &["invalid_response", "unavailable"],
                None,
            ),
            (
                backing_off(transport()),
                &["transport", "unavailable"],
                None,
            ),
            (backing_off(signing()), &["signing", "unavailable"], None),
            (
                Error::Discovery(DiscoveryError::NotFound),
                &["discovery"],
                None,
            ),
            (
                Error::Config(ConfigError::new("no such thing")),
                &["config"],
                None,
            ),
            (Error::Tls(TlsError::new("bad CA")), &["tls"], None),
            (
                Error::UnknownClient("m2m".to_owned()),
                &["unknown_client"],
                None,
            ),
        ];
        for (error, expected, code) in &table {
            assert_eq!(answers(error), *expected, "{error:?}");
            assert_eq!(error.oauth_code(), *code, "{error:?}");
            assert_eq!(error.is_oauth(), error.oauth_error().is_some(), "{error:?}");
            let unavailable = matches!(error, Error::Unavailable { .. });
            assert_eq!(error.is_unavailable(), unavailable, "{error:?}");
            assert_eq!(error.retry_in().is_some(), unavailable, "{error:?}");
            assert_eq!(error.token_error().is_some(), unavailable, "{error:?}");
        }
        assert_eq!(
            backing_off(transport()).retry_in(),
            Some(Duration::from_secs(3))
        );
    }

    #[test]
    fn both_shapes_of_one_refusal_classify_the_same() {
        let refused = oauth("invalid_client");
        let first = Error::from_token_error(&refused);
        let later = backing_off(refused);
        assert!(matches!(first, Error::OAuth(_)));
        assert_eq!(first.oauth_error(), later.oauth_error());
        assert_eq!(
            first.oauth_error().map(OAuthError::status),
            Some(StatusCode::UNAUTHORIZED)
        );
        assert_eq!((first.is_oauth(), first.is_unavailable()), (true, false));
        assert_eq!((later.is_oauth(), later.is_unavailable()), (true, true));
    }
}
