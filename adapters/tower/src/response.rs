//! What an answer says about the token it was sent with: an HTTP `401`, or
//! gRPC's `UNAUTHENTICATED` in the headers or, at the end of the body, in
//! the trailers ([`WatchedBody`]).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use token_keeper::api_call::effective_status;
use token_keeper::KeyId;
use token_keeper_driver::{Async, Client};

/// The request a response answers, for a report from its trailers.
pub(crate) struct Sent {
    pub(crate) client: Client<Async>,
    pub(crate) key: KeyId,
    pub(crate) authorization: HeaderValue,
    pub(crate) uri: Uri,
    pub(crate) attempt: u32,
}

impl Sent {
    /// Tells the core that this request's token was refused
    /// (compare-and-invalidate: only if it is still the cached one).
    fn report_unauthenticated(&self, trailers: &HeaderMap) {
        // Too late to retry (the caller is reading the answer); the next
        // request gets a new token.
        let _ = self.client.handle_resource_response(
            self.key,
            StatusCode::UNAUTHORIZED,
            trailers,
            &self.authorization,
            &self.uri,
            self.attempt,
        );
    }
}

impl std::fmt::Debug for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the Authorization value.
        f.debug_struct("Sent")
            .field("key", &self.key)
            .field("uri", &self.uri)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

pin_project_lite::pin_project! {
    /// The response body of a [`TokenService`](crate::TokenService): the
    /// inner service's, frame for frame. When the request carried a token,
    /// trailers saying `grpc-status: 16` (`UNAUTHENTICATED`) are reported to
    /// the token client as they go by, so the next request gets a new token.
    #[derive(Debug)]
    pub struct WatchedBody<B> {
        #[pin]
        inner: B,
        sent: Option<Box<Sent>>,
    }
}

impl<B> WatchedBody<B> {
    pub(crate) fn new(inner: B, sent: Option<Box<Sent>>) -> WatchedBody<B> {
        WatchedBody { inner, sent }
    }

    /// The inner service's body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body<Data = Bytes>> Body for WatchedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if let (Some(Ok(frame)), Some(_)) = (&frame, this.sent.as_ref()) {
            if let Some(trailers) = frame.trailers_ref() {
                if effective_status(StatusCode::OK, trailers) == StatusCode::UNAUTHORIZED {
                    if let Some(sent) = this.sent.take() {
                        sent.report_unauthenticated(trailers);
                    }
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watched_body_prints_no_token() {
        let tokens = token_keeper_reqwest::ReqwestTokenClient::new();
        let config = token_keeper::ClientConfig::new(
            "https://as.example/token",
            "m2m",
            token_keeper::ClientAuth::Basic(token_keeper::ClientSecret::new("s")),
        )
        .unwrap();
        tokens.add_client("m2m", config).unwrap();
        let sent = Sent {
            client: (*tokens).clone(),
            key: tokens.key("m2m").unwrap(),
            authorization: HeaderValue::from_static("Bearer tok-9f8e7d"),
            uri: Uri::from_static("http://127.0.0.1/x"),
            attempt: 0,
        };
        let body = WatchedBody::new(String::new(), Some(Box::new(sent)));
        let text = format!("{body:?}");
        assert!(text.contains("attempt"), "{text}");
        assert!(!text.contains("tok-9f8e7d"), "{text}");
    }
}
