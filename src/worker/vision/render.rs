//! DXF → PNG for the dedupcad-vision backend, with the Python worker's settings: a square
//! image of `size_px` pixels, the drawing's extents plus `margin_ratio` of its larger side,
//! monochrome on white, `dpi` recorded in the PNG (and scaling the line width). On a failed
//! render the fallback settings are tried without text, as the Python worker does.
//!
//! The DXF reading here is deliberately minimal (model-space LINE, LWPOLYLINE, POLYLINE,
//! CIRCLE, ARC; TEXT/MTEXT as their outline box); the built-in engine has its own, fuller
//! flattener, and the two can share one later.

use std::f64::consts::PI;

use dxf::entities::EntityType;
use dxf::Drawing;

/// Above this edge length a render is refused (a 16k×16k grey image is 256 MiB).
pub const MAX_SIZE_PX: i64 = 16_384;

#[derive(Debug, Clone, PartialEq)]
pub struct RenderConfig {
    pub size_px: i64,
    pub dpi: i64,
    pub margin_ratio: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RenderSettings {
    pub primary: RenderConfig,
    /// `None` when `DEDUPCAD2_RENDER_FALLBACK` is off.
    pub fallback: Option<RenderConfig>,
    /// `DEDUPCAD2_RENDER_TEXT`.
    pub text: bool,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RenderError {
    #[error("the DXF file cannot be read: {0}")]
    Unreadable(String),
    #[error("render settings are invalid: {0}")]
    Settings(String),
    #[error("PNG encoding failed: {0}")]
    Encode(String),
    #[error("{primary}; the fallback render failed too: {fallback}")]
    FallbackFailed {
        primary: Box<RenderError>,
        fallback: Box<RenderError>,
    },
}

/// What was drawn, and whether the fallback settings were needed.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub png: Vec<u8>,
    pub size_px: u32,
    pub fallback_used: Option<String>,
}

type P = (f64, f64);

/// Polylines in world coordinates: every entity becomes one or more point chains.
fn chains(drawing: &Drawing, text: bool) -> Vec<Vec<P>> {
    let mut out = Vec::new();
    for e in drawing.entities().filter(|e| !e.common.is_in_paper_space) {
        match &e.specific {
            EntityType::Line(l) => out.push(vec![(l.p1.x, l.p1.y), (l.p2.x, l.p2.y)]),
            EntityType::Circle(c) => out.push(arc((c.center.x, c.center.y), c.radius, 0.0, 360.0)),
            EntityType::Arc(a) => {
                let end = if a.end_angle < a.start_angle {
                    a.end_angle + 360.0
                } else {
                    a.end_angle
                };
                out.push(arc((a.center.x, a.center.y), a.radius, a.start_angle, end));
            }
            EntityType::LwPolyline(p) => {
                let mut pts: Vec<P> = p.vertices.iter().map(|v| (v.x, v.y)).collect();
                close(&mut pts, p.is_closed());
                out.push(pts);
            }
            EntityType::Polyline(p) => {
                let mut pts: Vec<P> = p.vertices().map(|v| (v.location.x, v.location.y)).collect();
                close(&mut pts, p.is_closed());
                out.push(pts);
            }
            EntityType::Text(t) if text => out.push(text_box(
                (t.location.x, t.location.y),
                t.text_height,
                t.value.chars().count(),
            )),
            EntityType::MText(t) if text => out.push(text_box(
                (t.insertion_point.x, t.insertion_point.y),
                t.initial_text_height,
                t.text.lines().map(|l| l.chars().count()).max().unwrap_or(0),
            )),
            _ => {}
        }
    }
    out.retain(|c| c.iter().all(|(x, y)| x.is_finite() && y.is_finite()) && !c.is_empty());
    out
}

fn close(pts: &mut Vec<P>, closed: bool) {
    if closed {
        if let Some(first) = pts.first().copied() {
            pts.push(first);
        }
    }
}

fn arc(center: P, radius: f64, start_deg: f64, end_deg: f64) -> Vec<P> {
    let steps = (((end_deg - start_deg).abs() / 360.0) * 96.0)
        .ceil()
        .max(2.0) as usize;
    (0..=steps)
        .map(|i| {
            let a = (start_deg + (end_deg - start_deg) * i as f64 / steps as f64) * PI / 180.0;
            (center.0 + radius * a.cos(), center.1 + radius * a.sin())
        })
        .collect()
}

fn text_box(at: P, height: f64, chars: usize) -> Vec<P> {
    let (w, h) = (height * 0.6 * chars.max(1) as f64, height);
    vec![
        at,
        (at.0 + w, at.1),
        (at.0 + w, at.1 + h),
        (at.0, at.1 + h),
        at,
    ]
}

/// A white grey-scale canvas with thick-pen line drawing.
struct Canvas {
    size: usize,
    px: Vec<u8>,
    pen: i64,
}

impl Canvas {
    fn dot(&mut self, x: i64, y: i64) {
        let r = self.pen / 2;
        for dy in -r..=r {
            for dx in -r..=r {
                let (px, py) = (x + dx, y + dy);
                if px >= 0 && py >= 0 && (px as usize) < self.size && (py as usize) < self.size {
                    self.px[py as usize * self.size + px as usize] = 0;
                }
            }
        }
    }

    fn line(&mut self, a: P, b: P) {
        let steps = (b.0 - a.0)
            .abs()
            .max((b.1 - a.1).abs())
            .ceil()
            .clamp(1.0, 4.0 * self.size as f64) as usize;
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            self.dot(
                (a.0 + (b.0 - a.0) * t).round() as i64,
                (a.1 + (b.1 - a.1) * t).round() as i64,
            );
        }
    }
}

/// Renders with one configuration.
pub fn render_once(data: &[u8], cfg: &RenderConfig, text: bool) -> Result<Rendered, RenderError> {
    if cfg.size_px <= 0 || cfg.size_px > MAX_SIZE_PX {
        return Err(RenderError::Settings(format!(
            "size_px must be in 1..={MAX_SIZE_PX}, got {}",
            cfg.size_px
        )));
    }
    if cfg.dpi <= 0 {
        return Err(RenderError::Settings(format!(
            "dpi must be > 0, got {}",
            cfg.dpi
        )));
    }
    if cfg.margin_ratio.is_nan() || cfg.margin_ratio < 0.0 {
        return Err(RenderError::Settings(format!(
            "margin_ratio must be >= 0, got {}",
            cfg.margin_ratio
        )));
    }
    let drawing = Drawing::load(&mut std::io::Cursor::new(data))
        .map_err(|e| RenderError::Unreadable(e.to_string()))?;
    let chains = chains(&drawing, text);
    let pts = chains.iter().flatten();
    let (mut xmin, mut ymin, mut xmax, mut ymax) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
    for &(x, y) in pts {
        (xmin, ymin, xmax, ymax) = (xmin.min(x), ymin.min(y), xmax.max(x), ymax.max(y));
    }
    if chains.is_empty() {
        // Python: extents of nothing are 0..1.
        (xmin, ymin, xmax, ymax) = (0.0, 0.0, 1.0, 1.0);
    }
    let (w, h) = ((xmax - xmin).max(1e-9), (ymax - ymin).max(1e-9));
    let (w, h) = (
        if w <= 1e-9 { 1.0 } else { w },
        if h <= 1e-9 { 1.0 } else { h },
    );
    let margin = w.max(h) * cfg.margin_ratio;
    let span = w.max(h) + 2.0 * margin;
    let size = cfg.size_px as usize;
    let scale = size as f64 / span;
    let (cx, cy) = ((xmin + xmax) / 2.0, (ymin + ymax) / 2.0);
    let to_px = |(x, y): P| {
        (
            (x - cx) * scale + size as f64 / 2.0,
            size as f64 / 2.0 - (y - cy) * scale,
        )
    };
    let mut canvas = Canvas {
        size,
        px: vec![255; size * size],
        pen: (cfg.dpi / 100).max(1),
    };
    for chain in &chains {
        for seg in chain.windows(2) {
            canvas.line(to_px(seg[0]), to_px(seg[1]));
        }
        if chain.len() == 1 {
            let p = to_px(chain[0]);
            canvas.dot(p.0.round() as i64, p.1.round() as i64);
        }
    }
    encode(&canvas.px, size as u32, cfg.dpi as u32).map(|png| Rendered {
        png,
        size_px: size as u32,
        fallback_used: None,
    })
}

fn encode(px: &[u8], size: u32, dpi: u32) -> Result<Vec<u8>, RenderError> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, size, size);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    let ppm = (dpi as f64 / 0.0254).round() as u32;
    enc.set_pixel_dims(Some(png::PixelDimensions {
        xppu: ppm,
        yppu: ppm,
        unit: png::Unit::Meter,
    }));
    let mut w = enc
        .write_header()
        .map_err(|e| RenderError::Encode(e.to_string()))?;
    w.write_image_data(px)
        .map_err(|e| RenderError::Encode(e.to_string()))?;
    w.finish().map_err(|e| RenderError::Encode(e.to_string()))?;
    Ok(out)
}

/// The Python worker's render: the primary settings, then (if enabled) the fallback ones
/// without text.
pub fn render(data: &[u8], settings: &RenderSettings) -> Result<Rendered, RenderError> {
    match render_once(data, &settings.primary, settings.text) {
        Ok(r) => Ok(r),
        Err(primary) => {
            let Some(fallback) = &settings.fallback else {
                return Err(primary);
            };
            match render_once(data, fallback, false) {
                Ok(mut r) => {
                    r.fallback_used = Some(primary.to_string());
                    Ok(r)
                }
                Err(e) => Err(RenderError::FallbackFailed {
                    primary: Box::new(primary),
                    fallback: Box::new(e),
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const SQUARE: &str = "0\nSECTION\n2\nENTITIES\n0\nLINE\n8\n0\n10\n0\n20\n0\n11\n10\n21\n0\n0\nLINE\n8\n0\n10\n10\n20\n0\n11\n10\n21\n10\n0\nCIRCLE\n8\n0\n10\n5\n20\n5\n40\n2\n0\nENDSEC\n0\nEOF\n";

    fn settings(size: i64) -> RenderSettings {
        RenderSettings {
            primary: RenderConfig {
                size_px: size,
                dpi: 200,
                margin_ratio: 0.05,
            },
            fallback: Some(RenderConfig {
                size_px: 64,
                dpi: 100,
                margin_ratio: 0.05,
            }),
            text: true,
        }
    }

    fn decode(png: &[u8]) -> (u32, Vec<u8>) {
        let dec = png::Decoder::new(std::io::Cursor::new(png));
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        (info.width, buf)
    }

    #[test]
    fn draws_the_geometry_inside_the_margin() {
        let r = render(SQUARE.as_bytes(), &settings(100)).unwrap();
        assert_eq!(r.fallback_used, None);
        let (w, px) = decode(&r.png);
        assert_eq!(w, 100);
        let dark = |x: usize, y: usize| px[y * 100 + x] == 0;
        // The bottom line y=0 runs along row ~95 (5 % margin, y flipped), the corner (0,0) is dark.
        assert!(dark(50, 95) || dark(50, 94) || dark(50, 96));
        assert!(!dark(2, 2), "margin stays white");
        assert!(px.iter().filter(|p| **p == 0).count() > 100);
    }

    #[test]
    fn fallback_and_failures() {
        let r = render(SQUARE.as_bytes(), &settings(0)).unwrap();
        assert_eq!(r.size_px, 64);
        assert!(r.fallback_used.unwrap().contains("size_px"));
        let mut s = settings(0);
        s.fallback = None;
        assert!(matches!(
            render(SQUARE.as_bytes(), &s),
            Err(RenderError::Settings(_))
        ));
        let err = render(b"not a dxf at all", &settings(100)).unwrap_err();
        assert!(err.to_string().contains("cannot be read"), "{err}");
        assert!(
            err.to_string().contains("fallback render failed too"),
            "{err}"
        );
        let empty = "0\nSECTION\n2\nENTITIES\n0\nENDSEC\n0\nEOF\n";
        let (_, px) = decode(&render(empty.as_bytes(), &settings(32)).unwrap().png);
        assert!(
            px.iter().all(|p| *p == 255),
            "an empty drawing is a blank image"
        );
    }
}
