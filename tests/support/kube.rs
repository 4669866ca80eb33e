//! Cluster fixture for e2e tests: a kube client for the cluster in `KUBECONFIG` (the local
//! control plane `hack/cluster.sh up` starts, or any cluster you point it at) and a fresh
//! namespace per test. No cluster is a failure with a hint, never a skip.
//!
//! All cluster tests share one process, so a test that watches every namespace (a cluster-wide
//! operator) would act on the others' rollouts: each [`TestNamespace`] holds a shared claim, and
//! [`ClusterWide::claim`] waits for the exclusive one.

use std::time::Duration;

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};

use super::process::which;

static NAMESPACES: RwLock<()> = RwLock::const_new(());

pub async fn client() -> Client {
    let hint = "no Kubernetes cluster: run the tests through `hack/test.sh` (it starts the local \
                control plane), or `eval \"$(hack/cluster.sh env)\"` after `hack/cluster.sh up`, \
                or point KUBECONFIG at a cluster";
    let client = match Client::try_default().await {
        Ok(c) => c,
        Err(e) => panic!("{hint}: {e}"),
    };
    if let Err(e) = client.apiserver_version().await {
        panic!("{hint}: the API server does not answer: {e}");
    }
    client
}

/// The `kubectl` for processes a test starts: `$DEDUP2D_K8S_BIN/kubectl` (the pinned one,
/// `hack/cluster.sh env` sets it), else the first on PATH. Missing is a failure with a hint.
pub fn kubectl() -> std::path::PathBuf {
    let pinned =
        std::env::var_os("DEDUP2D_K8S_BIN").map(|d| std::path::PathBuf::from(d).join("kubectl"));
    pinned
        .filter(|p| p.is_file())
        .or_else(|| which("kubectl"))
        .unwrap_or_else(|| {
            panic!(
                "kubectl not found: run the tests through `hack/test.sh`, or `eval \"$(hack/cluster.sh env)\"` \
                 (it puts the pinned kubectl on PATH), or install kubectl"
            )
        })
}

/// A namespace created for one test and deleted (best effort) when dropped.
pub struct TestNamespace {
    pub client: Client,
    pub name: String,
    _shared: Option<RwLockReadGuard<'static, ()>>,
}

/// The exclusive claim on the cluster: no other test's namespace exists while it is held.
pub struct ClusterWide {
    _exclusive: RwLockWriteGuard<'static, ()>,
}

impl ClusterWide {
    /// Waits until every other test's namespace is gone, and keeps new ones from being made.
    pub async fn claim() -> Self {
        ClusterWide {
            _exclusive: NAMESPACES.write().await,
        }
    }

    /// A namespace for the test holding this claim.
    pub async fn namespace(&self, prefix: &str) -> TestNamespace {
        TestNamespace::create(prefix, None).await
    }
}

impl TestNamespace {
    /// A fresh namespace `<prefix>-<8 hex>`, under a shared claim on the cluster.
    pub async fn new(prefix: &str) -> Self {
        let shared = NAMESPACES.read().await;
        Self::create(prefix, Some(shared)).await
    }

    async fn create(prefix: &str, shared: Option<RwLockReadGuard<'static, ()>>) -> Self {
        let client = client().await;
        let name = format!(
            "{prefix}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"dedup2d.io/test": "true"}}
        }))
        .unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        // The service account controller must create `default` before pods can be admitted.
        let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client.clone(), &name);
        for _ in 0..100 {
            if sa.get_opt("default").await.ok().flatten().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        TestNamespace {
            client,
            name,
            _shared: shared,
        }
    }

    /// Another namespace under this one's claim (a second `new` could wait forever behind a
    /// waiting [`ClusterWide::claim`] while this one's claim is held). Drop it before this one.
    pub async fn sibling(&self, prefix: &str) -> TestNamespace {
        TestNamespace::create(prefix, None).await
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }
}

/// Take the operator's `dedup2d.io/cleanup` finalizer off every rollout of a namespace about to
/// be deleted: the test's operator is gone by now, and the namespace would never go away.
async fn release_rollouts(client: &Client, ns: &str) {
    let api: Api<dedup2d::operator::crd::Dedup2DRollout> = Api::namespaced(client.clone(), ns);
    let Ok(list) = api.list(&Default::default()).await else {
        return;
    };
    let null = Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}}));
    for r in list.items {
        let name = r.metadata.name.unwrap_or_default();
        let _ = api.patch(&name, &PatchParams::default(), &null).await;
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var_os("DEDUP2D_KEEP_NAMESPACES").is_some() {
            return;
        }
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which is blocked here: delete from a separate
        // thread with its own runtime and its own client (the test's client is bound to the
        // blocked runtime).
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let Ok(client) = Client::try_default().await else {
                    return;
                };
                release_rollouts(&client, &name).await;
                let _ = Api::<Namespace>::all(client)
                    .delete(&name, &DeleteParams::background())
                    .await;
            });
        })
        .join();
    }
}
