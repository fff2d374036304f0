//! Per-credential rate limiting of requests and tokens, local to one gateway instance.
//!
//! # Algorithms
//!
//! Both dimensions use the generic cell rate algorithm (GCRA). A limiter holds a single number per
//! dimension, the *theoretical arrival time* (TAT): the instant at which the bucket would be full again.
//! A request costing `n` cells fits if `max(TAT, now) + n·interval <= now + capacity·interval`, and
//! taking it sets `TAT = max(TAT, now) + n·interval`. The bucket level is never stored; it is derived
//! from the distance between `now` and the TAT. So there is no background refill task, no per-credential
//! timer, and the state is a few integers behind an uncontended lock.
//!
//! - **Requests**: `requests_per_minute` cells per minute, capacity `requests_burst`, each request one cell.
//! - **Tokens**: a token bucket of capacity `tokens_per_minute`, refilled continuously at
//!   `tokens_per_minute / 60` tokens per second. It is the same GCRA with a variable cost: before calling
//!   upstream the gateway *reserves* an estimate, and [`RateLimiter::settle`] later refunds what was not
//!   used (never filling the bucket beyond capacity) or charges the excess. An excess may push the bucket
//!   below zero; that debt delays later requests of the credential until it is paid back by the refill.
//!
//! A request is admitted only if both dimensions have room. Both are checked first and committed
//! together under the credential's lock, so a refusal consumes nothing.
//!
//! # Arithmetic
//!
//! Each bucket measures time in units of `1 / rate_per_minute` nanoseconds, so one cell is exactly
//! 60·10⁹ units (a minute of nanoseconds) whatever the rate: all bookkeeping is exact integer arithmetic
//! on `u128`, without floats and without rounding drift (7 requests per minute are 7 per minute, not
//! 7.0000001).
//! Durations are converted back to nanoseconds rounding *up*, so a `retry_after` is never too short.
//! All operations saturate instead of overflowing.
//!
//! # Time
//!
//! Every method takes the current [`Instant`]; nothing here reads a clock, which keeps the limiter
//! deterministic under test. Each credential measures time from the first instant it is given; an
//! instant earlier than that counts as that first instant.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Rate limits of one credential. A `None` limit leaves that dimension unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitConfig {
    /// Sustained request rate; `None` means unlimited requests.
    pub requests_per_minute: Option<u32>,
    /// Requests that may be made back to back after a quiet period. Must be at least 1 even when
    /// `requests_per_minute` is `None` (a zero burst is never meaningful).
    pub requests_burst: u32,
    /// Token bucket capacity and refill per minute; `None` means unlimited tokens.
    pub tokens_per_minute: Option<u64>,
}

/// Why a [`LimitConfig`] is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitConfigError {
    #[error("requests_per_minute must be at least 1 (omit it for no request limit)")]
    ZeroRequestsPerMinute,
    #[error("requests_burst must be at least 1")]
    ZeroRequestsBurst,
    #[error("tokens_per_minute must be at least 1 (omit it for no token limit)")]
    ZeroTokensPerMinute,
}

/// A credential's [`LimitConfig`] given to [`RateLimiter::new`] is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate limits for credential {credential}: {reason}")]
pub struct InvalidLimits {
    /// Index of the offending credential.
    pub credential: usize,
    pub reason: LimitConfigError,
}

/// Rate limiters of all credentials of a gateway instance, indexed by credential number.
///
/// The set of credentials is fixed at construction, so the state never grows.
#[derive(Debug)]
pub struct RateLimiter {
    /// `None` for a credential without any limit: it needs no state and no lock.
    credentials: Vec<Option<Mutex<CredentialState>>>,
}

/// What [`RateLimiter::acquire`] decided, with everything needed for response headers and the audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    /// Request dimension, `None` when requests are unlimited.
    pub requests: Option<Quota>,
    /// Token dimension, `None` when tokens are unlimited.
    pub tokens: Option<Quota>,
    /// Exact time after which the same request would be admitted: `Some` exactly when the outcome is
    /// [`Outcome::LimitedRequests`] or [`Outcome::LimitedTokens`]. A request refused with
    /// [`Outcome::TokensExceedCapacity`] can never be admitted, so it has no `retry_after`.
    pub retry_after: Option<Duration>,
}

/// Result of a rate limit check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Both dimensions had room; the request cell and the token estimate are consumed.
    Allowed,
    /// Refused: no request cell available (when both dimensions refuse, the one with the longer wait
    /// is reported, requests on a tie).
    LimitedRequests,
    /// Refused: the token estimate does not fit in the bucket yet.
    LimitedTokens,
    /// Refused for good: the token estimate exceeds `tokens_per_minute`, so it can never fit
    /// ("request's `max_tokens` exceeds the per-minute token limit").
    TokensExceedCapacity,
}

/// State of one limited dimension, as reported in `x-ratelimit-*` headers.
///
/// On [`Outcome::Allowed`] it describes the state after the request was counted; on a refusal the
/// (unchanged) state at the time of the refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Configured `requests_per_minute` or `tokens_per_minute`.
    pub limit: u64,
    /// Requests that could be made right now / whole tokens available right now (0 while in debt).
    pub remaining: u64,
    /// Time until the bucket is full again.
    pub reset: Duration,
}

/// An admitted request: the decision and the token reservation to settle.
#[derive(Debug)]
pub struct Admission {
    /// Always has [`Outcome::Allowed`].
    pub decision: Decision,
    pub reservation: Reservation,
}

/// Tokens reserved for an admitted request, to be passed to [`RateLimiter::settle`] with the usage
/// reported by upstream.
///
/// Dropping a reservation without settling it (the request was aborted) leaves the whole estimate
/// charged: an aborted request may still have consumed upstream tokens, and the estimate is the best
/// bound known.
#[derive(Debug)]
#[must_use = "settle the reservation with the actual usage; dropping it keeps the whole estimate charged"]
pub struct Reservation {
    credential: usize,
    reserved_tokens: u64,
}

/// Formats a reset duration the way `OpenAI` does (Go's `time.Duration` notation), rounded **up** to the
/// millisecond so that a client waiting that long finds the bucket full.
///
/// Below one second the unit is milliseconds; from one second on, hours and minutes are written only
/// when non-zero (minutes always once there are hours), and the seconds keep up to three decimals with
/// trailing zeros removed.
///
/// ```
/// use std::time::Duration;
/// use gateway::policy::rate_limit::format_reset;
///
/// assert_eq!(format_reset(Duration::ZERO), "0s");
/// assert_eq!(format_reset(Duration::from_nanos(1)), "1ms");
/// assert_eq!(format_reset(Duration::from_millis(20)), "20ms");
/// assert_eq!(format_reset(Duration::from_secs(1)), "1s");
/// assert_eq!(format_reset(Duration::from_millis(59_500)), "59.5s");
/// assert_eq!(format_reset(Duration::from_millis(90_500)), "1m30.5s");
/// assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
/// assert_eq!(format_reset(Duration::from_secs(3600)), "1h0m0s");
/// ```
#[must_use]
pub fn format_reset(reset: Duration) -> String {
    let total_millis = reset.as_nanos().div_ceil(NANOS_PER_MILLI);
    if total_millis < 1000 {
        return if total_millis == 0 { "0s".to_owned() } else { format!("{total_millis}ms") };
    }
    let hours = total_millis / 3_600_000;
    let minutes = total_millis / 60_000 % 60;
    let seconds = total_millis / 1000 % 60;
    let millis = total_millis % 1000;
    let mut formatted = String::with_capacity(16);
    // Writing to a `String` cannot fail.
    if hours > 0 {
        let _ = write!(formatted, "{hours}h");
    }
    if hours > 0 || minutes > 0 {
        let _ = write!(formatted, "{minutes}m");
    }
    let _ = match millis {
        0 => write!(formatted, "{seconds}s"),
        _ if millis.is_multiple_of(100) => write!(formatted, "{seconds}.{}s", millis / 100),
        _ if millis.is_multiple_of(10) => write!(formatted, "{seconds}.{:02}s", millis / 10),
        _ => write!(formatted, "{seconds}.{millis:03}s"),
    };
    formatted
}

/// One cell, in the scaled time unit of any bucket (see the module documentation).
const NANOS_PER_MINUTE: u128 = 60_000_000_000;
const NANOS_PER_SECOND: u128 = 1_000_000_000;
const NANOS_PER_MILLI: u128 = 1_000_000;

#[derive(Debug)]
struct CredentialState {
    /// Instant from which this credential measures time; set by the first call.
    origin: Option<Instant>,
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

/// A GCRA bucket. Time is scaled: one nanosecond is `rate_per_minute` units, so one cell is
/// [`NANOS_PER_MINUTE`] units.
#[derive(Debug)]
struct Bucket {
    rate_per_minute: u64,
    capacity: u64,
    /// Theoretical arrival time, in scaled units since the credential's origin. A value at or before
    /// now means the bucket is full; beyond `now + capacity` cells means debt.
    tat: u128,
}

impl LimitConfig {
    /// Checks that every configured limit is usable.
    ///
    /// # Errors
    ///
    /// The first zero limit found.
    pub fn validate(&self) -> Result<(), LimitConfigError> {
        if self.requests_per_minute == Some(0) {
            return Err(LimitConfigError::ZeroRequestsPerMinute);
        }
        if self.requests_burst == 0 {
            return Err(LimitConfigError::ZeroRequestsBurst);
        }
        if self.tokens_per_minute == Some(0) {
            return Err(LimitConfigError::ZeroTokensPerMinute);
        }
        Ok(())
    }
}

impl RateLimiter {
    /// Builds the limiters; index `i` of `limits` is credential number `i`, `None` meaning unlimited.
    ///
    /// # Errors
    ///
    /// The first credential whose [`LimitConfig::validate`] fails.
    pub fn new(limits: Vec<Option<LimitConfig>>) -> Result<Self, InvalidLimits> {
        let credentials = limits
            .into_iter()
            .enumerate()
            .map(|(credential, config)| {
                let Some(config) = config else { return Ok(None) };
                config.validate().map_err(|reason| InvalidLimits { credential, reason })?;
                let requests = config.requests_per_minute.map(|requests_per_minute| Bucket {
                    rate_per_minute: u64::from(requests_per_minute),
                    capacity: u64::from(config.requests_burst),
                    tat: 0,
                });
                let tokens = config.tokens_per_minute.map(|tokens_per_minute| Bucket {
                    rate_per_minute: tokens_per_minute,
                    capacity: tokens_per_minute,
                    tat: 0,
                });
                Ok((requests.is_some() || tokens.is_some())
                    .then(|| Mutex::new(CredentialState { origin: None, requests, tokens })))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { credentials })
    }

    /// Admits one request of `credential` reserving `tokens_estimate` tokens, or refuses it without
    /// consuming anything. Does not allocate.
    ///
    /// On success the returned [`Reservation`] must be settled with the actual usage.
    ///
    /// # Errors
    ///
    /// The refusal (never [`Outcome::Allowed`]), carrying the unchanged state of the limited dimensions.
    ///
    /// # Panics
    ///
    /// If `credential` is not below the number of credentials given to [`RateLimiter::new`].
    pub fn acquire(
        &self,
        credential: usize,
        tokens_estimate: u64,
        now: Instant,
    ) -> Result<Admission, Decision> {
        let reservation = Reservation { credential, reserved_tokens: tokens_estimate };
        let Some(state) = &self.credentials[credential] else {
            let decision =
                Decision { outcome: Outcome::Allowed, requests: None, tokens: None, retry_after: None };
            return Ok(Admission { decision, reservation });
        };
        let mut state = state.lock();
        let elapsed_nanos = state.elapsed_nanos(now);
        let CredentialState { requests, tokens, .. } = &mut *state;

        if let Some(token_bucket) = tokens
            && tokens_estimate > token_bucket.capacity
        {
            return Err(decision(
                Outcome::TokensExceedCapacity,
                requests.as_ref(),
                tokens.as_ref(),
                elapsed_nanos,
                None,
            ));
        }
        let requests_wait = requests.as_ref().map_or(Duration::ZERO, |bucket| bucket.wait(elapsed_nanos, 1));
        let tokens_wait =
            tokens.as_ref().map_or(Duration::ZERO, |bucket| bucket.wait(elapsed_nanos, tokens_estimate));
        if requests_wait.is_zero() && tokens_wait.is_zero() {
            if let Some(requests) = requests {
                requests.take(elapsed_nanos, 1);
            }
            if let Some(tokens) = tokens {
                tokens.take(elapsed_nanos, tokens_estimate);
            }
            let decision =
                decision(Outcome::Allowed, requests.as_ref(), tokens.as_ref(), elapsed_nanos, None);
            return Ok(Admission { decision, reservation });
        }
        let (outcome, retry_after) = if requests_wait >= tokens_wait {
            (Outcome::LimitedRequests, requests_wait)
        } else {
            (Outcome::LimitedTokens, tokens_wait)
        };
        Err(decision(outcome, requests.as_ref(), tokens.as_ref(), elapsed_nanos, Some(retry_after)))
    }

    /// Replaces the reserved estimate by the `actual_tokens` reported by upstream: refunds the unused
    /// part (the bucket never exceeds its capacity) or charges the excess (the bucket may go into debt).
    ///
    /// The reservation must come from this limiter.
    pub fn settle(&self, reservation: Reservation, actual_tokens: u64, now: Instant) {
        let Some(Some(state)) = self.credentials.get(reservation.credential) else { return };
        let mut state = state.lock();
        let elapsed_nanos = state.elapsed_nanos(now);
        let Some(tokens) = &mut state.tokens else { return };
        if let Some(unused_tokens) = reservation.reserved_tokens.checked_sub(actual_tokens) {
            tokens.refund(unused_tokens);
        } else {
            tokens.take(elapsed_nanos, actual_tokens - reservation.reserved_tokens);
        }
    }
}

impl Decision {
    /// OpenAI-style response headers for this decision: the `x-ratelimit-*` triple of each limited
    /// dimension, and `retry-after` (whole seconds, rounded up) with `retry-after-ms` (rounded up) when
    /// the request was refused but may be retried.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, String)> + use<> {
        let requests = self.requests.map(|quota| {
            [
                ("x-ratelimit-limit-requests", quota.limit.to_string()),
                ("x-ratelimit-remaining-requests", quota.remaining.to_string()),
                ("x-ratelimit-reset-requests", format_reset(quota.reset)),
            ]
        });
        let tokens = self.tokens.map(|quota| {
            [
                ("x-ratelimit-limit-tokens", quota.limit.to_string()),
                ("x-ratelimit-remaining-tokens", quota.remaining.to_string()),
                ("x-ratelimit-reset-tokens", format_reset(quota.reset)),
            ]
        });
        let retry_after = self.retry_after.map(|retry_after| {
            let nanos = retry_after.as_nanos();
            [
                ("retry-after", nanos.div_ceil(NANOS_PER_SECOND).max(1).to_string()),
                ("retry-after-ms", nanos.div_ceil(NANOS_PER_MILLI).max(1).to_string()),
            ]
        });
        requests
            .into_iter()
            .flatten()
            .chain(tokens.into_iter().flatten())
            .chain(retry_after.into_iter().flatten())
    }
}

impl Reservation {
    /// Credential number the reservation was made for.
    #[must_use]
    pub fn credential(&self) -> usize {
        self.credential
    }

    /// Tokens reserved (the estimate given to [`RateLimiter::acquire`]).
    #[must_use]
    pub fn reserved_tokens(&self) -> u64 {
        self.reserved_tokens
    }
}

impl CredentialState {
    fn elapsed_nanos(&mut self, now: Instant) -> u128 {
        now.saturating_duration_since(*self.origin.get_or_insert(now)).as_nanos()
    }
}

impl Bucket {
    /// Time until `cost` cells fit, zero if they fit now.
    fn wait(&self, elapsed_nanos: u128, cost: u64) -> Duration {
        let now = self.scaled(elapsed_nanos);
        let ready = self.tat.max(now).saturating_add(cells(cost));
        self.duration(ready.saturating_sub(now.saturating_add(cells(self.capacity))))
    }

    /// Consumes `cost` cells, regardless of the level (going into debt if needed).
    fn take(&mut self, elapsed_nanos: u128, cost: u64) {
        self.tat = self.tat.max(self.scaled(elapsed_nanos)).saturating_add(cells(cost));
    }

    /// Gives back `amount` cells. The level never exceeds the capacity: a TAT moved before now reads
    /// as `max(TAT, now)`, a full bucket.
    fn refund(&mut self, amount: u64) {
        self.tat = self.tat.saturating_sub(cells(amount));
    }

    fn quota(&self, elapsed_nanos: u128) -> Quota {
        let now = self.scaled(elapsed_nanos);
        let level = now.saturating_add(cells(self.capacity)).saturating_sub(self.tat.max(now));
        Quota {
            limit: self.rate_per_minute,
            remaining: u64::try_from(level / NANOS_PER_MINUTE).unwrap_or(u64::MAX),
            reset: self.duration(self.tat.saturating_sub(now)),
        }
    }

    fn scaled(&self, elapsed_nanos: u128) -> u128 {
        elapsed_nanos.saturating_mul(u128::from(self.rate_per_minute))
    }

    /// Converts a scaled span to a duration, rounding up to the nanosecond.
    fn duration(&self, scaled: u128) -> Duration {
        let nanos = scaled.div_ceil(u128::from(self.rate_per_minute));
        let seconds = u64::try_from(nanos / NANOS_PER_SECOND).unwrap_or(u64::MAX);
        let subsec_nanos = u32::try_from(nanos % NANOS_PER_SECOND).unwrap_or(0);
        Duration::new(seconds, subsec_nanos)
    }
}

/// `count` cells in scaled time units.
fn cells(count: u64) -> u128 {
    u128::from(count).saturating_mul(NANOS_PER_MINUTE)
}

fn decision(
    outcome: Outcome,
    requests: Option<&Bucket>,
    tokens: Option<&Bucket>,
    elapsed_nanos: u128,
    retry_after: Option<Duration>,
) -> Decision {
    Decision {
        outcome,
        requests: requests.map(|bucket| bucket.quota(elapsed_nanos)),
        tokens: tokens.map(|bucket| bucket.quota(elapsed_nanos)),
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    const CREDENTIAL: usize = 0;

    fn one_credential(
        requests_per_minute: Option<u32>,
        requests_burst: u32,
        tokens_per_minute: Option<u64>,
    ) -> RateLimiter {
        RateLimiter::new(vec![Some(LimitConfig { requests_per_minute, requests_burst, tokens_per_minute })])
            .expect("valid limits")
    }

    fn allowed(limiter: &RateLimiter, tokens_estimate: u64, now: Instant) -> Admission {
        limiter.acquire(CREDENTIAL, tokens_estimate, now).expect("request should be allowed")
    }

    fn refused(limiter: &RateLimiter, tokens_estimate: u64, now: Instant) -> Decision {
        limiter.acquire(CREDENTIAL, tokens_estimate, now).expect_err("request should be refused")
    }

    fn quota(limit: u64, remaining: u64, reset: Duration) -> Quota {
        Quota { limit, remaining, reset }
    }

    fn headers(decision: &Decision) -> Vec<(&'static str, String)> {
        decision.headers().collect()
    }

    #[test]
    fn burst_then_refusal_with_exact_retry_after() {
        let limiter = one_credential(Some(60), 3, None);
        let start = Instant::now();
        for expected_remaining in [2, 1, 0] {
            let admission = allowed(&limiter, 0, start);
            assert_eq!(admission.decision.outcome, Outcome::Allowed);
            assert_eq!(admission.decision.requests.map(|quota| quota.remaining), Some(expected_remaining));
        }
        let refusal = refused(&limiter, 0, start);
        assert_eq!(refusal.outcome, Outcome::LimitedRequests);
        assert_eq!(refusal.retry_after, Some(Duration::from_secs(1)));
        assert_eq!(refusal.requests, Some(quota(60, 0, Duration::from_secs(3))));

        let later = start + Duration::from_millis(250);
        assert_eq!(refused(&limiter, 0, later).retry_after, Some(Duration::from_millis(750)));
        assert_eq!(
            refused(&limiter, 0, start + Duration::from_secs(1) - Duration::from_nanos(1)).retry_after,
            Some(Duration::from_nanos(1))
        );
        allowed(&limiter, 0, start + Duration::from_secs(1));
    }

    #[test]
    fn retry_after_is_rounded_up_to_the_nanosecond_for_inexact_intervals() {
        // 7 per minute: one request every 8.571428571428... s.
        let limiter = one_credential(Some(7), 1, None);
        let start = Instant::now();
        allowed(&limiter, 0, start);
        let retry_after = refused(&limiter, 0, start).retry_after.expect("retryable");
        assert_eq!(retry_after, Duration::from_nanos(8_571_428_572));
        assert_eq!(
            refused(&limiter, 0, start + retry_after - Duration::from_nanos(1)).outcome,
            Outcome::LimitedRequests
        );
        allowed(&limiter, 0, start + retry_after);
    }

    #[test]
    fn steady_rate_allows_exactly_rate_times_minutes_plus_burst() {
        let limiter = one_credential(Some(7), 5, None);
        let start = Instant::now();
        let mut allowed_count = 0;
        let mut allowed_before_end = 0;
        // Try every millisecond for ten minutes, both ends included.
        for millis in 0..=600_000 {
            if limiter.acquire(CREDENTIAL, 0, start + Duration::from_millis(millis)).is_ok() {
                allowed_count += 1;
                if millis < 600_000 {
                    allowed_before_end += 1;
                }
            }
        }
        // The 70th interval ends exactly at 600 s.
        assert_eq!(allowed_count, 5 + 7 * 10);
        assert_eq!(allowed_before_end, 5 + 7 * 10 - 1);
    }

    #[test]
    fn steady_token_rate_refills_exactly() {
        // 1000 tokens per minute, reserve 100 each time: after the initial capacity, one every 6 s.
        let limiter = one_credential(None, 1, Some(1000));
        let start = Instant::now();
        let allowed_count = (0..=600).filter(|&seconds| {
            limiter.acquire(CREDENTIAL, 100, start + Duration::from_secs(seconds)).is_ok()
        });
        assert_eq!(allowed_count.count(), 10 + 100);
    }

    #[test]
    fn refusal_by_tokens_consumes_no_request_cell() {
        let limiter = one_credential(Some(60), 2, Some(100));
        let start = Instant::now();
        allowed(&limiter, 100, start);
        let refusal = refused(&limiter, 1, start);
        assert_eq!(refusal.outcome, Outcome::LimitedTokens);
        assert_eq!(refusal.requests.map(|quota| quota.remaining), Some(1));
        // The remaining request cell is still there for a request that needs no tokens.
        let admission = allowed(&limiter, 0, start);
        assert_eq!(admission.decision.requests.map(|quota| quota.remaining), Some(0));
    }

    #[test]
    fn refusal_by_requests_consumes_no_tokens() {
        let limiter = one_credential(Some(60), 1, Some(100));
        let start = Instant::now();
        allowed(&limiter, 10, start);
        let refusal = refused(&limiter, 50, start);
        assert_eq!(refusal.outcome, Outcome::LimitedRequests);
        assert_eq!(refusal.tokens.map(|quota| quota.remaining), Some(90));
        // After 1 s: 90 + 100/60 tokens; 91 whole tokens fit, 92 do not.
        let later = start + Duration::from_secs(1);
        assert_eq!(refused(&limiter, 92, later).outcome, Outcome::LimitedTokens);
        let admission = allowed(&limiter, 91, later);
        assert_eq!(admission.decision.tokens.map(|quota| quota.remaining), Some(0));
    }

    #[test]
    fn both_dimensions_refusing_reports_the_longer_wait() {
        let limiter = one_credential(Some(60), 1, Some(60));
        let start = Instant::now();
        allowed(&limiter, 60, start);
        // Requests free again in 1 s, 30 tokens in 30 s.
        let refusal = refused(&limiter, 30, start);
        assert_eq!(refusal.outcome, Outcome::LimitedTokens);
        assert_eq!(refusal.retry_after, Some(Duration::from_secs(30)));
        // Requests wait 1 s, 1 token waits 1 s: a tie reports requests.
        let refusal = refused(&limiter, 1, start);
        assert_eq!(refusal.outcome, Outcome::LimitedRequests);
        assert_eq!(refusal.retry_after, Some(Duration::from_secs(1)));
    }

    #[test]
    fn settle_refunds_unused_tokens() {
        // 600 tokens per minute = 10 per second.
        let limiter = one_credential(None, 1, Some(600));
        let start = Instant::now();
        let admission = allowed(&limiter, 400, start);
        assert_eq!(admission.decision.tokens, Some(quota(600, 200, Duration::from_secs(40))));
        limiter.settle(admission.reservation, 100, start);
        let status = allowed(&limiter, 0, start).decision;
        assert_eq!(status.tokens, Some(quota(600, 500, Duration::from_secs(10))));
    }

    #[test]
    fn settle_refund_never_exceeds_capacity() {
        let limiter = one_credential(None, 1, Some(600));
        let start = Instant::now();
        let admission = allowed(&limiter, 100, start);
        let later = start + Duration::from_secs(5);
        // Refilled to 550 by now; refunding 100 would make 650.
        limiter.settle(admission.reservation, 0, later);
        let status = allowed(&limiter, 0, later).decision;
        assert_eq!(status.tokens, Some(quota(600, 600, Duration::ZERO)));
        assert_eq!(refused(&limiter, 601, later).outcome, Outcome::TokensExceedCapacity);
    }

    #[test]
    fn settle_charges_excess_as_debt() {
        let limiter = one_credential(None, 1, Some(600));
        let start = Instant::now();
        let admission = allowed(&limiter, 100, start);
        limiter.settle(admission.reservation, 1000, start);
        // Level is -400: even a request needing no tokens waits 40 s; full again after 100 s.
        let refusal = refused(&limiter, 0, start);
        assert_eq!(refusal.outcome, Outcome::LimitedTokens);
        assert_eq!(refusal.retry_after, Some(Duration::from_secs(40)));
        assert_eq!(refusal.tokens, Some(quota(600, 0, Duration::from_secs(100))));
        refused(&limiter, 0, start + Duration::from_secs(40) - Duration::from_nanos(1));
        allowed(&limiter, 0, start + Duration::from_secs(40));
    }

    #[test]
    fn dropped_reservation_keeps_estimate_charged() {
        let limiter = one_credential(None, 1, Some(600));
        let start = Instant::now();
        drop(allowed(&limiter, 250, start).reservation);
        assert_eq!(allowed(&limiter, 0, start).decision.tokens.map(|quota| quota.remaining), Some(350));
    }

    #[test]
    fn estimate_above_capacity_is_refused_for_good() {
        let limiter = one_credential(Some(60), 1, Some(1000));
        let start = Instant::now();
        let refusal = refused(&limiter, 1001, start);
        assert_eq!(refusal.outcome, Outcome::TokensExceedCapacity);
        assert_eq!(refusal.retry_after, None);
        assert_eq!(refusal.requests, Some(quota(60, 1, Duration::ZERO)));
        assert_eq!(refusal.tokens, Some(quota(1000, 1000, Duration::ZERO)));
        // Nothing was consumed, and an estimate equal to the capacity fits a full bucket.
        let admission = allowed(&limiter, 1000, start);
        assert_eq!(admission.decision.tokens, Some(quota(1000, 0, Duration::from_secs(60))));
    }

    #[test]
    fn headers_of_allowed_request() {
        let limiter = one_credential(Some(60), 3, Some(1000));
        let admission = allowed(&limiter, 100, Instant::now());
        assert_eq!(
            headers(&admission.decision),
            [
                ("x-ratelimit-limit-requests", "60".to_owned()),
                ("x-ratelimit-remaining-requests", "2".to_owned()),
                ("x-ratelimit-reset-requests", "1s".to_owned()),
                ("x-ratelimit-limit-tokens", "1000".to_owned()),
                ("x-ratelimit-remaining-tokens", "900".to_owned()),
                ("x-ratelimit-reset-tokens", "6s".to_owned()),
            ]
        );
    }

    #[test]
    fn headers_of_refused_request() {
        let limiter = one_credential(Some(60), 3, Some(1000));
        let start = Instant::now();
        for _ in 0..3 {
            allowed(&limiter, 100, start);
        }
        let refusal = refused(&limiter, 100, start + Duration::from_millis(250));
        assert_eq!(
            headers(&refusal),
            [
                ("x-ratelimit-limit-requests", "60".to_owned()),
                ("x-ratelimit-remaining-requests", "0".to_owned()),
                ("x-ratelimit-reset-requests", "2.75s".to_owned()),
                ("x-ratelimit-limit-tokens", "1000".to_owned()),
                // 700 + 1000/60 * 0.25 = 704.17 tokens.
                ("x-ratelimit-remaining-tokens", "704".to_owned()),
                ("x-ratelimit-reset-tokens", "17.75s".to_owned()),
                ("retry-after", "1".to_owned()),
                ("retry-after-ms", "750".to_owned()),
            ]
        );
    }

    #[test]
    fn retry_after_headers_round_up() {
        let decision = |retry_after| Decision {
            outcome: Outcome::LimitedTokens,
            requests: None,
            tokens: None,
            retry_after: Some(retry_after),
        };
        assert_eq!(
            headers(&decision(Duration::from_nanos(1))),
            [("retry-after", "1".to_owned()), ("retry-after-ms", "1".to_owned())]
        );
        assert_eq!(
            headers(&decision(Duration::from_millis(2001))),
            [("retry-after", "3".to_owned()), ("retry-after-ms", "2001".to_owned())]
        );
    }

    #[test]
    fn unlimited_dimensions_produce_no_headers() {
        let limiter = RateLimiter::new(vec![
            None,
            Some(LimitConfig { requests_per_minute: None, requests_burst: 1, tokens_per_minute: None }),
            Some(LimitConfig { requests_per_minute: None, requests_burst: 1, tokens_per_minute: Some(100) }),
            Some(LimitConfig { requests_per_minute: Some(10), requests_burst: 1, tokens_per_minute: None }),
        ])
        .expect("valid limits");
        let start = Instant::now();
        for credential in [0, 1] {
            for _ in 0..1000 {
                let admission = limiter.acquire(credential, u64::MAX, start).expect("unlimited");
                assert_eq!(headers(&admission.decision), []);
                limiter.settle(admission.reservation, u64::MAX, start);
            }
        }
        let tokens_only = limiter.acquire(2, 10, start).expect("allowed").decision;
        let names: Vec<_> = tokens_only.headers().map(|(name, _)| name).collect();
        assert_eq!(
            names,
            ["x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"]
        );
        let requests_only = limiter.acquire(3, u64::MAX, start).expect("allowed").decision;
        let names: Vec<_> = requests_only.headers().map(|(name, _)| name).collect();
        assert_eq!(
            names,
            ["x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"]
        );
    }

    #[test]
    fn format_reset_examples() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(1), "1ms"),
            (Duration::from_micros(1500), "2ms"),
            (Duration::from_millis(20), "20ms"),
            (Duration::from_nanos(999_000_001), "1s"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_millis(1250), "1.25s"),
            (Duration::from_millis(1005), "1.005s"),
            (Duration::from_millis(59_500), "59.5s"),
            (Duration::from_secs(60), "1m0s"),
            (Duration::from_millis(90_500), "1m30.5s"),
            (Duration::from_secs(360), "6m0s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_millis(3_661_001), "1h1m1.001s"),
            (Duration::from_secs(90_000), "25h0m0s"),
            (Duration::MAX, "5124095576030431h0m16s"),
        ];
        for (reset, expected) in cases {
            assert_eq!(format_reset(reset), expected, "{reset:?}");
        }
    }

    #[test]
    fn validate_rejects_zero_limits() {
        let valid =
            LimitConfig { requests_per_minute: Some(1), requests_burst: 1, tokens_per_minute: Some(1) };
        assert_eq!(valid.validate(), Ok(()));
        assert_eq!(
            LimitConfig { requests_per_minute: Some(0), ..valid }.validate(),
            Err(LimitConfigError::ZeroRequestsPerMinute)
        );
        assert_eq!(
            LimitConfig { requests_burst: 0, ..valid }.validate(),
            Err(LimitConfigError::ZeroRequestsBurst)
        );
        assert_eq!(
            LimitConfig { tokens_per_minute: Some(0), ..valid }.validate(),
            Err(LimitConfigError::ZeroTokensPerMinute)
        );
        let error =
            RateLimiter::new(vec![None, Some(valid), Some(LimitConfig { requests_burst: 0, ..valid })])
                .expect_err("invalid limits");
        assert_eq!(error, InvalidLimits { credential: 2, reason: LimitConfigError::ZeroRequestsBurst });
        assert_eq!(
            error.to_string(),
            "invalid rate limits for credential 2: requests_burst must be at least 1"
        );
    }

    #[test]
    fn huge_limits_do_not_overflow() {
        let limiter = one_credential(Some(u32::MAX), u32::MAX, Some(u64::MAX));
        let start = Instant::now();
        let admission = allowed(&limiter, u64::MAX, start);
        assert_eq!(admission.decision.tokens.map(|quota| quota.remaining), Some(0));
        limiter.settle(admission.reservation, 0, start);
        let far_future = start + Duration::from_secs(100 * 365 * 24 * 3600);
        let admission = allowed(&limiter, u64::MAX, far_future);
        limiter.settle(admission.reservation, u64::MAX, far_future);
        assert_eq!(
            allowed(&limiter, 0, far_future).decision.requests,
            Some(quota(u64::from(u32::MAX), u64::from(u32::MAX) - 2, Duration::from_nanos(28)))
        );

        let slow = one_credential(Some(1), u32::MAX, Some(1));
        let admission = allowed(&slow, 1, start);
        slow.settle(admission.reservation, u64::MAX, start);
        let refusal = refused(&slow, 1, start);
        assert_eq!(refusal.outcome, Outcome::LimitedTokens);
        assert_eq!(refusal.retry_after, Some(Duration::from_secs(u64::MAX)), "saturated");
    }

    proptest! {
        /// In every window `[t_i, t_j]` between two admitted requests, the number admitted is at most
        /// `burst + rate × (t_j - t_i)`, and a refusal's `retry_after` is exact.
        #[test]
        fn admitted_requests_never_exceed_burst_plus_rate(
            requests_per_minute in 1..=600u32,
            requests_burst in 1..=10u32,
            steps in proptest::collection::vec((0..20_000_000_000u64, any::<bool>()), 1..150),
        ) {
            let limiter = one_credential(Some(requests_per_minute), requests_burst, None);
            let start = Instant::now();
            let mut elapsed_nanos = 0u64;
            let mut admitted_nanos: Vec<u64> = Vec::new();
            for (step_nanos, retry_when_refused) in steps {
                elapsed_nanos += step_nanos;
                match limiter.acquire(CREDENTIAL, 0, start + Duration::from_nanos(elapsed_nanos)) {
                    Ok(_) => admitted_nanos.push(elapsed_nanos),
                    Err(refusal) => {
                        prop_assert_eq!(refusal.outcome, Outcome::LimitedRequests);
                        let retry_after = refusal.retry_after.expect("retryable");
                        let retry_nanos = u64::try_from(retry_after.as_nanos()).expect("small");
                        let too_early = start + Duration::from_nanos(elapsed_nanos + retry_nanos - 1);
                        prop_assert!(limiter.acquire(CREDENTIAL, 0, too_early).is_err());
                        if retry_when_refused {
                            elapsed_nanos += retry_nanos;
                            let retry = limiter.acquire(CREDENTIAL, 0, start + Duration::from_nanos(elapsed_nanos));
                            prop_assert!(retry.is_ok());
                            admitted_nanos.push(elapsed_nanos);
                        }
                    }
                }
            }
            for (first, &first_nanos) in admitted_nanos.iter().enumerate() {
                for (last, &last_nanos) in admitted_nanos.iter().enumerate().skip(first) {
                    let admitted = u128::try_from(last - first + 1).expect("small");
                    let excess = admitted.saturating_sub(u128::from(requests_burst));
                    let window = u128::from(last_nanos - first_nanos);
                    prop_assert!(
                        excess * NANOS_PER_MINUTE <= window * u128::from(requests_per_minute),
                        "{} admitted in {} ns", admitted, window
                    );
                }
            }
        }

        /// Tokens reserved (and settled at the estimate) in any window never exceed
        /// `capacity + rate × window`, and nothing is charged by refusals.
        #[test]
        fn reserved_tokens_never_exceed_capacity_plus_rate(
            tokens_per_minute in 1..=10_000u64,
            steps in proptest::collection::vec((0..5_000_000_000u64, 0..=12_000u64), 1..150),
        ) {
            let limiter = one_credential(None, 1, Some(tokens_per_minute));
            let start = Instant::now();
            let mut elapsed_nanos = 0u64;
            let mut reserved: Vec<(u64, u64)> = Vec::new();
            for (step_nanos, tokens_estimate) in steps {
                elapsed_nanos += step_nanos;
                let now = start + Duration::from_nanos(elapsed_nanos);
                match limiter.acquire(CREDENTIAL, tokens_estimate, now) {
                    Ok(admission) => {
                        limiter.settle(admission.reservation, tokens_estimate, now);
                        reserved.push((elapsed_nanos, tokens_estimate));
                    }
                    Err(refusal) => {
                        let expected = if tokens_estimate > tokens_per_minute {
                            Outcome::TokensExceedCapacity
                        } else {
                            Outcome::LimitedTokens
                        };
                        prop_assert_eq!(refusal.outcome, expected);
                        let remaining = refusal.tokens.expect("limited").remaining;
                        prop_assert_eq!(refused(&limiter, tokens_estimate, now).tokens.expect("limited").remaining,
                            remaining);
                    }
                }
            }
            for first in 0..reserved.len() {
                let mut total_tokens = 0u128;
                for &(last_nanos, tokens) in &reserved[first..] {
                    total_tokens += u128::from(tokens);
                    let excess = total_tokens.saturating_sub(u128::from(tokens_per_minute));
                    let window = u128::from(last_nanos - reserved[first].0);
                    prop_assert!(excess * NANOS_PER_MINUTE <= window * u128::from(tokens_per_minute));
                }
            }
        }
    }
}
