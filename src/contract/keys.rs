//! Redis key names of the dedup2d contract and of the ARQ queue protocol.

/// Key builder for one dedup2d key prefix (`DEDUP2D_REDIS_KEY_PREFIX`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `{prefix}:job:{id}`: the job hash.
    pub fn job(&self, job_id: &str) -> String {
        format!("{}:job:{job_id}", self.prefix)
    }

    /// `{prefix}:payload:{id}`: the JSON payload.
    pub fn payload(&self, job_id: &str) -> String {
        format!("{}:payload:{job_id}", self.prefix)
    }

    /// SCAN pattern matching every payload key.
    pub(crate) fn payload_pattern(&self) -> String {
        format!("{}:payload:*", glob_escape(&self.prefix))
    }

    /// `{prefix}:result:{id}`: the JSON result of a completed job.
    pub fn result(&self, job_id: &str) -> String {
        format!("{}:result:{job_id}", self.prefix)
    }

    /// `{prefix}:active`: set of unfinished job ids.
    pub fn active(&self) -> String {
        format!("{}:active", self.prefix)
    }

    /// `{prefix}:active:deadlines`: our submits' job ids by the time their job hash expires, so
    /// a submit can prune expired members of the active set without walking it.
    pub fn active_deadlines(&self) -> String {
        format!("{}:active:deadlines", self.prefix)
    }

    /// `{prefix}:active:sweep`: where the submits' bounded sweep of the active set stands (an
    /// `SSCAN` cursor).
    pub fn active_sweep(&self) -> String {
        format!("{}:active:sweep", self.prefix)
    }

    /// `{prefix}:tenant:{tid}:jobs`: zset of a tenant's job ids scored by created_at.
    pub(crate) fn tenant_jobs(&self, tenant_id: &str) -> String {
        format!("{}:tenant:{tenant_id}:jobs", self.prefix)
    }

    /// `{prefix}:dedup:{tid}:sha256`: a tenant's exact-match index (sha256 hex → uploads). Kept
    /// [`DEFAULT_INDEX_TTL_SECONDS`] (`DEDUP2D_INDEX_TTL_SECONDS`) after its last write.
    pub fn dedup_index(&self, tenant_id: &str) -> String {
        format!("{}:dedup:{tenant_id}:sha256", self.prefix)
    }

    /// `{prefix}:worker:{hostname}`: a worker's capability heartbeat.
    pub fn worker_heartbeat(&self, hostname: &str) -> String {
        format!("{}:worker:{hostname}", self.prefix)
    }

    /// SCAN pattern matching every worker heartbeat.
    pub(crate) fn worker_heartbeat_pattern(&self) -> String {
        format!("{}:worker:*", glob_escape(&self.prefix))
    }

    /// `{prefix}:queue`: the default ARQ queue name.
    pub(crate) fn default_queue(&self) -> String {
        format!("{}:queue", self.prefix)
    }
}

/// Retention of a tenant's dedup index when `DEDUP2D_INDEX_TTL_SECONDS` is not set: 90 days
/// after its last write (every write refreshes it, so an index lives as long as its tenant
/// keeps uploading, and goes this long after the last upload).
pub const DEFAULT_INDEX_TTL_SECONDS: u64 = 90 * 24 * 3600;

/// The shortest retention `DEDUP2D_INDEX_TTL_SECONDS` may set.
pub const MIN_INDEX_TTL_SECONDS: u64 = 60;

/// Keys of the ARQ protocol (fixed prefixes defined by the `arq` library).
pub mod arq {
    pub fn job(job_id: &str) -> String {
        format!("arq:job:{job_id}")
    }
    pub fn in_progress(job_id: &str) -> String {
        format!("arq:in-progress:{job_id}")
    }
    pub fn retry(job_id: &str) -> String {
        format!("arq:retry:{job_id}")
    }
    pub fn result(job_id: &str) -> String {
        format!("arq:result:{job_id}")
    }
    pub(crate) fn health_check(queue: &str) -> String {
        format!("{queue}:health-check")
    }
}

/// Escapes Redis glob metacharacters so a prefix matches literally in SCAN MATCH.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_key_names() {
        let k = Keys::new("dedup2d");
        assert_eq!(k.job("j1"), "dedup2d:job:j1");
        assert_eq!(k.payload("j1"), "dedup2d:payload:j1");
        assert_eq!(k.result("j1"), "dedup2d:result:j1");
        assert_eq!(k.active(), "dedup2d:active");
        assert_eq!(k.tenant_jobs("abc"), "dedup2d:tenant:abc:jobs");
        assert_eq!(k.worker_heartbeat("pod-1"), "dedup2d:worker:pod-1");
        assert_eq!(k.dedup_index("abc"), "dedup2d:dedup:abc:sha256");
        assert_eq!(k.default_queue(), "dedup2d:queue");
        assert_eq!(k.payload_pattern(), "dedup2d:payload:*");
        assert_eq!(arq::job("j1"), "arq:job:j1");
        assert_eq!(arq::in_progress("j1"), "arq:in-progress:j1");
        assert_eq!(arq::retry("j1"), "arq:retry:j1");
        assert_eq!(arq::result("j1"), "arq:result:j1");
        assert_eq!(
            arq::health_check("dedup2d:queue"),
            "dedup2d:queue:health-check"
        );
    }

    #[test]
    fn scan_patterns_escape_glob_characters() {
        let k = Keys::new("a*b[1]");
        assert_eq!(k.payload_pattern(), "a\\*b\\[1\\]:payload:*");
        assert_eq!(k.worker_heartbeat_pattern(), "a\\*b\\[1\\]:worker:*");
    }
}
