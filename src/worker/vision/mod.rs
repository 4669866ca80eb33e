//! The dedupcad-vision backend (`DEDUPCAD_VISION_URL` set): what the Python worker does with a
//! job. CAD files are rendered to PNG (DWG converted to DXF first), the image goes to
//! `POST {url}/api/v2/search`, and the answer is the result, with the pipeline's enrichment:
//! the four label fields on every match, and the local precision pass when the query came with
//! geometry.

pub mod client;
pub mod dwg;
pub mod metrics;
pub mod precision;
pub mod render;
pub mod resilience;
pub mod settings;

use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use serde_json::json;

use super::engine::{EngineError, MatchItem, SearchEngine, SearchRequest, SearchResult};
pub use client::{VisionClient, VisionError};
pub use settings::{VisionConfigError, VisionSettings};

/// Why a vision-backed search failed; the job's `error` is this text.
#[derive(Debug, thiserror::Error)]
pub enum VisionFailure {
    #[error(transparent)]
    Call(#[from] VisionError),
    #[error("cannot render the drawing to PNG: {0}")]
    Render(#[from] render::RenderError),
    #[error(transparent)]
    Dwg(#[from] dwg::DwgError),
    #[error("Unsupported CAD format for rendering: {0}")]
    Unsupported(String),
    #[error("dedupcad-vision answered a document that is not a search result ({0})")]
    NotAResult(String),
    #[error("precision check of the vision answer failed: {0}")]
    Precision(String),
}

pub struct VisionEngine {
    client: VisionClient,
    settings: VisionSettings,
}

impl VisionEngine {
    pub fn new(
        settings: VisionSettings,
        metrics: metrics::VisionMetrics,
    ) -> Result<Self, VisionError> {
        Ok(VisionEngine {
            client: VisionClient::new(&settings, metrics)?,
            settings,
        })
    }

    /// `.dxf`/`.dwg` by suffix, else by content type (Python `_resolve_cad_suffix`).
    fn cad_kind(file_name: &str, content_type: &str) -> Result<&'static str, VisionFailure> {
        let suffix = Path::new(file_name)
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy().to_ascii_lowercase()))
            .unwrap_or_default();
        match suffix.as_str() {
            ".dxf" => return Ok("dxf"),
            ".dwg" => return Ok("dwg"),
            _ => {}
        }
        let ct = content_type.to_ascii_lowercase();
        if ct.contains("dwg") {
            Ok("dwg")
        } else if ct.contains("dxf") {
            Ok("dxf")
        } else {
            Err(VisionFailure::Unsupported(if suffix.is_empty() {
                "unknown".into()
            } else {
                suffix
            }))
        }
    }

    /// The file as the vision service gets it: `{stem}.png` for a CAD file, else unchanged.
    async fn image(
        &self,
        req: &SearchRequest<'_>,
    ) -> Result<(String, Bytes, String), VisionFailure> {
        let name = if req.file_name.is_empty() {
            "unknown"
        } else {
            req.file_name
        };
        if !crate::contract::payload::render_required(req.file_name, Some(req.content_type)) {
            let ct = if req.content_type.is_empty() {
                "application/octet-stream"
            } else {
                req.content_type
            };
            return Ok((
                name.to_string(),
                Bytes::copy_from_slice(req.data),
                ct.to_string(),
            ));
        }
        let dxf = match Self::cad_kind(req.file_name, req.content_type)? {
            "dwg" => dwg::to_dxf(&self.settings.dwg, req.data).await?,
            _ => req.data.to_vec(),
        };
        let render_settings = self.settings.render.clone();
        let started = Instant::now();
        let rendered = tokio::task::spawn_blocking(move || render::render(&dxf, &render_settings))
            .await
            .map_err(|e| VisionFailure::Render(render::RenderError::Encode(e.to_string())))??;
        if let Some(primary) = &rendered.fallback_used {
            tracing::warn!(job_id = req.job_id, error = %primary, fallback_size_px = rendered.size_px, "dedup2d_render_fallback_used");
        }
        tracing::info!(
            job_id = req.job_id,
            duration_ms = started.elapsed().as_millis() as u64,
            output_bytes = rendered.png.len(),
            "dedup2d_render_completed"
        );
        let stem = Path::new(name)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty());
        Ok((
            format!("{}.png", stem.as_deref().unwrap_or("drawing")),
            Bytes::from(rendered.png),
            "image/png".into(),
        ))
    }
}

/// The pipeline's label contract on every match. This system has no filename classifier, so
/// the four fields are what the Python classifier gives for a name it does not know: null.
fn enrich_labels(r: &mut SearchResult) {
    for m in r.duplicates.iter_mut().chain(r.similar.iter_mut()) {
        let MatchItem {
            fine_part_type,
            coarse_part_type,
            decision_source,
            is_coarse_label,
            ..
        } = m;
        (
            *fine_part_type,
            *coarse_part_type,
            *decision_source,
            *is_coarse_label,
        ) = (None, None, None, None);
    }
}

fn add_ms(r: &mut SearchResult, key: &str, ms: f64) {
    let v = r
        .timing
        .stages
        .get(key)
        .and_then(|v| v.as_f64())
        .unwrap_or(0.0);
    r.timing.stages.insert(key.into(), json!(v + ms));
}

impl SearchEngine for VisionEngine {
    fn name(&self) -> &'static str {
        "dedupcad_vision"
    }

    fn search<'a>(
        &'a self,
        req: SearchRequest<'a>,
    ) -> BoxFuture<'a, Result<SearchResult, EngineError>> {
        Box::pin(async move {
            let (file_name, data, content_type) = self.image(&req).await?;
            let p = req.params;
            let form = client::SearchForm {
                file_name: file_name.clone(),
                content_type,
                data,
                mode: p.mode.clone(),
                max_results: p.max_results,
                compute_diff: p.options.compute_diff,
                enable_ml: p.options.enable_ml,
                enable_geometric: p.options.enable_geometric,
            };
            let answer = self
                .client
                .search(&form)
                .await
                .map_err(VisionFailure::from)?;
            let mut result: SearchResult = serde_json::from_value(answer)
                .map_err(|e| VisionFailure::NotAResult(e.to_string()))?;
            enrich_labels(&mut result);
            if let (true, Some(geom)) = (precision::applies(req.query_geom, p), req.query_geom) {
                let started = Instant::now();
                precision::apply(&mut result, geom, &file_name, p)
                    .map_err(VisionFailure::Precision)?;
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                result
                    .timing
                    .stages
                    .insert("precision_ms".into(), json!(ms));
                add_ms(&mut result, "l4_ms", ms);
                result.timing.total_ms += ms;
            }
            Ok(result)
        })
    }
}
