//! The API's view of file storage: save an upload, delete it again. Implemented over the
//! `storage` backends by `storage_uploads`.

use futures::future::BoxFuture;

use crate::contract::payload::FileRef;

pub trait Uploads: Send + Sync {
    /// Stores an upload of job `job_id` and returns where it lives.
    fn save<'a>(
        &'a self,
        job_id: &'a str,
        file_name: &'a str,
        content_type: &'a str,
        data: &'a [u8],
    ) -> BoxFuture<'a, Result<FileRef, String>>;

    /// Deletes an upload; deleting a missing one is not an error.
    fn delete<'a>(&'a self, file_ref: &'a FileRef) -> BoxFuture<'a, Result<(), String>>;
}
