//! A cached-token GET through `TokenLayer` over hyper-util's client against
//! the bare hyper-util client carrying a fixed header, on the same local
//! API, alternated A/B.
//!
//! `cargo bench -p token-keeper-tower --bench layer_ab [-- PAIRS REQUESTS]`
//!
//! Each pair runs the same number of sequential GETs on each client
//! (keep-alive connections, warmed up) in the order ABBA or BAAB by turns;
//! the figure is the median over pairs of (layer throughput / bare
//! throughput), and its order-balanced form (the geometric mean of each
//! ABBA/BAAB couple of pairs). Both clients run on one current-thread tokio
//! runtime.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioExecutor;
use token_keeper::{ClientAuth, ClientConfig, ClientSecret};
use token_keeper_testkit::{LocalAuthServer, ServerConfig};
use token_keeper_tower::{ReqwestTokenClient, TokenLayer};
use tower::{Service, ServiceExt};

async fn run<S, B>(client: &mut S, url: &str, header: Option<&str>, requests: u32) -> Duration
where
    S: Service<http::Request<Full<Bytes>>, Response = http::Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let start = Instant::now();
    for _ in 0..requests {
        let mut request = http::Request::get(url);
        if let Some(h) = header {
            request = request.header("Authorization", h);
        }
        let request = request.body(Full::default()).unwrap();
        let response = client.ready().await.unwrap().call(request).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
    }
    start.elapsed()
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
        let fixed = tokens.header("m2m").await.unwrap().to_str().unwrap().to_owned();
        let url = format!("{}/bench", server.api_url());
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

        run(&mut bare, &url, Some(&fixed), requests / 4).await;
        run(&mut managed, &url, None, requests / 4).await;

        let mut ratios = Vec::new();
        println!("pair  bare req/s  layer req/s  ratio");
        for pair in 0..pairs {
            // ABBA within each pair, starting with A or B by turns (see the
            // reqwest adapter's bench: the order favours one side on this server).
            let half = requests / 2;
            let (bare_time, managed_time) = if pair % 2 == 0 {
                let b1 = run(&mut bare, &url, Some(&fixed), half).await;
                let m1 = run(&mut managed, &url, None, half).await;
                let m2 = run(&mut managed, &url, None, half).await;
                let b2 = run(&mut bare, &url, Some(&fixed), half).await;
                (b1 + b2, m1 + m2)
            } else {
                let m1 = run(&mut managed, &url, None, half).await;
                let b1 = run(&mut bare, &url, Some(&fixed), half).await;
                let b2 = run(&mut bare, &url, Some(&fixed), half).await;
                let m2 = run(&mut managed, &url, None, half).await;
                (b1 + b2, m1 + m2)
            };
            let requests = half * 2;
            let bare_rate = f64::from(requests) / bare_time.as_secs_f64();
            let managed_rate = f64::from(requests) / managed_time.as_secs_f64();
            let ratio = managed_rate / bare_rate;
            ratios.push(ratio);
            println!("{pair:>4}  {bare_rate:>10.0}  {managed_rate:>11.0}  {ratio:.3}");
        }
        let mut balanced: Vec<f64> = ratios
            .chunks_exact(2)
            .map(|couple| (couple[0] * couple[1]).sqrt())
            .collect();
        balanced.sort_by(f64::total_cmp);
        let balanced_median =
            (balanced[balanced.len() / 2] + balanced[(balanced.len() - 1) / 2]) / 2.0;
        ratios.sort_by(f64::total_cmp);
        let median = (ratios[ratios.len() / 2] + ratios[(ratios.len() - 1) / 2]) / 2.0;
        println!(
            "median ratio {median:.3} over {pairs} pairs of {requests} GETs (min {:.3}, max {:.3}); token requests: {}",
            ratios[0],
            ratios[ratios.len() - 1],
            server.token_requests()
        );
        println!(
            "order-balanced: median {balanced_median:.3} over {} couples of pairs (min {:.3}, max {:.3})",
            balanced.len(),
            balanced[0],
            balanced[balanced.len() - 1]
        );
    });
}
