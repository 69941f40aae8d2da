//! What one attempt's outcome means for the next: try the same target
//! again, fall back to another, or stop. Also `retry-after` parsing and the
//! backoff (exponential, full jitter).
//!
//! The rules (`providers.md` §3 for what the SDKs do):
//! - Never once the first byte of the answer reached the client.
//! - `x-should-retry: true` makes an error retryable, `false` forbids
//!   retrying the same target; the header is read before the status, as
//!   the SDKs do. Another target may still be tried after `false` when the
//!   status would fall back: the header speaks for its provider only.
//! - Connect failures, timeouts before the first byte, 408, 409, 429,
//!   500–504, 529 and an `overloaded_error` of any status: retryable.
//!   A 429 `enforced_spend_limit_reached` (a monthly cap): another target
//!   only, never the same one.
//! - 400, 401, 402, 403, 404, 413 (and any other status): the request
//!   itself is refused, so another provider would refuse it too: stop,
//!   unless `fallback_on_client_errors`, then another target only.

use std::time::{Duration, SystemTime};

/// Why an attempt produced no answer, as the proxy saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The answer (any 2xx) started; what happens later is not a failure of
    /// routing.
    Success,
    /// TCP or TLS connect failed or timed out.
    ConnectFailure,
    /// Connected, but no response head before the first-byte timeout.
    FirstByteTimeout,
    /// The upstream answered with an error status.
    Upstream(UpstreamError),
    /// The answer failed after its first byte reached the client.
    AfterFirstByte,
    /// The request cannot be translated into this target's dialect
    /// (`TranslateError::Untranslatable`): skip the target, count no attempt.
    Untranslatable,
}

/// An upstream error response: its status and what it says about retrying.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamError {
    /// The HTTP status.
    pub status: u16,
    /// The provider error type (`overloaded_error`, `rate_limit_error`…).
    pub error_type: Option<String>,
    /// A finer code some errors carry (`enforced_spend_limit_reached`).
    pub error_code: Option<String>,
    /// `retry-after` / `retry-after-ms`, already resolved to a wait
    /// ([`parse_retry_after`]).
    pub retry_after: Option<Duration>,
    /// `x-should-retry`, when present.
    pub should_retry: Option<bool>,
}

/// What an outcome allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// The answer is on its way (or done): nothing more to try.
    Done,
    /// Transient: the same target may be retried (after `retry_after` when
    /// the provider said so), or another target tried.
    Retryable {
        /// The provider's wait, if it gave one.
        retry_after: Option<Duration>,
    },
    /// Another target may be tried, this one not again.
    OtherTarget,
    /// Stop: the client gets this answer.
    Stop,
}

/// Classifies an outcome under the rules of the module doc. A
/// [`Outcome::Untranslatable`] is [`Class::OtherTarget`].
pub fn classify(outcome: &Outcome, fallback_on_client_errors: bool) -> Class {
    let e = match outcome {
        Outcome::Success => return Class::Done,
        Outcome::AfterFirstByte => return Class::Stop,
        Outcome::ConnectFailure | Outcome::FirstByteTimeout => {
            return Class::Retryable { retry_after: None }
        }
        Outcome::Untranslatable => return Class::OtherTarget,
        Outcome::Upstream(e) => e,
    };
    let by_status = status_class(e, fallback_on_client_errors);
    match (e.should_retry, by_status) {
        (Some(true), _) => Class::Retryable {
            retry_after: e.retry_after,
        },
        (Some(false), Class::Retryable { .. } | Class::OtherTarget) => Class::OtherTarget,
        (_, class) => class,
    }
}

/// The class by status and error type alone.
fn status_class(e: &UpstreamError, fallback_on_client_errors: bool) -> Class {
    let retryable = Class::Retryable {
        retry_after: e.retry_after,
    };
    if e.error_type.as_deref() == Some("overloaded_error") {
        return retryable;
    }
    match e.status {
        429 if e.error_code.as_deref() == Some("enforced_spend_limit_reached") => {
            Class::OtherTarget
        }
        408 | 409 | 429 | 500..=504 | 529 => retryable,
        200..=299 => Class::Done,
        _ if fallback_on_client_errors => Class::OtherTarget,
        _ => Class::Stop,
    }
}

/// Whether an outcome counts against the target's circuit breaker: the
/// target failed, not the request. `AfterFirstByte` counts (the upstream
/// broke off); client errors and untranslatable requests do not.
pub fn is_target_failure(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Success | Outcome::Untranslatable => false,
        Outcome::ConnectFailure | Outcome::FirstByteTimeout | Outcome::AfterFirstByte => true,
        Outcome::Upstream(e) => {
            e.error_type.as_deref() == Some("overloaded_error")
                || matches!(e.status, 408 | 429 | 500..=504 | 529)
        }
    }
}

/// The wait that `retry-after-ms` (milliseconds, fractional allowed) or
/// `retry-after` (seconds, or an HTTP date resolved against `now`) asks
/// for; `retry-after-ms` wins as it does in the SDKs. A date in the past
/// is no wait; an unreadable value is ignored.
pub fn parse_retry_after(
    retry_after: Option<&str>,
    retry_after_ms: Option<&str>,
    now: SystemTime,
) -> Option<Duration> {
    if let Some(ms) = retry_after_ms.and_then(|v| v.trim().parse::<f64>().ok()) {
        if ms.is_finite() && ms >= 0.0 {
            return Duration::try_from_secs_f64(ms / 1000.0).ok();
        }
    }
    let v = retry_after?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = http_date(v)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An IMF-fixdate (`Wed, 21 Oct 2015 07:28:00 GMT`), the form HTTP sends.
fn http_date(v: &str) -> Option<SystemTime> {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let t = time::PrimitiveDateTime::parse(v, format).ok()?;
    Some(t.assume_utc().into())
}

/// A source of jitter: a uniform value in `0..=max`. Injected so tests
/// can pin it.
pub trait Jitter {
    /// A uniform value in `0..=max`.
    fn upto(&mut self, max: u64) -> u64;
}

/// The production [`Jitter`]: SplitMix64, seeded from the OS (or, should
/// that fail, the clock). Backoff needs spread, not secrecy; one per
/// request, or per worker thread, so no lock is needed.
#[derive(Clone, Debug)]
pub struct SplitMix(u64);

impl SplitMix {
    /// Seeded from the OS.
    pub fn from_entropy() -> SplitMix {
        let mut b = [0u8; 8];
        let seed = match getrandom::fill(&mut b) {
            Ok(()) => u64::from_le_bytes(b),
            Err(_) => SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        };
        SplitMix(seed)
    }

    /// Seeded with `seed` (tests, benchmarks).
    pub fn with_seed(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl Jitter for SplitMix {
    fn upto(&mut self, max: u64) -> u64 {
        // The modulo bias is below 2^-40 for any wait in milliseconds.
        match max.checked_add(1) {
            Some(n) => self.next() % n,
            None => self.next(),
        }
    }
}

/// The exponential backoff before retry number `retry` (0 = the first):
/// full jitter, a uniform wait in `0..=min(base × 2^retry, max)`.
pub fn backoff(base: Duration, max: Duration, retry: u32, jitter: &mut dyn Jitter) -> Duration {
    let ceiling = base
        .checked_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max);
    let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(jitter.upto(ms).min(ms))
}

#[cfg(test)]
mod tests {
    use super::super::testing::Max;
    use super::*;

    fn status(status: u16) -> Outcome {
        Outcome::Upstream(UpstreamError {
            status,
            ..UpstreamError::default()
        })
    }

    const RETRY: Class = Class::Retryable { retry_after: None };

    #[test]
    fn transient_failures_are_retryable() {
        for o in [Outcome::ConnectFailure, Outcome::FirstByteTimeout] {
            assert_eq!(classify(&o, false), RETRY);
        }
        for s in [408, 409, 429, 500, 501, 502, 503, 504, 529] {
            assert_eq!(classify(&status(s), false), RETRY, "{s}");
        }
        let overloaded = Outcome::Upstream(UpstreamError {
            status: 400,
            error_type: Some("overloaded_error".into()),
            ..UpstreamError::default()
        });
        assert_eq!(classify(&overloaded, false), RETRY);
    }

    #[test]
    fn client_errors_stop_unless_configured() {
        for s in [400, 401, 402, 403, 404, 413, 422, 505] {
            assert_eq!(classify(&status(s), false), Class::Stop, "{s}");
            assert_eq!(classify(&status(s), true), Class::OtherTarget, "{s}");
        }
    }

    #[test]
    fn nothing_after_the_first_byte() {
        assert_eq!(classify(&Outcome::AfterFirstByte, true), Class::Stop);
        assert_eq!(classify(&Outcome::Success, true), Class::Done);
        assert_eq!(
            classify(&Outcome::Untranslatable, false),
            Class::OtherTarget
        );
    }

    #[test]
    fn x_should_retry_comes_first() {
        let with = |status, should_retry| {
            Outcome::Upstream(UpstreamError {
                status,
                should_retry: Some(should_retry),
                retry_after: Some(Duration::from_secs(2)),
                ..UpstreamError::default()
            })
        };
        assert_eq!(classify(&with(529, false), false), Class::OtherTarget);
        assert_eq!(classify(&with(400, false), false), Class::Stop);
        assert_eq!(
            classify(&with(400, true), false),
            Class::Retryable {
                retry_after: Some(Duration::from_secs(2))
            }
        );
    }

    #[test]
    fn a_spend_cap_is_not_retried_on_the_same_target() {
        let capped = Outcome::Upstream(UpstreamError {
            status: 429,
            error_type: Some("rate_limit_error".into()),
            error_code: Some("enforced_spend_limit_reached".into()),
            ..UpstreamError::default()
        });
        assert_eq!(classify(&capped, false), Class::OtherTarget);
    }

    #[test]
    fn breaker_failures() {
        assert!(is_target_failure(&Outcome::ConnectFailure));
        assert!(is_target_failure(&status(529)));
        assert!(is_target_failure(&status(429)));
        assert!(!is_target_failure(&status(400)));
        assert!(!is_target_failure(&status(409)));
        assert!(!is_target_failure(&Outcome::Untranslatable));
        assert!(!is_target_failure(&Outcome::Success));
    }

    #[test]
    fn retry_after_in_both_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_470);
        assert_eq!(
            parse_retry_after(Some("7"), None, now),
            Some(Duration::from_secs(7))
        );
        // 1445412480 is Wed, 21 Oct 2015 07:28:00 GMT.
        assert_eq!(
            parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT"), None, now),
            Some(Duration::from_secs(10))
        );
        let later = now + Duration::from_secs(60);
        assert_eq!(
            parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT"), None, later),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after(Some("7"), Some("1.5"), now),
            Some(Duration::from_micros(1500))
        );
        assert_eq!(parse_retry_after(Some("soon"), Some("-1"), now), None);
        assert_eq!(parse_retry_after(None, None, now), None);
    }

    struct Half;
    impl Jitter for Half {
        fn upto(&mut self, max: u64) -> u64 {
            max / 2
        }
    }

    #[test]
    fn backoff_is_exponential_jittered_and_capped() {
        let (base, max) = (Duration::from_millis(200), Duration::from_secs(5));
        let waits: Vec<u64> = (0..6)
            .map(|n| backoff(base, max, n, &mut Max).as_millis() as u64)
            .collect();
        assert_eq!(waits, [200, 400, 800, 1600, 3200, 5000]);
        assert_eq!(backoff(base, max, 1, &mut Half), Duration::from_millis(200));
        assert_eq!(backoff(base, max, 200, &mut Max), max);
        let mut rng = SplitMix::with_seed(7);
        for n in 0..50 {
            assert!(backoff(base, max, n, &mut rng) <= max);
        }
        let waits: std::collections::BTreeSet<u64> = (0..50).map(|_| rng.upto(1000)).collect();
        assert!(waits.len() > 10 && waits.iter().all(|w| *w <= 1000));
        assert_eq!(rng.upto(0), 0);
        SplitMix::from_entropy().upto(u64::MAX);
    }
}
