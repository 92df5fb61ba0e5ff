//! The health view: one key walked through every state by hand, with the
//! clock and the token endpoint's answers typed in.

use std::time::Duration;

use token_keeper::{
    Authorization, BackoffPolicy, ClientAuth, ClientConfig, ClientSecret, HealthState, KeyHealth,
    KeyId, KeyOverrides, ManagerConfig, Now, RefreshPolicy, RequestId, TokenManager,
};

const SECRET: &str = "health-secret-5e1d";

/// No jitter anywhere: a 100 s token requested at `t` is Fresh until
/// `t + 60` (80 % of its usable 75 s) and usable until `t + 75`; the first
/// backoff lasts exactly 1 s.
fn manager() -> (TokenManager, KeyId) {
    let config = ClientConfig::new(
        "https://as.example/token",
        "m2m",
        ClientAuth::Basic(ClientSecret::new(SECRET)),
    )
    .unwrap()
    .scope("api")
    .refresh_policy(RefreshPolicy {
        refresh_jitter: 0.0,
        ..RefreshPolicy::default()
    })
    .backoff_policy(BackoffPolicy {
        jitter: 0.0,
        ..BackoffPolicy::default()
    });
    let mut manager = TokenManager::new(ManagerConfig::default(), 3);
    let client = manager.add_client("m2m", config).unwrap();
    let key = manager.default_key(client);
    (manager, key)
}

fn at(secs: f64) -> Now {
    Now::from_duration(Duration::from_secs_f64(secs))
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn fetch(manager: &mut TokenManager, key: KeyId, now: Now) -> RequestId {
    let Authorization::Fetch(id) = manager.authorize(key, now) else {
        panic!("expected a fetch")
    };
    manager.poll_request().expect("a request was queued");
    id
}

fn respond(manager: &mut TokenManager, id: RequestId, status: u16, body: &str, now: Now) {
    let response = http::Response::builder()
        .status(status)
        .body(body.to_owned())
        .unwrap();
    manager.handle_response(id, response, now).unwrap();
}

fn token(name: &str) -> String {
    format!(r#"{{"access_token":"{name}","token_type":"Bearer","expires_in":100}}"#)
}

#[test]
fn a_key_walks_from_empty_through_fetching_fresh_stale_and_backoff_to_expired() {
    let (mut m, key) = manager();
    let h = m.health(key, at(0.0));
    assert_eq!(h.state, HealthState::Empty);
    assert_eq!(
        (h.usable_for, h.refresh_in, h.last_error, h.token_requests),
        (None, None, None, 0)
    );

    let id = fetch(&mut m, key, at(10.0));
    let h = m.health(key, at(10.5));
    assert_eq!(h.state, HealthState::Fetching);
    assert_eq!((h.usable_for, h.refresh_in), (None, Some(Duration::ZERO)));
    assert_eq!(h.token_requests, 1);

    respond(&mut m, id, 200, &token("tok-1"), at(11.0));
    let h = m.health(key, at(11.0));
    assert_eq!(h.state, HealthState::Fresh);
    assert_eq!(h.usable_for, Some(secs(74.0)), "usable until 10 + 75");
    assert_eq!(h.refresh_in, Some(secs(59.0)), "refresh point at 10 + 60");

    // Past the refresh point: Stale, and a refresh is due now; then the
    // timer starts it, and the key stays Stale while it runs.
    let h = m.health(key, at(70.0));
    assert_eq!(h.state, HealthState::Stale);
    assert_eq!(
        (h.usable_for, h.refresh_in),
        (Some(secs(15.0)), Some(Duration::ZERO))
    );
    m.handle_timeout(at(70.0));
    let refresh = m.poll_request().expect("the proactive refresh").id();
    let h = m.health(key, at(70.0));
    assert_eq!(h.state, HealthState::Stale);
    assert_eq!(h.token_requests, 2);

    // The server fails: backing off, still serving the token, with the error.
    respond(&mut m, refresh, 503, "down for maintenance", at(71.0));
    let h = m.health(key, at(71.5));
    assert_eq!(h.state, HealthState::BackingOff);
    assert_eq!(h.usable_for, Some(secs(13.5)));
    assert_eq!(h.refresh_in, Some(secs(0.5)), "the backoff ends at 72");
    let error = h.last_error.expect("the failure");
    assert!(error.message.contains("503"), "{}", error.message);
    assert_eq!(error.ago, secs(0.5));

    // Past the end of its usable life: Expired, before and after the timer
    // drops the token.
    let h = m.health(key, at(90.0));
    assert_eq!(h.state, HealthState::Expired);
    assert_eq!((h.usable_for, h.refresh_in), (None, None));
    m.handle_timeout(at(90.0));
    assert!(m.poll_request().is_none(), "no request until a caller asks");
    let h = m.health(key, at(90.0));
    assert_eq!(h.state, HealthState::Expired);
    assert_eq!(h.last_error.unwrap().ago, secs(19.0));
    assert_eq!(h.token_requests, 2);

    // A caller asks: Fetching, then Fresh again; the last error is kept.
    let id = fetch(&mut m, key, at(95.0));
    assert_eq!(m.health(key, at(95.0)).state, HealthState::Fetching);
    respond(&mut m, id, 200, &token("tok-2"), at(95.0));
    let h = m.health(key, at(96.0));
    assert_eq!(h.state, HealthState::Fresh);
    assert_eq!(h.last_error.unwrap().ago, secs(25.0));
    assert_eq!(h.token_requests, 3);
}

#[test]
fn a_failure_without_a_token_backs_off_then_the_key_is_empty_not_expired() {
    let (mut m, key) = manager();
    let id = fetch(&mut m, key, at(0.0));
    respond(
        &mut m,
        id,
        400,
        r#"{"error":"invalid_scope","error_description":"no such scope"}"#,
        at(1.0),
    );
    let h = m.health(key, at(1.25));
    assert_eq!(h.state, HealthState::BackingOff);
    assert_eq!(h.usable_for, None);
    assert_eq!(h.refresh_in, Some(secs(0.75)));
    assert!(h.last_error.unwrap().message.contains("invalid_scope"));
    // The backoff is over: nothing usable, nothing ever expired.
    assert_eq!(m.health(key, at(5.0)).state, HealthState::Empty);
}

#[test]
fn a_forced_refresh_keeps_the_key_fresh_and_an_invalidation_empties_it() {
    let (mut m, key) = manager();
    let id = fetch(&mut m, key, at(0.0));
    respond(&mut m, id, 200, &token("tok-1"), at(0.0));
    let token_keeper::ForcedRefresh::Started(forced) = m.force_refresh(key, at(5.0)) else {
        panic!("a refresh starts")
    };
    let h = m.health(key, at(5.0));
    assert_eq!(h.state, HealthState::Fresh, "the token is served meanwhile");
    assert_eq!(h.refresh_in, Some(Duration::ZERO), "a request is under way");
    respond(&mut m, forced, 200, &token("tok-2"), at(6.0));
    m.invalidate(key, at(7.0));
    let h = m.health(key, at(7.0));
    assert_eq!(h.state, HealthState::Empty, "dropped by hand, not expired");
    assert_eq!(h.token_requests, 2);
}

#[test]
fn the_health_view_holds_no_token_and_no_secret() {
    let (mut m, key) = manager();
    let id = fetch(&mut m, key, at(0.0));
    respond(&mut m, id, 200, &token("tok-visible-if-leaked"), at(0.0));
    m.force_refresh(key, at(1.0));
    let refresh = m.poll_request().unwrap().id();
    respond(
        &mut m,
        refresh,
        500,
        &format!("echo client_secret={SECRET} tok-visible-if-leaked"),
        at(2.0),
    );
    let h: KeyHealth = m.health(key, at(2.0));
    assert_eq!(h.state, HealthState::BackingOff);
    let text = format!("{h:?} {}", h.last_error.as_ref().unwrap().message);
    assert!(!text.contains(SECRET), "{text}");
    assert!(!text.contains("tok-visible-if-leaked"), "{text}");
}

#[test]
fn states_have_short_names() {
    let names: Vec<&str> = [
        HealthState::Empty,
        HealthState::Fetching,
        HealthState::Fresh,
        HealthState::Stale,
        HealthState::Expired,
        HealthState::BackingOff,
    ]
    .iter()
    .map(|s| s.as_str())
    .collect();
    assert_eq!(
        names,
        [
            "empty",
            "fetching",
            "fresh",
            "stale",
            "expired",
            "backing_off"
        ]
    );
    assert_eq!(HealthState::BackingOff.to_string(), "backing_off");
}

#[test]
fn keys_are_named_by_their_client_and_what_sets_them_apart() {
    let (mut m, key) = manager();
    let client = m.client_of(key);
    assert_eq!(m.client_name(client), "m2m");
    assert_eq!(m.key_overrides(key), None, "the configured request");
    let reports = m
        .key(
            client,
            &KeyOverrides::new()
                .scope("reports.read")
                .param("tenant", "acme")
                .unwrap(),
        )
        .unwrap();
    assert_eq!(m.client_of(reports), client);
    assert_eq!(
        m.key_overrides(reports).as_deref(),
        Some(r#"scope="reports.read" params=[tenant]"#),
        "parameter values are left out"
    );
    assert_eq!(m.keys().collect::<Vec<_>>(), [key, reports]);
    assert_eq!(m.health(reports, at(0.0)).state, HealthState::Empty);
}
