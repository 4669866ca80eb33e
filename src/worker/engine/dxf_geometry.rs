//! DXF → flat 2D geometry. Model-space LINE, LWPOLYLINE, POLYLINE (2D), CIRCLE, ARC, TEXT and
//! MTEXT become [`Primitive`]s in world coordinates; INSERTs are expanded with their transform
//! (location, rotation, scale, column/row arrays, nested up to [`MAX_INSERT_DEPTH`]). Polylines
//! are split into their edges (bulged edges into arcs), so a tool that explodes polylines into
//! lines gives the same geometry. Entity kinds not listed are counted in `ignored` and skipped.

use std::collections::{BTreeMap, HashMap};
use std::f64::consts::PI;

use dxf::entities::{Entity, EntityType};
use dxf::{Block, Drawing};

/// Nesting limit for block inserts (a block that inserts itself is cut off here).
pub const MAX_INSERT_DEPTH: usize = 16;
/// Upper bound on primitives per drawing, so one file cannot exhaust a worker.
pub const MAX_PRIMITIVES: usize = 500_000;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pt {
    pub x: f64,
    pub y: f64,
}

impl Pt {
    pub fn new(x: f64, y: f64) -> Self {
        Pt { x, y }
    }
}

/// One piece of drawn geometry, in world coordinates.
#[derive(Debug, Clone, PartialEq)]
pub enum Primitive {
    Segment(Pt, Pt),
    Circle {
        center: Pt,
        radius: f64,
    },
    /// An arc by its two ends and the point halfway along it: three points survive every
    /// similarity transform, mirroring included (angles and direction do not).
    Arc {
        start: Pt,
        mid: Pt,
        end: Pt,
    },
    /// A text's insertion point, height and a stable hash of its string.
    Text {
        at: Pt,
        height: f64,
        content: u32,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum DxfError {
    #[error("the DXF file cannot be read: {0}")]
    Unreadable(String),
    #[error("the DXF file has more than {MAX_PRIMITIVES} drawable primitives after expanding block inserts")]
    TooComplex,
}

/// What a drawing holds, as far as this engine understands it.
#[derive(Debug, Default)]
pub struct DxfGeometry {
    pub primitives: Vec<Primitive>,
    /// Skipped entity kinds (`SPLINE`, `HATCH`, ...) with their counts, sorted by name.
    pub ignored: BTreeMap<String, usize>,
    /// INSERTs naming a block the file does not define.
    pub missing_blocks: usize,
}

/// A 2D affine map `p → (a·x + b·y + c, d·x + e·y + f)`.
#[derive(Debug, Clone, Copy)]
struct Affine([f64; 6]);

impl Affine {
    const IDENTITY: Affine = Affine([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);

    fn apply(&self, p: Pt) -> Pt {
        let [a, b, c, d, e, f] = self.0;
        Pt::new(a * p.x + b * p.y + c, d * p.x + e * p.y + f)
    }

    /// `self ∘ other`: apply `other` first.
    fn then_after(&self, other: &Affine) -> Affine {
        let [a, b, c, d, e, f] = self.0;
        let [p, q, r, s, t, u] = other.0;
        Affine([
            a * p + b * s,
            a * q + b * t,
            a * r + b * u + c,
            d * p + e * s,
            d * q + e * t,
            d * r + e * u + f,
        ])
    }

    /// How lengths scale (exact for uniform scale; the geometric mean otherwise).
    fn length_scale(&self) -> f64 {
        let [a, b, _, d, e, _] = self.0;
        (a * e - b * d).abs().sqrt()
    }

    /// translate(location) · rotate(degrees) · translate(offset) · scale(sx, sy) · translate(-base)
    fn insert(location: Pt, degrees: f64, offset: Pt, sx: f64, sy: f64, base: Pt) -> Affine {
        let (sin, cos) = degrees.to_radians().sin_cos();
        let (ox, oy) = (offset.x - sx * base.x, offset.y - sy * base.y);
        Affine([
            cos * sx,
            -sin * sy,
            cos * ox - sin * oy + location.x,
            sin * sx,
            cos * sy,
            sin * ox + cos * oy + location.y,
        ])
    }
}

/// Parses DXF bytes (ASCII or binary) and flattens the model space.
pub fn parse(data: &[u8]) -> Result<DxfGeometry, DxfError> {
    let drawing = Drawing::load(&mut std::io::Cursor::new(data))
        .map_err(|e| DxfError::Unreadable(e.to_string()))?;
    let blocks: HashMap<&str, &Block> = drawing.blocks().map(|b| (b.name.as_str(), b)).collect();
    let mut out = Flattener {
        blocks,
        geometry: DxfGeometry::default(),
    };
    for entity in drawing.entities().filter(|e| !e.common.is_in_paper_space) {
        out.entity(entity, &Affine::IDENTITY, 0)?;
    }
    Ok(out.geometry)
}

/// Does `data` look like a DXF file (ASCII group code 0 / SECTION, or the binary sentinel)?
pub fn looks_like_dxf(data: &[u8]) -> bool {
    if data.starts_with(b"AutoCAD Binary DXF") {
        return true;
    }
    let head = String::from_utf8_lossy(&data[..data.len().min(256)]);
    let mut lines = head
        .trim_start_matches('\u{feff}')
        .lines()
        .map(str::trim)
        .skip_while(|l| l.is_empty());
    // Leading 999 comment pairs are allowed.
    loop {
        match (lines.next(), lines.next()) {
            (Some("999"), Some(_)) => continue,
            (Some("0"), Some(kw)) => return kw.eq_ignore_ascii_case("SECTION"),
            _ => return false,
        }
    }
}

struct Flattener<'d> {
    blocks: HashMap<&'d str, &'d Block>,
    geometry: DxfGeometry,
}

impl Flattener<'_> {
    fn push(&mut self, p: Primitive) -> Result<(), DxfError> {
        if self.geometry.primitives.len() >= MAX_PRIMITIVES {
            return Err(DxfError::TooComplex);
        }
        self.geometry.primitives.push(p);
        Ok(())
    }

    fn ignore(&mut self, kind: &str) {
        *self.geometry.ignored.entry(kind.to_string()).or_default() += 1;
    }

    fn entity(&mut self, entity: &Entity, m: &Affine, depth: usize) -> Result<(), DxfError> {
        match &entity.specific {
            EntityType::Line(l) => {
                let (a, b) = (Pt::new(l.p1.x, l.p1.y), Pt::new(l.p2.x, l.p2.y));
                self.push(Primitive::Segment(m.apply(a), m.apply(b)))
            }
            EntityType::Circle(c) => {
                let o = ocs(c.normal.z, Pt::new(c.center.x, c.center.y));
                self.push(Primitive::Circle {
                    center: m.apply(o),
                    radius: c.radius.abs() * m.length_scale(),
                })
            }
            EntityType::Arc(a) => {
                let center = Pt::new(a.center.x, a.center.y);
                let [s, mid, e] = arc_points(center, a.radius, a.start_angle, a.end_angle)
                    .map(|p| m.apply(ocs(a.normal.z, p)));
                self.push(Primitive::Arc {
                    start: s,
                    mid,
                    end: e,
                })
            }
            EntityType::LwPolyline(p) => {
                let z = p.extrusion_direction.z;
                let verts: Vec<(Pt, f64)> = p
                    .vertices
                    .iter()
                    .map(|v| {
                        (
                            ocs(z, Pt::new(v.x, v.y)),
                            if z < 0.0 { -v.bulge } else { v.bulge },
                        )
                    })
                    .collect();
                self.polyline(&verts, p.is_closed(), m)
            }
            EntityType::Polyline(p) => {
                let verts: Vec<(Pt, f64)> = p
                    .vertices()
                    .map(|v| (Pt::new(v.location.x, v.location.y), v.bulge))
                    .collect();
                self.polyline(&verts, p.is_closed(), m)
            }
            EntityType::Text(t) => self.text(
                m,
                Pt::new(t.location.x, t.location.y),
                t.text_height,
                &t.value,
            ),
            EntityType::MText(t) => {
                let mut s = t.extended_text.concat();
                s.push_str(&t.text);
                let at = Pt::new(t.insertion_point.x, t.insertion_point.y);
                self.text(m, at, t.initial_text_height, &s)
            }
            EntityType::Insert(ins) => self.insert(ins, m, depth),
            other => {
                self.ignore(entity_kind(other));
                Ok(())
            }
        }
    }

    fn text(&mut self, m: &Affine, at: Pt, height: f64, s: &str) -> Result<(), DxfError> {
        self.push(Primitive::Text {
            at: m.apply(at),
            height: height.abs() * m.length_scale(),
            content: stable_text_hash(s),
        })
    }

    /// Edges of a polyline: straight ones as segments, bulged ones as arcs.
    fn polyline(&mut self, verts: &[(Pt, f64)], closed: bool, m: &Affine) -> Result<(), DxfError> {
        let n = verts.len();
        let edges = if closed && n > 2 {
            n
        } else {
            n.saturating_sub(1)
        };
        for i in 0..edges {
            let ((a, bulge), (b, _)) = (verts[i], verts[(i + 1) % n]);
            let p = match bulge_mid(a, b, bulge) {
                Some(mid) => Primitive::Arc {
                    start: m.apply(a),
                    mid: m.apply(mid),
                    end: m.apply(b),
                },
                None => Primitive::Segment(m.apply(a), m.apply(b)),
            };
            self.push(p)?;
        }
        Ok(())
    }

    fn insert(
        &mut self,
        ins: &dxf::entities::Insert,
        m: &Affine,
        depth: usize,
    ) -> Result<(), DxfError> {
        let Some(block) = self.blocks.get(ins.name.as_str()).copied() else {
            self.geometry.missing_blocks += 1;
            return Ok(());
        };
        if depth >= MAX_INSERT_DEPTH {
            self.ignore("INSERT(too deep)");
            return Ok(());
        }
        let base = Pt::new(block.base_point.x, block.base_point.y);
        let location = ocs(
            ins.extrusion_direction.z,
            Pt::new(ins.location.x, ins.location.y),
        );
        let (cols, rows) = (ins.column_count.max(1), ins.row_count.max(1));
        for col in 0..cols {
            for row in 0..rows {
                let offset = Pt::new(
                    f64::from(col) * ins.column_spacing,
                    f64::from(row) * ins.row_spacing,
                );
                let local = Affine::insert(
                    location,
                    ins.rotation,
                    offset,
                    ins.x_scale_factor,
                    ins.y_scale_factor,
                    base,
                );
                let world = m.then_after(&local);
                for e in &block.entities {
                    self.entity(e, &world, depth + 1)?;
                }
            }
        }
        Ok(())
    }
}

/// Object coordinates → world for an extrusion normal along ±Z (a -Z normal mirrors X).
/// Other normals are projected onto the XY plane as they are.
fn ocs(normal_z: f64, p: Pt) -> Pt {
    if normal_z < 0.0 {
        Pt::new(-p.x, p.y)
    } else {
        p
    }
}

/// Start, middle and end of a counter-clockwise arc given in degrees.
fn arc_points(c: Pt, r: f64, start_deg: f64, end_deg: f64) -> [Pt; 3] {
    let s = start_deg.to_radians();
    let mut e = end_deg.to_radians();
    while e <= s {
        e += 2.0 * PI;
    }
    let at = |a: f64| Pt::new(c.x + r * a.cos(), c.y + r * a.sin());
    [at(s), at((s + e) / 2.0), at(e)]
}

/// The middle of a bulged polyline edge, or `None` for a straight one. The bulge is the tangent
/// of a quarter of the included angle, positive counter-clockwise; the sagitta is bulge·chord/2.
fn bulge_mid(a: Pt, b: Pt, bulge: f64) -> Option<Pt> {
    if bulge.abs() < 1e-9 {
        return None;
    }
    let (dx, dy) = (b.x - a.x, b.y - a.y);
    let sagitta = bulge / 2.0;
    Some(Pt::new(
        (a.x + b.x) / 2.0 + dy * sagitta,
        (a.y + b.y) / 2.0 - dx * sagitta,
    ))
}

/// A text's string as 31 bits, the same on every platform and version.
fn stable_text_hash(s: &str) -> u32 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(s.trim().as_bytes());
    u32::from_le_bytes([d[0], d[1], d[2], d[3]]) >> 1
}

/// The DXF type name of an entity this engine skips (for the `ignored` counts).
fn entity_kind(e: &EntityType) -> &'static str {
    match e {
        EntityType::Spline(_) => "SPLINE",
        EntityType::Ellipse(_) => "ELLIPSE",
        EntityType::Solid(_) => "SOLID",
        EntityType::Face3D(_) => "3DFACE",
        EntityType::Leader(_) => "LEADER",
        EntityType::MLine(_) => "MLINE",
        EntityType::Image(_) => "IMAGE",
        EntityType::ModelPoint(_) => "POINT",
        EntityType::Attribute(_) => "ATTRIB",
        EntityType::AttributeDefinition(_) => "ATTDEF",
        EntityType::RotatedDimension(_)
        | EntityType::RadialDimension(_)
        | EntityType::DiameterDimension(_)
        | EntityType::AngularThreePointDimension(_)
        | EntityType::OrdinateDimension(_) => "DIMENSION",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Pt, b: Pt) -> bool {
        (a.x - b.x).abs() < 1e-9 && (a.y - b.y).abs() < 1e-9
    }

    #[test]
    fn bulge_of_one_is_a_semicircle_on_the_right_of_the_chord() {
        let mid = bulge_mid(Pt::new(-1.0, 0.0), Pt::new(1.0, 0.0), 1.0).unwrap();
        assert!(close(mid, Pt::new(0.0, -1.0)), "{mid:?}");
        assert!(bulge_mid(Pt::new(0.0, 0.0), Pt::new(1.0, 0.0), 0.0).is_none());
    }

    #[test]
    fn arc_points_wrap_through_zero_degrees() {
        let [s, m, e] = arc_points(Pt::new(0.0, 0.0), 2.0, 270.0, 90.0);
        assert!(close(s, Pt::new(0.0, -2.0)) && close(e, Pt::new(0.0, 2.0)));
        assert!(close(m, Pt::new(2.0, 0.0)), "{m:?}");
    }

    #[test]
    fn insert_transform_rotates_scales_and_moves_about_the_base() {
        let m = Affine::insert(
            Pt::new(10.0, 0.0),
            90.0,
            Pt::new(0.0, 0.0),
            2.0,
            2.0,
            Pt::new(1.0, 0.0),
        );
        assert!(close(m.apply(Pt::new(2.0, 0.0)), Pt::new(10.0, 2.0)));
        assert!((m.length_scale() - 2.0).abs() < 1e-12);
    }

    #[test]
    fn sniffing_finds_ascii_and_binary_dxf_only() {
        assert!(looks_like_dxf(b"  0\r\nSECTION\r\n  2\r\nHEADER\r\n"));
        assert!(looks_like_dxf(b"999\nmade by x\n0\nSECTION\n"));
        assert!(looks_like_dxf(b"AutoCAD Binary DXF\r\n\x1a\x00"));
        assert!(!looks_like_dxf(b"another drawing"));
        assert!(!looks_like_dxf(b"\x89PNG\r\n"));
        assert!(!looks_like_dxf(b"0\nEOF\n"));
    }

    #[test]
    fn unreadable_dxf_is_a_typed_error() {
        let err = parse(b"0\nSECTION\n2\nENTITIES\n0\nLINE\n10\nnot-a-number\n").unwrap_err();
        assert!(matches!(err, DxfError::Unreadable(_)), "{err}");
    }
}
