//! Labelled image folders, the seeded stratified split, an in-memory cache of decoded
//! photos and the training-time augmentation.
use std::path::{Path, PathBuf};

use image::RgbImage;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::preprocess::{self, CropBox, PreprocessError};

/// Class index 0.
pub const CAT: u8 = 0;
/// Class index 1.
pub const DOG: u8 = 1;
/// Class names by index.
pub const CLASSES: [&str; 2] = ["cat", "dog"];

/// Errors reading a dataset folder.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0} has no cat/ and dog/ (or PetImages Cat/ and Dog/) sub-folders with images")]
    NoClasses(PathBuf),
}

/// One labelled file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub path: PathBuf,
    /// [`CAT`] or [`DOG`].
    pub label: u8,
}

fn is_image_name(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png" | "gif" | "webp" | "bmp"))
}

/// Lists `DIR/{cat,dog}/*` (also `DIR/{Cat,Dog}`, the Kaggle PetImages layout), sorted.
pub fn scan(dir: &Path) -> Result<Vec<Sample>, DataError> {
    let samples = scan_labelled(dir)?;
    if !samples.iter().any(|s| s.label == CAT) || !samples.iter().any(|s| s.label == DOG) {
        return Err(DataError::NoClasses(dir.to_path_buf()));
    }
    Ok(samples)
}

/// Like [`scan`], but one class (or none) is fine: feedback sets are often one-sided
/// (only "it's a cat" corrections), and a few examples split by time may be too.
pub fn scan_labelled(dir: &Path) -> Result<Vec<Sample>, DataError> {
    let mut samples = Vec::new();
    for (label, names) in [(CAT, ["cat", "Cat", "cats"]), (DOG, ["dog", "Dog", "dogs"])] {
        let Some(class_dir) = names.iter().map(|n| dir.join(n)).find(|p| p.is_dir()) else {
            continue;
        };
        let entries =
            std::fs::read_dir(&class_dir).map_err(|source| DataError::Io { path: class_dir.clone(), source })?;
        let mut files: Vec<PathBuf> =
            entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| is_image_name(p)).collect();
        files.sort();
        samples.extend(files.into_iter().map(|path| Sample { path, label }));
    }
    Ok(samples)
}

/// Seeded stratified split: each class is shuffled with `seed` and its first
/// `val_fraction` goes to validation. Same files + same seed = same split.
pub fn split(samples: &[Sample], val_fraction: f64, seed: u64) -> (Vec<Sample>, Vec<Sample>) {
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for label in [CAT, DOG] {
        let mut class: Vec<Sample> = samples.iter().filter(|s| s.label == label).cloned().collect();
        class.shuffle(&mut StdRng::seed_from_u64(seed ^ u64::from(label)));
        let n_val = (class.len() as f64 * val_fraction).round() as usize;
        val.extend(class.drain(..n_val));
        train.extend(class);
    }
    (train, val)
}

/// A digest of the file names and labels, recorded in the model card.
pub fn digest(samples: &[Sample]) -> String {
    let mut h = Sha256::new();
    for s in samples {
        h.update(s.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default().as_bytes());
        h.update([s.label]);
    }
    hex::encode(&h.finalize()[..8])
}

/// Decoded photos kept in memory so each epoch costs no JPEG decoding.
pub struct DecodedSet {
    pub images: Vec<RgbImage>,
    pub labels: Vec<u8>,
    /// The file each image came from (distillation looks its teacher target up by it).
    pub paths: Vec<PathBuf>,
    /// Files that failed to decode, with the reason; skipped, never fatal.
    pub skipped: Vec<(PathBuf, String)>,
}

/// One photo decoded (image, label, path), or the path and why it was skipped.
type DecodeOutcome = Result<(RgbImage, u8, PathBuf), (PathBuf, String)>;

/// Decodes `samples` in parallel, bounding each image's shorter side to `max_short_side`.
pub fn decode_all(samples: &[Sample], max_pixels: u64, max_short_side: u32) -> DecodedSet {
    let results: Vec<DecodeOutcome> = samples
        .par_iter()
        .map(|s| {
            let bytes = std::fs::read(&s.path).map_err(|e| (s.path.clone(), e.to_string()))?;
            let img = preprocess::decode_rgb(&bytes, max_pixels)
                .and_then(|img| preprocess::bound_short_side(img, max_short_side))
                .map_err(|e: PreprocessError| (s.path.clone(), e.to_string()))?;
            Ok((img, s.label, s.path.clone()))
        })
        .collect();
    let mut set = DecodedSet { images: Vec::new(), labels: Vec::new(), paths: Vec::new(), skipped: Vec::new() };
    for r in results {
        match r {
            Ok((img, label, path)) => {
                set.images.push(img);
                set.labels.push(label);
                set.paths.push(path);
            }
            Err(e) => set.skipped.push(e),
        }
    }
    set
}

/// Strength of the training-time augmentation.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Augment {
    /// Range of the crop's area as a fraction of the image.
    pub min_area: f64,
    /// Largest crop aspect-ratio change (e.g. 4/3).
    pub max_aspect: f64,
    /// Largest rotation in degrees (either way).
    pub max_rotation_deg: f64,
    /// Brightness, contrast and saturation factors vary in `1 +- jitter`.
    pub jitter: f64,
    /// Horizontal flip probability.
    pub flip: f64,
}

impl Default for Augment {
    fn default() -> Self {
        Self { min_area: 0.6, max_aspect: 4.0 / 3.0, max_rotation_deg: 12.0, jitter: 0.2, flip: 0.5 }
    }
}

impl Augment {
    /// A random view of `img` at `size x size`: crop -> resize (the shared filter) ->
    /// flip -> rotation -> colour jitter.
    pub fn apply(&self, img: &RgbImage, size: u32, rng: &mut impl Rng) -> Result<RgbImage, PreprocessError> {
        let (w, h) = (f64::from(img.width()), f64::from(img.height()));
        let area = rng.random_range(self.min_area..=1.0);
        let log_r = rng.random_range(-self.max_aspect.ln()..=self.max_aspect.ln());
        let aspect = log_r.exp();
        let cw = (w * (area * aspect).sqrt()).min(w);
        let ch = (h * (area / aspect).sqrt()).min(h);
        let crop = CropBox {
            left: rng.random_range(0.0..=(w - cw)),
            top: rng.random_range(0.0..=(h - ch)),
            width: cw,
            height: ch,
        };
        let mut out = preprocess::resize_rgb(img, Some(crop), size)?;
        if rng.random_bool(self.flip) {
            image::imageops::flip_horizontal_in_place(&mut out);
        }
        if self.max_rotation_deg > 0.0 {
            let deg = rng.random_range(-self.max_rotation_deg..=self.max_rotation_deg);
            out = rotate_edge_clamped(&out, deg.to_radians());
        }
        if self.jitter > 0.0 {
            let j = self.jitter;
            colour_jitter(
                &mut out,
                rng.random_range(1.0 - j..=1.0 + j),
                rng.random_range(1.0 - j..=1.0 + j),
                rng.random_range(1.0 - j..=1.0 + j),
            );
        }
        Ok(out)
    }
}

/// Rotation about the centre with bilinear sampling; outside pixels take the nearest edge.
fn rotate_edge_clamped(src: &RgbImage, angle: f64) -> RgbImage {
    let (w, h) = src.dimensions();
    let (cx, cy) = ((f64::from(w) - 1.0) / 2.0, (f64::from(h) - 1.0) / 2.0);
    let (s, c) = angle.sin_cos();
    let mut out = RgbImage::new(w, h);
    let (wm, hm) = (f64::from(w) - 1.0, f64::from(h) - 1.0);
    for (x, y, px) in out.enumerate_pixels_mut() {
        let (dx, dy) = (f64::from(x) - cx, f64::from(y) - cy);
        let sx = (c * dx + s * dy + cx).clamp(0.0, wm);
        let sy = (-s * dx + c * dy + cy).clamp(0.0, hm);
        let (x0, y0) = (sx.floor() as u32, sy.floor() as u32);
        let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
        let (fx, fy) = (sx - f64::from(x0), sy - f64::from(y0));
        for k in 0..3 {
            let p = |xx: u32, yy: u32| f64::from(src.get_pixel(xx, yy)[k]);
            let top = p(x0, y0) * (1.0 - fx) + p(x1, y0) * fx;
            let bottom = p(x0, y1) * (1.0 - fx) + p(x1, y1) * fx;
            px[k] = (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

fn colour_jitter(img: &mut RgbImage, brightness: f64, contrast: f64, saturation: f64) {
    let n = f64::from(img.width() * img.height()).max(1.0);
    let mean =
        img.pixels().map(|p| 0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2])).sum::<f64>()
            / n;
    for p in img.pixels_mut() {
        let grey = 0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2]);
        for k in 0..3 {
            let v = f64::from(p[k]) * brightness;
            let v = grey * brightness + (v - grey * brightness) * saturation;
            let v = mean * brightness + (v - mean * brightness) * contrast;
            p[k] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(n: usize) -> Vec<Sample> {
        (0..n).map(|i| Sample { path: PathBuf::from(format!("{i}.jpg")), label: (i % 2) as u8 }).collect()
    }

    #[test]
    fn split_is_stratified_deterministic_and_disjoint() {
        let samples = fake(1000);
        let (t1, v1) = split(&samples, 0.2, 7);
        let (t2, v2) = split(&samples, 0.2, 7);
        assert_eq!((t1.clone(), v1.clone()), (t2, v2));
        assert_eq!(v1.len(), 200);
        assert_eq!(v1.iter().filter(|s| s.label == DOG).count(), 100);
        assert!(v1.iter().all(|v| !t1.contains(v)));
        let (_, v3) = split(&samples, 0.2, 8);
        assert_ne!(v1, v3);
    }

    #[test]
    fn augmentation_gives_requested_size_and_varies() {
        let img = RgbImage::from_fn(180, 120, |x, y| image::Rgb([x as u8, y as u8, (x ^ y) as u8]));
        let mut rng = StdRng::seed_from_u64(1);
        let a = Augment::default().apply(&img, 64, &mut rng).expect("augment");
        let b = Augment::default().apply(&img, 64, &mut rng).expect("augment");
        assert_eq!(a.dimensions(), (64, 64));
        assert_ne!(a, b);
    }
}
