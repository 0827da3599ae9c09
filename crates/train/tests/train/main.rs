//! The training crate's tests, one binary: seed-CNN training, the EfficientNet import and
//! transfer learning, and the shipped models' figures.
mod efficientnet;
mod seed_cnn;
mod shipped;

use std::path::{Path, PathBuf};

/// `CATSDOGS_DATA_DIR`, else `../shared/data/train` beside the repository.
pub fn photos() -> Option<PathBuf> {
    let dir = std::env::var_os("CATSDOGS_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/train"));
    if dir.join("cat").is_dir() && dir.join("dog").is_dir() {
        Some(dir)
    } else {
        eprintln!("SKIPPED: no photos at {} (set CATSDOGS_DATA_DIR)", dir.display());
        None
    }
}
