//! The canonical form of a drawing's geometry: independent of where the drawing sits, how large
//! it is, which of the 8 axis-aligned orientations (90° rotations, mirrored or not) it was saved
//! in, and in which order its entities come.
//!
//! Steps: centre the bounding box on the origin and scale its longer side to 1; quantise every
//! coordinate to a 1/[`GRID`] grid; write each primitive as a fixed row of integers with its
//! end points in a fixed order; among the 8 orientations (exact on the integer grid) take the
//! one whose sorted rows are lexicographically smallest. The fingerprint is sha256 of that.

use sha2::{Digest, Sha256};

use super::dxf_geometry::{Primitive, Pt};

/// Grid steps across the drawing's longer side.
pub const GRID: f64 = 4096.0;

/// Row tags, the first column of every row.
pub const TAG_SEGMENT: i32 = 0;
pub const TAG_CIRCLE: i32 = 1;
pub const TAG_ARC: i32 = 2;
pub const TAG_TEXT: i32 = 3;

/// One primitive on the integer grid: `[tag, ...]`, unused columns 0.
pub type Row = [i32; 7];

/// A drawing's canonical rows (sorted), in the chosen orientation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical {
    pub rows: Vec<Row>,
}

/// The 8 symmetries of the square: `(swap x/y, negate x, negate y)`.
pub const ORIENTATIONS: [(bool, bool, bool); 8] = [
    (false, false, false),
    (false, true, false),
    (false, false, true),
    (false, true, true),
    (true, false, false),
    (true, true, false),
    (true, false, true),
    (true, true, true),
];

impl Canonical {
    /// `None` when there is nothing with an extent (no primitive, or all at one point).
    pub fn from_primitives(prims: &[Primitive]) -> Option<Canonical> {
        let base = quantise(prims)?;
        ORIENTATIONS
            .iter()
            .map(|o| oriented(&base, *o))
            .min()
            .map(|rows| Canonical { rows })
    }

    /// sha256 (hex) of the rows, prefixed with the form's version.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"dedup2d-geom-v1");
        for row in &self.rows {
            for v in row {
                h.update(v.to_le_bytes());
            }
        }
        hex::encode(h.finalize())
    }

    /// The rows in all 8 orientations (for orientation-free similarity shingles).
    pub fn all_orientations(&self) -> impl Iterator<Item = Vec<Row>> + '_ {
        ORIENTATIONS.iter().map(|o| oriented(&self.rows, *o))
    }
}

/// Centred, scaled and quantised rows in the input orientation.
fn quantise(prims: &[Primitive]) -> Option<Vec<Row>> {
    let (mut lo, mut hi) = (Pt::new(f64::MAX, f64::MAX), Pt::new(f64::MIN, f64::MIN));
    let mut grow = |p: Pt| {
        if p.x.is_finite() && p.y.is_finite() {
            lo = Pt::new(lo.x.min(p.x), lo.y.min(p.y));
            hi = Pt::new(hi.x.max(p.x), hi.y.max(p.y));
        }
    };
    for p in prims {
        match *p {
            Primitive::Segment(a, b) => {
                grow(a);
                grow(b);
            }
            Primitive::Circle { center, radius } => {
                grow(Pt::new(center.x - radius, center.y - radius));
                grow(Pt::new(center.x + radius, center.y + radius));
            }
            Primitive::Arc { start, mid, end } => {
                grow(start);
                grow(mid);
                grow(end);
            }
            Primitive::Text { at, .. } => grow(at),
        }
    }
    let size = (hi.x - lo.x).max(hi.y - lo.y);
    if !(size.is_finite() && size > 0.0) {
        return None;
    }
    let (cx, cy) = ((lo.x + hi.x) / 2.0, (lo.y + hi.y) / 2.0);
    let q = |v: f64| (v * GRID / size).round() as i32;
    let qp = |p: Pt| (q(p.x - cx), q(p.y - cy));
    let rows = prims
        .iter()
        .filter_map(|p| {
            let row = match *p {
                Primitive::Segment(a, b) => {
                    let (a, b) = (qp(a), qp(b));
                    if a == b {
                        return None;
                    }
                    [TAG_SEGMENT, a.0, a.1, b.0, b.1, 0, 0]
                }
                Primitive::Circle { center, radius } => {
                    let c = qp(center);
                    [TAG_CIRCLE, c.0, c.1, q(radius), 0, 0, 0]
                }
                Primitive::Arc { start, mid, end } => {
                    let (s, m, e) = (qp(start), qp(mid), qp(end));
                    [TAG_ARC, s.0, s.1, e.0, e.1, m.0, m.1]
                }
                Primitive::Text {
                    at,
                    height,
                    content,
                } => {
                    let a = qp(at);
                    [TAG_TEXT, a.0, a.1, q(height), content as i32, 0, 0]
                }
            };
            row.iter().all(|v| *v != i32::MIN).then_some(row)
        })
        .collect();
    Some(rows)
}

/// Applies one orientation to every row, puts each row's end points in order, sorts the rows.
fn oriented(rows: &[Row], (swap, nx, ny): (bool, bool, bool)) -> Vec<Row> {
    let t = |x: i32, y: i32| {
        let (x, y) = if swap { (y, x) } else { (x, y) };
        (if nx { -x } else { x }, if ny { -y } else { y })
    };
    let mut out: Vec<Row> = rows
        .iter()
        .map(|r| {
            let (a, b, c) = (t(r[1], r[2]), t(r[3], r[4]), t(r[5], r[6]));
            match r[0] {
                TAG_SEGMENT | TAG_ARC => {
                    let (a, b) = if a <= b { (a, b) } else { (b, a) };
                    let c = if r[0] == TAG_ARC { c } else { (0, 0) };
                    [r[0], a.0, a.1, b.0, b.1, c.0, c.1]
                }
                _ => [r[0], a.0, a.1, r[3], r[4], 0, 0],
            }
        })
        .collect();
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seg(a: (f64, f64), b: (f64, f64)) -> Primitive {
        Primitive::Segment(Pt::new(a.0, a.1), Pt::new(b.0, b.1))
    }

    /// A small bracket: outline, a hole, a fillet arc and a label.
    fn bracket() -> Vec<Primitive> {
        vec![
            seg((0.0, 0.0), (120.0, 0.0)),
            seg((120.0, 0.0), (120.0, 40.0)),
            seg((120.0, 40.0), (40.0, 40.0)),
            seg((40.0, 40.0), (40.0, 90.0)),
            seg((40.0, 90.0), (0.0, 90.0)),
            seg((0.0, 90.0), (0.0, 0.0)),
            Primitive::Circle {
                center: Pt::new(20.0, 70.0),
                radius: 7.5,
            },
            Primitive::Arc {
                start: Pt::new(90.0, 20.0),
                mid: Pt::new(100.0, 30.0),
                end: Pt::new(110.0, 20.0),
            },
            Primitive::Text {
                at: Pt::new(60.0, 10.0),
                height: 5.0,
                content: 12345,
            },
        ]
    }

    /// Applies `p → s·M(p) + t` with `M` one of the square's symmetries.
    fn transform(
        prims: &[Primitive],
        s: f64,
        t: (f64, f64),
        o: (bool, bool, bool),
    ) -> Vec<Primitive> {
        let f = |p: Pt| {
            let (x, y) = if o.0 { (p.y, p.x) } else { (p.x, p.y) };
            let (x, y) = (if o.1 { -x } else { x }, if o.2 { -y } else { y });
            Pt::new(x * s + t.0, y * s + t.1)
        };
        prims
            .iter()
            .map(|p| match *p {
                Primitive::Segment(a, b) => Primitive::Segment(f(b), f(a)),
                Primitive::Circle { center, radius } => Primitive::Circle {
                    center: f(center),
                    radius: radius * s,
                },
                Primitive::Arc { start, mid, end } => Primitive::Arc {
                    start: f(end),
                    mid: f(mid),
                    end: f(start),
                },
                Primitive::Text {
                    at,
                    height,
                    content,
                } => Primitive::Text {
                    at: f(at),
                    height: height * s,
                    content,
                },
            })
            .collect()
    }

    #[test]
    fn every_orientation_gives_the_same_fingerprint() {
        let base = Canonical::from_primitives(&bracket())
            .unwrap()
            .fingerprint();
        for o in ORIENTATIONS {
            let moved = transform(&bracket(), 2.5, (1000.0, -300.0), o);
            assert_eq!(
                Canonical::from_primitives(&moved).unwrap().fingerprint(),
                base,
                "{o:?}"
            );
        }
    }

    #[test]
    fn a_changed_entity_or_text_changes_the_fingerprint() {
        let base = Canonical::from_primitives(&bracket())
            .unwrap()
            .fingerprint();
        let mut hole = bracket();
        hole[6] = Primitive::Circle {
            center: Pt::new(20.0, 70.0),
            radius: 9.0,
        };
        let mut label = bracket();
        label[8] = Primitive::Text {
            at: Pt::new(60.0, 10.0),
            height: 5.0,
            content: 54321,
        };
        for changed in [hole, label] {
            assert_ne!(
                Canonical::from_primitives(&changed).unwrap().fingerprint(),
                base
            );
        }
    }

    #[test]
    fn nothing_with_an_extent_has_no_canonical_form() {
        assert_eq!(Canonical::from_primitives(&[]), None);
        let dot = [seg((5.0, 5.0), (5.0, 5.0))];
        assert_eq!(Canonical::from_primitives(&dot), None);
    }

    #[test]
    fn rows_are_on_the_grid_and_centred() {
        let c = Canonical::from_primitives(&[seg((10.0, 10.0), (20.0, 10.0))]).unwrap();
        assert_eq!(c.rows, vec![[TAG_SEGMENT, -2048, 0, 2048, 0, 0, 0]]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("DEDUP2D_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
        ))]
        /// Random translations, scales, orientations and entity orders leave the fingerprint as
        /// it is.
        #[test]
        fn fingerprint_ignores_placement_scale_and_order(
            tx in -1e5f64..1e5, ty in -1e5f64..1e5, scale in 0.01f64..100.0,
            o in 0usize..8, order in Just((0..9).collect::<Vec<usize>>()).prop_shuffle(),
        ) {
            let base = Canonical::from_primitives(&bracket()).unwrap().fingerprint();
            let moved = transform(&bracket(), scale, (tx, ty), ORIENTATIONS[o]);
            let shuffled: Vec<Primitive> = order.iter().map(|&i| moved[i].clone()).collect();
            prop_assert_eq!(Canonical::from_primitives(&shuffled).unwrap().fingerprint(), base);
        }
    }
}
