//! Generated drawings for the engine tests: a mounting plate written as DXF (with the `dxf`
//! crate) in several "re-saved" variants, an unrelated drawing, and raster renderings (PNG and
//! re-compressed JPEG, with the `image` crate).

use dxf::entities::{Arc, Circle, Entity, EntityType, Insert, Line, LwPolyline, MText, Text};
use dxf::enums::AcadVersion;
use dxf::tables::Layer;
use dxf::{Block, Drawing, LwPolylineVertex, Point};
use image::{GrayImage, ImageFormat, Luma};

/// How a variant places the plate: `p → scale · (swap ? (y, x) : (x, y)) + shift`. Swapping the
/// axes is a 90° rotation followed by a mirror.
#[derive(Clone, Copy)]
pub struct Placement {
    pub scale: f64,
    pub shift: (f64, f64),
    pub swap: bool,
}

impl Placement {
    pub const AS_DRAWN: Placement = Placement {
        scale: 1.0,
        shift: (0.0, 0.0),
        swap: false,
    };

    fn p(&self, x: f64, y: f64) -> Point {
        let (x, y) = if self.swap { (y, x) } else { (x, y) };
        Point::new(
            x * self.scale + self.shift.0,
            y * self.scale + self.shift.1,
            0.0,
        )
    }

    /// Counter-clockwise arc angles after the placement (a mirror reverses the direction).
    fn angles(&self, start: f64, end: f64) -> (f64, f64) {
        if self.swap {
            (90.0 - end, 90.0 - start)
        } else {
            (start, end)
        }
    }
}

/// What distinguishes the variants of the plate.
#[derive(Clone, Copy)]
pub struct Variant {
    pub placement: Placement,
    /// Entities in reverse order, on other layers, with other handles, and the outline as
    /// separate LINEs instead of one polyline (as another CAD tool might save it).
    pub resaved: bool,
    /// One hole drawn with another radius.
    pub changed_hole: bool,
}

impl Variant {
    pub const BASE: Variant = Variant {
        placement: Placement::AS_DRAWN,
        resaved: false,
        changed_hole: false,
    };
}

fn entity(layer: &str, specific: EntityType) -> Entity {
    let mut e = Entity::new(specific);
    e.common.layer = layer.to_string();
    e
}

/// A 200 × 120 plate: outline, a slot with rounded ends, 12 holes, two arcs, ribs, labels,
/// and a bolt block inserted three times.
pub fn plate(v: Variant) -> Vec<u8> {
    let t = v.placement;
    let mut d = Drawing::new();
    d.header.version = AcadVersion::R2000;
    let (outline_layer, detail_layer) = if v.resaved {
        for name in ["Z-EXTRA", "DEFPOINTS-2", "TITLE"] {
            d.add_layer(Layer {
                name: name.into(),
                ..Default::default()
            });
        }
        ("CONTOUR", "HOLES")
    } else {
        ("0", "0")
    };
    let mut es: Vec<Entity> = Vec::new();
    let corners = [(0.0, 0.0), (200.0, 0.0), (200.0, 120.0), (0.0, 120.0)];
    if v.resaved {
        for i in 0..4 {
            let (a, b) = (corners[i], corners[(i + 1) % 4]);
            es.push(entity(
                outline_layer,
                EntityType::Line(Line::new(t.p(a.0, a.1), t.p(b.0, b.1))),
            ));
        }
    } else {
        let mut pl = LwPolyline::default();
        pl.set_is_closed(true);
        for (x, y) in corners {
            let p = t.p(x, y);
            pl.vertices.push(LwPolylineVertex {
                x: p.x,
                y: p.y,
                ..Default::default()
            });
        }
        es.push(entity(outline_layer, EntityType::LwPolyline(pl)));
    }
    // The slot: two straight edges joined by two half circles (bulge ±1).
    let bulge = if t.swap { -1.0 } else { 1.0 };
    let mut slot = LwPolyline::default();
    slot.set_is_closed(true);
    for (x, y, b) in [
        (80.0, 50.0, 0.0),
        (120.0, 50.0, bulge),
        (120.0, 70.0, 0.0),
        (80.0, 70.0, bulge),
    ] {
        let p = t.p(x, y);
        slot.vertices.push(LwPolylineVertex {
            x: p.x,
            y: p.y,
            bulge: b,
            ..Default::default()
        });
    }
    es.push(entity(outline_layer, EntityType::LwPolyline(slot)));
    for i in 0..12 {
        let (x, y) = (
            20.0 + 32.0 * (i % 6) as f64,
            if i < 6 { 20.0 } else { 100.0 },
        );
        let r = if v.changed_hole && i == 7 {
            9.0
        } else {
            4.0 + (i % 3) as f64
        };
        es.push(entity(
            detail_layer,
            EntityType::Circle(Circle::new(t.p(x, y), r * t.scale)),
        ));
    }
    for (cx, cy, r, a0, a1) in [
        (40.0, 60.0, 15.0, 90.0, 270.0),
        (160.0, 60.0, 15.0, 270.0, 90.0),
    ] {
        let (s, e) = t.angles(a0, a1);
        es.push(entity(
            detail_layer,
            EntityType::Arc(Arc::new(t.p(cx, cy), r * t.scale, s, e)),
        ));
    }
    for (x0, y0, x1, y1) in [
        (60.0, 35.0, 140.0, 35.0),
        (60.0, 85.0, 140.0, 85.0),
        (100.0, 10.0, 100.0, 30.0),
    ] {
        es.push(entity(
            detail_layer,
            EntityType::Line(Line::new(t.p(x0, y0), t.p(x1, y1))),
        ));
    }
    let label = Text {
        location: t.p(10.0, 110.0),
        text_height: 5.0 * t.scale,
        value: "PLATE-A 4mm S235".into(),
        ..Default::default()
    };
    es.push(entity(detail_layer, EntityType::Text(label)));
    let note = MText {
        insertion_point: t.p(150.0, 110.0),
        initial_text_height: 3.0 * t.scale,
        text: "deburr all edges".into(),
        ..Default::default()
    };
    es.push(entity(detail_layer, EntityType::MText(note)));

    let mut bolt = Block {
        name: "BOLT".into(),
        ..Default::default()
    };
    bolt.entities.push(entity(
        "0",
        EntityType::Circle(Circle::new(Point::new(0.0, 0.0, 0.0), 3.0)),
    ));
    bolt.entities.push(entity(
        "0",
        EntityType::Line(Line::new(
            Point::new(-5.0, 0.0, 0.0),
            Point::new(5.0, 0.0, 0.0),
        )),
    ));
    bolt.entities.push(entity(
        "0",
        EntityType::Line(Line::new(
            Point::new(0.0, -2.0, 0.0),
            Point::new(0.0, 6.0, 0.0),
        )),
    ));
    d.add_block(bolt);
    for (x, y, rot) in [(60.0, 60.0, 0.0), (140.0, 60.0, 90.0), (100.0, 95.0, 30.0)] {
        let ins = Insert {
            name: "BOLT".into(),
            location: t.p(x, y),
            rotation: if t.swap { 90.0 - rot } else { rot },
            x_scale_factor: t.scale,
            y_scale_factor: if t.swap { -t.scale } else { t.scale },
            ..Default::default()
        };
        es.push(entity(detail_layer, EntityType::Insert(ins)));
    }
    if v.resaved {
        es.reverse();
    }
    for e in es {
        d.add_entity(e);
    }
    let mut out = Vec::new();
    d.save(&mut out).expect("write DXF");
    out
}

/// Something else entirely: a spoked wheel of lines and rings.
pub fn wheel() -> Vec<u8> {
    let mut d = Drawing::new();
    d.header.version = AcadVersion::R2000;
    for i in 0..24 {
        let a = (i as f64 * 15.0).to_radians();
        let (r0, r1) = (10.0, if i % 2 == 0 { 80.0 } else { 60.0 });
        d.add_entity(Entity::new(EntityType::Line(Line::new(
            Point::new(r0 * a.cos(), r0 * a.sin(), 0.0),
            Point::new(r1 * a.cos(), r1 * a.sin(), 0.0),
        ))));
    }
    for r in [10.0, 45.0, 82.0] {
        d.add_entity(Entity::new(EntityType::Circle(Circle::new(
            Point::origin(),
            r,
        ))));
    }
    let mut out = Vec::new();
    d.save(&mut out).expect("write DXF");
    out
}

/// A raster "export" of a drawing: strokes on white; `kind` picks the drawing.
pub fn raster(kind: u32) -> GrayImage {
    let (w, h) = (640, 480);
    let mut img = GrayImage::from_pixel(w, h, Luma([255]));
    let mut stroke = |x0: u32, y0: u32, x1: u32, y1: u32| {
        for x in x0.min(x1)..=x0.max(x1) {
            for y in y0.min(y1)..=y0.max(y1) {
                img.put_pixel(x.min(w - 1), y.min(h - 1), Luma([20]));
            }
        }
    };
    if kind == 0 {
        stroke(40, 40, 600, 43);
        stroke(40, 440, 600, 443);
        stroke(40, 40, 43, 443);
        stroke(597, 40, 600, 443);
        stroke(200, 150, 440, 153);
        stroke(320, 150, 323, 330);
        stroke(100, 300, 250, 303);
    } else {
        for i in 0..8 {
            let x = 60 + i * 70;
            stroke(x, 60 + i * 20, x + 4, 420);
        }
        stroke(60, 240, 580, 244);
    }
    img
}

pub fn encode(img: &GrayImage, format: ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode raster");
    out.into_inner()
}

/// A JPEG of the decoded `png`, at `quality`: the re-compressed copy a scanner or viewer makes.
pub fn recompressed_jpeg(png: &[u8], quality: u8) -> Vec<u8> {
    let img = image::load_from_memory(png).expect("decode PNG").to_luma8();
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(&img)
        .expect("encode JPEG");
    out
}
