//! Authorization server discovery: from an issuer URL to its token endpoint.
//!
//! Two well-known documents describe an authorization server: OpenID Connect
//! Discovery (`{issuer}/.well-known/openid-configuration`) and RFC 8414
//! (`{origin}/.well-known/oauth-authorization-server{issuer path}`). A
//! [`Discovery`] asks for the first and falls back to the second when the
//! first is missing (404, 405, 410, or 501). The document must name the same
//! `issuer` it was fetched for (RFC 8414 §3.3, a defence against a
//! compromised or misconfigured server impersonating another), and its
//! `token_endpoint` passes the same check as a configured one ([`HttpUrl`],
//! credential-safe): `https` (or `http` on loopback), no user information,
//! a valid port, no fragment.
//!
//! Like the rest of the core this is sans-IO: it builds the requests and reads
//! the responses; the adapter sends them and caches the result.
//!
//! ```
//! use token_keeper::discovery::{Discovery, DiscoveryStep};
//!
//! let mut discovery = Discovery::new("https://auth.example.com")?;
//! let request = discovery.request();
//! assert_eq!(request.uri(), "https://auth.example.com/.well-known/openid-configuration");
//!
//! let body = r#"{"issuer":"https://auth.example.com","token_endpoint":"https://auth.example.com/connect/token"}"#;
//! let response = http::Response::builder().status(200).body(body)?;
//! let DiscoveryStep::Done(metadata) = discovery.handle_response(&response) else { unreachable!() };
//! assert_eq!(metadata.token_endpoint(), "https://auth.example.com/connect/token");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;

use http::header::ACCEPT;
use http::{HeaderValue, Method, StatusCode, Uri};
use serde::Deserialize;

use crate::error::{clean_text, ConfigError, TransportError, TransportErrorKind};
use crate::url::{HttpUrl, UrlError};

/// Largest discovery document accepted (64 KiB; real ones are a few KiB).
pub const MAX_DISCOVERY_DOCUMENT: usize = 64 * 1024;

/// The parts of an authorization server's metadata this crate uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerMetadata {
    issuer: String,
    token_endpoint: String,
    token_endpoint_auth_methods: Vec<String>,
    dpop_signing_algs: Vec<String>,
}

impl ServerMetadata {
    /// The issuer, as configured and as the document confirmed it.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The token endpoint URL.
    pub fn token_endpoint(&self) -> &str {
        &self.token_endpoint
    }

    /// `token_endpoint_auth_methods_supported`, if the server listed them.
    pub fn token_endpoint_auth_methods(&self) -> &[String] {
        &self.token_endpoint_auth_methods
    }

    /// `dpop_signing_alg_values_supported`, if the server listed them.
    pub fn dpop_signing_algs(&self) -> &[String] {
        &self.dpop_signing_algs
    }
}

/// Why discovery failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// Neither well-known document exists at this issuer.
    NotFound,
    /// A document answered with an unexpected status.
    Status(StatusCode),
    /// The document is not a JSON object, or is over [`MAX_DISCOVERY_DOCUMENT`].
    InvalidDocument(&'static str),
    /// The document is for another issuer.
    IssuerMismatch {
        /// The issuer asked for.
        expected: String,
        /// The issuer the document names.
        found: String,
    },
    /// The document has no usable `token_endpoint`.
    InvalidTokenEndpoint(&'static str),
    /// The metadata document could not be fetched (no connection, no answer
    /// in time, a broken connection): the authorization server's well-known
    /// URL failed, not its token endpoint.
    Unreachable(TransportError),
}

impl DiscoveryError {
    /// A transport failure while fetching the metadata document.
    pub fn unreachable(error: TransportError) -> DiscoveryError {
        DiscoveryError::Unreachable(error)
    }
}

impl fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiscoveryError::NotFound => f.write_str(
                "discovery failed: neither openid-configuration nor oauth-authorization-server exists at this issuer",
            ),
            DiscoveryError::Status(s) => write!(f, "discovery failed: the server answered HTTP {}", s.as_u16()),
            DiscoveryError::InvalidDocument(why) => write!(f, "discovery failed: {why}"),
            DiscoveryError::IssuerMismatch { expected, found } => write!(
                f,
                "discovery failed: the document is for issuer {found:?}, not {expected:?}"
            ),
            DiscoveryError::InvalidTokenEndpoint(why) => write!(f, "discovery failed: token_endpoint {why}"),
            DiscoveryError::Unreachable(error) => {
                let what = match error.kind() {
                    TransportErrorKind::Connect => "could not connect to the authorization server",
                    TransportErrorKind::Timeout => "the authorization server did not answer in time",
                    TransportErrorKind::Io => "the connection to the authorization server broke",
                    TransportErrorKind::Other => "fetching the metadata document failed",
                };
                write!(f, "discovery failed: {what}: {}", error.message())
            }
        }
    }
}

impl std::error::Error for DiscoveryError {}

/// What to do after a discovery response.
#[derive(Debug)]
pub enum DiscoveryStep {
    /// The metadata, checked.
    Done(ServerMetadata),
    /// The first document was missing: send [`Discovery::request`] again (it now names the fallback).
    TryNext,
    /// Discovery failed.
    Failed(DiscoveryError),
}

/// Discovery of one issuer, as a small state machine.
#[derive(Clone, Debug)]
pub struct Discovery {
    issuer: String,
    candidates: [Uri; 2],
    attempt: usize,
}

impl Discovery {
    /// Starts discovery for `issuer` (an `https` URL, or `http` on loopback,
    /// with no query or fragment).
    pub fn new(issuer: &str) -> Result<Discovery, ConfigError> {
        let url = parse_issuer(issuer).map_err(|error| {
            ConfigError::new(match error {
                UrlError::NotUrl | UrlError::TooLong => "issuer is not a valid URL",
                UrlError::NoHost => "issuer has no host",
                UrlError::InvalidHost => "issuer has an invalid host",
                UrlError::NotHttp | UrlError::PlainHttp => {
                    "issuer must be an https URL (or http on loopback)"
                }
                UrlError::UnexpectedQuery | UrlError::Fragment | UrlError::UnexpectedPath => {
                    "issuer must not have a query or fragment"
                }
                // Never echoed: the user information may be a password.
                UrlError::UserInfo => "issuer carries user information",
                UrlError::InvalidPort => "issuer has an invalid port",
            })
        })?;
        let origin = url.origin();
        let path = url.uri().path().trim_end_matches('/');
        let openid = format!("{origin}{path}/.well-known/openid-configuration");
        let rfc8414 = format!("{origin}/.well-known/oauth-authorization-server{path}");
        let parse = |s: String| {
            s.parse::<Uri>()
                .map_err(|_| ConfigError::new("issuer is not a valid URL"))
        };
        Ok(Discovery {
            issuer: issuer.to_owned(),
            candidates: [parse(openid)?, parse(rfc8414)?],
            attempt: 0,
        })
    }

    /// The request to send now.
    pub fn request(&self) -> http::Request<Vec<u8>> {
        http::Request::builder()
            .method(Method::GET)
            .uri(self.candidates[self.attempt].clone())
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .body(Vec::new())
            .expect("a validated URI and static headers always build")
    }

    /// Reads the response to [`Discovery::request`].
    pub fn handle_response<B: AsRef<[u8]>>(
        &mut self,
        response: &http::Response<B>,
    ) -> DiscoveryStep {
        let status = response.status();
        let missing = matches!(status.as_u16(), 404 | 405 | 410 | 501);
        if missing {
            if self.attempt == 0 {
                self.attempt = 1;
                return DiscoveryStep::TryNext;
            }
            return DiscoveryStep::Failed(DiscoveryError::NotFound);
        }
        if !status.is_success() {
            return DiscoveryStep::Failed(DiscoveryError::Status(status));
        }
        match parse_metadata(response.body().as_ref(), &self.issuer) {
            Ok(metadata) => DiscoveryStep::Done(metadata),
            Err(error) => DiscoveryStep::Failed(error),
        }
    }
}

/// Checks an issuer identifier (RFC 8414 §2) with the crate's one URL rule
/// ([`HttpUrl`]): an `https` URL (or `http` on a loopback host) with a host,
/// a valid port, no user information, and no query or fragment.
pub(crate) fn parse_issuer(issuer: &str) -> Result<HttpUrl, UrlError> {
    let url = HttpUrl::parse(issuer)?.require_credential_safe()?;
    if url.uri().query().is_some() {
        return Err(UrlError::UnexpectedQuery);
    }
    Ok(url)
}

#[derive(Deserialize)]
struct RawMetadata {
    issuer: Option<serde_json::Value>,
    token_endpoint: Option<serde_json::Value>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<serde_json::Value>,
    #[serde(default)]
    dpop_signing_alg_values_supported: Option<serde_json::Value>,
}

/// Parses and checks a discovery document fetched for `expected_issuer`.
pub fn parse_metadata(
    body: &[u8],
    expected_issuer: &str,
) -> Result<ServerMetadata, DiscoveryError> {
    if body.len() > MAX_DISCOVERY_DOCUMENT {
        return Err(DiscoveryError::InvalidDocument(
            "document larger than 64 KiB",
        ));
    }
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(DiscoveryError::InvalidDocument(
            "document is not a JSON object",
        ));
    }
    let raw: RawMetadata = serde_json::from_slice(body)
        .map_err(|_| DiscoveryError::InvalidDocument("document is not valid JSON"))?;
    let issuer = match raw.issuer {
        Some(serde_json::Value::String(s)) => s,
        _ => return Err(DiscoveryError::InvalidDocument("document has no issuer")),
    };
    if issuer != expected_issuer {
        return Err(DiscoveryError::IssuerMismatch {
            expected: clean_text(expected_issuer, 200),
            found: clean_text(&issuer, 200),
        });
    }
    let token_endpoint = match raw.token_endpoint {
        Some(serde_json::Value::String(s)) => s,
        Some(_) => return Err(DiscoveryError::InvalidTokenEndpoint("is not a string")),
        None => return Err(DiscoveryError::InvalidTokenEndpoint("is missing")),
    };
    // The same rule as a configured token endpoint: user information and
    // invalid ports are refused here too.
    HttpUrl::parse(&token_endpoint)
        .and_then(HttpUrl::require_credential_safe)
        .map_err(|error| {
            DiscoveryError::InvalidTokenEndpoint(match error {
                UrlError::NotUrl | UrlError::TooLong => "is not a valid URL",
                UrlError::NotHttp | UrlError::PlainHttp => "must be https (or http on loopback)",
                UrlError::NoHost => "has no host",
                UrlError::InvalidHost => "has an invalid host",
                // Never echoed: the user information may be a password.
                UrlError::UserInfo => "carries user information",
                UrlError::InvalidPort => "has an invalid port",
                UrlError::Fragment => "has a fragment",
                UrlError::UnexpectedPath | UrlError::UnexpectedQuery => "is not a valid URL",
            })
        })?;
    Ok(ServerMetadata {
        issuer,
        token_endpoint,
        token_endpoint_auth_methods: string_list(raw.token_endpoint_auth_methods_supported),
        dpop_signing_algs: string_list(raw.dpop_signing_alg_values_supported),
    })
}

fn string_list(value: Option<serde_json::Value>) -> Vec<String> {
    match value {
        Some(serde_json::Value::Array(items)) => items
            .into_iter()
            .filter_map(|v| match v {
                serde_json::Value::String(s) => Some(s),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn respond(status: u16, body: &str) -> http::Response<String> {
        http::Response::builder()
            .status(status)
            .body(body.to_owned())
            .unwrap()
    }

    #[test]
    fn well_known_locations() {
        let d = Discovery::new("https://as.example").unwrap();
        assert_eq!(
            d.candidates[0],
            "https://as.example/.well-known/openid-configuration"
        );
        assert_eq!(
            d.candidates[1],
            "https://as.example/.well-known/oauth-authorization-server"
        );
        let d = Discovery::new("https://as.example/tenant/a/").unwrap();
        assert_eq!(
            d.candidates[0],
            "https://as.example/tenant/a/.well-known/openid-configuration"
        );
        assert_eq!(
            d.candidates[1],
            "https://as.example/.well-known/oauth-authorization-server/tenant/a"
        );
        assert!(Discovery::new("http://127.0.0.1:9000").is_ok());
        assert!(Discovery::new("http://as.example").is_err());
        assert!(Discovery::new("https://as.example/?x=1").is_err());
        assert!(Discovery::new("nope").is_err());
        assert!(Discovery::new("https://:443").is_err(), "an empty host");
    }

    #[test]
    fn issuers_follow_the_shared_url_rules() {
        // Scheme and host case and the default port are normalised in the
        // well-known URLs; the issuer compared with the document is not.
        let d = Discovery::new("HTTPS://AS.Example:443/Tenant").unwrap();
        assert_eq!(
            d.candidates[0],
            "https://as.example/Tenant/.well-known/openid-configuration"
        );
        assert_eq!(
            d.candidates[1],
            "https://as.example/.well-known/oauth-authorization-server/Tenant"
        );
        assert_eq!(d.issuer, "HTTPS://AS.Example:443/Tenant");
        let d = Discovery::new("http://[::1]:9000/").unwrap();
        assert_eq!(
            d.candidates[0],
            "http://[::1]:9000/.well-known/openid-configuration"
        );
        // New refusals: user information, invalid ports. A fragment, a
        // query and plain http off loopback were refused before, and still are.
        for (issuer, why) in [
            ("https://svc:pw@as.example", "user information"),
            ("https://as.example:99999", "invalid port"),
            ("https://as.example:x", "invalid port"),
            ("https://as.example:0", "invalid port"),
            ("https://as.example#", "query or fragment"),
            ("https://as.example?", "query or fragment"),
            ("http://localhost.", "https"),
        ] {
            let err = Discovery::new(issuer).unwrap_err().to_string();
            assert!(err.contains(why), "{issuer}: {err}");
            assert!(!err.contains("pw"), "{err}");
        }
    }

    #[test]
    fn discovered_token_endpoints_follow_the_shared_url_rules() {
        // All but the last were accepted before: discovery skipped the
        // user-information, port and fragment checks of a configured endpoint.
        for (endpoint, why) in [
            ("https://as.example:99999/token", "has an invalid port"),
            ("https://as.example:0/token", "has an invalid port"),
            ("https://as.example:x/token", "has an invalid port"),
            (
                "https://user:pw@as.example/token",
                "carries user information",
            ),
            ("https://pw@as.example/token", "carries user information"),
            ("https://as.example/token#pw", "has a fragment"),
            ("https://[v1.x]/token", "has an invalid host"),
            ("http://127.1/token", "must be https"),
        ] {
            let body =
                format!(r#"{{"issuer":"https://as.example","token_endpoint":"{endpoint}"}}"#);
            let error = parse_metadata(body.as_bytes(), "https://as.example").unwrap_err();
            assert!(
                matches!(error, DiscoveryError::InvalidTokenEndpoint(_)),
                "{endpoint}: {error:?}"
            );
            let text = format!("{error} {error:?}");
            assert!(text.contains(why), "{endpoint}: {text}");
            assert!(!text.contains("pw"), "{endpoint}: {text}");
        }
        // An explicit default port, an empty port and loopback http pass,
        // kept as written.
        for endpoint in [
            "https://as.example:443/token",
            "https://as.example:/token",
            "http://127.0.0.1:8080/token",
        ] {
            let body =
                format!(r#"{{"issuer":"https://as.example","token_endpoint":"{endpoint}"}}"#);
            let metadata = parse_metadata(body.as_bytes(), "https://as.example").unwrap();
            assert_eq!(metadata.token_endpoint(), endpoint);
        }
    }

    #[test]
    fn falls_back_to_rfc_8414_then_gives_up() {
        let mut d = Discovery::new("https://as.example").unwrap();
        assert!(matches!(
            d.handle_response(&respond(404, "")),
            DiscoveryStep::TryNext
        ));
        assert_eq!(
            d.request().uri(),
            "https://as.example/.well-known/oauth-authorization-server"
        );
        let ok = r#"{"issuer":"https://as.example","token_endpoint":"https://as.example/t"}"#;
        assert!(matches!(
            d.handle_response(&respond(200, ok)),
            DiscoveryStep::Done(_)
        ));
        let mut d = Discovery::new("https://as.example").unwrap();
        d.handle_response(&respond(404, ""));
        assert!(matches!(
            d.handle_response(&respond(404, "")),
            DiscoveryStep::Failed(DiscoveryError::NotFound)
        ));
        let mut d = Discovery::new("https://as.example").unwrap();
        assert!(matches!(
            d.handle_response(&respond(500, "")),
            DiscoveryStep::Failed(DiscoveryError::Status(StatusCode::INTERNAL_SERVER_ERROR))
        ));
    }

    #[test]
    fn an_empty_host_is_no_token_endpoint() {
        // The fuzzer's find: `http::Uri` parses `https://:443/token` with an empty host.
        for endpoint in ["https://:443/token", r"https:/\u002f:x/token"] {
            let body =
                format!(r#"{{"issuer":"https://as.example","token_endpoint":"{endpoint}"}}"#);
            assert!(
                matches!(
                    parse_metadata(body.as_bytes(), "https://as.example"),
                    Err(DiscoveryError::InvalidTokenEndpoint(_))
                ),
                "{endpoint}"
            );
        }
    }

    #[test]
    fn a_foreign_issuer_is_shown_with_its_bidi_controls_escaped() {
        let body = r#"{"issuer":"https://evil.example/\u202Emoc.elpmaxe-sa","token_endpoint":"https://as.example/t"}"#;
        let error = parse_metadata(body.as_bytes(), "https://as.example").unwrap_err();
        let text = error.to_string();
        assert!(!text.contains('\u{202E}'), "{text}");
        assert!(text.contains(r"\\u{202e}moc.elpmaxe-sa"), "{text}");
    }

    #[test]
    fn documents_are_checked() {
        let issuer = "https://as.example";
        let good = r#"{"issuer":"https://as.example","token_endpoint":"https://as.example/token",
            "token_endpoint_auth_methods_supported":["client_secret_basic","private_key_jwt",7],
            "dpop_signing_alg_values_supported":["ES256"],"other":{"x":[1]}}"#;
        let m = parse_metadata(good.as_bytes(), issuer).unwrap();
        assert_eq!(m.token_endpoint(), "https://as.example/token");
        assert_eq!(
            m.token_endpoint_auth_methods(),
            ["client_secret_basic", "private_key_jwt"]
        );
        assert_eq!(m.dpop_signing_algs(), ["ES256"]);

        type Check = fn(&DiscoveryError) -> bool;
        let cases: [(&str, Check); 8] = [
            (
                r#"{"issuer":"https://evil.example","token_endpoint":"https://as.example/t"}"#,
                |e| matches!(e, DiscoveryError::IssuerMismatch { .. }),
            ),
            (
                r#"{"issuer":"https://as.example/","token_endpoint":"https://as.example/t"}"#,
                |e| matches!(e, DiscoveryError::IssuerMismatch { .. }),
            ),
            (r#"{"token_endpoint":"https://as.example/t"}"#, |e| {
                matches!(e, DiscoveryError::InvalidDocument(_))
            }),
            (r#"{"issuer":"https://as.example"}"#, |e| {
                matches!(e, DiscoveryError::InvalidTokenEndpoint(_))
            }),
            (
                r#"{"issuer":"https://as.example","token_endpoint":"http://as.example/t"}"#,
                |e| matches!(e, DiscoveryError::InvalidTokenEndpoint(_)),
            ),
            (
                r#"{"issuer":"https://as.example","token_endpoint":5}"#,
                |e| matches!(e, DiscoveryError::InvalidTokenEndpoint(_)),
            ),
            ("<html>", |e| {
                matches!(e, DiscoveryError::InvalidDocument(_))
            }),
            (r#"["issuer"]"#, |e| {
                matches!(e, DiscoveryError::InvalidDocument(_))
            }),
        ];
        for (body, expected) in cases {
            let error = parse_metadata(body.as_bytes(), issuer).unwrap_err();
            assert!(expected(&error), "{body}: {error:?}");
            assert!(!error.to_string().is_empty());
        }
        let huge = format!(
            r#"{{"issuer":"{issuer}","pad":"{}"}}"#,
            "x".repeat(MAX_DISCOVERY_DOCUMENT)
        );
        assert!(matches!(
            parse_metadata(huge.as_bytes(), issuer),
            Err(DiscoveryError::InvalidDocument(_))
        ));
    }
    #[test]
    fn an_unreachable_issuer_is_named_as_such_not_as_the_token_endpoint() {
        use crate::error::{TransportError, TransportErrorKind};
        for kind in [
            TransportErrorKind::Connect,
            TransportErrorKind::Timeout,
            TransportErrorKind::Io,
            TransportErrorKind::Other,
        ] {
            let error = DiscoveryError::unreachable(TransportError::new(kind, "refused"));
            let text = error.to_string();
            assert!(text.starts_with("discovery failed: "), "{text}");
            assert!(!text.contains("token endpoint"), "{text}");
            assert!(text.ends_with("refused"), "{text}");
        }
    }
}
