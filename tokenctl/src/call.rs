//! `tokenctl call` and `tokenctl demo`.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use token_keeper::{ClientAuth, ClientConfig, ClientSecret};
use token_keeper_testkit::{LocalAuthServer, ServerConfig};
use token_keeper_ureq::{TlsSettings, TokenClient, TokenMiddleware};

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
    /// Tokens taken from the fleet store.
    pub store_hits: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// The first failure, to explain the exit code.
    pub first_failure: Option<(String, u8)>,
}

fn origin_of(url: &str) -> Result<String, Failure> {
    // Never echoed: the URL may carry user information.
    let uri: http::Uri = url
        .parse()
        .map_err(|_| Failure::Usage("the API URL is not a valid URL".to_owned()))?;
    token_keeper::Origin::of(&uri)
        .map(|origin| origin.to_string())
        .map_err(|e| Failure::Usage(format!("the API URL: {}", e.reason())))
}

/// One API call's failure: what to say and the exit code it implies.
type CallFailure = (String, u8);

/// One worker's way of making an authenticated GET, called again and again on
/// that worker's thread.
type Call = Box<dyn FnMut() -> Result<(), CallFailure>>;

/// The most of an answer's body tokenctl reads. Every body is read (and
/// discarded) so that its connection can carry the next request; a longer one
/// fails the call, and its connection is closed, not reused.
const MAX_BODY: u64 = 1024 * 1024;

/// How long one call may take, its answer's body included.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A body over [`MAX_BODY`] fails the call (exit 1, like an error status)
/// rather than counting as a success read in part: the call did not finish,
/// its connection is thrown away, and its latency would not be that of the
/// whole answer. `length`: the announced `Content-Length`, if any.
fn body_too_large(length: Option<u64>) -> CallFailure {
    let length = length.map_or_else(String::new, |n| format!(" ({n} bytes)"));
    (
        format!(
            "the API answered with a body over 1 MiB{length}; tokenctl reads at most 1 MiB of an answer"
        ),
        1,
    )
}

/// An answer with a status other than 2xx (its body read all the same).
fn status_failure(status: u16) -> CallFailure {
    (format!("the API answered HTTP {status}"), 1)
}

/// Builds, for the chosen adapter, a maker of per-worker calls (each an authenticated GET).
///
/// API requests trust what `tls` says too: on ureq exactly as token requests
/// do; on surf (native TLS) the platform's store plus `tls`'s extra CAs.
fn caller(
    tokens: &Managed,
    client: &str,
    url: &str,
    concurrency: usize,
    tls: &TlsSettings,
) -> Result<Box<dyn Fn() -> Call + Sync + Send>, Failure> {
    let origin = origin_of(url)?;
    let url = url.to_owned();
    match tokens {
        Managed::Ureq(tokens) => {
            let tls = token_keeper_ureq::tls_config(tls)?;
            let agent = TokenMiddleware::new(tokens.clone())
                .route(&origin, client)?
                .build_agent(|| {
                    ureq::Agent::config_builder()
                        .tls_config(tls.clone())
                        .http_status_as_error(false)
                        .timeout_global(Some(CALL_TIMEOUT))
                        .max_idle_connections_per_host(concurrency.max(3))
                });
            // One agent, one pool: ureq never hands back a connection whose
            // answer was not read to its end.
            Ok(Box::new(move || {
                let (agent, url) = (agent.clone(), url.clone());
                Box::new(move || ureq_call(&agent, &url))
            }))
        }
        Managed::Surf(tokens) => {
            // surf's HTTP/1 client cannot use a proxy: refuse rather than
            // call the API directly where the proxy settings say otherwise.
            let api: http::Uri = url
                .parse()
                .map_err(|_| Failure::Usage(format!("{url:?} is not a valid URL")))?;
            if tokens.proxy().decide(&api) != token_keeper::ProxyDecision::Direct {
                return Err(Failure::Usage(format!(
                    "the proxy settings send {url} through a proxy, which tokenctl's surf API \
                     client cannot use: use --adapter ureq, or --proxy none (or NO_PROXY) to \
                     call it directly"
                )));
            }
            let middleware =
                token_keeper_surf::TokenMiddleware::new(tokens.clone()).route(&origin, client)?;
            // Each worker has a surf client, and so a connection pool, of its
            // own (the token client behind the middleware is shared). A pool
            // takes back every connection whose answer is dropped, read or
            // not; when an exchange does not end cleanly, the worker drops
            // its whole pool, the only way to keep that connection from
            // being handed out again, and no other worker can be using it.
            let connector = native_tls_connector(tls)?;
            Ok(Box::new(move || {
                let fresh = {
                    let (middleware, connector) = (middleware.clone(), connector.clone());
                    move || {
                        let config = surf::Config::new().set_tls_config(Some(connector.clone()));
                        match surf::Client::try_from(config) {
                            Ok(client) => client.with(middleware.clone()),
                            Err(never) => match never {},
                        }
                    }
                };
                let url = url.clone();
                let mut api = fresh();
                Box::new(move || {
                    let (outcome, reusable) = async_std::task::block_on(surf_call(&api, &url));
                    if !reusable {
                        api = fresh();
                    }
                    outcome
                })
            }))
        }
    }
}

/// One GET through ureq, its answer's body read to the end (at most [`MAX_BODY`]).
fn ureq_call(agent: &ureq::Agent, url: &str) -> Result<(), CallFailure> {
    match agent.get(url).call() {
        Ok(response) => {
            let status = response.status();
            let read = ureq_read_body(response.into_body());
            if !status.is_success() {
                return Err(status_failure(status.as_u16()));
            }
            read
        }
        Err(error) => Err(match token_keeper_ureq::token_failure(&error) {
            Some(no_token) => (no_token.to_string(), token_exit_code(no_token)),
            None => match error {
                ureq::Error::Other(other) => (other.to_string(), 1),
                other => (format!("calling the API: {other}"), 4),
            },
        }),
    }
}

/// Reads and discards a body of at most [`MAX_BODY`] bytes. A longer one is
/// left unread; dropping it closes its connection.
fn ureq_read_body(body: ureq::Body) -> Result<(), CallFailure> {
    if let Some(length) = body.content_length().filter(|&n| n > MAX_BODY) {
        return Err(body_too_large(Some(length)));
    }
    let mut reader = std::io::Read::take(body.into_reader(), MAX_BODY + 1);
    match std::io::copy(&mut reader, &mut std::io::sink()) {
        Ok(read) if read > MAX_BODY => Err(body_too_large(None)),
        Ok(_) => Ok(()),
        Err(error) => Err((format!("calling the API: reading the answer: {error}"), 4)),
    }
}

/// One GET through surf, its answer's body read to the end (at most
/// [`MAX_BODY`]): the outcome, and whether the connection may carry another request.
async fn surf_call(api: &surf::Client, url: &str) -> (Result<(), CallFailure>, bool) {
    let exchange = async {
        let mut response = api.get(url).await?;
        let status = response.status();
        let read = surf_read_body(&mut response).await;
        Ok((status, read))
    };
    let timed = futures_lite::FutureExt::or(exchange, async {
        async_io::Timer::after(CALL_TIMEOUT).await;
        Err(surf::Error::from_str(
            surf::StatusCode::RequestTimeout,
            format!("no answer within {} s", CALL_TIMEOUT.as_secs()),
        ))
    });
    match timed.await {
        Err(error) => (Err(surf_failure(&error)), false),
        Ok((status, read)) => {
            let reusable = read == Ok(true);
            let outcome = if !status.is_success() {
                Err(status_failure(status.into()))
            } else {
                read.map(|_| ())
            };
            (outcome, reusable)
        }
    }
}

/// Reads and discards a body of at most [`MAX_BODY`] bytes: whether the
/// connection may carry another request, or why the call failed.
async fn surf_read_body(response: &mut surf::Response) -> Result<bool, CallFailure> {
    // async-h1 reads a body framed by Content-Length or by chunking (its own
    // test, spelled as here); any other body, one that runs until the
    // connection closes, it gives as empty (length 0), leaving the body on
    // the connection.
    let length = match response.header("Content-Length") {
        Some(_) => response.len().map(|n| n as u64),
        None => None,
    };
    if let Some(length) = length.filter(|&n| n > MAX_BODY) {
        return Err(body_too_large(Some(length)));
    }
    let framed = length.is_some()
        || response
            .header("Transfer-Encoding")
            .is_some_and(|te| te.last().as_str() == "chunked");
    let body = futures_lite::AsyncReadExt::take(response.take_body(), MAX_BODY + 1);
    match futures_lite::io::copy(body, futures_lite::io::sink()).await {
        Ok(read) if read > MAX_BODY => Err(body_too_large(None)),
        Ok(read) => match length {
            // async-h1 takes a connection closed early for the end of the body.
            Some(length) if read < length => Err((
                format!(
                    "calling the API: the connection closed after {read} of the answer's {length} bytes"
                ),
                4,
            )),
            _ => Ok(reusable_after(response.status(), framed)),
        },
        Err(error) => Err((format!("calling the API: reading the answer: {error}"), 4)),
    }
}

/// Whether a connection may carry another request once an answer with this
/// status, its body read, has gone: not after an interim `1xx` (async-h1
/// takes it for the answer; the real one follows on the connection), nor
/// after a body it could not read; `204` and `304` have none (RFC 9112 §6.3).
fn reusable_after(status: surf::StatusCode, framed: bool) -> bool {
    match u16::from(status) {
        100..=199 => false,
        204 | 304 => true,
        _ => framed,
    }
}

/// What to say about a failed surf exchange, and the exit code.
fn surf_failure(error: &surf::Error) -> CallFailure {
    if let Some(no_token) = token_keeper_surf::token_failure(error) {
        return (no_token.to_string(), token_exit_code(no_token));
    }
    if is_http10_refusal(error) {
        return (
            "calling the API: the server answered with HTTP/1.0, which surf's HTTP/1 client \
             (async-h1) does not support; use --adapter ureq"
                .to_owned(),
            4,
        );
    }
    (format!("calling the API: {error}"), 4)
}

/// surf's native TLS (the platform's store), plus the extra CAs of `tls`.
fn native_tls_connector(tls: &TlsSettings) -> Result<Arc<async_native_tls::TlsConnector>, Failure> {
    let mut connector = async_native_tls::TlsConnector::new();
    for der in tls.extra_certificates() {
        let certificate = async_native_tls::Certificate::from_der(der.as_ref()).map_err(|e| {
            Failure::Usage(format!(
                "--cacert: the platform's TLS refused a certificate: {e}"
            ))
        })?;
        connector = connector.add_root_certificate(certificate);
    }
    Ok(Arc::new(connector))
}

/// async-h1 (surf's `h1-client`) accepts only `HTTP/1.1` answers: its response
/// parser (httparse) reads `HTTP/1.0` and `HTTP/1.1` and nothing else, and the
/// client then refuses version 0 with exactly this ad-hoc error, status 500.
fn is_http10_refusal(error: &surf::Error) -> bool {
    error.status() == surf::StatusCode::InternalServerError
        && error.to_string() == "Unsupported HTTP version"
}

/// How `call` paces its calls and reports on them as it goes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pace {
    /// At most this many calls per second, all workers together.
    pub rate: Option<f64>,
    /// One `tick` line per second on stdout.
    pub ticks: bool,
}

/// What one second of calls looked like, for a `tick` line.
#[derive(Default)]
struct Second {
    latencies: Vec<Duration>,
    failed: u64,
}

/// The `q` quantile of sorted latencies (nearest rank); zero for none.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The `tick` line for second `t` (counts of that second; the client's
/// counters since the start). Its format is documented in the usage text.
fn tick_line(t: u64, mut second: Second, tokens: &Managed) -> String {
    second.latencies.sort_unstable();
    let micros = |d: Duration| d.as_micros();
    let stats = tokens.stats();
    format!(
        "tick t={t} calls={} failed={} p50_us={} p99_us={} max_us={} token_requests={} store_hits={}",
        second.latencies.len(),
        second.failed,
        micros(quantile(&second.latencies, 0.50)),
        micros(quantile(&second.latencies, 0.99)),
        micros(second.latencies.last().copied().unwrap_or_default()),
        stats.token_requests,
        stats.store_hits,
    )
}

/// Makes the calls and measures them.
#[allow(clippy::too_many_arguments)]
pub fn run_calls(
    tokens: &Managed,
    client: &str,
    url: &str,
    amount: Amount,
    concurrency: usize,
    progress: bool,
    tls: &TlsSettings,
    pace: Pace,
) -> Result<Summary, Failure> {
    let new_call = caller(tokens, client, url, concurrency, tls)?;
    let started = Instant::now();
    let issued = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let first_failure: Mutex<Option<CallFailure>> = Mutex::new(None);
    let latencies: Mutex<Vec<Duration>> = Mutex::new(Vec::new());
    let this_second: Mutex<Second> = Mutex::new(Second::default());
    let end = match amount {
        Amount::Requests(_) => None,
        Amount::Duration(d) => Some(started + d),
    };
    let more = |issued: &AtomicU64| match amount {
        Amount::Requests(n) => issued.fetch_add(1, Ordering::Relaxed) < n,
        Amount::Duration(d) => started.elapsed() < d,
    };
    // Each worker makes one call every `interval`, its first at a staggered
    // offset, so that the workers together keep to the rate.
    let interval = pace
        .rate
        .map(|rate| Duration::from_secs_f64(concurrency as f64 / rate));
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..concurrency)
            .map(|worker| {
                let (more, new_call) = (&more, &new_call);
                let (issued, done, failed) = (&issued, &done, &failed);
                let (first_failure, latencies, this_second) =
                    (&first_failure, &latencies, &this_second);
                scope.spawn(move || {
                    let mut call = new_call();
                    let mut mine = Vec::new();
                    let mut next =
                        interval.map(|i| started + i.mul_f64(worker as f64 / concurrency as f64));
                    loop {
                        if let (Some(at), Some(i)) = (next.as_mut(), interval) {
                            let now = Instant::now();
                            if *at > now {
                                let wake = end.map_or(*at, |end| (*at).min(end));
                                std::thread::sleep(wake.saturating_duration_since(now));
                            }
                            // Behind schedule (a slow call): no burst to catch up.
                            *at = (*at + i).max(Instant::now());
                        }
                        if !more(issued) {
                            break;
                        }
                        let t0 = Instant::now();
                        let outcome = call();
                        let took = t0.elapsed();
                        mine.push(took);
                        let failure = outcome.err();
                        if pace.ticks {
                            let mut second = this_second.lock().unwrap();
                            second.latencies.push(took);
                            second.failed += u64::from(failure.is_some());
                        }
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
        let ticker = pace.ticks.then(|| {
            scope.spawn(|| {
                let mut t = 1u64;
                loop {
                    let due = started + Duration::from_secs(t);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < due {
                        std::thread::park_timeout(due.saturating_duration_since(Instant::now()));
                    }
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let second = std::mem::take(&mut *this_second.lock().unwrap());
                    let line = tick_line(t, second, tokens);
                    let mut out = std::io::stdout().lock();
                    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                        break;
                    }
                    t += 1;
                }
            })
        });
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
        if let Some(ticker) = ticker {
            ticker.thread().unpark();
        }
    });
    let mut latencies = latencies.into_inner().unwrap();
    latencies.sort_unstable();
    let pick = |q: f64| quantile(&latencies, q);
    let requests = latencies.len() as u64;
    let failed = failed.into_inner();
    let stats = tokens.stats();
    Ok(Summary {
        requests,
        succeeded: requests - failed,
        failed,
        token_requests: stats.token_requests,
        store_hits: stats.store_hits,
        p50: pick(0.50),
        p99: pick(0.99),
        max: latencies.last().copied().unwrap_or_default(),
        first_failure: first_failure.into_inner().unwrap(),
    })
}

/// Prints the summary; `store`: a fleet store is in use (its hits are shown).
fn print_summary(summary: &Summary, json: bool, store: bool) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    let written = if json {
        let mut value = serde_json::json!({
            "requests": summary.requests,
            "succeeded": summary.succeeded,
            "failed": summary.failed,
            "token_requests": summary.token_requests,
            "p50_ms": millis(summary.p50),
            "p99_ms": millis(summary.p99),
        });
        if store {
            value["store_hits"] = summary.store_hits.into();
        }
        writeln!(out, "{value}")
    } else {
        let hits = if store {
            format!("  store hits {}", summary.store_hits)
        } else {
            String::new()
        };
        writeln!(
            out,
            "requests {}  succeeded {}  failed {}  token requests {}{hits}  latency p50 {:.2} ms  p99 {:.2} ms",
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

/// `tokenctl call`; `store`: whether the client has a fleet store.
#[allow(clippy::too_many_arguments)]
pub fn call(
    tokens: &Managed,
    client: &str,
    url: &str,
    amount: Amount,
    concurrency: usize,
    json: bool,
    tls: &TlsSettings,
    pace: Pace,
    store: bool,
) -> Result<ExitCode, Failure> {
    let progress = !json && !pace.ticks && std::io::stderr().is_terminal();
    let summary = run_calls(
        tokens,
        client,
        url,
        amount,
        concurrency,
        progress,
        tls,
        pace,
    );
    // A refresh under way at the end: its lease is released, and its token,
    // if it came, goes to the store, before this process ends.
    tokens.settle_store(crate::store::SETTLE_WAIT);
    let summary = summary?;
    print_summary(&summary, json, store)?;
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
/// `tokenctl demo`: the embedded token server and 8 threads calling its API;
/// with `--store …` in `store`, the client shares its tokens through that
/// fleet store (run two demos against one Redis to see the second served
/// from it).
pub fn demo(duration: Duration, store: &crate::args::ClientFlags) -> Result<ExitCode, Failure> {
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
    let fleet = crate::store::fleet_store(store).map_err(|e| Failure::Usage(e.to_string()))?;
    if fleet.is_some() {
        crate::store::show_warnings();
        println!("sharing tokens through the fleet store");
    }
    let tokens = Managed::Ureq(
        TokenClient::with_options(token_keeper_ureq::ClientOptions {
            store: fleet,
            ..Default::default()
        })
        .map_err(|e| Failure::Other(e.to_string()))?,
    );
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
        &TlsSettings::default(),
        Pace::default(),
    )?;
    print_summary(&summary, false, false)?;
    tokens.settle_store(crate::store::SETTLE_WAIT);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_async_h1_refusing_http10() {
        // How async-h1's client decoder builds the error (`ensure_eq!` → `format_err!`).
        let refusal = surf::http::format_err!("Unsupported HTTP version");
        assert!(is_http10_refusal(&refusal));
        let (message, code) = surf_failure(&refusal);
        assert_eq!(code, 4);
        assert!(message.ends_with("use --adapter ureq"), "{message}");
        for other in [
            surf::http::format_err!("invalid HTTP version"),
            surf::Error::from_str(surf::StatusCode::BadRequest, "Unsupported HTTP version"),
        ] {
            assert!(!is_http10_refusal(&other), "{other}");
            assert_eq!(surf_failure(&other).0, format!("calling the API: {other}"));
        }
    }

    #[test]
    fn connections_are_reused_only_after_a_whole_answer() {
        use surf::StatusCode as S;
        assert!(reusable_after(S::Ok, true));
        assert!(!reusable_after(S::Ok, false));
        assert!(reusable_after(S::NotFound, true));
        assert!(reusable_after(S::NoContent, false));
        assert!(reusable_after(S::NotModified, false));
        assert!(!reusable_after(S::Continue, true));
        assert!(!reusable_after(S::Continue, false));
    }
}
