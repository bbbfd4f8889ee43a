//! Retry schedule (exponential backoff with jitter, honouring `Retry-After`) and the circuit
//! breaker of a sink. Pure: time comes in as data.

use crate::order::Millis;
use std::time::Duration;

/// How a sink's failed syncs are retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Backoff before the second attempt.
    pub initial_backoff: Duration,
    /// Longest backoff between attempts.
    pub max_backoff: Duration,
    /// Attempts after which a sync is dead-lettered.
    pub max_attempts: u32,
}

/// Default backoff before the second attempt.
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Default longest backoff.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(30 * 60);
/// Default attempts before dead-lettering (about 8 hours with the defaults).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 25;

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

impl RetryPolicy {
    /// The wait after attempt number `attempts` failed: exponential, capped, with "equal
    /// jitter" (between half and all of it; `unit` in [0, 1) supplies the randomness). A
    /// `Retry-After` from the sink wins when longer.
    pub fn backoff(&self, attempts: u32, retry_after: Option<Duration>, unit: f64) -> Duration {
        let exponent = attempts.saturating_sub(1).min(30);
        let base = self
            .initial_backoff
            .saturating_mul(1u32 << exponent)
            .min(self.max_backoff);
        let jittered = base.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0));
        match retry_after {
            Some(after) if after > jittered => after,
            _ => jittered,
        }
    }
}

/// Breaker states, as exported in the breaker gauge (0, 1, 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Sending normally.
    Closed,
    /// Not sending until the cool-down ends.
    Open {
        /// When it may try again.
        until: Millis,
    },
    /// One probe is allowed; its result closes or re-opens the breaker.
    HalfOpen {
        /// Whether the probe was sent.
        probing: bool,
    },
}

/// A consecutive-failure circuit breaker.
#[derive(Clone, Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: u32,
    state: BreakerState,
}

/// Default consecutive failures that open the breaker.
pub const DEFAULT_BREAKER_THRESHOLD: u32 = 5;
/// Default time the breaker stays open.
pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_secs(10);

impl Breaker {
    /// A closed breaker.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            failures: 0,
            state: BreakerState::Closed,
        }
    }

    /// The state at `now` (an open breaker whose cool-down ended becomes half-open).
    pub fn state(&mut self, now: Millis) -> BreakerState {
        if let BreakerState::Open { until } = self.state
            && now >= until
        {
            self.state = BreakerState::HalfOpen { probing: false };
        }
        self.state
    }

    /// Whether a send may start at `now`; in half-open, only the first may.
    pub fn try_acquire(&mut self, now: Millis) -> bool {
        match self.state(now) {
            BreakerState::Closed => true,
            BreakerState::Open { .. } => false,
            BreakerState::HalfOpen { probing: true } => false,
            BreakerState::HalfOpen { probing: false } => {
                self.state = BreakerState::HalfOpen { probing: true };
                true
            }
        }
    }

    /// A send succeeded (or was refused for reasons that say the sink is up).
    pub fn success(&mut self) {
        self.failures = 0;
        self.state = BreakerState::Closed;
    }

    /// A send that did not happen after all (settled elsewhere): a half-open probe slot it
    /// took is given back, with no verdict on the sink.
    pub fn release(&mut self) {
        if self.state == (BreakerState::HalfOpen { probing: true }) {
            self.state = BreakerState::HalfOpen { probing: false };
        }
    }

    /// A send failed transiently at `now`.
    pub fn failure(&mut self, now: Millis) {
        self.failures += 1;
        let reopen = matches!(self.state, BreakerState::HalfOpen { .. });
        if reopen || self.failures >= self.threshold {
            self.state = BreakerState::Open {
                until: now + self.cooldown.as_millis() as Millis,
            };
        }
    }

    /// 0 closed, 1 half-open, 2 open.
    pub fn gauge(&self) -> f64 {
        match self.state {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen { .. } => 1.0,
            BreakerState::Open { .. } => 2.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters_and_honours_retry_after() {
        let policy = RetryPolicy {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            max_attempts: 10,
        };
        assert_eq!(policy.backoff(1, None, 1.0), Duration::from_secs(1));
        assert_eq!(policy.backoff(1, None, 0.0), Duration::from_millis(500));
        assert_eq!(policy.backoff(4, None, 1.0), Duration::from_secs(8));
        assert_eq!(policy.backoff(20, None, 1.0), Duration::from_secs(60));
        assert_eq!(policy.backoff(40, None, 0.0), Duration::from_secs(30));
        assert_eq!(
            policy.backoff(1, Some(Duration::from_secs(7)), 1.0),
            Duration::from_secs(7)
        );
        assert_eq!(
            policy.backoff(4, Some(Duration::from_secs(2)), 1.0),
            Duration::from_secs(8)
        );
    }

    #[test]
    fn breaker_opens_after_the_threshold_and_probes_once() {
        let mut breaker = Breaker::new(3, Duration::from_secs(10));
        for _ in 0..2 {
            breaker.failure(0);
        }
        assert!(breaker.try_acquire(0));
        breaker.failure(0);
        assert!(!breaker.try_acquire(5_000), "open during the cool-down");
        assert!(
            breaker.try_acquire(10_000),
            "half-open lets one probe through"
        );
        assert!(!breaker.try_acquire(10_001), "only one");
        breaker.failure(10_002);
        assert!(!breaker.try_acquire(15_000), "a failed probe re-opens");
        assert!(breaker.try_acquire(20_002));
        breaker.success();
        assert!(breaker.try_acquire(20_003) && breaker.try_acquire(20_004));
        assert_eq!(breaker.gauge(), 0.0);
    }
}
