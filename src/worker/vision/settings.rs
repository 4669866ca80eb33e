//! The dedupcad-vision backend's settings: the Python worker's variables and defaults
//! (`DEDUPCAD_VISION_*`, `DEDUPCAD2_RENDER_*`, `DWG_CONVERTER`, `DWG_TO_DXF_CMD`). A value that
//! does not parse is a start-up error naming the variable (the Python client silently falls
//! back to the default for some of them).

use std::collections::HashMap;
use std::time::Duration;

use super::render::{RenderConfig, RenderSettings};
use super::resilience::{CircuitConfig, RetryPolicy};

pub const ENV_URL: &str = "DEDUPCAD_VISION_URL";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{var}={value:?} is invalid: expected {expected}")]
pub struct VisionConfigError {
    pub var: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// How DWG files become DXF before rendering.
#[derive(Debug, Clone, PartialEq)]
pub enum DwgConverter {
    /// `DWG_CONVERTER=disabled` (the default): a DWG job fails, saying so.
    Disabled,
    /// `DWG_CONVERTER=cmd|auto` with `DWG_TO_DXF_CMD`, a command line with `{input}` and
    /// `{output}` placeholders (split on whitespace).
    Command(String),
    /// Any other mode (`oda`, `autocad`, ...), or `cmd` without a command: not available here.
    Unavailable(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct VisionSettings {
    /// `DEDUPCAD_VISION_URL` without a trailing `/`.
    pub base_url: url::Url,
    /// `DEDUPCAD_VISION_TIMEOUT_SECONDS` (60).
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub circuit: CircuitConfig,
    pub render: RenderSettings,
    pub dwg: DwgConverter,
}

struct Env<'a>(&'a HashMap<String, String>);

impl Env<'_> {
    fn raw(&self, var: &str) -> Option<&str> {
        self.0.get(var).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    fn parse<T: std::str::FromStr>(
        &self,
        var: &'static str,
        default: T,
        expected: &'static str,
    ) -> Result<T, VisionConfigError> {
        match self.raw(var) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| VisionConfigError {
                var,
                value: v.to_string(),
                expected,
            }),
        }
    }

    fn float(&self, var: &'static str, default: f64) -> Result<f64, VisionConfigError> {
        let v = self.parse(var, default, "a number")?;
        if v.is_finite() {
            Ok(v)
        } else {
            Err(VisionConfigError {
                var,
                value: v.to_string(),
                expected: "a finite number",
            })
        }
    }

    fn int(&self, var: &'static str, default: i64) -> Result<i64, VisionConfigError> {
        self.parse(var, default, "an integer")
    }

    /// Python's flag rules: unset → default; `0/false/no/off/""` → false, anything else true.
    fn flag(&self, var: &str, default: bool) -> bool {
        match self.0.get(var) {
            None => default,
            Some(v) => !matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "0" | "false" | "no" | "off" | ""
            ),
        }
    }

    /// `DEDUPCAD_VISION_CIRCUIT_ENABLED`: only `1/true/yes/y/on` are true (Python `_env_bool`).
    fn strict_flag(&self, var: &str, default: bool) -> bool {
        match self.0.get(var) {
            None => default,
            Some(v) => matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "y" | "on"
            ),
        }
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

impl VisionSettings {
    /// `None` when `DEDUPCAD_VISION_URL` is unset or empty (the built-in engine answers).
    pub fn from_map(env: &HashMap<String, String>) -> Result<Option<Self>, VisionConfigError> {
        let e = Env(env);
        let Some(raw_url) = e.raw(ENV_URL) else {
            return Ok(None);
        };
        let timeout = e.float("DEDUPCAD_VISION_TIMEOUT_SECONDS", 60.0)?;
        if timeout <= 0.0 {
            return Err(VisionConfigError {
                var: "DEDUPCAD_VISION_TIMEOUT_SECONDS",
                value: timeout.to_string(),
                expected: "a number of seconds > 0",
            });
        }
        Ok(Some(VisionSettings {
            base_url: base_url(raw_url)?,
            timeout: secs(timeout),
            retry: retry_policy(&e)?,
            circuit: circuit_config(&e)?,
            render: render_settings(&e)?,
            dwg: dwg_converter(&e),
        }))
    }
}

/// `DEDUPCAD_VISION_URL`: an http(s) URL with a host.
fn base_url(raw: &str) -> Result<url::Url, VisionConfigError> {
    let bad_url = || VisionConfigError {
        var: ENV_URL,
        value: crate::contract::redact::redact_url(raw),
        expected: "an http:// or https:// URL with a host, like http://dedupcad-vision:58001",
    };
    let url = url::Url::parse(raw.trim_end_matches('/')).map_err(|_| bad_url())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(bad_url());
    }
    Ok(url)
}

/// `DEDUPCAD_VISION_RETRY_*`.
fn retry_policy(e: &Env) -> Result<RetryPolicy, VisionConfigError> {
    let base_delay = e
        .float("DEDUPCAD_VISION_RETRY_BASE_DELAY_SECONDS", 0.5)?
        .max(0.0);
    Ok(RetryPolicy {
        max_attempts: e
            .int("DEDUPCAD_VISION_RETRY_MAX_ATTEMPTS", 2)?
            .clamp(1, 100) as u32,
        base_delay_s: base_delay,
        max_delay_s: e
            .float("DEDUPCAD_VISION_RETRY_MAX_DELAY_SECONDS", 5.0)?
            .max(base_delay),
    })
}

/// `DEDUPCAD_VISION_CIRCUIT_*`.
fn circuit_config(e: &Env) -> Result<CircuitConfig, VisionConfigError> {
    Ok(CircuitConfig {
        enabled: e.strict_flag("DEDUPCAD_VISION_CIRCUIT_ENABLED", true),
        failure_threshold: e
            .int("DEDUPCAD_VISION_CIRCUIT_FAILURE_THRESHOLD", 5)?
            .max(1) as u32,
        recovery_timeout: secs(
            e.float("DEDUPCAD_VISION_CIRCUIT_RECOVERY_TIMEOUT_SECONDS", 30.0)?
                .max(1.0),
        ),
        half_open_max_calls: e
            .int("DEDUPCAD_VISION_CIRCUIT_HALF_OPEN_MAX_CALLS", 2)?
            .max(1) as u32,
        success_threshold: e
            .int("DEDUPCAD_VISION_CIRCUIT_SUCCESS_THRESHOLD", 2)?
            .max(1) as u32,
        slow_call_threshold: secs(
            e.float("DEDUPCAD_VISION_CIRCUIT_SLOW_CALL_THRESHOLD_SECONDS", 5.0)?
                .max(0.1),
        ),
    })
}

/// `DEDUPCAD2_RENDER_*`.
fn render_settings(e: &Env) -> Result<RenderSettings, VisionConfigError> {
    let margin_ratio = e.float("DEDUPCAD2_RENDER_MARGIN_RATIO", 0.05)?;
    Ok(RenderSettings {
        primary: RenderConfig {
            size_px: e.int("DEDUPCAD2_RENDER_SIZE_PX", 1024)?,
            dpi: e.int("DEDUPCAD2_RENDER_DPI", 200)?,
            margin_ratio,
        },
        fallback: e
            .flag("DEDUPCAD2_RENDER_FALLBACK", true)
            .then_some(RenderConfig {
                size_px: e.int("DEDUPCAD2_RENDER_FALLBACK_SIZE_PX", 512)?,
                dpi: e.int("DEDUPCAD2_RENDER_FALLBACK_DPI", 100)?,
                margin_ratio,
            }),
        text: e.flag("DEDUPCAD2_RENDER_TEXT", true),
    })
}

/// `DWG_CONVERTER` and `DWG_TO_DXF_CMD`.
fn dwg_converter(e: &Env) -> DwgConverter {
    let mode = e
        .raw("DWG_CONVERTER")
        .unwrap_or("disabled")
        .to_ascii_lowercase();
    match (mode.as_str(), e.raw("DWG_TO_DXF_CMD")) {
        ("disabled", _) => DwgConverter::Disabled,
        ("cmd" | "auto", Some(cmd)) => DwgConverter::Command(cmd.to_string()),
        _ => DwgConverter::Unavailable(mode),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::string_map as env;

    #[test]
    fn python_defaults() {
        assert_eq!(VisionSettings::from_map(&env(&[])).unwrap(), None);
        let s = VisionSettings::from_map(&env(&[(ENV_URL, "http://vision:58001/")]))
            .unwrap()
            .unwrap();
        assert_eq!(s.base_url.as_str(), "http://vision:58001/");
        assert_eq!(s.timeout, Duration::from_secs(60));
        assert_eq!(
            (
                s.retry.max_attempts,
                s.retry.base_delay_s,
                s.retry.max_delay_s
            ),
            (2, 0.5, 5.0)
        );
        assert!(s.circuit.enabled);
        assert_eq!(
            (
                s.circuit.failure_threshold,
                s.circuit.success_threshold,
                s.circuit.half_open_max_calls
            ),
            (5, 2, 2)
        );
        assert_eq!(s.circuit.recovery_timeout, Duration::from_secs(30));
        assert_eq!(s.circuit.slow_call_threshold, Duration::from_secs(5));
        assert_eq!(
            (s.render.primary.size_px, s.render.primary.dpi),
            (1024, 200)
        );
        assert_eq!(s.render.primary.margin_ratio, 0.05);
        let fb = s.render.fallback.unwrap();
        assert_eq!((fb.size_px, fb.dpi), (512, 100));
        assert!(s.render.text);
        assert_eq!(s.dwg, DwgConverter::Disabled);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [
            (ENV_URL, "vision:58001"),
            (ENV_URL, "ftp://vision"),
            (ENV_URL, "http://"),
            ("DEDUPCAD_VISION_TIMEOUT_SECONDS", "soon"),
            ("DEDUPCAD_VISION_TIMEOUT_SECONDS", "0"),
            ("DEDUPCAD_VISION_RETRY_MAX_ATTEMPTS", "2.5"),
            ("DEDUPCAD2_RENDER_SIZE_PX", "big"),
        ] {
            let mut e = env(&[(ENV_URL, "http://vision:58001")]);
            e.insert(var.to_string(), value.to_string());
            let err = VisionSettings::from_map(&e).unwrap_err();
            assert_eq!(err.var, var, "{value}");
            assert!(err.to_string().starts_with(var), "{err}");
        }
        let err = VisionSettings::from_map(&env(&[(ENV_URL, "http://u:secret@")])).unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn clamps_and_converters() {
        let s = VisionSettings::from_map(&env(&[
            (ENV_URL, "https://v.example"),
            ("DEDUPCAD_VISION_RETRY_MAX_ATTEMPTS", "0"),
            ("DEDUPCAD_VISION_CIRCUIT_RECOVERY_TIMEOUT_SECONDS", "0.2"),
            ("DEDUPCAD_VISION_CIRCUIT_ENABLED", "off"),
            ("DEDUPCAD2_RENDER_FALLBACK", "0"),
            ("DWG_CONVERTER", "cmd"),
            ("DWG_TO_DXF_CMD", "conv {input} {output}"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(s.retry.max_attempts, 1);
        assert_eq!(s.circuit.recovery_timeout, Duration::from_secs(1));
        assert!(!s.circuit.enabled);
        assert_eq!(s.render.fallback, None);
        assert_eq!(s.dwg, DwgConverter::Command("conv {input} {output}".into()));
        let s = VisionSettings::from_map(&env(&[(ENV_URL, "http://v"), ("DWG_CONVERTER", "oda")]))
            .unwrap()
            .unwrap();
        assert_eq!(s.dwg, DwgConverter::Unavailable("oda".into()));
    }
}
