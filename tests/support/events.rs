//! The operator's Events in a test namespace: listing them, the phase transitions they report, and
//! waiting for a reason's count.

use std::time::Duration;

use k8s_openapi::{api::events::v1::Event, jiff::Timestamp};
use kube::Api;

use super::kube::TestNamespace;
use super::poll::eventually;

/// An operator Event as `(time, type, reason, action, note)`.
pub type OpEvent = (Timestamp, String, String, String, String);

/// The operator's Events as `(time, type, reason, action, note)`, oldest first.
pub async fn events(ns: &TestNamespace) -> Vec<OpEvent> {
    events_of(ns, None).await
}

/// [`events`], only those regarding the rollout `rollout` when given.
pub async fn events_of(ns: &TestNamespace, rollout: Option<&str>) -> Vec<OpEvent> {
    let api: Api<Event> = ns.api();
    let mut out: Vec<_> = api
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reporting_controller.as_deref() == Some("dedup2d-operator"))
        .filter(|e| {
            rollout.is_none_or(|name| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
            })
        })
        .map(|e| {
            (
                e.event_time.map(|t| t.0).unwrap_or(Timestamp::UNIX_EPOCH),
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.action.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect();
    out.sort_by_key(|e| e.0);
    out
}

pub fn print_events(what: &str, evs: &[OpEvent]) {
    println!("{what}: operator Events");
    for (t, ty, reason, action, note) in evs {
        println!("  {t} {ty:<7} {reason:<26} {action:<16} {note}");
    }
}

/// How many times the operator emitted an Event with `reason` (a repeated Event is one object with
/// a series count), polled until it is `want`.
pub async fn wait_event_count(ns: &TestNamespace, reason: &str, want: i32) {
    let api: Api<Event> = ns.api();
    eventually(
        &format!("{want} Events with reason {reason}"),
        Duration::from_secs(15),
        || async {
            let n: i32 = api
                .list(&Default::default())
                .await
                .ok()?
                .items
                .iter()
                .filter(|e| {
                    e.reporting_controller.as_deref() == Some("dedup2d-operator")
                        && e.reason.as_deref() == Some(reason)
                })
                .map(|e| e.series.as_ref().map(|s| s.count).unwrap_or(1))
                .sum();
            (n == want).then_some(())
        },
    )
    .await
}

/// Phase transitions from the Events: `(time, to-phase)`. The Event's action is the target phase.
pub async fn transitions(ns: &TestNamespace) -> Vec<(Timestamp, String)> {
    events(ns)
        .await
        .into_iter()
        .filter(|e| e.4.contains(" -> "))
        .map(|e| (e.0, e.3))
        .collect()
}

/// The transition Events of an undisturbed rollout, in order (`to` phases).
pub const FORWARD_TRANSITIONS: [&str; 7] = [
    "DualWriteOn",
    "UpgradingWorkers",
    "UpgradingApi",
    "Soaking",
    "DualWriteOff",
    "Draining",
    "Completed",
];

/// [`transitions`] once the last one goes to `last` (Events are published just after the status
/// write that a test may have seen first).
pub async fn transitions_until(ns: &TestNamespace, last: &str) -> Vec<(Timestamp, String)> {
    eventually(
        &format!("the transition Event to {last}"),
        Duration::from_secs(15),
        || async {
            let t = transitions(ns).await;
            (t.last().map(|x| x.1.as_str()) == Some(last)).then_some(t)
        },
    )
    .await
}

/// Seconds between two timestamps.
pub fn secs(from: Timestamp, to: Timestamp) -> f64 {
    (to.as_millisecond() - from.as_millisecond()) as f64 / 1000.0
}
