//! Kubernetes Events for rollouts, at least once for phase transitions.
//!
//! The planner's events are published after the status they describe is persisted (an Event for a
//! transition whose status write was refused would be a lie). A SIGKILL between the two would lose
//! the Event, so every transition is also kept in `status.transitions`, and before planning the
//! controller checks the newest ones against the Events the API server holds and re-publishes the
//! missing ones. The check runs once per process and rollout, and again after a failed publication;
//! otherwise the in-memory "published up to" time makes it free. It lists no Events at all for a
//! rollout whose transitions are older than [`REPUBLISH_WINDOW`] (a restart over long-finished
//! rollouts costs no request per rollout).

use std::{collections::HashMap, sync::Mutex, time::Duration};

use k8s_openapi::{
    api::core::v1::{Event as CoreEvent, ObjectReference},
    jiff::Timestamp,
};
use kube::{
    api::ListParams,
    runtime::{
        events::{Event, EventType, Recorder, Reporter},
        reflector::ObjectRef,
    },
    Api, Client, Resource, ResourceExt,
};
use tracing::{info, warn};

use super::{
    crd::{Dedup2DRollout, TransitionRecord},
    plan::{transition_event, Decision, EventKind, PlanEvent},
};

/// Transitions older than this are not re-published: with the API server's default `--event-ttl`
/// of one hour their Event would have expired anyway, and a restart long after the fact should not
/// announce old news.
pub const REPUBLISH_WINDOW: Duration = Duration::from_secs(55 * 60);

/// A transition is stamped with its planning time rounded up to the second; its Event is created
/// just after. An Event this much older than the stamp still counts as that transition's.
const STAMP_SLACK_SECS: i64 = 2;

/// An Event the API server holds for a rollout, reduced to what matching needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenEvent {
    /// For transition Events, the target phase.
    pub action: String,
    pub reason: String,
    /// The latest time the Event was observed (series included).
    pub last_seen: Timestamp,
}

/// The transitions that still need an Event: those newer than `published_up_to` (when unknown, the
/// newest batch, i.e. those sharing the newest stamp), within [`REPUBLISH_WINDOW`] of `now`, and
/// without a matching Event in `seen`.
pub fn missing<'a>(
    transitions: &'a [TransitionRecord],
    published_up_to: Option<Timestamp>,
    seen: &[SeenEvent],
    now: Timestamp,
) -> Vec<&'a TransitionRecord> {
    let Some(newest) = transitions.last().map(|t| t.at.0) else {
        return vec![];
    };
    let oldest_wanted = now.as_second() - REPUBLISH_WINDOW.as_secs() as i64;
    transitions
        .iter()
        .filter(|t| match published_up_to {
            Some(p) => t.at.0 > p,
            None => t.at.0 == newest,
        })
        .filter(|t| t.at.0.as_second() >= oldest_wanted)
        .filter(|t| {
            let action = t.to.to_string();
            !seen.iter().any(|e| {
                e.action == action
                    && e.reason == t.reason
                    && e.last_seen.as_second() + STAMP_SLACK_SECS >= t.at.0.as_second()
            })
        })
        .collect()
}

/// Publishes rollout Events and remembers, per rollout, up to which transition they went out.
pub struct Announcer {
    client: Client,
    /// One recorder for all Events, so repeats are aggregated into series.
    recorder: Recorder,
    published_up_to: Mutex<HashMap<ObjectRef<Dedup2DRollout>, Timestamp>>,
}

impl Announcer {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Announcer {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            published_up_to: Mutex::default(),
        }
    }

    /// Publish a decision's events (after its status was persisted). When every transition Event
    /// went out, the newest transition counts as published; otherwise the next reconcile re-checks.
    pub async fn publish_decision(&self, rollout: &Dedup2DRollout, decision: &Decision) {
        let all_sent = self.publish(rollout, &decision.events).await;
        let transitioned = decision.transitions().next().is_some();
        if let (true, true, Some(newest)) =
            (all_sent, transitioned, decision.status.transitions.last())
        {
            self.mark(rollout, newest.at.0);
        }
    }

    /// Re-publish the transition Events a crash or a failed publication lost (see the module docs).
    pub async fn republish_missing(&self, rollout: &Dedup2DRollout) {
        let Some(status) = &rollout.status else {
            return;
        };
        let Some(newest) = status.transitions.last().map(|t| t.at.0) else {
            return;
        };
        let known = self
            .published_up_to
            .lock()
            .unwrap()
            .get(&ObjectRef::from_obj(rollout))
            .copied();
        if known.is_some_and(|k| k >= newest) {
            return;
        }
        // Nothing recent enough to re-publish even if the API server held no Event at all (a
        // restart over long-finished rollouts): no need to list them.
        if missing(&status.transitions, known, &[], Timestamp::now()).is_empty() {
            self.mark(rollout, newest);
            return;
        }
        let seen = match self.seen(rollout).await {
            Ok(seen) => seen,
            Err(e) => {
                warn!(error = %e, "could not list the rollout's Events; will check again");
                return;
            }
        };
        let lost: Vec<PlanEvent> = missing(&status.transitions, known, &seen, Timestamp::now())
            .into_iter()
            .map(transition_event)
            .collect();
        for e in &lost {
            info!(reason = %e.reason, message = %e.message, "re-publishing a transition Event that was not published");
        }
        if self.publish(rollout, &lost).await {
            self.mark(rollout, newest);
        }
    }

    fn mark(&self, rollout: &Dedup2DRollout, at: Timestamp) {
        let mut map = self.published_up_to.lock().unwrap();
        let entry = map.entry(ObjectRef::from_obj(rollout)).or_insert(at);
        *entry = (*entry).max(at);
    }

    /// Forget a deleted rollout.
    pub fn forget(&self, ns: &str, name: &str) {
        self.published_up_to
            .lock()
            .unwrap()
            .remove(&ObjectRef::new(name).within(ns));
    }

    /// The Events the API server holds for this rollout (matched by UID).
    async fn seen(&self, rollout: &Dedup2DRollout) -> Result<Vec<SeenEvent>, kube::Error> {
        let ns = rollout.namespace().unwrap_or_default();
        let uid = rollout.uid().unwrap_or_default();
        let api: Api<CoreEvent> = Api::namespaced(self.client.clone(), &ns);
        let lp = ListParams::default().fields(&format!("involvedObject.uid={uid}"));
        Ok(api
            .list(&lp)
            .await?
            .items
            .into_iter()
            .filter_map(|e| {
                let last_seen = [
                    e.event_time.as_ref().map(|t| t.0),
                    e.series
                        .as_ref()
                        .and_then(|s| s.last_observed_time.as_ref())
                        .map(|t| t.0),
                    e.last_timestamp.as_ref().map(|t| t.0),
                    e.first_timestamp.as_ref().map(|t| t.0),
                ]
                .into_iter()
                .flatten()
                .max()?;
                Some(SeenEvent {
                    action: e.action?,
                    reason: e.reason?,
                    last_seen,
                })
            })
            .collect())
    }

    /// Publish `events` in order; false if any failed (each failure is logged).
    async fn publish(&self, rollout: &Dedup2DRollout, events: &[PlanEvent]) -> bool {
        let reference = rollout.object_ref(&());
        let mut all_sent = true;
        for e in events {
            let type_ = match e.kind {
                EventKind::Normal => EventType::Normal,
                EventKind::Warning => EventType::Warning,
            };
            all_sent &= self
                .send(&reference, type_, &e.reason, &e.action, &e.message)
                .await;
        }
        all_sent
    }

    /// Publish one Event about a rollout that is not a planner decision (its deletion); false
    /// (logged) if it failed.
    pub async fn announce(&self, rollout: &Dedup2DRollout, event: &PlanEvent) -> bool {
        self.publish(rollout, std::slice::from_ref(event)).await
    }

    /// Publish a Warning Event about an object the planner did not decide on (a reconcile error, a
    /// rollout that does not deserialize): the reason is also the action, so repeats of one reason
    /// count on one Event series.
    pub async fn warn(&self, reference: &ObjectReference, reason: &str, message: &str) {
        self.send(reference, EventType::Warning, reason, reason, message)
            .await;
    }

    /// One Event through the shared recorder; false (logged) if it failed.
    async fn send(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        message: &str,
    ) -> bool {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(message.chars().take(1000).collect()),
            action: action.into(),
            secondary: None,
        };
        match self.recorder.publish(&event, reference).await {
            Ok(()) => true,
            Err(err) => {
                warn!(reason, error = %err, "could not publish Event");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::Phase;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn t(from: Phase, to: Phase, reason: &str, s: i64) -> TransitionRecord {
        TransitionRecord {
            from,
            to,
            reason: reason.into(),
            message: "m".into(),
            at: Time(at(s)),
        }
    }

    fn seen(action: Phase, reason: &str, s: i64) -> SeenEvent {
        SeenEvent {
            action: action.to_string(),
            reason: reason.into(),
            last_seen: at(s),
        }
    }

    fn history() -> Vec<TransitionRecord> {
        vec![
            t(Phase::Pending, Phase::DualWriteOn, "Started", 0),
            t(
                Phase::DualWriteOn,
                Phase::UpgradingWorkers,
                "DualWriteOn",
                10,
            ),
            t(
                Phase::UpgradingWorkers,
                Phase::UpgradingApi,
                "WorkersUpgraded",
                20,
            ),
            t(Phase::UpgradingApi, Phase::Soaking, "ApiUpgraded", 20),
        ]
    }

    #[test]
    fn after_a_restart_only_the_newest_batch_is_checked() {
        let h = history();
        let lost = missing(&h, None, &[], at(30));
        let to: Vec<Phase> = lost.iter().map(|t| t.to).collect();
        assert_eq!(to, [Phase::UpgradingApi, Phase::Soaking]);
    }

    #[test]
    fn a_transition_with_its_event_is_not_republished() {
        let h = history();
        // Stamps are rounded up, so the Event may be up to a second older than its transition.
        let events = [
            seen(Phase::UpgradingApi, "WorkersUpgraded", 19),
            seen(Phase::Soaking, "ApiUpgraded", 20),
        ];
        assert!(missing(&h, None, &events, at(30)).is_empty());
    }

    #[test]
    fn an_old_event_of_the_same_transition_does_not_count() {
        let h = history();
        // The same transition in an earlier attempt (before a retry), minutes ago.
        let events = [
            seen(Phase::UpgradingApi, "WorkersUpgraded", -300),
            seen(Phase::Soaking, "ApiUpgraded", 20),
        ];
        let lost = missing(&h, None, &events, at(30));
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].to, Phase::UpgradingApi);
    }

    #[test]
    fn a_different_reason_is_a_different_event() {
        let h = history();
        let events = [
            seen(Phase::UpgradingApi, "WorkersUpgraded", 20),
            seen(Phase::Soaking, "Promoted", 20),
        ];
        assert_eq!(missing(&h, None, &events, at(30)).len(), 1);
    }

    #[test]
    fn everything_after_the_last_published_is_checked() {
        let h = history();
        let lost = missing(&h, Some(at(0)), &[], at(30));
        assert_eq!(lost.len(), 3);
        assert!(missing(&h, Some(at(20)), &[], at(30)).is_empty());
    }

    #[test]
    fn old_news_is_not_republished() {
        let h = history();
        let late = at(20 + REPUBLISH_WINDOW.as_secs() as i64 + 1);
        assert!(missing(&h, None, &[], late).is_empty());
        assert!(missing(&[], None, &[], at(0)).is_empty());
    }
}
