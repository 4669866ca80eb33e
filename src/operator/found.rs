//! The operator's memory of what the last full scans found, per rollout (uid) and Redis target:
//! the legacy payload keys and the file_ref-only active job ids. The next observations re-check
//! only those instead of scanning everything again. It is bounded ([`MAX_FOUND_KEYS`] per set;
//! a larger find is not kept, so the next observation scans in full again) and only an
//! optimisation: a restarted operator starts empty and scans in full.

use std::{collections::HashMap, sync::Mutex};

use super::observe::RedisTarget;

/// The most keys kept per set; above it the observer falls back to full scans (the planner
/// knows the same bound and polls more slowly then).
pub const MAX_FOUND_KEYS: usize = super::plan::MAX_RECHECK_KEYS as usize;

/// Which check a set of keys belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Check {
    /// Legacy payload keys (`{prefix}:payload:{id}`).
    Legacy,
    /// Job ids of active jobs without `file_bytes_b64`.
    Active,
}

type Slot = (String, RedisTarget, Check);

/// The found sets of every rollout the operator observes.
#[derive(Debug, Default)]
pub struct FoundKeys {
    sets: Mutex<HashMap<Slot, Vec<String>>>,
}

impl FoundKeys {
    /// The set the last full scan (and the re-checks since) left for this rollout and check.
    pub fn get(&self, uid: &str, target: &RedisTarget, check: Check) -> Option<Vec<String>> {
        self.lock()
            .get(&(uid.to_string(), target.clone(), check))
            .cloned()
    }

    /// Keeps `found` (at most [`MAX_FOUND_KEYS`]) for the next re-check, or forgets the set when
    /// `None` or too large.
    pub fn put(&self, uid: &str, target: &RedisTarget, check: Check, found: Option<Vec<String>>) {
        let slot = (uid.to_string(), target.clone(), check);
        match found.filter(|f| f.len() <= MAX_FOUND_KEYS) {
            Some(f) => self.lock().insert(slot, f),
            None => self.lock().remove(&slot),
        };
    }

    /// Forgets every set of a rollout (it reads nothing from Redis any more).
    pub fn forget(&self, uid: &str) {
        self.lock().retain(|(u, _, _), _| u != uid);
    }

    /// Forgets the sets of every rollout that `live` does not name (deleted ones).
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        self.lock().retain(|(u, _, _), _| live(u));
    }

    /// Keys held in all sets.
    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// No set holds a key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Slot, Vec<String>>> {
        // A panic while holding the lock leaves a consistent map: recover it.
        self.sets.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(prefix: &str) -> RedisTarget {
        RedisTarget {
            url: "redis://r".into(),
            prefix: prefix.into(),
        }
    }

    #[test]
    fn sets_are_per_rollout_target_and_check() {
        let f = FoundKeys::default();
        f.put("u1", &target("a"), Check::Legacy, Some(vec!["k1".into()]));
        f.put("u1", &target("a"), Check::Active, Some(vec!["j1".into()]));
        f.put("u2", &target("a"), Check::Legacy, Some(vec!["k2".into()]));
        assert_eq!(
            f.get("u1", &target("a"), Check::Legacy),
            Some(vec!["k1".into()])
        );
        assert_eq!(f.get("u1", &target("b"), Check::Legacy), None);
        assert_eq!(
            f.get("u1", &target("a"), Check::Active),
            Some(vec!["j1".into()])
        );
        f.forget("u1");
        assert_eq!(f.get("u1", &target("a"), Check::Legacy), None);
        assert_eq!(f.len(), 1, "u2's set is kept");
        f.put("u3", &target("a"), Check::Legacy, Some(vec!["k3".into()]));
        f.retain(|uid| uid == "u3");
        assert_eq!(
            f.get("u2", &target("a"), Check::Legacy),
            None,
            "u2 was deleted"
        );
        assert_eq!(f.len(), 1, "u3's set is kept");
    }

    #[test]
    fn a_set_above_the_cap_or_none_is_forgotten() {
        let f = FoundKeys::default();
        f.put("u", &target("a"), Check::Legacy, Some(vec!["k".into()]));
        let big: Vec<String> = (0..=MAX_FOUND_KEYS).map(|i| i.to_string()).collect();
        f.put("u", &target("a"), Check::Legacy, Some(big));
        assert_eq!(f.get("u", &target("a"), Check::Legacy), None);
        f.put("u", &target("a"), Check::Legacy, Some(vec!["k".into()]));
        f.put("u", &target("a"), Check::Legacy, None);
        assert!(f.is_empty());
    }
}
