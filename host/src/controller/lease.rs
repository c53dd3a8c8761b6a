//! Leader election through a `coordination.k8s.io/v1` Lease, after client-go's
//! `leaderelection` package: a candidate takes the Lease when it has none, or when the holder's
//! record has not changed for a whole lease duration *as this candidate observed it* (its own
//! monotonic clock, not the holder's timestamps, so clock skew between replicas does not
//! matter); the leader renews every retry period and steps down when it could not renew within
//! the renew deadline. Every write carries the Lease's resourceVersion, so two candidates never
//! both win.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

/// client-go's timings (its defaults: 15 s, 10 s, 2 s).
#[derive(Clone, Copy, Debug)]
pub struct LeaseTimings {
    /// How long a non-leader waits, after the last change it saw, before taking the Lease.
    pub duration: Duration,
    /// How long the leader keeps trying to renew before it steps down.
    pub renew_deadline: Duration,
    /// How often candidates try to take the Lease, and the leader renews it.
    pub retry_period: Duration,
}

impl Default for LeaseTimings {
    fn default() -> Self {
        LeaseTimings {
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl LeaseTimings {
    /// client-go's rules: duration > renew deadline > retry period (times its jitter, 1.2).
    ///
    /// # Errors
    /// A setting that breaks them.
    pub fn check(&self) -> Result<(), String> {
        if self.duration <= self.renew_deadline {
            return Err("--lease-duration must be longer than --renew-deadline".into());
        }
        if self.renew_deadline.as_secs_f64() <= 1.2 * self.retry_period.as_secs_f64() {
            return Err("--renew-deadline must be longer than 1.2 × --retry-period".into());
        }
        if self.duration.as_secs() < 1 || self.duration.subsec_nanos() != 0 {
            return Err(
                "--lease-duration must be a whole number of seconds (a Lease holds seconds)".into(),
            );
        }
        Ok(())
    }
}

/// One candidate's view of the Lease.
pub(super) struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timings: LeaseTimings,
    /// The holder's record as last seen, and when this candidate saw it change.
    observed: Option<(Option<LeaseSpec>, Instant)>,
}

fn spec_key(spec: &Option<LeaseSpec>) -> (Option<String>, Option<MicroTime>) {
    spec.as_ref().map_or((None, None), |s| {
        (s.holder_identity.clone(), s.renew_time.clone())
    })
}

impl Elector {
    pub(super) fn new(
        api: Api<Lease>,
        name: String,
        identity: String,
        timings: LeaseTimings,
    ) -> Elector {
        Elector {
            api,
            name,
            identity,
            timings,
            observed: None,
        }
    }

    /// This candidate's identity.
    pub(super) fn identity(&self) -> &str {
        &self.identity
    }

    /// The timings.
    pub(super) fn timings(&self) -> LeaseTimings {
        self.timings
    }

    fn seconds(&self) -> i32 {
        i32::try_from(self.timings.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// Take or renew the Lease once: `Ok(true)` when this candidate holds it now.
    ///
    /// # Errors
    /// The API could not be asked (a conflict is not an error: someone else wrote first).
    pub(super) async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let current = match self.api.get_opt(&self.name).await? {
            Some(l) => l,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(self.seconds()),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(l) => {
                        self.observed = Some((l.spec, Instant::now()));
                        Ok(true)
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                };
            }
        };
        // The record changed since last seen: restart the clock on it.
        let changed = self
            .observed
            .as_ref()
            .is_none_or(|(seen, _)| spec_key(seen) != spec_key(&current.spec));
        if changed {
            self.observed = Some((current.spec.clone(), Instant::now()));
        }
        let holder = current
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone())
            .filter(|h| !h.is_empty());
        let held_by_me = holder.as_deref() == Some(self.identity.as_str());
        let duration = current
            .spec
            .as_ref()
            .and_then(|s| s.lease_duration_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.timings.duration, Duration::from_secs);
        let expired = self
            .observed
            .as_ref()
            .is_none_or(|(_, at)| at.elapsed() >= duration);
        if holder.is_some() && !held_by_me && !expired {
            return Ok(false);
        }
        let mut spec = current.spec.clone().unwrap_or_default();
        if !held_by_me {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(self.seconds());
        spec.renew_time = Some(now);
        let mut lease = current;
        lease.spec = Some(spec);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(l) => {
                self.observed = Some((l.spec, Instant::now()));
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Give the Lease up (a clean stop): the next candidate takes it at its next try instead of
    /// after a whole lease duration.
    pub(super) async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
        let _ = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await;
    }
}
