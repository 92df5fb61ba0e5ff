//! `DirectHttp` over TLS: a rustls token endpoint on 127.0.0.1 with a
//! certificate from a test CA (`tests/fixtures/`, see its README).
//!
//! The plain-HTTP paths (bounded reads, interim answers, bodies until close,
//! error kinds) run in the workspace's hostile-server suite; this file proves
//! the handshake: trusted roots work, the webpki roots refuse a private CA,
//! and the server name is checked.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use token_keeper::{ClientAuth, ClientConfig, ClientSecret, TransportErrorKind};
use token_keeper_surf::{AsyncTokenClient, ClientOptions, DirectHttp, Error, TokenTransport};

const CA: &[u8] = include_bytes!("fixtures/test-ca.der");
const CERT: &[u8] = include_bytes!("fixtures/localhost-cert.der");
const KEY: &[u8] = include_bytes!("fixtures/localhost-key.pk8.der");
const BODY: &str = r#"{"access_token":"tls-token","token_type":"Bearer","expires_in":3600}"#;

/// How the test endpoint frames and ends its answer.
#[derive(Clone, Copy)]
enum Ending {
    /// `Content-Length`, then `close_notify`.
    Length,
    /// No length: the body runs until the close, which `close_notify` marks.
    CloseNotify,
    /// No length, and a bare TCP close: the answer could have been cut short.
    BareClose,
}

/// What the endpoint received on one connection: the head, and the body it
/// announced (both empty when the handshake failed).
type Received = (String, Vec<u8>);

/// A TLS token endpoint that serves `connections` connections, then ends.
fn tls_token_endpoint(connections: usize, ending: Ending) -> (u16, JoinHandle<Vec<Received>>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(CERT.to_vec())],
            PrivateKeyDer::try_from(KEY.to_vec()).unwrap(),
        )
        .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let mut received = Vec::new();
        for _ in 0..connections {
            let tcp = accept_within(&listener, Duration::from_secs(20));
            tcp.set_nonblocking(false).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let connection = rustls::ServerConnection::new(Arc::clone(&config)).unwrap();
            let mut tls = rustls::StreamOwned::new(connection, tcp);
            // Read the head (a failed handshake ends here with an error).
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") && request.len() < 16 * 1024 {
                match tls.read(&mut byte) {
                    Ok(1) => request.push(byte[0]),
                    _ => break,
                }
            }
            let head = String::from_utf8_lossy(&request).into_owned();
            let mut body = Vec::new();
            if head.ends_with("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                body = vec![0u8; length];
                tls.read_exact(&mut body).unwrap();
                let answer = match ending {
                    Ending::Length => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
                        BODY.len()
                    ),
                    Ending::CloseNotify | Ending::BareClose => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{BODY}"
                    ),
                };
                tls.write_all(answer.as_bytes()).unwrap();
                tls.flush().unwrap();
                if !matches!(ending, Ending::BareClose) {
                    tls.conn.send_close_notify();
                    tls.flush().unwrap();
                }
                // A bare close: the TCP stream is dropped with the TLS stream.
            }
            received.push((head, body));
        }
        received
    });
    (port, server)
}

/// The next connection, or a panic after `limit` (a client that failed
/// before connecting must not hang the test).
fn accept_within(listener: &TcpListener, limit: Duration) -> std::net::TcpStream {
    let deadline = Instant::now() + limit;
    loop {
        match listener.accept() {
            Ok((tcp, _)) => return tcp,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("no connection: {e}"),
        }
    }
}

/// `error` is a transport error of `kind`, whose message says `says`.
fn assert_transport_error(error: &Error, kind: TransportErrorKind, says: Option<&str>) {
    match error {
        Error::Transport(e) => {
            assert_eq!(e.kind(), kind, "{error}");
            if let Some(says) = says {
                assert!(e.to_string().contains(says), "{error}");
            }
        }
        other => panic!("expected a transport error, got {other:?}"),
    }
}

fn client(transport: impl Into<TokenTransport>, token_url: &str) -> AsyncTokenClient {
    let tokens = AsyncTokenClient::with_options(
        transport,
        ClientOptions {
            timeout: Duration::from_secs(10),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    tokens
        .add_client(
            "tls",
            ClientConfig::new(
                token_url,
                "tls-client",
                ClientAuth::Basic(ClientSecret::new("tls-secret")),
            )
            .unwrap(),
        )
        .unwrap();
    tokens
}

#[test]
fn a_token_over_tls_from_a_server_under_a_trusted_root() {
    let (port, server) = tls_token_endpoint(2, Ending::Length);
    let http = DirectHttp::with_root_certificates([CA]).unwrap();
    // By IP address (the certificate names 127.0.0.1) and by DNS name.
    for host in ["127.0.0.1", "localhost"] {
        let tokens = client(
            http.clone(),
            &format!("https://{host}:{port}/connect/token"),
        );
        let token = async_io::block_on(tokens.token("tls")).unwrap();
        assert_eq!(token.access_token.expose_secret(), "tls-token", "{host}");
    }
    let received = server.join().unwrap();
    assert_eq!(received.len(), 2);
    for ((head, body), host) in received.iter().zip(["127.0.0.1", "localhost"]) {
        assert!(
            head.starts_with("POST /connect/token HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("\r\nHost: {host}:{port}\r\n")),
            "{head}"
        );
        assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
        // The credentials and the form arrived whole through TLS.
        assert!(
            head.contains("\r\nauthorization: Basic dGxzLWNsaWVudDp0bHMtc2VjcmV0\r\n"),
            "{head}"
        );
        assert_eq!(body.as_slice(), b"grant_type=client_credentials");
    }
}

#[test]
fn a_body_until_close_needs_close_notify() {
    let (port, server) = tls_token_endpoint(1, Ending::CloseNotify);
    let tokens = client(
        DirectHttp::with_root_certificates([CA]).unwrap(),
        &format!("https://127.0.0.1:{port}/connect/token"),
    );
    let token = async_io::block_on(tokens.token("tls")).unwrap();
    assert_eq!(token.access_token.expose_secret(), "tls-token");
    server.join().unwrap();

    // Without close_notify the end cannot be told from a cut: refused.
    let (port, server) = tls_token_endpoint(1, Ending::BareClose);
    let tokens = client(
        DirectHttp::with_root_certificates([CA]).unwrap(),
        &format!("https://127.0.0.1:{port}/connect/token"),
    );
    let error = async_io::block_on(tokens.token("tls")).unwrap_err();
    assert_transport_error(&error, TransportErrorKind::Io, None);
    server.join().unwrap();
}

#[test]
fn the_webpki_roots_refuse_a_private_ca() {
    let (port, server) = tls_token_endpoint(1, Ending::Length);
    let tokens = client(
        DirectHttp::new(),
        &format!("https://127.0.0.1:{port}/connect/token"),
    );
    let error = async_io::block_on(tokens.token("tls")).unwrap_err();
    assert_transport_error(&error, TransportErrorKind::Connect, Some("TLS handshake"));
    // The server saw no request: the handshake failed first.
    assert_eq!(server.join().unwrap(), vec![(String::new(), Vec::new())]);
}

#[test]
#[cfg(target_os = "linux")] // 127.0.0.2 is a loopback address only on Linux
fn a_certificate_for_another_name_is_refused() {
    let (port, server) = tls_token_endpoint(1, Ending::Length);
    // The certificate names 127.0.0.1 and localhost, not 127.0.0.2 (also loopback).
    let listener_host = "127.0.0.2";
    let forward = TcpListener::bind((listener_host, 0)).unwrap();
    let forward_port = forward.local_addr().unwrap().port();
    // A one-connection TCP relay from 127.0.0.2 to the TLS server.
    let relay = std::thread::spawn(move || {
        let (mut inbound, _) = forward.accept().unwrap();
        let mut outbound = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut inbound_copy = inbound.try_clone().unwrap();
        let mut outbound_copy = outbound.try_clone().unwrap();
        let up = std::thread::spawn(move || {
            let _ = std::io::copy(&mut inbound_copy, &mut outbound_copy);
            let _ = outbound_copy.shutdown(std::net::Shutdown::Write);
        });
        let _ = std::io::copy(&mut outbound, &mut inbound);
        let _ = inbound.shutdown(std::net::Shutdown::Both);
        let _ = up.join();
    });
    let tokens = client(
        DirectHttp::with_root_certificates([CA]).unwrap(),
        &format!("https://{listener_host}:{forward_port}/connect/token"),
    );
    let error = async_io::block_on(tokens.token("tls")).unwrap_err();
    assert_transport_error(&error, TransportErrorKind::Connect, Some("TLS handshake"));
    assert_eq!(server.join().unwrap(), vec![(String::new(), Vec::new())]);
    relay.join().unwrap();
}

#[test]
fn a_root_that_is_not_a_certificate_is_refused() {
    let error =
        DirectHttp::with_root_certificates([CA, b"not a certificate".as_slice()]).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("root certificate #1 is not usable"),
        "{error}"
    );
    let error = DirectHttp::with_root_certificates(std::iter::empty::<&[u8]>()).unwrap_err();
    assert!(error.to_string().contains("no root certificate"), "{error}");
}
