//! Local directory backend (`DEDUP2D_FILE_STORAGE=local`, root `DEDUP2D_FILE_STORAGE_DIR`).
//!
//! Writes go to a temporary file in the target directory and are renamed into place, so a
//! reader never sees a partial file. Every path is resolved (symlinks included) and must stay
//! under the canonical root: `..`, absolute paths and symlinks pointing out are refused.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::future::BoxFuture;

use super::{relative_name, FileStorage, StorageError};
use crate::contract::payload::FileRef;

#[derive(Clone)]
pub struct LocalStorage {
    /// Canonical (symlink-free, absolute) root.
    root: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl LocalStorage {
    /// Opens (creating when needed) the storage root.
    pub fn new(root: impl AsRef<Path>) -> Result<Self, StorageError> {
        let root = root.as_ref();
        fs::create_dir_all(root).map_err(io_err(root))?;
        let root = fs::canonicalize(root).map_err(io_err(root))?;
        Ok(LocalStorage { root })
    }

    fn relative_path<'r>(&self, file_ref: &'r FileRef) -> Result<&'r str, StorageError> {
        file_ref.validate()?;
        match file_ref {
            FileRef::Local { path } => Ok(path),
            other => Err(StorageError::BackendMismatch {
                found: other.backend(),
                configured: "local",
            }),
        }
    }

    /// Resolves an existing path and checks it is inside the root.
    fn resolve_existing(&self, rel: &str) -> Result<PathBuf, StorageError> {
        let joined = self.root.join(rel);
        let canonical = fs::canonicalize(&joined).map_err(|e| match e.kind() {
            ErrorKind::NotFound => StorageError::NotFound(format!("local:{rel}")),
            _ => StorageError::Io {
                path: rel.to_string(),
                source: e,
            },
        })?;
        if canonical.starts_with(&self.root) && canonical != self.root {
            Ok(canonical)
        } else {
            Err(StorageError::OutsideRoot(rel.to_string()))
        }
    }

    fn save_sync(&self, rel: &str, data: &[u8]) -> Result<(), StorageError> {
        let target = self.root.join(rel);
        let dir = target.parent().expect("a relative name has a directory");
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        // The job directory could be a symlink planted by someone else: resolve it.
        let dir = fs::canonicalize(dir).map_err(io_err(dir))?;
        if !dir.starts_with(&self.root) || dir == self.root {
            return Err(StorageError::OutsideRoot(rel.to_string()));
        }
        let name = target.file_name().expect("a relative name has a file name");
        let final_path = dir.join(name);
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            name.to_string_lossy(),
            uuid::Uuid::new_v4().simple()
        ));
        let write = || -> std::io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            fs::rename(&tmp, &final_path)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            // The job directory this save made goes too (only when empty).
            let _ = fs::remove_dir(&dir);
            StorageError::Io {
                path: rel.to_string(),
                source: e,
            }
        })
    }

    fn delete_sync(&self, rel: &str) -> Result<(), StorageError> {
        let joined = self.root.join(rel);
        // Resolve the directory (not the file: deleting a symlink removes the link itself).
        let parent = joined.parent().unwrap_or(&self.root);
        let dir = match fs::canonicalize(parent) {
            Ok(d) => d,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(parent)(e)),
        };
        if !dir.starts_with(&self.root) {
            return Err(StorageError::OutsideRoot(rel.to_string()));
        }
        let Some(name) = joined.file_name() else {
            return Err(StorageError::OutsideRoot(rel.to_string()));
        };
        let path = dir.join(name);
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&path)(e)),
            Ok(m) if m.is_dir() => return Err(StorageError::OutsideRoot(rel.to_string())),
            Ok(_) => {}
        }
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        // Drop the job directory once it is empty (fails harmlessly otherwise).
        if dir != self.root {
            let _ = fs::remove_dir(&dir);
        }
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(StorageError::Io {
            path: String::new(),
            source: std::io::Error::other(e),
        })
    })
}

impl FileStorage for LocalStorage {
    fn backend(&self) -> &'static str {
        "local"
    }

    fn save<'a>(
        &'a self,
        job_id: &'a str,
        file_name: &'a str,
        _content_type: &'a str,
        data: Bytes,
    ) -> BoxFuture<'a, Result<FileRef, StorageError>> {
        Box::pin(async move {
            let rel = relative_name(job_id, file_name)?;
            let me = self.clone();
            let rel2 = rel.clone();
            blocking(move || me.save_sync(&rel2, &data)).await?;
            Ok(FileRef::Local { path: rel })
        })
    }

    fn load<'a>(&'a self, file_ref: &'a FileRef) -> BoxFuture<'a, Result<Bytes, StorageError>> {
        Box::pin(async move {
            let rel = self.relative_path(file_ref)?.to_string();
            let me = self.clone();
            blocking(move || {
                let path = me.resolve_existing(&rel)?;
                let meta = fs::metadata(&path).map_err(io_err(&path))?;
                if !meta.is_file() {
                    return Err(StorageError::NotFound(format!("local:{rel} (not a file)")));
                }
                fs::read(&path)
                    .map(Bytes::from)
                    .map_err(|e| match e.kind() {
                        ErrorKind::NotFound => StorageError::NotFound(format!("local:{rel}")),
                        _ => StorageError::Io {
                            path: rel,
                            source: e,
                        },
                    })
            })
            .await
        })
    }

    fn delete<'a>(&'a self, file_ref: &'a FileRef) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let rel = self.relative_path(file_ref)?.to_string();
            let me = self.clone();
            blocking(move || me.delete_sync(&rel)).await
        })
    }
}
