//! The retry, backoff and circuit-breaker decisions of the dedupcad-vision client, as the Python
//! client makes them (`DedupCadVisionClient._request_json` and its `CircuitBreaker`). Pure: time
//! and randomness come in as arguments, so every rule is unit- and property-tested.

use std::collections::VecDeque;
use std::time::Duration;

/// What one HTTP attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// 2xx with a JSON body.
    Ok,
    /// An HTTP error status; `retry_after` is a 429's `Retry-After` in seconds.
    Status {
        code: u16,
        retry_after: Option<f64>,
    },
    /// 2xx whose body is not JSON.
    InvalidJson,
    Timeout,
    /// Connection refused, reset, DNS...: the error kind names it.
    Transport(&'static str),
}

impl Attempt {
    /// The `error`/`reason` label of the Python metrics (`http_503`, `timeout`, ...).
    pub fn label(&self) -> String {
        match self {
            Attempt::Ok => "success".into(),
            Attempt::Status { code, .. } => format!("http_{code}"),
            Attempt::InvalidJson => "invalid_json".into(),
            Attempt::Timeout => "timeout".into(),
            Attempt::Transport(kind) => (*kind).into(),
        }
    }

    /// Whether another attempt may follow (5xx, 408, 429, timeouts, invalid JSON, transport).
    pub fn retryable(&self) -> bool {
        match self {
            Attempt::Ok => false,
            Attempt::Status { code, .. } => *code >= 500 || *code == 408 || *code == 429,
            Attempt::InvalidJson | Attempt::Timeout | Attempt::Transport(_) => true,
        }
    }

    /// Whether the breaker counts it: a success, a failure, or not at all (other 4xx).
    pub fn breaker_verdict(&self) -> Option<bool> {
        match self {
            Attempt::Ok => Some(true),
            Attempt::Status { code, .. } if *code >= 500 || *code == 408 || *code == 429 => {
                Some(false)
            }
            Attempt::Status { .. } => None,
            Attempt::InvalidJson | Attempt::Timeout | Attempt::Transport(_) => Some(false),
        }
    }
}

/// `DEDUPCAD_VISION_RETRY_*`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay_s: f64,
    pub max_delay_s: f64,
}

impl RetryPolicy {
    /// After attempt `attempt` (1-based) failed with `outcome`, the pause before the next one,
    /// or `None` when no attempt follows.
    pub fn next(&self, attempt: u32, outcome: &Attempt, jitter: f64) -> Option<Duration> {
        if !outcome.retryable() || attempt >= self.max_attempts {
            return None;
        }
        let retry_after = match outcome {
            Attempt::Status { retry_after, .. } => *retry_after,
            _ => None,
        };
        Some(self.delay(attempt, retry_after, jitter))
    }

    /// `min(max, base·2^(attempt-1))` scaled by a jitter factor in [0.5, 1] (`jitter` in
    /// [0, 1] picks it), and never shorter than a server's `Retry-After`.
    pub fn delay(&self, attempt: u32, retry_after: Option<f64>, jitter: f64) -> Duration {
        let exp = 2f64.powi(attempt.saturating_sub(1).min(62) as i32);
        let mut d = (self.base_delay_s * exp).min(self.max_delay_s);
        d *= 0.5 + 0.5 * jitter.clamp(0.0, 1.0);
        if let Some(ra) = retry_after.filter(|r| r.is_finite()) {
            d = d.max(ra);
        }
        Duration::from_secs_f64(d.max(0.0))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    /// The value of `dedupcad_vision_circuit_state`.
    pub fn gauge(self) -> i64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::Open => 1,
            CircuitState::HalfOpen => 2,
        }
    }
}

/// `DEDUPCAD_VISION_CIRCUIT_*` plus the fixed parts of the Python breaker's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitConfig {
    pub enabled: bool,
    pub failure_threshold: u32,
    pub success_threshold: u32,
    pub recovery_timeout: Duration,
    pub half_open_max_calls: u32,
    pub slow_call_threshold: Duration,
}

/// Calls remembered for the rate rules, and the rates that open the circuit.
const WINDOW: usize = 10;
const FAILURE_RATE: f64 = 0.5;
const SLOW_RATE: f64 = 0.5;

/// The per-process breaker. `now` is any monotonic clock reading (time since start).
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    cfg: CircuitConfig,
    state: CircuitState,
    consecutive_failures: u32,
    consecutive_successes: u32,
    /// (success, slow) of the last calls.
    window: VecDeque<(bool, bool)>,
    half_open_calls: u32,
    opened_at: Duration,
}

impl CircuitBreaker {
    pub fn new(cfg: CircuitConfig) -> Self {
        CircuitBreaker {
            cfg,
            state: CircuitState::Closed,
            consecutive_failures: 0,
            consecutive_successes: 0,
            window: VecDeque::with_capacity(WINDOW + 1),
            half_open_calls: 0,
            opened_at: Duration::ZERO,
        }
    }

    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// May a call go out now? Moves an open circuit to half-open once the recovery timeout
    /// has passed (that first probe is not counted against `half_open_max_calls`, as in
    /// Python), and counts half-open probes.
    pub fn try_acquire(&mut self, now: Duration) -> bool {
        match self.state {
            CircuitState::Closed => true,
            CircuitState::Open => {
                if now.saturating_sub(self.opened_at) >= self.cfg.recovery_timeout {
                    self.transition(CircuitState::HalfOpen, now);
                    true
                } else {
                    false
                }
            }
            CircuitState::HalfOpen => {
                if self.half_open_calls < self.cfg.half_open_max_calls {
                    self.half_open_calls += 1;
                    true
                } else {
                    false
                }
            }
        }
    }

    pub fn record_success(&mut self, now: Duration, took: Duration) {
        self.consecutive_successes += 1;
        self.consecutive_failures = 0;
        self.push(true, took > self.cfg.slow_call_threshold);
        if self.state == CircuitState::HalfOpen
            && self.consecutive_successes >= self.cfg.success_threshold
        {
            self.transition(CircuitState::Closed, now);
        }
    }

    pub fn record_failure(&mut self, now: Duration) {
        self.consecutive_failures += 1;
        self.consecutive_successes = 0;
        self.push(false, false);
        match self.state {
            CircuitState::Closed if self.should_open() => self.transition(CircuitState::Open, now),
            CircuitState::HalfOpen => self.transition(CircuitState::Open, now),
            _ => {}
        }
    }

    fn push(&mut self, success: bool, slow: bool) {
        self.window.push_back((success, slow));
        while self.window.len() > WINDOW {
            self.window.pop_front();
        }
    }

    fn should_open(&self) -> bool {
        if self.consecutive_failures >= self.cfg.failure_threshold {
            return true;
        }
        if self.window.len() < WINDOW {
            return false;
        }
        let n = self.window.len() as f64;
        let failures = self.window.iter().filter(|(ok, _)| !ok).count() as f64;
        let slow = self.window.iter().filter(|(_, slow)| *slow).count() as f64;
        failures / n >= FAILURE_RATE || slow / n >= SLOW_RATE
    }

    fn transition(&mut self, to: CircuitState, now: Duration) {
        if self.state == to {
            return;
        }
        self.state = to;
        match to {
            CircuitState::Open => {
                self.opened_at = now;
                self.half_open_calls = 0;
            }
            CircuitState::HalfOpen => self.half_open_calls = 0,
            CircuitState::Closed => {
                self.window.clear();
                self.consecutive_failures = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> CircuitConfig {
        CircuitConfig {
            enabled: true,
            failure_threshold: 5,
            success_threshold: 2,
            recovery_timeout: Duration::from_secs(30),
            half_open_max_calls: 2,
            slow_call_threshold: Duration::from_secs(5),
        }
    }

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn retry_rules() {
        let p = RetryPolicy {
            max_attempts: 3,
            base_delay_s: 0.5,
            max_delay_s: 5.0,
        };
        let e503 = Attempt::Status {
            code: 503,
            retry_after: None,
        };
        assert_eq!(p.next(1, &e503, 1.0), Some(Duration::from_millis(500)));
        assert_eq!(p.next(2, &e503, 0.0), Some(Duration::from_millis(500)));
        assert_eq!(p.next(3, &e503, 1.0), None, "attempts exhausted");
        let e429 = Attempt::Status {
            code: 429,
            retry_after: Some(2.0),
        };
        assert_eq!(p.next(1, &e429, 1.0), Some(s(2)));
        for code in [400, 404, 422] {
            let a = Attempt::Status {
                code,
                retry_after: None,
            };
            assert_eq!(p.next(1, &a, 1.0), None);
            assert_eq!(a.breaker_verdict(), None);
        }
        for a in [
            Attempt::Timeout,
            Attempt::InvalidJson,
            Attempt::Transport("ConnectError"),
        ] {
            assert!(p.next(1, &a, 0.5).is_some());
            assert_eq!(a.breaker_verdict(), Some(false));
        }
        assert_eq!(p.delay(20, None, 1.0), s(5), "capped");
        assert_eq!(
            Attempt::Status {
                code: 408,
                retry_after: None
            }
            .label(),
            "http_408"
        );
    }

    #[test]
    fn opens_after_threshold_then_half_open_then_closed() {
        let mut b = CircuitBreaker::new(cfg());
        for _ in 0..4 {
            assert!(b.try_acquire(s(0)));
            b.record_failure(s(0));
        }
        assert_eq!(b.state(), CircuitState::Closed);
        b.record_failure(s(1));
        assert_eq!(b.state(), CircuitState::Open);
        assert!(!b.try_acquire(s(30)), "recovery counts from the opening");
        assert!(b.try_acquire(s(31)));
        assert_eq!(b.state(), CircuitState::HalfOpen);
        // The transition probe plus half_open_max_calls more.
        assert!(b.try_acquire(s(31)) && b.try_acquire(s(31)));
        assert!(!b.try_acquire(s(31)));
        b.record_success(s(32), Duration::from_millis(10));
        assert_eq!(b.state(), CircuitState::HalfOpen);
        b.record_success(s(32), Duration::from_millis(10));
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn a_failure_in_half_open_reopens_and_rates_open_a_closed_circuit() {
        let mut b = CircuitBreaker::new(cfg());
        for _ in 0..5 {
            b.record_failure(s(0));
        }
        assert!(b.try_acquire(s(40)));
        b.record_failure(s(41));
        assert_eq!(b.state(), CircuitState::Open);
        assert!(!b.try_acquire(s(70)));
        assert!(b.try_acquire(s(71)));

        // Alternating results never reach 5 in a row, but a full window at 50 % opens it.
        let mut b = CircuitBreaker::new(cfg());
        for i in 0..10 {
            if i % 2 == 0 {
                b.record_success(s(0), Duration::ZERO);
            } else {
                b.record_failure(s(0));
            }
        }
        assert_eq!(b.state(), CircuitState::Open);
    }

    #[derive(Debug, Clone)]
    enum Ev {
        Acquire,
        Success(u64),
        Failure,
        Wait(u64),
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            Just(Ev::Acquire),
            (0u64..8_000).prop_map(Ev::Success),
            Just(Ev::Failure),
            (0u64..40).prop_map(Ev::Wait),
        ]
    }

    proptest! {
        /// Whatever happens: an open circuit refuses every call until the recovery timeout has
        /// passed since it opened; it only opens on a failure; it only closes on a success, and
        /// then after `success_threshold` successes in a row since the last failure.
        #[test]
        fn breaker_invariants(events in proptest::collection::vec(ev(), 1..200)) {
            let c = cfg();
            let mut b = CircuitBreaker::new(c.clone());
            let mut now = Duration::ZERO;
            let mut opened_at = None;
            let mut run = 0u32;
            for e in events {
                let before = b.state();
                let acquire = matches!(e, Ev::Acquire);
                match e {
                    Ev::Acquire => {
                        let ok = b.try_acquire(now);
                        if let Some(t) = opened_at {
                            if before == CircuitState::Open && now - t < c.recovery_timeout {
                                prop_assert!(!ok);
                            }
                        }
                    }
                    Ev::Success(ms) => {
                        run += 1;
                        b.record_success(now, Duration::from_millis(ms));
                        if before != CircuitState::Open {
                            prop_assert_ne!(b.state(), CircuitState::Open);
                        }
                        if before != CircuitState::Closed && b.state() == CircuitState::Closed {
                            prop_assert!(run >= c.success_threshold);
                        }
                    }
                    Ev::Failure => {
                        run = 0;
                        b.record_failure(now);
                        if before != CircuitState::Closed {
                            prop_assert_eq!(b.state(), CircuitState::Open);
                        }
                    }
                    Ev::Wait(secs) => now += Duration::from_secs(secs),
                }
                if b.state() == CircuitState::Open && before != CircuitState::Open {
                    opened_at = Some(now);
                }
                if b.state() == CircuitState::HalfOpen && before != CircuitState::HalfOpen {
                    prop_assert!(before == CircuitState::Open && acquire);
                }
            }
        }

        #[test]
        fn delays_stay_within_the_policy(attempt in 1u32..20, jitter in 0.0f64..=1.0, ra in proptest::option::of(0.0f64..100.0)) {
            let p = RetryPolicy { max_attempts: 50, base_delay_s: 0.5, max_delay_s: 5.0 };
            let d = p.delay(attempt, ra, jitter).as_secs_f64();
            let cap = (0.5 * 2f64.powi(attempt as i32 - 1)).min(5.0);
            prop_assert!(d >= (cap * 0.5).max(ra.unwrap_or(0.0)) - 1e-9);
            prop_assert!(d <= cap.max(ra.unwrap_or(0.0)) + 1e-9);
        }
    }
}
