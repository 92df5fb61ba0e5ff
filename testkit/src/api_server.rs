//! A plain keep-alive API server that writes each answer's head and body in
//! separate TCP segments, as ordinary servers do (Python's `http.server` with
//! `protocol_version = "HTTP/1.1"`, many frameworks' development servers).
//!
//! [`SplitApiServer`] listens on `127.0.0.1` on an ephemeral port and answers
//! every request, whatever its method, path or `Authorization`, with `200 OK`
//! and a small JSON body (or a body of a chosen size). The head goes out in one
//! write, the body in a second one; with `TCP_NODELAY` they leave as separate
//! segments, so a client that reads the head has normally not received the
//! body yet. A client that hands its connection back without reading the body
//! then reads the body bytes as the next answer's status line.
//!
//! [`SplitApiConfig::http10`] makes it answer `HTTP/1.0 200 OK` with
//! `Connection: close` and close every connection after one answer, like
//! servers that speak only HTTP/1.0 (Django's development server).
//! [`SplitApiConfig::framing`] frames bodies with `Content-Length` (the
//! default), as one chunk, or by closing the connection after them.
//!
//! It counts requests and connections and records the `Authorization` header
//! of the last request. Request heads are read up to 16 KiB and request
//! bodies (`Content-Length` only) up to 1 MiB; connections are closed after
//! an idle timeout; at most 256 are served at once. It stops when dropped:
//! the listener and every connection are closed and their threads joined.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::relay::{lock, Acceptor, Connection};

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: u64 = 1024 * 1024;
const MAX_CONNECTIONS: usize = 256;

/// How a [`SplitApiServer`] marks where an answer's body ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length`.
    #[default]
    ContentLength,
    /// `Transfer-Encoding: chunked`, the body as one chunk (an empty body as none).
    Chunked,
    /// Neither: `Connection: close`, and the connection closed after the body.
    UntilClose,
}

/// How a [`SplitApiServer`] answers.
#[derive(Clone, Debug)]
pub struct SplitApiConfig {
    /// Answer `HTTP/1.0 200 OK` with `Connection: close`, and close the
    /// connection after each answer (default: HTTP/1.1 keep-alive).
    pub http10: bool,
    /// How the body's end is marked (default `Content-Length`).
    pub framing: Framing,
    /// The body of every answer (default `{"ok":true}`), sent as `application/json`.
    pub body: Vec<u8>,
    /// How long a connection may sit idle before the server closes it (default 10 s).
    pub idle_timeout: Duration,
    /// The first this many answers are `401 Unauthorized` with
    /// `WWW-Authenticate: Bearer error="invalid_token"` (and the same body):
    /// a client that retries must read the 401's body first (default 0).
    pub unauthorized_first: u64,
}

impl Default for SplitApiConfig {
    fn default() -> Self {
        SplitApiConfig {
            http10: false,
            framing: Framing::ContentLength,
            body: br#"{"ok":true}"#.to_vec(),
            idle_timeout: Duration::from_secs(10),
            unauthorized_first: 0,
        }
    }
}

struct State {
    config: SplitApiConfig,
    requests: AtomicU64,
    connections_accepted: AtomicU64,
    last_authorization: Mutex<Option<Option<String>>>,
}

/// A running split-writing API server; stops when dropped.
pub struct SplitApiServer {
    acceptor: Acceptor,
    state: Arc<State>,
}

impl SplitApiServer {
    /// Starts a server on `127.0.0.1` with an ephemeral port.
    pub fn start(config: SplitApiConfig) -> io::Result<SplitApiServer> {
        let state = Arc::new(State {
            config,
            requests: AtomicU64::new(0),
            connections_accepted: AtomicU64::new(0),
            last_authorization: Mutex::new(None),
        });
        let acceptor = Acceptor::start(
            "split-api-server",
            MAX_CONNECTIONS,
            Arc::clone(&state),
            |stream, conn, state| {
                state.connections_accepted.fetch_add(1, Ordering::SeqCst);
                let _ = serve(stream, conn, state);
            },
        )?;
        Ok(SplitApiServer { acceptor, state })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.acceptor.addr()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Requests received (a request counts once its head and body are read).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.state.connections_accepted.load(Ordering::SeqCst)
    }

    /// The `Authorization` header of the most recent request: `None` if no
    /// request arrived yet, `Some(None)` if it carried none.
    pub fn last_authorization(&self) -> Option<Option<String>> {
        lock(&self.state.last_authorization).clone()
    }
}

fn serve(stream: &TcpStream, conn: &Connection<'_>, state: &State) -> io::Result<()> {
    stream.set_read_timeout(Some(state.config.idle_timeout))?;
    stream.set_write_timeout(Some(state.config.idle_timeout))?;
    // Each write leaves at once, as a segment of its own.
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream.try_clone()?;
    let config = &state.config;
    loop {
        if conn.stopping() {
            return Ok(());
        }
        let Some(request) = read_request(&mut reader)? else {
            return Ok(());
        };
        let index = state.requests.fetch_add(1, Ordering::SeqCst);
        *lock(&state.last_authorization) = Some(request.authorization);
        let close = config.http10 || request.close || config.framing == Framing::UntilClose;
        let version = if config.http10 {
            "HTTP/1.0"
        } else {
            "HTTP/1.1"
        };
        let status = if index < config.unauthorized_first {
            "401 Unauthorized\r\nWWW-Authenticate: Bearer error=\"invalid_token\""
        } else {
            "200 OK"
        };
        let mut head = format!("{version} {status}\r\nContent-Type: application/json\r\n");
        let mut body = Vec::with_capacity(config.body.len() + 16);
        match config.framing {
            Framing::ContentLength => {
                head.push_str(&format!("Content-Length: {}\r\n", config.body.len()));
                body.extend_from_slice(&config.body);
            }
            Framing::Chunked => {
                head.push_str("Transfer-Encoding: chunked\r\n");
                if !config.body.is_empty() {
                    body.extend_from_slice(format!("{:x}\r\n", config.body.len()).as_bytes());
                    body.extend_from_slice(&config.body);
                    body.extend_from_slice(b"\r\n");
                }
                body.extend_from_slice(b"0\r\n\r\n");
            }
            Framing::UntilClose => body.extend_from_slice(&config.body),
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        // Two writes: the head, then the body.
        writer.write_all(head.as_bytes())?;
        writer.flush()?;
        writer.write_all(&body)?;
        writer.flush()?;
        if close {
            return Ok(());
        }
    }
}

struct Request {
    authorization: Option<String>,
    close: bool,
}

/// Reads one request head (at most [`MAX_HEAD`] bytes) and discards its
/// body (`Content-Length`, at most [`MAX_BODY`]). `None`: the client closed.
fn read_request(reader: &mut BufReader<TcpStream>) -> io::Result<Option<Request>> {
    let mut head = Vec::new();
    // Bytes read for this request, empty lines before it included.
    let mut read = 0;
    loop {
        let mut line = Vec::new();
        let n = reader
            .by_ref()
            .take((MAX_HEAD - read) as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(None);
        }
        read += n;
        if read > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
        if line == b"\r\n" || line == b"\n" {
            if head.is_empty() {
                continue; // tolerate empty lines between requests
            }
            break;
        }
        head.extend_from_slice(&line);
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.lines();
    let version = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(2))
        .unwrap_or_default();
    let mut request = Request {
        authorization: None,
        close: version == "HTTP/1.0",
    };
    let mut length = 0u64;
    for (name, value) in lines.filter_map(|l| l.split_once(':')) {
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("authorization") {
            request.authorization = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("connection") {
            request.close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request bodies with Transfer-Encoding are not supported",
            ));
        }
    }
    if length > MAX_BODY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "request body too large",
        ));
    }
    let copied = io::copy(&mut reader.by_ref().take(length), &mut io::sink())?;
    if copied < length {
        return Ok(None); // closed mid-body
    }
    Ok(Some(request))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads one answer: the head (up to the blank line) and a body of `Content-Length` bytes.
    fn read_answer(reader: &mut BufReader<TcpStream>) -> (String, Vec<u8>) {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            assert!(reader.read_line(&mut line).unwrap() > 0, "closed mid-head");
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        (head, body)
    }

    #[test]
    fn keeps_connections_alive_and_counts() {
        let server = SplitApiServer::start(SplitApiConfig::default()).unwrap();
        let stream = TcpStream::connect(server.addr()).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        for i in 0..3 {
            let auth = format!("Bearer t{i}");
            write!(
                writer,
                "POST /x HTTP/1.1\r\nHost: h\r\nAuthorization: {auth}\r\nContent-Length: 3\r\n\r\nabc"
            )
            .unwrap();
            let (head, body) = read_answer(&mut reader);
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
            assert!(!head.contains("Connection: close"), "{head}");
            assert_eq!(body, br#"{"ok":true}"#);
            assert_eq!(server.last_authorization(), Some(Some(auth)));
        }
        assert_eq!(server.requests(), 3);
        assert_eq!(server.connections(), 1);
    }

    #[test]
    fn http10_mode_closes_after_one_answer() {
        let server = SplitApiServer::start(SplitApiConfig {
            http10: true,
            ..SplitApiConfig::default()
        })
        .unwrap();
        let stream = TcpStream::connect(server.addr()).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        writer
            .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .unwrap();
        let (head, body) = read_answer(&mut reader);
        assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{head}");
        assert!(head.contains("Connection: close\r\n"), "{head}");
        assert_eq!(body, br#"{"ok":true}"#);
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        assert_eq!(server.requests(), 1);
        assert_eq!(server.last_authorization(), Some(None));
    }

    #[test]
    fn frames_bodies_as_chunks_or_by_closing() {
        for (framing, expected) in [
            (Framing::Chunked, &b"b\r\n{\"ok\":true}\r\n0\r\n\r\n"[..]),
            (Framing::UntilClose, &br#"{"ok":true}"#[..]),
        ] {
            let server = SplitApiServer::start(SplitApiConfig {
                framing,
                ..SplitApiConfig::default()
            })
            .unwrap();
            let mut stream = TcpStream::connect(server.addr()).unwrap();
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
                .unwrap();
            if framing == Framing::Chunked {
                // Still open: a second request is answered on the same connection.
                stream
                    .write_all(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
                    .unwrap();
            }
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            let (head, body) = answer.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
            assert!(!head.contains("Content-Length"), "{head}");
            if framing == Framing::Chunked {
                assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
                let second = format!("{}{head}", String::from_utf8_lossy(expected));
                assert!(body.starts_with(&second), "{body:?}");
                assert_eq!(server.requests(), 2);
            } else {
                assert!(head.contains("Connection: close"), "{head}");
                assert_eq!(body.as_bytes(), expected);
            }
        }
    }

    #[test]
    fn refuses_oversized_heads_and_stops_when_dropped() {
        let server = SplitApiServer::start(SplitApiConfig::default()).unwrap();
        let long_header = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        let empty_lines = format!("{}GET / HTTP/1.1\r\n\r\n", "\r\n".repeat(MAX_HEAD / 2 + 1));
        for oversized in [long_header, empty_lines] {
            let stream = TcpStream::connect(server.addr()).unwrap();
            let mut writer = stream.try_clone().unwrap();
            // The server may close before it has read everything: a write error is fine.
            let _ = writer.write_all(oversized.as_bytes());
            let mut rest = Vec::new();
            let _ = BufReader::new(stream).read_to_end(&mut rest);
            assert!(rest.is_empty(), "no answer to an oversized head");
        }
        assert_eq!(server.requests(), 0);
        // An idle keep-alive connection does not keep the server from stopping.
        let idle = TcpStream::connect(server.addr()).unwrap();
        drop(server);
        let mut rest = Vec::new();
        let _ = BufReader::new(idle).read_to_end(&mut rest);
        assert!(rest.is_empty());
    }
}
