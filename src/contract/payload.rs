//! The job payload stored at `{prefix}:payload:{id}`, its `file_ref`, and the format label used by
//! metrics and by the operator's drain check.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Where a job's file lives. Serialized as `{"backend":"local","path":..}` or
/// `{"backend":"s3","bucket":..,"key":..}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum FileRef {
    Local { path: String },
    S3 { bucket: String, key: String },
}

/// Why a `file_ref` is refused before any storage is touched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileRefError {
    #[error("file_ref path is empty")]
    EmptyPath,
    #[error(
        "file_ref path {0:?} is absolute; only paths relative to the storage root are allowed"
    )]
    AbsolutePath(String),
    #[error("file_ref path {0:?} contains a '..' component")]
    ParentComponent(String),
    #[error("file_ref path {0:?} contains a NUL byte or backslash")]
    BadCharacter(String),
    #[error("file_ref bucket is empty")]
    EmptyBucket,
    #[error("file_ref key is empty")]
    EmptyKey,
}

impl FileRef {
    /// Checks the reference's shape: relative, no `..`, nothing empty. Storage backends add their
    /// own checks (root containment, configured bucket and prefix).
    pub(crate) fn validate(&self) -> Result<(), FileRefError> {
        match self {
            FileRef::Local { path } => check_relative(path, FileRefError::EmptyPath),
            FileRef::S3 { bucket, key } => {
                if bucket.trim().is_empty() {
                    return Err(FileRefError::EmptyBucket);
                }
                check_relative(key, FileRefError::EmptyKey)
            }
        }
    }

    pub(crate) fn backend(&self) -> &'static str {
        match self {
            FileRef::Local { .. } => "local",
            FileRef::S3 { .. } => "s3",
        }
    }
}

fn check_relative(path: &str, empty: FileRefError) -> Result<(), FileRefError> {
    if path.trim().is_empty() {
        return Err(empty);
    }
    if path.contains('\0') || path.contains('\\') {
        return Err(FileRefError::BadCharacter(path.to_string()));
    }
    if path.starts_with('/') {
        return Err(FileRefError::AbsolutePath(path.to_string()));
    }
    if path.split('/').any(|c| c == "..") {
        return Err(FileRefError::ParentComponent(path.to_string()));
    }
    Ok(())
}

/// A dedup2d job payload. Unknown fields are kept so a payload written by a newer producer
/// round-trips unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobPayload {
    pub tenant_id: String,
    pub file_name: String,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_ref: Option<FileRef>,
    #[serde(default)]
    pub query_geom: Option<Value>,
    #[serde(default)]
    pub request_params: Map<String, Value>,
    #[serde(default)]
    pub callback_url: Option<String>,
    #[serde(default)]
    pub render_required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_bytes_b64: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Default upper bound of an upload (`DEDUP2D_API_MAX_UPLOAD_BYTES`).
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 50 * 1024 * 1024;

/// Room for the members of a payload other than `file_bytes_b64` (names, `query_geom`,
/// `request_params`): the API caps `geom_json` below this.
pub const PAYLOAD_OVERHEAD_BYTES: u64 = 1 << 20;

/// The largest payload the API writes for an upload of `upload_bytes`: the file as base64
/// (4 bytes per 3) plus [`PAYLOAD_OVERHEAD_BYTES`]. The worker's default
/// `DEDUP2D_WORKER_MAX_PAYLOAD_BYTES` is this of the API's upload limit, so every payload our
/// API can write is read, and nothing larger is.
pub fn payload_bytes_for_upload(upload_bytes: u64) -> u64 {
    upload_bytes.div_ceil(3) * 4 + PAYLOAD_OVERHEAD_BYTES
}

/// Which file formats a payload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadFormat {
    FileRefAndB64,
    FileRefOnly,
    B64Only,
    Unknown,
}

impl PayloadFormat {
    pub(crate) fn label(self) -> &'static str {
        match self {
            PayloadFormat::FileRefAndB64 => "file_ref_and_b64",
            PayloadFormat::FileRefOnly => "file_ref_only",
            PayloadFormat::B64Only => "b64_only",
            PayloadFormat::Unknown => "unknown",
        }
    }

    pub(crate) fn from_presence(has_ref: bool, has_b64: bool) -> Self {
        match (has_ref, has_b64) {
            (true, true) => PayloadFormat::FileRefAndB64,
            (true, false) => PayloadFormat::FileRefOnly,
            (false, true) => PayloadFormat::B64Only,
            (false, false) => PayloadFormat::Unknown,
        }
    }
}

impl JobPayload {
    pub(crate) fn format(&self) -> PayloadFormat {
        PayloadFormat::from_presence(
            self.file_ref.is_some(),
            embeds_file(self.file_bytes_b64.as_deref()),
        )
    }
}

/// The one definition of "legacy": a payload embeds the file when its `file_bytes_b64` is a
/// non-empty string; only such a payload can be run by a legacy worker. The drain's Lua checks in
/// `operator::drain` implement it inside Redis, and a test runs them and [`is_legacy_payload`] on
/// one table of payloads on a real redis-server.
pub(crate) fn embeds_file(file_bytes_b64: Option<&str>) -> bool {
    file_bytes_b64.is_some_and(|s| !s.is_empty())
}

/// [`embeds_file`] on a payload as stored (JSON text, any producer, shape not trusted): a top-level
/// `file_bytes_b64` member that is a non-empty string.
pub fn is_legacy_payload(raw: &str) -> bool {
    serde_json::from_str::<Value>(raw)
        .is_ok_and(|v| embeds_file(v.get("file_bytes_b64").and_then(Value::as_str)))
}

/// Longest stored name: with the `{uuidhex}_` prefix and the local backend's temporary-file
/// affixes it stays far below the 255-byte limit of a file name.
pub const MAX_SAFE_NAME_CHARS: usize = 120;

/// The file name as stored: base name only, runs of characters outside `[A-Za-z0-9._-]` become
/// `_`, leading/trailing `._-` stripped, at most [`MAX_SAFE_NAME_CHARS`] characters (a long name
/// is cut in its stem, so its extension stays), `upload.bin` when nothing is left. The original
/// name is kept in the payload's `file_name`.
pub(crate) fn safe_file_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let mut out = String::with_capacity(base.len().min(4 * MAX_SAFE_NAME_CHARS));
    let mut in_run = false;
    for c in base.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
            out.push(c);
            in_run = false;
        } else if !in_run {
            out.push('_');
            in_run = true;
        }
    }
    let trimmed = out.trim_matches(|c| matches!(c, '.' | '_' | '-'));
    if trimmed.is_empty() {
        return "upload.bin".to_string();
    }
    if trimmed.len() <= MAX_SAFE_NAME_CHARS {
        return trimmed.to_string();
    }
    // Only ASCII is left, so byte offsets are character offsets.
    let ext = trimmed
        .rfind('.')
        .map(|i| &trimmed[i..])
        .filter(|e| e.len() <= 16)
        .unwrap_or("");
    format!("{}{ext}", &trimmed[..MAX_SAFE_NAME_CHARS - ext.len()])
}

/// DXF/DWG jobs need the render step (and go to the render queue when one is configured):
/// the Python `is_cad_file` rule (suffix, or a content type naming dxf/dwg, or `application/acad`).
pub(crate) fn render_required(file_name: &str, content_type: Option<&str>) -> bool {
    let lower = file_name.to_ascii_lowercase();
    if lower.ends_with(".dxf") || lower.ends_with(".dwg") {
        return true;
    }
    let ct = content_type.unwrap_or("").to_ascii_lowercase();
    ct.contains("dxf") || ct.contains("dwg") || ct == "application/acad"
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn file_ref_wire_shape() {
        let local: FileRef =
            serde_json::from_value(json!({"backend":"local","path":"j/x_a.dxf"})).unwrap();
        assert_eq!(
            local,
            FileRef::Local {
                path: "j/x_a.dxf".into()
            }
        );
        let s3 = FileRef::S3 {
            bucket: "b".into(),
            key: "p/j/x".into(),
        };
        assert_eq!(
            serde_json::to_value(&s3).unwrap(),
            json!({"backend":"s3","bucket":"b","key":"p/j/x"})
        );
        assert!(serde_json::from_value::<FileRef>(json!({"backend":"gcs","path":"x"})).is_err());
    }

    #[test]
    fn file_ref_validation() {
        let local = |p: &str| FileRef::Local { path: p.into() }.validate();
        assert!(local("job/abc_file.dxf").is_ok());
        assert_eq!(local(""), Err(FileRefError::EmptyPath));
        assert!(matches!(
            local("/etc/passwd"),
            Err(FileRefError::AbsolutePath(_))
        ));
        assert!(matches!(
            local("../x"),
            Err(FileRefError::ParentComponent(_))
        ));
        assert!(matches!(
            local("a/../../x"),
            Err(FileRefError::ParentComponent(_))
        ));
        assert!(matches!(
            local("a\\..\\x"),
            Err(FileRefError::BadCharacter(_))
        ));
        assert!(
            local("a/..b/c").is_ok(),
            "'..b' is a name, not a parent component"
        );
        let s3 = |b: &str, k: &str| {
            FileRef::S3 {
                bucket: b.into(),
                key: k.into(),
            }
            .validate()
        };
        assert!(s3("bucket", "dedup2d/uploads/j/x").is_ok());
        assert_eq!(s3("", "k"), Err(FileRefError::EmptyBucket));
        assert_eq!(s3("b", ""), Err(FileRefError::EmptyKey));
        assert!(matches!(
            s3("b", "p/../other"),
            Err(FileRefError::ParentComponent(_))
        ));
    }

    #[test]
    fn format_labels() {
        assert_eq!(
            PayloadFormat::from_presence(true, true).label(),
            "file_ref_and_b64"
        );
        assert_eq!(
            PayloadFormat::from_presence(true, false).label(),
            "file_ref_only"
        );
        assert_eq!(
            PayloadFormat::from_presence(false, true).label(),
            "b64_only"
        );
        assert_eq!(
            PayloadFormat::from_presence(false, false).label(),
            "unknown"
        );
        assert!(is_legacy_payload(
            r#"{"file_ref":{"backend":"local","path":"a"},"file_bytes_b64":"QQ=="}"#
        ));
        assert!(is_legacy_payload(
            r#"{"file_ref":null,"file_bytes_b64":"QQ=="}"#
        ));
        assert!(!is_legacy_payload(r#"{"file_bytes_b64":""}"#));
        assert!(!is_legacy_payload(
            r#"{"file_ref":{"backend":"local","path":"a"}}"#
        ));
        assert!(!is_legacy_payload("not json"));
    }

    #[test]
    fn payload_round_trips_with_unknown_fields() {
        let raw = json!({"tenant_id":"t","file_name":"a.dxf","content_type":"application/dxf",
            "file_ref":{"backend":"local","path":"j/a.dxf"},"query_geom":null,"request_params":{"k":1},
            "callback_url":null,"render_required":true,"file_bytes_b64":"QQ==","future_field":[1,2]});
        let p: JobPayload = serde_json::from_value(raw.clone()).unwrap();
        assert_eq!(p.format(), PayloadFormat::FileRefAndB64);
        assert_eq!(serde_json::to_value(&p).unwrap(), raw);
    }

    #[test]
    fn safe_names() {
        assert_eq!(safe_file_name("drawing.dxf"), "drawing.dxf");
        assert_eq!(safe_file_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_file_name("C:\\dir\\my file (1).dwg"), "my_file_1_.dwg");
        assert_eq!(safe_file_name("a  b##c.dxf"), "a_b_c.dxf");
        assert_eq!(safe_file_name("..."), "upload.bin");
        assert_eq!(safe_file_name(""), "upload.bin");
        assert_eq!(safe_file_name("__x__"), "x");
        assert_eq!(safe_file_name(&"a".repeat(300)).len(), MAX_SAFE_NAME_CHARS);
        let long = safe_file_name(&format!("{}.dxf", "b".repeat(10_000)));
        assert_eq!(long.len(), MAX_SAFE_NAME_CHARS);
        assert!(long.ends_with("bbb.dxf"), "{long}");
        assert_eq!(safe_file_name(&"é".repeat(500)), "upload.bin");
    }

    #[test]
    fn render_detection() {
        assert!(render_required("A.DXF", None));
        assert!(render_required("a.dwg", None));
        assert!(render_required("a.bin", Some("image/vnd.dxf")));
        assert!(!render_required("a.png", Some("image/png")));
    }
}
