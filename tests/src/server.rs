//! The local authorization server and protected API.

use std::collections::{HashMap, VecDeque};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How the server is set up.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Registered clients: id and secret. Both basic and post authentication are accepted.
    pub clients: Vec<(String, String)>,
    /// `expires_in` of issued tokens, in seconds.
    pub ttl_secs: u64,
    /// Scope echoed back in token responses (`None`: no `scope` field).
    pub scope: Option<String>,
    /// How long a connection may sit idle before the server closes it.
    pub idle_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            clients: vec![("m2m".to_owned(), "s3cret".to_owned())],
            ttl_secs: 3600,
            scope: None,
            idle_timeout: Duration::from_secs(10),
        }
    }
}

/// A misbehaviour for the next token request (each fault is used once, in order).
#[derive(Clone, Debug)]
pub enum TokenFault {
    /// Answer with this status and body, and a `Retry-After` header if given.
    Status {
        /// The status code.
        status: u16,
        /// The body.
        body: String,
        /// The `Retry-After` value.
        retry_after: Option<String>,
    },
    /// Answer 200 with this raw body (malformed JSON, HTML, wrong types…).
    Body(String),
    /// Wait this long, then answer normally.
    Delay(Duration),
    /// Close the connection without answering.
    Close,
    /// Hold the request until the gate opens (at most 30 s), then answer as
    /// the next queued fault says (normally when there is none).
    Hold(Gate),
}

/// A gate that holds a token request until the test opens it.
#[derive(Clone, Debug, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    /// A closed gate.
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Opens the gate: held requests proceed.
    pub fn open(&self) {
        let (open, changed) = &*self.0;
        *open.lock().unwrap() = true;
        changed.notify_all();
    }

    fn wait(&self) {
        let (open, changed) = &*self.0;
        let guard = open.lock().unwrap();
        let _ = changed.wait_timeout_while(guard, Duration::from_secs(30), |open| !*open);
    }
}

/// A misbehaviour of the protected API.
#[derive(Clone, Debug)]
pub enum ApiFault {
    /// Answer the next API request with 401 and `WWW-Authenticate: Bearer error="invalid_token"`,
    /// and revoke the token it carried.
    UnauthorizedOnce,
}

/// A token request as the server received it.
#[derive(Clone, Debug, Default)]
pub struct RecordedRequest {
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, String)>,
    /// The decoded form body.
    pub form: Vec<(String, String)>,
}

impl RecordedRequest {
    /// The first header of this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first form field of this name.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Issued {
    expires: Instant,
    revoked: bool,
}

#[derive(Default)]
struct Shared {
    token_faults: VecDeque<TokenFault>,
    api_faults: VecDeque<ApiFault>,
    tokens: HashMap<String, Issued>,
    last_token_request: Option<RecordedRequest>,
    last_api_authorization: Option<Option<String>>,
}

struct State {
    addr: SocketAddr,
    config: Mutex<ServerConfig>,
    shared: Mutex<Shared>,
    token_requests: AtomicU64,
    token_request_seen: Condvar,
    tokens_issued: AtomicU64,
    api_requests: AtomicU64,
    api_rejected: AtomicU64,
    stopping: AtomicBool,
    connections: Mutex<HashMap<u64, TcpStream>>,
    next_connection: AtomicU64,
}

/// A running local authorization server; stops when dropped.
pub struct LocalAuthServer {
    addr: SocketAddr,
    state: Arc<State>,
    acceptor: Option<JoinHandle<()>>,
}

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;
const MAX_CONNECTIONS: usize = 2048;

impl LocalAuthServer {
    /// Starts a server on `127.0.0.1` with an ephemeral port.
    pub fn start(config: ServerConfig) -> io::Result<LocalAuthServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            addr,
            config: Mutex::new(config),
            shared: Mutex::new(Shared::default()),
            token_requests: AtomicU64::new(0),
            token_request_seen: Condvar::new(),
            tokens_issued: AtomicU64::new(0),
            api_requests: AtomicU64::new(0),
            api_rejected: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            connections: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(0),
        });
        let accept_state = Arc::clone(&state);
        let acceptor = std::thread::Builder::new()
            .name("local-auth-server".into())
            .spawn(move || accept_loop(listener, accept_state))?;
        Ok(LocalAuthServer {
            addr,
            state,
            acceptor: Some(acceptor),
        })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The token endpoint URL.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.base_url())
    }

    /// The protected API's base URL.
    pub fn api_url(&self) -> String {
        format!("{}/api", self.base_url())
    }

    /// Token requests received (successful or not).
    pub fn token_requests(&self) -> u64 {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// Waits (at most `timeout`) until at least `n` token requests have arrived.
    pub fn wait_for_token_requests(&self, n: u64, timeout: Duration) -> bool {
        let shared = self.state.shared.lock().unwrap();
        let (_shared, result) = self
            .state
            .token_request_seen
            .wait_timeout_while(shared, timeout, |_| {
                self.state.token_requests.load(Ordering::SeqCst) < n
            })
            .unwrap();
        !result.timed_out()
    }

    /// Tokens issued.
    pub fn tokens_issued(&self) -> u64 {
        self.state.tokens_issued.load(Ordering::SeqCst)
    }

    /// API requests received.
    pub fn api_requests(&self) -> u64 {
        self.state.api_requests.load(Ordering::SeqCst)
    }

    /// API requests answered 401.
    pub fn api_rejected(&self) -> u64 {
        self.state.api_rejected.load(Ordering::SeqCst)
    }

    /// Queues a misbehaviour for the next token request.
    pub fn push_token_fault(&self, fault: TokenFault) {
        self.state
            .shared
            .lock()
            .unwrap()
            .token_faults
            .push_back(fault);
    }

    /// Queues a misbehaviour for the next API request.
    pub fn push_api_fault(&self, fault: ApiFault) {
        self.state
            .shared
            .lock()
            .unwrap()
            .api_faults
            .push_back(fault);
    }

    /// Changes the lifetime of tokens issued from now on.
    pub fn set_ttl_secs(&self, ttl_secs: u64) {
        self.state.config.lock().unwrap().ttl_secs = ttl_secs;
    }

    /// Revokes every token issued so far: the API answers 401 to them.
    pub fn revoke_all(&self) {
        for issued in self.state.shared.lock().unwrap().tokens.values_mut() {
            issued.revoked = true;
        }
    }

    /// Every access token issued so far (to check that none leaks into logs).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state
            .shared
            .lock()
            .unwrap()
            .tokens
            .keys()
            .cloned()
            .collect()
    }

    /// The `Authorization` header of the most recent API request: `None` if
    /// no API request arrived yet, `Some(None)` if it carried none.
    pub fn last_api_authorization(&self) -> Option<Option<String>> {
        self.state
            .shared
            .lock()
            .unwrap()
            .last_api_authorization
            .clone()
    }

    /// The most recent token request.
    pub fn last_token_request(&self) -> Option<RecordedRequest> {
        self.state.shared.lock().unwrap().last_token_request.clone()
    }
}

impl Drop for LocalAuthServer {
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        // Wake the acceptor with one last connection, and unblock readers.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for (_, stream) in self.state.connections.lock().unwrap().drain() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, state: Arc<State>) {
    for stream in listener.incoming() {
        if state.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let id = state.next_connection.fetch_add(1, Ordering::SeqCst);
        {
            let mut connections = state.connections.lock().unwrap();
            if connections.len() >= MAX_CONNECTIONS {
                continue; // dropped: the client sees a reset
            }
            if let Ok(clone) = stream.try_clone() {
                connections.insert(id, clone);
            }
        }
        let state = Arc::clone(&state);
        let _ = std::thread::Builder::new()
            .name("local-auth-conn".into())
            .spawn(move || {
                let _ = serve_connection(&stream, &state);
                let _ = stream.shutdown(Shutdown::Both);
                state.connections.lock().unwrap().remove(&id);
            });
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    close: bool,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Response {
    fn json(status: u16, body: String) -> Response {
        Response {
            status,
            headers: vec![
                ("Content-Type", "application/json".into()),
                ("Cache-Control", "no-store".into()),
            ],
            body: body.into_bytes(),
        }
    }
}

fn serve_connection(stream: &TcpStream, state: &State) -> io::Result<()> {
    let idle = state.config.lock().unwrap().idle_timeout;
    stream.set_read_timeout(Some(idle))?;
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream.try_clone()?;
    loop {
        if state.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        let Some(request) = read_request(&mut reader)? else {
            return Ok(());
        };
        let close = request.close;
        let response = match (request.method.as_str(), request.path.as_str()) {
            ("POST", "/token") => match token_endpoint(&request, state) {
                Some(response) => response,
                None => return writer.shutdown(Shutdown::Both),
            },
            ("GET", "/.well-known/openid-configuration") => {
                let base = format!("http://{}", state.addr);
                Response::json(
                    200,
                    format!(
                        r#"{{"issuer":"{base}","token_endpoint":"{base}/token","token_endpoint_auth_methods_supported":["client_secret_basic","client_secret_post"],"grant_types_supported":["client_credentials"]}}"#
                    ),
                )
            }
            (_, path)
                if path == "/api" || path.starts_with("/api/") || path.starts_with("/api?") =>
            {
                api(&request, state)
            }
            _ => Response::json(404, r#"{"error":"not_found"}"#.into()),
        };
        write_response(&mut writer, &response, close)?;
        if close {
            return Ok(());
        }
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> io::Result<Option<Request>> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = reader
            .by_ref()
            .take((MAX_HEAD - head.len()) as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(None); // connection closed
        }
        head.extend_from_slice(&line);
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
        if line == b"\r\n" || line == b"\n" {
            if head.len() == line.len() {
                head.clear(); // tolerate empty lines between requests
                continue;
            }
            break;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.lines();
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let version = parts.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut request = Request {
        method,
        path,
        close: version == "HTTP/1.0",
        headers,
        body: Vec::new(),
    };
    if let Some(connection) = request.header("connection") {
        request.close = connection.eq_ignore_ascii_case("close");
    }
    if request
        .header("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        request.body = read_chunked(reader)?;
    } else {
        let length: usize = request
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if length > MAX_BODY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request body too large",
            ));
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        request.body = body;
    }
    Ok(Some(request))
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size_line = String::new();
        reader.by_ref().take(64).read_line(&mut size_line)?;
        let size_text = size_line.trim().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        if body.len() + size > MAX_BODY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request body too large",
            ));
        }
        if size == 0 {
            let mut trailer = String::new();
            while reader.by_ref().take(1024).read_line(&mut trailer)? > 2 {
                trailer.clear();
            }
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0; 2];
        reader.read_exact(&mut crlf)?;
    }
}

fn write_response(writer: &mut TcpStream, response: &Response, close: bool) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        response.status,
        reason(response.status)
    );
    for (name, value) in &response.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n", response.body.len()));
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&response.body);
    writer.write_all(&bytes)?;
    writer.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// `None`: drop the connection without answering.
fn token_endpoint(request: &Request, state: &State) -> Option<Response> {
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    let form: Vec<(String, String)> = form_decode(&request.body);
    let recorded = RecordedRequest {
        headers: request.headers.clone(),
        form: form.clone(),
    };
    let mut fault = {
        let mut shared = state.shared.lock().unwrap();
        shared.last_token_request = Some(recorded);
        state.token_request_seen.notify_all();
        shared.token_faults.pop_front()
    };
    if let Some(TokenFault::Hold(gate)) = &fault {
        // A held request then gets the next fault in the queue, if any.
        gate.wait();
        fault = state.shared.lock().unwrap().token_faults.pop_front();
    }
    match fault {
        Some(TokenFault::Status {
            status,
            body,
            retry_after,
        }) => {
            let mut response = Response::json(status, body);
            if let Some(value) = retry_after {
                response.headers.push(("Retry-After", value));
            }
            return Some(response);
        }
        Some(TokenFault::Body(body)) => return Some(Response::json(200, body)),
        Some(TokenFault::Delay(delay)) => std::thread::sleep(delay),
        Some(TokenFault::Close) => return None,
        Some(TokenFault::Hold(gate)) => gate.wait(),
        None => {}
    }
    let field = |name: &str| form.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    if field("grant_type").as_deref() != Some("client_credentials") {
        return Some(oauth_error(400, "unsupported_grant_type"));
    }
    let config = state.config.lock().unwrap().clone();
    let credentials = match request.header("authorization") {
        Some(basic) => decode_basic(basic),
        None => field("client_id").zip(field("client_secret")),
    };
    let known = credentials.is_some_and(|(id, secret)| {
        config
            .clients
            .iter()
            .any(|(cid, csecret)| *cid == id && *csecret == secret)
    });
    if !known {
        let mut response = oauth_error(401, "invalid_client");
        response
            .headers
            .push(("WWW-Authenticate", r#"Basic realm="token""#.into()));
        return Some(response);
    }
    let serial = state.tokens_issued.fetch_add(1, Ordering::SeqCst);
    let token = format!("lt-{serial}-{:016x}", random_u64());
    state.shared.lock().unwrap().tokens.insert(
        token.clone(),
        Issued {
            expires: Instant::now() + Duration::from_secs(config.ttl_secs),
            revoked: false,
        },
    );
    let scope = config
        .scope
        .map(|s| format!(r#","scope":"{s}""#))
        .unwrap_or_default();
    Some(Response::json(
        200,
        format!(
            r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":{}{scope}}}"#,
            config.ttl_secs
        ),
    ))
}

fn api(request: &Request, state: &State) -> Response {
    state.api_requests.fetch_add(1, Ordering::SeqCst);
    let token = request
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let mut shared = state.shared.lock().unwrap();
    shared.last_api_authorization = Some(request.header("authorization").map(str::to_owned));
    let forced = matches!(
        shared.api_faults.pop_front(),
        Some(ApiFault::UnauthorizedOnce)
    );
    let valid = match token.as_ref().and_then(|t| shared.tokens.get_mut(t)) {
        Some(issued) if forced => {
            issued.revoked = true;
            false
        }
        Some(issued) => !issued.revoked && Instant::now() < issued.expires,
        None => false,
    };
    drop(shared);
    if !valid {
        state.api_rejected.fetch_add(1, Ordering::SeqCst);
        return Response {
            status: 401,
            headers: vec![("WWW-Authenticate", r#"Bearer error="invalid_token""#.into())],
            body: Vec::new(),
        };
    }
    Response::json(
        200,
        format!(r#"{{"ok":true,"bytes_received":{}}}"#, request.body.len()),
    )
}

fn oauth_error(status: u16, code: &str) -> Response {
    Response::json(status, format!(r#"{{"error":"{code}"}}"#))
}

fn form_decode(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte.
fn percent_decode(text: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 6749 §2.3.1: `Basic base64(urlencode(id) ":" urlencode(secret))`.
fn decode_basic(header: &str) -> Option<(String, String)> {
    let encoded = header.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(base64_decode(encoded.trim())?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((percent_decode(id), percent_decode(secret)))
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut buffer = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|&c| c != b'=') {
        let value = ALPHABET.iter().position(|&a| a == c)? as u32;
        buffer = (buffer << 6) | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Some(out)
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        assert_eq!(percent_decode("a+b%20c%3A%zz%4"), "a b c:%zz%4");
        assert_eq!(percent_decode("caf%C3%A9"), "café");
        assert_eq!(
            form_decode(b"grant_type=client_credentials&scope=a+b&&x"),
            vec![
                ("grant_type".into(), "client_credentials".into()),
                ("scope".into(), "a b".into()),
                ("x".into(), String::new())
            ]
        );
    }

    #[test]
    fn basic_credentials_decoding() {
        // base64("my+client:p%3Aw") per RFC 6749 §2.3.1.
        assert_eq!(
            decode_basic("Basic bXkrY2xpZW50OnAlM0F3"),
            Some(("my client".into(), "p:w".into()))
        );
        assert_eq!(decode_basic("Bearer x"), None);
        assert_eq!(decode_basic("Basic !!!"), None);
    }
}
