//! The ARQ job and result records (`arq:job:{id}`, `arq:result:{id}`) in the pickle subset the
//! Python `arq` library writes and reads.
//!
//! Decoding uses the `serde-pickle` crate (any protocol 0–5 stream Python produces), behind
//! [`pickle_guard`](super::pickle_guard), which refuses a record too deep or too large to decode
//! safely before `serde-pickle` sees it. Encoding is
//! our own small protocol-2 writer, because ARQ failure results carry a pickled *exception*
//! object (`arq.worker.JobExecutionFailed(...)`) that `serde-pickle` cannot emit, and
//! `arq.jobs.Job.result()` re-raises it on the Python side.

use std::collections::BTreeMap;

use serde_pickle::{DeOptions, HashableValue, Value};

use super::pickle_guard::{self, PickleGuardError, ARQ_RECORD_LIMITS};

/// The function name dedup2d jobs are enqueued under.
pub(crate) const FUNCTION_NAME: &str = "dedup2d_run_job";

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("ARQ record is not a valid pickle: {0}")]
    Pickle(#[from] serde_pickle::Error),
    #[error("ARQ record refused before decoding: {0}")]
    Guard(#[from] PickleGuardError),
    #[error("ARQ record is not a dict")]
    NotADict,
    #[error("ARQ record lacks field {0:?} or it has the wrong type")]
    Field(&'static str),
}

/// `arq:job:{id}`: `{'t': try, 'f': function, 'a': args, 'k': kwargs, 'et': enqueue_ms}`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub function: String,
    pub args: Vec<Value>,
    pub kwargs: BTreeMap<HashableValue, Value>,
    /// The try number recorded at enqueue (`None` unless re-enqueued with `_job_try`).
    pub job_try: Option<i64>,
    pub enqueue_time_ms: i64,
}

impl JobRecord {
    /// A dedup2d job: `dedup2d_run_job(job_id)`.
    pub fn dedup2d(job_id: &str, enqueue_time_ms: i64) -> Self {
        JobRecord {
            function: FUNCTION_NAME.to_string(),
            args: vec![Value::String(job_id.to_string())],
            kwargs: BTreeMap::new(),
            job_try: None,
            enqueue_time_ms,
        }
    }

    /// The first positional argument when it is a string (the dedup2d job id).
    pub fn first_str_arg(&self) -> Option<&str> {
        match self.args.first() {
            Some(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.dict_start();
        w.str("t");
        w.opt_int(self.job_try);
        w.str("f");
        w.str(&self.function);
        w.str("a");
        w.tuple(&self.args);
        w.str("k");
        w.dict(&self.kwargs);
        w.str("et");
        w.int(self.enqueue_time_ms);
        w.dict_end(5);
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let d = decode_dict(bytes)?;
        Ok(JobRecord {
            function: get_str(&d, "f")?,
            args: get_seq(&d, "a")?,
            kwargs: get_kwargs(&d)?,
            job_try: get_opt_int(&d, "t")?,
            enqueue_time_ms: get_int(&d, "et")?,
        })
    }
}

/// What a job ended with.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `s: True`, `r`: the function's return value.
    Success(Value),
    /// `s: False`, `r`: an exception `module.class(message)`. When decoding, the class is not
    /// recoverable from the pickle subset and `class` is empty.
    Failure {
        module: String,
        class: String,
        message: String,
    },
}

impl Outcome {
    /// A failure that Python's `Job.result()` re-raises as `arq.worker.JobExecutionFailed`.
    pub fn job_execution_failed(message: impl Into<String>) -> Self {
        Outcome::Failure {
            module: "arq.worker".into(),
            class: "JobExecutionFailed".into(),
            message: message.into(),
        }
    }
}

/// `arq:result:{id}`: `{t, f, a, k, et, s, r, st, ft, q, id}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRecord {
    pub job: JobRecord,
    pub job_try: i64,
    pub outcome: Outcome,
    pub start_ms: i64,
    pub finish_ms: i64,
    pub queue_name: String,
    pub job_id: String,
}

impl ResultRecord {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.dict_start();
        w.str("t");
        w.int(self.job_try);
        w.str("f");
        w.str(&self.job.function);
        w.str("a");
        w.tuple(&self.job.args);
        w.str("k");
        w.dict(&self.job.kwargs);
        w.str("et");
        w.int(self.job.enqueue_time_ms);
        w.str("s");
        w.bool(matches!(self.outcome, Outcome::Success(_)));
        w.str("r");
        match &self.outcome {
            Outcome::Success(v) => w.value(v),
            Outcome::Failure {
                module,
                class,
                message,
            } => w.exception(module, class, message),
        }
        w.str("st");
        w.int(self.start_ms);
        w.str("ft");
        w.int(self.finish_ms);
        w.str("q");
        w.str(&self.queue_name);
        w.str("id");
        w.str(&self.job_id);
        w.dict_end(11);
        w.finish()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let d = decode_dict(bytes)?;
        let success = match d.get(&key("s")) {
            Some(Value::Bool(b)) => *b,
            _ => return Err(CodecError::Field("s")),
        };
        let r = d.get(&key("r")).cloned().unwrap_or(Value::None);
        let outcome = if success {
            Outcome::Success(r)
        } else {
            Outcome::Failure {
                module: String::new(),
                class: String::new(),
                message: exception_message(&r),
            }
        };
        Ok(ResultRecord {
            job: JobRecord {
                function: get_str(&d, "f")?,
                args: get_seq(&d, "a")?,
                kwargs: get_kwargs(&d)?,
                job_try: None,
                enqueue_time_ms: get_int(&d, "et")?,
            },
            job_try: get_opt_int(&d, "t")?.unwrap_or(1),
            outcome,
            start_ms: get_int(&d, "st")?,
            finish_ms: get_int(&d, "ft")?,
            queue_name: get_opt_str(&d, "q").unwrap_or_default(),
            job_id: get_opt_str(&d, "id").unwrap_or_default(),
        })
    }
}

/// With `keep_restore_state`, an unpickled exception becomes the tuple of its arguments.
fn exception_message(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Tuple(items) | Value::List(items) => items
            .iter()
            .map(exception_message)
            .collect::<Vec<_>>()
            .join(", "),
        Value::None => String::new(),
        other => format!("{other}"),
    }
}

fn key(s: &str) -> HashableValue {
    HashableValue::String(s.to_string())
}

type Dict = BTreeMap<HashableValue, Value>;

fn decode_dict(bytes: &[u8]) -> Result<Dict, CodecError> {
    pickle_guard::check(bytes, ARQ_RECORD_LIMITS)?;
    let opts = DeOptions::new()
        .decode_strings()
        .keep_restore_state()
        .replace_unresolved_globals();
    match serde_pickle::value_from_slice(bytes, opts)? {
        Value::Dict(d) => Ok(d),
        _ => Err(CodecError::NotADict),
    }
}

fn get_str(d: &Dict, k: &'static str) -> Result<String, CodecError> {
    get_opt_str(d, k).ok_or(CodecError::Field(k))
}

fn get_opt_str(d: &Dict, k: &'static str) -> Option<String> {
    match d.get(&key(k)) {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    }
}

fn get_int(d: &Dict, k: &'static str) -> Result<i64, CodecError> {
    match d.get(&key(k)) {
        Some(Value::I64(i)) => Ok(*i),
        Some(Value::F64(f)) => Ok(*f as i64),
        _ => Err(CodecError::Field(k)),
    }
}

fn get_opt_int(d: &Dict, k: &'static str) -> Result<Option<i64>, CodecError> {
    match d.get(&key(k)) {
        None | Some(Value::None) => Ok(None),
        Some(Value::I64(i)) => Ok(Some(*i)),
        _ => Err(CodecError::Field(k)),
    }
}

fn get_seq(d: &Dict, k: &'static str) -> Result<Vec<Value>, CodecError> {
    match d.get(&key(k)) {
        Some(Value::Tuple(v)) | Some(Value::List(v)) => Ok(v.clone()),
        _ => Err(CodecError::Field(k)),
    }
}

fn get_kwargs(d: &Dict) -> Result<Dict, CodecError> {
    match d.get(&key("k")) {
        Some(Value::Dict(m)) => Ok(m.clone()),
        None | Some(Value::None) => Ok(BTreeMap::new()),
        _ => Err(CodecError::Field("k")),
    }
}

/// A minimal pickle protocol-2 writer for the value subset ARQ records use.
struct Writer {
    buf: Vec<u8>,
}

mod op {
    pub(crate) const PROTO: u8 = 0x80;
    pub(crate) const STOP: u8 = b'.';
    pub(crate) const MARK: u8 = b'(';
    pub(crate) const NONE: u8 = b'N';
    pub(crate) const NEWTRUE: u8 = 0x88;
    pub(crate) const NEWFALSE: u8 = 0x89;
    pub(crate) const BININT: u8 = b'J';
    pub(crate) const LONG1: u8 = 0x8a;
    pub(crate) const BINFLOAT: u8 = b'G';
    pub(crate) const BINUNICODE: u8 = b'X';
    pub(crate) const EMPTY_DICT: u8 = b'}';
    pub(crate) const SETITEMS: u8 = b'u';
    pub(crate) const EMPTY_LIST: u8 = b']';
    pub(crate) const APPENDS: u8 = b'e';
    pub(crate) const TUPLE: u8 = b't';
    pub(crate) const EMPTY_TUPLE: u8 = b')';
    pub(crate) const GLOBAL: u8 = b'c';
    pub(crate) const REDUCE: u8 = b'R';
    pub(crate) const EMPTY_SET: u8 = 0x8f;
    pub(crate) const ADDITEMS: u8 = 0x90;
    pub(crate) const FROZENSET: u8 = 0x91;
    pub(crate) const BINBYTES: u8 = b'B';
}

impl Writer {
    fn new() -> Self {
        Writer {
            buf: vec![op::PROTO, 2],
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.buf.push(op::STOP);
        self.buf
    }

    fn dict_start(&mut self) {
        self.buf.push(op::EMPTY_DICT);
        self.buf.push(op::MARK);
    }

    fn dict_end(&mut self, _pairs: usize) {
        self.buf.push(op::SETITEMS);
    }

    fn str(&mut self, s: &str) {
        self.buf.push(op::BINUNICODE);
        self.buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(s.as_bytes());
    }

    fn bool(&mut self, b: bool) {
        self.buf.push(if b { op::NEWTRUE } else { op::NEWFALSE });
    }

    fn int(&mut self, i: i64) {
        if let Ok(small) = i32::try_from(i) {
            self.buf.push(op::BININT);
            self.buf.extend_from_slice(&small.to_le_bytes());
        } else {
            // LONG1: little-endian two's complement, minimal length.
            let bytes = i.to_le_bytes();
            let mut n = 8;
            while n > 1 {
                let top = bytes[n - 1];
                let next_sign = bytes[n - 2] & 0x80;
                if (top == 0 && next_sign == 0) || (top == 0xff && next_sign != 0) {
                    n -= 1;
                } else {
                    break;
                }
            }
            self.buf.push(op::LONG1);
            self.buf.push(n as u8);
            self.buf.extend_from_slice(&bytes[..n]);
        }
    }

    fn opt_int(&mut self, i: Option<i64>) {
        match i {
            Some(i) => self.int(i),
            None => self.buf.push(op::NONE),
        }
    }

    fn tuple(&mut self, items: &[Value]) {
        if items.is_empty() {
            self.buf.push(op::EMPTY_TUPLE);
            return;
        }
        self.buf.push(op::MARK);
        for v in items {
            self.value(v);
        }
        self.buf.push(op::TUPLE);
    }

    fn dict(&mut self, m: &Dict) {
        self.buf.push(op::EMPTY_DICT);
        if m.is_empty() {
            return;
        }
        self.buf.push(op::MARK);
        for (k, v) in m {
            self.value(&k.clone().into_value());
            self.value(v);
        }
        self.buf.push(op::SETITEMS);
    }

    fn exception(&mut self, module: &str, class: &str, message: &str) {
        self.buf.push(op::GLOBAL);
        self.buf.extend_from_slice(module.as_bytes());
        self.buf.push(b'\n');
        self.buf.extend_from_slice(class.as_bytes());
        self.buf.push(b'\n');
        self.buf.push(op::MARK);
        self.str(message);
        self.buf.push(op::TUPLE);
        self.buf.push(op::REDUCE);
    }

    fn value(&mut self, v: &Value) {
        match v {
            Value::None => self.buf.push(op::NONE),
            Value::Bool(b) => self.bool(*b),
            Value::I64(i) => self.int(*i),
            Value::Int(big) => {
                let bytes = big.to_signed_bytes_le();
                self.buf.push(op::LONG1);
                self.buf.push(bytes.len() as u8);
                self.buf.extend_from_slice(&bytes);
            }
            Value::F64(f) => {
                self.buf.push(op::BINFLOAT);
                self.buf.extend_from_slice(&f.to_be_bytes());
            }
            Value::Bytes(b) => {
                self.buf.push(op::BINBYTES);
                self.buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
                self.buf.extend_from_slice(b);
            }
            Value::String(s) => self.str(s),
            Value::List(items) => {
                self.buf.push(op::EMPTY_LIST);
                if !items.is_empty() {
                    self.buf.push(op::MARK);
                    for i in items {
                        self.value(i);
                    }
                    self.buf.push(op::APPENDS);
                }
            }
            Value::Tuple(items) => self.tuple(items),
            Value::Set(items) => {
                self.buf.push(op::EMPTY_SET);
                self.buf.push(op::MARK);
                for i in items {
                    self.value(&i.clone().into_value());
                }
                self.buf.push(op::ADDITEMS);
            }
            Value::FrozenSet(items) => {
                self.buf.push(op::MARK);
                for i in items {
                    self.value(&i.clone().into_value());
                }
                self.buf.push(op::FROZENSET);
            }
            Value::Dict(m) => self.dict(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn job_record_round_trips() {
        let job = JobRecord::dedup2d("5d1c1f0e-1a2b-4c3d-8e9f-000000000001", 1_764_000_000_123);
        let decoded = JobRecord::decode(&job.encode()).unwrap();
        assert_eq!(decoded, job);
        assert_eq!(
            decoded.first_str_arg(),
            Some("5d1c1f0e-1a2b-4c3d-8e9f-000000000001")
        );
    }

    // Vectors pickled by CPython 3.11 (default protocol 4) with arq 0.26.3 installed.
    const PY_JOB: &str = "8004953e000000000000007d94288c0174944e8c0166948c0f646564757032645f72756e5f6a6f62948c0161948c026a319485948c016b947d948c026574948a060068e5cf8b01752e";
    const PY_FAILED_RESULT: &str = "800495ac000000000000007d94288c0174944b018c0166948c0f646564757032645f72756e5f6a6f62948c0161948c026a319485948c016b947d948c026574948a060068e5cf8b018c017394898c0172948c0a6172712e776f726b6572948c124a6f62457865637574696f6e4661696c65649493948c04626f6f6d94859452948c027374948a060168e5cf8b018c026674948a060268e5cf8b018c0171948c0d646564757032643a7175657565948c026964946805752e";

    #[test]
    fn decodes_a_python_job() {
        let job = JobRecord::decode(&hex::decode(PY_JOB).unwrap()).unwrap();
        assert_eq!(job, JobRecord::dedup2d("j1", 1_700_000_000_000));
    }

    #[test]
    fn decodes_a_python_failure_result() {
        let rec = ResultRecord::decode(&hex::decode(PY_FAILED_RESULT).unwrap()).unwrap();
        assert_eq!(rec.job_try, 1);
        assert_eq!(rec.job_id, "j1");
        assert_eq!(rec.finish_ms, 1_700_000_000_002);
        assert!(matches!(rec.outcome, Outcome::Failure { ref message, .. } if message == "boom"));
    }

    #[test]
    fn failure_result_decodes_to_its_message() {
        let rec = ResultRecord {
            job: JobRecord::dedup2d("j1", 1),
            job_try: 2,
            outcome: Outcome::job_execution_failed("max 5 retries exceeded"),
            start_ms: 10,
            finish_ms: 20,
            queue_name: "dedup2d:queue".into(),
            job_id: "j1".into(),
        };
        let back = ResultRecord::decode(&rec.encode()).unwrap();
        assert_eq!(back.job_try, 2);
        assert_eq!(back.job_id, "j1");
        assert_eq!(back.queue_name, "dedup2d:queue");
        match back.outcome {
            Outcome::Failure { message, .. } => assert_eq!(message, "max 5 retries exceeded"),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn rejects_garbage_and_non_dicts() {
        assert!(matches!(
            JobRecord::decode(b"not a pickle"),
            Err(CodecError::Pickle(_) | CodecError::Guard(_))
        ));
        let mut w = Writer::new();
        w.str("x");
        assert!(matches!(
            JobRecord::decode(&w.finish()),
            Err(CodecError::NotADict)
        ));
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::None),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::I64),
            any::<f64>()
                .prop_filter("NaN never equals itself", |f| !f.is_nan())
                .prop_map(Value::F64),
            ".{0,40}".prop_map(Value::String),
            proptest::collection::vec(any::<u8>(), 0..20).prop_map(Value::Bytes),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::List),
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Tuple),
                proptest::collection::btree_map("[a-z]{1,6}", inner, 0..5).prop_map(|m| {
                    Value::Dict(
                        m.into_iter()
                            .map(|(k, v)| (HashableValue::String(k), v))
                            .collect(),
                    )
                }),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_value_subset_round_trips(args in proptest::collection::vec(value(), 0..4), r in value(),
                                        try_ in proptest::option::of(1i64..100), et in any::<i64>()) {
            let job = JobRecord { function: "f".into(), args, kwargs: BTreeMap::new(), job_try: try_, enqueue_time_ms: et };
            prop_assert_eq!(JobRecord::decode(&job.encode()).unwrap(), job.clone());
            let rec = ResultRecord { job: JobRecord { job_try: None, ..job }, job_try: 3, outcome: Outcome::Success(r),
                start_ms: 1, finish_ms: 2, queue_name: "q".into(), job_id: "id".into() };
            prop_assert_eq!(ResultRecord::decode(&rec.encode()).unwrap(), rec);
        }
    }
}
