//! Authorization server discovery: from an issuer URL to its token endpoint.
//!
//! Two well-known documents describe an authorization server: OpenID Connect
//! Discovery (`{issuer}/.well-known/openid-configuration`) and RFC 8414
//! (`{origin}/.well-known/oauth-authorization-server{issuer path}`). A
//! [`Discovery`] asks for the first and falls back to the second when the
//! first is missing (404, 405, 410, or 501). The document must name the same
//! `issuer` it was fetched for (RFC 8414 §3.3, a defence against a
//! compromised or misconfigured server impersonating another), and its
//! `token_endpoint` must be `https` (or `http` on loopback).
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

use crate::config::is_loopback_host;
use crate::error::{clean_text, ConfigError};

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
        let uri = parse_issuer(issuer).map_err(|problem| {
            ConfigError::new(match problem {
                IssuerProblem::NotUrl => "issuer is not a valid URL",
                IssuerProblem::NoHost => "issuer has no host",
                IssuerProblem::NotHttps => "issuer must be an https URL (or http on loopback)",
                IssuerProblem::QueryOrFragment => "issuer must not have a query or fragment",
            })
        })?;
        let authority = uri.authority().expect("a URL with a host has an authority");
        let scheme = uri.scheme_str().expect("checked above");
        let path = uri.path().trim_end_matches('/');
        let openid = format!("{scheme}://{authority}{path}/.well-known/openid-configuration");
        let rfc8414 =
            format!("{scheme}://{authority}/.well-known/oauth-authorization-server{path}");
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

/// What makes a string no issuer identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IssuerProblem {
    NotUrl,
    NoHost,
    NotHttps,
    QueryOrFragment,
}

/// Checks an issuer identifier (RFC 8414 §2): an `https` URL (or `http` on
/// a loopback host) with a host and no query or fragment.
pub(crate) fn parse_issuer(issuer: &str) -> Result<Uri, IssuerProblem> {
    let uri: Uri = issuer.parse().map_err(|_| IssuerProblem::NotUrl)?;
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or(IssuerProblem::NoHost)?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if is_loopback_host(host) => {}
        _ => return Err(IssuerProblem::NotHttps),
    }
    if uri.query().is_some() || issuer.contains('#') {
        return Err(IssuerProblem::QueryOrFragment);
    }
    Ok(uri)
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
    let uri: Uri = token_endpoint
        .parse()
        .map_err(|_| DiscoveryError::InvalidTokenEndpoint("is not a valid URL"))?;
    let secure = match (uri.scheme_str(), uri.host()) {
        (Some("https"), Some(host)) => !host.is_empty(),
        (Some("http"), Some(host)) => is_loopback_host(host),
        _ => false,
    };
    if !secure {
        return Err(DiscoveryError::InvalidTokenEndpoint(
            "must be https (or http on loopback)",
        ));
    }
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
}
