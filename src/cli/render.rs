//! The human view of a rollout for `dedup2d rollout status`: pure functions from the object (and the
//! clock, for "ago"/"in" figures) to text, so the output is unit-tested without a cluster.

use std::fmt::Write as _;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::operator::crd::{Dedup2DRollout, Dedup2DRolloutSpec, Dedup2DRolloutStatus, Phase};

/// The full status view of `rollout` at time `now`.
pub(crate) fn render_status(rollout: &Dedup2DRollout, now: Timestamp) -> String {
    let mut out = String::new();
    let empty = Default::default();
    let status = rollout.status.as_ref().unwrap_or(&empty);
    let _ = writeln!(
        out,
        "Dedup2DRollout {}/{}",
        rollout.namespace().unwrap_or_default(),
        rollout.name_any()
    );
    phase_lines(&mut out, rollout, status, now);
    worker_lines(&mut out, &rollout.spec, status);
    dual_write_line(&mut out, &rollout.spec, status, now);
    drain_lines(&mut out, status, now);
    condition_lines(&mut out, status);
    request_lines(&mut out, rollout, status, now);
    out
}

/// Phase, message, generation, pause, hold and rollback.
fn phase_lines(
    out: &mut String,
    rollout: &Dedup2DRollout,
    status: &Dedup2DRolloutStatus,
    now: Timestamp,
) {
    let name = rollout.name_any();
    let spec = &rollout.spec;
    let phase = status
        .phase
        .map(|p| p.to_string())
        .unwrap_or_else(|| "<none yet: no operator has handled it>".into());
    let since = status
        .phase_started_at
        .as_ref()
        .map(|t| format!(" (since {})", when(t, now)))
        .unwrap_or_default();
    let _ = writeln!(out, "  Phase:       {phase}{since}");
    if let Some(m) = status.message.as_deref().filter(|m| !m.is_empty()) {
        let _ = writeln!(out, "  Message:     {m}");
    }
    let generation = rollout.metadata.generation.unwrap_or(0);
    match status.observed_generation {
        Some(g) if g < generation => {
            let _ = writeln!(
                out,
                "  Generation:  {generation} (operator has seen {g}: spec change not handled yet)"
            );
        }
        None if status.phase.is_some() => {
            let _ = writeln!(out, "  Generation:  {generation} (not yet observed)");
        }
        _ => {}
    }
    if spec.paused || status.paused_since.is_some() {
        let since = status
            .paused_since
            .as_ref()
            .map(|t| format!(" (since {})", when(t, now)))
            .unwrap_or_default();
        let state = if spec.paused { "yes" } else { "resuming" };
        let _ = writeln!(out, "  Paused:      {state}{since}");
    }
    if let Some(h) = &status.hold {
        let _ = writeln!(
            out,
            "  Held:        {}: {} (since {}; `dedup2d rollout retry {name}` or `abort {name}`)",
            h.reason,
            h.message,
            when(&h.since, now)
        );
    }
    if let Some(r) = &status.rollback {
        let _ = writeln!(
            out,
            "  Rollback:    {:?} from {} since {}: {}",
            r.level,
            r.from_phase,
            when(&r.started_at, now),
            r.reason
        );
    }
}

/// Each worker Deployment against its target image.
fn worker_lines(out: &mut String, spec: &Dedup2DRolloutSpec, status: &Dedup2DRolloutStatus) {
    let summary = status
        .worker_summary
        .clone()
        .unwrap_or_else(|| format!("?/{}", spec.workers.len()));
    let _ = writeln!(out, "  Workers:     {summary} upgraded");
    for w in &spec.workers {
        match status.workers.iter().find(|s| s.deployment == w.deployment) {
            Some(s) => {
                let _ = writeln!(
                    out,
                    "    {:<24} pods {}  updated {}  ready {}  old {}{}  -> {}",
                    w.deployment,
                    s.pods,
                    s.updated,
                    s.ready,
                    s.old,
                    if s.upgraded { "  upgraded" } else { "" },
                    w.image
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "    {:<24} (not observed yet)  -> {}",
                    w.deployment, w.image
                );
            }
        }
    }
}

/// The dual-write state and when it took effect.
fn dual_write_line(
    out: &mut String,
    spec: &Dedup2DRolloutSpec,
    status: &Dedup2DRolloutStatus,
    now: Timestamp,
) {
    let dw = status.dual_write.as_deref().unwrap_or("Unknown");
    let mut line = format!("  Dual-write:  {dw}");
    if let Some(t) = &status.dual_write_on_in_effect_at {
        let _ = write!(line, "; on in effect {}", when(t, now));
    }
    if let Some(t) = &status.dual_write_off_in_effect_at {
        let _ = write!(line, "; off in effect {}", when(t, now));
    }
    if !spec.dual_write.enabled {
        line.push_str(" (grayscale phase disabled in spec)");
    }
    let _ = writeln!(out, "{line}");
}

/// Legacy payloads left, the drain deadline, active jobs a full rollback waits for.
fn drain_lines(out: &mut String, status: &Dedup2DRolloutStatus, now: Timestamp) {
    let has_drain = status.drain_deadline.is_some()
        || status.legacy_payloads.is_some()
        || status.legacy_payloads_without_expiry.is_some();
    if has_drain {
        let mut line = String::from("  Drain:       ");
        match status.legacy_payloads {
            Some(n) => {
                let _ = write!(line, "{n} legacy payload(s) in Redis");
            }
            None => line.push_str("legacy payloads not counted yet"),
        }
        if let Some(n) = status.legacy_payloads_without_expiry.filter(|n| *n > 0) {
            let _ = write!(line, ", {n} without expiry (they never drain)");
        }
        if let Some(t) = &status.drain_deadline {
            let _ = write!(line, "; deadline {}", when(t, now));
        }
        let _ = writeln!(out, "{line}");
    }
    if let Some(n) = status.active_jobs_without_b64 {
        let _ = writeln!(
            out,
            "  Active jobs without file_bytes_b64: {n} (a full rollback waits for them)"
        );
    }
}

/// The conditions as a table.
fn condition_lines(out: &mut String, status: &Dedup2DRolloutStatus) {
    if !status.conditions.is_empty() {
        let _ = writeln!(out, "  Conditions:");
        let w_type = status
            .conditions
            .iter()
            .map(|c| c.type_.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let w_reason = status
            .conditions
            .iter()
            .map(|c| c.reason.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let _ = writeln!(
            out,
            "    {:<w_type$}  {:<7}  {:<w_reason$}  MESSAGE",
            "TYPE", "STATUS", "REASON"
        );
        for c in &status.conditions {
            let _ = writeln!(
                out,
                "    {:<w_type$}  {:<7}  {:<w_reason$}  {}",
                c.type_, c.status, c.reason, c.message
            );
        }
    }
}

/// The last handled request, a pending one, and the finish time.
fn request_lines(
    out: &mut String,
    rollout: &Dedup2DRollout,
    status: &Dedup2DRolloutStatus,
    now: Timestamp,
) {
    if let Some(r) = &status.last_request {
        let _ = writeln!(
            out,
            "  Last request: {} handled {}: {}",
            r.request,
            when(&r.handled_at, now),
            r.outcome
        );
    }
    if let Some(pending) = super::wait::pending_request(rollout) {
        let _ = writeln!(out, "  Pending request: {pending} (not handled yet)");
    }
    if let Some(t) = &status.finished_at {
        let _ = writeln!(out, "  Finished:    {}", when(t, now));
    }
}

/// One line for `status --watch` when the phase (or message) changes.
pub(crate) fn render_change(
    rollout: &Dedup2DRollout,
    previous: Option<Phase>,
    now: Timestamp,
) -> String {
    let status = rollout.status.as_ref();
    let phase = status.and_then(|s| s.phase);
    let message = status
        .and_then(|s| s.message.as_deref())
        .unwrap_or_default();
    // The planner's messages often start with the phase, which the line already names.
    let message = phase
        .and_then(|p| message.strip_prefix(&format!("{p}: ")))
        .unwrap_or(message);
    let stamp = now.strftime("%H:%M:%SZ");
    let arrow = match (previous, phase) {
        (Some(a), Some(b)) if a != b => format!("{a} -> {b}"),
        (_, Some(b)) => b.to_string(),
        (_, None) => "<no phase>".into(),
    };
    if message.is_empty() {
        format!("{stamp}  {arrow}")
    } else {
        format!("{stamp}  {arrow}: {message}")
    }
}

/// `2026-05-01T10:00:00Z (4m12s ago)` or `(in 10m)`.
fn when(t: &Time, now: Timestamp) -> String {
    let secs = t.0.as_second() - now.as_second();
    let rel = if secs > 0 {
        format!("in {}", human(secs))
    } else if secs < 0 {
        format!("{} ago", human(-secs))
    } else {
        "now".into()
    };
    format!("{} ({rel})", t.0.strftime("%Y-%m-%dT%H:%M:%SZ"))
}

/// `45s`, `4m12s`, `2h5m`, `3d4h`.
pub(crate) fn human(secs: i64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        (secs % 86_400) / 3600,
        (secs % 3600) / 60,
        secs % 60,
    );
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::{
        Dedup2DRolloutStatus, HandledRequest, Hold, WorkerStatus, REQUEST_ANNOTATION,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
    use serde_json::json;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_780_000_000 + s).unwrap()
    }

    fn rollout(status: Option<Dedup2DRolloutStatus>) -> Dedup2DRollout {
        let mut r: Dedup2DRollout = serde_json::from_value(json!({
            "apiVersion": "dedup2d.io/v1alpha1", "kind": "Dedup2DRollout",
            "metadata": {"name": "fleet", "namespace": "prod", "generation": 2},
            "spec": {
                "workers": [
                    {"deployment": "dedup2d-worker", "image": "reg/dedup2d:2.5.0"},
                    {"deployment": "dedup2d-render", "image": "reg/dedup2d:2.5.0"}
                ],
                "api": {"deployment": "dedup2d-api", "configMap": "dedup2d-config"}
            }
        }))
        .unwrap();
        r.status = status;
        r
    }

    fn cond(t: &str, s: &str, reason: &str, msg: &str) -> Condition {
        Condition {
            type_: t.into(),
            status: s.into(),
            reason: reason.into(),
            message: msg.into(),
            last_transition_time: Time(at(0)),
            observed_generation: Some(2),
        }
    }

    #[test]
    fn a_fresh_rollout_says_no_operator_has_handled_it() {
        let text = render_status(&rollout(None), at(0));
        assert!(text.starts_with("Dedup2DRollout prod/fleet\n"), "{text}");
        assert!(text.contains("Phase:       <none yet"), "{text}");
        assert!(text.contains("Workers:     ?/2 upgraded"), "{text}");
        assert!(
            text.contains("dedup2d-worker           (not observed yet)  -> reg/dedup2d:2.5.0"),
            "{text}"
        );
        assert!(!text.contains("Conditions"), "{text}");
        assert!(!text.contains("Drain"), "{text}");
    }

    #[test]
    fn a_draining_rollout_shows_every_figure() {
        let status = Dedup2DRolloutStatus {
            observed_generation: Some(2),
            phase: Some(Phase::Draining),
            message: Some("waiting for 12 legacy payloads".into()),
            phase_started_at: Some(Time(at(-252))),
            worker_summary: Some("2/2".into()),
            workers: vec![WorkerStatus {
                deployment: "dedup2d-worker".into(),
                pods: 3,
                updated: 3,
                ready: 3,
                old: 0,
                upgraded: true,
            }],
            dual_write: Some("Off".into()),
            dual_write_on_in_effect_at: Some(Time(at(-3600))),
            dual_write_off_in_effect_at: Some(Time(at(-300))),
            drain_deadline: Some(Time(at(3300))),
            legacy_payloads: Some(12),
            legacy_payloads_without_expiry: Some(1),
            active_jobs_without_b64: Some(4),
            conditions: vec![
                cond("Ready", "False", "Draining", "drain in progress"),
                cond(
                    "RollbackSafe",
                    "False",
                    "ActiveFileRefJobs",
                    "4 active jobs lack file_bytes_b64",
                ),
            ],
            last_request: Some(HandledRequest {
                request: "promote:abc".into(),
                handled_at: Time(at(-60)),
                outcome: "ignored: nothing to promote in Draining".into(),
            }),
            ..Default::default()
        };
        let text = render_status(&rollout(Some(status)), at(0));
        let expect = [
            "  Phase:       Draining (since 2026-05-28T20:22:28Z (4m12s ago))",
            "  Message:     waiting for 12 legacy payloads",
            "  Workers:     2/2 upgraded",
            "    dedup2d-worker           pods 3  updated 3  ready 3  old 0  upgraded  -> reg/dedup2d:2.5.0",
            "    dedup2d-render           (not observed yet)  -> reg/dedup2d:2.5.0",
            "  Dual-write:  Off; on in effect 2026-05-28T19:26:40Z (1h0m ago); off in effect 2026-05-28T20:21:40Z (5m0s ago)",
            "  Drain:       12 legacy payload(s) in Redis, 1 without expiry (they never drain); deadline 2026-05-28T21:21:40Z (in 55m0s)",
            "  Active jobs without file_bytes_b64: 4 (a full rollback waits for them)",
            "  Conditions:",
            "    TYPE          STATUS   REASON             MESSAGE",
            "    Ready         False    Draining           drain in progress",
            "    RollbackSafe  False    ActiveFileRefJobs  4 active jobs lack file_bytes_b64",
            "  Last request: promote:abc handled 2026-05-28T20:25:40Z (1m0s ago): ignored: nothing to promote in Draining",
        ];
        for line in expect {
            assert!(
                text.lines().any(|l| l == line),
                "missing line\n{line}\nin\n{text}"
            );
        }
        assert!(!text.contains("Paused"), "{text}");
        assert!(!text.contains("Generation"), "{text}");
    }

    #[test]
    fn paused_held_unobserved_spec_and_pending_request_are_called_out() {
        let mut r = rollout(Some(Dedup2DRolloutStatus {
            observed_generation: Some(1),
            phase: Some(Phase::UpgradingWorkers),
            paused_since: Some(Time(at(-30))),
            hold: Some(Hold {
                reason: "ExternalModification".into(),
                message: "image of dedup2d-worker changed by kubectl-edit".into(),
                since: Time(at(-10)),
            }),
            last_request: Some(HandledRequest {
                request: "promote:old".into(),
                handled_at: Time(at(-100)),
                outcome: "done".into(),
            }),
            ..Default::default()
        }));
        r.spec.paused = true;
        r.metadata.annotations =
            Some([(REQUEST_ANNOTATION.to_string(), "abort:new".to_string())].into());
        let text = render_status(&r, at(0));
        assert!(
            text.contains("  Paused:      yes (since 2026-05-28T20:26:10Z (30s ago))"),
            "{text}"
        );
        assert!(text.contains("  Held:        ExternalModification: image of dedup2d-worker changed by kubectl-edit"), "{text}");
        assert!(
            text.contains("Generation:  2 (operator has seen 1"),
            "{text}"
        );
        assert!(
            text.contains("  Pending request: abort:new (not handled yet)"),
            "{text}"
        );

        // Once handled, the annotation is no longer pending.
        let mut status = r.status.clone().unwrap();
        status.last_request.as_mut().unwrap().request = "abort:new".into();
        r.status = Some(status);
        assert!(!render_status(&r, at(0)).contains("Pending request"));
    }

    #[test]
    fn watch_lines_show_the_transition() {
        let r = rollout(Some(Dedup2DRolloutStatus {
            phase: Some(Phase::Soaking),
            message: Some("soaking for 10m".into()),
            ..Default::default()
        }));
        assert_eq!(
            render_change(&r, Some(Phase::UpgradingApi), at(0)),
            "20:26:40Z  UpgradingApi -> Soaking: soaking for 10m"
        );
        assert_eq!(
            render_change(&r, None, at(0)),
            "20:26:40Z  Soaking: soaking for 10m"
        );
        assert_eq!(
            render_change(&rollout(None), None, at(0)),
            "20:26:40Z  <no phase>"
        );
        // The phase is not repeated when the message starts with it.
        let r = rollout(Some(Dedup2DRolloutStatus {
            phase: Some(Phase::Draining),
            message: Some("Draining: waiting for a Redis scan".into()),
            ..Default::default()
        }));
        assert_eq!(
            render_change(&r, Some(Phase::DualWriteOff), at(0)),
            "20:26:40Z  DualWriteOff -> Draining: waiting for a Redis scan"
        );
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(human(0), "0s");
        assert_eq!(human(59), "59s");
        assert_eq!(human(61), "1m1s");
        assert_eq!(human(3600 * 2 + 300), "2h5m");
        assert_eq!(human(86_400 * 3 + 3600 * 4 + 5), "3d4h");
    }
}
