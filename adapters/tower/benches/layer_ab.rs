//! A cached-token GET through `TokenLayer` over hyper-util's client against
//! the bare hyper-util client carrying a fixed header, on the same loopback
//! API, alternated A/B.
//!
//! The API is a hyper HTTP/1.1 server on a one-thread runtime of its own
//! (answering `200` and a small JSON body): the testkit's thread-per-
//! connection server showed a ±30 % (per-run turns) to ×3 (per-request
//! turns) position effect between two clients' connections, larger than
//! anything measured here. Tokens come from the testkit's local server.
//!
//! `cargo bench -p token-keeper-tower --bench layer_ab [-- PAIRS REQUESTS]`
//!
//! Each pair sends REQUESTS GETs on each client (keep-alive connections,
//! warmed up), one by one in turns, A then B or B then A by turns, each timed
//! on its own (a per-run ABBA order showed a ±30 % position effect on this
//! server); the figure is the median over pairs of (layer throughput / bare
//! throughput), and its order-balanced form (the geometric mean of
//! consecutive pairs). Both clients run on one current-thread tokio
//! runtime.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioExecutor;
use token_keeper::{ClientAuth, ClientConfig, ClientSecret};
use token_keeper_testkit::{LocalAuthServer, ServerConfig};
use token_keeper_tower::{ReqwestTokenClient, TokenLayer};
use tower::{Service, ServiceExt};

/// One GET on `client`, read whole; its time.
async fn one<S, B>(client: &mut S, url: &str, header: Option<&str>) -> Duration
where
    S: Service<http::Request<Full<Bytes>>, Response = http::Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let start = Instant::now();
    let mut request = http::Request::get(url);
    if let Some(h) = header {
        request = request.header("Authorization", h);
    }
    let request = request.body(Full::default()).unwrap();
    let response = client.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap();
    start.elapsed()
}

/// A hyper HTTP/1.1 server on 127.0.0.1 on a thread and runtime of its
/// own, answering every request `200` with a small JSON body; its address.
fn api_server() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let answer = hyper::service::service_fn(|_request| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"{\"ok\":true}"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), answer)
                        .await;
                });
            }
        });
    });
    addr
}

fn main() {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let pairs = args.first().copied().unwrap_or(20).max(10) / 2 * 2;
    let requests = args.get(1).copied().unwrap_or(3000);

    let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let tokens = ReqwestTokenClient::new();
        let config = ClientConfig::new(
            &server.token_url(),
            "m2m",
            ClientAuth::Basic(ClientSecret::new("s3cret")),
        )
        .unwrap();
        tokens.add_client("m2m", config).unwrap();
        let fixed = tokens
            .header("m2m")
            .await
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let url = format!("http://{}/bench", api_server());
        let build = || {
            hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .build_http::<Full<Bytes>>()
        };
        let mut bare = build();
        let mut managed = tower::ServiceBuilder::new()
            .layer(
                TokenLayer::new(&tokens)
                    .route(&server.base_url(), "m2m")
                    .unwrap(),
            )
            .service(build());

        for _ in 0..requests / 4 {
            one(&mut bare, &url, Some(&fixed)).await;
            one(&mut managed, &url, None).await;
        }

        let mut ratios = Vec::new();
        println!("pair  bare req/s  layer req/s  ratio");
        for pair in 0..pairs {
            // Request by request, A and B in turns (which goes first
            // alternates): drift in the machine or the server reaches both
            // sides alike.
            let (mut bare_time, mut managed_time) = (Duration::ZERO, Duration::ZERO);
            for i in 0..requests {
                if (i + pair) % 2 == 0 {
                    bare_time += one(&mut bare, &url, Some(&fixed)).await;
                    managed_time += one(&mut managed, &url, None).await;
                } else {
                    managed_time += one(&mut managed, &url, None).await;
                    bare_time += one(&mut bare, &url, Some(&fixed)).await;
                }
            }
            let bare_rate = f64::from(requests) / bare_time.as_secs_f64();
            let managed_rate = f64::from(requests) / managed_time.as_secs_f64();
            let ratio = managed_rate / bare_rate;
            ratios.push(ratio);
            println!("{pair:>4}  {bare_rate:>10.0}  {managed_rate:>11.0}  {ratio:.3}");
        }
        let summary = token_keeper_testkit::ab::summarize(&ratios);
        println!(
            "{pairs} pairs of {requests} GETs; token requests: {}\n{summary}",
            server.token_requests()
        );
    });
}
