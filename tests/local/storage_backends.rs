//! Both file storage backends against real parts: a temp directory and a moto S3 server.
//! Round trip, traversal refused, foreign bucket / outside-prefix refused, idempotent delete,
//! and the storage metrics.

use std::sync::Arc;

use bytes::Bytes;
use dedup2d::contract::payload::{FileRef, FileRefError};
use dedup2d::storage::metrics::Op;
use dedup2d::storage::{
    FileStorage, Instrumented, LocalStorage, S3Storage, StorageError, StorageMetrics,
};
use object_store::aws::AmazonS3Builder;

const JOB: &str = "6f1c1f9e-2d7e-4d0b-9d0e-3c4b8e1f0a11";

fn local(dir: &std::path::Path) -> LocalStorage {
    LocalStorage::new(dir).expect("open local storage")
}

#[tokio::test]
async fn local_round_trip_layout_and_idempotent_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("uploads");
    let metrics = Arc::new(StorageMetrics::unregistered());
    let storage = Instrumented::new(Box::new(local(&root)), metrics.clone());

    let data = Bytes::from_static(b"0\nSECTION\n2\nENTITIES\n0\nENDSEC\n0\nEOF\n");
    let r = storage
        .save(
            JOB,
            "../../My Drawing (v2).dxf",
            "application/dxf",
            data.clone(),
        )
        .await
        .unwrap();
    let FileRef::Local { path } = &r else {
        panic!("local storage returned {r:?}")
    };
    let (dir, file) = path.split_once('/').unwrap();
    assert_eq!(dir, JOB);
    let (hex, name) = file.split_once('_').unwrap();
    assert_eq!(hex.len(), 32, "{path}");
    assert_eq!(name, "My_Drawing_v2_.dxf");
    assert_eq!(std::fs::read(root.join(path)).unwrap(), data);
    // Atomic write: nothing but the final file is left in the job directory.
    let entries: Vec<_> = std::fs::read_dir(root.join(JOB)).unwrap().collect();
    assert_eq!(entries.len(), 1);

    assert_eq!(storage.load(&r).await.unwrap(), data);
    storage.delete(&r).await.unwrap();
    assert!(!root.join(path).exists());
    assert!(!root.join(JOB).exists(), "empty job directory removed");
    storage.delete(&r).await.expect("second delete is a no-op");
    match storage.load(&r).await {
        Err(StorageError::NotFound(m)) => assert!(m.contains(path.as_str()), "{m}"),
        other => panic!("expected NotFound, got {other:?}"),
    }

    assert_eq!(metrics.count(Op::Upload, "local", "success"), 1);
    assert_eq!(metrics.count(Op::Download, "local", "success"), 1);
    assert_eq!(metrics.count(Op::Download, "local", "error"), 1);
    assert_eq!(metrics.count(Op::Delete, "local", "success"), 2);
}

#[tokio::test]
async fn local_refuses_traversal_absolute_and_symlink_escapes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("uploads");
    let outside = tmp.path().join("secret.txt");
    std::fs::write(&outside, b"top secret").unwrap();
    let storage = local(&root);
    let lref = |p: &str| FileRef::Local { path: p.into() };

    for (path, want) in [
        ("../secret.txt", "'..'"),
        ("a/../../secret.txt", "'..'"),
        ("/etc/passwd", "absolute"),
        ("a\\..\\secret.txt", "backslash"),
    ] {
        let err = storage.load(&lref(path)).await.unwrap_err();
        assert!(
            matches!(err, StorageError::InvalidRef(_)),
            "{path}: {err:?}"
        );
        assert!(err.to_string().contains(want), "{path}: {err}");
        let err = storage.delete(&lref(path)).await.unwrap_err();
        assert!(
            matches!(err, StorageError::InvalidRef(_)),
            "{path}: {err:?}"
        );
    }

    // A symlink inside the root pointing out of it: refused on read, never followed on delete.
    std::os::unix::fs::symlink(&outside, root.join("link.txt")).unwrap();
    let err = storage.load(&lref("link.txt")).await.unwrap_err();
    assert!(matches!(err, StorageError::OutsideRoot(_)), "{err:?}");
    assert!(
        err.to_string().contains("outside the storage root"),
        "{err}"
    );
    // A symlinked directory pointing out of the root.
    std::fs::create_dir_all(tmp.path().join("elsewhere")).unwrap();
    std::fs::write(tmp.path().join("elsewhere/f.bin"), b"x").unwrap();
    std::os::unix::fs::symlink(tmp.path().join("elsewhere"), root.join("jobdir")).unwrap();
    let err = storage.load(&lref("jobdir/f.bin")).await.unwrap_err();
    assert!(matches!(err, StorageError::OutsideRoot(_)), "{err:?}");
    let err = storage.delete(&lref("jobdir/f.bin")).await.unwrap_err();
    assert!(matches!(err, StorageError::OutsideRoot(_)), "{err:?}");
    assert!(
        tmp.path().join("elsewhere/f.bin").exists(),
        "file outside the root untouched"
    );
    // Saving into a job directory that is a symlink out of the root is refused too.
    std::os::unix::fs::symlink(tmp.path().join("elsewhere"), root.join(JOB)).unwrap();
    let err = storage
        .save(JOB, "a.dxf", "", Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::OutsideRoot(_)), "{err:?}");
    assert_eq!(
        std::fs::read_dir(tmp.path().join("elsewhere"))
            .unwrap()
            .count(),
        1
    );

    // The root itself and directories are not files.
    assert!(storage.load(&lref(".")).await.is_err());
    // Deleting the link removes the link, not its target.
    storage.delete(&lref("link.txt")).await.unwrap();
    assert_eq!(std::fs::read(&outside).unwrap(), b"top secret");

    let err = storage
        .load(&FileRef::S3 {
            bucket: "b".into(),
            key: "k".into(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::BackendMismatch { .. }),
        "{err:?}"
    );
    let err = storage
        .save("../x", "a.dxf", "", Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::InvalidJobId(_)), "{err:?}");
}

fn s3_storage(server: &crate::support::s3::S3Server, bucket: &str, prefix: &str) -> S3Storage {
    let builder = AmazonS3Builder::new()
        .with_access_key_id(crate::support::s3::ACCESS_KEY)
        .with_secret_access_key(crate::support::s3::SECRET_KEY);
    S3Storage::from_builder(
        builder,
        bucket,
        prefix,
        Some(&server.endpoint()),
        Some(crate::support::s3::REGION),
    )
    .expect("build S3 storage")
}

#[tokio::test]
async fn s3_round_trip_and_idempotent_delete() {
    let server = crate::support::s3::S3Server::start();
    server.create_bucket("uploads").await;
    let metrics = Arc::new(StorageMetrics::unregistered());
    let storage = Instrumented::new(
        Box::new(s3_storage(&server, "uploads", "/dedup2d/uploads/")),
        metrics.clone(),
    );

    let data = Bytes::from(vec![7u8; 300_000]);
    let r = storage
        .save(JOB, "plan.dwg", "application/acad", data.clone())
        .await
        .unwrap();
    let FileRef::S3 { bucket, key } = &r else {
        panic!("s3 storage returned {r:?}")
    };
    assert_eq!(bucket, "uploads");
    let rest = key
        .strip_prefix(&format!("dedup2d/uploads/{JOB}/"))
        .unwrap_or_else(|| panic!("key layout {key}"));
    assert!(
        rest.ends_with("_plan.dwg") && rest.len() == 32 + 1 + 8,
        "{rest}"
    );
    assert!(
        server.exists("uploads", key).await,
        "object visible on the server"
    );

    assert_eq!(storage.load(&r).await.unwrap(), data);
    storage.delete(&r).await.unwrap();
    assert!(!server.exists("uploads", key).await);
    storage.delete(&r).await.expect("second delete is a no-op");
    let err = storage.load(&r).await.unwrap_err();
    assert!(matches!(err, StorageError::NotFound(_)), "{err:?}");

    assert_eq!(metrics.count(Op::Upload, "s3", "success"), 1);
    assert_eq!(metrics.count(Op::Download, "s3", "success"), 1);
    assert_eq!(metrics.count(Op::Download, "s3", "error"), 1);
    assert_eq!(metrics.count(Op::Delete, "s3", "success"), 2);
}

#[tokio::test]
async fn s3_refuses_foreign_bucket_outside_prefix_and_traversal() {
    let server = crate::support::s3::S3Server::start();
    server.create_bucket("uploads").await;
    server.create_bucket("other-team").await;
    // Objects that really exist: the refusal must come from our check, not from a 404.
    server
        .put_raw("other-team", "dedup2d/uploads/j/x_a.dxf", b"not yours")
        .await;
    server
        .put_raw("uploads", "private/keys.txt", b"not yours")
        .await;
    let storage = s3_storage(&server, "uploads", "dedup2d/uploads");
    let s3ref = |b: &str, k: &str| FileRef::S3 {
        bucket: b.into(),
        key: k.into(),
    };

    let err = storage
        .load(&s3ref("other-team", "dedup2d/uploads/j/x_a.dxf"))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::ForeignBucket { .. }), "{err:?}");
    assert!(err.to_string().contains("other-team"), "{err}");
    let err = storage
        .delete(&s3ref("other-team", "dedup2d/uploads/j/x_a.dxf"))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::ForeignBucket { .. }), "{err:?}");
    assert!(
        server
            .exists("other-team", "dedup2d/uploads/j/x_a.dxf")
            .await
    );

    for key in [
        "private/keys.txt",
        "dedup2d/uploadsX/j/x",
        "dedup2d/uploads",
        "dedup2d/uploads/",
    ] {
        let err = storage.load(&s3ref("uploads", key)).await.unwrap_err();
        assert!(
            matches!(err, StorageError::OutsidePrefix { .. }),
            "{key}: {err:?}"
        );
    }
    let err = storage
        .load(&s3ref("uploads", "dedup2d/uploads/../../private/keys.txt"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::InvalidRef(FileRefError::ParentComponent(_))
        ),
        "{err:?}"
    );
    for key in [
        "dedup2d/uploads//x",
        "dedup2d/uploads/./x",
        "/dedup2d/uploads/x",
    ] {
        let err = storage.load(&s3ref("uploads", key)).await.unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::InvalidKey(_) | StorageError::InvalidRef(_)
            ),
            "{key}: {err:?}"
        );
    }
    let err = storage
        .load(&FileRef::Local { path: "j/x".into() })
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::BackendMismatch { .. }),
        "{err:?}"
    );
    assert!(server.exists("uploads", "private/keys.txt").await);
}
