//! The API-call policy: what a middleware does around an API request that
//! may carry a token, decided here once for every HTTP stack.
//!
//! | Question | Rule |
//! |---|---|
//! | Does the request get a token? | Only if its origin is routed ([`Routes`]), the caller set no `Authorization` of its own, and no `Host` header naming another origin. |
//! | May it follow a redirect? | No ([`REDIRECTS_WITH_TOKEN`]): a token never crosses a redirect, and a DPoP proof is bound to the URI it was made for. |
//! | Is its body kept for a replay? | On the first attempt only, if it fits in [`ApiCallPolicy::max_replay_body`] (64 KiB by default); a longer one is streamed and never replayed. |
//! | Which responses go to the core? | Every `401`, and every response to a DPoP-bound request (it may carry a `DPoP-Nonce`), from the origin the request was sent to; never one from another origin. |
//! | Is it sent again? | Once: after a `401` the core answers [`ResourceOutcome::Retry`] to, if its body was kept. |
//! | What is a `401`? | An HTTP `401`, and gRPC's `UNAUTHENTICATED` (`grpc-status: 16`) in a trailers-only answer's headers or in the trailers ([`effective_status`]); trailers are watched only on gRPC answers ([`may_end_with_status`]). |
//!
//! A middleware reads the request, asks these questions, and does what the
//! answers say with its own types; it decides nothing itself.

use http::{HeaderMap, Method, StatusCode, Uri};

use crate::error::ConfigError;
use crate::key::KeyId;
use crate::manager::ResourceOutcome;
use crate::url::{Origin, UrlError};

/// How many redirects a request carrying a token may follow: none.
pub const REDIRECTS_WITH_TOKEN: u32 = 0;

/// The body size up to which a request is kept for one replay, by default.
pub const DEFAULT_MAX_REPLAY_BODY: usize = 64 * 1024;

/// Which origins get which key's tokens.
///
/// A token is attached only to requests whose origin (scheme, host, port)
/// was configured for it, and only `https` origins or `http` on a loopback
/// host may be configured: a bearer token sent in clear text is a token
/// given away. A route is an origin: a path is refused, not ignored.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    routes: Vec<(Origin, KeyId)>,
}

impl Routes {
    /// No routes: no request gets a token.
    pub fn new() -> Routes {
        Routes::default()
    }

    /// Sends `key`'s tokens to `origin` (`https://api.example.com`, or
    /// `http://127.0.0.1:8080` on loopback).
    pub fn add(&mut self, origin: &str, key: KeyId) -> Result<(), ConfigError> {
        let origin = Origin::parse(origin).map_err(|e| match e {
            UrlError::UnexpectedPath => ConfigError::new(
                "a route is an origin (https://host[:port]), without a path: tokens go to \
                 every path of the origin",
            ),
            other => ConfigError::new(other.reason()),
        })?;
        if !origin.may_carry_credentials() {
            return Err(ConfigError::new(
                "tokens are attached only to https origins (or http on loopback)",
            ));
        }
        self.routes.push((origin, key));
        Ok(())
    }

    /// The key whose token goes on a request to `uri`, if its origin is
    /// routed. A URI with user information or an invalid port is never routed.
    pub fn key_for(&self, uri: &Uri) -> Option<KeyId> {
        let origin = Origin::of(uri).ok()?;
        self.routes
            .iter()
            .find(|(o, _)| *o == origin)
            .map(|(_, key)| *key)
    }
}

/// The rules of one middleware's API calls: its [`Routes`] and its replay
/// limit. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ApiCallPolicy {
    routes: Routes,
    max_replay_body: usize,
}

impl Default for ApiCallPolicy {
    fn default() -> Self {
        ApiCallPolicy {
            routes: Routes::new(),
            max_replay_body: DEFAULT_MAX_REPLAY_BODY,
        }
    }
}

impl ApiCallPolicy {
    /// No routes, and the default replay limit.
    pub fn new() -> ApiCallPolicy {
        ApiCallPolicy::default()
    }

    /// The routes, to add to.
    pub fn routes_mut(&mut self) -> &mut Routes {
        &mut self.routes
    }

    /// Sets the body size up to which a request is kept for one replay.
    pub fn set_max_replay_body(&mut self, bytes: usize) {
        self.max_replay_body = bytes;
    }

    /// The body size up to which a request is kept for one replay.
    pub fn max_replay_body(&self) -> usize {
        self.max_replay_body
    }

    /// The key whose token a request to `uri` gets: `None` if its origin is
    /// not routed, if the caller set an `Authorization` of its own (sent as
    /// it is, and never reported), or if the caller set a `Host` header
    /// (`host`) naming another origin than the URI's (behind a shared
    /// ingress, the token would reach that other virtual host).
    pub fn key_for(
        &self,
        uri: &Uri,
        has_authorization: bool,
        host: Option<&[u8]>,
    ) -> Option<KeyId> {
        if has_authorization {
            return None;
        }
        let key = self.routes.key_for(uri)?;
        match host {
            Some(host) if !host_names_origin_of(host, uri) => None,
            _ => Some(key),
        }
    }

    /// Whether to read the body of attempt `attempt` (0 for the first) to
    /// keep it for a replay: on the first attempt, when its declared length,
    /// if any, fits. Read at most [`max_replay_body`](Self::max_replay_body)
    /// `+ 1` bytes, then ask [`fits`](Self::fits).
    pub fn keep_for_replay(&self, attempt: u32, declared_length: Option<u64>) -> bool {
        attempt == 0 && declared_length.is_none_or(|n| n <= self.max_replay_body as u64)
    }

    /// Whether a body of which `read` bytes were read (at most the limit
    /// `+ 1`) is whole and kept: otherwise send the bytes read followed by
    /// the rest of the stream, and do not replay it.
    pub fn fits(&self, read: usize) -> bool {
        read <= self.max_replay_body
    }

    /// Whether the response to a request sent to `sent_to` and answered by
    /// `answered_by` with `status` goes to the core
    /// ([`TokenManager::handle_resource_response`](crate::TokenManager::handle_resource_response)):
    /// every `401`, and every response to a DPoP-bound request; never one
    /// from another origin than the request's (a redirect the stack followed
    /// against the rules says nothing about this token).
    pub fn must_report(
        &self,
        status: StatusCode,
        dpop: bool,
        sent_to: &Uri,
        answered_by: &Uri,
    ) -> bool {
        let same_origin = match (Origin::of(sent_to), Origin::of(answered_by)) {
            (Ok(sent), Ok(answered)) => sent == answered,
            _ => false,
        };
        same_origin && (status == StatusCode::UNAUTHORIZED || dpop)
    }

    /// Whether to send the request once more: after a `401` on the first
    /// attempt that the core answered [`ResourceOutcome::Retry`] to, if the
    /// body was kept.
    pub fn must_retry(
        &self,
        status: StatusCode,
        outcome: ResourceOutcome,
        attempt: u32,
        kept: bool,
    ) -> bool {
        status == StatusCode::UNAUTHORIZED
            && outcome == ResourceOutcome::Retry
            && attempt == 0
            && kept
    }
}

/// Whether a `Host` header value names the origin of `uri` (same host,
/// case aside, and the same port, the scheme's default when none is given).
fn host_names_origin_of(host: &[u8], uri: &Uri) -> bool {
    let (Ok(host), Some(scheme)) = (std::str::from_utf8(host), uri.scheme_str()) else {
        return false;
    };
    if host.is_empty() || host.contains(['/', '@', '?', '#']) {
        return false;
    }
    let Ok(named) = format!("{scheme}://{host}/").parse::<Uri>() else {
        return false;
    };
    match (Origin::of(uri), Origin::of(&named)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// gRPC's status code for "the request does not have valid authentication
/// credentials" (`UNAUTHENTICATED`).
const GRPC_UNAUTHENTICATED: &[u8] = b"16";

/// The status to tell the core (and to ask [`ApiCallPolicy`] about) for an
/// answer with `status` and `headers` (or, at the end of a gRPC answer,
/// `StatusCode::OK` and its trailers): `401` for an HTTP `401` and for gRPC's
/// `UNAUTHENTICATED` (`grpc-status: 16`); `status` otherwise. Other gRPC
/// codes (`PERMISSION_DENIED` included) say nothing about the token's
/// validity.
pub fn effective_status(status: StatusCode, headers: &HeaderMap) -> StatusCode {
    if headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == GRPC_UNAUTHENTICATED)
    {
        StatusCode::UNAUTHORIZED
    } else {
        status
    }
}

/// Whether an answer with these headers may carry its status in trailers
/// (a gRPC answer: `content-type: application/grpc…`), so its trailers are
/// worth watching for [`effective_status`].
pub fn may_end_with_status(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Whether a request with `method` is sent with a body when it has none to
/// send: `GET`, `HEAD`, `DELETE`, `OPTIONS` and `TRACE` go without (an empty
/// `Content-Length: 0` would change what some servers answer).
pub fn may_carry_body(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientAuth, ClientConfig, ClientSecret, ManagerConfig, TokenManager};

    fn key() -> KeyId {
        let mut core = TokenManager::new(ManagerConfig::default(), 1);
        let c = core
            .add_client(
                "c",
                ClientConfig::new(
                    "https://as.example/t",
                    "c",
                    ClientAuth::Basic(ClientSecret::new("s")),
                )
                .unwrap(),
            )
            .unwrap();
        core.default_key(c)
    }

    fn uri(text: &str) -> Uri {
        text.parse().unwrap()
    }

    #[test]
    fn origins_match_scheme_host_and_port() {
        let key = key();
        let mut routes = Routes::new();
        routes.add("https://API.example.com", key).unwrap();
        routes.add("http://127.0.0.1:8080", key).unwrap();
        routes.add("http://[::1]:9000", key).unwrap();
        for routed in [
            "https://api.example.com/x?y",
            "https://api.example.com:443/",
            "http://127.0.0.1:8080/api",
            "http://[::1]:9000/",
        ] {
            assert_eq!(routes.key_for(&uri(routed)), Some(key), "{routed}");
        }
        for other in [
            "https://api.example.com:8443/",
            "http://api.example.com/",
            "https://evil.example.com/",
            "http://127.0.0.1:8081/",
            // User information: never routed.
            "https://u:p@api.example.com/",
        ] {
            assert_eq!(routes.key_for(&uri(other)), None, "{other}");
        }
    }

    #[test]
    fn clear_text_and_paths_are_refused() {
        let key = key();
        let mut routes = Routes::new();
        assert!(routes.add("http://api.example.com", key).is_err());
        assert!(routes.add("ftp://api.example.com", key).is_err());
        assert!(routes.add("not a url", key).is_err());
        assert!(routes.add("http://localhost:1", key).is_ok());
        // A path is refused, not silently ignored.
        let error = routes.add("https://api.example.com/v1", key).unwrap_err();
        assert!(error.to_string().contains("without a path"), "{error}");
        assert!(routes.add("https://api.example.com/", key).is_ok());
    }

    #[test]
    fn a_caller_set_authorization_is_left_alone() {
        let key = key();
        let mut policy = ApiCallPolicy::new();
        policy
            .routes_mut()
            .add("https://api.example.com", key)
            .unwrap();
        let api = uri("https://api.example.com/v1");
        assert_eq!(policy.key_for(&api, false, None), Some(key));
        assert_eq!(policy.key_for(&api, true, None), None);
    }

    #[test]
    fn bodies_are_kept_on_the_first_attempt_up_to_the_limit() {
        let mut policy = ApiCallPolicy::new();
        assert_eq!(policy.max_replay_body(), 64 * 1024);
        policy.set_max_replay_body(10);
        assert!(policy.keep_for_replay(0, None));
        assert!(policy.keep_for_replay(0, Some(10)));
        assert!(!policy.keep_for_replay(0, Some(11)));
        assert!(
            !policy.keep_for_replay(1, Some(0)),
            "a replay is not replayed"
        );
        assert!(policy.fits(10) && !policy.fits(11));
    }

    #[test]
    fn what_is_reported_and_what_is_retried() {
        let policy = ApiCallPolicy::new();
        let api = uri("https://api.example.com/v1");
        let moved = uri("https://elsewhere.example.com/v1");
        let ok = StatusCode::OK;
        let unauthorized = StatusCode::UNAUTHORIZED;
        assert!(policy.must_report(unauthorized, false, &api, &api));
        assert!(!policy.must_report(ok, false, &api, &api));
        assert!(
            policy.must_report(ok, true, &api, &api),
            "a nonce may come with any DPoP answer"
        );
        assert!(!policy.must_report(unauthorized, true, &api, &moved));
        let retry = ResourceOutcome::Retry;
        assert!(policy.must_retry(unauthorized, retry, 0, true));
        assert!(!policy.must_retry(unauthorized, retry, 1, true), "once");
        assert!(
            !policy.must_retry(unauthorized, retry, 0, false),
            "no body to send again"
        );
        assert!(!policy.must_retry(unauthorized, ResourceOutcome::Deliver, 0, true));
        assert!(!policy.must_retry(ok, retry, 0, true));
        assert!(may_carry_body(&Method::POST) && !may_carry_body(&Method::GET));
        assert_eq!(REDIRECTS_WITH_TOKEN, 0);
    }

    #[test]
    fn a_host_header_naming_another_origin_gets_no_token() {
        let mut policy = ApiCallPolicy::new();
        let key = key();
        policy.routes_mut().add("https://api.example", key).unwrap();
        let api: Uri = "https://api.example/v1".parse().unwrap();
        for same in [&b"api.example"[..], b"API.Example", b"api.example:443"] {
            assert_eq!(
                policy.key_for(&api, false, Some(same)),
                Some(key),
                "{same:?}"
            );
        }
        for other in [
            &b"intranet.example"[..],
            b"api.example:8443",
            b"api.example.evil",
            b"user@api.example",
            b"api.example/x",
            b"",
            b"\xff",
        ] {
            assert_eq!(policy.key_for(&api, false, Some(other)), None, "{other:?}");
        }
        let loopback: Uri = "http://127.0.0.1:8080/x".parse().unwrap();
        policy
            .routes_mut()
            .add("http://127.0.0.1:8080", key)
            .unwrap();
        assert_eq!(
            policy.key_for(&loopback, false, Some(b"127.0.0.1:8080")),
            Some(key)
        );
        assert_eq!(policy.key_for(&loopback, false, Some(b"127.0.0.1")), None);
    }

    #[test]
    fn grpc_unauthenticated_is_a_401_and_no_other_grpc_code_is() {
        let mut headers = HeaderMap::new();
        assert_eq!(effective_status(StatusCode::OK, &headers), StatusCode::OK);
        headers.insert("grpc-status", http::HeaderValue::from_static("16"));
        assert_eq!(
            effective_status(StatusCode::OK, &headers),
            StatusCode::UNAUTHORIZED
        );
        for other in ["0", "1", "7", "160", " 16"] {
            headers.insert("grpc-status", http::HeaderValue::from_static(other));
            assert_eq!(effective_status(StatusCode::OK, &headers), StatusCode::OK);
        }
        assert_eq!(
            effective_status(StatusCode::UNAUTHORIZED, &HeaderMap::new()),
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn only_grpc_answers_have_their_trailers_watched() {
        let mut headers = HeaderMap::new();
        assert!(!may_end_with_status(&headers));
        for (content_type, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/json", false),
        ] {
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(content_type),
            );
            assert_eq!(may_end_with_status(&headers), grpc, "{content_type}");
        }
    }
}
