//! The similarity sketch of a drawing: MinHash (one-permutation hashing with rotation
//! densification, [`SLOTS`] slots of 16 bits) over geometric shingles, and its LSH bands.
//!
//! Shingles are taken from the canonical rows in all 8 orientations, so the sketch does not
//! depend on which orientation the canonical form picked (one changed entity can change that
//! pick). Per row: its kind and position on a coarser grid; its shape alone (lengths, radius,
//! arc span, text height and string); and the pair it forms with the next row in sorted order
//! (both shapes and their offset). One changed entity changes a handful of shingles, so the
//! estimated Jaccard similarity drops by about 4/(3·rows).

use super::canonical::{Canonical, Row, TAG_ARC, TAG_SEGMENT, TAG_TEXT};

/// MinHash slots.
pub const SLOTS: usize = 128;
/// LSH: `BANDS` bands of `ROWS_PER_BAND` slots (126 of the 128 slots are banded). A pair with
/// similarity `s` shares at least one band with probability `1 - (1 - s^6)^21`: 0.9999 at
/// 0.95, 0.998 at 0.8, 0.63 at 0.6, 0.015 at 0.3.
pub const BANDS: usize = 21;
pub const ROWS_PER_BAND: usize = 6;
/// Coarse grid for position shingles: 16 canonical grid steps.
const COARSE: i32 = 16;

/// A MinHash sketch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sketch(pub [u16; SLOTS]);

/// splitmix64's finaliser: a fixed, platform-independent 64-bit mix.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn hash_ints(vals: impl IntoIterator<Item = i32>) -> u64 {
    vals.into_iter()
        .fold(0x243F_6A88_85A3_08D3, |h, v| mix(h ^ u64::from(v as u32)))
}

fn coarse(v: i32) -> i32 {
    (v + COARSE / 2).div_euclid(COARSE)
}

/// A row's shape without its position, on the coarse grid: a segment's or arc's offsets from
/// its first point, a circle's radius, a text's height and string.
fn shape(r: &Row) -> [i32; 5] {
    match r[0] {
        TAG_SEGMENT => [r[0], coarse(r[3] - r[1]), coarse(r[4] - r[2]), 0, 0],
        TAG_ARC => [
            r[0],
            coarse(r[3] - r[1]),
            coarse(r[4] - r[2]),
            coarse(r[5] - r[1]),
            coarse(r[6] - r[2]),
        ],
        TAG_TEXT => [r[0], coarse(r[3]), r[4], 0, 0],
        _ => [r[0], coarse(r[3]), 0, 0, 0],
    }
}

/// The shingles of one orientation's sorted rows.
fn shingles_of(rows: &[Row], out: &mut Vec<u64>) {
    for (i, r) in rows.iter().enumerate() {
        let text = r[0] == TAG_TEXT;
        let pos = r.iter().enumerate().map(|(c, v)| match c {
            0 => *v,
            4 if text => *v,
            _ => coarse(*v),
        });
        out.push(hash_ints(std::iter::once(1).chain(pos)));
        let s = shape(r);
        out.push(hash_ints(std::iter::once(2).chain(s)));
        if let Some(next) = rows.get(i + 1) {
            let offset = [coarse(next[1] - r[1]), coarse(next[2] - r[2])];
            out.push(hash_ints(
                std::iter::once(3).chain(s).chain(shape(next)).chain(offset),
            ));
        }
    }
}

impl Sketch {
    pub fn of(canonical: &Canonical) -> Sketch {
        let mut shingles = Vec::with_capacity(canonical.rows.len() * 24);
        for rows in canonical.all_orientations() {
            shingles_of(&rows, &mut shingles);
        }
        Sketch::from_shingles(shingles)
    }

    /// One-permutation MinHash of any set of 64-bit shingle hashes (empty set: all slots 0).
    pub fn from_shingles(shingles: impl IntoIterator<Item = u64>) -> Sketch {
        let mut mins = [u64::MAX; SLOTS];
        for s in shingles {
            let h = mix(s);
            let slot = (h >> 57) as usize;
            let v = h & ((1 << 57) - 1);
            if v < mins[slot] {
                mins[slot] = v;
            }
        }
        // Rotation densification: an empty slot takes the next filled slot's value, salted
        // with the distance, so two sets with the same filled slots agree on the empty ones.
        let mut out = [0u16; SLOTS];
        if mins.iter().all(|m| *m == u64::MAX) {
            return Sketch(out);
        }
        for (i, o) in out.iter_mut().enumerate() {
            let (dist, v) = (0..SLOTS)
                .map(|d| (d, mins[(i + d) % SLOTS]))
                .find(|(_, v)| *v != u64::MAX)
                .expect("one slot is filled");
            *o = (mix(v ^ ((dist as u64) << 57)) & 0xFFFF) as u16;
        }
        Sketch(out)
    }

    /// Estimated Jaccard similarity: the share of equal slots.
    pub fn similarity(&self, other: &Sketch) -> f64 {
        let same = self.0.iter().zip(&other.0).filter(|(a, b)| a == b).count();
        same as f64 / SLOTS as f64
    }

    /// The LSH bucket of each band: band number, then 48 bits of the band's slots' hash.
    pub fn band_buckets(&self) -> Vec<Vec<u8>> {
        (0..BANDS)
            .map(|b| {
                let slots = &self.0[b * ROWS_PER_BAND..(b + 1) * ROWS_PER_BAND];
                let h = hash_ints(slots.iter().map(|v| i32::from(*v)));
                let mut key = vec![b as u8];
                key.extend_from_slice(&h.to_le_bytes()[..6]);
                key
            })
            .collect()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    pub fn from_bytes(b: &[u8]) -> Option<Sketch> {
        if b.len() != SLOTS * 2 {
            return None;
        }
        let mut out = [0u16; SLOTS];
        for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
            *o = u16::from_le_bytes([c[0], c[1]]);
        }
        Some(Sketch(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(range: std::ops::Range<u64>) -> Sketch {
        Sketch::from_shingles(range.map(|i| i.wrapping_mul(0x1234_5678_9abc_def1)))
    }

    #[test]
    fn similarity_estimates_jaccard() {
        let a = set(0..1000);
        assert_eq!(a.similarity(&set(0..1000)), 1.0);
        // Jaccard 900/1100 = 0.818: the estimate's standard error is about 0.034.
        let s = a.similarity(&set(100..1100));
        assert!((s - 0.818).abs() < 0.12, "{s}");
        let unrelated = a.similarity(&set(5000..6000));
        assert!(unrelated < 0.1, "{unrelated}");
    }

    #[test]
    fn identical_sketches_share_every_band_and_bytes_round_trip() {
        let a = set(0..50);
        assert_eq!(a.band_buckets(), set(0..50).band_buckets());
        assert_eq!(a.band_buckets().len(), BANDS);
        assert_eq!(Sketch::from_bytes(&a.to_bytes()), Some(a));
        assert_eq!(Sketch::from_bytes(&[0; 3]), None);
    }

    #[test]
    fn a_small_set_fills_every_slot_by_densification() {
        let a = set(0..3);
        let b = set(0..3);
        assert_eq!(a.similarity(&b), 1.0);
        assert!(a.similarity(&set(10..13)) < 0.5);
    }
}
