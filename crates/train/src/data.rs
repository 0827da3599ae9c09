//! Labelled image folders, the seeded stratified split and an in-memory cache of decoded
//! photos.
use std::path::{Path, PathBuf};

use catsdogs_model::Label;
use catsdogs_model::preprocess::{self, PreprocessError};
use image::RgbImage;
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

/// Class index of cats in label vectors (the training targets are numbers).
pub const CAT: u8 = Label::Cat.index();
/// Class index of dogs.
pub const DOG: u8 = Label::Dog.index();

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
            // JPEGs decode at the smallest DCT scale that keeps the bound (the same decode
            // as serving); bound_short_side then trims what is left.
            let img = preprocess::decode_rgb_at_least(&bytes, max_pixels, max_short_side)
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
}
