//! Sending the core's token and discovery requests with reqwest, within bounds.
//!
//! reqwest is async and the engine's [`Transport`] is blocking, called on the
//! engine's own threads (never inside the application's runtime): the
//! transport owns a small tokio runtime with two worker threads, made once.
//! Each send is a task on it, and the engine thread waits for the task's
//! answer on a standard channel, at most the options' timeout: that deadline
//! is kept by the operating system, not by tokio's timer, so a server that
//! keeps the connection task busy (an endless stream of `1xx` heads, which
//! hyper parses without returning to the scheduler for seconds) cannot hold
//! a token request past it. The task is then aborted (it stops at its next
//! turn), and the other worker is free for the next token request.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use token_keeper::api_call::may_carry_body;
use token_keeper::{ConfigError, Proxy, TransportError, TransportErrorKind};
use token_keeper_driver::tls::{TlsError, TlsRoots, TlsSettings};
use token_keeper_driver::{Error, Transport};

/// A rustls configuration on ring for `tls`: the Mozilla roots of
/// `webpki-roots` plus the settings' extra CA certificates. Give it to
/// [`reqwest::ClientBuilder::tls_backend_preconfigured`] (this is what
/// [`TokenMiddleware::client_builder`](crate::TokenMiddleware::client_builder)
/// does) so that a reqwest built without a crypto provider of its own
/// (`default-features = false, features = ["rustls-no-provider"]`) has TLS
/// on ring, and your API requests trust what token requests trust:
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use token_keeper_reqwest::{tls_config, TlsSettings};
/// let tls = TlsSettings::webpki().with_ca_file("corp-ca.pem".as_ref())?;
/// let http = reqwest::Client::builder()
///     .tls_backend_preconfigured(tls_config(&tls)?)
///     .build()?;
/// # Ok(()) }
/// ```
///
/// The operating system's store (`TlsSettings::platform()`) is not supported
/// by this adapter yet: it is refused.
pub fn tls_config(tls: &TlsSettings) -> Result<rustls::ClientConfig, TlsError> {
    match tls.roots() {
        TlsRoots::Webpki => {
            let mut roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            for certificate in tls.extra_certificates() {
                roots
                    .add(certificate.clone())
                    .map_err(|e| TlsError::new(format!("unusable CA certificate: {e}")))?;
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            Ok(rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::new(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth())
        }
        #[allow(unreachable_patterns)]
        _ => Err(TlsError::new(
            "the reqwest adapter supports the Mozilla roots (with extra CAs) only, not the \
             operating system's store",
        )),
    }
}

/// Sends token and discovery requests for the engine: reqwest clients of its
/// own (no redirects, no proxy but the one the engine passes, bounded in
/// time), driven by a two-worker runtime of its own.
pub(crate) struct ReqwestTransport {
    /// Always `Some` until dropped (see `Drop`).
    runtime: Option<tokio::runtime::Runtime>,
    /// Requests the core sends directly.
    direct: reqwest::Client,
    /// One client per proxy the core tunnels through (the settings are fixed
    /// per client, so this holds one entry, rarely more), made on first use.
    tunnels: Mutex<Vec<(Proxy, reqwest::Client)>>,
    tls: rustls::ClientConfig,
    connect_timeout: Duration,
    timeout: Duration,
}

impl ReqwestTransport {
    pub(crate) fn new(
        tls: &TlsSettings,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<ReqwestTransport, Error> {
        let tls = tls_config(tls)?;
        // Two workers: while a hostile server keeps one busy (see the module
        // docs), the other sends the next token request.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("token-keeper-reqwest")
            .build()
            .map_err(|_| {
                Error::Config(ConfigError::new(
                    "cannot start the runtime of the reqwest token transport",
                ))
            })?;
        let direct = token_client(&tls, connect_timeout, timeout, None).map_err(|_| {
            Error::Config(ConfigError::new(
                "cannot build the reqwest client for token requests",
            ))
        })?;
        Ok(ReqwestTransport {
            runtime: Some(runtime),
            direct,
            tunnels: Mutex::new(Vec::new()),
            tls,
            connect_timeout,
            timeout,
        })
    }

    /// The client that goes through `via` (made and kept on first use).
    fn tunnel(&self, via: &Proxy) -> Result<reqwest::Client, TransportError> {
        let mut tunnels = self.tunnels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, client)) = tunnels.iter().find(|(p, _)| p == via) {
            return Ok(client.clone());
        }
        let client = token_client(&self.tls, self.connect_timeout, self.timeout, Some(via));
        let client = client.map_err(|e| {
            TransportError::new(
                TransportErrorKind::Connect,
                format!(
                    "unusable proxy {}: {}",
                    via.url_without_credentials(),
                    describe(&e)
                ),
            )
        })?;
        tunnels.push((via.clone(), client.clone()));
        Ok(client)
    }
}

/// A client for token requests, through `via` or direct: no redirects (a
/// token request carries the client's credentials), no proxy from the
/// environment, no idle connections kept (token requests are rare; a fresh
/// connection each never reads an earlier exchange's leftovers), TLS on ring,
/// and the options' timeouts.
fn token_client(
    tls: &rustls::ClientConfig,
    connect_timeout: Duration,
    timeout: Duration,
    via: Option<&Proxy>,
) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .pool_max_idle_per_host(0)
        .connect_timeout(connect_timeout)
        .timeout(timeout)
        .user_agent(concat!("token-keeper/", env!("CARGO_PKG_VERSION")))
        .tls_backend_preconfigured(tls.clone());
    if let Some(via) = via {
        builder = builder.proxy(reqwest_proxy(via)?);
    }
    builder.build()
}

/// reqwest's form of a proxy the core decided to tunnel through: an HTTP
/// proxy (reqwest tunnels `https` destinations with `CONNECT`), its
/// credentials, if any, as the core's ready `Proxy-Authorization` value
/// (marked sensitive).
fn reqwest_proxy(via: &Proxy) -> Result<reqwest::Proxy, reqwest::Error> {
    // The core keeps an IPv6 host without its brackets.
    let host = if via.host().contains(':') {
        format!("[{}]", via.host())
    } else {
        via.host().to_owned()
    };
    let proxy = reqwest::Proxy::all(format!("http://{host}:{}", via.port()))?;
    Ok(match via.authorization() {
        Some(authorization) => proxy.custom_http_auth(authorization.clone()),
        None => proxy,
    })
}

impl std::fmt::Debug for ReqwestTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReqwestTransport")
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Transport for ReqwestTransport {
    /// Sends `request` (through `via`, with the client kept for it) and reads
    /// at most `max_body + 1` bytes of the answer, so the core can tell an
    /// over-long body from one that fits.
    fn send(
        &self,
        request: http::Request<Vec<u8>>,
        via: Option<&Proxy>,
        max_body: usize,
    ) -> Result<http::Response<Vec<u8>>, TransportError> {
        let client = match via {
            None => self.direct.clone(),
            Some(via) => self.tunnel(via)?,
        };
        let send_body = !request.body().is_empty() || may_carry_body(request.method());
        let mut request = reqwest::Request::try_from(request).map_err(|_| {
            TransportError::new(
                TransportErrorKind::Other,
                "cannot build the request: unusable URL",
            )
        })?;
        if !send_body {
            // No `Content-Length: 0` on a GET.
            *request.body_mut() = None;
        }
        let exchange = async move {
            let mut response = client.execute(request).await.map_err(classify)?;
            let mut builder = http::Response::builder()
                .status(response.status())
                .version(response.version());
            if let Some(headers) = builder.headers_mut() {
                *headers = std::mem::take(response.headers_mut());
            }
            let mut body = Vec::new();
            while body.len() <= max_body {
                let Some(chunk) = response.chunk().await.map_err(classify)? else {
                    break;
                };
                let room = max_body + 1 - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            builder.body(body).map_err(|_| {
                TransportError::new(TransportErrorKind::Other, "unusable response head")
            })
        };
        let timeout = self.timeout;
        let Some(runtime) = &self.runtime else {
            return Err(TransportError::new(
                TransportErrorKind::Other,
                "the token transport is shut down",
            ));
        };
        // reqwest's own timeout covers the body too; tokio's bounds the whole
        // exchange whatever the library does, while the scheduler gets to
        // run its timers; the channel's bounds it in any case.
        let (answer, answered) = std::sync::mpsc::sync_channel(1);
        let task = runtime.spawn(async move {
            let result = tokio::time::timeout(timeout, exchange)
                .await
                .unwrap_or_else(|_| Err(timed_out(timeout)));
            let _ = answer.send(result);
        });
        match answered.recv_timeout(timeout + DEADLINE_GRACE) {
            Ok(result) => result,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                task.abort();
                Err(timed_out(timeout))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(TransportError::new(
                TransportErrorKind::Other,
                "the exchange ended without an answer",
            )),
        }
    }
}

/// The error of an exchange that took longer than `timeout`.
fn timed_out(timeout: Duration) -> TransportError {
    TransportError::new(
        TransportErrorKind::Timeout,
        format!("no complete answer within {} ms", timeout.as_millis()),
    )
}

/// How long after the timeout the engine thread stops waiting for the
/// exchange's own timeout to answer (tokio's timers run only when the
/// connection task lets the worker go).
const DEADLINE_GRACE: Duration = Duration::from_millis(100);

/// The last clone of a client may be dropped anywhere, inside the
/// application's runtime too, where dropping a runtime (which waits for its
/// blocking threads) panics: shut it down without waiting. No connection is
/// kept idle, so nothing of value is cut short.
impl Drop for ReqwestTransport {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// What went wrong, from reqwest's error and its sources (I/O, TLS, hyper),
/// without the URL: no header or body is ever in them.
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}

/// Maps reqwest's error to the core's transport error kinds.
fn classify(error: reqwest::Error) -> TransportError {
    let error = error.without_url();
    let kind = if error.is_timeout() {
        TransportErrorKind::Timeout
    } else if error.is_connect() {
        TransportErrorKind::Connect
    } else if error.is_body() || error.is_request() || error.is_decode() {
        TransportErrorKind::Io
    } else {
        TransportErrorKind::Other
    };
    TransportError::new(kind, describe(&error))
}

#[cfg(test)]
mod tests {
    use super::*;
    use token_keeper::{ProxyDecision, ProxySettings};

    #[test]
    fn an_ipv6_proxy_with_credentials_is_usable() {
        let settings = ProxySettings::explicit("http://u:p@[::1]:3128", "").unwrap();
        let remote: http::Uri = "https://idp.test/token".parse().unwrap();
        let ProxyDecision::Tunnel(via) = settings.decide(&remote) else {
            panic!("an explicit proxy tunnels a remote destination");
        };
        let proxy = reqwest_proxy(via).unwrap();
        let shown = format!("{proxy:?}");
        assert!(!shown.contains("u:p") && !shown.contains("dTpw"), "{shown}");
    }

    #[test]
    fn the_default_tls_settings_give_a_ring_config() {
        let config = tls_config(&TlsSettings::default()).unwrap();
        assert!(config.alpn_protocols.is_empty());
    }
}
