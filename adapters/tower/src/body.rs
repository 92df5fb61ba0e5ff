//! Request bodies that can be sent twice: [`ReplayBody`], and [`Buffered`],
//! the body the layer builds around what it read of one.
//!
//! After a `401` (or gRPC `UNAUTHENTICATED`) the core may allow one retry
//! with a new token or proof. A request can be sent again only if its body
//! can be: a body in memory is copied without being read
//! ([`ReplayBody::copy_within`]); a body of a type that can hold another
//! body ([`ReplayBody::REBUILDS`], e.g. `tonic::body::Body`) is read into
//! memory up to the replay limit first, and sent as a [`Buffered`]. Every
//! other body is sent once, and the `401` handed back.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{Empty, Full};

use crate::BoxError;

/// A request body type the [`TokenLayer`](crate::TokenLayer) knows how to
/// send twice.
///
/// Implemented for the bodies in memory (`Full<Bytes>`, `Empty<Bytes>`,
/// `String`: copied), for `BoxBody<Bytes, BoxError>` and
/// `UnsyncBoxBody<Bytes, BoxError>` (rebuilt), and, with the `tonic`
/// feature, for `tonic::body::Body` (rebuilt). For a body type of your own,
/// implement it: returning `None` from `copy_within` and keeping `REBUILDS`
/// false means "never replayed", which is always correct.
pub trait ReplayBody: Body<Data = Bytes> + Send + Unpin + Sized + 'static {
    /// Whether [`rebuild`](Self::rebuild) makes a body of this type around
    /// any other body (so the layer may read this one into memory and send
    /// what it read).
    const REBUILDS: bool = false;

    /// A copy of this body made without reading it, if it is in memory and
    /// at most `limit` bytes long.
    fn copy_within(&self, limit: usize) -> Option<Self> {
        let _ = limit;
        None
    }

    /// A body of this type that yields what `buffered` yields. Called only
    /// when [`REBUILDS`](Self::REBUILDS) is true; `None` otherwise.
    fn rebuild(buffered: Buffered<Self>) -> Option<Self> {
        let _ = buffered;
        None
    }
}

impl ReplayBody for Full<Bytes> {
    fn copy_within(&self, limit: usize) -> Option<Self> {
        let length = self.size_hint().exact()?;
        (length <= limit as u64).then(|| self.clone())
    }
}

impl ReplayBody for Empty<Bytes> {
    fn copy_within(&self, _limit: usize) -> Option<Self> {
        Some(Empty::new())
    }
}

impl ReplayBody for String {
    fn copy_within(&self, limit: usize) -> Option<Self> {
        (self.len() <= limit).then(|| self.clone())
    }
}

impl ReplayBody for BoxBody<Bytes, BoxError> {
    const REBUILDS: bool = true;

    fn rebuild(buffered: Buffered<Self>) -> Option<Self> {
        Some(BoxBody::new(buffered))
    }
}

impl ReplayBody for UnsyncBoxBody<Bytes, BoxError> {
    const REBUILDS: bool = true;

    fn rebuild(buffered: Buffered<Self>) -> Option<Self> {
        Some(UnsyncBoxBody::new(buffered))
    }
}

#[cfg(feature = "tonic")]
impl ReplayBody for tonic::body::Body {
    const REBUILDS: bool = true;

    fn rebuild(buffered: Buffered<Self>) -> Option<Self> {
        Some(tonic::body::Body::new(buffered))
    }
}

pin_project_lite::pin_project! {
    /// Any body, never replayed: for body types this crate does not know
    /// (hyper's `Incoming` when forwarding a request, a `StreamBody`, a
    /// framework's body), which Rust's orphan rule keeps you from giving a
    /// [`ReplayBody`] of your own. Wrap requests with
    /// `request.map(NoReplay::new)` (e.g. `tower::ServiceBuilder::map_request`)
    /// and build the inner client for `NoReplay<B>`.
    #[derive(Debug)]
    pub struct NoReplay<B> {
        #[pin]
        inner: B,
    }
}

impl<B> NoReplay<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> NoReplay<B> {
        NoReplay { inner }
    }

    /// The wrapped body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body> Body for NoReplay<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> ReplayBody for NoReplay<B> where B: Body<Data = Bytes> + Send + Unpin + 'static {}

/// The most frames read ahead of sending: a body of many tiny (or empty)
/// frames is sent as a stream, not kept, rather than listed without end.
const MAX_FRAMES_READ: usize = 256;

/// What was read of a body: its chunks as they came (never copied into
/// one), and its trailers if it ended with some. Cheap to copy (`Bytes` is
/// reference-counted).
#[derive(Clone, Debug, Default)]
pub(crate) struct ReadPart {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
}

/// A body that yields chunks read earlier, then trailers read earlier, then
/// whatever is left of the body they were read from. Made by the layer, and
/// handed to [`ReplayBody::rebuild`].
#[derive(Debug)]
pub struct Buffered<B> {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    rest: Option<B>,
}

impl<B> Buffered<B> {
    fn new(read: ReadPart, rest: Option<B>) -> Buffered<B> {
        Buffered {
            chunks: read.chunks,
            trailers: read.trailers,
            rest,
        }
    }
}

impl<B> Body for Buffered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(chunk) = self.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(trailers) = self.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx).map_err(Into::into),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
            && self.trailers.is_none()
            && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let held: u64 = self.chunks.iter().map(|c| c.len() as u64).sum();
        match &self.rest {
            None => SizeHint::with_exact(held),
            Some(rest) => {
                let hint = rest.size_hint();
                let mut sum = SizeHint::new();
                sum.set_lower(hint.lower().saturating_add(held));
                if let Some(upper) = hint.upper() {
                    sum.set_upper(upper.saturating_add(held));
                }
                sum
            }
        }
    }
}

/// How the request body will be had again for a retry.
pub(crate) enum Replay<B> {
    /// A copy made without reading.
    Copy(B),
    /// The whole body, read into memory.
    Read(ReadPart),
}

impl<B: ReplayBody> Replay<B> {
    /// The body to send on the retry (`None`: the body type refused to be rebuilt).
    pub(crate) fn into_body(self) -> Option<B> {
        match self {
            Replay::Copy(body) => Some(body),
            Replay::Read(read) => B::rebuild(Buffered::new(read, None)),
        }
    }
}

/// The body to send now, and how to have it again for a retry, if it can
/// be: copied when in memory; otherwise, when its type rebuilds and its
/// length is known to fit (or is unknown and `read_unsized` allows it), the
/// frames that are ready at once are taken, and if they are the whole body
/// within `limit` it is kept. Nothing here waits for a frame: a body that is
/// still being produced (a streaming call) is sent as a stream, never held
/// back.
///
/// An error reading the body is the request's error (nothing was sent).
pub(crate) async fn prepare<B: ReplayBody>(
    body: B,
    limit: usize,
    read_unsized: bool,
) -> Result<(B, Option<Replay<B>>), BoxError>
where
    B::Error: Into<BoxError>,
{
    if let Some(copy) = body.copy_within(limit) {
        return Ok((body, Some(Replay::Copy(copy))));
    }
    let fits = body.size_hint().upper().map(|n| n <= limit as u64);
    if !B::REBUILDS || fits == Some(false) || (fits.is_none() && !read_unsized) {
        return Ok((body, None));
    }
    let (read, rest) = read_ready(body, limit).await?;
    let replay = match &rest {
        None => Some(Replay::Read(read.clone())),
        Some(_) => None,
    };
    match B::rebuild(Buffered::new(read, rest)) {
        Some(body) => Ok((body, replay)),
        None => Err("a body type that says it rebuilds refused to (ReplayBody::rebuild)".into()),
    }
}

/// Takes the frames of `body` that are ready at once, until it ends, one is
/// not ready, more than `limit` bytes or [`MAX_FRAMES_READ`] frames were
/// taken: what was taken, and the rest of the body unless it ended.
async fn read_ready<B>(mut body: B, limit: usize) -> Result<(ReadPart, Option<B>), BoxError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut read = ReadPart::default();
    let mut length = 0usize;
    for _ in 0..MAX_FRAMES_READ {
        if length > limit {
            break;
        }
        // One poll: a frame that is not ready now is not waited for.
        let polled = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx)));
        let frame = match polled.await {
            Poll::Pending => break,
            Poll::Ready(None) => return Ok((read, None)),
            Poll::Ready(Some(frame)) => frame.map_err(Into::into)?,
        };
        match frame.into_data() {
            Ok(mut data) => {
                let chunk = data.copy_to_bytes(data.remaining());
                if !chunk.is_empty() {
                    length = length.saturating_add(chunk.len());
                    read.chunks.push_back(chunk);
                }
            }
            Err(frame) => {
                // Trailers end a body: nothing may follow them.
                read.trailers = frame.into_trailers().ok();
                return Ok((read, None));
            }
        }
    }
    Ok((read, Some(body)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    type Boxed = UnsyncBoxBody<Bytes, BoxError>;

    /// A body of unknown length yielding `chunks` one frame at a time.
    struct Chunks(VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
        }
    }

    fn stream(chunks: &[&'static [u8]]) -> Boxed {
        let chunks = chunks.iter().map(|c| Bytes::from_static(c)).collect();
        UnsyncBoxBody::new(Chunks(chunks))
    }

    fn run<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    async fn collect<B: Body<Data = Bytes> + Unpin>(body: B) -> Vec<u8>
    where
        B::Error: std::fmt::Debug,
    {
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[test]
    fn a_full_body_is_copied_within_the_limit_only() {
        let body = Full::new(Bytes::from_static(b"hello"));
        assert!(body.copy_within(5).is_some());
        assert!(body.copy_within(4).is_none());
    }

    #[test]
    fn an_unsized_stream_is_read_only_when_allowed() {
        run(async {
            let (sent, replay) = prepare(stream(&[b"ab", b"cd"]), 10, false).await.unwrap();
            assert!(replay.is_none(), "not read without read_unsized");
            assert_eq!(collect(sent).await, b"abcd");

            let (sent, replay) = prepare(stream(&[b"ab", b"cd"]), 10, true).await.unwrap();
            assert_eq!(collect(sent).await, b"abcd");
            let again = replay.expect("kept").into_body().expect("rebuilt");
            assert_eq!(collect(again).await, b"abcd");
        })
    }

    #[test]
    fn a_stream_past_the_limit_is_sent_whole_and_not_kept() {
        run(async {
            let (sent, replay) = prepare(stream(&[b"abc", b"def", b"ghi"]), 4, true)
                .await
                .unwrap();
            assert!(replay.is_none());
            assert_eq!(collect(sent).await, b"abcdefghi");
        })
    }

    /// Empty frames for ever, always ready.
    struct EndlessEmpty;

    impl Body for EndlessEmpty {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(Some(Ok(Frame::data(Bytes::new()))))
        }
    }

    /// One frame, then a body still being produced (never ready).
    struct Stalled(Option<Bytes>);

    impl Body for Stalled {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            match self.0.take() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => Poll::Pending,
            }
        }
    }

    #[test]
    fn endless_empty_frames_are_taken_a_bounded_number_of_times() {
        run(async {
            let (sent, replay) = prepare(UnsyncBoxBody::new(EndlessEmpty), 1024, true)
                .await
                .unwrap();
            assert!(replay.is_none(), "an endless body is not kept");
            // What was taken holds no chunk (empty frames are dropped), and
            // the body goes on as it was.
            let mut sent = sent;
            let frame = sent.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap().len(), 0);
        })
    }

    #[test]
    fn a_body_still_being_produced_is_not_waited_for() {
        run(async {
            let body = UnsyncBoxBody::new(Stalled(Some(Bytes::from_static(b"first"))));
            // Would never return if it waited for the second frame.
            let (mut sent, replay) = prepare(body, 1024, true).await.unwrap();
            assert!(replay.is_none());
            let first = sent.frame().await.unwrap().unwrap();
            assert_eq!(first.into_data().unwrap(), "first");
        })
    }
}
