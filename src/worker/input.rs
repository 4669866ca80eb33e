//! Turning a job's payload into the bytes to search: `file_ref` first, else `file_bytes_b64`
//! (counted as a legacy fallback), else the contract's "Missing file_ref and file_bytes_b64"
//! failure. A dual-write payload whose stored file is gone falls back to its `file_bytes_b64`.
//! The payload is read field by field, so every malformed payload fails its own job with a
//! reason that names the field, instead of one opaque parse error.
//!
//! Memory: the payload text is parsed in place. `file_bytes_b64` is borrowed from the text, not
//! copied, and decoded into the same buffer (the bytes of each chunk are written before the text
//! of the next one), so a job holds the payload once and then the file once, never the base64
//! text, a copy of it and the decoded bytes together. JSON nesting is bounded by `serde_json`'s
//! recursion limit (128).

use std::ops::Range;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::value::RawValue;
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
    #[error(
        "payload is {bytes} bytes, over DEDUP2D_WORKER_MAX_PAYLOAD_BYTES={limit}; it was not read"
    )]
    TooLarge { bytes: u64, limit: u64 },
    #[error("payload key holds a Redis {0}, not a string")]
    WrongType(String),
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
    /// The stored upload; `fallback` is the payload's `file_bytes_b64`, decoded (dual-write).
    Ref {
        file_ref: FileRef,
        fallback: Option<Result<Bytes, String>>,
    },
    /// Only `file_bytes_b64` (legacy), decoded, or why it cannot be.
    Embedded(Result<Bytes, String>),
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

/// A parsed payload and, whatever else is wrong with it, the upload it names (for cleanup).
#[derive(Debug)]
pub struct Parsed {
    pub input: Result<JobInput, InputError>,
    pub file_ref: Option<FileRef>,
}

impl Parsed {
    pub fn failed(e: InputError) -> Self {
        Parsed {
            input: Err(e),
            file_ref: None,
        }
    }
}

/// Why the bytes came from `file_bytes_b64`: the label of `dedup2d_worker_b64_fallback_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// The payload has no `file_ref` (a legacy producer).
    B64Only,
    /// The payload's stored file is gone; its `file_bytes_b64` was used (dual-write).
    StoredFileMissing,
}

impl Fallback {
    pub fn label(self) -> &'static str {
        match self {
            Fallback::B64Only => "b64_only",
            Fallback::StoredFileMissing => "stored_file_missing",
        }
    }

    /// The warning added to the job's result, when there is one.
    pub fn warning(self) -> Option<&'static str> {
        match self {
            Fallback::B64Only => None,
            Fallback::StoredFileMissing => Some("file_ref_missing:used_file_bytes_b64"),
        }
    }
}

/// The bytes of a job and, when they came from `file_bytes_b64`, why.
pub struct Loaded {
    pub data: Bytes,
    pub fallback: Option<Fallback>,
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

/// The payload's members, `file_bytes_b64` borrowed from the text.
struct Members<'a> {
    fields: Map<String, Value>,
    b64: B64Text<'a>,
}

/// Where `file_bytes_b64` is.
enum B64Text<'a> {
    Absent,
    /// The string's content is this byte range of the payload (no escapes in it).
    InPlace(Range<usize>),
    /// The string has escapes (`\n` line breaks), so it is unescaped into a copy.
    Escaped(String),
    /// Not a string.
    Other(&'a RawValue),
}

fn members(raw: &[u8]) -> Result<Members<'_>, InputError> {
    let map: Vec<(String, &RawValue)> = match serde_json::from_slice::<RawMap>(raw) {
        Ok(m) => m.0,
        Err(_) => {
            return Err(match serde_json::from_slice::<Value>(raw) {
                Ok(v) => InputError::NotAnObject(kind(&v)),
                Err(e) => InputError::NotJson(e.to_string()),
            })
        }
    };
    let mut fields = Map::new();
    let mut b64 = B64Text::Absent;
    for (name, value) in map {
        if name == "file_bytes_b64" {
            let text = value.get();
            b64 = if text == "null" {
                B64Text::Absent
            } else if !text.starts_with('"') {
                B64Text::Other(value)
            } else if text.contains('\\') {
                B64Text::Escaped(
                    serde_json::from_str(text).map_err(|e| InputError::NotJson(e.to_string()))?,
                )
            } else {
                let start = text.as_ptr() as usize - raw.as_ptr() as usize + 1;
                B64Text::InPlace(start..start + text.len() - 2)
            };
        } else {
            let v = serde_json::from_str(value.get())
                .map_err(|e| InputError::NotJson(e.to_string()))?;
            fields.insert(name, v);
        }
    }
    Ok(Members { fields, b64 })
}

/// A JSON object as its members in order, values unparsed.
struct RawMap<'a>(Vec<(String, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for RawMap<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = RawMap<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<RawMap<'de>, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, &'de RawValue>()? {
                    out.push((k, v));
                }
                Ok(RawMap(out))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// Parses the raw payload (`None` when the key is gone), consuming its buffer: the bytes of
/// `file_bytes_b64` are decoded into it.
pub fn parse(raw: Option<Vec<u8>>) -> Parsed {
    let Some(raw) = raw else {
        return Parsed::failed(InputError::MissingPayload);
    };
    let (fields, b64) = match members(&raw) {
        Ok(Members { fields, b64 }) => {
            let b64 = match b64 {
                B64Text::Absent => Ok(None),
                B64Text::InPlace(r) => Ok(Some(r)),
                B64Text::Escaped(s) => Err(Ok(s)),
                B64Text::Other(v) => Err(Err(InputError::FieldType {
                    field: "file_bytes_b64",
                    expected: "a string",
                    got: serde_json::from_str::<Value>(v.get()).map_or("a value", |v| kind(&v)),
                })),
            };
            (fields, b64)
        }
        Err(e) => return Parsed::failed(e),
    };
    let file_ref = fields
        .get("file_ref")
        .and_then(Value::as_object)
        .and_then(|r| parse_ref(r).ok());
    let embedded = match b64 {
        Ok(None) => None,
        Ok(Some(range)) => {
            let blank = raw[range.clone()].iter().all(u8::is_ascii_whitespace);
            (!blank).then(|| decode_in_place(raw, range))
        }
        Err(Ok(text)) => (!text.trim().is_empty()).then(|| decode_b64(&text)),
        Err(Err(e)) => {
            return Parsed {
                input: Err(e),
                file_ref,
            }
        }
    };
    Parsed {
        input: check(&fields, embedded),
        file_ref,
    }
}

/// The checks of every member but `file_bytes_b64`, which comes decoded (or why not).
fn check(
    obj: &Map<String, Value>,
    embedded: Option<Result<Vec<u8>, InputError>>,
) -> Result<JobInput, InputError> {
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
    let embedded = embedded.map(|r| {
        r.map(Bytes::from).map_err(|e| match e {
            InputError::BadBase64(why) => why,
            other => other.to_string(),
        })
    });
    let format = PayloadFormat::from_presence(file_ref.is_some(), embedded.is_some());
    let source = match (file_ref, embedded) {
        (Some(file_ref), fallback) => FileSource::Ref { file_ref, fallback },
        (None, Some(b)) => FileSource::Embedded(b),
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
        tenant_id: opt_str(obj, "tenant_id")?,
        file_name: opt_str(obj, "file_name")?.unwrap_or_else(|| "unknown".into()),
        content_type: opt_str(obj, "content_type")?
            .unwrap_or_else(|| "application/octet-stream".into()),
        source,
        query_geom,
        params,
        callback_url: opt_str(obj, "callback_url")?,
        format,
    })
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
            FileSource::Ref { file_ref, .. } => Some(file_ref),
            FileSource::Embedded(_) => None,
        }
    }
}

/// Reads the bytes of a checked payload: the stored file, else (only when it is gone) the
/// payload's own `file_bytes_b64`. A ref refused for safety (traversal, foreign bucket) never
/// falls back: that is an attack or a misconfiguration, not a lost file.
pub async fn load_bytes(input: &JobInput, storage: &dyn FileStorage) -> Result<Loaded, InputError> {
    let embedded = |b: &Result<Bytes, String>| b.clone().map_err(InputError::BadBase64);
    match &input.source {
        FileSource::Ref { file_ref, fallback } => match (storage.load(file_ref).await, fallback) {
            (Ok(data), _) => Ok(Loaded {
                data,
                fallback: None,
            }),
            (Err(StorageError::NotFound(_)), Some(Ok(data))) => Ok(Loaded {
                data: data.clone(),
                fallback: Some(Fallback::StoredFileMissing),
            }),
            (Err(source), _) => Err(InputError::Storage {
                backend: file_ref.backend(),
                source,
            }),
        },
        FileSource::Embedded(b) => Ok(Loaded {
            data: embedded(b)?,
            fallback: Some(Fallback::B64Only),
        }),
    }
}

/// Bytes of base64 text decoded per step; a multiple of 4, so every step but the last is whole.
const DECODE_STEP: usize = 4096;

/// Standard base64 as Python's `b64decode` writes it, whitespace tolerated, decoded into the
/// buffer that holds the text (`range`): the whitespace-free text is first moved to the front,
/// then each step's bytes are written where the text already read was.
fn decode_in_place(mut buf: Vec<u8>, range: Range<usize>) -> Result<Vec<u8>, InputError> {
    let mut n = 0;
    for i in range {
        let b = buf[i];
        if !b.is_ascii_whitespace() {
            buf[n] = b;
            n += 1;
        }
    }
    let mut step = [0u8; DECODE_STEP / 4 * 3];
    let (mut read, mut written) = (0, 0);
    while read < n {
        let end = (read + DECODE_STEP).min(n);
        let len = base64::engine::general_purpose::STANDARD
            .decode_slice(&buf[read..end], &mut step)
            .map_err(|e| InputError::BadBase64(e.to_string()))?;
        buf[written..written + len].copy_from_slice(&step[..len]);
        written += len;
        read = end;
    }
    buf.truncate(written);
    buf.shrink_to_fit();
    Ok(buf)
}

fn decode_b64(s: &str) -> Result<Vec<u8>, InputError> {
    let buf = s.as_bytes().to_vec();
    let len = buf.len();
    decode_in_place(buf, 0..len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(v: Value) -> Result<JobInput, InputError> {
        parse(Some(v.to_string().into_bytes())).input
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
            FileSource::Ref { file_ref: FileRef::Local { .. }, fallback: Some(Ok(ref b)) } if b.as_ref() == b"A"
        ));
        let b64 = p(json!({"tenant_id":"t","file_name":"a.dxf","file_bytes_b64":"QQ=="})).unwrap();
        assert_eq!(
            b64.source,
            FileSource::Embedded(Ok(Bytes::from_static(b"A")))
        );
        assert_eq!(b64.format, PayloadFormat::B64Only);
        assert_eq!(b64.params, SearchParams::default());
    }

    #[test]
    fn every_bad_payload_has_a_stated_reason() {
        let deep = format!(
            "{{\"query_geom\":{}{}}}",
            "[".repeat(5000),
            "]".repeat(5000)
        );
        let cases: Vec<(Option<&str>, &str)> = vec![
            (Some(&deep), "recursion limit exceeded"),
            (
                Some(r#"{"file_bytes_b64":"QUJD","request_params":"mode=fast"}"#),
                "request_params must be an object, got a string",
            ),
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
            let err = parse(raw.map(|r| r.as_bytes().to_vec()))
                .input
                .unwrap_err()
                .to_string();
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
