//! Validation of documents against the repository's JSON Schemas (`docs/schemas/`) with the
//! reference Python `jsonschema` (`tests/peers/validate_schema.py`).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

pub const SEARCH_RESULT: &str = "dedup2d-search-result.schema.json";
pub const JOB_RESPONSE: &str = "dedup2d-job-response.schema.json";

/// The validator's complaints about `docs` under `schema` (empty when all are valid).
pub fn violations(schema: &str, docs: &[Value]) -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/schemas");
    let mut child = Command::new(super::peers::python())
        .arg(super::peers::peer("validate_schema.py"))
        .arg(&dir)
        .arg(schema)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run validate_schema.py");
    {
        let mut stdin = child.stdin.take().unwrap();
        for d in docs {
            writeln!(stdin, "{d}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || stderr.is_empty(),
        "validate_schema.py crashed: {stderr}"
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Panics, listing the violations, unless every document is valid.
pub fn assert_valid(schema: &str, docs: &[Value]) {
    let v = violations(schema, docs);
    assert!(v.is_empty(), "documents violate {schema}:\n{v}\n{docs:#?}");
}
