//! The `dedup2d.io/cleanup` finalizer: it holds a rollout's deletion just long enough for the
//! operator to publish one Event telling in what state the fleet is left (phase, images and pod
//! counts, dual-write, where the original values stay recorded), then it is removed.
//!
//! It never blocks a deletion for long: the Event is attempted once and the finalizer removed
//! whatever the outcome. With the operator gone for good, remove it by hand
//! (`kubectl patch d2r NAME --type=merge -p '{"metadata":{"finalizers":null}}'`). Both patches state
//! the whole list with the `resourceVersion` read, so a finalizer another controller added or
//! removed meanwhile is never lost (the patch fails with 409 and the reconcile is retried).

use kube::{
    api::{Patch, PatchParams},
    Api, ResourceExt,
};
use serde_json::json;

use super::{
    crd::{Dedup2DRollout, Phase, CLEANUP_FINALIZER, FIELD_MANAGER},
    plan::{EventKind, EventReason, PlanEvent},
};

/// A finalizer patch failed.
#[derive(Debug, thiserror::Error)]
#[error("{what} the {CLEANUP_FINALIZER} finalizer of Dedup2DRollout {name}: {source}")]
pub struct FinalizerError {
    what: &'static str,
    name: String,
    #[source]
    source: kube::Error,
}

impl FinalizerError {
    /// The API server's answer.
    pub fn kube_error(&self) -> &kube::Error {
        &self.source
    }
}

/// Does the rollout carry the finalizer?
pub fn has_finalizer(rollout: &Dedup2DRollout) -> bool {
    rollout.finalizers().iter().any(|f| f == CLEANUP_FINALIZER)
}

/// The merge patch that sets `finalizers` to `list`, with the `resourceVersion` read as
/// precondition (a change meanwhile, e.g. another controller's finalizer, fails it with 409).
fn finalizers_patch(list: &[String], resource_version: Option<&str>) -> serde_json::Value {
    json!({"metadata": {"finalizers": list, "resourceVersion": resource_version}})
}

/// The patch that adds the finalizer to the rollout as read.
pub fn add_patch(rollout: &Dedup2DRollout) -> serde_json::Value {
    let mut list = rollout.finalizers().to_vec();
    list.push(CLEANUP_FINALIZER.into());
    finalizers_patch(&list, rollout.resource_version().as_deref())
}

/// The patch that removes the finalizer from the rollout as read (`None`: not there).
pub fn remove_patch(rollout: &Dedup2DRollout) -> Option<serde_json::Value> {
    has_finalizer(rollout).then(|| {
        let list: Vec<String> = rollout
            .finalizers()
            .iter()
            .filter(|f| *f != CLEANUP_FINALIZER)
            .cloned()
            .collect();
        finalizers_patch(&list, rollout.resource_version().as_deref())
    })
}

/// Put the finalizer on a rollout that is not being deleted. Returns whether it patched (the
/// rollout's `resourceVersion` moved: plan from a fresh read).
pub async fn ensure(
    api: &Api<Dedup2DRollout>,
    rollout: &Dedup2DRollout,
) -> Result<bool, FinalizerError> {
    if has_finalizer(rollout) || rollout.metadata.deletion_timestamp.is_some() {
        return Ok(false);
    }
    patch(api, rollout, add_patch(rollout), "adding").await?;
    Ok(true)
}

/// The rollout is being deleted: announce the state it leaves, then let it go.
pub async fn release(
    api: &Api<Dedup2DRollout>,
    events: &super::events::Announcer,
    rollout: &Dedup2DRollout,
) -> Result<(), FinalizerError> {
    let Some(body) = remove_patch(rollout) else {
        return Ok(());
    };
    if !events.announce(rollout, &deletion_event(rollout)).await {
        tracing::warn!("the deletion Event did not go out; removing the finalizer anyway");
    }
    patch(api, rollout, body, "removing").await
}

async fn patch(
    api: &Api<Dedup2DRollout>,
    rollout: &Dedup2DRollout,
    body: serde_json::Value,
    what: &'static str,
) -> Result<(), FinalizerError> {
    let name = rollout.name_any();
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    api.patch(&name, &pp, &Patch::Merge(&body))
        .await
        .map_err(|source| FinalizerError { what, name, source })?;
    Ok(())
}

/// The Event a deleted rollout leaves: Normal when nothing is left half-done (never started,
/// completed, rolled back), else a Warning saying what runs where and how to go on.
pub fn deletion_event(rollout: &Dedup2DRollout) -> PlanEvent {
    let status = rollout.status.clone().unwrap_or_default();
    let phase = status.phase.unwrap_or_default();
    let workers: Vec<String> = rollout
        .spec
        .workers
        .iter()
        .map(|w| {
            let counts = status.workers.iter().find(|s| s.deployment == w.deployment);
            let (updated, pods) = counts.map_or((0, 0), |c| (c.updated, c.pods));
            format!("{} {updated}/{pods} pods on {}", w.deployment, w.image)
        })
        .collect();
    let dual_write = status.dual_write.as_deref().unwrap_or("Unknown");
    let state = format!("workers: {}; dual-write {dual_write}", workers.join(", "));
    let nothing_written = status.fields.is_empty();
    let (kind, tail) = match phase {
        _ if nothing_written => (EventKind::Normal, "it had changed nothing".to_string()),
        Phase::Completed => (
            EventKind::Normal,
            "the fleet is file_ref-only; nothing is left to do".into(),
        ),
        Phase::RolledBack => (
            EventKind::Normal,
            "rolled back; the original values stay recorded on the targets (dedup2d.io/originals) until a full rollback puts them back".into(),
        ),
        _ => (
            EventKind::Warning,
            "left unfinished: the original values stay recorded on the targets (dedup2d.io/originals); apply a new rollout to continue, or apply one and request abort-full to roll back to them".into(),
        ),
    };
    PlanEvent {
        kind,
        reason: EventReason::Deleted.to_string(),
        action: EventReason::Deleted.to_string(),
        message: format!("deleted in phase {phase}: {state}; {tail}"),
        transition: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::{Dedup2DRolloutStatus, FieldRecord, WorkerStatus};

    fn rollout(status: Option<Dedup2DRolloutStatus>) -> Dedup2DRollout {
        let mut r: Dedup2DRollout = serde_json::from_value(json!({
            "apiVersion": "dedup2d.io/v1alpha1", "kind": "Dedup2DRollout",
            "metadata": {"name": "r", "namespace": "ns"},
            "spec": {"workers": [{"deployment": "w", "image": "reg/w:2"}],
                     "api": {"deployment": "api", "configMap": "cfg"}}
        }))
        .unwrap();
        r.status = status;
        r
    }

    fn draining_half_way(phase: Phase) -> Dedup2DRolloutStatus {
        Dedup2DRolloutStatus {
            phase: Some(phase),
            dual_write: Some("On".into()),
            workers: vec![WorkerStatus {
                deployment: "w".into(),
                pods: 2,
                updated: 1,
                ..Default::default()
            }],
            fields: vec![FieldRecord {
                field: "Deployment/w/containers/w/image".into(),
                previous: Some("reg/w:1".into()),
                written: "reg/w:2".into(),
                confirmed: true,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn an_unfinished_rollout_leaves_a_warning_with_the_state_and_the_way_on() {
        let e = deletion_event(&rollout(Some(draining_half_way(Phase::UpgradingWorkers))));
        assert_eq!(e.kind, EventKind::Warning);
        assert_eq!(e.reason, "Deleted");
        assert!(
            e.message.starts_with(
                "deleted in phase UpgradingWorkers: workers: w 1/2 pods on reg/w:2; dual-write On;"
            ),
            "{}",
            e.message
        );
        assert!(e.message.contains("dedup2d.io/originals"), "{}", e.message);
        assert!(e.message.contains("abort-full"), "{}", e.message);
    }

    #[test]
    fn a_finished_or_untouched_rollout_leaves_a_normal_event() {
        let done = deletion_event(&rollout(Some(draining_half_way(Phase::Completed))));
        assert_eq!(done.kind, EventKind::Normal);
        assert!(
            done.message.contains("nothing is left to do"),
            "{}",
            done.message
        );
        let fresh = deletion_event(&rollout(None));
        assert_eq!(fresh.kind, EventKind::Normal);
        assert!(
            fresh.message.starts_with("deleted in phase Pending: workers: w 0/0 pods on reg/w:2; dual-write Unknown; it had changed nothing"),
            "{}",
            fresh.message
        );
    }

    #[test]
    fn patches_keep_other_finalizers_and_carry_the_read_version() {
        let mut r = rollout(None);
        r.metadata.resource_version = Some("5".into());
        r.metadata.finalizers = Some(vec!["other.io/x".into()]);
        assert!(!has_finalizer(&r));
        assert_eq!(remove_patch(&r), None);
        let add = add_patch(&r);
        assert_eq!(
            add,
            json!({"metadata": {"finalizers": ["other.io/x", CLEANUP_FINALIZER], "resourceVersion": "5"}})
        );
        r.metadata.finalizers = Some(vec![CLEANUP_FINALIZER.into(), "other.io/x".into()]);
        assert!(has_finalizer(&r));
        assert_eq!(
            remove_patch(&r).unwrap(),
            json!({"metadata": {"finalizers": ["other.io/x"], "resourceVersion": "5"}})
        );
    }
}
