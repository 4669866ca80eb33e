//! The drain observer against a real `redis-server`.

use crate::support::redis::RedisServer;
use dedup2d::contract::keys::Keys;
use dedup2d::contract::payload::{is_legacy_payload, FileRef, JobPayload};
use dedup2d::contract::scan::Scan;
use dedup2d::operator::drain::{
    observe_active_jobs, observe_legacy_payloads, recheck_active_jobs, recheck_legacy_payloads,
    DrainError, CALL_BUDGET_BYTES, WINDOW_BYTES,
};

/// Found keys kept per check in these tests (the operator keeps up to 10,000).
const KEEP: usize = 100;
use redis::AsyncCommands;
use serde_json::json;

fn legacy_payload(b64: &str) -> String {
    json!({"tenant_id":"t","file_name":"a.dxf","file_ref":{"backend":"local","path":"j/a"},
           "file_bytes_b64": b64})
    .to_string()
}

fn ref_only_payload() -> String {
    json!({"tenant_id":"t","file_name":"a.dxf","file_ref":{"backend":"local","path":"j/a"}})
        .to_string()
}

#[tokio::test]
async fn counts_legacy_payloads_and_their_largest_ttl() {
    let redis = RedisServer::start();
    let mut conn = redis.manager().await;
    for (id, ttl) in [("l1", 100u64), ("l2", 300), ("l3", 200)] {
        let _: () = conn
            .set_ex(format!("dedup2d:payload:{id}"), legacy_payload("QUJD"), ttl)
            .await
            .unwrap();
    }
    let _: () = conn
        .set("dedup2d:payload:forever", legacy_payload("QQ=="))
        .await
        .unwrap();
    for i in 0..5 {
        let _: () = conn
            .set_ex(format!("dedup2d:payload:r{i}"), ref_only_payload(), 60)
            .await
            .unwrap();
    }
    // Not legacy: empty or null b64, a file name that merely mentions the field.
    let empty = json!({"file_ref":{"backend":"local","path":"x"},"file_bytes_b64":""}).to_string();
    let null = json!({"file_ref":{"backend":"local","path":"x"},"file_bytes_b64":null}).to_string();
    let tricky =
        json!({"file_name":"\"file_bytes_b64\": \"x\"","file_ref":{"backend":"local","path":"x"}})
            .to_string();
    for (k, v) in [("e", empty), ("n", null), ("t", tricky)] {
        let _: () = conn
            .set_ex(format!("dedup2d:payload:{k}"), v, 60)
            .await
            .unwrap();
    }
    // Another prefix and other key kinds are not payloads of ours.
    let _: () = conn
        .set_ex("other:payload:x", legacy_payload("QUJD"), 900)
        .await
        .unwrap();
    let _: () = conn
        .set_ex("dedup2d:result:l1", legacy_payload("QUJD"), 900)
        .await
        .unwrap();

    let f = observe_legacy_payloads(&mut conn, &Keys::new("dedup2d"), 3, KEEP)
        .await
        .unwrap();
    assert_eq!(f.scanned, 12);
    assert_eq!(f.legacy, 4);
    assert_eq!(f.legacy_without_expiry, 1);
    let max = f.max_legacy_pttl_ms.unwrap();
    assert!((299_000..=300_000).contains(&max), "max pttl {max}");
    assert!(f.batches >= 2, "bounded batches: {}", f.batches);
    assert!(f.bytes_inspected > 0);

    // Once the legacy payloads are gone the count is zero.
    let _: () = conn
        .del(&[
            "dedup2d:payload:l1",
            "dedup2d:payload:l2",
            "dedup2d:payload:l3",
            "dedup2d:payload:forever",
        ])
        .await
        .unwrap();
    let f = observe_legacy_payloads(&mut conn, &Keys::new("dedup2d"), 100, KEEP)
        .await
        .unwrap();
    assert_eq!((f.legacy, f.max_legacy_pttl_ms), (0, None));
}

#[tokio::test]
async fn counts_active_jobs_an_old_worker_could_not_read() {
    let redis = RedisServer::start();
    let mut conn = redis.manager().await;
    let keys = Keys::new("p");
    for i in 0..7 {
        let id = format!("a{i}");
        let body = if i < 3 {
            legacy_payload("QUJD")
        } else {
            ref_only_payload()
        };
        let _: () = conn.set_ex(keys.payload(&id), body, 60).await.unwrap();
        let _: () = conn.sadd(keys.active(), &id).await.unwrap();
    }
    // An active id whose payload expired cannot be sent to anyone: not counted as file_ref-only.
    let _: () = conn.sadd(keys.active(), "gone").await.unwrap();
    let f = observe_active_jobs(&mut conn, &keys, 2, KEEP)
        .await
        .unwrap();
    assert_eq!(f.active, 8);
    assert_eq!(f.file_ref_only, 4);
}

#[tokio::test]
async fn redis_down_is_an_error_not_a_zero() {
    let mut redis = RedisServer::start();
    let mut conn = redis.manager().await;
    let _: () = conn
        .set_ex("dedup2d:payload:l", legacy_payload("QUJD"), 60)
        .await
        .unwrap();
    redis.kill();
    let err = observe_legacy_payloads(&mut conn, &Keys::new("dedup2d"), 10, KEEP)
        .await
        .unwrap_err();
    assert!(matches!(err, DrainError::Redis { .. }));
    assert!(
        err.to_string()
            .contains("scanning and checking payload keys"),
        "{err}"
    );
}

/// The one SCAN helper walks many keys, and a set large enough for `COUNT` to apply, in several
/// small steps and sees each element; an empty walk yields no batch.
#[tokio::test]
async fn scan_walks_keys_and_set_members_in_bounded_batches() {
    let redis = RedisServer::start();
    let mut conn = redis.manager().await;
    let mut pipe = redis::pipe();
    for i in 0..1500 {
        pipe.set(format!("dedup2d:payload:{i}"), "{}").ignore();
        pipe.sadd("dedup2d:active", format!("job-{i}")).ignore();
    }
    for i in 0..100 {
        pipe.set(format!("dedup2d:job:{i}"), "{}").ignore();
    }
    let _: () = pipe.query_async(&mut conn).await.unwrap();

    for (mut scan, want_prefix) in [
        (Scan::keys("dedup2d:payload:*", 100), "dedup2d:payload:"),
        (Scan::set_members("dedup2d:active", 100), "job-"),
    ] {
        let mut seen = std::collections::HashSet::new();
        let mut batches = 0;
        while let Some(batch) = scan.next_batch(&mut conn).await.unwrap() {
            assert!(!batch.is_empty() && batch.len() < 1500, "{}", batch.len());
            batches += 1;
            seen.extend(batch);
        }
        assert_eq!(seen.len(), 1500, "{want_prefix}");
        assert!(seen.iter().all(|k| k.starts_with(want_prefix)));
        assert!(batches >= 5, "{want_prefix}: {batches} batches");
    }
    let mut none = Scan::keys("nothing:*", 100);
    assert_eq!(none.next_batch(&mut conn).await.unwrap(), None);
    assert_eq!(none.next_batch(&mut conn).await.unwrap(), None);
}

/// The drain's Lua checks agree with the one Rust definition (`is_legacy_payload`) on one table of
/// payloads, each alone in a real redis-server: counted as legacy by the payload scan exactly when
/// legacy, as file_ref-only by the active-set check exactly when not.
#[tokio::test]
async fn lua_checks_agree_with_the_rust_legacy_predicate() {
    let ours = |b64: Option<&str>| {
        let payload = JobPayload {
            tenant_id: "t".into(),
            file_name: "a.dxf".into(),
            content_type: None,
            file_ref: Some(FileRef::Local { path: "j/a".into() }),
            query_geom: None,
            request_params: Default::default(),
            callback_url: None,
            render_required: true,
            file_bytes_b64: b64.map(String::from),
            extra: Default::default(),
        };
        serde_json::to_string(&payload).unwrap()
    };
    #[rustfmt::skip]
    let mut cases: Vec<(String, bool)> = vec![
        (ours(Some("QUJD")), true),
        (ours(None), false),
        (ours(Some("")), false),
        (legacy_payload("QQ=="), true),
        (ref_only_payload(), false),
        (r#"{"file_bytes_b64":"QUJD"}"#.into(), true),
        ("{\"file_bytes_b64\" :\n \"QQ==\"}".into(), true),
        (r#"{"file_bytes_b64":"\u0041"}"#.into(), true),
        (r#"{"file_bytes_b64":""}"#.into(), false),
        (r#"{"file_bytes_b64":null}"#.into(), false),
        (r#"{"file_bytes_b64":42}"#.into(), false),
        (r#"{"file_name":"file_bytes_b64.dxf"}"#.into(), false),
        (r#"{"note":"\"file_bytes_b64\": \"x\""}"#.into(), false),
    ];
    cases.extend(large_cases(&ours));
    let redis = RedisServer::start();
    let mut conn = redis.manager().await;
    let keys = Keys::new("dedup2d");
    for (raw, legacy) in &cases {
        let shown = &raw[..raw.len().min(120)];
        assert_eq!(is_legacy_payload(raw), *legacy, "Rust: {shown}");
        let _: () = conn.set("dedup2d:payload:j", raw).await.unwrap();
        let _: () = conn.sadd("dedup2d:active", "j").await.unwrap();
        let scan = observe_legacy_payloads(&mut conn, &keys, 100, KEEP)
            .await
            .unwrap();
        assert_eq!(
            (scan.scanned, scan.legacy),
            (1, u64::from(*legacy)),
            "Lua scan ({} bytes): {shown}",
            raw.len()
        );
        let found = vec!["dedup2d:payload:j".to_string()];
        let again = recheck_legacy_payloads(&mut conn, &found, 100)
            .await
            .unwrap();
        assert_eq!(again.legacy, scan.legacy, "Lua re-check: {shown}");
        let active = observe_active_jobs(&mut conn, &keys, 100, KEEP)
            .await
            .unwrap();
        assert_eq!(
            active.file_ref_only,
            u64::from(!*legacy),
            "Lua active check ({} bytes): {shown}",
            raw.len()
        );
    }
}

const MIB: usize = 1 << 20;

/// `n` bytes of base64-alphabet text.
fn filler(n: usize) -> String {
    "QUJD".repeat(n / 4 + 1)[..n].to_string()
}

/// Payloads larger than two windows, where the member sits at the start, at the end, in the
/// middle after another large member, across a window boundary, or only inside another string.
fn large_cases(ours: &dyn Fn(Option<&str>) -> String) -> Vec<(String, bool)> {
    let w = WINDOW_BYTES as usize;
    let big = |n| filler(n);
    // `{"a":"` + pad + `","file_bytes_b64"` ends the name exactly `shift` bytes past the first window.
    let across = |shift: usize, rest: &str| {
        let pad = w + shift - r#"{"a":""#.len() - r#"","file_bytes_b64""#.len();
        format!(
            r#"{{"a":"{}","file_bytes_b64"{rest},"z":"{}"}}"#,
            big(pad),
            big(MIB)
        )
    };
    vec![
        (ours(Some(&big(2 * MIB))), true),
        (ours(Some(&big(10 * MIB))), true),
        (
            format!(
                r#"{{"file_bytes_b64":"{}","file_name":"a.dxf"}}"#,
                big(10 * MIB)
            ),
            true,
        ),
        (
            format!(
                r#"{{"query_geom":"{}","file_bytes_b64":"QQ=="}}"#,
                big(2 * MIB)
            ),
            true,
        ),
        (
            format!(
                r#"{{"query_geom":"{}","file_bytes_b64":"{}"}}"#,
                big(MIB),
                big(2 * MIB)
            ),
            true,
        ),
        (
            format!(
                r#"{{"a":"{}","file_bytes_b64":"QQ==","z":"{}"}}"#,
                big(MIB),
                big(MIB)
            ),
            true,
        ),
        (
            format!(r#"{{"query_geom":"{}","file_bytes_b64":""}}"#, big(2 * MIB)),
            false,
        ),
        (
            format!(
                r#"{{"query_geom":"{}","file_bytes_b64":null}}"#,
                big(2 * MIB)
            ),
            false,
        ),
        (
            format!(
                r#"{{"a":"{}","file_bytes_b64":"","z":"{}"}}"#,
                big(MIB),
                big(MIB)
            ),
            false,
        ),
        (
            format!(
                r#"{{"a":"{}","file_bytes_b64":null,"z":"{}"}}"#,
                big(MIB),
                big(10 * MIB)
            ),
            false,
        ),
        (
            format!(
                r#"{{"note":"{} \"file_bytes_b64\":\"x\" {}"}}"#,
                big(MIB),
                big(MIB)
            ),
            false,
        ),
        (format!(r#"{{"query_geom":"{}"}}"#, big(10 * MIB)), false),
        (across(0, r#":"QQ==""#), true),
        (across(0, r#" :  "QQ==""#), true),
        (across(7, r#":"QQ==""#), true),
        (across(0, r#":"""#), false),
        (across(3, r#" : null"#), false),
    ]
}

/// A large payload is decided from its windows, not read whole; one whose middle must be
/// scanned is scanned in calls bounded by the byte budget.
#[tokio::test]
async fn large_payloads_are_examined_in_bounded_windows() {
    let redis = RedisServer::start();
    let mut conn = redis.manager().await;
    let keys = Keys::new("dedup2d");
    let first = format!(r#"{{"file_bytes_b64":"{}"}}"#, filler(10 * MIB));
    let _: () = conn.set("dedup2d:payload:j", &first).await.unwrap();
    let f = observe_legacy_payloads(&mut conn, &keys, 100, KEEP)
        .await
        .unwrap();
    assert_eq!((f.legacy, f.batches), (1, 1));
    assert!(
        f.bytes_inspected <= 2 * WINDOW_BYTES + 512,
        "{} bytes examined",
        f.bytes_inspected
    );

    let none = format!(r#"{{"query_geom":"{}"}}"#, filler(10 * MIB));
    let _: () = conn.set("dedup2d:payload:j", &none).await.unwrap();
    let f = observe_legacy_payloads(&mut conn, &keys, 100, KEEP)
        .await
        .unwrap();
    assert_eq!(f.legacy, 0);
    let len = none.len() as u64;
    assert!(f.bytes_inspected >= len, "{} of {len}", f.bytes_inspected);
    assert!(
        f.batches >= len / (CALL_BUDGET_BYTES + 2 * WINDOW_BYTES),
        "{} calls for {len} bytes",
        f.batches
    );
}

#[tokio::test]
async fn a_full_scan_keeps_the_legacy_keys_and_a_recheck_drops_those_gone() {
    let redis = RedisServer::start();
    let mut conn = redis.manager().await;
    let keys = Keys::new("dedup2d");
    for i in 0..5 {
        let _: () = conn
            .set_ex(keys.payload(&format!("l{i}")), legacy_payload("QUJD"), 300)
            .await
            .unwrap();
        let _: () = conn
            .set_ex(keys.payload(&format!("r{i}")), ref_only_payload(), 300)
            .await
            .unwrap();
    }
    let f = observe_legacy_payloads(&mut conn, &keys, 3, KEEP)
        .await
        .unwrap();
    let mut found = f.found.clone().expect("5 legacy keys are within the cap");
    found.sort();
    let want: Vec<String> = (0..5).map(|i| keys.payload(&format!("l{i}"))).collect();
    assert_eq!(found, want);
    // Above the cap nothing is kept (the caller falls back to full scans).
    let capped = observe_legacy_payloads(&mut conn, &keys, 3, 4)
        .await
        .unwrap();
    assert_eq!((capped.legacy, capped.found), (5, None));

    // One deleted, one rewritten file_ref-only: both drop out; the rest stay, with their TTLs.
    let _: () = conn.del(keys.payload("l0")).await.unwrap();
    let _: () = conn
        .set_ex(keys.payload("l1"), ref_only_payload(), 300)
        .await
        .unwrap();
    let r = recheck_legacy_payloads(&mut conn, &found, 2).await.unwrap();
    assert_eq!((r.scanned, r.legacy), (5, 3));
    let mut still = r.found.unwrap();
    still.sort();
    assert_eq!(still, want[2..].to_vec());
    assert!(r.max_legacy_pttl_ms.is_some_and(|m| m <= 300_000));
    // A legacy key written after the full scan is invisible to the re-check (hence the
    // confirming full scan before the drain may complete).
    let _: () = conn
        .set_ex(keys.payload("late"), legacy_payload("QUJD"), 300)
        .await
        .unwrap();
    let r = recheck_legacy_payloads(&mut conn, &still, 100)
        .await
        .unwrap();
    assert_eq!(r.legacy, 3);
    let full = observe_legacy_payloads(&mut conn, &keys, 100, KEEP)
        .await
        .unwrap();
    assert_eq!(full.legacy, 4);
}

#[tokio::test]
async fn an_active_recheck_counts_only_jobs_still_active_and_file_ref_only() {
    let redis = RedisServer::start();
    let mut conn = redis.manager().await;
    let keys = Keys::new("p");
    for i in 0..4 {
        let id = format!("a{i}");
        let _: () = conn
            .set_ex(keys.payload(&id), ref_only_payload(), 60)
            .await
            .unwrap();
        let _: () = conn.sadd(keys.active(), &id).await.unwrap();
    }
    let f = observe_active_jobs(&mut conn, &keys, 2, KEEP)
        .await
        .unwrap();
    let mut found = f.found.clone().unwrap();
    found.sort();
    assert_eq!(found, vec!["a0", "a1", "a2", "a3"]);
    assert_eq!(
        observe_active_jobs(&mut conn, &keys, 2, 3)
            .await
            .unwrap()
            .found,
        None,
        "above the cap nothing is kept"
    );
    // a0 finished (left the active set, payload kept until its TTL); a1's payload expired.
    let _: () = conn.srem(keys.active(), "a0").await.unwrap();
    let _: () = conn.del(keys.payload("a1")).await.unwrap();
    let r = recheck_active_jobs(&mut conn, &keys, &found, 2)
        .await
        .unwrap();
    assert_eq!((r.active, r.file_ref_only), (3, 2));
    let mut still = r.found.unwrap();
    still.sort();
    assert_eq!(still, vec!["a2", "a3"]);
}
