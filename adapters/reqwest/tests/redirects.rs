//! A client built with `TokenMiddleware::client_builder` follows no redirect:
//! a request that carries a token gets the 3xx back, and the token (and any
//! proof) never reaches the `Location`.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;

use token_keeper_reqwest::{ReqwestTokenClient, TokenMiddleware};
use token_keeper_testkit::fixtures::secret_client;
use token_keeper_testkit::{LocalAuthServer, ServerConfig};

/// Answers one request with `302 Found` to `location`, and sends back the
/// request head it read.
fn redirector(location: String) -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let (heads, received) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
            if stream.read(&mut byte).unwrap() == 0 {
                break;
            }
            head.push(byte[0]);
        }
        let answer = format!(
            "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n"
        );
        stream.write_all(answer.as_bytes()).unwrap();
        let _ = heads.send(String::from_utf8_lossy(&head).into_owned());
    });
    (origin, received)
}

#[test]
fn a_request_with_a_token_gets_the_redirect_back() {
    let idp = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let elsewhere = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let (origin, heads) = redirector(elsewhere.api_url());
    let tokens = ReqwestTokenClient::new();
    tokens
        .add_client("m2m", secret_client(&idp.token_url()))
        .unwrap();
    let middleware = TokenMiddleware::new(tokens).route(&origin, "m2m").unwrap();
    let http = TokenMiddleware::client_builder()
        .no_proxy()
        .build()
        .unwrap();
    let api = reqwest_middleware::ClientBuilder::new(http)
        .with(middleware)
        .build();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let response = runtime
        .block_on(api.get(format!("{origin}/orders")).send())
        .unwrap();
    assert_eq!(response.status().as_u16(), 302);
    let head = heads.recv().unwrap().to_ascii_lowercase();
    assert!(head.contains("authorization: bearer "), "{head}");
    assert_eq!(elsewhere.api_requests(), 0, "the redirect was not followed");
    assert_eq!(idp.token_requests(), 1);
}
