//! Errors: configuration mistakes, and why a token could not be had.
//!
//! Every error message is written for the person reading a log: it says what
//! happened and, where it can, what to do. None of them ever contains a client
//! secret or an access token: excerpts of server responses are cut short,
//! stripped of control characters, have invisible format characters (bidi
//! overrides, zero-width joiners …) escaped as `\u{…}`, and are withheld when
//! they contain anything that looks like a credential.

use std::fmt;
use std::time::Duration;

use http::StatusCode;

use crate::jose::SignError;

/// A configuration value was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    reason: &'static str,
}

impl ConfigError {
    /// A configuration error with a fixed reason (adapters use it for their own settings).
    pub fn new(reason: &'static str) -> ConfigError {
        ConfigError { reason }
    }

    /// What is wrong.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid token-keeper configuration: {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Why no token could be obtained. Cheap to clone: every caller waiting on a
/// failed request receives the same error.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    /// The authorization server refused the request (RFC 6749 §5.2).
    OAuth(OAuthError),
    /// The token endpoint answered with something that is not a usable token response.
    InvalidResponse(InvalidResponse),
    /// The request never got an answer: connection refused, reset, timed out.
    Transport(TransportError),
    /// A client assertion or DPoP proof could not be signed (a KMS or HSM signer failed).
    Signing(SignError),
}

impl TokenError {
    /// Whether the server refused with an OAuth error.
    pub fn is_oauth(&self) -> bool {
        matches!(self, TokenError::OAuth(_))
    }

    /// Whether the response could not be used.
    pub fn is_invalid_response(&self) -> bool {
        matches!(self, TokenError::InvalidResponse(_))
    }

    /// Whether the request failed in transport (including timeouts).
    pub fn is_transport(&self) -> bool {
        matches!(self, TokenError::Transport(_))
    }

    /// The HTTP status of the response, when there was one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            TokenError::OAuth(e) => Some(e.status),
            TokenError::InvalidResponse(e) => Some(e.status),
            TokenError::Transport(_) | TokenError::Signing(_) => None,
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::OAuth(e) => e.fmt(f),
            TokenError::InvalidResponse(e) => e.fmt(f),
            TokenError::Transport(e) => e.fmt(f),
            TokenError::Signing(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for TokenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TokenError::OAuth(e) => Some(e),
            TokenError::InvalidResponse(e) => Some(e),
            TokenError::Transport(e) => Some(e),
            TokenError::Signing(e) => Some(e),
        }
    }
}

/// An RFC 6749 §5.2 error response: `error`, `error_description`, `error_uri`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OAuthError {
    pub(crate) status: StatusCode,
    pub(crate) code: String,
    pub(crate) description: Option<String>,
    pub(crate) uri: Option<String>,
}

impl OAuthError {
    /// The HTTP status (400, or 401 for `invalid_client`).
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The `error` code, such as `invalid_client`, `invalid_scope` or `invalid_target`.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The `error_description`, shortened, cleaned of control characters and
    /// with format characters (bidi controls, zero-width characters) escaped.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The `error_uri`.
    pub fn uri(&self) -> Option<&str> {
        self.uri.as_deref()
    }

    /// A hint for the person reading the error, for the standard codes.
    fn hint(&self) -> Option<&'static str> {
        Some(match self.code.as_str() {
            "invalid_client" => {
                "check the client id, the secret and the authentication method (basic or post)"
            }
            "invalid_scope" => "the client may not request this scope",
            "unauthorized_client" => "the client may not use the client_credentials grant",
            "invalid_target" => "the resource is unknown or not allowed for this client",
            "unsupported_grant_type" => "the server does not support client_credentials",
            _ => return None,
        })
    }
}

impl fmt::Display for OAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "authorization server refused the token request ({}): {}",
            self.status.as_u16(),
            self.code
        )?;
        if let Some(description) = &self.description {
            write!(f, ": {description}")?;
        }
        if let Some(hint) = self.hint() {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for OAuthError {}

/// What made a token response unusable.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResponseProblem {
    /// A status that is neither success nor an OAuth error (400/401 with an `error` field).
    UnexpectedStatus,
    /// The body is larger than [`ManagerConfig::max_response_body`](crate::ManagerConfig::max_response_body).
    BodyTooLarge {
        /// The configured limit, in bytes.
        limit: usize,
    },
    /// The body is not a JSON object.
    NotJson,
    /// A required field is missing.
    MissingField(&'static str),
    /// A field has the wrong JSON type or an unusable value.
    InvalidField(&'static str),
    /// `access_token` is empty.
    EmptyToken,
    /// `access_token` has characters that cannot go in an HTTP header
    /// (anything outside visible ASCII, such as CR, LF, space or non-ASCII).
    TokenNotHeaderSafe,
    /// `token_type` is neither `Bearer` nor a type this client is set up for.
    UnsupportedTokenType(String),
    /// The token's lifetime had already run out when the response arrived
    /// (`expires_in` of zero or less, or a response slower than the lifetime).
    ExpiredOnArrival,
    /// The server answered a DPoP token request with an unbound Bearer token,
    /// and the client requires bound tokens
    /// ([`ClientConfig::require_dpop_bound`](crate::ClientConfig::require_dpop_bound)):
    /// a stolen Bearer token can be replayed, a DPoP-bound one cannot.
    NotDPoPBound,
}

impl fmt::Display for ResponseProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResponseProblem::UnexpectedStatus => f.write_str("unexpected status"),
            ResponseProblem::BodyTooLarge { limit } => {
                write!(f, "body larger than the {limit}-byte limit")
            }
            ResponseProblem::NotJson => f.write_str("body is not a JSON object"),
            ResponseProblem::MissingField(name) => write!(f, "required field `{name}` is missing"),
            ResponseProblem::InvalidField(name) => {
                write!(f, "field `{name}` has the wrong type or an unusable value")
            }
            ResponseProblem::EmptyToken => f.write_str("`access_token` is empty"),
            ResponseProblem::TokenNotHeaderSafe => f.write_str(
                "`access_token` has characters not allowed in an HTTP header (control, space or non-ASCII)",
            ),
            ResponseProblem::UnsupportedTokenType(t) => {
                write!(f, "unsupported `token_type` {t:?} (expected Bearer)")
            }
            ResponseProblem::ExpiredOnArrival => {
                f.write_str("the token had expired by the time the response arrived")
            }
            ResponseProblem::NotDPoPBound => f.write_str(
                "the server issued an unbound Bearer token although DPoP was required \
                 (check that the authorization server supports DPoP for this client)",
            ),
        }
    }
}

/// A response from the token endpoint that could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidResponse {
    pub(crate) status: StatusCode,
    pub(crate) problem: ResponseProblem,
    pub(crate) excerpt: Option<String>,
}

impl InvalidResponse {
    /// The HTTP status of the response.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// What was wrong with it.
    pub fn problem(&self) -> &ResponseProblem {
        &self.problem
    }

    /// The start of the body, for diagnosis: at most 160 characters, control
    /// characters replaced, format characters (bidi controls, zero-width
    /// characters) escaped as `\u{…}`, and absent when the body might hold a credential.
    pub fn excerpt(&self) -> Option<&str> {
        self.excerpt.as_deref()
    }
}

impl fmt::Display for InvalidResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "token endpoint sent an unusable response (HTTP {}): {}",
            self.status.as_u16(),
            self.problem
        )?;
        if let Some(excerpt) = &self.excerpt {
            write!(f, "; body starts with {excerpt:?}")?;
        }
        Ok(())
    }
}

impl std::error::Error for InvalidResponse {}

/// The kind of transport failure, as the adapter classified it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransportErrorKind {
    /// The connection could not be made (refused, DNS, TLS handshake).
    Connect,
    /// No complete answer in time (the adapter's timeout, or the core's request deadline).
    Timeout,
    /// The connection broke while sending or receiving.
    Io,
    /// Anything else the adapter could not classify.
    Other,
}

/// A token request that got no HTTP answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportError {
    kind: TransportErrorKind,
    message: String,
}

impl TransportError {
    /// A failure of `kind`; `message` says what happened (it must hold no secrets:
    /// adapters pass their I/O library's error text, which carries no headers).
    pub fn new(kind: TransportErrorKind, message: impl Into<String>) -> TransportError {
        TransportError {
            kind,
            message: clean_text(&message.into(), 300),
        }
    }

    pub(crate) fn core_timeout(after: Duration) -> TransportError {
        TransportError {
            kind: TransportErrorKind::Timeout,
            message: format!("no response within {} ms", after.as_millis()),
        }
    }

    /// What kind of failure.
    pub fn kind(&self) -> TransportErrorKind {
        self.kind
    }

    /// The adapter's description.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            TransportErrorKind::Connect => "could not connect to the token endpoint",
            TransportErrorKind::Timeout => "token endpoint did not answer in time",
            TransportErrorKind::Io => "connection to the token endpoint broke",
            TransportErrorKind::Other => "token request failed in transport",
        };
        write!(f, "{what}: {}", self.message)
    }
}

impl std::error::Error for TransportError {}

/// A response or failure was reported for a request id the core does not
/// know, or no longer waits for (it timed out, or was already answered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownRequest;

impl fmt::Display for UnknownRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no token request with this id is in flight")
    }
}

impl std::error::Error for UnknownRequest {}

/// Text from the network, made safe to show: at most `max_chars` characters,
/// control characters replaced by `�`, and invisible format characters
/// (bidi overrides and isolates, zero-width characters, tags …, see
/// [`is_format_char`]) written as `\u{…}` escapes, so a server cannot reorder
/// or hide what a log line says.
pub(crate) fn clean_text(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars * 2));
    for (count, c) in text.chars().enumerate() {
        if count == max_chars {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.push('\u{FFFD}');
        } else if is_format_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `c` is an invisible character that changes how the text around it
/// is shown: Unicode general category Cf (format: the bidi embeddings,
/// overrides, isolates and marks U+202A–U+202E, U+2066–U+2069, U+200E,
/// U+200F, U+061C; zero-width space, joiners and word joiner; the soft hyphen;
/// the BOM; tag characters; prefixed number signs …), plus the line and
/// paragraph separators U+2028 and U+2029, which some log viewers break lines on.
/// The list is Cf as of Unicode 15.1.
fn is_format_char(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_text_truncates_and_strips_controls() {
        assert_eq!(clean_text("a\r\nb", 10), "a\u{FFFD}\u{FFFD}b");
        assert_eq!(clean_text("abcdef", 3), "abc…");
        assert_eq!(clean_text("ééé", 2), "éé…");
    }

    #[test]
    fn clean_text_escapes_bidi_and_format_characters() {
        let bidi = "\u{202A}\u{202B}\u{202C}\u{202D}\u{202E}\u{2066}\u{2067}\u{2068}\u{2069}\
                    \u{200E}\u{200F}\u{061C}";
        let format = "\u{200B}\u{200C}\u{200D}\u{2060}\u{2061}\u{2064}\u{FEFF}\u{00AD}\u{180E}\
                      \u{E0001}\u{E0020}\u{E007F}\u{0600}\u{FFF9}\u{2028}\u{2029}";
        for c in bidi.chars().chain(format.chars()) {
            let cleaned = clean_text(&format!("a{c}b"), 10);
            assert_eq!(cleaned, format!("a\\u{{{:x}}}b", c as u32), "{c:?}");
        }
        // Visible text, including other scripts and emoji, is left alone.
        for text in ["Grüße", "مرحبا", "שלום", "日本語", "👍🏽", "a\\u{202e}b"] {
            assert_eq!(clean_text(text, 20), text);
        }
        // An escape counts as one character of the limit.
        assert_eq!(clean_text("\u{202E}\u{202E}abc", 3), "\\u{202e}\\u{202e}a…");
    }

    #[test]
    fn transport_messages_are_cleaned_too() {
        let e = TransportError::new(TransportErrorKind::Io, "reset by \u{202E}reep");
        assert_eq!(e.message(), "reset by \\u{202e}reep");
    }

    #[test]
    fn oauth_errors_say_what_to_do() {
        let e = OAuthError {
            status: StatusCode::UNAUTHORIZED,
            code: "invalid_client".into(),
            description: Some("bad secret".into()),
            uri: None,
        };
        let text = TokenError::OAuth(e).to_string();
        assert!(text.contains("invalid_client"), "{text}");
        assert!(text.contains("bad secret"), "{text}");
        assert!(text.contains("check the client id"), "{text}");
    }
}
