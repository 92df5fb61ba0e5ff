//! `tokenctl call` and `tokenctl demo`.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use token_keeper::{ClientAuth, ClientConfig, ClientSecret};
use token_keeper_testkit::{LocalAuthServer, ServerConfig};
use token_keeper_ureq::{Error, TokenClient, TokenMiddleware};

use crate::Managed;

use crate::args::Amount;
use crate::{millis, token_exit_code, Failure};

/// The outcome of a run of API calls.
#[derive(Debug, Default)]
pub struct Summary {
    pub requests: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub token_requests: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// The first failure, to explain the exit code.
    pub first_failure: Option<(String, u8)>,
}

fn origin_of(url: &str) -> Result<String, Failure> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| Failure::Usage(format!("{url:?} is not a valid URL")))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some(scheme @ ("http" | "https")), Some(authority)) => {
            Ok(format!("{scheme}://{authority}"))
        }
        _ => Err(Failure::Usage(format!("{url:?} is not an http(s) URL"))),
    }
}

/// One API call's failure: what to say and the exit code it implies.
type CallFailure = (String, u8);

/// Builds, for the chosen adapter, a function that makes one authenticated GET.
fn caller(
    tokens: &Managed,
    client: &str,
    url: &str,
    concurrency: usize,
) -> Result<Box<dyn Fn() -> Result<(), CallFailure> + Sync + Send>, Failure> {
    let origin = origin_of(url)?;
    let url = url.to_owned();
    match tokens {
        Managed::Ureq(tokens) => {
            let agent = TokenMiddleware::new(tokens.clone())
                .route(&origin, client)?
                .build_agent(|| {
                    ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .timeout_global(Some(Duration::from_secs(30)))
                        .max_idle_connections_per_host(concurrency.max(3))
                });
            Ok(Box::new(move || match agent.get(&url).call() {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err((
                    format!("the API answered HTTP {}", response.status().as_u16()),
                    1,
                )),
                Err(ureq::Error::Other(inner)) => Err(match inner.downcast::<Error>() {
                    Ok(token_error) => (token_error.to_string(), token_exit_code(&token_error)),
                    Err(other) => (other.to_string(), 1),
                }),
                Err(other) => Err((format!("calling the API: {other}"), 4)),
            }))
        }
        Managed::Surf(tokens) => {
            let middleware =
                token_keeper_surf::TokenMiddleware::new(tokens.clone()).route(&origin, client)?;
            let api = surf::Client::new().with(middleware);
            Ok(Box::new(move || {
                let call = async { api.get(&url).await };
                let timed = futures_lite::FutureExt::or(call, async {
                    async_io::Timer::after(Duration::from_secs(30)).await;
                    Err(surf::Error::from_str(
                        surf::StatusCode::RequestTimeout,
                        "no answer within 30 s",
                    ))
                });
                match async_std::task::block_on(timed) {
                    Ok(response) if response.status().is_success() => Ok(()),
                    Ok(response) => Err((
                        format!("the API answered HTTP {}", u16::from(response.status())),
                        1,
                    )),
                    Err(error) => Err(match error.downcast_ref::<Error>() {
                        Some(token_error) => {
                            (token_error.to_string(), token_exit_code(token_error))
                        }
                        None => (format!("calling the API: {error}"), 4),
                    }),
                }
            }))
        }
    }
}

/// Makes the calls and measures them.
pub fn run_calls(
    tokens: &Managed,
    client: &str,
    url: &str,
    amount: Amount,
    concurrency: usize,
    progress: bool,
) -> Result<Summary, Failure> {
    let call = caller(tokens, client, url, concurrency)?;
    let started = Instant::now();
    let issued = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let first_failure: Mutex<Option<CallFailure>> = Mutex::new(None);
    let latencies: Mutex<Vec<Duration>> = Mutex::new(Vec::new());
    let more = |issued: &AtomicU64| match amount {
        Amount::Requests(n) => issued.fetch_add(1, Ordering::Relaxed) < n,
        Amount::Duration(d) => started.elapsed() < d,
    };
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    while more(&issued) {
                        let t0 = Instant::now();
                        let outcome = call();
                        mine.push(t0.elapsed());
                        let failure = outcome.err();
                        if let Some(failure) = failure {
                            failed.fetch_add(1, Ordering::Relaxed);
                            first_failure.lock().unwrap().get_or_insert(failure);
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    latencies.lock().unwrap().extend(mine);
                })
            })
            .collect();
        let reporter = progress.then(|| {
            scope.spawn(|| {
                let mut err = std::io::stderr();
                while !stop.load(Ordering::Relaxed) {
                    let _ = write!(
                        err,
                        "\r{} requests, {} failed, {} token requests, {:.1} s ",
                        done.load(Ordering::Relaxed),
                        failed.load(Ordering::Relaxed),
                        tokens.token_requests(),
                        started.elapsed().as_secs_f64()
                    );
                    let _ = err.flush();
                    std::thread::park_timeout(Duration::from_millis(200));
                }
                let _ = write!(err, "\r{}\r", " ".repeat(72));
            })
        });
        for worker in workers {
            let _ = worker.join();
        }
        stop.store(true, Ordering::Relaxed);
        if let Some(reporter) = reporter {
            reporter.thread().unpark();
        }
    });
    let mut latencies = latencies.into_inner().unwrap();
    latencies.sort_unstable();
    let pick = |q: f64| -> Duration {
        if latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len());
        latencies[rank - 1]
    };
    let requests = latencies.len() as u64;
    let failed = failed.into_inner();
    Ok(Summary {
        requests,
        succeeded: requests - failed,
        failed,
        token_requests: tokens.token_requests(),
        p50: pick(0.50),
        p99: pick(0.99),
        max: latencies.last().copied().unwrap_or_default(),
        first_failure: first_failure.into_inner().unwrap(),
    })
}

fn print_summary(summary: &Summary, json: bool) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    let written = if json {
        let value = serde_json::json!({
            "requests": summary.requests,
            "succeeded": summary.succeeded,
            "failed": summary.failed,
            "token_requests": summary.token_requests,
            "p50_ms": millis(summary.p50),
            "p99_ms": millis(summary.p99),
        });
        writeln!(out, "{value}")
    } else {
        writeln!(
            out,
            "requests {}  succeeded {}  failed {}  token requests {}  latency p50 {:.2} ms  p99 {:.2} ms",
            summary.requests,
            summary.succeeded,
            summary.failed,
            summary.token_requests,
            millis(summary.p50),
            millis(summary.p99)
        )
    };
    written.map_err(|e| Failure::Other(format!("writing to stdout: {e}")))
}

/// `tokenctl call`.
pub fn call(
    tokens: &Managed,
    client: &str,
    url: &str,
    amount: Amount,
    concurrency: usize,
    json: bool,
) -> Result<ExitCode, Failure> {
    let progress = !json && std::io::stderr().is_terminal();
    let summary = run_calls(tokens, client, url, amount, concurrency, progress)?;
    print_summary(&summary, json)?;
    match &summary.first_failure {
        None => Ok(ExitCode::SUCCESS),
        Some((message, code)) => {
            eprintln!(
                "tokenctl: {} of {} requests failed; first failure: {message}",
                summary.failed, summary.requests
            );
            Ok(ExitCode::from(*code))
        }
    }
}

/// `tokenctl demo`: a local authorization server with short-lived tokens,
/// and several threads calling its API through the managed client.
pub fn demo(duration: Duration) -> Result<ExitCode, Failure> {
    const TTL: u64 = 4;
    const THREADS: usize = 8;
    let secret = format!("demo-{:x}", std::process::id());
    let server = LocalAuthServer::start(ServerConfig {
        clients: vec![("demo".to_owned(), secret.clone())],
        ttl_secs: TTL,
        scope: Some("api".to_owned()),
        ..ServerConfig::default()
    })
    .map_err(|e| Failure::Other(format!("starting the local server: {e}")))?;
    println!(
        "local authorization server on {} (tokens live {TTL} s)",
        server.base_url()
    );
    let tokens = Managed::Ureq(TokenClient::new());
    let config = ClientConfig::new(
        &server.token_url(),
        "demo",
        ClientAuth::Basic(ClientSecret::new(secret)),
    )
    .map_err(|e| Failure::Other(e.to_string()))?
    .scope("api");
    tokens.add_client("demo", config)?;
    let url = format!("{}/demo", server.api_url());
    println!(
        "calling {url} from {THREADS} threads for {:.0} s …",
        duration.as_secs_f64()
    );
    let summary = run_calls(
        &tokens,
        "demo",
        &url,
        Amount::Duration(duration),
        THREADS,
        std::io::stderr().is_terminal(),
    )?;
    print_summary(&summary, false)?;
    let lifetimes = duration.as_secs_f64() / TTL as f64;
    println!();
    println!("what the numbers show:");
    println!(
        "  caching        {} API calls were served by {} tokens",
        summary.requests,
        server.tokens_issued()
    );
    println!(
        "  single-flight  {THREADS} threads, yet the server saw {} token requests: one per refresh, never one per thread",
        server.token_requests()
    );
    println!(
        "  refresh-ahead  {lifetimes:.1} token lifetimes passed, the API rejected {} calls, and the slowest call took {:.2} ms: tokens were replaced before they expired, off the callers' path",
        server.api_rejected(),
        millis(summary.max)
    );
    if summary.failed > 0 || server.api_rejected() > 0 {
        return Err(Failure::Other(format!(
            "{} calls failed during the demo",
            summary.failed
        )));
    }
    Ok(ExitCode::SUCCESS)
}
