//! A history recorder that watches a test namespace, and the invariant checks replayed from it.
//!
//! The history is ordered by `resourceVersion`: with the single etcd of the local control plane it
//! is one global, increasing revision, so "the ConfigMap changed after the last old pod was gone" is
//! an exact statement about the store, not about watch delivery timing.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        coordination::v1::Lease,
        core::v1::{ConfigMap, Pod},
    },
    jiff::Timestamp,
};
use kube::{
    api::{Patch, PatchParams},
    runtime::watcher,
    Api, ResourceExt,
};

use dedup2d::operator::crd::{Dedup2DRollout, Phase, FIELD_MANAGER};

use super::fleet::{
    rolled_out, template_annotation, template_image, API_NEW, API_OLD, INCLUDE, NEW_IMAGE,
    OLD_IMAGE,
};
use super::kube::TestNamespace;

/// One observed object version.
#[derive(Debug, Clone)]
pub enum Rec {
    Pod {
        name: String,
        app: String,
        image: String,
        ready: bool,
        deleted: bool,
    },
    ConfigMap {
        include_b64: Option<String>,
        /// The operator's managedFields entry ([`operator_stamp`]).
        ours: Option<String>,
    },
    Deployment {
        name: String,
        image: String,
        restart_annotation: Option<String>,
        /// kubectl's rollout-status test holds for this version.
        rolled: bool,
        /// The operator's managedFields entry ([`operator_stamp`]).
        ours: Option<String>,
    },
    Rollout {
        name: String,
        phase: Option<Phase>,
        /// A digest of the whole status, so status writes can be told from other edits.
        status: u64,
    },
}

#[derive(Debug, Clone)]
pub struct Entry {
    /// etcd revision of this version (deletions: of the delete).
    pub rv: u64,
    /// When the test saw it.
    pub seen: Timestamp,
    pub rec: Rec,
}

/// The operator's (field manager [`FIELD_MANAGER`]) managedFields entry of an object, as text:
/// its time and the fields it owns. It changes exactly when a write of the operator changed the
/// object (at the entry's one-second resolution, two writes of the same fields within one second
/// read as one).
pub fn operator_stamp<K: kube::Resource>(obj: &K) -> Option<String> {
    let entry = obj
        .meta()
        .managed_fields
        .iter()
        .flatten()
        .find(|m| m.manager.as_deref() == Some(FIELD_MANAGER))?;
    Some(format!("{:?} {:?}", entry.time, entry.fields_v1))
}

/// How many writes of the operator changed the objects `pick` selects (repeats of its
/// managedFields entry collapsed, [`operator_stamp`]).
pub fn operator_writes(entries: &[Entry], pick: impl Fn(&Rec) -> bool) -> usize {
    let chosen: Vec<Entry> = entries.iter().filter(|e| pick(&e.rec)).cloned().collect();
    sequence(&chosen, |r| match r {
        Rec::ConfigMap { ours, .. } | Rec::Deployment { ours, .. } => ours.clone(),
        _ => None,
    })
    .len()
}

/// Everything the namespace's watches delivered, in arrival order.
pub struct History {
    entries: Arc<Mutex<Vec<Entry>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for History {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn spawn_watch<K, F>(
    api: Api<K>,
    entries: Arc<Mutex<Vec<Entry>>>,
    to_rec: F,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
    F: Fn(&K, bool) -> Rec + Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        while let Some(ev) = stream.next().await {
            let (obj, deleted) = match ev {
                Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => (o, false),
                Ok(watcher::Event::Delete(o)) => (o, true),
                _ => continue,
            };
            let rv = obj
                .meta()
                .resource_version
                .as_deref()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            entries.lock().unwrap().push(Entry {
                rv,
                seen: Timestamp::now(),
                rec: to_rec(&obj, deleted),
            });
        }
    })
}

impl History {
    /// Start watching pods, the ConfigMap, Deployments and rollouts of the namespace; returns once
    /// the initial lists arrived.
    pub async fn start(ns: &TestNamespace) -> History {
        let entries = Arc::new(Mutex::new(vec![]));
        let tasks = vec![
            spawn_watch(ns.api::<Pod>(), entries.clone(), |p: &Pod, deleted| {
                Rec::Pod {
                    name: p.name_any(),
                    app: p.labels().get("app").cloned().unwrap_or_default(),
                    image: p.spec.as_ref().unwrap().containers[0]
                        .image
                        .clone()
                        .unwrap_or_default(),
                    ready: p
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        }),
                    deleted,
                }
            }),
            spawn_watch(
                ns.api::<ConfigMap>(),
                entries.clone(),
                |c: &ConfigMap, _| {
                    let get = |k: &str| c.data.as_ref().and_then(|d| d.get(k)).cloned();
                    Rec::ConfigMap {
                        include_b64: get(INCLUDE),
                        ours: operator_stamp(c),
                    }
                },
            ),
            spawn_watch(
                ns.api::<Deployment>(),
                entries.clone(),
                |d: &Deployment, _| Rec::Deployment {
                    name: d.name_any(),
                    image: template_image(d),
                    restart_annotation: template_annotation(
                        d,
                        dedup2d::operator::crd::PAYLOAD_CONFIG_ANNOTATION,
                    ),
                    rolled: rolled_out(d),
                    ours: operator_stamp(d),
                },
            ),
            spawn_watch(
                ns.api::<Dedup2DRollout>(),
                entries.clone(),
                |r: &Dedup2DRollout, _| Rec::Rollout {
                    name: r.name_any(),
                    phase: r.status.as_ref().and_then(|s| s.phase),
                    status: status_digest(r),
                },
            ),
        ];
        tokio::time::sleep(Duration::from_secs(1)).await;
        History { entries, tasks }
    }

    /// Entries sorted by etcd revision (ties keep arrival order).
    pub fn by_revision(&self) -> Vec<Entry> {
        let mut v = self.entries.lock().unwrap().clone();
        v.sort_by_key(|e| e.rv);
        v.dedup_by(|a, b| a.rv == b.rv && format!("{:?}", a.rec) == format!("{:?}", b.rec));
        v
    }

    /// Entries in arrival order.
    pub fn arrived(&self) -> Vec<Entry> {
        self.entries.lock().unwrap().clone()
    }
}

/// The store's revision now: writes a marker object of a kind the recorder does not watch (a
/// Lease) and returns its `resourceVersion`. History entries with a lower revision were written
/// before this call, higher ones after it.
pub async fn revision_now(ns: &TestNamespace) -> u64 {
    let marker = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "e2e-revision-marker"},
        "spec": {"holderIdentity": uuid::Uuid::new_v4().to_string()}
    });
    let lease = ns
        .api::<Lease>()
        .patch(
            "e2e-revision-marker",
            &PatchParams::apply("e2e-marker").force(),
            &Patch::Apply(marker),
        )
        .await
        .expect("write the revision marker");
    lease
        .resource_version()
        .and_then(|v| v.parse().ok())
        .expect("a numeric resourceVersion")
}

/// The rollout phases recorded at revisions strictly between `from` and `to`, repeats collapsed.
pub fn phases_between(entries: &[Entry], from: u64, to: u64) -> Vec<Option<Phase>> {
    let inside: Vec<Entry> = entries
        .iter()
        .filter(|e| e.rv > from && e.rv < to)
        .cloned()
        .collect();
    sequence(&inside, |r| match r {
        Rec::Rollout { phase, .. } => Some(*phase),
        _ => None,
    })
}

/// The revision of the first recorded rollout version in `phase`.
pub fn first_in_phase(entries: &[Entry], phase: Phase) -> Option<u64> {
    entries
        .iter()
        .find(|e| matches!(e.rec, Rec::Rollout { phase: Some(p), .. } if p == phase))
        .map(|e| e.rv)
}

fn status_digest(r: &Dedup2DRollout) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    serde_json::to_string(&r.status).unwrap().hash(&mut h);
    h.finish()
}

/// The phase of each version of rollout `name` (entries in revision order) that carries another
/// status than the version before it: one per status write that changed something (no-op writes
/// make no version). The created rollout itself is not counted.
pub fn status_writes(entries: &[Entry], name: &str) -> Vec<Option<Phase>> {
    let statuses = sequence(entries, |r| match r {
        Rec::Rollout {
            name: n,
            status,
            phase,
        } if n == name => Some((*status, *phase)),
        _ => None,
    });
    statuses
        .into_iter()
        .skip(1)
        .map(|(_, phase)| phase)
        .collect()
}

/// Replays the history in revision order and checks invariant 1 (docs/design.md §5) at every
/// ConfigMap version that turns dual-write off: no pod of a worker Deployment (terminating ones
/// included) on another image than `target` exists at that revision. Returns the revisions of those
/// ConfigMap versions.
pub fn check_dual_write_off_after_workers(
    entries: &[Entry],
    workers: &[&str],
    target: &str,
) -> Vec<u64> {
    let mut live: BTreeMap<String, (String, String)> = BTreeMap::new(); // pod -> (app, image)
    let mut include: Option<String> = None;
    let mut offs = vec![];
    for e in entries {
        match &e.rec {
            Rec::Pod {
                name,
                app,
                image,
                deleted,
                ..
            } => {
                if *deleted {
                    live.remove(name);
                } else {
                    live.insert(name.clone(), (app.clone(), image.clone()));
                }
            }
            Rec::ConfigMap { include_b64, .. } => {
                if include.as_deref() == Some("1") && include_b64.as_deref() == Some("0") {
                    let old: Vec<&String> = live
                        .iter()
                        .filter(|(_, (app, image))| {
                            workers.contains(&app.as_str()) && image != target
                        })
                        .map(|(n, _)| n)
                        .collect();
                    assert!(
                        old.is_empty(),
                        "invariant 1 broken: dual-write turned off at revision {} while old worker pods existed: {old:?}",
                        e.rv
                    );
                    offs.push(e.rv);
                }
                include = include_b64.clone();
            }
            _ => {}
        }
    }
    offs
}

/// The pods of the namespace that exist at revision `rv` (terminating ones included), replayed from
/// the history in revision order: pod name -> `(app, image)`.
pub fn pods_at(entries: &[Entry], rv: u64) -> BTreeMap<String, (String, String)> {
    let mut live = BTreeMap::new();
    for e in entries.iter().take_while(|e| e.rv <= rv) {
        if let Rec::Pod {
            name,
            app,
            image,
            deleted,
            ..
        } = &e.rec
        {
            if *deleted {
                live.remove(name);
            } else {
                live.insert(name.clone(), (app.clone(), image.clone()));
            }
        }
    }
    live
}

/// The first version of Deployment `name` whose template is back on `old` after it had been on
/// `new` (a reverted image), from the history in revision order.
pub fn reverted(entries: &[Entry], name: &str, old: &str, new: &str) -> Option<Entry> {
    let first_new = entries
        .iter()
        .find(|e| matches!(&e.rec, Rec::Deployment { name: n, image, .. } if n == name && image == new))?
        .rv;
    entries
        .iter()
        .find(|e| {
            e.rv > first_new
                && matches!(&e.rec, Rec::Deployment { name: n, image, .. } if n == name && image == old)
        })
        .cloned()
}

/// The ConfigMap's `DEDUP2D_JOB_PAYLOAD_INCLUDE_BYTES_B64` values in the history, repeats collapsed.
pub fn includes(entries: &[Entry]) -> Vec<String> {
    sequence(entries, |r| match r {
        Rec::ConfigMap { include_b64, .. } => include_b64.clone(),
        _ => None,
    })
}

/// A full rollback's order in the store's history: dual-write went 0 -> 1 -> 0 -> 1, and neither
/// the worker-a nor the API image was reverted before dual-write was back on, nor before the test
/// finished the file_ref-only jobs at `jobs_finished`.
pub fn check_full_rollback_order(history: &History, jobs_finished: Timestamp) {
    let h = history.by_revision();
    assert_eq!(includes(&h), ["0", "1", "0", "1"]);
    // The first "1" after the last "0" (later revisions may only change the ConfigMap's metadata).
    let is = |e: &Entry, want: &str| matches!(&e.rec, Rec::ConfigMap { include_b64: Some(v), .. } if v == want);
    let last_off = h.iter().rfind(|e| is(e, "0")).unwrap().rv;
    let on_again = h.iter().find(|e| e.rv > last_off && is(e, "1")).unwrap().rv;
    let arrived = history.arrived();
    for (name, old, new) in [
        ("worker-a", OLD_IMAGE, NEW_IMAGE),
        ("api", API_OLD, API_NEW),
    ] {
        let e = reverted(&h, name, old, new).expect("the image was reverted");
        assert!(
            on_again < e.rv,
            "{name}: dual-write on ({on_again}) before the revert ({})",
            e.rv
        );
        let seen = arrived.iter().find(|a| a.rv == e.rv).unwrap().seen;
        assert!(
            seen >= jobs_finished,
            "{name} reverted before the jobs finished"
        );
    }
}

/// The API Deployment's restart annotation values in the history, repeats collapsed.
pub fn api_restart_annotations(entries: &[Entry]) -> Vec<Option<String>> {
    sequence(entries, |r| match r {
        Rec::Deployment {
            name,
            restart_annotation,
            ..
        } if name == "api" => Some(restart_annotation.clone()),
        _ => None,
    })
}

/// The sequence of distinct values `f` picks out of the history (consecutive repeats collapsed).
pub fn sequence<T: PartialEq + Clone>(entries: &[Entry], f: impl Fn(&Rec) -> Option<T>) -> Vec<T> {
    let mut out: Vec<T> = vec![];
    for e in entries {
        if let Some(v) = f(&e.rec) {
            if out.last() != Some(&v) {
                out.push(v);
            }
        }
    }
    out
}
