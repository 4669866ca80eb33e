//! Turning a job's payload into the bytes to search: `file_ref` first, else `file_bytes_b64`
//! (counted as a legacy fallback), else the contract's "Missing file_ref and file_bytes_b64"
//! failure. The payload is read field by field, so every malformed payload fails its own job
//! with a reason that names the field, instead of one opaque parse error.

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Map, Value};

use super::engine::{EngineError, SearchParams};
use crate::contract::payload::{FileRef, FileRefError, PayloadFormat};
use crate::storage::{FileStorage, StorageError};

/// The contract's message for a payload that carries no file at all.
pub const MISSING_FILE: &str = "Missing file_ref and file_bytes_b64 in job payload";

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("Missing payload in Redis (expired or never written)")]
    MissingPayload,
    #[error("payload is not valid JSON: {0}")]
    NotJson(String),
    #[error("payload must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    #[error("payload field {field} must be {expected}, got {got}")]
    FieldType {
        field: &'static str,
        expected: &'static str,
        got: &'static str,
    },
    #[error("{}", MISSING_FILE)]
    MissingFile,
    #[error("Unknown file_ref backend: {0:?} (expected \"local\" or \"s3\")")]
    UnknownBackend(String),
    #[error("file_ref is malformed: {0}")]
    MalformedRef(String),
    #[error("invalid file_ref: {0}")]
    InvalidRef(#[from] FileRefError),
    #[error("file_bytes_b64 is not valid base64: {0}")]
    BadBase64(String),
    #[error(transparent)]
    Params(#[from] EngineError),
    #[error("cannot load file_ref from {backend} storage: {source}")]
    Storage {
        backend: &'static str,
        #[source]
        source: StorageError,
    },
}

/// Where the bytes come from.
#[derive(Debug, Clone, PartialEq)]
pub enum FileSource {
    Ref(FileRef),
    Base64(String),
}

/// A payload, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct JobInput {
    pub tenant_id: Option<String>,
    pub file_name: String,
    pub content_type: String,
    pub source: FileSource,
    pub query_geom: Option<Value>,
    pub params: SearchParams,
    pub callback_url: Option<String>,
    pub format: PayloadFormat,
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn opt_str(obj: &Map<String, Value>, field: &'static str) -> Result<Option<String>, InputError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
        Some(v) => Err(InputError::FieldType {
            field,
            expected: "a string",
            got: kind(v),
        }),
    }
}

/// Parses the raw payload (`None` when the key is gone).
pub fn parse(raw: Option<&str>) -> Result<JobInput, InputError> {
    let raw = raw.ok_or(InputError::MissingPayload)?;
    let value: Value = serde_json::from_str(raw).map_err(|e| InputError::NotJson(e.to_string()))?;
    let Value::Object(obj) = value else {
        return Err(InputError::NotAnObject(kind(&value)));
    };
    let file_ref = match obj.get("file_ref") {
        None | Some(Value::Null) => None,
        Some(Value::Object(r)) => Some(parse_ref(r)?),
        Some(v) => {
            return Err(InputError::FieldType {
                field: "file_ref",
                expected: "an object",
                got: kind(v),
            })
        }
    };
    let b64 = opt_str(&obj, "file_bytes_b64")?;
    let format = PayloadFormat::from_presence(file_ref.is_some(), b64.is_some());
    let source = match (file_ref, b64) {
        (Some(r), _) => FileSource::Ref(r),
        (None, Some(b)) => FileSource::Base64(b),
        (None, None) => return Err(InputError::MissingFile),
    };
    let params = match obj.get("request_params") {
        None | Some(Value::Null) => SearchParams::default(),
        Some(Value::Object(p)) => SearchParams::from_request_params(p)?,
        Some(v) => {
            return Err(InputError::FieldType {
                field: "request_params",
                expected: "an object",
                got: kind(v),
            })
        }
    };
    let query_geom = match obj.get("query_geom") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(v) => {
            return Err(InputError::FieldType {
                field: "query_geom",
                expected: "an object",
                got: kind(v),
            })
        }
    };
    Ok(JobInput {
        tenant_id: opt_str(&obj, "tenant_id")?,
        file_name: opt_str(&obj, "file_name")?.unwrap_or_else(|| "unknown".into()),
        content_type: opt_str(&obj, "content_type")?
            .unwrap_or_else(|| "application/octet-stream".into()),
        source,
        query_geom,
        params,
        callback_url: opt_str(&obj, "callback_url")?,
        format,
    })
}

/// The upload a payload names, read leniently (only `file_ref` has to make sense), so the
/// upload of a job whose payload is otherwise malformed is still cleaned up.
pub fn file_ref_of(raw: &str) -> Option<FileRef> {
    #[derive(serde::Deserialize)]
    struct OnlyRef {
        file_ref: Option<Map<String, Value>>,
    }
    let only: OnlyRef = serde_json::from_str(raw).ok()?;
    parse_ref(&only.file_ref?).ok()
}

fn parse_ref(r: &Map<String, Value>) -> Result<FileRef, InputError> {
    let backend = match r.get("backend") {
        Some(Value::String(s)) => s.trim().to_ascii_lowercase(),
        None | Some(Value::Null) => String::new(),
        Some(v) => {
            return Err(InputError::FieldType {
                field: "file_ref.backend",
                expected: "a string",
                got: kind(v),
            })
        }
    };
    let field = |name: &'static str| -> Result<String, InputError> {
        match r.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            None | Some(Value::Null) => Ok(String::new()),
            Some(v) => Err(InputError::FieldType {
                field: name,
                expected: "a string",
                got: kind(v),
            }),
        }
    };
    let file_ref = match backend.as_str() {
        "local" => FileRef::Local {
            path: field("path")?,
        },
        "s3" => FileRef::S3 {
            bucket: field("bucket")?,
            key: field("key")?,
        },
        "" => return Err(InputError::MalformedRef("backend is missing".into())),
        other => return Err(InputError::UnknownBackend(other.to_string())),
    };
    file_ref.validate()?;
    Ok(file_ref)
}

impl JobInput {
    /// The upload this job names, if any.
    pub fn file_ref(&self) -> Option<&FileRef> {
        match &self.source {
            FileSource::Ref(r) => Some(r),
            FileSource::Base64(_) => None,
        }
    }
}

/// Reads the bytes of a checked payload.
pub async fn load_bytes(input: &JobInput, storage: &dyn FileStorage) -> Result<Bytes, InputError> {
    match &input.source {
        FileSource::Ref(r) => storage.load(r).await.map_err(|source| InputError::Storage {
            backend: r.backend(),
            source,
        }),
        FileSource::Base64(b64) => decode_b64(b64).map(Bytes::from),
    }
}

/// Standard base64 as Python's `b64decode` writes it; whitespace (line breaks) is tolerated.
fn decode_b64(s: &str) -> Result<Vec<u8>, InputError> {
    let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| InputError::BadBase64(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(v: Value) -> Result<JobInput, InputError> {
        parse(Some(&v.to_string()))
    }

    #[test]
    fn file_ref_first_then_b64() {
        let both = p(
            json!({"tenant_id":"t","file_name":"a.dxf","file_bytes_b64":"QQ==",
            "file_ref":{"backend":"local","path":"j/x_a.dxf"}}),
        )
        .unwrap();
        assert_eq!(both.format, PayloadFormat::FileRefAndB64);
        assert!(matches!(
            both.source,
            FileSource::Ref(FileRef::Local { .. })
        ));
        let b64 = p(json!({"tenant_id":"t","file_name":"a.dxf","file_bytes_b64":"QQ=="})).unwrap();
        assert_eq!(b64.source, FileSource::Base64("QQ==".into()));
        assert_eq!(b64.format, PayloadFormat::B64Only);
        assert_eq!(b64.params, SearchParams::default());
    }

    #[test]
    fn every_bad_payload_has_a_stated_reason() {
        let cases: Vec<(Option<&str>, &str)> = vec![
            (None, "Missing payload"),
            (Some("{not json"), "not valid JSON"),
            (Some("[1,2]"), "must be a JSON object, got an array"),
            (Some(r#"{"tenant_id":"t"}"#), MISSING_FILE),
            (Some(r#"{"file_bytes_b64":""}"#), MISSING_FILE),
            (
                Some(r#"{"file_ref":{"backend":"gcs","path":"x"}}"#),
                "Unknown file_ref backend: \"gcs\"",
            ),
            (Some(r#"{"file_ref":{"path":"x"}}"#), "backend is missing"),
            (
                Some(r#"{"file_ref":{"backend":"local","path":"../../etc/passwd"}}"#),
                "'..'",
            ),
            (
                Some(r#"{"file_ref":{"backend":"local","path":"/etc/passwd"}}"#),
                "absolute",
            ),
            (
                Some(r#"{"file_ref":{"backend":"s3","bucket":"","key":"k"}}"#),
                "bucket is empty",
            ),
            (
                Some(r#"{"file_ref":"j/x.dxf"}"#),
                "file_ref must be an object",
            ),
            (
                Some(r#"{"file_bytes_b64":42}"#),
                "file_bytes_b64 must be a string",
            ),
            (
                Some(r#"{"file_bytes_b64":"QQ==","request_params":[1]}"#),
                "request_params must be an object",
            ),
            (
                Some(r#"{"file_bytes_b64":"QQ==","request_params":{"max_results":0}}"#),
                "Invalid request_params",
            ),
            (
                Some(r#"{"file_bytes_b64":"QQ==","tenant_id":7}"#),
                "tenant_id must be a string",
            ),
        ];
        for (raw, want) in cases {
            let err = parse(raw).unwrap_err().to_string();
            assert!(err.contains(want), "{raw:?}: {err:?} lacks {want:?}");
        }
    }

    #[test]
    fn base64_decoding() {
        assert_eq!(decode_b64("QUJD\nREVG").unwrap(), b"ABCDEF");
        let err = decode_b64("!!not-base64!!").unwrap_err();
        assert!(err.to_string().contains("not valid base64"), "{err}");
        assert!(decode_b64("QQ=").is_err(), "bad padding");
    }
}
