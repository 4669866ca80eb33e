//! Cluster fixture for e2e tests: a kube client for the cluster in `KUBECONFIG` (the local
//! control plane `hack/cluster.sh up` starts, or any cluster you point it at) and a fresh
//! namespace per test. No cluster is a failure with a hint, never a skip.

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};

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
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("kubectl"))
            .find(|p| p.is_file())
    });
    pinned
        .filter(|p| p.is_file())
        .or(on_path)
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
}

impl TestNamespace {
    pub async fn new(prefix: &str) -> Self {
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
        TestNamespace { client, name }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
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
                let _ = Api::<Namespace>::all(client)
                    .delete(&name, &DeleteParams::background())
                    .await;
            });
        })
        .join();
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
