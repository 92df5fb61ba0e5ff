//! [`ResponseReader`]: a sans-IO, bounded HTTP/1.1 response reader.
//!
//! For drivers that open their own connection to the token endpoint because
//! their HTTP client's reader cannot be trusted with it (surf's async-h1
//! buffers an endless header line without bound, reads a body framed by the
//! end of the connection as empty, and takes a `100 Continue` for the final
//! response). The reader never does I/O: the driver feeds it what it reads
//! ([`ResponseReader::receive`]) and says when the server closed
//! ([`ResponseReader::end_of_stream`]).
//!
//! What it guarantees:
//!
//! - the heads (interim `1xx` ones included) take at most
//!   [`ResponseLimits::head`] bytes together, and no more is ever buffered
//!   for them, so an endless header line or an endless run of
//!   `102 Processing` ends in [`Http1Error::HeadTooLarge`];
//! - a body keeps at most [`ResponseLimits::body`]` + 1` bytes: one more than
//!   allowed is how the token response parser, which refuses more than
//!   `body` bytes, learns that the body was too large, without the reader
//!   holding any more of it;
//! - the body is framed as RFC 9112 §6.3 says: no body for HEAD, 204 and
//!   304; chunked when it is the last transfer coding; until the connection
//!   closes for other transfer codings; otherwise by a `Content-Length`
//!   whose values all agree; otherwise until the connection closes;
//! - the chunk-size lines of a chunked body (extensions included) take at
//!   most [`ResponseLimits::head`] bytes together, so one body byte per
//!   chunk behind a long extension cannot stretch the read without end;
//! - each byte is looked at once, so one-byte reads cost no more than one
//!   large read, and the result does not depend on how the stream is split;
//! - errors carry a fixed reason, never bytes from the wire.

use std::fmt;

use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::response::Parts;
use http::{HeaderMap, Response, StatusCode, Version};

/// Header fields httparse may return for one head; a token endpoint sends
/// about a dozen.
const MAX_HEADERS: usize = 100;

/// The longest chunk-size line (size and extensions, without its line end).
/// Extensions are skipped, not kept, but a line that never ends must not
/// keep the reader busy forever.
const MAX_CHUNK_LINE: usize = 4096;

/// Bounds for one response.
///
/// Both protect the driver's memory from a server that never stops sending.
#[derive(Clone, Copy, Debug)]
pub struct ResponseLimits {
    /// Bytes of head: the status lines and header fields of the final
    /// response and of every interim (1xx) response before it, line ends
    /// included. It also bounds a chunked body's trailer section.
    pub head: usize,
    /// Bytes of body the caller accepts. The reader keeps at most one more,
    /// so that a body over the limit shows as such.
    pub body: usize,
}

impl Default for ResponseLimits {
    /// 64 KiB of head, 1 MiB of body: far more than a token response needs.
    fn default() -> ResponseLimits {
        ResponseLimits {
            head: 64 * 1024,
            body: 1024 * 1024,
        }
    }
}

/// Why a response could not be read. Messages are one line and never quote
/// what the server sent.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Http1Error {
    /// The connection closed before a single byte of a response arrived.
    ClosedBeforeResponse,
    /// The connection closed in the middle of the head, a Content-Length
    /// body or a chunked body.
    Truncated {
        /// What was cut short: `"response head"`, `"body (Content-Length)"`
        /// or `"chunked body"`.
        what: &'static str,
    },
    /// The head (status line + headers), or the interim 1xx heads together
    /// with it, exceeded `limits.head`; or a chunked body's trailer section
    /// did.
    HeadTooLarge {
        /// The limit that was exceeded, in bytes.
        limit: usize,
    },
    /// Not a valid HTTP/1.x response (with a short fixed reason, never the
    /// received bytes).
    Malformed(&'static str),
    /// The server switched protocols (101) although none was asked for.
    UnexpectedUpgrade,
    /// `receive` (or `end_of_stream`) was called after the response was
    /// complete.
    AlreadyComplete,
}

impl fmt::Display for Http1Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Http1Error::ClosedBeforeResponse => {
                f.write_str("the server closed the connection before sending a response")
            }
            Http1Error::Truncated { what } => {
                write!(f, "the server closed the connection in the middle of the {what}")
            }
            Http1Error::HeadTooLarge { limit } => {
                write!(f, "the response head is larger than {limit} bytes")
            }
            Http1Error::Malformed(reason) => write!(f, "malformed HTTP/1.1 response: {reason}"),
            Http1Error::UnexpectedUpgrade => f.write_str(
                "the server switched protocols (101 Switching Protocols) although no upgrade was asked for",
            ),
            Http1Error::AlreadyComplete => {
                f.write_str("the response was already complete; no more input was expected")
            }
        }
    }
}

impl std::error::Error for Http1Error {}

/// Reads one HTTP/1.x response from bytes the driver hands it.
///
/// Feed it every byte read from the connection, in order, with
/// [`receive`](ResponseReader::receive) until that returns the response;
/// when a read returns 0, call [`end_of_stream`](ResponseReader::end_of_stream)
/// instead. Bytes after the response are ignored: the driver should not
/// reuse the connection (this reader does not tell where the next response
/// would begin once a body was cut at the limit).
pub struct ResponseReader {
    limits: ResponseLimits,
    head_request: bool,
    /// Whether any byte arrived, to tell a refused request from a cut head.
    received_any: bool,
    /// Bytes of all heads so far (interim ones included), checked against
    /// `limits.head`.
    head_total: usize,
    /// The head being read; never more than `limits.head` bytes.
    head: Vec<u8>,
    /// Where the search for the end of `head` stands.
    scan: EndScan,
    state: State,
}

enum State {
    /// Reading a head (interim or final).
    Head,
    /// Reading the final response's body.
    Body(Box<BodyReader>),
    /// The response was handed out.
    Done,
    /// An error was returned; it is returned again.
    Failed(Http1Error),
}

impl fmt::Debug for ResponseReader {
    /// Sizes and state only: the buffered bytes may hold a token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (state, body_buffered) = match &self.state {
            State::Head => ("head", 0),
            State::Body(body) => (body.framing.name(), body.body.len()),
            State::Done => ("complete", 0),
            State::Failed(_) => ("failed", 0),
        };
        f.debug_struct("ResponseReader")
            .field("limits", &self.limits)
            .field("head_request", &self.head_request)
            .field("state", &state)
            .field("head_total", &self.head_total)
            .field("head_buffered", &self.head.len())
            .field("body_buffered", &body_buffered)
            .finish()
    }
}

impl ResponseReader {
    /// A reader for the response to one request.
    ///
    /// `head_request`: the request was HEAD (no body follows).
    pub fn new(limits: ResponseLimits, head_request: bool) -> ResponseReader {
        ResponseReader {
            limits,
            head_request,
            received_any: false,
            head_total: 0,
            head: Vec::new(),
            scan: EndScan::head(),
            state: State::Head,
        }
    }

    /// Bytes received from the server, in order. Returns `Ok(Some(response))`
    /// once the final response is complete; the reader must not be fed after
    /// that (it answers [`Http1Error::AlreadyComplete`]). After an error,
    /// every call returns the same error again.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<Option<Response<Vec<u8>>>, Http1Error> {
        match &self.state {
            State::Done => return Err(Http1Error::AlreadyComplete),
            State::Failed(error) => return Err(error.clone()),
            State::Head | State::Body(_) => {}
        }
        if !bytes.is_empty() {
            self.received_any = true;
        }
        let result = self.advance(bytes);
        match &result {
            Ok(None) => {}
            Ok(Some(_)) => self.finish(State::Done),
            Err(error) => self.finish(State::Failed(error.clone())),
        }
        result
    }

    /// The server closed the connection (read returned 0).
    ///
    /// Completes a body that runs until the close; anything else still
    /// unfinished was cut short.
    pub fn end_of_stream(&mut self) -> Result<Response<Vec<u8>>, Http1Error> {
        let result = match std::mem::replace(&mut self.state, State::Done) {
            State::Done => return Err(Http1Error::AlreadyComplete),
            State::Failed(error) => Err(error),
            State::Head if !self.received_any => Err(Http1Error::ClosedBeforeResponse),
            State::Head => Err(Http1Error::Truncated {
                what: "response head",
            }),
            State::Body(body) => match body.framing {
                Framing::UntilClose => Ok(body.into_response()),
                Framing::Length { .. } => Err(Http1Error::Truncated {
                    what: "body (Content-Length)",
                }),
                Framing::Chunked(_) => Err(Http1Error::Truncated {
                    what: "chunked body",
                }),
            },
        };
        match &result {
            Ok(_) => self.finish(State::Done),
            Err(error) => self.finish(State::Failed(error.clone())),
        }
        result
    }

    /// Enters a final state and lets go of the buffers.
    fn finish(&mut self, state: State) {
        self.state = state;
        self.head = Vec::new();
    }

    fn advance(&mut self, mut input: &[u8]) -> Result<Option<Response<Vec<u8>>>, Http1Error> {
        loop {
            match &mut self.state {
                State::Head => {
                    let (complete, rest) = self.take_head(input)?;
                    input = rest;
                    if !complete {
                        return Ok(None);
                    }
                    let Some(parts) = parse_head(&self.head)? else {
                        // An interim response: the next head follows.
                        self.head.clear();
                        self.scan = EndScan::head();
                        continue;
                    };
                    self.head = Vec::new();
                    let body = BodyReader {
                        framing: framing(&parts, self.head_request, self.body_cap())?,
                        parts,
                        body: Vec::new(),
                        cap: self.limits.body.saturating_add(1),
                        head_limit: self.limits.head,
                        chunk_lines: 0,
                    };
                    if body.is_complete() {
                        return Ok(Some(body.into_response()));
                    }
                    self.state = State::Body(Box::new(body));
                }
                State::Body(body) => {
                    if !body.feed(input)? {
                        return Ok(None);
                    }
                    return match std::mem::replace(&mut self.state, State::Done) {
                        State::Body(body) => Ok(Some(body.into_response())),
                        _ => Err(Http1Error::AlreadyComplete),
                    };
                }
                State::Done => return Err(Http1Error::AlreadyComplete),
                State::Failed(error) => return Err(error.clone()),
            }
        }
    }

    /// `limits.body + 1`, the most body bytes kept, as a byte count on the wire.
    fn body_cap(&self) -> u64 {
        u64::try_from(self.limits.body)
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// Moves bytes from `input` into the head buffer up to the end of the
    /// head. Returns whether the head is complete, and the bytes after it.
    fn take_head<'a>(&mut self, input: &'a [u8]) -> Result<(bool, &'a [u8]), Http1Error> {
        let room = self.limits.head.saturating_sub(self.head_total);
        let (window, beyond) = split(input, room);
        let mut taken = window.len();
        let mut complete = false;
        for (at, &byte) in window.iter().enumerate() {
            if self.scan.push(byte) {
                taken = at + 1;
                complete = true;
                break;
            }
        }
        let (head, rest) = split(input, taken);
        append_bounded(&mut self.head, head, self.limits.head);
        self.head_total += taken;
        if !complete && !beyond.is_empty() {
            return Err(Http1Error::HeadTooLarge {
                limit: self.limits.head,
            });
        }
        Ok((complete, rest))
    }
}

/// Parses a complete head: `None` for an interim (1xx) response, whose head
/// is skipped, else the final response's status, version and headers.
fn parse_head(bytes: &[u8]) -> Result<Option<Parts>, Http1Error> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Response::new(&mut fields);
    match head.parse(bytes) {
        // `EndScan` and httparse end a head at the same empty line.
        Ok(httparse::Status::Complete(len)) if len == bytes.len() => {}
        Ok(_) => return Err(Http1Error::Malformed("invalid response head")),
        Err(error) => return Err(Http1Error::Malformed(httparse_reason(error))),
    }
    let version = match head.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => {
            return Err(Http1Error::Malformed(
                "not an HTTP/1.0 or HTTP/1.1 response",
            ))
        }
    };
    let code = head.code.unwrap_or(0);
    if code == 101 {
        return Err(Http1Error::UnexpectedUpgrade);
    }
    if (100..200).contains(&code) {
        return Ok(None);
    }
    let (mut parts, ()) = Response::builder()
        .status(code)
        .version(version)
        .body(())
        .map_err(|_| Http1Error::Malformed("invalid status code"))?
        .into_parts();
    for field in head.headers.iter() {
        const INVALID: Http1Error = Http1Error::Malformed("invalid header field");
        let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| INVALID)?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| INVALID)?;
        parts
            .headers
            .try_append(name, value)
            .map_err(|_| Http1Error::Malformed("too many header fields"))?;
    }
    Ok(Some(parts))
}

fn httparse_reason(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName | httparse::Error::HeaderValue => "invalid header field",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status | httparse::Error::Token => "invalid status line",
        httparse::Error::TooManyHeaders => "too many header fields",
        httparse::Error::Version => "not an HTTP/1.0 or HTTP/1.1 response",
    }
}

/// How the body of a final response ends (RFC 9112 §6.3). `cap` is
/// `limits.body + 1`: a longer Content-Length is read only that far.
fn framing(parts: &Parts, head_request: bool, cap: u64) -> Result<Framing, Http1Error> {
    if head_request
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Length { remaining: 0 });
    }
    if parts.headers.contains_key(TRANSFER_ENCODING) {
        // RFC 9112 §6.1: HTTP/1.0 has no transfer codings; such framing is faulty.
        if parts.version == Version::HTTP_10 {
            return Err(Http1Error::Malformed(
                "Transfer-Encoding in an HTTP/1.0 response",
            ));
        }
        return Ok(if chunked_is_last(&parts.headers)? {
            Framing::Chunked(Chunked::Size(SizeLine::default()))
        } else {
            // RFC 9112 §6.3 (5): another final coding runs until the close.
            Framing::UntilClose
        });
    }
    Ok(match content_length(&parts.headers)? {
        Some(length) => Framing::Length {
            remaining: length.min(cap),
        },
        None => Framing::UntilClose,
    })
}

/// Whether `chunked` is the last transfer coding, over all
/// `Transfer-Encoding` fields. No coding at all, or `chunked` twice (RFC 9112
/// §7.1: a sender applies it once), is a framing nobody can trust.
fn chunked_is_last(headers: &HeaderMap) -> Result<bool, Http1Error> {
    let mut last: Option<&[u8]> = None;
    let mut chunked = 0usize;
    for value in headers.get_all(TRANSFER_ENCODING) {
        for coding in value.as_bytes().split(|&b| b == b',') {
            let coding = trim_ows(coding);
            if !coding.is_empty() {
                if coding.eq_ignore_ascii_case(b"chunked") {
                    chunked += 1;
                }
                last = Some(coding);
            }
        }
    }
    match last {
        None => Err(Http1Error::Malformed("invalid Transfer-Encoding")),
        Some(_) if chunked > 1 => Err(Http1Error::Malformed("invalid Transfer-Encoding")),
        Some(coding) => Ok(coding.eq_ignore_ascii_case(b"chunked")),
    }
}

/// The Content-Length, if any. Every value (in comma lists and repeated
/// fields) must be the same digits: a server that disagrees with itself
/// about where the body ends cannot be trusted with either answer.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Http1Error> {
    const INVALID: Http1Error = Http1Error::Malformed("invalid Content-Length");
    let mut first: Option<&[u8]> = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for item in value.as_bytes().split(|&b| b == b',') {
            let item = trim_ows(item);
            // 19 digits always fit in a u64.
            if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
                return Err(INVALID);
            }
            match first {
                None => first = Some(item),
                Some(seen) if seen == item => {}
                Some(_) => return Err(INVALID),
            }
        }
    }
    let Some(digits) = first else {
        return Ok(None);
    };
    let mut length: u64 = 0;
    for &digit in digits {
        length = length
            .checked_mul(10)
            .and_then(|l| l.checked_add(u64::from(digit - b'0')))
            .ok_or(INVALID)?;
    }
    Ok(Some(length))
}

/// Strips optional whitespace (SP, HTAB) from both ends.
fn trim_ows(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

/// `bytes` split after at most `at` bytes.
fn split(bytes: &[u8], at: usize) -> (&[u8], &[u8]) {
    bytes.split_at(at.min(bytes.len()))
}

/// Appends `bytes` to `buf`, which the caller never fills beyond `max`.
/// The capacity doubles (so one-byte feeds cost linear time) but never
/// beyond `max`, so a limit bounds the allocation, not only the length.
fn append_bounded(buf: &mut Vec<u8>, bytes: &[u8], max: usize) {
    let needed = buf.len().saturating_add(bytes.len());
    if needed > buf.capacity() {
        let target = buf
            .capacity()
            .saturating_mul(2)
            .max(64)
            .min(max)
            .max(needed);
        buf.reserve_exact(target - buf.len());
    }
    buf.extend_from_slice(bytes);
}

/// Finds the empty line that ends a head or a trailer section, one byte at
/// a time, so each byte is looked at once however the input is split.
#[derive(Clone, Copy, Debug)]
struct EndScan {
    line: Line,
    /// Whether a non-empty line was seen: empty lines before the status line
    /// are skipped, as httparse does.
    seen_text: bool,
}

/// The current line so far, as far as being empty goes (bare LF ends a line
/// too, as httparse accepts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line {
    Empty,
    Cr,
    Text,
}

impl EndScan {
    /// For a head.
    fn head() -> EndScan {
        EndScan {
            line: Line::Empty,
            seen_text: false,
        }
    }

    /// For a trailer section, whose first line may already be the empty one.
    fn trailer() -> EndScan {
        EndScan {
            line: Line::Empty,
            seen_text: true,
        }
    }

    /// Takes one byte; true when it ends the empty line that closes the section.
    fn push(&mut self, byte: u8) -> bool {
        match byte {
            b'\n' => {
                let text = self.line == Line::Text;
                self.line = Line::Empty;
                if text {
                    self.seen_text = true;
                    false
                } else {
                    self.seen_text
                }
            }
            b'\r' if self.line == Line::Empty => {
                self.line = Line::Cr;
                false
            }
            _ => {
                self.line = Line::Text;
                false
            }
        }
    }
}

/// The final response while its body arrives.
struct BodyReader {
    parts: Parts,
    body: Vec<u8>,
    /// `limits.body + 1`: the most body bytes kept.
    cap: usize,
    /// `limits.head`: the bound of the trailer section, and separately of
    /// all the chunk-size lines of a chunked body together.
    head_limit: usize,
    /// Bytes of chunk-size lines so far: one body byte per chunk with long
    /// extensions must not make the client read gigabytes before the cap.
    chunk_lines: usize,
    framing: Framing,
}

enum Framing {
    /// Body bytes still to come (already cut to the cap).
    Length {
        remaining: u64,
    },
    Chunked(Chunked),
    UntilClose,
}

impl Framing {
    fn name(&self) -> &'static str {
        match self {
            Framing::Length { .. } => "body (Content-Length)",
            Framing::Chunked(_) => "chunked body",
            Framing::UntilClose => "body (until close)",
        }
    }
}

/// Where a chunked body stands.
#[derive(Clone, Copy, Debug)]
enum Chunked {
    Size(SizeLine),
    Data {
        remaining: u64,
    },
    /// After a chunk's data: CR, then LF, exactly.
    DataCr,
    DataLf,
    /// After the last chunk: `len` bytes of trailer section so far.
    Trailer {
        scan: EndScan,
        len: usize,
    },
}

/// A chunk-size line being read.
#[derive(Clone, Copy, Debug, Default)]
struct SizeLine {
    size: u64,
    digits: u8,
    part: SizePart,
    /// Bytes of the line so far, without its line end.
    len: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum SizePart {
    #[default]
    Digits,
    /// Whitespace after the size (BWS before `;`).
    Space,
    /// Extensions, skipped.
    Extension,
    /// A CR, which must end the line.
    Cr,
}

/// What a chunk-size line byte leads to.
enum SizeStep {
    More,
    /// The line ended; the chunk has this many bytes (0: the last chunk).
    Done(u64),
}

impl SizeLine {
    fn push(&mut self, byte: u8) -> Result<SizeStep, Http1Error> {
        const INVALID: Http1Error = Http1Error::Malformed("invalid chunk size");
        if self.part == SizePart::Cr {
            if byte != b'\n' {
                return Err(Http1Error::Malformed("invalid line ending"));
            }
            return self.end();
        }
        match byte {
            b'\n' => return self.end(),
            b'\r' => {
                self.part = SizePart::Cr;
                return Ok(SizeStep::More);
            }
            _ => {}
        }
        self.len += 1;
        if self.len > MAX_CHUNK_LINE {
            return Err(Http1Error::Malformed("chunk line too long"));
        }
        match (self.part, byte) {
            (SizePart::Extension, _) => {}
            (SizePart::Digits, _) if byte.is_ascii_hexdigit() => {
                if self.digits >= 16 {
                    return Err(INVALID);
                }
                let value = (byte as char).to_digit(16).ok_or(INVALID)?;
                // At most 16 hex digits: no overflow.
                self.size = (self.size << 4) | u64::from(value);
                self.digits += 1;
            }
            (SizePart::Digits | SizePart::Space, b' ' | b'\t' | b';') if self.digits > 0 => {
                if byte == b';' {
                    self.part = SizePart::Extension;
                } else {
                    self.part = SizePart::Space;
                }
            }
            _ => return Err(INVALID),
        }
        Ok(SizeStep::More)
    }

    fn end(&self) -> Result<SizeStep, Http1Error> {
        if self.digits == 0 {
            return Err(Http1Error::Malformed("invalid chunk size"));
        }
        Ok(SizeStep::Done(self.size))
    }
}

impl BodyReader {
    /// Whether the body is complete (or there is none).
    fn is_complete(&self) -> bool {
        matches!(self.framing, Framing::Length { remaining: 0 })
    }

    fn into_response(self) -> Response<Vec<u8>> {
        Response::from_parts(self.parts, self.body)
    }

    /// Takes body bytes; true once the body is complete, or at the cap.
    fn feed(&mut self, mut input: &[u8]) -> Result<bool, Http1Error> {
        let BodyReader {
            body,
            cap,
            head_limit,
            chunk_lines,
            framing,
            ..
        } = self;
        let cap = *cap;
        match framing {
            Framing::Length { remaining } => {
                let (data, _) = split(input, usize::try_from(*remaining).unwrap_or(usize::MAX));
                keep(body, cap, data);
                *remaining -= u64::try_from(data.len()).unwrap_or(*remaining);
                Ok(*remaining == 0)
            }
            Framing::UntilClose => Ok(keep(body, cap, input)),
            Framing::Chunked(state) => loop {
                if let Chunked::Data { remaining } = state {
                    if input.is_empty() {
                        return Ok(false);
                    }
                    let (data, rest) =
                        split(input, usize::try_from(*remaining).unwrap_or(usize::MAX));
                    input = rest;
                    if keep(body, cap, data) {
                        return Ok(true);
                    }
                    *remaining -= u64::try_from(data.len()).unwrap_or(*remaining);
                    if *remaining == 0 {
                        *state = Chunked::DataCr;
                    }
                    continue;
                }
                let Some((&byte, rest)) = input.split_first() else {
                    return Ok(false);
                };
                input = rest;
                match state {
                    Chunked::Size(line) => {
                        *chunk_lines += 1;
                        if *chunk_lines > *head_limit {
                            return Err(Http1Error::Malformed("too many chunk-size bytes"));
                        }
                        match line.push(byte)? {
                            SizeStep::More => {}
                            SizeStep::Done(0) => {
                                *state = Chunked::Trailer {
                                    scan: EndScan::trailer(),
                                    len: 0,
                                }
                            }
                            SizeStep::Done(size) => *state = Chunked::Data { remaining: size },
                        }
                    }
                    Chunked::DataCr | Chunked::DataLf => {
                        // A bare LF ends the line, as it does everywhere else
                        // in this reader (RFC 9112 §2.2 allows it).
                        let next = match (&*state, byte) {
                            (Chunked::DataCr, b'\r') => Chunked::DataLf,
                            (_, b'\n') => Chunked::Size(SizeLine::default()),
                            _ => {
                                return Err(Http1Error::Malformed("missing CRLF after chunk data"))
                            }
                        };
                        *state = next;
                    }
                    Chunked::Trailer { scan, len } => {
                        *len += 1;
                        if *len > *head_limit {
                            return Err(Http1Error::HeadTooLarge { limit: *head_limit });
                        }
                        if scan.push(byte) {
                            return Ok(true);
                        }
                    }
                    Chunked::Data { .. } => {}
                }
            },
        }
    }
}

/// Keeps what of `bytes` fits under `cap`; true once the body holds `cap`
/// bytes (one more than allowed: the rest is of no interest).
fn keep(body: &mut Vec<u8>, cap: usize, bytes: &[u8]) -> bool {
    let (kept, _) = split(bytes, cap.saturating_sub(body.len()));
    append_bounded(body, kept, cap);
    body.len() >= cap
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a feed came to, comparable.
    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Got {
        status: u16,
        version: Version,
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
        /// Whether `end_of_stream` completed it.
        at_close: bool,
    }

    type Outcome = Result<Got, Http1Error>;

    fn got(response: Response<Vec<u8>>, at_close: bool) -> Got {
        Got {
            status: response.status().as_u16(),
            version: response.version(),
            headers: response
                .headers()
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
                .collect(),
            body: response.into_body(),
            at_close,
        }
    }

    /// Feeds `chunks`, then closes if the response is not complete yet;
    /// checks that a finished reader refuses more input without panicking.
    fn run<'a>(
        limits: ResponseLimits,
        head_request: bool,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> Outcome {
        let mut reader = ResponseReader::new(limits, head_request);
        let mut outcome = None;
        for chunk in chunks {
            match reader.receive(chunk) {
                Ok(None) => {
                    assert!(reader.head.len() <= limits.head);
                    assert!(reader.head.capacity() <= limits.head);
                }
                Ok(Some(response)) => {
                    outcome = Some(Ok(got(response, false)));
                    break;
                }
                Err(error) => {
                    outcome = Some(Err(error));
                    break;
                }
            }
        }
        let outcome = match outcome {
            Some(outcome) => outcome,
            None => reader.end_of_stream().map(|response| got(response, true)),
        };
        let again = match &outcome {
            Ok(_) => Http1Error::AlreadyComplete,
            Err(error) => error.clone(),
        };
        assert_eq!(reader.receive(b"more").unwrap_err(), again);
        assert_eq!(reader.receive(b"").unwrap_err(), again);
        assert_eq!(reader.end_of_stream().unwrap_err(), again);
        if let Ok(got) = &outcome {
            assert!(got.body.len() <= limits.body + 1);
        }
        outcome
    }

    /// The outcome of `input` fed whole, one byte at a time, and in 7-byte
    /// pieces: all three must agree.
    fn check_with(limits: ResponseLimits, head_request: bool, input: &[u8]) -> Outcome {
        let whole = run(limits, head_request, [input]);
        let bytewise = run(limits, head_request, input.chunks(1));
        assert_eq!(whole, bytewise, "whole vs one byte at a time");
        let sevens = run(limits, head_request, input.chunks(7));
        assert_eq!(whole, sevens, "whole vs 7-byte pieces");
        whole
    }

    fn check(input: &[u8]) -> Outcome {
        check_with(ResponseLimits::default(), false, input)
    }

    fn limits(head: usize, body: usize) -> ResponseLimits {
        ResponseLimits { head, body }
    }

    fn malformed(input: &[u8], reason: &'static str) {
        assert_eq!(
            check(input),
            Err(Http1Error::Malformed(reason)),
            "{input:?}"
        );
    }

    #[test]
    fn content_length_body() {
        let got = check(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"a\":\"tok\"}\r\n",
        )
        .unwrap();
        assert_eq!(got.status, 200);
        assert_eq!(got.version, Version::HTTP_11);
        assert_eq!(got.body, b"{\"a\":\"tok\"}\r\n");
        assert!(!got.at_close);
        assert_eq!(
            got.headers,
            vec![
                ("content-type".to_owned(), b"application/json".to_vec()),
                ("content-length".to_owned(), b"13".to_vec()),
            ]
        );
        // Zero length: complete with the head.
        let got = check(b"HTTP/1.0 400 Bad Request\nContent-Length: 0\n\n").unwrap();
        assert_eq!((got.status, got.version), (400, Version::HTTP_10));
        assert!(got.body.is_empty() && !got.at_close);
    }

    #[test]
    fn body_until_close() {
        let got =
            check(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"access_token\":\"x\"}").unwrap();
        assert_eq!(got.body, b"{\"access_token\":\"x\"}");
        assert!(got.at_close);
        // A transfer coding other than a final chunked runs until the close
        // (RFC 9112 §6.3), and wins over a Content-Length.
        let got =
            check(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\nContent-Length: 2\r\n\r\nabcdef")
                .unwrap();
        assert_eq!((got.body.as_slice(), got.at_close), (&b"abcdef"[..], true));
        let got = check(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
        assert!(got.body.is_empty() && got.at_close);
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let got = check(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\ntransfer-encoding: CHUNKED\r\n\r\n\
              5;name=value;q=\"a b\"\r\nhello\r\n\
              0000000000000006 ; x\r\n world\r\n\
              A\nABCDEFGHIJ\r\n\
              0;last\r\nExpires: never\r\nX-Checksum: 1\r\n\r\nignored",
        )
        .unwrap();
        assert_eq!(got.body, b"hello worldABCDEFGHIJ");
        assert!(!got.at_close);
        assert_eq!(got.headers.len(), 2, "trailers are not headers");
        // No trailers, bare LF.
        let got = check(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n1\nx\r\n0\n\n").unwrap();
        assert_eq!(got.body, b"x");
    }

    #[test]
    fn interim_responses_are_skipped() {
        let got =
            check(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .unwrap();
        assert_eq!((got.status, got.body.as_slice()), (200, &b"ok"[..]));
        let got = check(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n\
              HTTP/1.1 102 Processing\r\n\r\n\
              HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(got.status, 401);
        assert_eq!(
            got.headers,
            vec![
                ("www-authenticate".to_owned(), b"Bearer".to_vec()),
                ("content-length".to_owned(), b"0".to_vec()),
            ]
        );
        // Closed after an interim response: a cut head.
        assert_eq!(
            check(b"HTTP/1.1 100 Continue\r\n\r\n"),
            Err(Http1Error::Truncated {
                what: "response head"
            })
        );
    }

    #[test]
    fn endless_interim_responses_exhaust_the_head_limit() {
        let input = b"HTTP/1.1 102 Processing\r\n\r\n".repeat(100);
        assert_eq!(
            check_with(limits(1024, 100), false, &input),
            Err(Http1Error::HeadTooLarge { limit: 1024 })
        );
        // Without a limit in sight they would all be skipped.
        assert_eq!(
            check_with(limits(input.len(), 100), false, &input),
            Err(Http1Error::Truncated {
                what: "response head"
            })
        );
    }

    #[test]
    fn switching_protocols_is_refused() {
        assert_eq!(
            check(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n"),
            Err(Http1Error::UnexpectedUpgrade)
        );
    }

    #[test]
    fn endless_header_line_stops_at_the_limit() {
        let limit = 200;
        let mut reader = ResponseReader::new(limits(limit, 100), false);
        let mut fed = 0;
        let err = loop {
            let chunk: &[u8] = if fed == 0 {
                b"HTTP/1.1 200 OK\r\nX-Endless: "
            } else {
                b"a"
            };
            fed += chunk.len();
            match reader.receive(chunk) {
                Ok(None) => {
                    assert!(fed <= limit, "fed {fed} bytes, still reading");
                    assert!(reader.head.len() <= limit);
                    assert!(reader.head.capacity() <= limit);
                }
                Ok(Some(_)) => panic!("a response out of an endless line"),
                Err(error) => break error,
            }
        };
        assert_eq!(err, Http1Error::HeadTooLarge { limit });
        assert_eq!(fed, limit + 1, "refused as soon as the limit was passed");

        // One big read: nothing beyond the limit is copied.
        let mut reader = ResponseReader::new(limits(limit, 100), false);
        let mut input = b"HTTP/1.1 200 OK\r\nX-Endless: ".to_vec();
        input.resize(100_000, b'a');
        let mut first = input.clone();
        first.truncate(limit - 1);
        assert!(reader.receive(&first).unwrap().is_none());
        assert!(reader.head.len() <= limit && reader.head.capacity() <= limit);
        assert_eq!(
            reader.receive(&input).err(),
            Some(Http1Error::HeadTooLarge { limit })
        );

        // A head of exactly the limit is fine; one byte more is not.
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert!(check_with(limits(head.len(), 0), false, head).is_ok());
        assert_eq!(
            check_with(limits(head.len() - 1, 0), false, head),
            Err(Http1Error::HeadTooLarge {
                limit: head.len() - 1
            })
        );
    }

    #[test]
    fn no_body_for_head_204_304() {
        for (input, head_request) in [
            (
                &b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n"[..],
                false,
            ),
            (
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
                false,
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                true,
            ),
            (b"HTTP/1.1 200 OK\r\n\r\n", true),
            (
                b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
                false,
            ),
        ] {
            let got = check_with(ResponseLimits::default(), head_request, input).unwrap();
            assert!(got.body.is_empty(), "{input:?}");
            assert!(!got.at_close, "complete at once: {input:?}");
        }
    }

    #[test]
    fn body_over_the_cap_is_cut_at_limit_plus_one() {
        let small = limits(1024, 10);
        let body = b"0123456789ABCDEF";
        for input in [
            b"HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n0123456789ABCDEF".to_vec(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n0123456789ABCDEF".to_vec(),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n0123\r\n4\r\n4567\r\n8\r\n89ABCDEF\r\n0\r\n\r\n".to_vec(),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789ABCDEF".to_vec(),
            b"HTTP/1.1 200 OK\r\n\r\n0123456789ABCDEF".to_vec(),
            // Cut before a malformed chunk line: the body is known too large already.
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nb\r\n0123456789A\r\nzz\r\n".to_vec(),
        ] {
            let got = check_with(small, false, &input).unwrap();
            assert_eq!(got.body, &body[..11], "{:?}", String::from_utf8_lossy(&input));
            assert!(!got.at_close);
        }
        // Exactly at the limit: complete, not cut.
        let got = check_with(small, false, b"HTTP/1.1 200 OK\r\n\r\n0123456789").unwrap();
        assert_eq!((got.body.len(), got.at_close), (10, true));
        let got = check_with(
            small,
            false,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((got.body.len(), got.at_close), (10, false));
        // A zero body limit.
        let got = check_with(limits(100, 0), false, b"HTTP/1.1 200 OK\r\n\r\nx").unwrap();
        assert_eq!((got.body.as_slice(), got.at_close), (&b"x"[..], false));
    }

    #[test]
    fn content_length_values() {
        let ok = |value: &str, expected: &[u8]| {
            let input = format!("HTTP/1.1 200 OK\r\n{value}\r\n\r\nabcdef");
            let got = check(input.as_bytes()).unwrap();
            assert_eq!(got.body, expected, "{value}");
        };
        ok("Content-Length: 3", b"abc");
        ok("Content-Length:  3 \t", b"abc");
        ok("Content-Length: 3, 3", b"abc");
        ok("Content-Length: 3\r\ncontent-length: 3,3", b"abc");
        ok("Content-Length: 0000000000000000003", b"abc");
        for value in [
            "Content-Length: 3\r\nContent-Length: 4",
            "Content-Length: 3, 4",
            "Content-Length: 3, 03",
            "Content-Length: +5",
            "Content-Length: -5",
            "Content-Length: 5 5",
            "Content-Length: 0x5",
            "Content-Length: ",
            "Content-Length: 5,",
            "Content-Length: 00000000000000000003",
            "Content-Length: 5\r\nContent-Length: x",
        ] {
            malformed(
                format!("HTTP/1.1 200 OK\r\n{value}\r\n\r\nabcdef").as_bytes(),
                "invalid Content-Length",
            );
        }
        // The largest accepted value reads only up to the cap.
        let got = check_with(
            limits(1024, 4),
            false,
            b"HTTP/1.1 200 OK\r\nContent-Length: 9999999999999999999\r\n\r\nabcdef",
        )
        .unwrap();
        assert_eq!(got.body, b"abcde");
    }

    #[test]
    fn chunk_sizes() {
        let with = |chunk: &str| {
            check(
                format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}").as_bytes(),
            )
        };
        // 16 hex digits fit; 17 do not, whatever their value.
        assert_eq!(
            with("0000000000000001\r\nx\r\n0\r\n\r\n").unwrap().body,
            b"x"
        );
        for chunk in [
            "1ffffffffffffffff\r\n",
            "00000000000000001\r\nx\r\n0\r\n\r\n",
            "\r\n",
            ";x\r\n",
            "-1\r\n",
            "+1\r\n",
            "0x1\r\n",
            "1 1\r\nx\r\n",
            " 1\r\n",
            "g\r\n",
        ] {
            assert_eq!(
                with(chunk),
                Err(Http1Error::Malformed("invalid chunk size")),
                "{chunk:?}"
            );
        }
        assert_eq!(
            with("1\rx\r\n"),
            Err(Http1Error::Malformed("invalid line ending"))
        );
        assert_eq!(with("3\r\nabc\n0\r\n\r\n").unwrap().body, b"abc", "bare LF");
        for chunk in ["3\r\nabcX\r\n", "3\r\nabc\r\r\n", "3\r\nabc\r0\r\n\r\n"] {
            assert_eq!(
                with(chunk),
                Err(Http1Error::Malformed("missing CRLF after chunk data")),
                "{chunk:?}"
            );
        }
        let long = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(MAX_CHUNK_LINE - 2));
        assert_eq!(with(&long).unwrap().body, b"x");
        let too_long = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(MAX_CHUNK_LINE - 1));
        assert_eq!(
            with(&too_long),
            Err(Http1Error::Malformed("chunk line too long"))
        );
        // An endless extension ends at the bound, not at the close.
        let mut reader = ResponseReader::new(ResponseLimits::default(), false);
        assert!(reader
            .receive(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;")
            .unwrap()
            .is_none());
        assert_eq!(
            reader.receive(&[b'e'; MAX_CHUNK_LINE]).err(),
            Some(Http1Error::Malformed("chunk line too long"))
        );
    }

    #[test]
    fn transfer_encoding_values() {
        for te in [
            "",
            " , ",
            "chunked, chunked",
            "chunked\r\nTransfer-Encoding: chunked",
        ] {
            let input = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\n0\r\n\r\n");
            assert_eq!(
                check(input.as_bytes()),
                Err(Http1Error::Malformed("invalid Transfer-Encoding")),
                "{te:?}"
            );
        }
        assert_eq!(
            check(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            Err(Http1Error::Malformed(
                "Transfer-Encoding in an HTTP/1.0 response"
            ))
        );
    }

    #[test]
    fn chunk_size_lines_are_bounded_over_the_whole_body() {
        // One body byte per chunk, each with a long extension: the lines
        // together may take `limits.head` bytes, however small the body.
        let chunk = format!("1;{}\r\nx\r\n", "e".repeat(98));
        let input = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n",
            chunk.repeat(20)
        );
        assert_eq!(
            check_with(limits(4096, 1024), false, input.as_bytes())
                .unwrap()
                .body,
            b"x".repeat(20)
        );
        assert_eq!(
            check_with(limits(1000, 1024), false, input.as_bytes()),
            Err(Http1Error::Malformed("too many chunk-size bytes"))
        );
    }

    #[test]
    fn trailers_are_bounded() {
        let input = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(100)
        );
        assert_eq!(
            check_with(limits(100, 10), false, input.as_bytes()),
            Err(Http1Error::HeadTooLarge { limit: 100 })
        );
        assert!(check_with(limits(200, 10), false, input.as_bytes()).is_ok());
    }

    #[test]
    fn truncated() {
        assert_eq!(
            check(b"HTTP/1.1 200 OK\r\nContent-Le"),
            Err(Http1Error::Truncated {
                what: "response head"
            })
        );
        assert_eq!(
            check(b"\r\n"),
            Err(Http1Error::Truncated {
                what: "response head"
            })
        );
        assert_eq!(
            check(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"),
            Err(Http1Error::Truncated {
                what: "body (Content-Length)"
            })
        );
        for cut in [
            "",
            "5",
            "5;ext",
            "5\r",
            "5\r\nhel",
            "5\r\nhello",
            "5\r\nhello\r",
            "5\r\nhello\r\n0\r\n",
            "5\r\nhello\r\n0\r\nTrailer: x\r\n",
        ] {
            assert_eq!(
                check(
                    format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{cut}")
                        .as_bytes()
                ),
                Err(Http1Error::Truncated {
                    what: "chunked body"
                }),
                "{cut:?}"
            );
        }
    }

    #[test]
    fn closed_before_response() {
        assert_eq!(check(b""), Err(Http1Error::ClosedBeforeResponse));
        let mut reader = ResponseReader::new(ResponseLimits::default(), false);
        assert!(reader.receive(b"").unwrap().is_none());
        assert_eq!(
            reader.end_of_stream().err(),
            Some(Http1Error::ClosedBeforeResponse)
        );
    }

    #[test]
    fn malformed_heads() {
        malformed(
            b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
            "not an HTTP/1.0 or HTTP/1.1 response",
        );
        malformed(
            b"HTTP/1.2 200 OK\r\n\r\n",
            "not an HTTP/1.0 or HTTP/1.1 response",
        );
        malformed(
            b"ICY 200 OK\r\n\r\n",
            "not an HTTP/1.0 or HTTP/1.1 response",
        );
        malformed(b"HTTP/1.1 20 OK\r\n\r\n", "invalid status line");
        malformed(b"HTTP/1.1 099 Low\r\n\r\n", "invalid status code");
        malformed(
            b"HTTP/1.1 200 OK\r\nX-Bad: a\x00b\r\n\r\n",
            "invalid header field",
        );
        malformed(
            b"HTTP/1.1 200 OK\r\nX-Bad: a\x7fb\r\n\r\n",
            "invalid header field",
        );
        malformed(
            b"HTTP/1.1 200 OK\r\nX Bad: a\r\n\r\n",
            "invalid header field",
        );
        malformed(
            b"HTTP/1.1 200 OK\r\n folded: a\r\n\r\n",
            "invalid header field",
        );
        malformed(
            b"HTTP/1.1 200 OK\r\nA: b\r\n\rX\r\n\r\n",
            "invalid line ending",
        );
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for _ in 0..=MAX_HEADERS {
            many.extend_from_slice(b"A: b\r\n");
        }
        many.extend_from_slice(b"\r\n");
        malformed(&many, "too many header fields");
        // Any three digits from 100 up are a status code.
        let got = check(b"HTTP/1.1 999 Whatever\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!(got.status, 999);
        // Empty lines before the status line are skipped, as httparse does.
        let got = check(b"\r\n\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!(got.status, 200);
    }

    #[test]
    fn duplicate_headers_are_kept() {
        let got = check(
            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\nWWW-Authenticate: DPoP algs=\"ES256\"\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        let values: Vec<_> = got
            .headers
            .iter()
            .filter(|(name, _)| name == "www-authenticate")
            .map(|(_, value)| value.as_slice())
            .collect();
        assert_eq!(values, [&b"Bearer"[..], b"DPoP algs=\"ES256\""]);
    }

    #[test]
    fn bytes_after_the_response_are_ignored() {
        let got = check(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 500 Oops\r\n\r\n\x00\xff",
        )
        .unwrap();
        assert_eq!((got.status, got.body.as_slice()), (200, &b"ok"[..]));
        let got =
            check(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\ngarbage\r\n\r\n")
                .unwrap();
        assert!(got.body.is_empty());
    }

    #[test]
    fn receive_after_completion() {
        let mut reader = ResponseReader::new(ResponseLimits::default(), false);
        let response = reader
            .receive(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        assert!(response.is_some());
        assert_eq!(
            reader.receive(b"x").err(),
            Some(Http1Error::AlreadyComplete)
        );
        assert_eq!(
            reader.end_of_stream().err(),
            Some(Http1Error::AlreadyComplete)
        );

        let mut reader = ResponseReader::new(ResponseLimits::default(), false);
        assert!(reader
            .receive(b"HTTP/1.1 200 OK\r\n\r\nbody")
            .unwrap()
            .is_none());
        assert!(reader.end_of_stream().is_ok());
        assert_eq!(
            reader.receive(b"x").err(),
            Some(Http1Error::AlreadyComplete)
        );
        assert_eq!(
            reader.end_of_stream().err(),
            Some(Http1Error::AlreadyComplete)
        );

        // An error sticks.
        let mut reader = ResponseReader::new(ResponseLimits::default(), false);
        let error = reader.receive(b"HTTP/9.9 200 OK\r\n\r\n").unwrap_err();
        assert_eq!(
            reader.receive(b"HTTP/1.1 200 OK\r\n\r\n").err(),
            Some(error.clone())
        );
        assert_eq!(reader.end_of_stream().err(), Some(error));
    }

    #[test]
    fn debug_and_display_show_no_wire_bytes() {
        let mut reader = ResponseReader::new(ResponseLimits::default(), false);
        reader
            .receive(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsecret-token")
            .unwrap();
        let debug = format!("{reader:?}");
        assert!(
            !debug.contains("secret") && !debug.contains("HTTP/1.1"),
            "{debug}"
        );
        assert!(debug.contains("body_buffered: 12"), "{debug}");
        for error in [
            Http1Error::ClosedBeforeResponse,
            Http1Error::Truncated {
                what: "chunked body",
            },
            Http1Error::HeadTooLarge { limit: 10 },
            Http1Error::Malformed("invalid chunk size"),
            Http1Error::UnexpectedUpgrade,
            Http1Error::AlreadyComplete,
        ] {
            let text = error.to_string();
            assert!(!text.contains('\n') && !text.is_empty());
            assert!(text.starts_with(|c: char| c.is_ascii_lowercase()), "{text}");
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// How a generated body is framed.
        #[derive(Clone, Debug)]
        enum Frame {
            Length,
            Chunked(Vec<usize>),
            UntilClose,
        }

        fn frame() -> impl Strategy<Value = Frame> {
            prop_oneof![
                Just(Frame::Length),
                prop::collection::vec(1usize..400, 1..8).prop_map(Frame::Chunked),
                Just(Frame::UntilClose),
            ]
        }

        fn header() -> impl Strategy<Value = (String, String)> {
            (
                prop::sample::select(vec!["server", "x-request-id", "cache-control", "date"]),
                "[ -~]{0,30}",
            )
                .prop_map(|(name, value)| (name.to_owned(), value.trim().to_owned()))
        }

        /// Cuts `bytes` at the given points (any values, folded into range).
        fn pieces<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut out = Vec::new();
            let mut start = 0;
            for point in points {
                out.push(&bytes[start..point]);
                start = point;
            }
            out.push(&bytes[start..]);
            out
        }

        proptest! {
            #[test]
            fn generated_responses_read_back(
                status in 200u16..600,
                interim in prop::option::of(prop::sample::select(vec![100u16, 102, 103])),
                headers in prop::collection::vec(header(), 0..4),
                body in prop::collection::vec(any::<u8>(), 0..2000),
                frame in frame(),
                head_request in prop::bool::weighted(0.1),
                body_limit in prop_oneof![Just(1024 * 1024), 0usize..2100],
                cuts in prop::collection::vec(any::<usize>(), 0..12),
            ) {
                let mut wire = Vec::new();
                if let Some(code) = interim {
                    wire.extend_from_slice(format!("HTTP/1.1 {code} Interim\r\n\r\n").as_bytes());
                }
                wire.extend_from_slice(format!("HTTP/1.1 {status} Whatever\r\n").as_bytes());
                for (name, value) in &headers {
                    wire.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                }
                match &frame {
                    Frame::Length => wire.extend_from_slice(
                        format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes(),
                    ),
                    Frame::Chunked(_) => wire.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n"),
                    Frame::UntilClose => wire.extend_from_slice(b"\r\n"),
                }
                match &frame {
                    Frame::Chunked(sizes) => {
                        let mut rest = body.as_slice();
                        let mut sizes = sizes.iter().cycle();
                        while !rest.is_empty() {
                            let size = sizes.next().copied().unwrap_or(1).min(rest.len());
                            let (chunk, tail) = rest.split_at(size);
                            wire.extend_from_slice(format!("{size:x};n=v\r\n").as_bytes());
                            wire.extend_from_slice(chunk);
                            wire.extend_from_slice(b"\r\n");
                            rest = tail;
                        }
                        wire.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
                    }
                    Frame::Length | Frame::UntilClose => wire.extend_from_slice(&body),
                }

                let limits = ResponseLimits { head: 64 * 1024, body: body_limit };
                let got = run(limits, head_request, pieces(&wire, &cuts)).unwrap();
                let no_body = head_request || status == 204 || status == 304;
                let mut expected = if no_body { Vec::new() } else { body.clone() };
                expected.truncate(body_limit + 1);
                prop_assert_eq!(got.status, status);
                prop_assert_eq!(&got.body, &expected);
                let cut = expected.len() > body_limit;
                let at_close = !no_body && !cut && matches!(frame, Frame::UntilClose);
                prop_assert_eq!(got.at_close, at_close);
                // A HeaderMap groups fields by name, each name's values in order.
                for (name, _) in &headers {
                    let sent: Vec<&[u8]> = headers
                        .iter()
                        .filter(|(n, _)| n == name)
                        .map(|(_, value)| value.as_bytes())
                        .collect();
                    let read: Vec<&[u8]> = got
                        .headers
                        .iter()
                        .filter(|(n, _)| n == name)
                        .map(|(_, value)| value.as_slice())
                        .collect();
                    prop_assert_eq!(read, sent);
                }
            }

            #[test]
            fn any_bytes_any_split(
                tokens in prop::collection::vec(
                    prop_oneof![
                        prop::sample::select(vec![
                            &b"HTTP/1.1 "[..], b"HTTP/1.0 ", b"200 OK", b"100", b"101", b"204",
                            b" ", b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"Content-Length: ",
                            b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip", b",",
                            b"0", b"5", b"a", b"ffffffff", b";x=y", b":", b"0\r\n\r\n",
                        ]).prop_map(<[u8]>::to_vec),
                        prop::collection::vec(any::<u8>(), 1..8),
                    ],
                    0..40,
                ),
                head in 0usize..200,
                body in 0usize..40,
                head_request in any::<bool>(),
                cuts in prop::collection::vec(any::<usize>(), 0..20),
            ) {
                let bytes = tokens.concat();
                let limits = ResponseLimits { head, body };
                let whole = run(limits, head_request, [bytes.as_slice()]);
                let split = run(limits, head_request, pieces(&bytes, &cuts));
                prop_assert_eq!(&whole, &split);
                let bytewise = run(limits, head_request, bytes.chunks(1));
                prop_assert_eq!(&whole, &bytewise);
            }
        }
    }
}
