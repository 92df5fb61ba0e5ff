//! Sending the core's `http` requests, within bounds.
//!
//! A [`TokenTransport`] is either [`DirectHttp`] or a surf backend behind a
//! middleware-free surf client of this crate's own. surf speaks `http-types`, the core speaks `http`: requests
//! and responses are converted here, header by header. Every send is bounded
//! by a timer (`async-io`, which runs under any executor), whatever the
//! backend's own timeouts are, and bodies are read up to the core's cap plus
//! one byte.

use std::time::Duration;

use futures_lite::{AsyncReadExt, FutureExt};
use token_keeper::{Proxy, TransportError, TransportErrorKind};
use token_keeper_driver::Transport;

use crate::DirectHttp;

/// How an [`AsyncTokenClient`](crate::AsyncTokenClient) sends token and
/// discovery requests: `AsyncTokenClient::new(DirectHttp::new())`
/// (recommended), or `AsyncTokenClient::new(TokenTransport::surf(config)?)`
/// to keep them on a surf backend.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum TokenTransport {
    /// token-keeper's own bounded HTTP/1.1 connections (recommended).
    Direct(DirectHttp),
    /// A surf backend of the application's choice, behind a surf client of
    /// this crate's own that has **no middleware** (so nothing in it can follow
    /// a redirect or log a request) and keep-alive off. Built by
    /// [`TokenTransport::surf`]; the backend's own limits apply (async-h1: see
    /// [`DirectHttp`]).
    Surf(SurfBackend),
}

/// A surf client without middleware, for token and discovery requests.
#[derive(Clone)]
pub struct SurfBackend(surf::Client);

impl std::fmt::Debug for SurfBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SurfBackend")
    }
}

/// Why [`TokenTransport::surf`] could not build a surf backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SurfBackendError(String);

impl std::fmt::Display for SurfBackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot build the surf backend for token requests: {}",
            self.0
        )
    }
}

impl std::error::Error for SurfBackendError {}

impl TokenTransport {
    /// Token and discovery requests through a surf backend: the one `config`
    /// names with [`surf::Config::set_http_client`], or else surf's default
    /// backend (enable one of surf's client features, such as `h1-client`).
    ///
    /// The client is built here, from the configuration, so it has none of
    /// your middleware: token requests must never pass through surf's
    /// `Redirect` (which re-sends `Authorization: Basic` to any `Location`)
    /// or a logger. Keep-alive is turned off for the default backend: surf's
    /// HTTP/1 pool can hand back a connection after a cancelled exchange, and
    /// a later token request would read an earlier one's late answer. A
    /// backend you set with `set_http_client` keeps its own settings: give it
    /// keep-alive off too.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use token_keeper_surf::{AsyncTokenClient, TokenTransport};
    /// let tokens = AsyncTokenClient::new(TokenTransport::surf(surf::Config::new())?);
    /// # Ok(()) }
    /// ```
    pub fn surf(config: surf::Config) -> Result<TokenTransport, SurfBackendError> {
        let config = config.set_http_keep_alive(false);
        if config.http_client.is_none() && !surf_has_default_backend() {
            return Err(SurfBackendError(
                "surf was built without a default backend: enable one of its client features \
                 (such as h1-client) or give one with Config::set_http_client"
                    .to_owned(),
            ));
        }
        let client = surf::Client::try_from(config).map_err(|e| SurfBackendError(e.to_string()))?;
        Ok(TokenTransport::Surf(SurfBackend(client)))
    }
}

/// Whether `$type` implements `Default`, decided where the macro is used
/// (so for a concrete type, with the features of this build). Autoref
/// specialisation: method lookup tries the receiver `&Probe` before
/// `&&Probe`, so the first impl wins whenever the bound holds.
macro_rules! implements_default {
    ($type:ty) => {{
        // One of the two traits is never used, depending on the answer.
        #[allow(dead_code)]
        struct Probe<T>(std::marker::PhantomData<T>);
        #[allow(dead_code)]
        trait WithDefault {
            fn has_default(&self) -> bool {
                true
            }
        }
        impl<T: Default> WithDefault for Probe<T> {}
        #[allow(dead_code)]
        trait WithoutDefault {
            fn has_default(&self) -> bool {
                false
            }
        }
        impl<T> WithoutDefault for &Probe<T> {}
        (&Probe::<$type>(std::marker::PhantomData)).has_default()
    }};
}

/// Whether surf was built with a default backend (one of its client
/// features), in the build this crate is part of: exactly then does
/// `surf::Client` implement `Default`. Without one, `surf::Client::try_from`
/// panics when the configuration names no backend.
fn surf_has_default_backend() -> bool {
    implements_default!(surf::Client)
}

impl From<DirectHttp> for TokenTransport {
    fn from(http: DirectHttp) -> Self {
        TokenTransport::Direct(http)
    }
}

/// Sends token and discovery requests for the engine, on its threads:
/// the client's [`TokenTransport`] driven by async-io, within `timeout`.
pub(crate) struct EngineTransport {
    pub(crate) http: TokenTransport,
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
}

impl Transport for EngineTransport {
    /// [`DirectHttp`] goes through `via` with a `CONNECT` tunnel. A surf
    /// backend cannot be told to use a proxy (async-h1 never uses one): it
    /// sends only what goes direct, and refuses the rest.
    fn send(
        &self,
        request: http::Request<Vec<u8>>,
        via: Option<&Proxy>,
        max_body: usize,
    ) -> Result<http::Response<Vec<u8>>, TransportError> {
        let exchange = async {
            match (&self.http, via) {
                (TokenTransport::Direct(direct), via) => {
                    direct
                        .send(via, request, max_body, self.connect_timeout)
                        .await
                }
                (TokenTransport::Surf(SurfBackend(client)), None) => {
                    send_with_surf(client, request, max_body).await
                }
                // async-h1 would connect directly: refuse rather than go around the proxy.
                (TokenTransport::Surf(_), Some(via)) => Err(TransportError::new(
                    TransportErrorKind::Connect,
                    format!(
                        "the proxy settings send this request through {}, which a surf backend \
                         cannot be told to use: use DirectHttp, or ProxySettings::none() if the \
                         backend handles proxies itself",
                        via.url_without_credentials()
                    ),
                )),
            }
        };
        let timeout = self.timeout;
        let deadline = async {
            async_io::Timer::after(timeout).await;
            Err(TransportError::new(
                TransportErrorKind::Timeout,
                format!("no complete answer within {} ms", timeout.as_millis()),
            ))
        };
        async_io::block_on(exchange.or(deadline))
    }
}

/// Sends `request` through `client` and reads at most `max_body + 1` bytes of the answer.
async fn send_with_surf(
    client: &surf::Client,
    request: http::Request<Vec<u8>>,
    max_body: usize,
) -> Result<http::Response<Vec<u8>>, TransportError> {
    let request = to_surf(request)?;
    let mut response = client.send(request).await.map_err(classify)?;
    let mut builder = http::Response::builder().status(u16::from(response.status()));
    if let Some(headers) = builder.headers_mut() {
        *headers = to_http_headers(&response);
    }
    let promised = response.len();
    let mut body = Vec::new();
    response
        .take_body()
        .into_reader()
        .take(max_body as u64 + 1)
        .read_to_end(&mut body)
        .await
        .map_err(|e| TransportError::new(io_kind(&e), format!("reading the response body: {e}")))?;
    // A close before the promised length is a broken connection, not a
    // short answer (async-h1 hands the truncated body over as complete).
    if let Some(promised) = promised.filter(|&n| body.len() < n && body.len() <= max_body) {
        return Err(TransportError::new(
            TransportErrorKind::Io,
            format!(
                "the connection closed after {} of {promised} body bytes",
                body.len()
            ),
        ));
    }
    builder.body(body).map_err(|e| {
        TransportError::new(
            TransportErrorKind::Other,
            format!("unusable response head: {e}"),
        )
    })
}

/// A surf response's headers as an `http` map. Values `http` refuses are
/// skipped: the async-h1 backend has been seen to synthesize a `date` value
/// with its own name and CRLF inside, which no server sent.
pub(crate) fn to_http_headers(response: &surf::Response) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    for (name, values) in response.iter() {
        let Ok(name) = http::header::HeaderName::from_bytes(name.as_str().as_bytes()) else {
            continue;
        };
        for value in values.iter() {
            if let Ok(value) = http::HeaderValue::from_str(value.as_str()) {
                headers.append(name.clone(), value);
            }
        }
    }
    headers
}

fn to_surf(request: http::Request<Vec<u8>>) -> Result<surf::Request, TransportError> {
    let invalid = |what: &str| {
        TransportError::new(
            TransportErrorKind::Other,
            format!("cannot build the request: {what}"),
        )
    };
    let (parts, body) = request.into_parts();
    let url = surf::Url::parse(&parts.uri.to_string()).map_err(|_| invalid("URL"))?;
    let method: surf::http::Method = parts
        .method
        .as_str()
        .parse()
        .map_err(|_| invalid("method"))?;
    let mut out = surf::Request::new(method, url);
    for (name, value) in &parts.headers {
        let value = value.to_str().map_err(|_| invalid("header value"))?;
        out.append_header(name.as_str(), value);
    }
    if !body.is_empty() {
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        out.set_body(body);
        if let Some(mime) = content_type.and_then(|c| c.parse().ok()) {
            out.set_content_type(mime);
        }
    }
    Ok(out)
}

pub(crate) fn io_kind(e: &std::io::Error) -> TransportErrorKind {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable => {
            TransportErrorKind::Connect
        }
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
            TransportErrorKind::Timeout
        }
        _ => TransportErrorKind::Io,
    }
}

/// Maps a surf error to the core's transport error kinds.
pub(crate) fn classify(error: surf::Error) -> TransportError {
    let kind = error
        .downcast_ref::<std::io::Error>()
        .map_or(TransportErrorKind::Other, io_kind);
    TransportError::new(kind, error.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_detection_follows_the_trait() {
        struct NoDefault;
        assert!(implements_default!(String));
        assert!(!implements_default!(NoDefault));
        // The dev-dependencies enable surf's h1 client, hence a default backend.
        assert!(super::surf_has_default_backend());
    }
}
