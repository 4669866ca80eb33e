//! Secondary indexes over the watch caches: the names of the objects of a namespace that a key
//! names (the pods of a Deployment, the rollouts that target a Deployment or a ConfigMap). An index
//! is kept from the same watch events that fill its store, so a lookup costs what it returns, not a
//! walk over every cached object: with 1,000 fleets in one namespace a reconcile no longer reads
//! 2,000 pods and 1,000 rollouts to find its own few.
//!
//! Relists follow the reflector's own rule: entries seen between `Init` and `InitDone` replace the
//! old ones at `InitDone`, and until then lookups answer from the old ones. A property test holds
//! every lookup to a walk over a reflector store fed the same events.

use std::{
    collections::{BTreeSet, HashMap},
    hash::Hash,
    sync::{Arc, RwLock},
};

use kube::{runtime::watcher, Resource, ResourceExt};

/// Which keys an object is filed under (none: it is not indexed).
pub type KeysOf<K, Key> = fn(&K) -> Vec<Key>;

/// An index of `K` by `Key`, within namespaces. Cheap to clone (clones share the entries).
pub struct Index<K, Key> {
    keys_of: KeysOf<K, Key>,
    inner: Arc<RwLock<Inner<Key>>>,
}

impl<K, Key> Clone for Index<K, Key> {
    fn clone(&self) -> Self {
        Index {
            keys_of: self.keys_of,
            inner: self.inner.clone(),
        }
    }
}

struct Inner<Key> {
    live: Entries<Key>,
    /// Filled by `InitApply` events, and made the live entries at `InitDone` (the reflector's
    /// buffer, to the letter).
    relisting: Entries<Key>,
}

/// Per namespace: each key's object names, and each object's keys (to undo its old filing).
struct Entries<Key> {
    namespaces: HashMap<String, Namespace<Key>>,
}

struct Namespace<Key> {
    names: HashMap<Key, BTreeSet<String>>,
    keys: HashMap<String, Vec<Key>>,
}

impl<Key> Default for Entries<Key> {
    fn default() -> Self {
        Entries {
            namespaces: HashMap::new(),
        }
    }
}

impl<Key> Default for Namespace<Key> {
    fn default() -> Self {
        Namespace {
            names: HashMap::new(),
            keys: HashMap::new(),
        }
    }
}

impl<Key: Hash + Eq + Clone> Entries<Key> {
    fn file(&mut self, ns: String, name: String, keys: Vec<Key>) {
        self.remove(&ns, &name);
        if keys.is_empty() {
            return;
        }
        let space = self.namespaces.entry(ns).or_default();
        for key in &keys {
            space
                .names
                .entry(key.clone())
                .or_default()
                .insert(name.clone());
        }
        space.keys.insert(name, keys);
    }

    fn remove(&mut self, ns: &str, name: &str) {
        let Some(space) = self.namespaces.get_mut(ns) else {
            return;
        };
        for key in space.keys.remove(name).into_iter().flatten() {
            if let Some(names) = space.names.get_mut(&key) {
                names.remove(name);
                if names.is_empty() {
                    space.names.remove(&key);
                }
            }
        }
        if space.keys.is_empty() {
            self.namespaces.remove(ns);
        }
    }
}

impl<K: Resource, Key: Hash + Eq + Clone> Index<K, Key> {
    /// An empty index filing each object under `keys_of(object)`.
    pub fn new(keys_of: KeysOf<K, Key>) -> Self {
        Index {
            keys_of,
            inner: Arc::new(RwLock::new(Inner {
                live: Entries::default(),
                relisting: Entries::default(),
            })),
        }
    }

    /// Files (or unfiles) the object of one watch event, as the reflector stores it.
    pub fn apply(&self, event: &watcher::Event<K>) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let key = |o: &K| (o.namespace().unwrap_or_default(), o.name_any());
        match event {
            watcher::Event::Apply(o) => {
                let (ns, name) = key(o);
                inner.live.file(ns, name, (self.keys_of)(o));
            }
            watcher::Event::Delete(o) => {
                let (ns, name) = key(o);
                inner.live.remove(&ns, &name);
            }
            watcher::Event::Init => inner.relisting = Entries::default(),
            watcher::Event::InitApply(o) => {
                let (ns, name) = key(o);
                inner.relisting.file(ns, name, (self.keys_of)(o));
            }
            watcher::Event::InitDone => inner.live = std::mem::take(&mut inner.relisting),
        }
    }

    /// The names filed under `key` in namespace `ns`, sorted.
    pub fn names(&self, ns: &str, key: &Key) -> Vec<String> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner
            .live
            .namespaces
            .get(ns)
            .and_then(|space| space.names.get(key))
            .map(|names| names.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::core::ObjectMeta;
    use proptest::prelude::*;

    /// A ConfigMap filed under the values of its data.
    fn cm(ns: &str, name: &str, keys: &[&str]) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            data: Some(
                keys.iter()
                    .enumerate()
                    .map(|(i, k)| (i.to_string(), k.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn by_data(c: &ConfigMap) -> Vec<String> {
        c.data.iter().flatten().map(|(_, v)| v.clone()).collect()
    }

    fn index() -> Index<ConfigMap, String> {
        Index::new(by_data)
    }

    #[test]
    fn objects_are_found_under_each_of_their_keys_within_their_namespace() {
        let ix = index();
        ix.apply(&watcher::Event::Apply(cm("a", "x", &["d1", "d2"])));
        ix.apply(&watcher::Event::Apply(cm("a", "y", &["d2"])));
        ix.apply(&watcher::Event::Apply(cm("b", "z", &["d2"])));
        assert_eq!(ix.names("a", &"d1".into()), ["x"]);
        assert_eq!(ix.names("a", &"d2".into()), ["x", "y"]);
        assert_eq!(ix.names("b", &"d2".into()), ["z"]);
        assert!(ix.names("c", &"d2".into()).is_empty());
    }

    #[test]
    fn a_changed_object_moves_and_a_deleted_one_goes() {
        let ix = index();
        ix.apply(&watcher::Event::Apply(cm("a", "x", &["d1"])));
        ix.apply(&watcher::Event::Apply(cm("a", "x", &["d2"])));
        assert!(ix.names("a", &"d1".into()).is_empty());
        assert_eq!(ix.names("a", &"d2".into()), ["x"]);
        ix.apply(&watcher::Event::Delete(cm("a", "x", &["d2"])));
        assert!(ix.names("a", &"d2".into()).is_empty());
        let inner = ix.inner.read().unwrap();
        assert!(inner.live.namespaces.is_empty(), "nothing is left behind");
    }

    #[test]
    fn a_relist_replaces_the_entries_at_its_end_and_not_before() {
        let ix = index();
        ix.apply(&watcher::Event::Apply(cm("a", "gone", &["d1"])));
        ix.apply(&watcher::Event::Init);
        ix.apply(&watcher::Event::InitApply(cm("a", "kept", &["d1"])));
        assert_eq!(
            ix.names("a", &"d1".into()),
            ["gone"],
            "old entries until InitDone"
        );
        ix.apply(&watcher::Event::InitDone);
        assert_eq!(ix.names("a", &"d1".into()), ["kept"]);
    }

    /// One watch event over a small world: namespace, name and keys are indexes into short lists.
    #[derive(Debug, Clone)]
    enum Step {
        Apply(usize, usize, Vec<usize>),
        Delete(usize, usize),
        Init,
        InitApply(usize, usize, Vec<usize>),
        InitDone,
    }

    const NAMESPACES: [&str; 2] = ["a", "b"];
    const NAMES: [&str; 4] = ["w", "x", "y", "z"];
    const KEYS: [&str; 3] = ["d1", "d2", "d3"];

    fn step() -> impl Strategy<Value = Step> {
        let keys = proptest::collection::vec(0..KEYS.len(), 0..3);
        prop_oneof![
            4 => (0..2usize, 0..4usize, keys.clone()).prop_map(|(n, o, k)| Step::Apply(n, o, k)),
            2 => (0..2usize, 0..4usize).prop_map(|(n, o)| Step::Delete(n, o)),
            1 => Just(Step::Init),
            3 => (0..2usize, 0..4usize, keys).prop_map(|(n, o, k)| Step::InitApply(n, o, k)),
            1 => Just(Step::InitDone),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("DEDUP2D_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
        ))]
        /// After any sequence of events, a lookup answers what a walk over the reflector's own
        /// store (fed the same events) finds.
        #[test]
        fn lookups_agree_with_a_walk_over_the_store(steps in proptest::collection::vec(step(), 0..40)) {
            let ix = index();
            let mut writer = kube::runtime::reflector::store::Writer::<ConfigMap>::default();
            let object = |n: usize, o: usize, k: &[usize]| {
                let keys: Vec<&str> = k.iter().map(|i| KEYS[*i]).collect();
                cm(NAMESPACES[n], NAMES[o], &keys)
            };
            for s in &steps {
                let event = match s {
                    Step::Apply(n, o, k) => watcher::Event::Apply(object(*n, *o, k)),
                    Step::Delete(n, o) => watcher::Event::Delete(object(*n, *o, &[])),
                    Step::Init => watcher::Event::Init,
                    Step::InitApply(n, o, k) => watcher::Event::InitApply(object(*n, *o, k)),
                    Step::InitDone => watcher::Event::InitDone,
                };
                writer.apply_watcher_event(&event);
                ix.apply(&event);
                let store = writer.as_reader();
                for ns in NAMESPACES {
                    for key in KEYS {
                        let mut walked: Vec<String> = store
                            .state()
                            .iter()
                            .filter(|c| c.namespace().as_deref() == Some(ns))
                            .filter(|c| by_data(c).iter().any(|k| k == key))
                            .map(|c| c.name_any())
                            .collect();
                        walked.sort();
                        prop_assert_eq!(ix.names(ns, &key.to_string()), walked, "{} {} after {:?}", ns, key, s);
                    }
                }
            }
        }
    }
}
