//! Record-then-act: every field the rollout writes is recorded in status (its previous value and the
//! value about to be written) before the write, confirmed once seen, and watched for other writers.

use std::collections::BTreeMap;

use super::{field_id, Planner, Spec, Step};
use crate::{
    crd::{FieldRecord, PAYLOAD_CONFIG_ANNOTATION},
    snapshot::{Observed, KEY_INCLUDE_B64, KEY_MAX_BYTES},
};

impl Planner<'_> {
    /// Mark records whose written value is now seen in the world as confirmed.
    pub(super) fn confirm_records(&mut self) {
        for r in &mut self.st.fields {
            if !r.confirmed
                && self
                    .world
                    .get(&r.field)
                    .is_some_and(|v| v.as_deref() == Some(r.written.as_str()))
            {
                r.confirmed = true;
            }
        }
    }

    /// Record (if needed) and compare fields the step wants to hold `desired`.
    /// `Ok(true)`: all in place; `Ok(false)`: the write may go ahead; `Err(Step::Recorded)`: persist first.
    ///
    /// Record the intent for `wants` before any of them is written. Any change to the records
    /// (a new field, a new intended value) is persisted on its own before a write of the same
    /// action follows, even for a field already in place: the action writes every field it
    /// carries, so each one must already be recorded with that value (invariant 5).
    pub(super) fn ensure_fields(&mut self, wants: &[(String, String)]) -> Result<bool, Step> {
        let mut recorded = false;
        let mut all_in_place = true;
        for (field, desired) in wants {
            let current = self.world.get(field).cloned().flatten();
            let in_place = current.as_deref() == Some(desired.as_str());
            all_in_place &= in_place;
            match self.st.fields.iter_mut().find(|r| &r.field == field) {
                None => {
                    self.st.fields.push(FieldRecord {
                        field: field.clone(),
                        previous: current,
                        written: desired.clone(),
                        confirmed: in_place,
                    });
                    recorded = true;
                }
                Some(r) if &r.written != desired => {
                    r.written.clone_from(desired);
                    r.confirmed = in_place;
                    recorded = true;
                }
                Some(_) => {}
            }
        }
        if all_in_place {
            Ok(true)
        } else if recorded {
            Err(Step::Recorded)
        } else {
            Ok(false)
        }
    }

    pub(super) fn record(&self, field: &str) -> Option<&FieldRecord> {
        self.st.fields.iter().find(|r| r.field == field)
    }

    /// A field the operator set and saw in place now holds another value.
    pub(super) fn external_modification(&self) -> Option<String> {
        for r in self.st.fields.iter().filter(|r| r.confirmed) {
            let Some(now) = self.world.get(&r.field) else {
                continue;
            };
            if now.as_deref() != Some(r.written.as_str()) {
                let manager = self
                    .obs
                    .workers
                    .values()
                    .chain(self.obs.api.as_ref())
                    .find_map(|d| d.managers.get(&r.field))
                    .map(|m| format!(" by {m}"))
                    .unwrap_or_default();
                return Some(format!(
                    "{} was changed{manager} to {} (the operator set {:?})",
                    r.field,
                    now.as_deref()
                        .map_or_else(|| "nothing".into(), |v| format!("{v:?}")),
                    r.written
                ));
            }
        }
        None
    }
}

/// Current values of every field the rollout may write, by field id.
pub(super) fn world_values(spec: &Spec, obs: &Observed) -> BTreeMap<String, Option<String>> {
    let mut m = BTreeMap::new();
    for d in obs.workers.values().chain(obs.api.as_ref()) {
        for (c, image) in &d.containers {
            m.insert(field_id::image(&d.name, c), Some(image.clone()));
        }
    }
    if let Some(api) = &obs.api {
        m.insert(
            field_id::restart_annotation(&api.name),
            api.template_annotations
                .get(PAYLOAD_CONFIG_ANNOTATION)
                .cloned(),
        );
    }
    if let Some(c) = &obs.config {
        let cm = &spec.api.config_map;
        m.insert(
            field_id::config_key(cm, KEY_INCLUDE_B64),
            c.include_b64.clone(),
        );
        m.insert(field_id::config_key(cm, KEY_MAX_BYTES), c.max_bytes.clone());
    }
    m
}
