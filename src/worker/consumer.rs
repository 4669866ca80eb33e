//! The ARQ consumer loop: claims jobs from the configured queue(s) up to
//! `DEDUP2D_WORKER_MAX_JOBS` at a time (one claim call takes as many as there are free slots,
//! and claiming goes on at once while work is queued: only an empty queue waits for the poll
//! interval), runs each as a task, and finishes it in ARQ's format so Python tooling reads our
//! results. On shutdown it stops claiming, lets running jobs finish
//! within the grace period, and hands whatever is still running back to the queue untouched
//! (its dedup2d status is not changed), so another worker runs it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_pickle::{HashableValue, Value as PickleValue};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use futures::future::BoxFuture;

use super::job::{self, JobContext, JobEnd};
use super::metrics::WorkerMetrics;
use crate::contract::arq::{JobRecord, Outcome, ResultRecord, FUNCTION_NAME};
use crate::contract::queue::{
    now_ms, ArqQueue, ClaimCursor, ClaimedJob, ClaimedRecord, QueueError, QueueSettings,
};
use crate::contract::store::StoreError;

/// Most jobs one claim call takes (when that many slots are free).
const CLAIM_BATCH: usize = 16;

/// What the consumer runs for a claimed job: the dedup2d job ([`JobContext`]) in the worker;
/// a benchmark of the queue path plugs in a job of its own.
pub trait JobRunner: Send + Sync + 'static {
    /// Runs dedup2d job `job_id`; an error leaves the ARQ job claimable, so it runs again.
    fn run<'a>(&'a self, job_id: &'a str) -> BoxFuture<'a, Result<JobEnd, StoreError>>;
    /// Ends a job that cannot run with `reason`, without running it.
    fn fail_unrunnable<'a>(
        &'a self,
        job_id: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<JobEnd, StoreError>>;
    fn metrics(&self) -> &WorkerMetrics;
}

impl JobRunner for JobContext {
    fn run<'a>(&'a self, job_id: &'a str) -> BoxFuture<'a, Result<JobEnd, StoreError>> {
        Box::pin(job::run(self, job_id))
    }

    fn fail_unrunnable<'a>(
        &'a self,
        job_id: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<JobEnd, StoreError>> {
        Box::pin(job::fail_unrunnable(self, job_id, reason))
    }

    fn metrics(&self) -> &WorkerMetrics {
        &self.metrics
    }
}

pub struct Consumer {
    pub jobs: Arc<dyn JobRunner>,
    pub queues: Vec<ArqQueue>,
    pub queue_settings: QueueSettings,
    pub max_jobs: usize,
    pub poll_interval: Duration,
    pub shutdown_grace: Duration,
}

/// Jobs this process is running: task id → (queue, ARQ job id).
type InFlight = Arc<Mutex<HashMap<tokio::task::Id, (ArqQueue, String)>>>;

impl Consumer {
    /// Runs until `stop` fires, then drains as described in the module comment.
    pub async fn run(self, stop: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.max_jobs.max(1)));
        let mut tasks: JoinSet<()> = JoinSet::new();
        let in_flight: InFlight = Arc::default();
        let mut last_error_log: Option<Instant> = None;
        let mut cursors = vec![ClaimCursor::default(); self.queues.len()];
        tracing::info!(
            queues = ?self.queues.iter().map(ArqQueue::name).collect::<Vec<_>>(),
            max_jobs = self.max_jobs,
            "worker consuming"
        );
        loop {
            while let Some(res) = tasks.try_join_next_with_id() {
                self.reaped(&in_flight, res);
            }
            let first = tokio::select! {
                p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
                () = stop.cancelled() => break,
            };
            if stop.is_cancelled() {
                break;
            }
            // As many free slots as there are now (one claim call takes them all), bounded.
            let mut free = vec![first];
            while free.len() < CLAIM_BATCH {
                match permits.clone().try_acquire_owned() {
                    Ok(p) => free.push(p),
                    Err(_) => break,
                }
            }
            match self.claim_any(&mut cursors, free.len()).await {
                Ok(claimed) if !claimed.is_empty() => {
                    for ((queue, job), permit) in claimed.into_iter().zip(free) {
                        self.spawn(&mut tasks, &in_flight, queue, job, permit);
                    }
                }
                Ok(_) => {
                    drop(free);
                    tokio::select! {
                        () = tokio::time::sleep(self.poll_interval) => {}
                        () = stop.cancelled() => break,
                    }
                }
                Err(e) => {
                    drop(free);
                    if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::error!(error = %e, "cannot claim jobs; retrying");
                        last_error_log = Some(Instant::now());
                    }
                    tokio::select! {
                        () = tokio::time::sleep(self.poll_interval.max(Duration::from_secs(1))) => {}
                        () = stop.cancelled() => break,
                    }
                }
            }
        }
        self.drain(tasks, in_flight).await;
    }

    /// Runs a claimed job as a task holding `permit` until it ends.
    fn spawn(
        &self,
        tasks: &mut JoinSet<()>,
        in_flight: &InFlight,
        queue: ArqQueue,
        claimed: ClaimedJob,
        permit: OwnedSemaphorePermit,
    ) {
        let jobs = self.jobs.clone();
        let settings = self.queue_settings.clone();
        let q = queue.clone();
        let arq_id = claimed.job_id.clone();
        let handle = tasks.spawn(async move {
            jobs.metrics().in_flight.inc();
            handle(jobs.as_ref(), &q, claimed, &settings).await;
            jobs.metrics().in_flight.dec();
            drop(permit);
        });
        in_flight
            .lock()
            .expect("in-flight lock")
            .insert(handle.id(), (queue, arq_id));
    }

    fn reaped(
        &self,
        in_flight: &InFlight,
        res: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
    ) {
        let id = match &res {
            Ok((id, ())) => *id,
            Err(e) => e.id(),
        };
        let entry = in_flight.lock().expect("in-flight lock").remove(&id);
        if let Err(e) = res {
            if e.is_panic() {
                tracing::error!(job = ?entry.map(|(_, j)| j), "job task panicked; it stays claimable");
            }
        }
    }

    /// Claims up to `want` jobs, from the queues in order, each queue with its own cursor.
    async fn claim_any(
        &self,
        cursors: &mut [ClaimCursor],
        want: usize,
    ) -> Result<Vec<(ArqQueue, ClaimedJob)>, QueueError> {
        let mut claimed = Vec::new();
        for (q, cursor) in self.queues.iter().zip(cursors) {
            let left = want - claimed.len();
            let jobs = q
                .claim_batch(now_ms(), &self.queue_settings, cursor, left)
                .await?;
            claimed.extend(jobs.into_iter().map(|j| (q.clone(), j)));
            if claimed.len() == want {
                break;
            }
        }
        Ok(claimed)
    }

    async fn drain(&self, mut tasks: JoinSet<()>, in_flight: InFlight) {
        let running = tasks.len();
        if running == 0 {
            tracing::info!("stopped claiming; no job running");
            return;
        }
        tracing::info!(
            running,
            grace_s = self.shutdown_grace.as_secs_f64(),
            "stopped claiming; letting running jobs finish"
        );
        let deadline = tokio::time::Instant::now() + self.shutdown_grace;
        loop {
            match tokio::time::timeout_at(deadline, tasks.join_next_with_id()).await {
                Ok(Some(res)) => self.reaped(&in_flight, res),
                Ok(None) => {
                    tracing::info!("all running jobs finished");
                    return;
                }
                Err(_) => break,
            }
        }
        tasks.abort_all();
        while let Some(res) = tasks.join_next_with_id().await {
            self.reaped_after_abort(&in_flight, res).await;
        }
    }

    /// A job cut off by the end of the grace period: give it back to the queue (its in-progress
    /// key goes, it stays queued) so another worker runs it now rather than after the key expires.
    async fn reaped_after_abort(
        &self,
        in_flight: &InFlight,
        res: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
    ) {
        let id = match &res {
            Ok((id, ())) => *id,
            Err(e) => e.id(),
        };
        let entry = in_flight.lock().expect("in-flight lock").remove(&id);
        if res.is_ok() {
            return;
        }
        if let Some((queue, job_id)) = entry {
            match queue.release(&job_id, 0).await {
                Ok(()) => tracing::warn!(job_id, "grace period over: job handed back to the queue"),
                Err(e) => tracing::warn!(job_id, error = %e,
                    "grace period over: could not hand the job back; it is re-run when its in-progress key expires"),
            }
        }
    }
}

fn status_dict(status: &str) -> PickleValue {
    let mut d = BTreeMap::new();
    d.insert(
        HashableValue::String("status".into()),
        PickleValue::String(status.into()),
    );
    PickleValue::Dict(d)
}

/// Why a claimed ARQ job cannot run at all (pure); when it can, its dedup2d job id and record.
fn unrunnable(
    claimed: &ClaimedJob,
    settings: &QueueSettings,
) -> Result<(String, JobRecord), String> {
    let record = match &claimed.record {
        ClaimedRecord::Found(r) => r,
        ClaimedRecord::Expired => return Err("job expired".into()),
        ClaimedRecord::Undecodable(problem) => return Err(problem.to_string()),
    };
    if record.function != FUNCTION_NAME {
        return Err(format!("function {:?} not found", record.function));
    }
    let Some(job_id) = record.first_str_arg() else {
        return Err(format!(
            "{FUNCTION_NAME} expects the job id as its argument"
        ));
    };
    if settings.exceeded(claimed.job_try) {
        // ARQ would fail only its own record and leave the dedup2d job in progress forever.
        return Err(format!(
            "gave up after {} tries (the workers running it stopped before it finished)",
            settings.max_tries
        ));
    }
    Ok((job_id.to_string(), record.clone()))
}

/// Runs one claimed ARQ job and finishes it in the queue. A job that cannot run fails at once,
/// both in ARQ and in the dedup2d job hash (the API enqueues a job under its own id).
async fn handle(
    jobs: &dyn JobRunner,
    queue: &ArqQueue,
    claimed: ClaimedJob,
    settings: &QueueSettings,
) {
    let start_ms = now_ms();
    let started = Instant::now();
    let (job_id, record) = match unrunnable(&claimed, settings) {
        Ok(runnable) => runnable,
        Err(reason) => {
            // The job of that ARQ id, whatever the record's arguments claim.
            let end = match jobs.fail_unrunnable(&claimed.job_id, &reason).await {
                Ok(end) => end,
                Err(e) => {
                    tracing::error!(job_id = claimed.job_id, error = %e, "cannot record a job's final status; it stays claimable");
                    return;
                }
            };
            jobs.metrics()
                .count_job(end.label(), started.elapsed().as_secs_f64());
            return arq_fail(queue, &claimed, &reason, settings).await;
        }
    };
    let span = tracing::info_span!("job", job_id = %job_id, queue = queue.name(), job_try = claimed.job_try);
    let end = match tracing::Instrument::instrument(jobs.run(&job_id), span.clone()).await {
        Ok(end) => end,
        Err(e) => {
            tracing::error!(job_id, error = %e, "cannot record a job's state; it stays claimable");
            return;
        }
    };
    let label = end.label();
    jobs.metrics()
        .count_job(label, started.elapsed().as_secs_f64());
    tracing::info!(parent: &span, status = label, elapsed_ms = started.elapsed().as_millis() as u64, "job finished");
    let result = ResultRecord {
        job: record,
        job_try: claimed.job_try,
        outcome: Outcome::Success(status_dict(label)),
        start_ms,
        finish_ms: now_ms(),
        queue_name: queue.name().to_string(),
        job_id: claimed.job_id,
    };
    if let Err(e) = queue.complete(&result, settings).await {
        tracing::error!(parent: &span, error = %e,
            "cannot finish the ARQ job; it re-runs after its in-progress key expires (harmless: the job is finished)");
    }
}

async fn arq_fail(queue: &ArqQueue, claimed: &ClaimedJob, message: &str, settings: &QueueSettings) {
    tracing::warn!(arq_job = %claimed.job_id, message, "failing ARQ job");
    if let Err(e) = queue.fail(claimed, message, now_ms(), settings).await {
        tracing::error!(arq_job = %claimed.job_id, error = %e, "cannot fail the ARQ job");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::queue::RecordProblem;

    fn claimed(record: ClaimedRecord, job_try: i64) -> ClaimedJob {
        ClaimedJob {
            job_id: "j1".into(),
            record,
            job_try,
            score: 0,
        }
    }

    #[test]
    fn what_cannot_run_is_decided_from_the_claim_alone() {
        let settings = QueueSettings::for_job_timeout(30);
        let ok = JobRecord::dedup2d("j1", 1);
        let runnable = unrunnable(&claimed(ClaimedRecord::Found(ok.clone()), 1), &settings);
        assert_eq!(runnable.unwrap().0, "j1");
        let forged = JobRecord {
            job_try: Some(999),
            ..ok.clone()
        };
        assert!(
            unrunnable(&claimed(ClaimedRecord::Found(forged), 1), &settings).is_ok(),
            "a try number in the record is not a real attempt"
        );
        let other = JobRecord {
            function: "other".into(),
            ..ok.clone()
        };
        let cases = [
            (claimed(ClaimedRecord::Expired, 1), "job expired"),
            (
                claimed(
                    ClaimedRecord::Undecodable(RecordProblem::WrongType("hash".into())),
                    1,
                ),
                "holds a Redis hash",
            ),
            (
                claimed(ClaimedRecord::Found(other), 1),
                "function \"other\" not found",
            ),
            (
                claimed(
                    ClaimedRecord::Found(JobRecord {
                        args: vec![],
                        ..ok.clone()
                    }),
                    1,
                ),
                "expects the job id",
            ),
            (
                claimed(ClaimedRecord::Found(ok), 6),
                "gave up after 5 tries",
            ),
        ];
        for (c, want) in cases {
            let why = unrunnable(&c, &settings).unwrap_err();
            assert!(why.contains(want), "{why:?} lacks {want:?}");
        }
    }
}
