//! Distillation targets: a served model's P(dog) on every photo of a training split, so a
//! smaller network can learn from the teacher's soft answers as well as from the labels.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use catsdogs_core::{BackendKind, InferenceError, LoadedModel};
use image::RgbImage;
use rayon::prelude::*;

use crate::data::{self, DataError};
use crate::seed_cnn::{TeacherTargets, TrainConfig};

/// Why the teacher's targets could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum DistillError {
    #[error("cannot load the teacher in {dir}: {source}")]
    Teacher { dir: PathBuf, source: InferenceError },
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Inference(#[from] InferenceError),
}

/// The teacher in `dir` scores every photo of `cfg`'s training split (the validation split
/// is never shown to it); `weight` is the share of the loss its targets get.
pub fn teacher_targets(dir: &Path, cfg: &TrainConfig, weight: f64) -> Result<TeacherTargets, DistillError> {
    let teacher = LoadedModel::load(dir, BackendKind::Onnxruntime, rayon::current_num_threads())
        .map_err(|source| DistillError::Teacher { dir: dir.to_path_buf(), source })?;
    let (train_split, _) = data::split(&data::scan(&cfg.data_dir)?, cfg.val_fraction, cfg.seed);
    let start = std::time::Instant::now();
    let mut p_dog = HashMap::with_capacity(train_split.len());
    for chunk in train_split.chunks(64) {
        // Unreadable photos are skipped here; training reports them.
        let (paths, images): (Vec<PathBuf>, Vec<RgbImage>) = chunk
            .par_iter()
            .filter_map(|s| {
                let bytes = std::fs::read(&s.path).ok()?;
                Some((s.path.clone(), teacher.preprocess(&bytes).ok()?))
            })
            .unzip();
        for (path, p) in paths.into_iter().zip(teacher.predict_images(&images)?) {
            p_dog.insert(path, p.p_dog);
        }
    }
    tracing::info!(
        teacher = %teacher.card.version,
        photos = p_dog.len(),
        seconds = start.elapsed().as_secs_f64(),
        "teacher targets computed"
    );
    Ok(TeacherTargets { name: teacher.card.version.clone(), weight, p_dog })
}
