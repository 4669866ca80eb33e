//! S3 backend (`DEDUP2D_FILE_STORAGE=s3`) on the `object_store` crate: bucket, prefix, endpoint
//! and region from `DEDUP2D_S3_*`, credentials from the usual AWS variables (or the pod's
//! web identity / instance role). Unlike the Python worker, a `file_ref` naming another bucket
//! or a key outside the configured prefix is refused before any request is made.

use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, Attributes, ObjectStore, ObjectStoreExt, PutOptions, PutPayload, RetryConfig,
};

use super::{relative_name, FileStorage, StorageError};
use crate::contract::payload::FileRef;

/// Used when neither `DEDUP2D_S3_REGION` nor `AWS_REGION`/`AWS_DEFAULT_REGION` is set.
const DEFAULT_REGION: &str = "us-east-1";

pub struct S3Storage {
    store: AmazonS3,
    bucket: String,
    /// Without leading/trailing `/`; empty means the whole bucket.
    prefix: String,
}

fn store_err(e: object_store::Error) -> StorageError {
    match e {
        object_store::Error::NotFound { path, .. } => StorageError::NotFound(format!("s3:{path}")),
        other => StorageError::ObjectStore(other),
    }
}

impl S3Storage {
    /// Builds the client from the AWS environment plus the `DEDUP2D_S3_*` settings.
    pub fn from_env(
        bucket: &str,
        prefix: &str,
        endpoint: Option<&str>,
        region: Option<&str>,
    ) -> Result<Self, StorageError> {
        Self::from_builder(
            AmazonS3Builder::from_env(),
            bucket,
            prefix,
            endpoint,
            region,
        )
    }

    /// Same as [`S3Storage::from_env`] on a caller-made builder (explicit credentials in tests).
    pub fn from_builder(
        mut builder: AmazonS3Builder,
        bucket: &str,
        prefix: &str,
        endpoint: Option<&str>,
        region: Option<&str>,
    ) -> Result<Self, StorageError> {
        let bucket = bucket.trim();
        if bucket.is_empty() {
            return Err(StorageError::Config("DEDUP2D_S3_BUCKET is empty".into()));
        }
        builder = builder.with_bucket_name(bucket).with_retry(RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
            ..RetryConfig::default()
        });
        let region = region
            .map(str::to_string)
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .filter(|r| !r.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_REGION.to_string());
        builder = builder.with_region(region);
        if let Some(ep) = endpoint.map(str::trim).filter(|e| !e.is_empty()) {
            // S3-compatible servers (MinIO, moto, Ceph) are addressed path-style.
            builder = builder
                .with_endpoint(ep)
                .with_virtual_hosted_style_request(false)
                .with_allow_http(ep.starts_with("http://"));
        }
        let store = builder
            .build()
            .map_err(|e| StorageError::Config(e.to_string()))?;
        Ok(S3Storage {
            store,
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }

    /// The object path of a `file_ref`, after checking bucket, prefix and key syntax.
    fn object_path(&self, file_ref: &FileRef) -> Result<ObjectPath, StorageError> {
        file_ref.validate()?;
        let (bucket, key) = match file_ref {
            FileRef::S3 { bucket, key } => (bucket, key),
            other => {
                return Err(StorageError::BackendMismatch {
                    found: other.backend(),
                    configured: "s3",
                })
            }
        };
        if bucket != &self.bucket {
            return Err(StorageError::ForeignBucket {
                found: bucket.clone(),
                configured: self.bucket.clone(),
            });
        }
        if !self.prefix.is_empty() {
            let inside = key
                .strip_prefix(&self.prefix)
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|rest| !rest.is_empty());
            if !inside {
                return Err(StorageError::OutsidePrefix {
                    key: key.clone(),
                    prefix: self.prefix.clone(),
                });
            }
        }
        // `Path::parse` refuses empty, `.` and `..` segments; it must not rewrite the key either.
        match ObjectPath::parse(key) {
            Ok(p) if p.as_ref() == key => Ok(p),
            _ => Err(StorageError::InvalidKey(key.clone())),
        }
    }

    fn key_for(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }
}

impl FileStorage for S3Storage {
    fn backend(&self) -> &'static str {
        "s3"
    }

    fn save<'a>(
        &'a self,
        job_id: &'a str,
        file_name: &'a str,
        content_type: &'a str,
        data: Bytes,
    ) -> BoxFuture<'a, Result<FileRef, StorageError>> {
        Box::pin(async move {
            let key = self.key_for(&relative_name(job_id, file_name)?);
            let path =
                ObjectPath::parse(&key).map_err(|_| StorageError::InvalidKey(key.clone()))?;
            let mut attributes = Attributes::new();
            let ct = if content_type.trim().is_empty() {
                "application/octet-stream"
            } else {
                content_type.trim()
            };
            attributes.insert(Attribute::ContentType, ct.to_string().into());
            self.store
                .put_opts(&path, PutPayload::from(data), PutOptions::from(attributes))
                .await
                .map_err(store_err)?;
            Ok(FileRef::S3 {
                bucket: self.bucket.clone(),
                key,
            })
        })
    }

    fn load<'a>(&'a self, file_ref: &'a FileRef) -> BoxFuture<'a, Result<Bytes, StorageError>> {
        Box::pin(async move {
            let path = self.object_path(file_ref)?;
            let got = self.store.get(&path).await.map_err(store_err)?;
            got.bytes().await.map_err(store_err)
        })
    }

    fn delete<'a>(&'a self, file_ref: &'a FileRef) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let path = self.object_path(file_ref)?;
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(StorageError::ObjectStore(e)),
            }
        })
    }
}
