//! The HTTP client of dedupcad-vision's `POST /api/v2/search`: the Python client's multipart
//! request, and its attempt loop (timeout, retries with jittered backoff, the per-process
//! circuit breaker, metrics). The decisions are in `resilience.rs`; this is the IO around them.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use super::metrics::{Endpoint, EndpointError, EndpointReason, EndpointStatus, VisionMetrics};
use super::resilience::{Attempt, CircuitBreaker, RetryPolicy};
use super::settings::VisionSettings;

/// The metrics' `endpoint` label of the search call.
pub const ENDPOINT: &str = "search_2d";

/// Why a search call failed, in words for the job's `error`.
#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    #[error("dedupcad-vision is unavailable: its circuit breaker is open after repeated failures, so the call was not made; retry the job later")]
    CircuitOpen,
    #[error("dedupcad-vision answered HTTP {code} ({attempts} attempt(s)): {body}")]
    Status {
        code: u16,
        attempts: u32,
        body: String,
    },
    #[error("dedupcad-vision did not answer within {timeout_s} s ({attempts} attempt(s))")]
    Timeout { timeout_s: f64, attempts: u32 },
    #[error(
        "dedupcad-vision answered with a body that is not JSON ({attempts} attempt(s)): {detail}"
    )]
    InvalidJson { attempts: u32, detail: String },
    #[error("cannot reach dedupcad-vision at {url} ({attempts} attempt(s)): {detail}")]
    Transport {
        url: String,
        attempts: u32,
        detail: String,
    },
    #[error("cannot build the dedupcad-vision HTTP client: {0}")]
    Client(String),
}

/// The form fields of a search (`mode`, `max_results`, `compute_diff`, `enable_ml`,
/// `enable_geometric`), plus the file.
#[derive(Debug, Clone)]
pub struct SearchForm {
    pub file_name: String,
    pub content_type: String,
    pub data: Bytes,
    pub mode: String,
    pub max_results: usize,
    pub compute_diff: bool,
    pub enable_ml: bool,
    pub enable_geometric: bool,
}

fn flag(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

impl SearchForm {
    fn multipart(&self) -> Result<reqwest::multipart::Form, VisionError> {
        let part = reqwest::multipart::Part::stream(self.data.clone())
            .file_name(self.file_name.clone())
            .mime_str(&self.content_type)
            .or_else(|_| {
                reqwest::multipart::Part::stream(self.data.clone())
                    .file_name(self.file_name.clone())
                    .mime_str("application/octet-stream")
            })
            .map_err(|e| VisionError::Client(e.to_string()))?;
        Ok(reqwest::multipart::Form::new()
            .part("file", part)
            .text("mode", self.mode.clone())
            .text("max_results", self.max_results.to_string())
            .text("compute_diff", flag(self.compute_diff))
            .text("enable_ml", flag(self.enable_ml))
            .text("enable_geometric", flag(self.enable_geometric)))
    }
}

pub struct VisionClient {
    http: reqwest::Client,
    search_url: String,
    /// For messages: the base URL with any credentials hidden.
    shown_url: String,
    timeout: Duration,
    retry: RetryPolicy,
    /// `None` when `DEDUPCAD_VISION_CIRCUIT_ENABLED` is off.
    breaker: Option<Mutex<CircuitBreaker>>,
    epoch: Instant,
    metrics: VisionMetrics,
}

/// One attempt's outcome with what the caller needs from it.
struct Answer {
    outcome: Attempt,
    json: Option<Value>,
    detail: String,
}

impl VisionClient {
    pub fn new(settings: &VisionSettings, metrics: VisionMetrics) -> Result<Self, VisionError> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| VisionError::Client(e.to_string()))?;
        let base = settings.base_url.as_str().trim_end_matches('/');
        Ok(VisionClient {
            http,
            search_url: format!("{base}/api/v2/search"),
            shown_url: crate::contract::redact::redact_url(base),
            timeout: settings.timeout,
            retry: settings.retry.clone(),
            breaker: settings
                .circuit
                .enabled
                .then(|| Mutex::new(CircuitBreaker::new(settings.circuit.clone()))),
            epoch: Instant::now(),
            metrics,
        })
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Runs `f` on the breaker (if any) and publishes its state.
    fn with_breaker<T>(&self, f: impl FnOnce(&mut CircuitBreaker) -> T) -> Option<T> {
        let breaker = self.breaker.as_ref()?;
        let mut b = breaker.lock().unwrap_or_else(|p| p.into_inner());
        let out = f(&mut b);
        self.metrics
            .circuit_state
            .get_or_create(&Endpoint { endpoint: ENDPOINT })
            .set(b.state().gauge());
        Some(out)
    }

    fn count(&self, status: &'static str) {
        self.metrics
            .requests
            .get_or_create(&EndpointStatus {
                endpoint: ENDPOINT,
                status,
            })
            .inc();
    }

    /// `POST {url}/api/v2/search`, with retries; the vision service's JSON answer.
    pub async fn search(&self, form: &SearchForm) -> Result<Value, VisionError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            if self.with_breaker(|b| b.try_acquire(self.now())) == Some(false) {
                self.count("circuit_open");
                return Err(VisionError::CircuitOpen);
            }
            let started = Instant::now();
            let answer = self.attempt(form).await;
            let took = started.elapsed();
            match answer.outcome.breaker_verdict() {
                Some(true) => self.with_breaker(|b| b.record_success(self.now(), took)),
                Some(false) => self.with_breaker(|b| b.record_failure(self.now())),
                None => None,
            };
            let status = if answer.json.is_some() {
                "success"
            } else {
                "error"
            };
            self.metrics
                .duration
                .get_or_create(&EndpointStatus {
                    endpoint: ENDPOINT,
                    status,
                })
                .observe(took.as_secs_f64());
            if let Some(json) = answer.json {
                self.count("success");
                return Ok(json);
            }
            let label = answer.outcome.label();
            self.metrics
                .errors
                .get_or_create(&EndpointError {
                    endpoint: ENDPOINT,
                    error: label.clone(),
                })
                .inc();
            match self.retry.next(attempt, &answer.outcome, fastrand::f64()) {
                Some(pause) => {
                    self.metrics
                        .retries
                        .get_or_create(&EndpointReason {
                            endpoint: ENDPOINT,
                            reason: label,
                        })
                        .inc();
                    tracing::info!(attempt, reason = %answer.outcome.label(), pause_ms = pause.as_millis() as u64, "retrying dedupcad-vision");
                    tokio::time::sleep(pause).await;
                }
                None => {
                    self.count("error");
                    return Err(self.error(answer, attempt));
                }
            }
        }
    }

    fn error(&self, answer: Answer, attempts: u32) -> VisionError {
        match answer.outcome {
            Attempt::Status { code, .. } => VisionError::Status {
                code,
                attempts,
                body: answer.detail,
            },
            Attempt::Timeout => VisionError::Timeout {
                timeout_s: self.timeout.as_secs_f64(),
                attempts,
            },
            Attempt::InvalidJson => VisionError::InvalidJson {
                attempts,
                detail: answer.detail,
            },
            Attempt::Transport(_) | Attempt::Ok => VisionError::Transport {
                url: self.shown_url.clone(),
                attempts,
                detail: answer.detail,
            },
        }
    }

    async fn attempt(&self, form: &SearchForm) -> Answer {
        let failed = |outcome: Attempt, detail: String| Answer {
            outcome,
            json: None,
            detail,
        };
        let multipart = match form.multipart() {
            Ok(m) => m,
            Err(e) => return failed(Attempt::Transport("RequestError"), e.to_string()),
        };
        let resp = match self
            .http
            .post(&self.search_url)
            .multipart(multipart)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return transport(e),
        };
        let code = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok());
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return transport(e),
        };
        if code >= 400 {
            return failed(Attempt::Status { code, retry_after }, snippet(&body));
        }
        match serde_json::from_slice::<Value>(&body) {
            Ok(json) => Answer {
                outcome: Attempt::Ok,
                json: Some(json),
                detail: String::new(),
            },
            Err(e) => failed(
                Attempt::InvalidJson,
                format!("{e}; body starts {:?}", snippet(&body)),
            ),
        }
    }
}

fn transport(e: reqwest::Error) -> Answer {
    let outcome = if e.is_timeout() {
        Attempt::Timeout
    } else if e.is_connect() {
        Attempt::Transport("ConnectError")
    } else if e.is_body() || e.is_decode() {
        Attempt::Transport("ReadError")
    } else {
        Attempt::Transport("RequestError")
    };
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        detail = format!("{detail}: {s}");
        source = s.source();
    }
    Answer {
        outcome,
        json: None,
        detail,
    }
}

/// The first 200 characters of a body, for an error message.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let t: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        format!("{t}…")
    } else {
        t
    }
}
