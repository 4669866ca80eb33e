//! A full rollback held by active file_ref-only jobs (invariant 4): the jobs as the API and a
//! worker leave them in Redis, the `abort-full` request, the hold, and the jobs finishing.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use redis::aio::ConnectionManager;

use dedup2d::operator::crd::Phase;

use super::fleet::{
    deploy, include, request, status, template_image, wait_phase, write_payloads, API_NEW,
    NEW_IMAGE, WAIT,
};
use super::kube::TestNamespace;
use super::poll::eventually;

const ACTIVE: &str = "dedup2d:active";

/// With the jobs `ids` active on file_ref-only payloads (enqueued with dual-write off),
/// `abort-full` on rollout `name`: it goes `RollingBack`, dual-write is on again and
/// `RollbackSafe=False` counts the jobs; then for `hold_secs` seconds the phase and the new images
/// stay. Returns the RollbackSafe condition's reason and message.
pub async fn abort_full_held_by_active_jobs(
    ns: &TestNamespace,
    conn: &mut ConnectionManager,
    name: &str,
    ids: &[&str],
    hold_secs: u32,
) -> (String, String) {
    write_payloads(conn, &[], ids, 3600).await;
    let _: () = redis::cmd("SADD")
        .arg(ACTIVE)
        .arg(ids)
        .query_async(conn)
        .await
        .unwrap();
    request(ns, name, Some("abort-full")).await;
    wait_phase(ns, name, Phase::RollingBack, Duration::from_secs(30)).await;
    eventually("dual-write on again", WAIT, || async {
        (include(ns).await == "1").then_some(())
    })
    .await;
    let count = Some(ids.len() as i64);
    let safe = eventually("RollbackSafe=False counts the jobs", WAIT, || async {
        let st = status(ns, name).await;
        let c = st.conditions.iter().find(|c| c.type_ == "RollbackSafe")?;
        (c.status == "False" && st.active_jobs_without_b64 == count)
            .then(|| (c.reason.clone(), c.message.clone()))
    })
    .await;
    // Never restored while the jobs are active.
    for _ in 0..hold_secs {
        let st = status(ns, name).await;
        assert_eq!(st.phase, Some(Phase::RollingBack), "{:?}", st.message);
        assert_eq!(template_image(&deploy(ns, "worker-a").await), NEW_IMAGE);
        assert_eq!(template_image(&deploy(ns, "api").await), API_NEW);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    safe
}

/// The jobs `ids` finish: out of the active set, their payloads gone. Returns when.
pub async fn finish_jobs(conn: &mut ConnectionManager, ids: &[&str]) -> Timestamp {
    let finished = Timestamp::now();
    let payloads: Vec<String> = ids
        .iter()
        .map(|id| format!("dedup2d:payload:{id}"))
        .collect();
    let _: () = redis::cmd("SREM")
        .arg(ACTIVE)
        .arg(ids)
        .query_async(conn)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&payloads)
        .query_async(conn)
        .await
        .unwrap();
    finished
}
