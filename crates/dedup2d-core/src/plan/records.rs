//! Record-then-act: every field the rollout writes is recorded in status (its previous value and the
//! value about to be written) before the write, confirmed once seen, and watched for other writers.
//!
//! The previous values are also kept on the target objects themselves (the `dedup2d.io/originals`
//! annotation), written after the status record and before the first write to the object, so they
//! survive the rollout's deletion: a new rollout adopts an entry found there as its previous value.
//! Once they are no longer needed (the rollout `Completed`, or a full rollback put them back) the
//! rollout removes the entries it holds, so the next upgrade records fresh originals. A superseded
//! rollout leaves them to the newer one.

use std::collections::BTreeMap;

use super::{field_id, Action, EventKind, EventReason, Planner, Spec, Step, TargetObject};
use crate::{
    crd::{FieldRecord, Phase, RollbackLevel, PAYLOAD_CONFIG_ANNOTATION},
    snapshot::{Observed, Originals, KEY_INCLUDE_B64, KEY_MAX_BYTES},
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
        let recorded = self.record_fields(wants);
        if self.in_place(wants) {
            Ok(true)
        } else if recorded {
            Err(Step::Recorded)
        } else if let Some(action) = self.record_originals(wants) {
            Err(Step::Act(action))
        } else {
            Ok(false)
        }
    }

    /// Record the intent for `wants` (a new field with its previous value, or a new intended
    /// value); `true` when the records changed, so they must be persisted before any write. A step
    /// may record fields it writes only later, to persist them with a write it makes anyway.
    pub(super) fn record_fields(&mut self, wants: &[(String, String)]) -> bool {
        let mut recorded = false;
        for (field, desired) in wants {
            let in_place = self.holds(field, desired);
            match self.st.fields.iter().position(|r| &r.field == field) {
                None => {
                    let current = self.world.get(field).cloned().flatten();
                    let previous = self.adopt_original(field, current);
                    self.st.fields.push(FieldRecord {
                        field: field.clone(),
                        previous,
                        written: desired.clone(),
                        confirmed: in_place,
                    });
                    recorded = true;
                }
                Some(i) => {
                    let r = &mut self.st.fields[i];
                    if &r.written != desired {
                        r.written.clone_from(desired);
                        r.confirmed = in_place;
                        recorded = true;
                    }
                }
            }
        }
        recorded
    }

    /// Record `wants` ahead of the writes a step makes one after another (one status write for
    /// all of them): `Err(Step::Recorded)` when the new records must be persisted first.
    pub(super) fn record_ahead(&mut self, wants: &[(String, String)]) -> Result<(), Step> {
        if self.record_fields(wants) && !self.in_place(wants) {
            return Err(Step::Recorded);
        }
        Ok(())
    }

    /// Every field of `wants` holds its desired value in the world.
    pub(super) fn in_place(&self, wants: &[(String, String)]) -> bool {
        wants
            .iter()
            .all(|(field, desired)| self.holds(field, desired))
    }

    pub(super) fn holds(&self, field: &str, desired: &str) -> bool {
        self.world
            .get(field)
            .is_some_and(|v| v.as_deref() == Some(desired))
    }

    /// The previous value of a field recorded for the first time: the entry of the object's
    /// `dedup2d.io/originals` annotation when there is one (a rollout deleted half-way left it),
    /// else the current value.
    fn adopt_original(&mut self, field: &str, current: Option<String>) -> Option<String> {
        let Some(original) = self.original_on_target(field) else {
            return current;
        };
        if original != current {
            let shown =
                |v: &Option<String>| v.as_deref().map_or("absent".into(), |v| format!("{v:?}"));
            self.event(
                EventKind::Normal,
                EventReason::OriginalAdopted,
                &format!(
                    "{field}: previous value {} adopted from the target's originals annotation (it is now {})",
                    shown(&original),
                    shown(&current)
                ),
            );
        }
        original
    }

    /// The entry for `field` in its object's originals annotation (`Some(None)`: it was absent).
    pub(super) fn original_on_target(&self, field: &str) -> Option<Option<String>> {
        field_id::object(field)
            .and_then(|t| self.observed_originals(&t))
            .and_then(|o| o.get(field).cloned())
    }

    /// Some target carries an originals annotation entry (an earlier rollout changed it).
    pub(super) fn targets_carry_originals(&self) -> bool {
        self.obs
            .workers
            .values()
            .chain(self.obs.api.as_ref())
            .any(|d| !d.originals.is_empty())
            || self
                .obs
                .config
                .as_ref()
                .is_some_and(|c| !c.originals.is_empty())
    }

    /// The annotation entries of a target object, keeping only those naming one of its own fields
    /// (`None`: the object was not observed).
    fn observed_originals(&self, t: &TargetObject) -> Option<Originals> {
        let found = match t {
            TargetObject::Deployment(name) => self
                .obs
                .workers
                .get(name)
                .or(self.obs.api.as_ref().filter(|a| &a.name == name))
                .map(|d| &d.originals),
            TargetObject::ConfigMap(name) if name == &self.spec.api.config_map => {
                self.obs.config.as_ref().map(|c| &c.originals)
            }
            TargetObject::ConfigMap(_) => None,
        }?;
        Some(
            found
                .iter()
                .filter(|(f, _)| field_id::object(f).as_ref() == Some(t))
                .map(|(f, v)| (f.clone(), v.clone()))
                .collect(),
        )
    }

    /// What the object's annotation should hold: what it holds, plus this rollout's previous values
    /// (an entry already there is the older original and stays), or, when releasing, minus the
    /// entries that are this rollout's previous values and that `release` lets go.
    fn originals_wanted(&self, t: &TargetObject, release: Option<Release>) -> Option<Originals> {
        let mut wanted = self.observed_originals(t)?;
        let mine = self
            .st
            .fields
            .iter()
            .filter(|r| field_id::object(&r.field).as_ref() == Some(t));
        for r in mine {
            let Some(release) = release else {
                wanted
                    .entry(r.field.clone())
                    .or_insert_with(|| r.previous.clone());
                continue;
            };
            let back = self.world.get(&r.field) == Some(&r.previous);
            let lets_go = release == Release::All || back;
            if lets_go && wanted.get(&r.field) == Some(&r.previous) {
                wanted.remove(&r.field);
            }
        }
        Some(wanted)
    }

    /// The annotation write that must come before writing `wants` (one object at a time).
    fn record_originals(&self, wants: &[(String, String)]) -> Option<Action> {
        wants
            .iter()
            .filter_map(|(f, _)| field_id::object(f))
            .find_map(|t| self.originals_update(t, None))
    }

    /// In a terminal phase: the annotation write that removes entries this rollout no longer needs.
    pub(super) fn release_originals(&self) -> Option<Action> {
        let full_rollback = self
            .st
            .rollback
            .as_ref()
            .is_some_and(|r| r.level == RollbackLevel::Full);
        let release = match self.phase {
            Phase::Completed => Release::All,
            Phase::RolledBack if full_rollback => Release::PutBack,
            _ => return None,
        };
        if !self.obs.superseded_by.is_empty() {
            return None;
        }
        let spec = self.spec;
        spec.workers
            .iter()
            .map(|w| TargetObject::Deployment(w.deployment.clone()))
            .chain([
                TargetObject::Deployment(spec.api.deployment.clone()),
                TargetObject::ConfigMap(spec.api.config_map.clone()),
            ])
            .find_map(|t| self.originals_update(t, Some(release)))
    }

    fn originals_update(&self, target: TargetObject, release: Option<Release>) -> Option<Action> {
        let wanted = self.originals_wanted(&target, release)?;
        (Some(&wanted) != self.observed_originals(&target).as_ref()).then_some(
            Action::SetOriginals {
                target,
                values: wanted,
            },
        )
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

/// Which of its entries a finished rollout removes from the targets' originals annotations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Release {
    /// `Completed`: all of them; what it leaves is the original of the next upgrade.
    All,
    /// A full rollback: those whose field holds its original again (the images). The others
    /// (the ConfigMap keys, the API's restart annotation) still differ and keep their entry.
    PutBack,
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
