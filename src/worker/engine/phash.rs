//! Perceptual hash of a raster drawing (PNG, JPEG): the image in grayscale, downscaled to
//! 32×32, its 2D DCT-II; the 8×8 lowest frequencies without the DC term are compared with their
//! median, one bit each (63 bits, the top bit is 0). Near-identical scans and exports differ in
//! a few bits; the similarity is `1 - hamming / 64`. Multi-index hashing splits the hash into
//! [`BANDS`] bands of 16 bits: two hashes within Hamming distance 7 agree on some band in all
//! but at most one bit (pigeonhole), so probing each band's value and its 16 one-bit neighbours
//! finds every hash within distance 7 (similarity ≥ 0.89) without looking at the others.

use image::imageops::FilterType;
use image::{ImageFormat, ImageReader, Limits};

pub const BANDS: usize = 4;
/// Largest accepted raster side (pixels) and decoder allocation.
const MAX_SIDE: u32 = 20_000;
const MAX_ALLOC: u64 = 512 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RasterFormat {
    Png,
    Jpeg,
}

impl RasterFormat {
    /// By magic bytes, not by the client's file name.
    pub fn sniff(data: &[u8]) -> Option<RasterFormat> {
        if data.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(RasterFormat::Png)
        } else if data.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(RasterFormat::Jpeg)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RasterFormat::Png => "PNG",
            RasterFormat::Jpeg => "JPEG",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the {format} image cannot be decoded: {reason}")]
pub struct RasterError {
    pub format: &'static str,
    pub reason: String,
}

/// The 64-bit perceptual hash of an encoded PNG or JPEG.
pub fn phash(data: &[u8], format: RasterFormat) -> Result<u64, RasterError> {
    let err = |reason: String| RasterError {
        format: format.name(),
        reason,
    };
    let mut reader = ImageReader::new(std::io::Cursor::new(data));
    reader.set_format(match format {
        RasterFormat::Png => ImageFormat::Png,
        RasterFormat::Jpeg => ImageFormat::Jpeg,
    });
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| err(e.to_string()))?;
    let small = image::imageops::resize(&img.to_luma8(), 32, 32, FilterType::Triangle);
    let pixels: Vec<f64> = small.pixels().map(|p| f64::from(p.0[0])).collect();
    Ok(hash_of_32x32(&pixels))
}

/// The hash of a 32×32 grayscale image (row-major).
pub fn hash_of_32x32(pixels: &[f64]) -> u64 {
    const N: usize = 32;
    let basis: Vec<[f64; N]> = (0..8)
        .map(|k| {
            let mut row = [0.0; N];
            for (x, r) in row.iter_mut().enumerate() {
                *r = (std::f64::consts::PI * k as f64 * (2 * x + 1) as f64 / (2 * N) as f64).cos();
            }
            row
        })
        .collect();
    let mut coeffs = [0.0f64; 64];
    for u in 0..8 {
        for v in 0..8 {
            let mut sum = 0.0;
            for y in 0..N {
                let mut line = 0.0;
                for x in 0..N {
                    line += pixels[y * N + x] * basis[u][x];
                }
                sum += line * basis[v][y];
            }
            coeffs[v * 8 + u] = sum;
        }
    }
    let mut ac: Vec<f64> = coeffs[1..].to_vec();
    ac.sort_by(f64::total_cmp);
    let median = (ac[31] + ac[32]) / 2.0;
    coeffs[1..]
        .iter()
        .enumerate()
        .fold(0u64, |h, (i, c)| if *c > median { h | (1 << i) } else { h })
}

pub fn similarity(a: u64, b: u64) -> f64 {
    1.0 - f64::from((a ^ b).count_ones()) / 64.0
}

/// The bucket of each band: band number, then its 16 bits.
pub fn band_buckets(hash: u64) -> Vec<Vec<u8>> {
    (0..BANDS).map(|b| bucket(b, band(hash, b))).collect()
}

/// Every band's bucket and the buckets one bit away from it (4 × 17).
pub fn probe_buckets(hash: u64) -> Vec<Vec<u8>> {
    (0..BANDS)
        .flat_map(|b| {
            let v = band(hash, b);
            std::iter::once(v)
                .chain((0..16).map(move |bit| v ^ (1 << bit)))
                .map(move |v| bucket(b, v))
        })
        .collect()
}

fn band(hash: u64, b: usize) -> u16 {
    (hash >> (16 * b)) as u16
}

fn bucket(b: usize, v: u16) -> Vec<u8> {
    let [lo, hi] = v.to_le_bytes();
    vec![b as u8, lo, hi]
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma};

    /// A drawing-like raster: dark strokes on white.
    fn drawing(w: u32, h: u32, variant: u32) -> GrayImage {
        let mut img = GrayImage::from_pixel(w, h, Luma([255]));
        for x in w / 10..w * 9 / 10 {
            for t in 0..3 {
                img.put_pixel(x, h / 5 + t, Luma([0]));
                img.put_pixel(x, h * 4 / 5 + t, Luma([0]));
            }
        }
        for y in h / 5..h * 4 / 5 {
            for t in 0..3 {
                img.put_pixel(w / 10 + t, y, Luma([0]));
                img.put_pixel(w * (3 + variant) / 10 + t, y, Luma([0]));
            }
        }
        img
    }

    fn encode(img: &GrayImage, format: ImageFormat) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn png_and_its_jpeg_are_near_identical_and_another_drawing_is_not() {
        let png = encode(&drawing(400, 300, 0), ImageFormat::Png);
        let jpg = encode(&drawing(400, 300, 0), ImageFormat::Jpeg);
        let (a, b) = (
            phash(&png, RasterFormat::Png).unwrap(),
            phash(&jpg, RasterFormat::Jpeg).unwrap(),
        );
        assert!(similarity(a, b) >= 0.95, "{:016x} {:016x}", a, b);
        let other = encode(&drawing(400, 300, 5), ImageFormat::Png);
        let c = phash(&other, RasterFormat::Png).unwrap();
        assert!(similarity(a, c) < 0.8, "{}", similarity(a, c));
    }

    #[test]
    fn probes_cover_every_hash_within_distance_seven() {
        let a: u64 = 0x0123_4567_89ab_cdef;
        // Seven bits spread so that two bands differ in two bits, one in two, one in one.
        let b = a ^ (0b11 << 2) ^ (0b11 << 20) ^ (0b11 << 40) ^ (1 << 60);
        let probes = probe_buckets(a);
        assert!(band_buckets(b).iter().any(|k| probes.contains(k)));
        assert_eq!(probes.len(), 4 * 17);
    }

    #[test]
    fn corrupt_images_are_typed_errors_and_sniffing_uses_magic_bytes() {
        let err = phash(b"\x89PNG\r\n\x1a\nbroken", RasterFormat::Png).unwrap_err();
        assert_eq!(err.format, "PNG");
        assert_eq!(
            RasterFormat::sniff(b"\xFF\xD8\xFF\xE0"),
            Some(RasterFormat::Jpeg)
        );
        assert_eq!(RasterFormat::sniff(b"0\nSECTION"), None);
    }
}
