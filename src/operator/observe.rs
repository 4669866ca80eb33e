//! The observer: builds the planner's [`Observed`] snapshot for one rollout from the watch caches
//! (its Deployments, their Pods by selector including terminating ones, the ConfigMap, managedFields,
//! the other rollouts of the namespace), one GET of the Redis URL's Secret when the spec names one
//! and Redis is read, and from Redis (worker heartbeats, the drain checks: only what the planner's
//! [`observation`] asks for).
//!
//! Nothing here decides. What only the cluster can tell is represented, not raised: a missing
//! Deployment or ConfigMap is absent from the snapshot, Redis trouble becomes
//! `DrainObs::Unreachable` / `Heartbeats::Unavailable`, and the planner turns these into `Stalled`
//! with a clear reason. Only API-server failures (the Secret's GET) are errors (the reconciler backs off and retries).
//! The IO is thin; the mapping of objects into snapshot types is in pure functions tested below.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::{ConfigMap, Secret},
    jiff::Timestamp,
};
use kube::{core::ObjectMeta, Api, Client, ResourceExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Mutex;

use super::{
    cached::{CachedDeployment, CachedPod, TemplateContainer},
    caches::Caches,
    crd::{Dedup2DRollout, Dedup2DRolloutSpec, FIELD_MANAGER, ORIGINALS_ANNOTATION},
    drain::{self, ActiveFigures, SCAN_BATCH},
    found::{Check, FoundKeys, MAX_FOUND_KEYS},
    managed,
    plan::{observation, Observation},
    snapshot::{
        parse_originals, ConfigObs, DeploymentObs, DrainFigures, DrainObs, Heartbeats, Observed,
        Originals, PodObs, ScanKind, KEY_INCLUDE_B64, KEY_MAX_BYTES, KEY_TTL_SECONDS,
    },
};
use crate::contract::keys::Keys;
use crate::contract::redact::redact_url;
use crate::contract::scan::Scan;

/// ConfigMap key with the Redis URL the API and workers use (the drain's default).
pub const KEY_REDIS_URL: &str = "DEDUP2D_REDIS_URL";
/// Fallback ConfigMap key for the Redis URL (the contract's `REDIS_URL`).
pub const KEY_REDIS_URL_FALLBACK: &str = "REDIS_URL";
/// ConfigMap key with the Redis key prefix.
pub const KEY_REDIS_KEY_PREFIX: &str = "DEDUP2D_REDIS_KEY_PREFIX";
/// Upper bound for one whole Redis observation (connect, heartbeats, drain and active scans).
const REDIS_BUDGET: Duration = Duration::from_secs(20);

/// An API-server read failed (not a 404: missing objects are part of the snapshot).
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("reading {what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
}

/// Why the Redis side of an observation has no figures. Its message goes into the `Stalled`
/// condition and `RollbackSafe`, so URLs in it are redacted.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("invalid Redis URL {url}: {source}")]
    InvalidUrl {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("cannot connect to Redis at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("reading worker heartbeats: {0}")]
    Heartbeats(#[source] redis::RedisError),
    #[error(transparent)]
    Drain(#[from] drain::DrainError),
    #[error("Redis at {url} did not answer within {}s", budget.as_secs())]
    Timeout { url: String, budget: Duration },
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ObserveError {
    let what = what.into();
    move |source| ObserveError::Kube { what, source }
}

/// Redis connections shared by all reconciles, one per URL (reconnecting by themselves), and
/// what the last full scans found.
#[derive(Default)]
pub struct RedisPool {
    conns: Mutex<HashMap<String, ConnectionManager>>,
    found: FoundKeys,
}

impl RedisPool {
    /// Forgets the found sets of every rollout that `live` does not name (deleted ones).
    pub fn forget_found_except(&self, live: impl Fn(&str) -> bool) {
        self.found.retain(live);
    }

    async fn get(&self, url: &str) -> Result<ConnectionManager, RedisError> {
        if let Some(c) = self.conns.lock().await.get(url) {
            return Ok(c.clone());
        }
        let client = redis::Client::open(url).map_err(|source| RedisError::InvalidUrl {
            url: redact_url(url),
            source,
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_number_of_retries(2);
        let conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|source| RedisError::Connect {
                url: redact_url(url),
                source,
            })?;
        self.conns
            .lock()
            .await
            .insert(url.to_string(), conn.clone());
        Ok(conn)
    }
}

/// Where the drain looks: URL and key prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RedisTarget {
    pub url: String,
    pub prefix: String,
}

/// Observe the world of one rollout: the API-server half from the watch caches, the Secret (when
/// the spec names one) by a GET, and Redis.
pub async fn observe(
    client: &Client,
    caches: &Caches,
    redis: &RedisPool,
    rollout: &Dedup2DRollout,
) -> Result<Observed, ObserveError> {
    let ns = rollout.namespace().unwrap_or_else(|| "default".into());
    let spec = &rollout.spec;

    let workers = spec
        .workers
        .iter()
        .filter_map(|w| {
            Some((
                w.deployment.clone(),
                read_deployment(caches, &ns, &w.deployment)?,
            ))
        })
        .collect();
    let mut api = read_deployment(caches, &ns, &spec.api.deployment);
    let cm = caches.config_map(&ns, &spec.api.config_map);
    if let (Some(api), Some(cm)) = (api.as_mut(), cm.as_ref()) {
        // The planner looks up managers of every field it writes on the API's entry.
        let name = spec.api.config_map.clone();
        api.managers
            .extend(managed::managers(cm.managed_fields(), FIELD_MANAGER, |f| {
                managed::config_map_fields(&name, &[KEY_INCLUDE_B64, KEY_MAX_BYTES], f)
            }));
    }

    let others = caches.rollouts_sharing_a_deployment(&ns, rollout);
    let others = || others.iter().filter_map(|g| g.0.as_ref().ok());
    let conflicts = conflicts(rollout, others());
    let superseded_by = superseded_by(rollout, others());

    let reads = observation(spec, rollout.status.as_ref());
    let target = match reads.reads_redis() {
        true => {
            let secret = redis_url_secret(client, &ns, spec).await?;
            Some(redis_target(
                spec,
                cm.as_deref(),
                secret.as_ref().map(|s| s.as_ref()),
            ))
        }
        false => None,
    };
    let uid = rollout.uid().unwrap_or_default();
    let (heartbeats, drain) = observe_redis_in_budget(redis, target, &uid, reads).await;

    Ok(Observed {
        generation: rollout.metadata.generation.unwrap_or(0),
        request: rollout
            .annotations()
            .get(super::crd::REQUEST_ANNOTATION)
            .cloned(),
        workers,
        api,
        config: cm.as_deref().map(config_obs),
        heartbeats,
        drain,
        conflicts,
        superseded_by,
    })
}

/// The Secret named by `spec.drain.redis.urlSecretRef`: `None` when there is no reference,
/// `Some(None)` when the Secret does not exist.
async fn redis_url_secret(
    client: &Client,
    ns: &str,
    spec: &Dedup2DRolloutSpec,
) -> Result<Option<Option<Secret>>, ObserveError> {
    let Some(r) = spec
        .drain
        .redis
        .as_ref()
        .and_then(|r| r.url_secret_ref.as_ref())
    else {
        return Ok(None);
    };
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(&r.name)
        .await
        .map_err(kube_err(format!("Secret {}", r.name)))?;
    Ok(Some(secret))
}

/// What `reads` asks for from Redis within [`REDIS_BUDGET`], or why there is none. `None` for
/// the target: nothing to read (the rollout's found sets are forgotten).
async fn observe_redis_in_budget(
    redis: &RedisPool,
    target: Option<Result<RedisTarget, String>>,
    uid: &str,
    reads: Observation,
) -> (Heartbeats, DrainObs) {
    let unavailable = |why: String| {
        (
            Heartbeats::Unavailable(why.clone()),
            DrainObs::Unreachable(why),
        )
    };
    let target = match target {
        None => {
            redis.found.forget(uid);
            return (
                Heartbeats::NotRead,
                DrainObs::Figures(DrainFigures::default()),
            );
        }
        Some(Ok(target)) => target,
        Some(Err(why)) => return unavailable(why),
    };
    let scope = FoundScope {
        found: &redis.found,
        uid,
        target: &target,
    };
    let observed = tokio::time::timeout(REDIS_BUDGET, observe_redis(redis, scope, reads))
        .await
        .unwrap_or_else(|_| {
            Err(RedisError::Timeout {
                url: redact_url(&target.url),
                budget: REDIS_BUDGET,
            })
        });
    match observed {
        Ok((beats, figures)) => (beats, DrainObs::Figures(figures)),
        Err(why) => unavailable(why.to_string()),
    }
}

/// A Deployment and its pods (found by its selector) from the caches.
fn read_deployment(caches: &Caches, ns: &str, name: &str) -> Option<DeploymentObs> {
    let d = caches.deployment(ns, name)?;
    let pods = match d.spec.as_ref() {
        Some(spec) => caches.pods_selected(ns, &spec.selector),
        None => vec![],
    };
    Some(deployment_obs(&d, pods.iter().map(AsRef::as_ref)))
}

/// One rollout's found sets on one Redis target.
#[derive(Clone, Copy)]
struct FoundScope<'a> {
    found: &'a FoundKeys,
    uid: &'a str,
    target: &'a RedisTarget,
}

impl FoundScope<'_> {
    /// The keys to re-check when `scan` asks for a re-check and a set is held; `None`: scan in full.
    fn recheck(&self, scan: ScanKind, check: Check) -> Option<Vec<String>> {
        (scan == ScanKind::Recheck)
            .then(|| self.found.get(self.uid, self.target, check))
            .flatten()
    }

    fn keep(&self, check: Check, found: Option<Vec<String>>) {
        self.found.put(self.uid, self.target, check, found);
    }
}

/// Read what `reads` asks for: heartbeats, legacy payloads and active jobs, each check by a full
/// scan or a re-check of the keys the last full scan found (a full scan when none are held).
async fn observe_redis(
    redis: &RedisPool,
    scope: FoundScope<'_>,
    reads: Observation,
) -> Result<(Heartbeats, DrainFigures), RedisError> {
    let mut conn = redis.get(&scope.target.url).await?;
    let keys = Keys::new(&scope.target.prefix);
    let scanned_at = Timestamp::now();
    let beats = match reads.heartbeats {
        true => Heartbeats::Read(
            read_heartbeats(&mut conn, &keys)
                .await
                .map_err(RedisError::Heartbeats)?,
        ),
        false => Heartbeats::NotRead,
    };
    let legacy = match (reads.legacy, scope.recheck(reads.legacy, Check::Legacy)) {
        (ScanKind::None, _) => None,
        (_, Some(found)) => Some((
            ScanKind::Recheck,
            drain::recheck_legacy_payloads(&mut conn, &found, SCAN_BATCH).await?,
        )),
        _ => Some((
            ScanKind::Full,
            drain::observe_legacy_payloads(&mut conn, &keys, SCAN_BATCH, MAX_FOUND_KEYS).await?,
        )),
    };
    scope.keep(
        Check::Legacy,
        legacy.as_ref().and_then(|(_, f)| f.found.clone()),
    );
    let active = match (reads.active, scope.recheck(reads.active, Check::Active)) {
        (ScanKind::None, _) => None,
        (_, Some(found)) => Some((
            ScanKind::Recheck,
            drain::recheck_active_jobs(&mut conn, &keys, &found, SCAN_BATCH).await?,
        )),
        _ => Some((
            ScanKind::Full,
            drain::observe_active_jobs(&mut conn, &keys, SCAN_BATCH, MAX_FOUND_KEYS).await?,
        )),
    };
    scope.keep(
        Check::Active,
        active.as_ref().and_then(|(_, f)| f.found.clone()),
    );
    if let Some((scan, f)) = &legacy {
        tracing::debug!(
            ?scan,
            scanned = f.scanned,
            legacy = f.legacy,
            batches = f.batches,
            bytes_inspected = f.bytes_inspected,
            max_legacy_pttl_ms = ?f.max_legacy_pttl_ms,
            elapsed_ms = f.elapsed.as_millis() as u64,
            "redis drain check"
        );
    }
    Ok((
        beats,
        drain_figures(scanned_at, legacy.as_ref(), active.as_ref()),
    ))
}

/// SCAN `{prefix}:worker:*` and read each heartbeat's `formats`, keyed by hostname (= pod name).
async fn read_heartbeats(
    conn: &mut ConnectionManager,
    keys: &Keys,
) -> redis::RedisResult<BTreeMap<String, Vec<String>>> {
    let pattern = keys.worker_heartbeat_pattern();
    let key_prefix = keys.worker_heartbeat("");
    let mut out = BTreeMap::new();
    let mut scan = Scan::keys(&pattern, SCAN_BATCH);
    while let Some(found) = scan.next_batch(conn).await? {
        let values: Vec<Option<String>> = redis::cmd("MGET").arg(&found).query_async(conn).await?;
        for (key, value) in found.iter().zip(values) {
            let (Some(host), Some(value)) = (key.strip_prefix(&key_prefix), value) else {
                continue;
            };
            out.insert(host.to_string(), heartbeat_formats(&value));
        }
    }
    Ok(out)
}

// ----- pure mapping ---------------------------------------------------------------------------

/// The `formats` a heartbeat JSON lists (none when it is not the expected shape).
pub fn heartbeat_formats(json: &str) -> Vec<String> {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| {
            v.get("formats")?.as_array().map(|a| {
                a.iter()
                    .filter_map(|f| f.as_str().map(str::to_string))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// The drain module's figures in the snapshot's shape, with the kind of read behind each check
/// (`None`: not read).
pub fn drain_figures(
    scanned_at: Timestamp,
    legacy: Option<&(ScanKind, drain::DrainFigures)>,
    active: Option<&(ScanKind, ActiveFigures)>,
) -> DrainFigures {
    let mut out = DrainFigures {
        scanned_at,
        ..Default::default()
    };
    if let Some((scan, l)) = legacy {
        out.legacy_scan = *scan;
        out.legacy_payloads = l.legacy;
        out.legacy_without_expiry = l.legacy_without_expiry;
    }
    if let Some((scan, a)) = active {
        out.active_scan = *scan;
        out.active_without_b64 = a.file_ref_only;
    }
    out
}

/// Where the drain looks: `spec.drain.redis` (Secret URL, key prefix), else what the API reads from
/// its ConfigMap. `Err` says why there is no usable URL.
pub fn redis_target(
    spec: &Dedup2DRolloutSpec,
    cm: Option<&ConfigMap>,
    secret: Option<Option<&Secret>>,
) -> Result<RedisTarget, String> {
    let data = cm.and_then(|c| c.data.as_ref());
    let cm_value = |k: &str| {
        data.and_then(|d| d.get(k))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let redis = spec.drain.redis.as_ref();
    let url = match (redis.and_then(|r| r.url_secret_ref.as_ref()), secret) {
        (Some(r), Some(secret)) => {
            let Some(secret) = secret else {
                return Err(format!("Secret {} (spec.drain.redis.urlSecretRef) not found", r.name));
            };
            let bytes = secret
                .data
                .as_ref()
                .and_then(|d| d.get(&r.key))
                .map(|b| b.0.clone())
                .or_else(|| {
                    secret
                        .string_data
                        .as_ref()
                        .and_then(|d| d.get(&r.key))
                        .map(|s| s.clone().into_bytes())
                })
                .ok_or_else(|| format!("Secret {} has no key {}", r.name, r.key))?;
            String::from_utf8(bytes)
                .map(|s| s.trim().to_string())
                .map_err(|_| format!("Secret {} key {} is not UTF-8", r.name, r.key))?
        }
        _ => cm_value(KEY_REDIS_URL)
            .or_else(|| cm_value(KEY_REDIS_URL_FALLBACK))
            .ok_or_else(|| {
                format!(
                    "no Redis URL: set spec.drain.redis.urlSecretRef or {KEY_REDIS_URL} in ConfigMap {}",
                    spec.api.config_map
                )
            })?,
    };
    let prefix = redis
        .and_then(|r| r.key_prefix.clone())
        .or_else(|| cm_value(KEY_REDIS_KEY_PREFIX))
        .unwrap_or_else(|| "dedup2d".into());
    Ok(RedisTarget { url, prefix })
}

/// A Deployment and its pods as the planner sees them.
pub fn deployment_obs<'a>(
    d: &CachedDeployment,
    pods: impl IntoIterator<Item = &'a CachedPod>,
) -> DeploymentObs {
    let name = d.name_any();
    let spec = d.spec.as_ref();
    let status = d.status.as_ref();
    let template = spec.map(|s| &s.template);
    let template_containers = template.map_or(&[][..], |t| &t.spec.containers);
    let progress_deadline_exceeded = status.is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        })
    });
    let deployment_name = name.clone();
    DeploymentObs {
        generation: d.metadata.generation.unwrap_or(0),
        observed_generation: status.and_then(|s| s.observed_generation).unwrap_or(0),
        replicas: spec.and_then(|s| s.replicas).unwrap_or(1),
        status_replicas: status.and_then(|s| s.replicas).unwrap_or(0),
        updated_replicas: status.and_then(|s| s.updated_replicas).unwrap_or(0),
        available_replicas: status.and_then(|s| s.available_replicas).unwrap_or(0),
        progress_deadline_exceeded,
        containers: template_containers
            .iter()
            .map(|c| name_and_image(&c.name, c.image.as_deref()))
            .collect(),
        template_annotations: template
            .map(|t| t.metadata.annotations.clone())
            .unwrap_or_default(),
        reads_config_maps: reads_config_maps(template_containers),
        pods: pods.into_iter().map(pod_obs).collect(),
        managers: managed::managers(d.managed_fields(), FIELD_MANAGER, |f| {
            managed::deployment_fields(&deployment_name, f)
        }),
        originals: originals_of(&d.metadata),
        name,
    }
}

/// One pod: its containers, annotations, readiness, and whether it is terminating.
pub fn pod_obs(p: &CachedPod) -> PodObs {
    PodObs {
        name: p.name_any(),
        containers: p
            .spec
            .containers
            .iter()
            .map(|c| name_and_image(&c.name, c.image.as_deref()))
            .collect(),
        annotations: annotations(&p.metadata),
        ready: p
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
        terminating: p.metadata.deletion_timestamp.is_some(),
    }
}

fn name_and_image(name: &str, image: Option<&str>) -> (String, String) {
    (name.to_string(), image.unwrap_or_default().to_string())
}

fn annotations(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.annotations.clone().unwrap_or_default()
}

/// ConfigMaps the pod's containers read into their environment (`envFrom.configMapRef`,
/// `env[].valueFrom.configMapKeyRef`), sorted and unique.
pub fn reads_config_maps(containers: &[TemplateContainer]) -> Vec<String> {
    let mut out: Vec<String> = containers
        .iter()
        .flat_map(|c| {
            let from = c
                .env_from
                .iter()
                .filter_map(|e| e.config_map_ref.as_ref().map(|r| r.name.clone()));
            let keys = c
                .env
                .iter()
                .filter_map(|e| e.value_from.as_ref()?.config_map_key_ref.as_ref())
                .map(|r| r.name.clone());
            from.chain(keys).collect::<Vec<_>>()
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The ConfigMap values the planner reads.
pub fn config_obs(cm: &ConfigMap) -> ConfigObs {
    let get = |k: &str| cm.data.as_ref().and_then(|d| d.get(k)).cloned();
    ConfigObs {
        include_b64: get(KEY_INCLUDE_B64),
        max_bytes: get(KEY_MAX_BYTES),
        ttl_seconds: get(KEY_TTL_SECONDS),
        originals: originals_of(&cm.metadata),
    }
}

/// The `dedup2d.io/originals` annotation of a target object.
fn originals_of(meta: &ObjectMeta) -> Originals {
    parse_originals(
        meta.annotations
            .as_ref()
            .and_then(|a| a.get(ORIGINALS_ANNOTATION))
            .map(String::as_str),
    )
}

/// Older, unfinished rollouts in the namespace that target one of this rollout's Deployments. A
/// rollout in a terminal phase (Completed, RolledBack, Failed) or being deleted does not conflict, so
/// the next upgrade of the same fleet can start once the previous one finished.
pub fn conflicts<'a>(
    this: &Dedup2DRollout,
    all: impl IntoIterator<Item = &'a Dedup2DRollout>,
) -> Vec<String> {
    sharing_a_deployment(this, all, |o| {
        o.age() < this.age()
            && !o
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .is_some_and(|p| p.is_terminal())
    })
}

/// Newer rollouts in the namespace (not being deleted) that target one of this rollout's
/// Deployments, in any phase: once this one is finished, they supersede it.
pub fn superseded_by<'a>(
    this: &Dedup2DRollout,
    all: impl IntoIterator<Item = &'a Dedup2DRollout>,
) -> Vec<String> {
    sharing_a_deployment(this, all, |o| o.age() > this.age())
}

/// The other rollouts (not being deleted) for which `pred` holds and that share a Deployment with
/// `this`, as `name (Deployment a, b)`, sorted.
fn sharing_a_deployment<'a>(
    this: &Dedup2DRollout,
    all: impl IntoIterator<Item = &'a Dedup2DRollout>,
    pred: impl Fn(&Dedup2DRollout) -> bool,
) -> Vec<String> {
    let targets = |r: &Dedup2DRollout| -> Vec<String> {
        r.spec
            .workers
            .iter()
            .map(|w| w.deployment.clone())
            .chain([r.spec.api.deployment.clone()])
            .collect()
    };
    let mine = targets(this);
    let mut out: Vec<String> = all
        .into_iter()
        .filter(|o| o.uid() != this.uid() && o.name_any() != this.name_any())
        .filter(|o| o.metadata.deletion_timestamp.is_none())
        .filter(|o| pred(o))
        .filter_map(|o| {
            let shared: Vec<String> = targets(o)
                .into_iter()
                .filter(|t| mine.contains(t))
                .collect();
            (!shared.is_empty())
                .then(|| format!("{} (Deployment {})", o.name_any(), shared.join(", ")))
        })
        .collect();
    out.sort();
    out
}

/// The order rollouts were created in: creation second, then name (so two rollouts of one second
/// still have an order).
trait Age {
    fn age(&self) -> (Option<i64>, String);
}

impl Age for Dedup2DRollout {
    fn age(&self) -> (Option<i64>, String) {
        (
            self.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second()),
            self.name_any(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::{Phase, RedisRef, SecretKeyRef};
    use crate::operator::plan::field_id;
    use k8s_openapi::ByteString;
    use serde_json::json;

    fn deployment() -> CachedDeployment {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "api", "generation": 3, "managedFields": [
                {"manager": "kubectl-set", "operation": "Update", "time": "2026-01-01T00:00:00Z",
                 "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"api\"}": {"f:image": {}}}}}}}}
            ]},
            "spec": {
                "selector": {"matchLabels": {"app": "api"}},
                "template": {
                    "metadata": {"labels": {"app": "api"}, "annotations": {"dedup2d.io/payload-config": "h1"}},
                    "spec": {"containers": [
                        {"name": "api", "image": "api:1",
                         "envFrom": [{"configMapRef": {"name": "cfg"}}],
                         "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "other", "key": "x"}}}]},
                        {"name": "sidecar", "image": "side:1", "envFrom": [{"secretRef": {"name": "s"}}, {"configMapRef": {"name": "cfg"}}]}
                    ]}
                }
            },
            "status": {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 2,
                       "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}
        }))
        .unwrap()
    }

    fn pod(name: &str, image: &str, ready: bool, terminating: bool) -> CachedPod {
        let mut v = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": {"a": "b"}},
            "spec": {"containers": [{"name": "api", "image": image}]},
            "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        });
        if terminating {
            v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn deployment_maps_to_the_rollout_status_figures() {
        let d = deployment_obs(
            &deployment(),
            &[
                pod("p1", "api:1", true, false),
                pod("p0", "api:0", false, true),
            ],
        );
        assert_eq!(d.name, "api");
        assert_eq!(
            (d.generation, d.observed_generation, d.replicas),
            (3, 2, 1),
            "spec.replicas defaults to 1"
        );
        assert_eq!(
            (d.status_replicas, d.updated_replicas, d.available_replicas),
            (3, 1, 2)
        );
        assert!(d.progress_deadline_exceeded);
        assert_eq!(
            d.containers,
            vec![
                ("api".to_string(), "api:1".to_string()),
                ("sidecar".into(), "side:1".into())
            ]
        );
        assert_eq!(d.template_annotations["dedup2d.io/payload-config"], "h1");
        assert_eq!(d.reads_config_maps, vec!["cfg".to_string(), "other".into()]);
        assert_eq!(d.pods.len(), 2);
        assert!(d.pods[1].terminating && !d.pods[1].ready);
        assert!(d.pods[0].ready && !d.pods[0].terminating);
        assert_eq!(d.pods[0].image("api"), Some("api:1"));
        assert_eq!(d.pods[0].annotations["a"], "b");
        assert_eq!(
            d.managers
                .get(&field_id::image("api", "api"))
                .map(String::as_str),
            Some("kubectl-set")
        );
    }

    #[test]
    fn pod_without_status_is_not_ready() {
        let p: CachedPod = serde_json::from_value(
            json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "c"}]}}),
        )
        .unwrap();
        let o = pod_obs(&p);
        assert!(!o.ready && !o.terminating);
        assert_eq!(o.containers, vec![("c".to_string(), String::new())]);
    }

    fn spec(redis: Option<RedisRef>) -> Dedup2DRolloutSpec {
        let mut s: Dedup2DRolloutSpec = serde_json::from_value(json!({
            "workers": [{"deployment": "w", "image": "i"}],
            "api": {"deployment": "api", "configMap": "cfg"}
        }))
        .unwrap();
        s.drain.redis = redis;
        s
    }

    fn cm(data: serde_json::Value) -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": data})).unwrap()
    }

    #[test]
    fn redis_target_defaults_to_the_config_map() {
        let c =
            cm(json!({"DEDUP2D_REDIS_URL": " redis://r:6379/1 ", "DEDUP2D_REDIS_KEY_PREFIX": "p"}));
        assert_eq!(
            redis_target(&spec(None), Some(&c), None),
            Ok(RedisTarget {
                url: "redis://r:6379/1".into(),
                prefix: "p".into()
            })
        );
        let c = cm(json!({"REDIS_URL": "redis://fallback"}));
        assert_eq!(
            redis_target(&spec(None), Some(&c), None).unwrap(),
            RedisTarget {
                url: "redis://fallback".into(),
                prefix: "dedup2d".into()
            }
        );
        let err = redis_target(&spec(None), Some(&cm(json!({}))), None).unwrap_err();
        assert!(err.contains("no Redis URL") && err.contains("cfg"), "{err}");
        assert!(redis_target(&spec(None), None, None).is_err());
    }

    #[test]
    fn redis_target_from_the_secret() {
        let r = RedisRef {
            url_secret_ref: Some(SecretKeyRef {
                name: "sec".into(),
                key: "url".into(),
            }),
            key_prefix: Some("kp".into()),
        };
        let secret = Secret {
            data: Some(BTreeMap::from([(
                "url".to_string(),
                ByteString(b"redis://s:1/0\n".to_vec()),
            )])),
            ..Default::default()
        };
        let c = cm(json!({"DEDUP2D_REDIS_URL": "redis://cm", "DEDUP2D_REDIS_KEY_PREFIX": "p"}));
        assert_eq!(
            redis_target(&spec(Some(r.clone())), Some(&c), Some(Some(&secret))),
            Ok(RedisTarget {
                url: "redis://s:1/0".into(),
                prefix: "kp".into()
            })
        );
        let missing = redis_target(&spec(Some(r.clone())), Some(&c), Some(None)).unwrap_err();
        assert!(
            missing.contains("Secret sec") && missing.contains("not found"),
            "{missing}"
        );
        let no_key =
            redis_target(&spec(Some(r)), Some(&c), Some(Some(&Secret::default()))).unwrap_err();
        assert!(no_key.contains("no key url"), "{no_key}");
    }

    #[test]
    fn heartbeat_formats_parse() {
        assert_eq!(
            heartbeat_formats(r#"{"formats": ["file_ref", "file_bytes_b64"], "pid": 1}"#),
            vec!["file_ref".to_string(), "file_bytes_b64".into()]
        );
        assert!(heartbeat_formats("not json").is_empty());
        assert!(heartbeat_formats(r#"{"formats": "file_ref"}"#).is_empty());
    }

    fn rollout(
        name: &str,
        created: &str,
        workers: &[&str],
        api: &str,
        phase: Option<Phase>,
    ) -> Dedup2DRollout {
        let mut r: Dedup2DRollout = serde_json::from_value(json!({
            "apiVersion": "dedup2d.io/v1alpha1", "kind": "Dedup2DRollout",
            "metadata": {"name": name, "namespace": "ns", "uid": name, "creationTimestamp": created},
            "spec": {
                "workers": workers.iter().map(|w| json!({"deployment": w, "image": "i"})).collect::<Vec<_>>(),
                "api": {"deployment": api, "configMap": "cfg"}
            }
        }))
        .unwrap();
        if let Some(p) = phase {
            r.status = Some(crate::operator::crd::Dedup2DRolloutStatus {
                phase: Some(p),
                ..Default::default()
            });
        }
        r
    }

    #[test]
    fn only_older_unfinished_rollouts_on_shared_deployments_conflict() {
        let me = rollout("me", "2026-01-02T00:00:00Z", &["w1", "w2"], "api", None);
        let all = vec![
            me.clone(),
            rollout(
                "old",
                "2026-01-01T00:00:00Z",
                &["w2"],
                "api2",
                Some(Phase::Soaking),
            ),
            rollout("old-api", "2026-01-01T00:00:00Z", &["x"], "api", None),
            rollout(
                "done",
                "2026-01-01T00:00:00Z",
                &["w1"],
                "api",
                Some(Phase::Completed),
            ),
            rollout("newer", "2026-01-03T00:00:00Z", &["w1"], "api", None),
            rollout("unrelated", "2026-01-01T00:00:00Z", &["z"], "zapi", None),
        ];
        assert_eq!(
            conflicts(&me, &all),
            vec![
                "old (Deployment w2)".to_string(),
                "old-api (Deployment api)".into()
            ]
        );
        // The older one does not see the newer one as a conflict.
        assert!(conflicts(&all[1], &all).is_empty());
        // Same second: the name decides, so exactly one of the two stalls.
        let a = rollout("a", "2026-01-01T00:00:00Z", &["w"], "api", None);
        let b = rollout("b", "2026-01-01T00:00:00Z", &["w"], "api", None);
        let both = vec![a.clone(), b.clone()];
        assert!(conflicts(&a, &both).is_empty());
        assert_eq!(conflicts(&b, &both).len(), 1);
    }

    #[test]
    fn newer_rollouts_on_shared_deployments_supersede_in_any_phase() {
        let me = rollout(
            "me",
            "2026-01-02T00:00:00Z",
            &["w1", "w2"],
            "api",
            Some(Phase::Completed),
        );
        let mut gone = rollout("gone", "2026-01-04T00:00:00Z", &["w1"], "api", None);
        gone.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-01-05T00:00:00Z".parse().unwrap(),
            ));
        let all = vec![
            me.clone(),
            rollout("older", "2026-01-01T00:00:00Z", &["w1"], "api", None),
            rollout(
                "newer",
                "2026-01-03T00:00:00Z",
                &["w2"],
                "api2",
                Some(Phase::Completed),
            ),
            rollout(
                "newer-elsewhere",
                "2026-01-03T00:00:00Z",
                &["z"],
                "zapi",
                None,
            ),
            gone,
        ];
        assert_eq!(
            superseded_by(&me, &all),
            vec!["newer (Deployment w2)".to_string()]
        );
        assert!(
            superseded_by(&all[2], &all).is_empty(),
            "nothing newer on w2"
        );
    }
}
