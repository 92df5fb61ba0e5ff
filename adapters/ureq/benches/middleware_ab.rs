//! A cached-token GET through the middleware against a bare ureq GET that
//! carries a fixed header, on the same local API, alternated A/B.
//!
//! `cargo bench -p token-keeper-ureq --bench middleware_ab [-- PAIRS REQUESTS]`
//!
//! Each pair runs the same number of sequential GETs on each agent (keep-alive
//! connections, warmed up), alternating which goes first; the figure is the
//! median over pairs of (middleware throughput / bare throughput).

use std::time::{Duration, Instant};

use token_keeper::{ClientAuth, ClientConfig, ClientSecret};
use token_keeper_testkit::{LocalAuthServer, ServerConfig};
use token_keeper_ureq::{TokenClient, TokenMiddleware};

fn run(agent: &ureq::Agent, url: &str, header: Option<&str>, requests: u32) -> Duration {
    let start = Instant::now();
    for _ in 0..requests {
        let mut request = agent.get(url);
        if let Some(h) = header {
            request = request.header("Authorization", h);
        }
        let response = request.call().expect("GET");
        assert_eq!(response.status(), 200);
    }
    start.elapsed()
}

fn main() {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let pairs = args.first().copied().unwrap_or(30).max(10);
    let requests = args.get(1).copied().unwrap_or(3000);

    let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let tokens = TokenClient::new();
    let config = ClientConfig::new(
        &server.token_url(),
        "m2m",
        ClientAuth::Basic(ClientSecret::new("s3cret")),
    )
    .unwrap();
    tokens.add_client("m2m", config).unwrap();
    let fixed = tokens.header("m2m").unwrap().to_str().unwrap().to_owned();
    let url = format!("{}/bench", server.api_url());

    let bare = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let managed = TokenMiddleware::new(tokens.clone())
        .route(&server.base_url(), "m2m")
        .unwrap()
        .build_agent(|| ureq::Agent::config_builder().http_status_as_error(false));

    run(&bare, &url, Some(&fixed), requests / 4);
    run(&managed, &url, None, requests / 4);

    let mut ratios = Vec::new();
    println!("pair  bare req/s  middleware req/s  ratio");
    for pair in 0..pairs {
        let (bare_time, managed_time) = if pair % 2 == 0 {
            let b = run(&bare, &url, Some(&fixed), requests);
            (b, run(&managed, &url, None, requests))
        } else {
            let m = run(&managed, &url, None, requests);
            (run(&bare, &url, Some(&fixed), requests), m)
        };
        let bare_rate = f64::from(requests) / bare_time.as_secs_f64();
        let managed_rate = f64::from(requests) / managed_time.as_secs_f64();
        let ratio = managed_rate / bare_rate;
        ratios.push(ratio);
        println!("{pair:>4}  {bare_rate:>10.0}  {managed_rate:>16.0}  {ratio:.3}");
    }
    ratios.sort_by(f64::total_cmp);
    let median = (ratios[ratios.len() / 2] + ratios[(ratios.len() - 1) / 2]) / 2.0;
    println!(
        "median ratio {median:.3} over {pairs} pairs of {requests} GETs (min {:.3}, max {:.3}); token requests: {}",
        ratios[0],
        ratios[ratios.len() - 1],
        server.token_requests()
    );
}
