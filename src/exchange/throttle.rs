//! Reading how long Exchange wants us to wait: Graph's `Retry-After` header (whole or fractional
//! seconds, or an HTTP date), and the exponential back-off with jitter used when no hint is
//! given.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// The longest wait taken from a hint: a bogus header must not park a mailbox for days.
pub const MAX_HINT: Duration = Duration::from_secs(15 * 60);

/// Parses a `Retry-After` value: delta-seconds (Graph sends fractional ones such as `2.128`) or
/// an HTTP date, relative to `now`. A date in the past means "now"; garbage means no hint.
#[must_use]
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0)
            .then(|| Duration::from_secs_f64(seconds.min(MAX_HINT.as_secs_f64())));
    }
    // IMF-fixdate, the form HTTP requires, is RFC 2822 with "GMT".
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO).min(MAX_HINT))
}

/// Exponential back-off: `base × 2^(attempt-1)`, capped at `cap`, with "full jitter" in its
/// upper half so that mailboxes that failed together do not retry together.
#[must_use]
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exponent = attempt.saturating_sub(1).min(20);
    let ceiling = base.saturating_mul(1 << exponent).min(cap);
    let half = ceiling / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chrono::TimeZone;

    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 30, 10, 0, 0).unwrap()
    }

    #[test]
    fn whole_and_fractional_seconds_are_read() {
        assert_eq!(parse_retry_after("5", now()), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_retry_after(" 2.128 ", now()),
            Some(Duration::from_millis(2128))
        );
    }

    #[test]
    fn an_http_date_is_read_relative_to_now_and_a_past_one_means_now() {
        assert_eq!(
            parse_retry_after("Mon, 30 Nov 2026 10:00:30 GMT", now()),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Mon, 30 Nov 2026 09:00:00 GMT", now()),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn garbage_negative_and_huge_values_are_not_taken_at_face_value() {
        assert_eq!(parse_retry_after("soon", now()), None);
        assert_eq!(parse_retry_after("-3", now()), None);
        assert_eq!(parse_retry_after("NaN", now()), None);
        assert_eq!(parse_retry_after("99999999", now()), Some(MAX_HINT));
    }

    #[test]
    fn backoff_doubles_within_jitter_and_stops_at_the_cap() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(60);
        for _ in 0..100 {
            let first = backoff(1, base, cap);
            assert!(first >= Duration::from_millis(500) && first <= base);
            let fourth = backoff(4, base, cap);
            assert!(fourth >= Duration::from_secs(4) && fourth <= Duration::from_secs(8));
            let late = backoff(40, base, cap);
            assert!(late >= Duration::from_secs(30) && late <= cap);
        }
    }
}
