//! Which watch events of the targets wake the controller: only those that change what the watch
//! cache keeps of the object (its stripped form, `caches`), besides every deletion and relist.
//!
//! The observer reads the stripped objects and nothing else, so an event that leaves the stripped
//! form as it was (a pod scheduled, an IP assigned, a ConfigMap key the operator does not read)
//! would plan exactly what the last reconcile planned; time-based waits have their own requeues.
//! The store itself still sees every event: the filter sits after the reflector.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
};

use futures::{future, Stream, StreamExt};
use kube::{runtime::watcher, Resource};
use serde::Serialize;

/// `events` without the updates that leave an object's stored content as it was.
pub fn changes_only<K, S>(
    events: S,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>
where
    K: Resource + Serialize + Clone,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let mut seen: HashMap<String, u64> = HashMap::new();
    events.filter(move |event| {
        let wake = match event {
            Ok(watcher::Event::Apply(obj)) => {
                let (uid, hash) = content(obj);
                seen.insert(uid, hash) != Some(hash)
            }
            Ok(watcher::Event::InitApply(obj)) => {
                let (uid, hash) = content(obj);
                seen.insert(uid, hash);
                true
            }
            Ok(watcher::Event::Delete(obj)) => {
                seen.remove(&uid_of(obj));
                true
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) | Err(_) => true,
        };
        future::ready(wake)
    })
}

fn uid_of<K: Resource>(obj: &K) -> String {
    let meta = obj.meta();
    meta.uid
        .clone()
        .unwrap_or_else(|| format!("{:?}/{:?}", meta.namespace, meta.name))
}

/// The object's identity and a hash of its content without `resourceVersion` (which every
/// update moves).
fn content<K: Resource + Serialize + Clone>(obj: &K) -> (String, u64) {
    let mut o = obj.clone();
    o.meta_mut().resource_version = None;
    let mut h = DefaultHasher::new();
    serde_json::to_vec(&o).unwrap_or_default().hash(&mut h);
    (uid_of(obj), h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    fn pod(rv: &str, image: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "resourceVersion": rv},
            "spec": {"containers": [{"name": "c", "image": image}]}
        }))
        .unwrap()
    }

    fn images(events: Vec<watcher::Event<Pod>>) -> Vec<String> {
        let woke = futures::executor::block_on(
            changes_only(futures::stream::iter(events.into_iter().map(Ok))).collect::<Vec<_>>(),
        );
        woke.into_iter()
            .map(|e| match e.unwrap() {
                watcher::Event::Apply(p) => format!(
                    "apply {}",
                    p.spec.unwrap().containers[0].image.clone().unwrap()
                ),
                watcher::Event::InitApply(_) => "init-apply".into(),
                watcher::Event::Delete(_) => "delete".into(),
                watcher::Event::Init => "init".into(),
                watcher::Event::InitDone => "init-done".into(),
            })
            .collect()
    }

    #[test]
    fn only_updates_that_change_the_stored_content_wake() {
        use watcher::Event::*;
        let woke = images(vec![
            Init,
            InitApply(pod("1", "a")),
            InitDone,
            Apply(pod("2", "a")),
            Apply(pod("3", "b")),
            Apply(pod("4", "b")),
            Delete(pod("5", "b")),
            Apply(pod("6", "b")),
        ]);
        assert_eq!(
            woke,
            ["init", "init-apply", "init-done", "apply b", "delete", "apply b"],
            "a new resourceVersion alone wakes nothing; a deletion always wakes, and the object is new after it"
        );
    }
}
