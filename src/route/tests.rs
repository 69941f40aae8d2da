//! The router end to end: plans (aliases, `auto`, native models, the
//! header) and attempts over them (fallback, retry, deadline, breakers).

use std::time::{Duration, Instant};

use super::testing::{sizing, Max, BODY};
use super::*;

fn alias(policy: Policy, targets: &[&str]) -> Alias {
    Alias {
        policy,
        targets: targets
            .iter()
            .map(|t| AliasTarget {
                target: Target::parse(t).unwrap(),
                max_tokens: None,
            })
            .collect(),
    }
}

fn routing() -> Routing {
    let mut r = Routing {
        default_alias: Some("smart".into()),
        ..Routing::default()
    };
    r.aliases.insert(
        "smart".into(),
        alias(
            Policy::Ordered,
            &["anthropic/claude-sonnet-4-5", "openrouter/openai/gpt-5"],
        ),
    );
    r.aliases.insert(
        "thrifty".into(),
        alias(
            Policy::Cheapest,
            &["anthropic/claude-sonnet-4-5", "openai/gpt-5-mini"],
        ),
    );
    r.aliases.insert(
        "quick".into(),
        alias(
            Policy::Fastest,
            &["anthropic/claude-haiku-4-5", "openai/gpt-5-nano"],
        ),
    );
    r.account_header_targets.insert(
        "locked".into(),
        vec![TargetPattern::parse("anthropic/*").unwrap()],
    );
    r
}

fn router(r: Routing) -> Router {
    Router::new(
        r,
        vec!["anthropic".into(), "openai".into(), "openrouter".into()],
    )
}

fn req<'a>(model: &'a str, header: Option<&'a str>, account: &'a str) -> RouteRequest<'a> {
    RouteRequest {
        model,
        native_provider: "anthropic",
        account,
        fallback_header: header,
        sizing: sizing(),
    }
}

fn targets(p: &Plan) -> Vec<String> {
    p.candidates.iter().map(|c| c.target.to_string()).collect()
}

fn plan(r: &Router, model: &str, header: Option<&str>) -> Plan {
    r.plan(&req(model, header, "team"), &PriceTable::builtin())
        .unwrap()
}

// === plans ===

#[test]
fn auto_resolves_to_the_default_alias() {
    let r = router(routing());
    let p = plan(&r, "auto", None);
    assert_eq!(p.alias.as_deref(), Some("smart"));
    assert_eq!(
        targets(&p),
        ["anthropic/claude-sonnet-4-5", "openrouter/openai/gpt-5"]
    );
    // Without a default alias, `auto` is a model like any other.
    let bare = router(Routing::default());
    assert_eq!(targets(&plan(&bare, "auto", None)), ["anthropic/auto"]);
}

#[test]
fn a_plain_model_is_one_native_target() {
    let r = router(routing());
    let p = plan(&r, "claude-opus-4-1", None);
    assert_eq!(p.alias, None);
    assert_eq!(targets(&p), ["anthropic/claude-opus-4-1"]);
}

#[test]
fn policies_order_the_alias() {
    let r = router(routing());
    assert_eq!(
        targets(&plan(&r, "thrifty", None)),
        ["openai/gpt-5-mini", "anthropic/claude-sonnet-4-5"]
    );
    // Unmeasured: config order; then the measured faster one first
    // (still behind any unmeasured).
    assert_eq!(
        targets(&plan(&r, "quick", None)),
        ["anthropic/claude-haiku-4-5", "openai/gpt-5-nano"]
    );
    let haiku = Target::parse("anthropic/claude-haiku-4-5").unwrap();
    let nano = Target::parse("openai/gpt-5-nano").unwrap();
    r.health().observe_ttft(&haiku, Duration::from_millis(800));
    assert_eq!(
        targets(&plan(&r, "quick", None)),
        ["openai/gpt-5-nano", "anthropic/claude-haiku-4-5"]
    );
    r.health().observe_ttft(&nano, Duration::from_millis(900));
    assert_eq!(
        targets(&plan(&r, "quick", None)),
        ["anthropic/claude-haiku-4-5", "openai/gpt-5-nano"]
    );
}

#[test]
fn header_targets_follow_as_fallbacks() {
    let r = router(routing());
    let p = plan(
        &r,
        "claude-opus-4-1",
        Some("openrouter/openai/gpt-5, anthropic/claude-opus-4-1"),
    );
    assert_eq!(
        targets(&p),
        ["anthropic/claude-opus-4-1", "openrouter/openai/gpt-5"]
    );
}

#[test]
fn a_disallowed_header_target_is_a_403() {
    let r = router(routing());
    let prices = PriceTable::builtin();
    let err = r
        .plan(&req("auto", Some("openai/gpt-5"), "locked"), &prices)
        .unwrap_err();
    assert_eq!(err.status(), 403);
    assert_eq!(err.kind(), "fallback_not_allowed");
    assert!(r
        .plan(
            &req("auto", Some("anthropic/claude-opus-4-1"), "locked"),
            &prices
        )
        .is_ok());
    let unknown = r
        .plan(&req("auto", Some("mistral/large"), "team"), &prices)
        .unwrap_err();
    assert_eq!(unknown.status(), 400);
}

#[test]
fn the_plan_reserves_its_largest_worst_case() {
    let mut rt = routing();
    rt.aliases.insert(
        "capped".into(),
        Alias {
            policy: Policy::Ordered,
            targets: vec![
                AliasTarget {
                    target: Target::parse("anthropic/claude-opus-4-1").unwrap(),
                    max_tokens: Some(10),
                },
                AliasTarget {
                    target: Target::parse("anthropic/claude-sonnet-4-5").unwrap(),
                    max_tokens: None,
                },
            ],
        },
    );
    let r = router(rt);
    let prices = PriceTable::builtin();
    let p = plan(&r, "capped", None);
    let worst = p.worst_case(&prices, &sizing()).unwrap();
    // Sonnet at 1000 output tokens beats Opus capped at 10.
    assert_eq!(worst.worst_nusd, BODY.len() as u64 * 3_000 + 1000 * 15_000);
    assert_eq!(p.candidates[0].output_bound(1000), 10);
    assert_eq!(p.candidates[0].output_bound(5), 5);
}

// === attempts ===

fn upstream(status: u16) -> Outcome {
    Outcome::Upstream(UpstreamError {
        status,
        ..UpstreamError::default()
    })
}

fn step(next: &Next) -> (usize, Duration, StepKind) {
    match next {
        Next::Try(s) => (s.candidate, s.after, s.kind),
        Next::Stop(r) => panic!("stopped: {r:?}"),
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn falls_back_then_retries_with_backoff() {
    let r = router(routing());
    let t0 = Instant::now();
    let mut a = plan(&r, "smart", None).attempts(r.routing(), t0);
    let h = r.health();
    assert_eq!(step(&a.first(h, t0)), (0, Duration::ZERO, StepKind::First));
    let n = a.report(h, &upstream(529), None, t0, &mut Max);
    assert_eq!(step(&n), (1, Duration::ZERO, StepKind::FallBack));
    let n = a.report(h, &Outcome::ConnectFailure, None, t0, &mut Max);
    assert_eq!(step(&n), (0, ms(200), StepKind::Retry));
    let n = a.report(h, &upstream(503), None, t0, &mut Max);
    assert_eq!(n, Next::Stop(StopReason::Exhausted));
    assert_eq!(a.made(), 3);
}

#[test]
fn success_stops_and_feeds_the_latency_average() {
    let r = router(routing());
    let t0 = Instant::now();
    let mut a = plan(&r, "smart", None).attempts(r.routing(), t0);
    a.first(r.health(), t0);
    let n = a.report(r.health(), &Outcome::Success, Some(ms(420)), t0, &mut Max);
    assert_eq!(n, Next::Stop(StopReason::Answered));
    let sonnet = Target::parse("anthropic/claude-sonnet-4-5").unwrap();
    assert_eq!(r.health().ttft(&sonnet), Some(ms(420)));
}

#[test]
fn client_errors_and_late_failures_stop() {
    let r = router(routing());
    let t0 = Instant::now();
    for o in [
        upstream(400),
        upstream(401),
        upstream(413),
        Outcome::AfterFirstByte,
    ] {
        let mut a = plan(&r, "smart", None).attempts(r.routing(), t0);
        a.first(r.health(), t0);
        let n = a.report(r.health(), &o, None, t0, &mut Max);
        assert_eq!(n, Next::Stop(StopReason::Final), "{o:?}");
    }
    let mut lax = routing();
    lax.fallback_on_client_errors = true;
    let r = router(lax);
    let mut a = plan(&r, "smart", None).attempts(r.routing(), t0);
    a.first(r.health(), t0);
    let n = a.report(r.health(), &upstream(400), None, t0, &mut Max);
    assert_eq!(step(&n), (1, Duration::ZERO, StepKind::FallBack));
    // The 400's target is not tried again.
    let n = a.report(r.health(), &upstream(529), None, t0, &mut Max);
    assert_eq!(step(&n), (1, ms(200), StepKind::Retry));
}

#[test]
fn retry_after_is_honoured_on_the_same_target() {
    let r = router(Routing::default());
    let t0 = Instant::now();
    let mut a = plan(&r, "claude-opus-4-1", None).attempts(r.routing(), t0);
    a.first(r.health(), t0);
    let limited = Outcome::Upstream(UpstreamError {
        status: 429,
        retry_after: Some(Duration::from_secs(3)),
        ..UpstreamError::default()
    });
    let n = a.report(r.health(), &limited, None, t0, &mut Max);
    assert_eq!(step(&n), (0, Duration::from_secs(3), StepKind::Retry));
    // One that would wait past the deadline is not made.
    let later = t0 + Duration::from_secs(3);
    let far = Outcome::Upstream(UpstreamError {
        status: 429,
        retry_after: Some(Duration::from_secs(120)),
        ..UpstreamError::default()
    });
    let n = a.report(r.health(), &far, None, later, &mut Max);
    assert_eq!(n, Next::Stop(StopReason::Deadline));
}

#[test]
fn the_retry_goes_to_the_target_ready_soonest() {
    let r = router(routing());
    let t0 = Instant::now();
    let mut a = plan(&r, "smart", None).attempts(r.routing(), t0);
    a.first(r.health(), t0);
    let slow = Outcome::Upstream(UpstreamError {
        status: 429,
        retry_after: Some(Duration::from_secs(10)),
        ..UpstreamError::default()
    });
    a.report(r.health(), &slow, None, t0, &mut Max);
    let n = a.report(r.health(), &upstream(500), None, t0, &mut Max);
    assert_eq!(step(&n), (1, ms(200), StepKind::Retry));
}

#[test]
fn the_deadline_caps_backoff() {
    let mut rt = routing();
    rt.deadline = ms(150);
    let r = router(rt);
    let t0 = Instant::now();
    let mut a = plan(&r, "smart", None).attempts(r.routing(), t0);
    a.first(r.health(), t0);
    a.report(r.health(), &upstream(529), None, t0, &mut Max);
    let n = a.report(r.health(), &upstream(529), None, t0, &mut Max);
    assert_eq!(n, Next::Stop(StopReason::Deadline));
    assert_eq!(a.remaining(t0 + ms(100)), ms(50));
}

#[test]
fn x_should_retry_false_bars_the_target_but_not_the_others() {
    let r = router(routing());
    let t0 = Instant::now();
    let mut a = plan(&r, "smart", None).attempts(r.routing(), t0);
    a.first(r.health(), t0);
    let no = Outcome::Upstream(UpstreamError {
        status: 529,
        should_retry: Some(false),
        ..UpstreamError::default()
    });
    let n = a.report(r.health(), &no, None, t0, &mut Max);
    assert_eq!(step(&n), (1, Duration::ZERO, StepKind::FallBack));
    let n = a.report(r.health(), &no, None, t0, &mut Max);
    assert_eq!(n, Next::Stop(StopReason::Exhausted));
}

#[test]
fn untranslatable_targets_are_skipped_without_counting() {
    let mut rt = routing();
    rt.max_attempts = 1;
    let r = router(rt);
    let t0 = Instant::now();
    let mut a = plan(&r, "smart", None).attempts(r.routing(), t0);
    a.first(r.health(), t0);
    let n = a.report(r.health(), &Outcome::Untranslatable, None, t0, &mut Max);
    assert_eq!(step(&n), (1, Duration::ZERO, StepKind::FallBack));
    assert_eq!(a.made(), 0);
}

#[test]
fn open_breakers_are_skipped_and_all_open_stops() {
    let mut rt = routing();
    rt.breaker.failures = 1;
    let r = router(rt);
    let t0 = Instant::now();
    // Open the first target's breaker.
    let mut a = plan(&r, "smart", None).attempts(r.routing(), t0);
    a.first(r.health(), t0);
    a.report(r.health(), &upstream(529), None, t0, &mut Max);
    let mut b = plan(&r, "smart", None).attempts(r.routing(), t0);
    assert_eq!(step(&b.first(r.health(), t0)).0, 1);
    // Open the second's too: nothing to try, with the wait until one half-opens.
    b.report(r.health(), &upstream(529), None, t0, &mut Max);
    let t1 = t0 + Duration::from_secs(10);
    let mut c = plan(&r, "smart", None).attempts(r.routing(), t1);
    assert_eq!(
        c.first(r.health(), t1),
        Next::Stop(StopReason::AllOpen {
            retry_in: Duration::from_secs(20)
        })
    );
    // A lone target is tried even when its breaker is open.
    let mut d = plan(&r, "claude-sonnet-4-5", None).attempts(r.routing(), t1);
    assert_eq!(step(&d.first(r.health(), t1)).0, 0);
    // After open_for: one probe, which closes the breaker.
    let t2 = t0 + Duration::from_secs(30);
    let mut e = plan(&r, "smart", None).attempts(r.routing(), t2);
    assert_eq!(step(&e.first(r.health(), t2)).0, 0);
    let snap = r.health().snapshot(t2);
    assert_eq!(snap[0].state, BreakerState::HalfOpen);
    e.report(r.health(), &Outcome::Success, Some(ms(5)), t2, &mut Max);
    let snap = r.health().snapshot(t2);
    assert_eq!(snap[0].state, BreakerState::Closed);
    assert_eq!(snap[0].transitions.closed, 1);
}

#[test]
fn open_untried_targets_leave_a_retry_of_the_tried_ones() {
    let mut rt = routing();
    rt.breaker.failures = 1;
    let r = router(rt);
    let t0 = Instant::now();
    let gpt = Target::parse("openrouter/openai/gpt-5").unwrap();
    let a = r.health().acquire(&gpt, t0).unwrap();
    r.health().record(&gpt, a, breaker::Report::Failure, t0);
    let mut a = plan(&r, "smart", None).attempts(r.routing(), t0);
    assert_eq!(step(&a.first(r.health(), t0)).0, 0);
    let n = a.report(r.health(), &Outcome::FirstByteTimeout, None, t0, &mut Max);
    // Sonnet's own breaker opened too (one failure opens it here): nothing left.
    assert_eq!(n, Next::Stop(StopReason::Exhausted));
    // With a higher threshold, the retry goes back to Sonnet after the backoff.
    let mut rt = routing();
    rt.breaker.failures = 2;
    let r = router(rt);
    for _ in 0..2 {
        let a = r.health().acquire(&gpt, t0).unwrap();
        r.health().record(&gpt, a, breaker::Report::Failure, t0);
    }
    let mut a = plan(&r, "smart", None).attempts(r.routing(), t0);
    a.first(r.health(), t0);
    let n = a.report(r.health(), &upstream(529), None, t0, &mut Max);
    assert_eq!(step(&n), (0, ms(200), StepKind::Retry));
}
