//! Sending the core's `http` requests with a surf `Client`, within bounds.
//!
//! surf speaks `http-types`, the core speaks `http`: requests and responses
//! are converted here, header by header. Every send is bounded by a timer
//! (`async-io`, which runs under any executor), whatever the backend's own
//! timeouts are, and bodies are read up to the core's cap plus one byte.

use std::time::Duration;

use futures_lite::{AsyncReadExt, FutureExt};
use token_keeper::{TransportError, TransportErrorKind};

/// Marks token and discovery requests, so that this crate's middleware lets
/// them through untouched when they travel through a client it is part of.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TokenEndpointRequest;

/// Sends `request` through `client` and reads at most `max_body + 1` bytes of the answer.
pub(crate) async fn send(
    client: &surf::Client,
    request: http::Request<Vec<u8>>,
    max_body: usize,
    timeout: Duration,
) -> Result<http::Response<Vec<u8>>, TransportError> {
    let exchange = async {
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
            .map_err(|e| {
                TransportError::new(io_kind(&e), format!("reading the response body: {e}"))
            })?;
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

fn io_kind(e: &std::io::Error) -> TransportErrorKind {
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
