//! Scenarios: the core driven by hand, one behaviour per test.
//!
//! Each test reads as a story: a clock that moves only when the test says,
//! token responses typed in, and assertions on what the core decides.

use std::time::Duration;

use http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, StatusCode};
use token_keeper::{
    Authorization, BackoffPolicy, ClientAuth, ClientConfig, ClientHandle, ClientSecret, Event,
    ForcedRefresh, InvalidationReason, KeyId, KeyOverrides, ManagerConfig, Now, RefreshPolicy,
    RequestId, RequestReason, ResourceOutcome, ResourceResponse, ResponseProblem, TimeoutReason,
    TokenError, TokenManager, TokenState, TransportError, TransportErrorKind,
};

const SECRET: &str = "correct horse battery staple";

fn config() -> ClientConfig {
    ClientConfig::new(
        "https://as.example/connect/token",
        "m2m",
        ClientAuth::Basic(ClientSecret::new(SECRET)),
    )
    .unwrap()
    .scope("api")
}

fn manager_with(config: ClientConfig) -> (TokenManager, ClientHandle, KeyId) {
    let mut manager = TokenManager::new(ManagerConfig::default(), 42);
    let client = manager.add_client("m2m", config).unwrap();
    let key = manager.default_key(client);
    (manager, client, key)
}

fn manager() -> (TokenManager, KeyId) {
    let (manager, _, key) = manager_with(config());
    (manager, key)
}

fn at(secs: f64) -> Now {
    Now::from_duration(Duration::from_secs_f64(secs))
}

fn token_body(token: &str, expires_in: u64) -> String {
    format!(r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":{expires_in}}}"#)
}

fn respond(manager: &mut TokenManager, id: RequestId, status: u16, body: &str, now: Now) {
    let response = http::Response::builder()
        .status(status)
        .body(body.to_owned())
        .unwrap();
    manager.handle_response(id, response, now).unwrap();
}

/// Authorizes and expects a header; returns it as text.
fn attached(manager: &mut TokenManager, key: KeyId, now: Now) -> (String, TokenState) {
    match manager.authorize(key, now) {
        Authorization::Attach(a) => (a.header().to_str().unwrap().to_owned(), a.state()),
        other => panic!("expected a header, got {other:?}"),
    }
}

fn fetch(manager: &mut TokenManager, key: KeyId, now: Now) -> RequestId {
    match manager.authorize(key, now) {
        Authorization::Fetch(id) => {
            let request = manager.poll_request().expect("a token request was queued");
            assert_eq!(request.id(), id);
            id
        }
        other => panic!("expected a fetch, got {other:?}"),
    }
}

fn unavailable(
    manager: &mut TokenManager,
    key: KeyId,
    now: Now,
) -> (TokenError, token_keeper::Instant) {
    match manager.authorize(key, now) {
        Authorization::Unavailable { error, retry_at } => (error.clone(), retry_at),
        other => panic!("expected unavailable, got {other:?}"),
    }
}

fn events(manager: &mut TokenManager) -> Vec<Event> {
    std::iter::from_fn(|| manager.poll_event()).collect()
}

fn started_requests(events: &[Event]) -> Vec<RequestReason> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::RequestStarted { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

/// A one-hour token, acquired at t=0 (requested at 0, answered at 0.1).
fn with_token(manager: &mut TokenManager, key: KeyId, token: &str) {
    let id = fetch(manager, key, at(0.0));
    respond(manager, id, 200, &token_body(token, 3600), at(0.1));
}

#[test]
fn first_call_fetches_then_the_token_is_reused() {
    let (mut m, key) = manager();
    let id = fetch(&mut m, key, at(0.0));
    respond(&mut m, id, 200, &token_body("abc", 3600), at(0.2));
    for second in 1..1000 {
        let (header, state) = attached(&mut m, key, at(second as f64));
        assert_eq!(header, "Bearer abc");
        assert_eq!(state, TokenState::Fresh);
    }
    assert!(
        m.poll_request().is_none(),
        "a Fresh token costs no token request"
    );
    let reasons = started_requests(&events(&mut m));
    assert_eq!(reasons, vec![RequestReason::Missing]);
}

#[test]
fn callers_arriving_during_a_fetch_wait_for_the_same_request() {
    let (mut m, key) = manager();
    let id = fetch(&mut m, key, at(0.0));
    for _ in 0..256 {
        match m.authorize(key, at(0.05)) {
            Authorization::Wait(waiting_on) => assert_eq!(waiting_on, id),
            other => panic!("expected to wait, got {other:?}"),
        }
    }
    assert!(
        m.poll_request().is_none(),
        "single-flight: one request per key"
    );
    respond(&mut m, id, 200, &token_body("abc", 3600), at(0.1));
    assert_eq!(attached(&mut m, key, at(0.1)).0, "Bearer abc");
}

#[test]
fn a_stale_token_is_attached_while_exactly_one_refresh_runs() {
    let (mut m, key) = manager();
    with_token(&mut m, key, "old");
    // Default policy: usable 3540 s, refresh point between 70 % and 80 % of that.
    let (header, state) = attached(&mut m, key, at(2900.0));
    assert_eq!((header.as_str(), state), ("Bearer old", TokenState::Stale));
    let refresh = m.poll_request().expect("the stale hit queued one refresh");
    for _ in 0..100 {
        assert_eq!(attached(&mut m, key, at(2901.0)).0, "Bearer old");
    }
    assert!(m.poll_request().is_none(), "only one refresh in flight");
    respond(
        &mut m,
        refresh.id(),
        200,
        &token_body("new", 3600),
        at(2902.0),
    );
    let (header, state) = attached(&mut m, key, at(2903.0));
    assert_eq!((header.as_str(), state), ("Bearer new", TokenState::Fresh));
    let reasons = started_requests(&events(&mut m));
    assert_eq!(
        reasons,
        vec![RequestReason::Missing, RequestReason::RefreshAhead]
    );
}

#[test]
fn refresh_points_are_jittered_across_processes() {
    let refresh_point = |seed: u64| {
        let mut m = TokenManager::new(ManagerConfig::default(), seed);
        let client = m_add(&mut m);
        let key = m.default_key(client);
        with_token(&mut m, key, "t");
        m.snapshot(key).unwrap().fresh_until()
    };
    let points: std::collections::BTreeSet<_> = (0..20).map(refresh_point).collect();
    assert!(
        points.len() > 15,
        "refresh points should differ by seed: {points:?}"
    );
    let lo = at(0.0)
        .monotonic()
        .saturating_add(Duration::from_secs_f64(3540.0 * 0.7));
    let hi = at(0.0)
        .monotonic()
        .saturating_add(Duration::from_secs_f64(3540.0 * 0.8));
    assert!(points.iter().all(|p| *p >= lo && *p <= hi), "{points:?}");
}

fn m_add(m: &mut TokenManager) -> ClientHandle {
    m.add_client("m2m", config()).unwrap()
}

#[test]
fn an_expired_token_is_never_attached() {
    let (mut m, key) = manager();
    let id = fetch(&mut m, key, at(0.0));
    respond(&mut m, id, 200, &token_body("short", 100), at(0.0));
    // 100 s token: buffer min(60, 25) = 25 s, usable until 75 s.
    assert_eq!(attached(&mut m, key, at(74.9)).0, "Bearer short");
    let _refresh = m.poll_request(); // the stale hit at 74.9 started a refresh
    events(&mut m);
    match m.authorize(key, at(75.0)) {
        Authorization::Wait(_) => {}
        other => panic!("the expired token must not be attached: {other:?}"),
    }
    assert!(events(&mut m).contains(&Event::TokenExpired { key }));
}

#[test]
fn expiry_without_a_refresh_in_flight_fetches_again() {
    let (mut m, key) = manager();
    let id = fetch(&mut m, key, at(0.0));
    respond(&mut m, id, 200, &token_body("short", 100), at(0.0));
    events(&mut m);
    let id = fetch(&mut m, key, at(500.0));
    let reasons = started_requests(&events(&mut m));
    assert_eq!(reasons, vec![RequestReason::Expired]);
    respond(&mut m, id, 200, &token_body("again", 100), at(500.5));
    assert_eq!(attached(&mut m, key, at(501.0)).0, "Bearer again");
}

#[test]
fn short_lived_tokens_are_reused_for_most_of_their_life() {
    let (mut m, key) = manager();
    let id = fetch(&mut m, key, at(0.0));
    respond(&mut m, id, 200, &token_body("five", 5), at(0.01));
    // Called every 10 ms: a 5 s token serves calls until 3.75 s, with one refresh.
    let mut calls = 0;
    for step in 1..370 {
        let t = step as f64 / 100.0;
        if let Authorization::Attach(_) = m.authorize(key, at(t)) {
            calls += 1;
        }
    }
    assert_eq!(calls, 369);
    let started = started_requests(&events(&mut m));
    assert_eq!(
        started,
        vec![RequestReason::Missing, RequestReason::RefreshAhead]
    );
}

#[test]
fn missing_expires_in_uses_the_default_lifetime_not_forever() {
    let (mut m, key) = manager();
    let id = fetch(&mut m, key, at(0.0));
    respond(
        &mut m,
        id,
        200,
        r#"{"access_token":"x","token_type":"Bearer"}"#,
        at(0.0),
    );
    let view = m.token(key, at(1.0)).unwrap();
    assert_eq!(view.lifetime(), Duration::from_secs(300));
    assert!(matches!(
        m.authorize(key, at(240.0)),
        Authorization::Fetch(_) | Authorization::Wait(_)
    ));
}

#[test]
fn huge_expires_in_is_clamped() {
    let (mut m, key) = manager();
    let id = fetch(&mut m, key, at(0.0));
    respond(
        &mut m,
        id,
        200,
        r#"{"access_token":"x","token_type":"Bearer","expires_in":"99999999999999999999"}"#,
        at(0.0),
    );
    assert_eq!(
        m.token(key, at(0.0)).unwrap().lifetime(),
        Duration::from_secs(86_400)
    );
    assert!(m.token(key, at(86_400.0)).is_none());
}

#[test]
fn a_token_dead_on_arrival_is_a_failure_not_a_loop() {
    for (body, answered_at) in [
        (token_body("zero", 0), 0.5),
        (
            r#"{"access_token":"neg","token_type":"Bearer","expires_in":-30}"#.to_owned(),
            0.5,
        ),
        (token_body("slow", 10), 20.0), // answered after its whole lifetime
    ] {
        let (mut m, key) = manager();
        let id = fetch(&mut m, key, at(0.0));
        respond(&mut m, id, 200, &body, at(answered_at));
        let (error, _) = unavailable(&mut m, key, at(answered_at));
        match error {
            TokenError::InvalidResponse(e) => {
                assert_eq!(e.problem(), &ResponseProblem::ExpiredOnArrival)
            }
            other => panic!("{other:?}"),
        }
        assert!(m.poll_request().is_none());
    }
}

#[test]
fn failures_back_off_exponentially_and_fail_fast_meanwhile() {
    let policy = BackoffPolicy {
        jitter: 0.0,
        ..BackoffPolicy::default()
    };
    let (mut m, _, key) = manager_with(config().backoff_policy(policy));
    let mut t = 0.0;
    let mut delays = Vec::new();
    for _ in 0..8 {
        let id = fetch(&mut m, key, at(t));
        respond(&mut m, id, 500, "<html>down</html>", at(t));
        let (error, retry_at) = unavailable(&mut m, key, at(t));
        assert_eq!(error.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(error.to_string().contains("500"), "{error}");
        // Until the backoff ends, every call fails at once without a request.
        let (_, again) = unavailable(&mut m, key, at(t + 0.5));
        assert_eq!(again, retry_at);
        assert!(m.poll_request().is_none());
        let delay = retry_at.saturating_duration_since(at(t).monotonic());
        delays.push(delay.as_secs());
        t += delay.as_secs_f64();
    }
    assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60]);
    // A success resets the backoff.
    let id = fetch(&mut m, key, at(t));
    respond(&mut m, id, 200, &token_body("ok", 3600), at(t));
    m.invalidate(key, at(t));
    let id = fetch(&mut m, key, at(t));
    respond(&mut m, id, 503, "", at(t));
    let (_, retry_at) = unavailable(&mut m, key, at(t));
    assert_eq!(
        retry_at.saturating_duration_since(at(t).monotonic()),
        Duration::from_secs(1)
    );
}

#[test]
fn oauth_errors_are_typed_and_back_off_too() {
    let (mut m, key) = manager();
    let id = fetch(&mut m, key, at(0.0));
    respond(
        &mut m,
        id,
        401,
        r#"{"error":"invalid_client","error_description":"bad credentials"}"#,
        at(0.0),
    );
    let (error, _) = unavailable(&mut m, key, at(0.1));
    let TokenError::OAuth(oauth) = &error else {
        panic!("{error:?}")
    };
    assert_eq!(oauth.code(), "invalid_client");
    assert_eq!(oauth.description(), Some("bad credentials"));
    assert!(!format!("{error} {error:?}").contains(SECRET));
}

#[test]
fn retry_after_is_honoured_in_seconds_and_as_a_date_and_capped() {
    let cases = [
        (HeaderValue::from_static("120"), 120),
        (HeaderValue::from_static("999999"), 3600),
    ];
    for (value, expected) in cases {
        let (mut m, key) = manager();
        let id = fetch(&mut m, key, at(0.0));
        let response = http::Response::builder()
            .status(429)
            .header(RETRY_AFTER, value)
            .body("slow down")
            .unwrap();
        m.handle_response(id, response, at(0.0)).unwrap();
        let (_, retry_at) = unavailable(&mut m, key, at(0.0));
        assert_eq!(
            retry_at.saturating_duration_since(at(0.0).monotonic()),
            Duration::from_secs(expected)
        );
    }
    // An HTTP-date is measured against the wall clock the adapter passed in.
    let (mut m, key) = manager();
    let id = fetch(&mut m, key, at(0.0));
    let now = at(0.0);
    let date = httpdate_in(now, 90);
    let response = http::Response::builder()
        .status(503)
        .header(RETRY_AFTER, date)
        .body("")
        .unwrap();
    m.handle_response(id, response, now).unwrap();
    let (_, retry_at) = unavailable(&mut m, key, now);
    assert_eq!(
        retry_at.saturating_duration_since(now.monotonic()),
        Duration::from_secs(90)
    );
}

fn httpdate_in(now: Now, secs: u64) -> String {
    // Formats now.wall() + secs as an IMF-fixdate, by hand (no test-only crate needed).
    let t = now
        .wall()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + secs;
    let (days, rem) = (t / 86_400, t % 86_400);
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{weekday}, {d:02} {} {year} {h:02}:{mi:02}:{s:02} GMT",
        months[(month - 1) as usize]
    )
}

#[test]
fn a_failed_refresh_keeps_serving_the_valid_token_and_retries_after_backoff() {
    let (mut m, key) = manager();
    with_token(&mut m, key, "old");
    attached(&mut m, key, at(2900.0));
    let refresh = m.poll_request().unwrap();
    events(&mut m);
    m.handle_transport_error(
        refresh.id(),
        TransportError::new(TransportErrorKind::Connect, "connection refused"),
        at(2900.5),
    )
    .unwrap();
    let evs = events(&mut m);
    assert!(
        evs.iter().any(|e| matches!(
            e,
            Event::BackoffEntered {
                serving_cached: true,
                failures: 1,
                ..
            }
        )),
        "{evs:?}"
    );
    // The stale token keeps being attached during the backoff, with no new request.
    for i in 0..10 {
        assert_eq!(
            attached(&mut m, key, at(2900.6 + i as f64 * 0.05)).0,
            "Bearer old"
        );
    }
    assert!(m.poll_request().is_none());
    // The backoff's end is a deadline; at it the proactive refresh runs again.
    let (when, reason) = m.poll_timeout().unwrap();
    assert_eq!(reason, TimeoutReason::BackoffEnds);
    m.handle_timeout(Now::from_duration(when.since_origin()));
    let retry = m.poll_request().expect("refresh retried after the backoff");
    respond(
        &mut m,
        retry.id(),
        200,
        &token_body("new", 3600),
        at(2903.0),
    );
    assert_eq!(attached(&mut m, key, at(2903.0)).0, "Bearer new");
}

#[test]
fn proactive_refresh_runs_on_the_timer_off_the_callers_path() {
    let (mut m, key) = manager();
    with_token(&mut m, key, "old");
    let (when, reason) = m.poll_timeout().unwrap();
    assert_eq!(reason, TimeoutReason::RefreshDue);
    // Too early: nothing happens.
    m.handle_timeout(at(10.0));
    assert!(m.poll_request().is_none());
    m.handle_timeout(Now::from_duration(when.since_origin()));
    let refresh = m.poll_request().expect("refresh started by the timer");
    assert_eq!(m.poll_timeout().unwrap().1, TimeoutReason::RequestDeadline);
    // Callers never waited: the old token is still attached meanwhile.
    assert_eq!(
        attached(&mut m, key, Now::from_duration(when.since_origin())).0,
        "Bearer old"
    );
    respond(
        &mut m,
        refresh.id(),
        200,
        &token_body("new", 3600),
        Now::from_duration(when.since_origin()),
    );
    assert_eq!(m.poll_timeout().unwrap().1, TimeoutReason::RefreshDue);
}

#[test]
fn without_proactive_refresh_only_callers_trigger_it() {
    let policy = RefreshPolicy {
        proactive: false,
        ..RefreshPolicy::default()
    };
    let (mut m, _, key) = manager_with(config().refresh_policy(policy));
    with_token(&mut m, key, "t");
    assert_eq!(m.poll_timeout().unwrap().1, TimeoutReason::TokenExpires);
    m.handle_timeout(at(3000.0));
    assert!(m.poll_request().is_none());
    assert_eq!(attached(&mut m, key, at(3000.0)).1, TokenState::Stale);
    assert!(m.poll_request().is_some());
}

#[test]
fn a_lost_request_times_out_and_releases_its_waiters() {
    let (mut m, key) = manager();
    let id = fetch(&mut m, key, at(0.0));
    assert!(matches!(m.authorize(key, at(1.0)), Authorization::Wait(w) if w == id));
    let (deadline, reason) = m.poll_timeout().unwrap();
    assert_eq!(reason, TimeoutReason::RequestDeadline);
    assert_eq!(deadline, at(30.0).monotonic());
    m.handle_timeout(at(30.0));
    let (error, _) = unavailable(&mut m, key, at(30.0));
    assert!(
        matches!(&error, TokenError::Transport(t) if t.kind() == TransportErrorKind::Timeout),
        "{error:?}"
    );
    // The late answer is refused: that flight is over.
    let late = http::Response::builder()
        .status(200)
        .body(token_body("late", 3600))
        .unwrap();
    assert!(m.handle_response(id, late, at(31.0)).is_err());
}

#[test]
fn unknown_and_repeated_request_ids_are_refused() {
    let (mut m, key) = manager();
    let id = fetch(&mut m, key, at(0.0));
    respond(&mut m, id, 200, &token_body("a", 3600), at(0.0));
    let again = http::Response::builder()
        .status(200)
        .body(token_body("b", 3600))
        .unwrap();
    assert!(m.handle_response(id, again, at(0.0)).is_err());
    let error = TransportError::new(TransportErrorKind::Io, "reset");
    assert!(m.handle_transport_error(id, error, at(0.0)).is_err());
    assert_eq!(attached(&mut m, key, at(1.0)).0, "Bearer a");
}

fn resource_401(
    m: &mut TokenManager,
    key: KeyId,
    sent: Option<&str>,
    attempt: u32,
    challenge: Option<&str>,
) -> ResourceOutcome {
    let mut headers = HeaderMap::new();
    if let Some(c) = challenge {
        headers.insert(WWW_AUTHENTICATE, HeaderValue::from_str(c).unwrap());
    }
    let sent = sent.map(|s| HeaderValue::from_str(s).unwrap());
    m.handle_resource_response(
        key,
        &ResourceResponse {
            status: StatusCode::UNAUTHORIZED,
            headers: &headers,
            sent_authorization: sent.as_ref(),
            uri: None,
            attempt,
        },
        at(10.0),
    )
}

#[test]
fn a_401_for_the_cached_token_invalidates_it_and_allows_one_retry() {
    let (mut m, key) = manager();
    with_token(&mut m, key, "current");
    events(&mut m);
    let outcome = resource_401(
        &mut m,
        key,
        Some("Bearer current"),
        0,
        Some(r#"Bearer error="invalid_token""#),
    );
    assert_eq!(outcome, ResourceOutcome::Retry);
    assert!(events(&mut m).contains(&Event::TokenInvalidated {
        key,
        reason: InvalidationReason::RejectedByResource
    }));
    assert!(m.snapshot(key).is_none(), "the snapshot is withdrawn too");
    fetch(&mut m, key, at(10.0));
    // The retry's own 401 is handed back: one retry only.
    assert_eq!(
        resource_401(&mut m, key, Some("Bearer current"), 1, None),
        ResourceOutcome::Deliver
    );
}

#[test]
fn a_401_for_an_older_token_does_not_invalidate_the_newer_one() {
    let (mut m, key) = manager();
    with_token(&mut m, key, "newer");
    events(&mut m);
    let outcome = resource_401(&mut m, key, Some("Bearer older"), 0, None);
    assert_eq!(
        outcome,
        ResourceOutcome::Retry,
        "retry with the newer token"
    );
    assert!(events(&mut m).is_empty());
    assert_eq!(attached(&mut m, key, at(11.0)).0, "Bearer newer");
}

#[test]
fn responses_that_a_new_token_cannot_fix_are_delivered() {
    let (mut m, key) = manager();
    with_token(&mut m, key, "t");
    let outcome = resource_401(
        &mut m,
        key,
        Some("Bearer t"),
        0,
        Some(r#"Bearer error="insufficient_scope", scope="admin""#),
    );
    assert_eq!(outcome, ResourceOutcome::Deliver);
    assert_eq!(
        resource_401(&mut m, key, None, 0, None),
        ResourceOutcome::Deliver
    );
    let headers = HeaderMap::new();
    let sent = HeaderValue::from_static("Bearer t");
    for status in [
        StatusCode::OK,
        StatusCode::FORBIDDEN,
        StatusCode::INTERNAL_SERVER_ERROR,
    ] {
        let response = ResourceResponse {
            status,
            headers: &headers,
            sent_authorization: Some(&sent),
            uri: None,
            attempt: 0,
        };
        assert_eq!(
            m.handle_resource_response(key, &response, at(1.0)),
            ResourceOutcome::Deliver
        );
    }
    assert_eq!(attached(&mut m, key, at(2.0)).0, "Bearer t");
}

/// A 401 from an API to a request that carried `sent`, at `now`.
fn rejected(
    m: &mut TokenManager,
    key: KeyId,
    sent: &str,
    attempt: u32,
    now: Now,
) -> ResourceOutcome {
    let headers = HeaderMap::new();
    let sent = HeaderValue::from_str(sent).unwrap();
    m.handle_resource_response(
        key,
        &ResourceResponse {
            status: StatusCode::UNAUTHORIZED,
            headers: &headers,
            sent_authorization: Some(&sent),
            uri: None,
            attempt,
        },
        now,
    )
}

/// Plays an adapter calling an API that answers 401 to every token: one
/// call and, if allowed, its one retry, fetching tokens (`t1`, `t2`, …) as
/// the core asks. Returns the outcome of each attempt.
fn call_rejecting_api(
    m: &mut TokenManager,
    key: KeyId,
    now: Now,
    token_requests: &mut u32,
) -> Vec<ResourceOutcome> {
    let mut outcomes = Vec::new();
    for attempt in 0..=1 {
        if let Authorization::Fetch(id) = m.authorize(key, now) {
            m.poll_request().expect("a token request");
            *token_requests += 1;
            let token = format!("t{token_requests}");
            respond(m, id, 200, &token_body(&token, 3600), now);
        }
        let (header, _) = attached(m, key, now);
        let outcome = rejected(m, key, &header, attempt, now);
        outcomes.push(outcome);
        if outcome == ResourceOutcome::Deliver {
            break;
        }
    }
    outcomes
}

fn count(events: &[Event], wanted: impl Fn(&Event) -> bool) -> usize {
    events.iter().filter(|e| wanted(e)).count()
}

fn rejected_by_resource(e: &Event) -> bool {
    matches!(
        e,
        Event::TokenInvalidated {
            reason: InvalidationReason::RejectedByResource,
            ..
        }
    )
}

fn damped(e: &Event) -> bool {
    matches!(e, Event::RejectionDamped { .. })
}

#[test]
fn an_api_that_rejects_every_token_costs_two_token_requests_per_damping_window() {
    let (mut m, key) = manager();
    assert_eq!(
        m.config().resource_rejection_damping,
        Duration::from_secs(10)
    );
    let mut requests = 0;
    // 100 calls between t = 1 s and t = 5.95 s: all within one window.
    let outcomes: Vec<_> = (0..100)
        .map(|call| call_rejecting_api(&mut m, key, at(1.0 + call as f64 * 0.05), &mut requests))
        .collect();
    assert_eq!(requests, 2, "the first token, and one after the first 401");
    // The first 401 throws t1 away and allows the retry; t2 was fetched after
    // it, so its 401s are handed to the callers, with no retry and no new token.
    assert_eq!(
        outcomes[0],
        [ResourceOutcome::Retry, ResourceOutcome::Deliver]
    );
    for call in &outcomes[1..] {
        assert_eq!(call, &[ResourceOutcome::Deliver]);
    }
    let seen = events(&mut m);
    assert_eq!(count(&seen, rejected_by_resource), 1);
    assert_eq!(count(&seen, damped), 100);
    assert!(seen.contains(&Event::RejectionDamped { key }));
    assert_eq!(attached(&mut m, key, at(6.0)).0, "Bearer t2", "kept");

    // The window runs from the first 401 (t = 1 s) for 10 s.
    assert_eq!(
        rejected(&mut m, key, "Bearer t2", 0, at(10.999)),
        ResourceOutcome::Deliver
    );
    assert_eq!(
        rejected(&mut m, key, "Bearer t2", 0, at(11.0)),
        ResourceOutcome::Retry,
        "after the window a 401 invalidates again"
    );
    let seen = events(&mut m);
    assert_eq!(count(&seen, rejected_by_resource), 1);
    assert_eq!(count(&seen, damped), 1, "the one at 10.999 s");
    // ... and opens a new window, from 11 s to 21 s.
    let id = fetch(&mut m, key, at(11.0));
    respond(&mut m, id, 200, &token_body("t3", 3600), at(11.2));
    assert_eq!(
        rejected(&mut m, key, "Bearer t3", 1, at(11.5)),
        ResourceOutcome::Deliver
    );
    assert_eq!(
        rejected(&mut m, key, "Bearer t3", 0, at(20.9)),
        ResourceOutcome::Deliver
    );
    assert_eq!(count(&events(&mut m), damped), 2);
    assert_eq!(attached(&mut m, key, at(20.9)).0, "Bearer t3");
    assert_eq!(
        rejected(&mut m, key, "Bearer t3", 0, at(21.0)),
        ResourceOutcome::Retry
    );
    assert_eq!(count(&events(&mut m), rejected_by_resource), 1);
}

#[test]
fn rejection_damping_leaves_other_answers_alone() {
    let (mut m, key) = manager();
    let mut requests = 0;
    call_rejecting_api(&mut m, key, at(1.0), &mut requests);
    events(&mut m);
    // A 401 for an older token: nothing to invalidate, the retry carries t2.
    assert_eq!(
        rejected(&mut m, key, "Bearer t1", 0, at(2.0)),
        ResourceOutcome::Retry
    );
    // insufficient_scope: delivered, as always, and not a damped rejection.
    assert_eq!(
        resource_401(
            &mut m,
            key,
            Some("Bearer t2"),
            0,
            Some(r#"Bearer error="insufficient_scope""#)
        ),
        ResourceOutcome::Deliver
    );
    assert!(events(&mut m).is_empty());
    assert_eq!(attached(&mut m, key, at(3.0)).0, "Bearer t2");
}

#[test]
fn rejection_damping_can_be_turned_off() {
    let mut m = TokenManager::new(
        ManagerConfig {
            resource_rejection_damping: Duration::ZERO,
            ..ManagerConfig::default()
        },
        42,
    );
    let client = m_add(&mut m);
    let key = m.default_key(client);
    let mut requests = 0;
    for call in 0..10 {
        let outcomes = call_rejecting_api(&mut m, key, at(1.0 + call as f64), &mut requests);
        assert_eq!(outcomes, [ResourceOutcome::Retry, ResourceOutcome::Deliver]);
    }
    assert_eq!(
        requests, 20,
        "two token requests per call, as before damping"
    );
    assert_eq!(count(&events(&mut m), damped), 0);
}

#[test]
fn a_token_requested_before_the_rejection_is_not_damped() {
    let (mut m, key) = manager();
    with_token(&mut m, key, "a");
    // Stale: a refresh is requested at 3000 s ...
    let (_, state) = attached(&mut m, key, at(3000.0));
    assert_eq!(state, TokenState::Stale);
    let refresh = m.poll_request().expect("a refresh").id();
    // ... and the API rejects the current token while it is in flight.
    assert_eq!(
        rejected(&mut m, key, "Bearer a", 0, at(3000.5)),
        ResourceOutcome::Retry
    );
    respond(&mut m, refresh, 200, &token_body("b", 3600), at(3001.0));
    events(&mut m);
    // `b` was asked for before that 401: its own 401 is not damped.
    assert_eq!(
        rejected(&mut m, key, "Bearer b", 0, at(3001.5)),
        ResourceOutcome::Retry
    );
    assert_eq!(count(&events(&mut m), rejected_by_resource), 1);
    // `c`, asked for after it, is.
    let id = fetch(&mut m, key, at(3002.0));
    respond(&mut m, id, 200, &token_body("c", 3600), at(3002.0));
    assert_eq!(
        rejected(&mut m, key, "Bearer c", 0, at(3003.0)),
        ResourceOutcome::Deliver
    );
    assert_eq!(count(&events(&mut m), damped), 1);
}

#[test]
fn force_refresh_and_invalidate() {
    let (mut m, key) = manager();
    with_token(&mut m, key, "one");
    let ForcedRefresh::Started(id) = m.force_refresh(key, at(1.0)) else {
        panic!()
    };
    assert_eq!(m.force_refresh(key, at(1.0)), ForcedRefresh::InFlight(id));
    assert_eq!(
        attached(&mut m, key, at(1.0)).0,
        "Bearer one",
        "still served meanwhile"
    );
    m.poll_request().unwrap();
    respond(&mut m, id, 500, "", at(1.5));
    assert!(matches!(
        m.force_refresh(key, at(1.6)),
        ForcedRefresh::BackingOff { .. }
    ));
    m.invalidate(key, at(1.7));
    let (error, _) = unavailable(&mut m, key, at(1.7));
    assert_eq!(error.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
    let id = fetch(&mut m, key, at(5.0));
    respond(&mut m, id, 200, &token_body("two", 3600), at(5.0));
    assert_eq!(attached(&mut m, key, at(5.0)).0, "Bearer two");
}

#[test]
fn keys_separate_scopes_resources_and_parameters() {
    let (mut m, client, default) = manager_with(config());
    let same = m.key(client, &KeyOverrides::new().scope("api")).unwrap();
    assert_eq!(same, default);
    let admin = m
        .key(client, &KeyOverrides::new().scope("api admin"))
        .unwrap();
    let admin_again = m
        .key(client, &KeyOverrides::new().scope("admin api"))
        .unwrap();
    assert_eq!(admin, admin_again);
    let resource = m
        .key(
            client,
            &KeyOverrides::new()
                .resource("https://other.example/")
                .unwrap(),
        )
        .unwrap();
    let tenant = m
        .key(client, &KeyOverrides::new().param("tenant", "b").unwrap())
        .unwrap();
    let keys = [default, admin, resource, tenant];
    for (i, a) in keys.iter().enumerate() {
        for b in &keys[i + 1..] {
            assert_ne!(a, b);
        }
    }
    // Each key gets its own token request, with its own form.
    fetch(&mut m, default, at(0.0));
    match m.authorize(admin, at(0.0)) {
        Authorization::Fetch(_) => {}
        other => panic!("{other:?}"),
    }
    let request = m.poll_request().unwrap();
    assert_eq!(request.key(), admin);
    assert_eq!(
        request.request().body(),
        b"grant_type=client_credentials&scope=admin+api"
    );
}

#[test]
fn the_number_of_keys_is_bounded() {
    let mut m = TokenManager::new(
        ManagerConfig {
            max_keys: 3,
            ..ManagerConfig::default()
        },
        1,
    );
    let client = m.add_client("m2m", config()).unwrap();
    m.key(client, &KeyOverrides::new().scope("a")).unwrap();
    m.key(client, &KeyOverrides::new().scope("b")).unwrap();
    assert!(m.key(client, &KeyOverrides::new().scope("c")).is_err());
    assert!(
        m.key(client, &KeyOverrides::new().scope("a")).is_ok(),
        "existing keys still resolve"
    );
    assert!(m.add_client("m2m", config()).is_err(), "names are unique");
    assert_eq!(m.client("m2m"), Some(client));
}

#[test]
fn dpop_tokens_are_refused_without_a_dpop_key() {
    let (mut m, key) = manager();
    let id = fetch(&mut m, key, at(0.0));
    respond(
        &mut m,
        id,
        200,
        r#"{"access_token":"x","token_type":"DPoP","expires_in":60}"#,
        at(0.0),
    );
    let (error, _) = unavailable(&mut m, key, at(0.0));
    assert!(
        matches!(&error, TokenError::InvalidResponse(e) if e.problem() == &ResponseProblem::UnsupportedTokenType("DPoP".into())),
        "{error:?}"
    );
}

#[test]
fn snapshots_tell_readers_when_to_come_back() {
    let (mut m, key) = manager();
    with_token(&mut m, key, "t");
    let mut latest = None;
    while let Some((k, snapshot)) = m.poll_snapshot() {
        assert_eq!(k, key);
        latest = snapshot;
    }
    let snapshot = latest.expect("published");
    assert_eq!(snapshot.header(), "Bearer t");
    assert!(snapshot.fresh_until() < snapshot.attach_until());
    assert!(!format!("{snapshot:?}").contains("Bearer t"));
    // While a refresh is in flight, readers need not come back until the end of life.
    let (header, _) = attached(
        &mut m,
        key,
        Now::from_duration(snapshot.fresh_until().since_origin()),
    );
    assert_eq!(header, "Bearer t");
    let (_, during) = m.poll_snapshot().unwrap();
    let during = during.unwrap();
    assert_eq!(during.fresh_until(), during.attach_until());
    assert_eq!(during.generation(), snapshot.generation());
    // A new token gets a new generation.
    let refresh = m.poll_request().unwrap();
    respond(
        &mut m,
        refresh.id(),
        200,
        &token_body("u", 3600),
        at(3000.0),
    );
    let (_, after) = m.poll_snapshot().unwrap();
    assert_ne!(after.unwrap().generation(), snapshot.generation());
    assert!(m.poll_snapshot().is_none(), "each change is published once");
}

#[test]
fn time_going_backwards_never_extends_a_token() {
    let (mut m, key) = manager();
    let id = fetch(&mut m, key, at(1000.0));
    respond(&mut m, id, 200, &token_body("t", 100), at(1000.0));
    // The clock jumps past the usable life, then back before the issue time.
    assert!(!matches!(
        m.authorize(key, at(1080.0)),
        Authorization::Attach(_)
    ));
    assert!(!matches!(
        m.authorize(key, at(500.0)),
        Authorization::Attach(_)
    ));
    assert!(m.token(key, at(500.0)).is_none());
}

#[test]
fn secrets_and_tokens_stay_out_of_debug_output() {
    let (mut m, key) = manager();
    let id = fetch(&mut m, key, at(0.0));
    respond(
        &mut m,
        id,
        200,
        &token_body("tok-SECRET-VALUE", 3600),
        at(0.0),
    );
    attached(&mut m, key, at(1.0));
    let debug = format!("{m:?}");
    assert!(!debug.contains(SECRET), "client secret leaked");
    assert!(!debug.contains("tok-SECRET-VALUE"), "access token leaked");
    let view = m.token(key, at(1.0)).unwrap();
    assert!(!format!("{view:?}").contains("tok-SECRET-VALUE"));
    assert_eq!(view.access_token().expose_secret(), "tok-SECRET-VALUE");
    for event in events(&mut m) {
        assert!(!format!("{event:?}").contains("tok-SECRET-VALUE"));
    }
}

#[test]
fn an_echoing_server_cannot_leak_the_secret_through_errors() {
    let (mut m, key) = manager();
    let id = fetch(&mut m, key, at(0.0));
    let encoded = "correct+horse+battery+staple";
    respond(
        &mut m,
        id,
        500,
        &format!("you sent client_secret={encoded}"),
        at(0.0),
    );
    let (error, _) = unavailable(&mut m, key, at(0.0));
    let text = format!("{error} {error:?}");
    assert!(!text.contains(encoded) && !text.contains(SECRET), "{text}");
}

/// The scope-difference events a token granted with `granted` (`None`: no
/// `scope` field) raises, for a client configured with `requested`.
fn scope_differences(requested: &str, granted: Option<&str>) -> Vec<(String, String)> {
    let (mut m, _, key) = manager_with(config().scope(requested));
    let id = fetch(&mut m, key, at(0.0));
    let scope = granted.map_or(String::new(), |s| format!(r#","scope":"{s}""#));
    let body = format!(r#"{{"access_token":"t","token_type":"Bearer","expires_in":60{scope}}}"#);
    respond(&mut m, id, 200, &body, at(0.0));
    attached(&mut m, key, at(1.0));
    events(&mut m)
        .into_iter()
        .filter_map(|e| match e {
            Event::ScopeDiffers {
                key: k,
                requested,
                granted,
            } => {
                assert_eq!(k, key);
                Some((requested, granted))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_scope_the_server_drops_is_reported_and_the_token_still_used() {
    assert_eq!(
        scope_differences("read write", Some("read")),
        [("read write".to_owned(), "read".to_owned())]
    );
    assert_eq!(
        scope_differences("read", Some("read admin")),
        [("read".to_owned(), "read admin".to_owned())],
        "more than asked is a difference too"
    );
}

#[test]
fn the_same_scope_in_any_order_or_none_said_or_none_asked_is_not_reported() {
    assert!(scope_differences("write read", Some("read write read")).is_empty());
    assert!(
        scope_differences("read", None).is_empty(),
        "RFC 6749 §5.1: omitted means as requested"
    );
    assert!(
        scope_differences("", Some("default")).is_empty(),
        "nothing asked: the server's default scope is no surprise"
    );
}
