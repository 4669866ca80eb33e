//! Helpers shared by the unit tests of several modules.

use std::collections::HashMap;

/// An environment or query map from `(key, value)` pairs.
pub(crate) fn string_map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
