//! The reconciler: a kube-runtime `Controller` over `Dedup2DRollout`s that also watches the
//! Deployments, Pods and ConfigMaps they target, so a pod becoming Ready triggers the next step at
//! once instead of at the next poll, and the other rollouts on the same Deployments, so a rollout
//! stalled by an older one (`ConflictingRollout`) goes on as soon as that one finishes or is deleted.
//!
//! Every read of a reconcile comes from the watch caches (`caches.rs`), which those watches fill;
//! only the writes go to the API server, each with its precondition. Reconciles run at most
//! `--max-concurrent-reconciles` at a time, and planned requeues are jittered, so a restart with
//! many rollouts does not wake them all at once. Jitter only ever brings a requeue forward: a
//! deadline the planner waits for (the soak's end, the drain TTL) is never overshot, and a rollout
//! woken early just waits out the rest.
//!
//! One reconcile is a pipeline of named steps: caches synced → rollout from the cache → lost events → observe →
//! plan → persist status → act → events → requeue (the contract in `plan.rs`). Every log line of a
//! reconcile carries the rollout as `rollout=<namespace>/<name>`.

use std::{
    collections::{HashMap, HashSet},
    hash::{Hash, Hasher},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::{
    api::ListParams,
    core::{error_boundary::InvalidObject, DeserializeGuard},
    runtime::{
        controller::{self, Action as Requeue},
        events::Reporter,
        reflector::ObjectRef,
        watcher, Controller, WatchStreamExt,
    },
    Api, Client, Resource, ResourceExt,
};
use tokio::sync::watch;
use tracing::{debug, info, warn, Instrument};

use super::{
    act::{self, ActError},
    cached::CachedPod,
    caches::{self, Caches, Target, Writers},
    changes::changes_only,
    crd::{Dedup2DRollout, Phase, FIELD_MANAGER},
    events::Announcer,
    finalizer,
    metrics::OperatorMetrics,
    observe::{self, ObserveError, RedisPool},
    plan::{
        self,
        coalesce::{coalesce_wait, status_write_needed},
        Action, Decision,
    },
};

/// Longest wait between retries of a failing reconcile.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Re-plan this soon after a status write was refused because the rollout changed, or when the
/// cache still shows the rollout as it was before our own last status write.
const AFTER_STALE: Duration = Duration::from_millis(500);
/// Look again this soon when the target caches have not had their initial lists yet.
const AFTER_UNSYNCED: Duration = Duration::from_millis(500);
/// Default bound on reconciles running at once (`--max-concurrent-reconciles`).
pub const DEFAULT_MAX_CONCURRENT_RECONCILES: u16 = 8;
/// Planned requeues and backoffs come up to this share early (never late).
const JITTER: f64 = 0.25;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Observe(#[from] ObserveError),
    #[error(transparent)]
    Act(#[from] ActError),
    #[error(transparent)]
    Finalizer(#[from] finalizer::FinalizerError),
    #[error("reading Dedup2DRollout {name}: {source}")]
    Read {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// What kind of step a reconcile failed in: the reason of its Warning Event and the label of
/// `dedup2d_reconcile_errors_total{reason}` (a small fixed set; the variant's name is the string).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::Display, strum::IntoStaticStr)]
pub enum ErrorCategory {
    /// Reading from the API server while observing (the Redis URL's Secret).
    Observe,
    /// The rollout changed under a write.
    Conflict,
    /// A status write or a server-side apply.
    Act,
    /// Re-reading the rollout before an action.
    Read,
}

impl ErrorCategory {
    /// The wire string (the variant's name).
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl ReconcileError {
    /// The error's category.
    pub fn category(&self) -> ErrorCategory {
        match self {
            ReconcileError::Observe(_) => ErrorCategory::Observe,
            ReconcileError::Act(ActError::StaleRollout(_)) => ErrorCategory::Conflict,
            ReconcileError::Act(_) | ReconcileError::Finalizer(_) => ErrorCategory::Act,
            ReconcileError::Read { .. } => ErrorCategory::Read,
        }
    }

    /// A write refused because its precondition failed (HTTP 409): the object changed since it
    /// was read.
    pub fn is_conflict(&self) -> bool {
        let is_409 = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 409);
        match self {
            ReconcileError::Act(ActError::StaleRollout(_)) => true,
            ReconcileError::Act(ActError::Kube { source, .. }) => is_409(source),
            ReconcileError::Finalizer(f) => is_409(f.kube_error()),
            _ => false,
        }
    }

    /// A small fixed label for `dedup2d_reconcile_errors_total{reason}`: the category.
    pub fn reason(&self) -> &'static str {
        self.category().as_str()
    }
}

/// The reason of the Warning Event for a rollout that cannot be deserialized (it is skipped; the
/// others are reconciled as usual).
pub const INVALID_OBJECT_REASON: &str = "InvalidObject";

/// A rollout as the watch delivers it: deserialized, or the error and the object's metadata, so one
/// malformed object cannot break the watch for the others.
pub type GuardedRollout = DeserializeGuard<Dedup2DRollout>;

/// The operator could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "cannot list Dedup2DRollouts ({0}); is the CRD installed? (`dedup2d crd | kubectl apply -f -`)"
    )]
    NoCrd(#[source] kube::Error),
    /// RBAC refused the first list: the ServiceAccount has no Role in the watched namespace (or no
    /// ClusterRole without `--namespace`).
    #[error(
        "not allowed to list Dedup2DRollouts in {scope}: {reason}; grant the operator's ServiceAccount the rules of examples/operator-role.yaml there (Helm chart: rbac.scope and watchNamespace)"
    )]
    Forbidden { scope: String, reason: String },
}

/// The startup list's error: a 403 is [`RunError::Forbidden`] (with the API server's message),
/// anything else [`RunError::NoCrd`].
fn startup_error(namespace: Option<&str>, e: kube::Error) -> RunError {
    match e {
        kube::Error::Api(s) if s.code == 403 => RunError::Forbidden {
            scope: namespace.map_or("all namespaces".into(), |ns| format!("namespace {ns}")),
            reason: s.message,
        },
        e => RunError::NoCrd(e),
    }
}

/// Our last status write of one rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusWrite {
    /// The resourceVersion the write replaced: while the cache still shows it, the cache lags the
    /// write and a reconcile from it would plan on a status we already overwrote.
    pub overwrote: Option<String>,
    /// When it was written (the coalescing clock).
    pub at: Timestamp,
}

impl StatusWrite {
    /// Does the cached rollout at `cached_rv` predate this write?
    pub fn cache_is_behind(&self, cached_rv: Option<&str>) -> bool {
        cached_rv.is_some() && self.overwrote.as_deref() == cached_rv
    }
}

/// A rollout's key in the per-rollout maps.
type RolloutKey = (String, String);

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    /// The watch caches every read comes from.
    pub caches: Caches,
    pub redis: RedisPool,
    /// Rollout Events (transitions at least once).
    pub events: Announcer,
    /// Consecutive failures per rollout, for the backoff.
    failures: Mutex<HashMap<ObjectRef<GuardedRollout>, u32>>,
    /// Our last status write per rollout.
    writes: Mutex<HashMap<RolloutKey, StatusWrite>>,
    /// `true` once the target caches have their initial lists.
    synced: watch::Receiver<bool>,
    /// Requeues handed out so far: with the rollout's name, the seed of each requeue's jitter.
    requeues: AtomicU64,
    pub metrics: Arc<OperatorMetrics>,
}

impl Context {
    pub fn new(
        client: Client,
        caches: Caches,
        synced: watch::Receiver<bool>,
        metrics: Arc<OperatorMetrics>,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            events: Announcer::new(client.clone(), reporter),
            client,
            caches,
            redis: RedisPool::default(),
            failures: Mutex::default(),
            writes: Mutex::default(),
            synced,
            requeues: AtomicU64::new(0),
            metrics,
        }
    }

    fn last_write(&self, key: &RolloutKey) -> Option<StatusWrite> {
        self.writes.lock().unwrap().get(key).cloned()
    }

    /// Everything kept about a rollout that is gone.
    /// Drops what the operator holds for a rollout that is gone (or going): its metrics, Events
    /// bookkeeping, last write and the found sets of every rollout no longer in the cache (they
    /// are kept by uid, which a deleted rollout's key no longer tells).
    fn forget(&self, ns: &str, name: &str) {
        let live: HashSet<String> = self
            .caches
            .rollouts
            .state()
            .iter()
            .filter(|r| r.meta().deletion_timestamp.is_none())
            .filter_map(|r| r.meta().uid.clone())
            .collect();
        self.redis.forget_found_except(|uid| live.contains(uid));
        self.metrics.forget_rollout(ns, name);
        self.events.forget(ns, name);
        self.writes
            .lock()
            .unwrap()
            .remove(&(ns.to_string(), name.to_string()));
    }

    /// `d` jittered for rollout `name` (each call a new draw).
    fn jittered(&self, d: Duration, name: &str) -> Duration {
        jitter(d, name, self.requeues.fetch_add(1, Ordering::Relaxed))
    }
}

/// The API for `K` in namespace `ns`, or in every namespace.
fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Run the controller until the caller drops it (`serve` does, on the shutdown signal or a lost Lease;
/// a reconcile cut short is safe: every write is recorded before it is made). `namespace`: only
/// rollouts (and targets) there; at most `concurrency` reconciles at once. `synced` turns `true`
/// once every watch cache has its initial list. Reconciles are recorded in `metrics`.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    concurrency: u16,
    metrics: Arc<OperatorMetrics>,
    synced: watch::Sender<bool>,
) -> Result<(), RunError> {
    let ns = namespace.as_deref();
    let rollouts: Api<Dedup2DRollout> = api(&client, ns);
    rollouts
        .list(&ListParams::default().limit(1))
        .await
        .map_err(|e| startup_error(ns, e))?;
    info!(
        namespace = ns.unwrap_or("<all>"),
        "dedup2d operator starting"
    );

    let (caches, writers) = caches::stores();
    let synced_rx = synced.subscribe();
    let mark_synced = {
        let caches = caches.clone();
        async move {
            if caches.wait_until_targets_ready().await.is_ok() {
                info!("watch caches synced");
                let _ = synced.send(true);
            }
        }
    };
    let ctx = Arc::new(Context::new(client.clone(), caches, synced_rx, metrics));
    let reconciling = watching_targets(&client, ns, &ctx.caches, writers)
        .with_config(controller::Config::default().concurrency(concurrency.max(1)))
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => debug!(rollout = %format!("{}/{}", obj.namespace.unwrap_or_default(), obj.name), "reconciled"),
                Err(kube::runtime::controller::Error::ObjectNotFound(obj)) => {
                    debug!(object = %obj, "rollout gone")
                }
                Err(e) => warn!(error = %e, "reconcile failed"),
            }
        });
    futures::future::join(mark_synced, reconciling).await;
    info!("dedup2d operator stopped");
    Ok(())
}

/// The controller over (guarded) rollouts, also woken by the Deployments, Pods and ConfigMaps they
/// target (when what the cache keeps of them changes: `changes`) and by the other rollouts that
/// share a Deployment with them. The rollout, Deployment, Pod
/// and ConfigMap watches fill the stores behind `writers`; the second rollout watch (for the
/// others-sharing-a-Deployment trigger) stores nothing.
fn watching_targets(
    client: &Client,
    ns: Option<&str>,
    caches: &Caches,
    w: Writers,
) -> Controller<GuardedRollout> {
    let store = w.rollouts.as_reader();
    let rollouts = {
        let index = caches.rollouts_by_target.clone();
        caches::reflected(
            api::<GuardedRollout>(client, ns),
            w.rollouts,
            caches::strip_rollout,
            move |e| index.apply(e),
        )
        .applied_objects()
    };
    let controller = Controller::for_stream(rollouts, store);
    let pods = caches.pods_by_label.clone();
    let (c1, c2, c3, c4) = (
        caches.clone(),
        caches.clone(),
        caches.clone(),
        caches.clone(),
    );
    controller
        .watches_stream(
            changes_only(caches::reflected(
                api(client, ns),
                w.deployments,
                caches::strip_deployment,
                caches::unindexed,
            ))
            .touched_objects(),
            move |d| targeting(&c1, d.namespace(), Target::Deployment(d.name_any())),
        )
        .watches_stream(
            changes_only(caches::reflected(
                api(client, ns),
                w.pods,
                caches::strip_pod,
                move |e| pods.apply(e),
            ))
            .touched_objects(),
            move |p| match pod_deployment(&p) {
                Some(deployment) => targeting(&c2, p.namespace(), Target::Deployment(deployment)),
                None => vec![],
            },
        )
        .watches_stream(
            changes_only(caches::reflected(
                api(client, ns),
                w.config_maps,
                caches::strip_config_map,
                caches::unindexed,
            ))
            .touched_objects(),
            move |c| targeting(&c3, c.namespace(), Target::ConfigMap(c.name_any())),
        )
        .watches(
            api::<GuardedRollout>(client, ns),
            watcher::Config::default(),
            move |changed| {
                let Ok(changed) = &changed.0 else {
                    return vec![];
                };
                // A new phase or the deletion of one rollout can end another's conflict.
                let ns = changed.namespace().unwrap_or_default();
                refs(&c4.rollouts_sharing_a_deployment(&ns, changed))
            },
        )
}

/// The rollouts of namespace `ns` that target `target` (ones that did not deserialize never do).
fn targeting(
    caches: &Caches,
    ns: Option<String>,
    target: Target,
) -> Vec<ObjectRef<GuardedRollout>> {
    refs(&caches.rollouts_targeting(&ns.unwrap_or_default(), &target))
}

/// The controller's references to `rollouts`.
fn refs(rollouts: &[Arc<GuardedRollout>]) -> Vec<ObjectRef<GuardedRollout>> {
    rollouts
        .iter()
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

/// The Deployment a pod belongs to: its ReplicaSet owner's name without the pod-template hash.
pub fn pod_deployment(pod: &CachedPod) -> Option<String> {
    let rs = pod
        .metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.kind == "ReplicaSet")?;
    rs.name.rsplit_once('-').map(|(d, _)| d.to_string())
}

/// One reconcile of one rollout.
async fn reconcile(obj: Arc<GuardedRollout>, ctx: Arc<Context>) -> Result<Requeue, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    if let Err(invalid) = &obj.0 {
        warn!(rollout = %format!("{ns}/{name}"), error = %invalid, "skipping a Dedup2DRollout that does not deserialize");
        let reference = obj.object_ref(&());
        let message = invalid_object_message(invalid);
        ctx.events
            .warn(&reference, INVALID_OBJECT_REASON, &message)
            .await;
        return Ok(Requeue::await_change());
    }
    let span = tracing::info_span!("reconcile", rollout = %format!("{ns}/{name}"));
    let started = Instant::now();
    let result = match reconcile_steps(&ctx, &ns, &name).instrument(span).await {
        // A write whose precondition (a resourceVersion from the caches) no longer holds: the
        // object changed, most often by our own write the cache has not shown yet. Nothing was
        // written; re-plan from the newer version soon, without a Warning.
        Err(e) if e.is_conflict() => {
            debug!(rollout = %format!("{ns}/{name}"), error = %e, "an object changed under a write; re-planning");
            Ok(Requeue::requeue(AFTER_STALE))
        }
        other => other,
    };
    ctx.metrics.observe_reconcile(started.elapsed());
    if let Err(e) = &result {
        ctx.metrics.record_reconcile_error(e.reason());
    }
    if result.is_ok() {
        ctx.failures
            .lock()
            .unwrap()
            .remove(&ObjectRef::from_obj(obj.as_ref()));
    }
    result
}

async fn reconcile_steps(ctx: &Context, ns: &str, name: &str) -> Result<Requeue, ReconcileError> {
    // Nothing is planned from a cache without its initial list: an empty Pod cache would say "no
    // old pods", an empty Deployment cache "target missing". (The controller runs no reconcile
    // before the rollout cache has its list.)
    if !*ctx.synced.borrow() {
        return Ok(Requeue::requeue(AFTER_UNSYNCED));
    }
    let key = (ns.to_string(), name.to_string());
    let rollout = match cached_rollout(ctx, &key) {
        Cached::Gone => {
            ctx.forget(ns, name);
            return Ok(Requeue::await_change());
        }
        Cached::BehindOurWrite => {
            debug!(
                "the cache still shows the rollout before our last status write; re-planning soon"
            );
            return Ok(Requeue::requeue(AFTER_STALE));
        }
        Cached::Deleting(r) => {
            // the Event that tells the state the fleet is left in, then let it go
            let api: Api<Dedup2DRollout> = Api::namespaced(ctx.client.clone(), ns);
            finalizer::release(&api, &ctx.events, &r).await?;
            ctx.forget(ns, name);
            return Ok(Requeue::await_change());
        }
        Cached::Current(r) => *r,
    };
    let api: Api<Dedup2DRollout> = Api::namespaced(ctx.client.clone(), ns);
    if finalizer::ensure(&api, &rollout).await? {
        // the rollout changed under us: plan from the next read
        return Ok(Requeue::requeue(AFTER_STALE));
    }
    // events a crash may have lost
    ctx.events.republish_missing(&rollout).await;
    // observe
    let observed = observe::observe(&ctx.client, &ctx.caches, &ctx.redis, &rollout).await?;
    // plan
    let now = Timestamp::now();
    let decision = plan::plan(&rollout.spec, rollout.status.as_ref(), &observed, now);
    // persist status
    let persisted = match persist_status(ctx, &key, &rollout, &decision, now).await {
        Err(ReconcileError::Act(ActError::StaleRollout(_))) => {
            debug!("rollout changed since it was read; re-planning");
            return Ok(Requeue::requeue(AFTER_STALE));
        }
        other => other?,
    };
    record_metrics(&ctx.metrics, &rollout, &decision);
    // act
    let acted = match &decision.action {
        Action::None => Ok(()),
        action => {
            info!(?action, "applying");
            act::apply(&ctx.client, ns, action).await
        }
    };
    // events: the status they describe is persisted, so they go out even when the write failed
    // (the write is retried; the transitions would not be reported again).
    ctx.events.publish_decision(&rollout, &decision).await;
    acted?;
    // requeue
    let message = decision.status.message.as_deref().unwrap_or("");
    debug!(phase = ?decision.status.phase, message, requeue = ?decision.requeue_after, ?persisted, "planned");
    Ok(requeue(ctx, name, &decision, persisted))
}

/// The rollout as the cache holds it.
enum Cached {
    /// Deleted, or not (yet) in the cache.
    Gone,
    /// Being deleted: our finalizer still holds it.
    Deleting(Box<Dedup2DRollout>),
    /// Still the version our last status write replaced.
    BehindOurWrite,
    Current(Box<Dedup2DRollout>),
}

fn cached_rollout(ctx: &Context, key: &RolloutKey) -> Cached {
    let Some(guarded) = ctx.caches.rollout(&key.0, &key.1) else {
        return Cached::Gone;
    };
    let Ok(rollout) = &guarded.0 else {
        return Cached::Gone;
    };
    if rollout.metadata.deletion_timestamp.is_some() {
        return Cached::Deleting(Box::new(rollout.clone()));
    }
    let rv = rollout.metadata.resource_version.as_deref();
    if ctx.last_write(key).is_some_and(|w| w.cache_is_behind(rv)) {
        return Cached::BehindOurWrite;
    }
    Cached::Current(Box::new(rollout.clone()))
}

/// What the persist step did with the decided status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Persisted {
    Written,
    Unchanged,
    /// Only progress changed: written at the latest after this long (the next reconcile decides).
    Coalesced(Duration),
}

/// Write the decided status when a change matters (`plan::coalesce`), with the cached
/// resourceVersion as precondition, so a stale decision is refused before anything is acted on.
/// An action on a status that changed only in progress needs no write (what it acts on is already
/// recorded): a fresh read of the rollout confirms that the cached copy it was planned from is
/// current.
async fn persist_status(
    ctx: &Context,
    key: &RolloutKey,
    rollout: &Dedup2DRollout,
    decision: &Decision,
    now: Timestamp,
) -> Result<Persisted, ReconcileError> {
    let api: Api<Dedup2DRollout> = Api::namespaced(ctx.client.clone(), &key.0);
    let old = rollout.status.as_ref();
    let last_at = ctx.last_write(key).map(|w| w.at);
    if !status_write_needed(old, &decision.status, last_at, now) {
        if decision.action != Action::None {
            confirm_current(&api, rollout).await?;
        }
        if old == Some(&decision.status) {
            return Ok(Persisted::Unchanged);
        }
        ctx.metrics.record_status_write(true);
        let wait = last_at.map_or(Duration::ZERO, |at| coalesce_wait(at, now));
        return Ok(Persisted::Coalesced(wait));
    }
    act::write_status(&api, rollout, &decision.status).await?;
    ctx.metrics.record_status_write(false);
    let written = StatusWrite {
        overwrote: rollout.metadata.resource_version.clone(),
        at: now,
    };
    ctx.writes.lock().unwrap().insert(key.clone(), written);
    for (from, to) in decision.transitions() {
        info!(%from, %to, message = decision.status.message.as_deref().unwrap_or(""), "phase transition");
    }
    Ok(Persisted::Written)
}

/// Fails with [`ActError::StaleRollout`] unless the API server still has `rollout`'s version.
async fn confirm_current(
    api: &Api<Dedup2DRollout>,
    rollout: &Dedup2DRollout,
) -> Result<(), ReconcileError> {
    let name = rollout.name_any();
    let fresh = api
        .get_metadata_opt(&name)
        .await
        .map_err(|source| ReconcileError::Read {
            name: name.clone(),
            source,
        })?;
    match fresh {
        Some(m) if m.metadata.resource_version == rollout.metadata.resource_version => Ok(()),
        _ => Err(ActError::StaleRollout(name).into()),
    }
}

/// When to look again: the planner's requeue (jittered unless immediate), or sooner when a
/// coalesced status change is due.
fn requeue(ctx: &Context, name: &str, decision: &Decision, persisted: Persisted) -> Requeue {
    let planned = decision.requeue_after.map(|d| {
        if d.is_zero() {
            d
        } else {
            ctx.jittered(d, name)
        }
    });
    let due = match persisted {
        Persisted::Coalesced(wait) => Some(wait),
        Persisted::Written | Persisted::Unchanged => None,
    };
    match planned.into_iter().chain(due).min() {
        Some(d) => Requeue::requeue(d),
        None => Requeue::await_change(),
    }
}

/// The persisted decision in the metrics: phase, legacy payloads, drain time left, transitions and,
/// on reaching a final phase, the rollout's duration (from the rollout's creation).
fn record_metrics(metrics: &OperatorMetrics, rollout: &Dedup2DRollout, decision: &Decision) {
    let ns = rollout.namespace().unwrap_or_default();
    metrics.observe_rollout(&ns, &rollout.name_any(), &decision.status);
    for (from, to) in decision.transitions() {
        metrics.record_transition(from, to);
        if matches!(to, Phase::Completed | Phase::RolledBack | Phase::Failed) {
            let took = rollout
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| {
                    let ms = Timestamp::now().as_millisecond() - t.0.as_millisecond();
                    Duration::from_millis(ms.max(0) as u64)
                })
                .unwrap_or_default();
            metrics.record_rollout_finished(to, took);
        }
    }
}

/// The Event message for a rollout that does not deserialize.
pub fn invalid_object_message(invalid: &InvalidObject) -> String {
    format!(
        "this Dedup2DRollout cannot be read and is skipped until it changes: {}",
        invalid.error
    )
}

/// Back off exponentially per rollout (1 s doubling to 60 s) and publish a Warning Event whose
/// reason is the error's category. The Events recorder folds repeats of one reason into one Event
/// series, and the backoff bounds how often that is written; errors never crash the operator.
fn error_policy(obj: Arc<GuardedRollout>, err: &ReconcileError, ctx: Arc<Context>) -> Requeue {
    let key = ObjectRef::from_obj(obj.as_ref());
    let n = {
        let mut failures = ctx.failures.lock().unwrap();
        let n = failures.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = ctx.jittered(backoff(n), &obj.name_any());
    warn!(
        rollout = %format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any()),
        error = %err,
        attempt = n,
        retry_in_ms = delay.as_millis() as u64,
        "reconcile failed"
    );
    let reference = obj.object_ref(&());
    let (reason, message) = (err.category(), format!("reconcile failed: {err}"));
    tokio::spawn(async move {
        ctx.events.warn(&reference, reason.as_str(), &message).await;
    });
    Requeue::requeue(delay)
}

/// `d` shortened by up to [`JITTER`] of itself, by a deterministic draw from the rollout's name and
/// `draw`. Never longer than `d`: a requeue aimed at a deadline must not fire after it.
pub fn jitter(d: Duration, name: &str, draw: u64) -> Duration {
    let mut h = std::hash::DefaultHasher::new();
    (name, draw).hash(&mut h);
    let unit = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
    d.mul_f64(1.0 - JITTER * unit)
}

/// Delay before retry number `attempt` (1-based).
pub fn backoff(attempt: u32) -> Duration {
    let secs = 1u64 << attempt.saturating_sub(1).min(6);
    Duration::from_secs(secs).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rollout_json(workers: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "dedup2d.io/v1alpha1",
            "kind": "Dedup2DRollout",
            "metadata": {"name": "r1", "namespace": "team-a", "uid": "u-1"},
            "spec": {
                "workers": workers,
                "api": {"deployment": "api", "configMap": "cfg"}
            }
        })
    }

    #[test]
    fn a_rollout_that_does_not_deserialize_is_kept_with_its_metadata_and_a_reason() {
        let good: GuardedRollout = serde_json::from_value(rollout_json(
            json!([{"deployment": "worker", "image": "reg/w:2"}]),
        ))
        .unwrap();
        assert!(good.0.is_ok(), "{:?}", good.0);

        // workers must be a list: the watch still delivers the object, as an error
        let bad: GuardedRollout =
            serde_json::from_value(rollout_json(json!("not-a-list"))).unwrap();
        let invalid = bad.0.as_ref().unwrap_err();
        assert_eq!(bad.name_any(), "r1");
        assert_eq!(bad.namespace().as_deref(), Some("team-a"));
        let reference = bad.object_ref(&());
        assert_eq!(reference.kind.as_deref(), Some("Dedup2DRollout"));
        assert_eq!(reference.uid.as_deref(), Some("u-1"));
        let message = invalid_object_message(invalid);
        assert!(
            message.contains("skipped") && message.contains("Expected a sequence"),
            "{message}"
        );
    }

    #[test]
    fn a_bad_rollout_never_matches_a_watched_target() {
        let (caches, mut writers) = caches::stores();
        for (name, workers) in [
            (
                "good",
                json!([{"deployment": "worker", "image": "reg/w:2"}]),
            ),
            ("bad", json!(7)),
        ] {
            let mut v = rollout_json(workers);
            v["metadata"]["name"] = json!(name);
            let event = watcher::Event::Apply(serde_json::from_value(v).unwrap());
            writers.rollouts.apply_watcher_event(&event);
            caches.rollouts_by_target.apply(&event);
        }
        let found = targeting(
            &caches,
            Some("team-a".into()),
            Target::Deployment("api".into()),
        );
        let names: Vec<&str> = found.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["good"]);
    }

    #[test]
    fn an_error_category_is_its_metrics_label_and_event_reason() {
        let stale = ReconcileError::Act(ActError::StaleRollout("team-a/r1".into()));
        assert_eq!(stale.category(), ErrorCategory::Conflict);
        assert_eq!(stale.reason(), "Conflict");
        let missing = ReconcileError::Act(ActError::Missing("Deployment api".into()));
        assert_eq!(missing.category().to_string(), "Act");
    }

    #[test]
    fn a_refused_startup_list_names_the_namespace_and_the_grant() {
        let status = |code| {
            let mut s = kube::core::Status::failure(
                "dedup2drollouts is forbidden: User \"system:serviceaccount:a:op\" cannot list",
                "Forbidden",
            );
            s.code = code;
            kube::Error::Api(s.boxed())
        };
        let msg = startup_error(Some("team-b"), status(403)).to_string();
        assert!(msg.starts_with("not allowed to list Dedup2DRollouts in namespace team-b: dedup2drollouts is forbidden"), "{msg}");
        assert!(msg.contains("examples/operator-role.yaml"), "{msg}");
        let msg = startup_error(None, status(403)).to_string();
        assert!(msg.contains("in all namespaces"), "{msg}");
        assert!(matches!(
            startup_error(None, status(404)),
            RunError::NoCrd(_)
        ));
    }

    #[test]
    fn pods_map_to_their_deployment() {
        let pod: CachedPod = serde_json::from_value(json!({"metadata": {"name": "dedup2d-worker-5d8f9-abcde",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "dedup2d-worker-5d8f9", "uid": "u"}]}}))
        .unwrap();
        assert_eq!(pod_deployment(&pod).as_deref(), Some("dedup2d-worker"));
        let bare: CachedPod = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
        assert_eq!(pod_deployment(&bare), None);
    }

    #[test]
    fn jitter_only_brings_a_requeue_forward_and_varies() {
        let d = Duration::from_secs(120);
        let draws: Vec<Duration> = (0..200).map(|i| jitter(d, "team-a/r1", i)).collect();
        let lo = d.mul_f64(1.0 - JITTER);
        assert!(draws.iter().all(|j| *j >= lo && *j <= d), "{draws:?}");
        assert!(
            draws.iter().any(|j| *j < d.mul_f64(0.8)) && draws.iter().any(|j| *j > d.mul_f64(0.95))
        );
        assert_eq!(
            jitter(d, "team-a/r1", 7),
            jitter(d, "team-a/r1", 7),
            "deterministic"
        );
        assert_ne!(
            jitter(d, "team-a/r1", 7),
            jitter(d, "team-a/r2", 7),
            "per rollout"
        );
        assert_eq!(jitter(Duration::ZERO, "r", 1), Duration::ZERO);
    }

    #[test]
    fn the_cache_is_behind_while_it_shows_the_version_we_overwrote() {
        let w = StatusWrite {
            overwrote: Some("41".into()),
            at: Timestamp::UNIX_EPOCH,
        };
        assert!(w.cache_is_behind(Some("41")));
        assert!(
            !w.cache_is_behind(Some("42")),
            "our write or anything after it"
        );
        assert!(!w.cache_is_behind(None));
    }

    #[test]
    fn backoff_doubles_to_a_minute() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(6), Duration::from_secs(32));
        assert_eq!(backoff(7), MAX_BACKOFF);
        assert_eq!(backoff(100), MAX_BACKOFF);
    }
}
