//! `tokenctl demo --fleet N`: N tokenctl processes against one local token
//! server with short-lived tokens, first each on its own, then sharing a
//! Redis store; the token requests per token lifetime of both runs, and
//! optionally a plot of both over time.
//!
//! The children are this very binary (`tokenctl call … --rate R --ticks
//! --json`): each prints one `tick` line per second and a JSON summary at
//! the end on stdout, which the parent reads line by line (each line at
//! most [`MAX_LINE`] bytes; longer ones are skipped). The token requests are
//! counted by the local token server itself. Every child is killed and
//! reaped when the run ends, whatever way it ends ([`Children`]).

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use token_keeper::RandomSource;
use token_keeper_driver::OsRandom;
use token_keeper_testkit::{redis_server_available, LocalAuthServer, RedisServer, ServerConfig};
use zeroize::Zeroizing;

use crate::plot::{self, PlotRun};
use crate::Failure;

/// How long each run lasts unless `--duration` says otherwise.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(12);
/// The lifetime of the local server's tokens, in seconds.
const TTL: u64 = 3;
/// API calls per second made by each process.
const RATE: u32 = 40;
/// The longest line read from a child.
const MAX_LINE: usize = 512;
/// How long the children may run past the duration before they are killed.
const GRACE: Duration = Duration::from_secs(20);
/// The environment variables handing the children their secrets (never
/// their command lines, which any user can read).
const SECRET_VAR: &str = "TOKENCTL_FLEET_CLIENT_SECRET";
const STORE_URL_VAR: &str = "TOKENCTL_FLEET_STORE_URL";
const STORE_KEY_VAR: &str = "TOKENCTL_FLEET_STORE_KEY";

/// One child's `tick` line: what its calls did in second `t` of its run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tick {
    t: u64,
    calls: u64,
    failed: u64,
    p99_us: u64,
}

impl Tick {
    /// Reads `tick t=… calls=… failed=… p99_us=… …` (other fields ignored).
    fn parse(line: &str) -> Option<Tick> {
        let mut words = line.split_ascii_whitespace();
        if words.next()? != "tick" {
            return None;
        }
        let mut tick = Tick::default();
        let mut seen = 0;
        for word in words {
            let (key, value) = word.split_once('=')?;
            let value: u64 = value.parse().ok()?;
            match key {
                "t" => tick.t = value,
                "calls" => tick.calls = value,
                "failed" => tick.failed = value,
                "p99_us" => tick.p99_us = value,
                _ => continue,
            }
            seen += 1;
        }
        (seen == 4).then_some(tick)
    }
}

/// A child's final JSON summary (the fields the demo uses).
#[derive(Clone, Copy, Debug, Default)]
struct ChildSummary {
    requests: u64,
    failed: u64,
    p99_ms: f64,
}

impl ChildSummary {
    fn parse(line: &str) -> Option<ChildSummary> {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        Some(ChildSummary {
            requests: value["requests"].as_u64()?,
            failed: value["failed"].as_u64()?,
            p99_ms: value["p99_ms"].as_f64()?,
        })
    }
}

/// What a child's stdout reader hands the parent.
enum Report {
    Tick(Tick),
    Summary(usize, ChildSummary),
}

/// Reads `reader` line by line, each at most [`MAX_LINE`] bytes (the rest
/// of a longer line is skipped), until the end or an error.
fn bounded_lines(reader: impl Read, mut each: impl FnMut(&str)) {
    let mut reader = BufReader::new(reader);
    let mut line = Vec::with_capacity(MAX_LINE);
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.last() != Some(&b'\n') && line.len() == MAX_LINE {
            // Too long: skip to the end of the line.
            loop {
                let Ok(buffer) = reader.fill_buf() else {
                    return;
                };
                if buffer.is_empty() {
                    return;
                }
                match buffer.iter().position(|&b| b == b'\n') {
                    Some(at) => {
                        reader.consume(at + 1);
                        break;
                    }
                    None => {
                        let n = buffer.len();
                        reader.consume(n);
                    }
                }
            }
            continue;
        }
        each(String::from_utf8_lossy(&line).trim_end());
    }
}

/// The children of a run: killed (SIGKILL) and reaped when dropped, so that
/// none outlives the demo, on every path.
struct Children(Vec<Child>);

impl Children {
    /// Waits until every child has exited or `deadline` passes: their exit
    /// codes, or `None` if one was still running.
    fn wait_all(&mut self, deadline: Instant, mut each_tick: impl FnMut()) -> Option<Vec<i32>> {
        let mut codes = vec![None; self.0.len()];
        loop {
            for (child, code) in self.0.iter_mut().zip(codes.iter_mut()) {
                if code.is_none() {
                    if let Ok(Some(status)) = child.try_wait() {
                        *code = Some(status.code().unwrap_or(-1));
                    }
                }
            }
            if codes.iter().all(Option::is_some) {
                return Some(codes.into_iter().flatten().collect());
            }
            if Instant::now() >= deadline {
                return None;
            }
            each_tick();
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}

/// How one run went.
struct RunResult {
    token_requests: u64,
    api_calls: u64,
    failed: u64,
    /// The worst p99 of any process over the whole run, in ms.
    p99_ms: f64,
    plot: PlotRun,
}

/// What every run shares.
struct Setup<'a> {
    exe: &'a Path,
    server: &'a LocalAuthServer,
    processes: usize,
    duration: Duration,
    store_url: &'a str,
    store_key: &'a str,
    secret: &'a str,
    namespace: String,
}

/// `tokenctl demo --fleet N`.
pub fn demo(
    processes: usize,
    duration: Duration,
    plot: Option<&Path>,
) -> Result<ExitCode, Failure> {
    if !redis_server_available() {
        return Err(Failure::Other(
            "demo --fleet runs a local redis-server, and redis-server is not installed (not on \
             PATH): install it (Debian/Ubuntu: apt-get install redis-server; macOS: brew install \
             redis) and run again. Plain `tokenctl demo` needs no Redis"
                .to_owned(),
        ));
    }
    let exe = std::env::current_exe()
        .map_err(|e| Failure::Other(format!("finding tokenctl's own executable: {e}")))?;
    let random = OsRandom::new();
    let mut bytes = Zeroizing::new([0u8; 32]);
    random.fill(&mut bytes[..]);
    let store_key = Zeroizing::new(STANDARD.encode(&bytes[..]));
    random.fill(&mut bytes[..16]);
    let password = Zeroizing::new(hex(&bytes[..16]));
    random.fill(&mut bytes[..8]);
    let secret = Zeroizing::new(format!("fleet-{}", hex(&bytes[..8])));

    let redis = RedisServer::start_with_password(&password)
        .map_err(|e| Failure::Other(format!("starting redis-server: {e}")))?;
    let store_url = Zeroizing::new(redis.url());
    println!(
        "redis-server on 127.0.0.1:{} (a password of its own; entries sealed with a fresh key)",
        redis.port()
    );
    let server = LocalAuthServer::start(ServerConfig {
        clients: vec![("demo".to_owned(), secret.to_string())],
        ttl_secs: TTL,
        scope: Some("api".to_owned()),
        ..ServerConfig::default()
    })
    .map_err(|e| Failure::Other(format!("starting the local token server: {e}")))?;
    println!(
        "local token server on {} (tokens live {TTL} s)",
        server.base_url()
    );
    let lifetimes = duration.as_secs_f64() / TTL as f64;
    println!(
        "{processes} tokenctl processes, {RATE} API calls per second each, for {:.0} s \
         ({lifetimes:.1} token lifetimes), twice: each process on its own, then sharing the store",
        duration.as_secs_f64()
    );
    let setup = Setup {
        exe: &exe,
        server: &server,
        processes,
        duration,
        store_url: &store_url,
        store_key: &store_key,
        secret: &secret,
        namespace: format!("tokenctl-demo-{}", std::process::id()),
    };
    let alone = run(&setup, false)?;
    let shared = run(&setup, true)?;
    drop(redis);

    println!();
    println!(
        "results ({processes} processes, {:.0} s, {TTL} s tokens = {lifetimes:.1} token lifetimes):",
        duration.as_secs_f64()
    );
    for (label, result) in [
        ("without the store", &alone),
        ("with the store   ", &shared),
    ] {
        println!(
            "  {label}  {:>4} token requests = {:>5.2} per token lifetime   {} API calls, {} failed, worst p99 {:.2} ms",
            result.token_requests,
            result.token_requests as f64 / lifetimes,
            result.api_calls,
            result.failed,
            result.p99_ms
        );
    }
    if shared.token_requests > 0 {
        println!(
            "  the store saved {} token requests: {:.1}× fewer; the whole fleet fetched about as \
             often as one process does on its own (one request per refresh, and each {TTL} s \
             token is refreshed well ahead of its expiry)",
            alone.token_requests.saturating_sub(shared.token_requests),
            alone.token_requests as f64 / shared.token_requests as f64,
        );
    }
    if let Some(path) = plot {
        plot::draw(path, &[alone.plot, shared.plot], duration, TTL)
            .map_err(|e| Failure::Other(format!("drawing {}: {e}", path.display())))?;
        println!("plot written to {}", path.display());
    }
    if alone.failed + shared.failed > 0 {
        return Err(Failure::Other(format!(
            "{} API calls failed during the demo",
            alone.failed + shared.failed
        )));
    }
    Ok(ExitCode::SUCCESS)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One run of the fleet: spawns the children, follows them, and gathers
/// what they and the token server saw.
fn run(setup: &Setup<'_>, with_store: bool) -> Result<RunResult, Failure> {
    let label = if with_store {
        "with the store"
    } else {
        "without the store"
    };
    println!();
    println!("run {label}: starting {} processes …", setup.processes);
    let server = setup.server;
    let base_requests = server.token_requests();
    let mut issued_before = server.tokens_issued();
    let base_api = server.api_requests();
    let url = format!("{}/fleet", server.api_url());
    let token_url = server.token_url();
    let duration = format!("{}", setup.duration.as_secs_f64());
    let rate = RATE.to_string();

    let (reports, received) = mpsc::channel::<Report>();
    let mut readers = Vec::new();
    let mut stderr_tails = Vec::new();
    let mut children = Children(Vec::with_capacity(setup.processes));
    let started = Instant::now();
    for index in 0..setup.processes {
        let mut command = Command::new(setup.exe);
        command
            .arg("call")
            .arg(&url)
            .args(["--token-url", &token_url, "--client-id", "demo"])
            .args(["--client-secret-env", SECRET_VAR, "--scope", "api"])
            .args([
                "--duration",
                &duration,
                "--rate",
                &rate,
                "--ticks",
                "--json",
            ])
            .env(SECRET_VAR, setup.secret)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if with_store {
            command
                .args([
                    "--store-env",
                    STORE_URL_VAR,
                    "--store-key-env",
                    STORE_KEY_VAR,
                ])
                .args(["--store-namespace", &setup.namespace])
                .env(STORE_URL_VAR, setup.store_url)
                .env(STORE_KEY_VAR, setup.store_key);
        }
        let mut child = command
            .spawn()
            .map_err(|e| Failure::Other(format!("starting a tokenctl process: {e}")))?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        children.0.push(child);
        if let Some(stdout) = stdout {
            let reports = reports.clone();
            readers.push(std::thread::spawn(move || {
                bounded_lines(stdout, |line| {
                    let report = if line.starts_with('{') {
                        ChildSummary::parse(line).map(|s| Report::Summary(index, s))
                    } else {
                        Tick::parse(line).map(Report::Tick)
                    };
                    if let Some(report) = report {
                        let _ = reports.send(report);
                    }
                });
            }));
        }
        // The last lines of each child's stderr, to explain a failure.
        let tail = Arc::new(Mutex::new(VecDeque::<String>::new()));
        if let Some(stderr) = stderr {
            let tail = Arc::clone(&tail);
            readers.push(std::thread::spawn(move || {
                bounded_lines(stderr, |line| {
                    let mut tail = tail.lock().unwrap();
                    if tail.len() == 3 {
                        tail.pop_front();
                    }
                    tail.push_back(line.chars().take(300).collect());
                });
            }));
        }
        stderr_tails.push(tail);
    }
    drop(reports);

    // Follow the run: the server's counters every 100 ms, a progress line a second.
    let mut token_requests_at = vec![0u64];
    let mut api_calls_at = vec![0u64];
    let mut expiries = Vec::new();
    let mut failed_so_far = 0u64;
    let mut ticks: BTreeMap<u64, (u64, u64, u64)> = BTreeMap::new();
    let mut summaries = vec![None; setup.processes];
    let take_reports = |ticks: &mut BTreeMap<u64, (u64, u64, u64)>,
                        failed_so_far: &mut u64,
                        summaries: &mut Vec<Option<ChildSummary>>| {
        while let Ok(report) = received.try_recv() {
            match report {
                Report::Tick(tick) => {
                    let entry = ticks.entry(tick.t).or_default();
                    entry.0 += tick.calls;
                    entry.1 += tick.failed;
                    entry.2 = entry.2.max(tick.p99_us);
                    *failed_so_far += tick.failed;
                }
                Report::Summary(index, summary) => summaries[index] = Some(summary),
            }
        }
    };
    let deadline = started + setup.duration + GRACE;
    let codes =
        children.wait_all(deadline, || {
            let now = started.elapsed();
            let issued = server.tokens_issued();
            for _ in issued_before..issued {
                expiries.push(now.as_secs_f64() + TTL as f64);
            }
            issued_before = issued;
            take_reports(&mut ticks, &mut failed_so_far, &mut summaries);
            let second = token_requests_at.len() as u64;
            if now >= Duration::from_secs(second) {
                token_requests_at.push(server.token_requests() - base_requests);
                api_calls_at.push(server.api_requests() - base_api);
                if second <= setup.duration.as_secs() {
                    println!(
                    "  {label}: {second:>2} s  token requests {:>3}  API calls {:>6}  failed {}",
                    token_requests_at[second as usize], api_calls_at[second as usize], failed_so_far
                );
                }
            }
        });
    let Some(codes) = codes else {
        return Err(Failure::Other(format!(
            "the fleet run {label} did not end within {} s of its duration; its processes were killed",
            GRACE.as_secs()
        )));
    };
    drop(children);
    // The last second, when the processes ended before it was sampled.
    if token_requests_at.len() as u64 <= setup.duration.as_secs() {
        token_requests_at.push(server.token_requests() - base_requests);
        api_calls_at.push(server.api_requests() - base_api);
    }
    for reader in readers {
        let _ = reader.join();
    }
    take_reports(&mut ticks, &mut failed_so_far, &mut summaries);
    for (index, code) in codes.iter().enumerate() {
        if *code != 0 && summaries[index].is_none_or(|s| s.failed == 0) {
            let tail: Vec<String> = stderr_tails[index]
                .lock()
                .unwrap()
                .iter()
                .cloned()
                .collect();
            return Err(Failure::Other(format!(
                "a tokenctl process of the run {label} exited with code {code}: {}",
                tail.join(" / ")
            )));
        }
    }
    let token_requests = server.token_requests() - base_requests;
    let api_calls = summaries.iter().flatten().map(|s| s.requests).sum();
    let failed = summaries.iter().flatten().map(|s| s.failed).sum();
    let p99_ms = summaries
        .iter()
        .flatten()
        .map(|s| s.p99_ms)
        .fold(0.0, f64::max);
    println!(
        "run {label}: done: {token_requests} token requests, {api_calls} API calls, {failed} failed"
    );
    let per_second = |at: &[u64]| -> Vec<(f64, f64)> {
        at.windows(2)
            .enumerate()
            .map(|(i, w)| (i as f64 + 1.0, (w[1] - w[0]) as f64))
            .collect()
    };
    let end = setup.duration.as_secs_f64();
    Ok(RunResult {
        token_requests,
        api_calls,
        failed,
        p99_ms,
        plot: PlotRun {
            label: label.to_owned(),
            token_requests: per_second(&token_requests_at),
            api_calls: per_second(&api_calls_at),
            p99_ms: ticks
                .iter()
                .filter(|(&t, _)| t as f64 <= end)
                .map(|(&t, &(_, _, p99))| (t as f64, p99 as f64 / 1000.0))
                .collect(),
            expiries: expiries.into_iter().filter(|&t| t <= end).collect(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_lines_parse() {
        let line = "tick t=3 calls=40 failed=1 p50_us=300 p99_us=900 max_us=1200 token_requests=2 store_hits=1";
        assert_eq!(
            Tick::parse(line),
            Some(Tick {
                t: 3,
                calls: 40,
                failed: 1,
                p99_us: 900
            })
        );
        for bad in [
            "",
            "tock t=1 calls=1 failed=0 p99_us=1",
            "tick t=1 calls=1 failed=0",
            "tick t=x calls=1 failed=0 p99_us=1",
            "tick t=1 calls=1 failed=0 p99_us",
        ] {
            assert_eq!(Tick::parse(bad), None, "{bad}");
        }
        let summary = ChildSummary::parse(
            r#"{"requests":10,"succeeded":10,"failed":0,"token_requests":1,"p50_ms":0.2,"p99_ms":0.5}"#,
        )
        .unwrap();
        assert_eq!((summary.requests, summary.failed), (10, 0));
        assert!(ChildSummary::parse("{}").is_none());
    }

    #[test]
    fn long_lines_are_skipped_not_buffered() {
        let long = "x".repeat(MAX_LINE * 3);
        let input = format!("first\n{long}\nlast\nunterminated");
        let mut seen = Vec::new();
        bounded_lines(input.as_bytes(), |line| seen.push(line.to_owned()));
        assert_eq!(seen, ["first", "last", "unterminated"]);
    }
}
