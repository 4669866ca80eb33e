//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several operator replicas only one
//! acts. `kube-lease-manager` acquires and renews the Lease; on top of it this module watches the Lease
//! itself and stops leading *at once* when the Lease shows another holder, and on its own clock when
//! the Lease could not be renewed in time (API server unreachable): a replica leads only while the
//! Lease names it and `renewTime + leaseDurationSeconds - grace/2` lies in the future.
//!
//! How the controller uses it:
//! ```text
//! let identity = std::env::var("POD_NAME").or_else(|_| std::env::var("HOSTNAME"))?;
//! let leadership = LeaderElector::new(client.clone(), &ns, "dedup2d-operator", identity).start().await?;
//! loop { match leadership.run_while_leader(run_controller(..)).await {      // waits until leading,
//!     Ok(_) => break, Err(LeaderError::Lost { .. }) => continue, Err(e) => return Err(e) } } // dropped on loss
//! leadership.release().await?;   // on shutdown, so a standby takes over without waiting for expiry
//! ```

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Default Lease duration: a standby takes over at most this long after the leader vanished.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// Default grace: the leader renews this long before the Lease expires.
pub const DEFAULT_RENEW_GRACE: Duration = Duration::from_secs(5);

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("invalid leader election timing: {0}")]
    Timing(String),
    #[error("cannot set up the leader Lease {namespace}/{name}: {source}")]
    Setup {
        namespace: String,
        name: String,
        #[source]
        source: LeaseManagerError,
    },
    #[error("leader election on Lease {namespace}/{name} failed: {source}")]
    Manager {
        namespace: String,
        name: String,
        #[source]
        source: LeaseManagerError,
    },
    #[error("{identity} lost the leader Lease {namespace}/{name}")]
    Lost {
        namespace: String,
        name: String,
        identity: String,
    },
    #[error("leader election on Lease {namespace}/{name} has stopped")]
    Stopped { namespace: String, name: String },
}

/// Configures leader election on one Lease for one identity.
pub struct LeaderElector {
    client: Client,
    namespace: String,
    lease_name: String,
    identity: String,
    duration: Duration,
    grace: Duration,
}

impl LeaderElector {
    /// An elector for `identity` (unique per replica, e.g. the pod name) on Lease `namespace/lease_name`.
    pub fn new(
        client: Client,
        namespace: impl Into<String>,
        lease_name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        LeaderElector {
            client,
            namespace: namespace.into(),
            lease_name: lease_name.into(),
            identity: identity.into(),
            duration: DEFAULT_LEASE_DURATION,
            grace: DEFAULT_RENEW_GRACE,
        }
    }

    /// Lease duration and renew grace, whole seconds, `0 < grace < duration`.
    pub fn with_timing(mut self, duration: Duration, grace: Duration) -> Result<Self, LeaderError> {
        let (d, g) = (duration.as_secs(), grace.as_secs());
        if duration.subsec_nanos() != 0 || grace.subsec_nanos() != 0 {
            return Err(LeaderError::Timing(format!(
                "lease duration ({duration:?}) and renew grace ({grace:?}) must be whole seconds"
            )));
        }
        if d == 0 || g == 0 || g >= d {
            return Err(LeaderError::Timing(format!(
                "need 0 < renew grace ({g}s) < lease duration ({d}s)"
            )));
        }
        self.duration = duration;
        self.grace = grace;
        Ok(self)
    }

    /// Creates the Lease if needed and starts competing for it in a background task.
    pub async fn start(self) -> Result<Leadership, LeaderError> {
        let manager = LeaseManagerBuilder::new(self.client.clone(), &self.lease_name)
            .with_namespace(&self.namespace)
            .with_identity(&self.identity)
            .with_duration(self.duration.as_secs())
            .with_grace(self.grace.as_secs())
            .build()
            .await
            .map_err(|source| LeaderError::Setup {
                namespace: self.namespace.clone(),
                name: self.lease_name.clone(),
                source,
            })?;
        let (out_tx, out_rx) = watch::channel(false);
        let (stop_tx, stop_rx) = oneshot::channel();
        let lease = LeaseRef {
            namespace: self.namespace.clone(),
            name: self.lease_name.clone(),
        };
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), &self.namespace);
        let task = tokio::spawn(supervise(
            manager,
            leases,
            lease.clone(),
            self.identity.clone(),
            self.grace,
            out_tx,
            stop_rx,
        ));
        Ok(Leadership {
            leading: out_rx,
            stop: Some(stop_tx),
            task: Some(task),
            lease,
            identity: self.identity,
        })
    }
}

#[derive(Clone)]
struct LeaseRef {
    namespace: String,
    name: String,
}

/// A running election. Dropping it stops competing and releases the Lease (in the background);
/// [`Leadership::release`] does the same and waits for it.
pub struct Leadership {
    leading: watch::Receiver<bool>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), LeaderError>>>,
    lease: LeaseRef,
    identity: String,
}

impl Leadership {
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Whether this replica leads right now.
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// A receiver of the leading flag (`true` while leading); it is `false` once the election stops.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    fn stopped(&self) -> LeaderError {
        LeaderError::Stopped {
            namespace: self.lease.namespace.clone(),
            name: self.lease.name.clone(),
        }
    }

    /// Waits until this replica leads.
    pub async fn wait_until_leader(&self) -> Result<(), LeaderError> {
        let mut rx = self.leading.clone();
        rx.wait_for(|l| *l).await.map_err(|_| self.stopped())?;
        Ok(())
    }

    /// Waits until this replica leads, then runs `fut` while it leads. The moment leadership is lost
    /// `fut` is dropped (cancelled at its current `.await`) and [`LeaderError::Lost`] is returned.
    pub async fn run_while_leader<F: Future>(&self, fut: F) -> Result<F::Output, LeaderError> {
        self.wait_until_leader().await?;
        let mut rx = self.leading.clone();
        tokio::select! {
            biased;
            _ = rx.wait_for(|l| !*l) => Err(LeaderError::Lost {
                namespace: self.lease.namespace.clone(),
                name: self.lease.name.clone(),
                identity: self.identity.clone(),
            }),
            out = fut => Ok(out),
        }
    }

    /// Stops leading (the flag turns `false` first), releases the Lease and waits for that.
    pub async fn release(mut self) -> Result<(), LeaderError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(|_| self.stopped())?,
            None => Ok(()),
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        // Dropping the stop sender ends the supervisor, which releases the Lease.
        self.stop.take();
    }
}

/// Until when `identity` may act according to `lease`: `renewTime + duration - grace/2` if the
/// Lease names it as holder, else `None`.
pub fn lease_valid_until(lease: &Lease, identity: &str, grace: Duration) -> Option<Timestamp> {
    let spec = lease.spec.as_ref()?;
    if spec.holder_identity.as_deref() != Some(identity) {
        return None;
    }
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?.0;
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds?));
    let margin = SignedDuration::try_from(grace / 2).ok()?;
    renewed.checked_add(duration - margin).ok()
}

/// Whether to act: the lease manager says we hold the Lease, and the Lease object agrees and is fresh.
pub fn leading(manager_says_leader: bool, valid_until: Option<Timestamp>, now: Timestamp) -> bool {
    manager_says_leader && valid_until.is_some_and(|t| now < t)
}

async fn supervise(
    manager: kube_lease_manager::LeaseManager,
    leases: Api<Lease>,
    lease: LeaseRef,
    identity: String,
    grace: Duration,
    out: watch::Sender<bool>,
    mut stop: oneshot::Receiver<()>,
) -> Result<(), LeaderError> {
    let (mut manager_rx, manager_task) = manager.watch().await;
    let mut events = watcher(
        leases,
        watcher::Config::default().fields(&format!("metadata.name={}", lease.name)),
    )
    .default_backoff()
    .boxed();
    let mut manager_leader = *manager_rx.borrow_and_update();
    let mut valid_until: Option<Timestamp> = None;
    let mut manager_gone = false;
    loop {
        let now = Timestamp::now();
        let lead = leading(manager_leader, valid_until, now);
        if out.send_if_modified(|v| std::mem::replace(v, lead) != lead) {
            tracing::info!(lease = %lease.name, namespace = %lease.namespace, %identity, leading = lead, "leadership changed");
        }
        // Wake up when the current Lease term runs out, to step down on our own clock.
        let wake = match valid_until {
            Some(t) if lead => Duration::try_from(t.duration_since(now)).unwrap_or(Duration::ZERO),
            _ => Duration::from_secs(3600),
        };
        tokio::select! {
            biased;
            _ = &mut stop => break,
            changed = manager_rx.changed(), if !manager_gone => match changed {
                Ok(()) => manager_leader = *manager_rx.borrow_and_update(),
                Err(_) => {
                    manager_gone = true;
                    manager_leader = false;
                }
            },
            event = events.next() => match event {
                Some(Ok(Event::Apply(l) | Event::InitApply(l))) => {
                    valid_until = lease_valid_until(&l, &identity, grace);
                }
                Some(Ok(Event::Delete(_))) => valid_until = None,
                Some(Ok(Event::Init | Event::InitDone)) => {}
                Some(Err(e)) => {
                    tracing::warn!(lease = %lease.name, namespace = %lease.namespace, error = %e, "watching the leader Lease failed; keeping the last known term");
                }
                None => valid_until = None,
            },
            _ = tokio::time::sleep(wake) => {}
        }
        if manager_gone {
            break;
        }
    }
    // Stop acting first, then let the manager release the Lease (it does when its channel closes).
    out.send_replace(false);
    drop(manager_rx);
    match manager_task.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(source)) => Err(LeaderError::Manager {
            namespace: lease.namespace,
            name: lease.name,
            source,
        }),
        Err(_) => Err(LeaderError::Stopped {
            namespace: lease.namespace,
            name: lease.name,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn lease(holder: Option<&str>, renewed: Option<Timestamp>, secs: Option<i32>) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(Into::into),
                renew_time: renewed.map(MicroTime),
                lease_duration_seconds: secs,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_term_ends_half_a_grace_before_the_lease_expires() {
        let t0 = Timestamp::from_second(1_000_000).unwrap();
        let l = lease(Some("a"), Some(t0), Some(15));
        let until = lease_valid_until(&l, "a", Duration::from_secs(4)).unwrap();
        assert_eq!(until, Timestamp::from_second(1_000_013).unwrap());
    }

    #[test]
    fn no_term_for_another_holder_or_an_incomplete_lease() {
        let t0 = Timestamp::from_second(1_000_000).unwrap();
        let g = Duration::from_secs(2);
        assert_eq!(
            lease_valid_until(&lease(Some("b"), Some(t0), Some(15)), "a", g),
            None
        );
        assert_eq!(
            lease_valid_until(&lease(None, Some(t0), Some(15)), "a", g),
            None
        );
        assert_eq!(
            lease_valid_until(&lease(Some("a"), None, Some(15)), "a", g),
            None
        );
        assert_eq!(
            lease_valid_until(&lease(Some("a"), Some(t0), None), "a", g),
            None
        );
        assert_eq!(lease_valid_until(&Lease::default(), "a", g), None);
    }

    #[test]
    fn leading_needs_the_manager_and_a_fresh_term() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let later = Timestamp::from_second(1_000_005).unwrap();
        let earlier = Timestamp::from_second(999_999).unwrap();
        assert!(leading(true, Some(later), now));
        assert!(!leading(false, Some(later), now), "manager says no");
        assert!(!leading(true, Some(earlier), now), "term ran out");
        assert!(!leading(true, Some(now), now), "term ends now");
        assert!(!leading(true, None, now), "lease names someone else");
    }

    #[test]
    fn timing_is_validated_instead_of_panicking() {
        let client = || {
            // A client is needed only to build the elector; it is never used here.
            let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
            Client::try_from(config).unwrap()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let e = |d, g| {
                LeaderElector::new(client(), "ns", "l", "me")
                    .with_timing(Duration::from_secs(d), Duration::from_secs(g))
            };
            assert!(e(15, 5).is_ok());
            for (d, g) in [(0, 0), (5, 0), (5, 5), (5, 6)] {
                let err = e(d, g).err().expect("rejected");
                assert!(err.to_string().contains("renew grace"), "{err}");
            }
            let err = LeaderElector::new(client(), "ns", "l", "me")
                .with_timing(Duration::from_millis(1500), Duration::from_secs(1))
                .err()
                .unwrap();
            assert!(err.to_string().contains("whole seconds"), "{err}");
        });
    }
}
