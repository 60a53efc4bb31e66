//! Circuit breaker: a plain state machine (no I/O, no clock of its own) and the actor that
//! owns one per provider, shared by every worker.
//!
//! closed → open after `threshold` consecutive failures → after `open_for`, one half-open
//! probe → closed on its success, open again on its failure.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Call the upstream, then report.
    Allowed,
    /// Call the upstream as the half-open probe, then report.
    Probe,
    /// Do not call: the circuit is open (or a probe is already in flight).
    Refused,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// The caller gave up before an answer (client disconnect): says nothing about the
    /// upstream, but frees the probe slot.
    Abandoned,
}

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    open_for: Duration,
    consecutive_failures: u32,
    state: State,
    opened_at: Option<Instant>,
    /// Half-open admits exactly one probe; a second concurrent probe would double the load
    /// on a recovering provider and make its latency look worse than it is.
    probe_in_flight: bool,
}

impl Breaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            open_for,
            consecutive_failures: 0,
            state: State::Closed,
            opened_at: None,
            probe_in_flight: false,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub fn admit(&mut self, now: Instant) -> Admission {
        if self.state == State::Open
            && self.opened_at.is_some_and(|at| now.duration_since(at) >= self.open_for)
        {
            self.state = State::HalfOpen;
        }
        match self.state {
            State::Closed => Admission::Allowed,
            State::Open => Admission::Refused,
            State::HalfOpen if self.probe_in_flight => Admission::Refused,
            State::HalfOpen => {
                self.probe_in_flight = true;
                Admission::Probe
            }
        }
    }

    /// Records the outcome of an admitted call; returns the new state when it changed.
    pub fn record(
        &mut self,
        admission: Admission,
        outcome: Outcome,
        now: Instant,
    ) -> Option<State> {
        let before = self.state;
        if admission == Admission::Probe {
            self.probe_in_flight = false;
        }
        match outcome {
            Outcome::Success => {
                self.consecutive_failures = 0;
                if self.state == State::HalfOpen && admission == Admission::Probe {
                    self.state = State::Closed;
                    self.opened_at = None;
                }
            }
            Outcome::Failure => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                let probe_failed = self.state == State::HalfOpen && admission == Admission::Probe;
                if probe_failed
                    || (self.state == State::Closed && self.consecutive_failures >= self.threshold)
                {
                    self.state = State::Open;
                    self.opened_at = Some(now);
                }
            }
            Outcome::Abandoned => {}
        }
        (self.state != before).then_some(self.state)
    }
}

/// Published by the actor: true while the circuit is closed with no failure counted. Then
/// admission is certain and a success changes nothing, so handlers skip both messages —
/// the actor is only consulted when something is wrong.
#[derive(Clone)]
pub struct Health(Arc<AtomicBool>);

impl Health {
    pub fn is_clean(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// One per provider; handlers ask before calling and report after.
pub struct ProviderActor {
    name: &'static str,
    breaker: Breaker,
    health: Health,
}

impl ProviderActor {
    pub fn new(name: &'static str, breaker: Breaker) -> Self {
        Self { name, breaker, health: Health(Arc::new(AtomicBool::new(true))) }
    }

    pub fn health(&self) -> Health {
        self.health.clone()
    }

    fn publish(&self) {
        let clean =
            self.breaker.state() == State::Closed && self.breaker.consecutive_failures() == 0;
        self.health.0.store(clean, Ordering::Release);
    }
}

impl Actor for ProviderActor {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "Admission")]
pub struct Admit;

impl Handler<Admit> for ProviderActor {
    type Result = MessageResult<Admit>;

    fn handle(&mut self, _: Admit, _: &mut Context<Self>) -> Self::Result {
        let before = self.breaker.state();
        let admission = self.breaker.admit(Instant::now());
        self.publish();
        if self.breaker.state() != before {
            log::warn!("circuit {}: {before:?} → {:?} (probing)", self.name, self.breaker.state());
        }
        MessageResult(admission)
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct RecordOutcome {
    pub admission: Admission,
    pub outcome: Outcome,
}

impl Handler<RecordOutcome> for ProviderActor {
    type Result = ();

    fn handle(&mut self, msg: RecordOutcome, _: &mut Context<Self>) {
        let before = self.breaker.state();
        let changed = self.breaker.record(msg.admission, msg.outcome, Instant::now());
        self.publish();
        if let Some(after) = changed {
            log::warn!(
                "circuit {}: {before:?} → {after:?} after {} consecutive failure(s)",
                self.name,
                self.breaker.consecutive_failures()
            );
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BreakerStatus {
    pub provider: &'static str,
    pub state: State,
    pub consecutive_failures: u32,
}

#[derive(Message)]
#[rtype(result = "BreakerStatus")]
pub struct GetStatus;

impl Handler<GetStatus> for ProviderActor {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        // Reading the state also applies the open → half-open timeout for display.
        let mut state = self.breaker.state();
        if state == State::Open
            && self.breaker.opened_at.is_some_and(|at| at.elapsed() >= self.breaker.open_for)
        {
            state = State::HalfOpen;
        }
        MessageResult(BreakerStatus {
            provider: self.name,
            state,
            consecutive_failures: self.breaker.consecutive_failures(),
        })
    }
}

/// Reports an admitted call's outcome exactly once; dropped unreported, it says `Abandoned`
/// so a cancelled probe never leaves the circuit stuck half-open.
pub struct Permit {
    actor: Addr<ProviderActor>,
    health: Health,
    admission: Admission,
    reported: bool,
}

impl Permit {
    pub fn new(actor: Addr<ProviderActor>, health: Health, admission: Admission) -> Self {
        Self { actor, health, admission, reported: false }
    }

    pub fn report(mut self, outcome: Outcome) {
        self.reported = true;
        self.send(outcome);
    }

    fn send(&self, outcome: Outcome) {
        // Only a probe's or a failure's outcome can change a clean circuit; the rest is news
        // to nobody (checked now, not at admission: failures may have come in meanwhile).
        let news = self.admission == Admission::Probe
            || outcome == Outcome::Failure
            || (outcome == Outcome::Success && !self.health.is_clean());
        if news {
            self.actor.do_send(RecordOutcome { admission: self.admission, outcome });
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.reported {
            self.send(Outcome::Abandoned);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: Duration = Duration::from_secs(30);

    fn fail(b: &mut Breaker, now: Instant) -> Option<State> {
        let a = b.admit(now);
        b.record(a, Outcome::Failure, now)
    }

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let now = Instant::now();
        let mut b = Breaker::new(3, OPEN);
        assert_eq!(fail(&mut b, now), None);
        assert_eq!(fail(&mut b, now), None);
        assert_eq!(fail(&mut b, now), Some(State::Open));
        assert_eq!(b.admit(now), Admission::Refused);
    }

    #[test]
    fn a_success_resets_the_count() {
        let now = Instant::now();
        let mut b = Breaker::new(2, OPEN);
        fail(&mut b, now);
        let a = b.admit(now);
        b.record(a, Outcome::Success, now);
        assert_eq!(fail(&mut b, now), None);
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn half_open_admits_one_probe_and_closes_on_its_success() {
        let now = Instant::now();
        let mut b = Breaker::new(1, OPEN);
        fail(&mut b, now);
        assert_eq!(b.admit(now + OPEN / 2), Admission::Refused);
        let later = now + OPEN;
        assert_eq!(b.admit(later), Admission::Probe);
        assert_eq!(b.state(), State::HalfOpen);
        assert_eq!(b.admit(later), Admission::Refused, "only one probe at a time");
        assert_eq!(b.record(Admission::Probe, Outcome::Success, later), Some(State::Closed));
        assert_eq!(b.admit(later), Admission::Allowed);
    }

    #[test]
    fn a_failed_probe_opens_the_circuit_again() {
        let now = Instant::now();
        let mut b = Breaker::new(1, OPEN);
        fail(&mut b, now);
        let later = now + OPEN;
        assert_eq!(b.admit(later), Admission::Probe);
        assert_eq!(b.record(Admission::Probe, Outcome::Failure, later), Some(State::Open));
        assert_eq!(b.admit(later + OPEN / 2), Admission::Refused);
        assert_eq!(b.admit(later + OPEN), Admission::Probe);
    }

    #[test]
    fn an_abandoned_probe_frees_the_slot_without_deciding() {
        let now = Instant::now();
        let mut b = Breaker::new(1, OPEN);
        fail(&mut b, now);
        let later = now + OPEN;
        assert_eq!(b.admit(later), Admission::Probe);
        assert_eq!(b.record(Admission::Probe, Outcome::Abandoned, later), None);
        assert_eq!(b.state(), State::HalfOpen);
        assert_eq!(b.admit(later), Admission::Probe);
    }

    #[test]
    fn late_reports_from_calls_admitted_before_opening_do_not_reopen_a_half_open_circuit() {
        let now = Instant::now();
        let mut b = Breaker::new(1, OPEN);
        let early = b.admit(now);
        fail(&mut b, now);
        let later = now + OPEN;
        assert_eq!(b.admit(later), Admission::Probe);
        // A slow call admitted while closed fails now: the probe decides, not this one.
        assert_eq!(b.record(early, Outcome::Failure, later), None);
        assert_eq!(b.state(), State::HalfOpen);
    }
}
