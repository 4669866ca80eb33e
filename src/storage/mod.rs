//! File storage for uploads referenced by a payload's `file_ref`: one trait, two backends
//! (`local` directory, `s3` bucket) chosen by `DEDUP2D_FILE_STORAGE`, and a wrapper that records
//! the contract's storage metrics around any backend.

pub mod local;
pub mod metrics;
pub mod s3;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::contract::config::StorageConfig;
use crate::contract::payload::{FileRef, FileRefError};

pub use local::LocalStorage;
pub use metrics::StorageMetrics;
pub use s3::S3Storage;

/// Why a storage operation failed. The messages end up in a failed job's `error` field, so
/// they say what was refused and why, without leaking credentials.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    InvalidRef(#[from] FileRefError),
    #[error(
        "file_ref backend {found:?} does not match the configured storage backend {configured:?}"
    )]
    BackendMismatch {
        found: &'static str,
        configured: &'static str,
    },
    #[error("file_ref path {0:?} resolves outside the storage root")]
    OutsideRoot(String),
    #[error("file_ref bucket {found:?} is not the configured bucket {configured:?}")]
    ForeignBucket { found: String, configured: String },
    #[error("file_ref key {key:?} is outside the configured prefix {prefix:?}")]
    OutsidePrefix { key: String, prefix: String },
    #[error("file_ref key {0:?} is not a valid object key")]
    InvalidKey(String),
    #[error("job id {0:?} cannot be used as a storage directory name")]
    InvalidJobId(String),
    #[error("stored file {0} not found")]
    NotFound(String),
    #[error("local storage I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("object store error: {0}")]
    ObjectStore(#[source] object_store::Error),
    #[error("cannot configure S3 storage: {0}")]
    Config(String),
}

/// Storage of job uploads. Implementations check every `file_ref` before touching anything.
pub trait FileStorage: Send + Sync {
    /// `"local"` or `"s3"`: the metrics label and the `file_ref` backend this storage serves.
    fn backend(&self) -> &'static str;

    /// Stores an upload of `job_id` under `{job_id}/{uuidhex}_{safe_name}` and returns its ref.
    fn save<'a>(
        &'a self,
        job_id: &'a str,
        file_name: &'a str,
        content_type: &'a str,
        data: Bytes,
    ) -> BoxFuture<'a, Result<FileRef, StorageError>>;

    /// Reads a stored file.
    fn load<'a>(&'a self, file_ref: &'a FileRef) -> BoxFuture<'a, Result<Bytes, StorageError>>;

    /// Deletes a stored file; deleting a file that is already gone succeeds.
    fn delete<'a>(&'a self, file_ref: &'a FileRef) -> BoxFuture<'a, Result<(), StorageError>>;
}

/// Builds the configured backend, wrapped with metrics.
pub(crate) fn from_config(
    config: &StorageConfig,
    metrics: Arc<StorageMetrics>,
) -> Result<Arc<dyn FileStorage>, StorageError> {
    let inner: Box<dyn FileStorage> = match config {
        StorageConfig::Local { root, .. } => Box::new(LocalStorage::new(root)?),
        StorageConfig::S3 {
            bucket,
            prefix,
            endpoint,
            region,
            ..
        } => Box::new(S3Storage::from_env(
            bucket,
            prefix,
            endpoint.as_deref(),
            region.as_deref(),
        )?),
    };
    Ok(Arc::new(Instrumented { inner, metrics }))
}

/// Wraps a backend and records `dedup2d_file_{uploads,downloads,deletes}_total` and
/// `dedup2d_file_operation_duration_seconds` for every call.
pub struct Instrumented {
    inner: Box<dyn FileStorage>,
    metrics: Arc<StorageMetrics>,
}

impl Instrumented {
    pub fn new(inner: Box<dyn FileStorage>, metrics: Arc<StorageMetrics>) -> Self {
        Instrumented { inner, metrics }
    }
}

impl FileStorage for Instrumented {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn save<'a>(
        &'a self,
        job_id: &'a str,
        file_name: &'a str,
        content_type: &'a str,
        data: Bytes,
    ) -> BoxFuture<'a, Result<FileRef, StorageError>> {
        Box::pin(async move {
            let start = Instant::now();
            let res = self.inner.save(job_id, file_name, content_type, data).await;
            self.metrics
                .record(self.backend(), metrics::Op::Upload, res.is_ok(), start);
            res
        })
    }

    fn load<'a>(&'a self, file_ref: &'a FileRef) -> BoxFuture<'a, Result<Bytes, StorageError>> {
        Box::pin(async move {
            let start = Instant::now();
            let res = self.inner.load(file_ref).await;
            self.metrics
                .record(self.backend(), metrics::Op::Download, res.is_ok(), start);
            res
        })
    }

    fn delete<'a>(&'a self, file_ref: &'a FileRef) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let start = Instant::now();
            let res = self.inner.delete(file_ref).await;
            self.metrics
                .record(self.backend(), metrics::Op::Delete, res.is_ok(), start);
            res
        })
    }
}

/// A storage directory/key component made from a job id: the contract's ids are UUIDs, so
/// anything but `[A-Za-z0-9_-]` is refused rather than sanitized (a sanitized id could collide).
pub(crate) fn job_dir_name(job_id: &str) -> Result<&str, StorageError> {
    let ok = !job_id.is_empty()
        && job_id.len() <= 128
        && job_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(job_id)
    } else {
        Err(StorageError::InvalidJobId(job_id.to_string()))
    }
}

/// `{job_id}/{uuidhex}_{safe_name}`: the layout both backends use (S3 puts its prefix first).
pub(crate) fn relative_name(job_id: &str, file_name: &str) -> Result<String, StorageError> {
    Ok(format!(
        "{}/{}_{}",
        job_dir_name(job_id)?,
        uuid::Uuid::new_v4().simple(),
        crate::contract::payload::safe_file_name(file_name)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let name = relative_name("0b7c-x_1", "../my drawing.dxf").unwrap();
        let (dir, file) = name.split_once('/').unwrap();
        assert_eq!(dir, "0b7c-x_1");
        let (hex, safe) = file.split_once('_').unwrap();
        assert_eq!(hex.len(), 32);
        assert!(hex.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(safe, "my_drawing.dxf");
        for bad in ["", "..", "a/b", "a\\b", ".", "x y"] {
            assert!(job_dir_name(bad).is_err(), "{bad:?}");
        }
    }
}
