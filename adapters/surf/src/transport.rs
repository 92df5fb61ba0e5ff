//! Sending the core's `http` requests, within bounds.
//!
//! A [`TokenTransport`] is either the application's surf client or
//! [`DirectHttp`]. surf speaks `http-types`, the core speaks `http`: requests
//! and responses are converted here, header by header. Every send is bounded
//! by a timer (`async-io`, which runs under any executor), whatever the
//! backend's own timeouts are, and bodies are read up to the core's cap plus
//! one byte.

use std::time::Duration;

use futures_lite::{AsyncReadExt, FutureExt};
use token_keeper::{TransportError, TransportErrorKind};

use crate::DirectHttp;

/// Marks token and discovery requests, so that this crate's middleware lets
/// them through untouched when they travel through a client it is part of.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TokenEndpointRequest;

/// How an [`AsyncTokenClient`](crate::AsyncTokenClient) sends token and
/// discovery requests. Both convert from their inner type, so
/// `AsyncTokenClient::new(DirectHttp::new())` and
/// `AsyncTokenClient::new(surf_client)` both work.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum TokenTransport {
    /// token-keeper's own bounded HTTP/1.1 connections (recommended).
    Direct(DirectHttp),
    /// A surf client of the application's, with its backend and TLS. Give it
    /// keep-alive off (see [`AsyncTokenClient::new`](crate::AsyncTokenClient::new));
    /// its backend's limits apply (async-h1: see [`DirectHttp`]).
    Surf(surf::Client),
}

impl From<DirectHttp> for TokenTransport {
    fn from(http: DirectHttp) -> Self {
        TokenTransport::Direct(http)
    }
}

impl From<surf::Client> for TokenTransport {
    fn from(http: surf::Client) -> Self {
        TokenTransport::Surf(http)
    }
}

/// Sends `request` and reads at most `max_body + 1` bytes of the answer, within `timeout`.
pub(crate) async fn send(
    transport: &TokenTransport,
    request: http::Request<Vec<u8>>,
    max_body: usize,
    timeout: Duration,
) -> Result<http::Response<Vec<u8>>, TransportError> {
    let exchange = async {
        match transport {
            TokenTransport::Direct(direct) => direct.send(request, max_body).await,
            TokenTransport::Surf(client) => send_with_surf(client, request, max_body).await,
        }
    };
    let deadline = async {
        async_io::Timer::after(timeout).await;
        Err(TransportError::new(
            TransportErrorKind::Timeout,
            format!("no complete answer within {} ms", timeout.as_millis()),
        ))
    };
    exchange.or(deadline).await
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
    out.set_ext(TokenEndpointRequest);
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
