//! A cached-token GET through the reqwest middleware against a bare reqwest
//! GET that carries a fixed header, on the same local API, alternated A/B.
//!
//! `cargo bench -p token-keeper-reqwest --bench middleware_ab [-- PAIRS REQUESTS]`
//!
//! Each pair runs the same number of sequential GETs on each client
//! (keep-alive connections, warmed up) in the order ABBA or BAAB by turns;
//! the figure is the median over pairs of (middleware throughput / bare
//! throughput). Both clients run on one current-thread tokio runtime.

use std::time::{Duration, Instant};

use token_keeper::{ClientAuth, ClientConfig, ClientSecret};
use token_keeper_reqwest::{ReqwestTokenClient, TokenMiddleware};
use token_keeper_testkit::{LocalAuthServer, ServerConfig};

async fn run(
    client: &reqwest_middleware::ClientWithMiddleware,
    url: &str,
    header: Option<&str>,
    requests: u32,
) -> Duration {
    let start = Instant::now();
    for _ in 0..requests {
        let mut request = client.get(url);
        if let Some(h) = header {
            request = request.header("Authorization", h);
        }
        let response = request.send().await.expect("GET");
        assert_eq!(response.status(), 200);
        response.bytes().await.expect("body");
    }
    start.elapsed()
}

fn main() {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let pairs = args.first().copied().unwrap_or(20).max(10);
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
        let url = format!("{}/bench", server.api_url());
        let build = || TokenMiddleware::client_builder().build().unwrap();
        let bare = reqwest_middleware::ClientBuilder::new(build()).build();
        let managed = reqwest_middleware::ClientBuilder::new(build())
            .with(
                TokenMiddleware::new(tokens.clone())
                    .route(&server.base_url(), "m2m")
                    .unwrap(),
            )
            .build();

        run(&bare, &url, Some(&fixed), requests / 4).await;
        run(&managed, &url, None, requests / 4).await;

        let mut ratios = Vec::new();
        println!("pair  bare req/s  middleware req/s  ratio");
        for pair in 0..pairs {
            // ABBA within each pair, starting with A or B by turns: the first
            // run after a switch is slower on this server (a new connection
            // thread), which a plain AB order would charge to one side.
            let half = requests / 2;
            let (bare_time, managed_time) = if pair % 2 == 0 {
                let b1 = run(&bare, &url, Some(&fixed), half).await;
                let m1 = run(&managed, &url, None, half).await;
                let m2 = run(&managed, &url, None, half).await;
                let b2 = run(&bare, &url, Some(&fixed), half).await;
                (b1 + b2, m1 + m2)
            } else {
                let m1 = run(&managed, &url, None, half).await;
                let b1 = run(&bare, &url, Some(&fixed), half).await;
                let b2 = run(&bare, &url, Some(&fixed), half).await;
                let m2 = run(&managed, &url, None, half).await;
                (b1 + b2, m1 + m2)
            };
            let requests = half * 2;
            let bare_rate = f64::from(requests) / bare_time.as_secs_f64();
            let managed_rate = f64::from(requests) / managed_time.as_secs_f64();
            let ratio = managed_rate / bare_rate;
            ratios.push(ratio);
            println!("{pair:>4}  {bare_rate:>10.0}  {managed_rate:>16.0}  {ratio:.3}");
        }
        // The two orders favour opposite sides on this server: the geometric
        // mean of each ABBA/BAAB couple of pairs cancels the order out.
        let summary = token_keeper_testkit::ab::summarize(&ratios);
        println!(
            "{pairs} pairs of {requests} GETs; token requests: {}\n{summary}",
            server.token_requests()
        );
    });
}
