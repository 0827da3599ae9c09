//! `catsdogs reference`: the drift reference of a model (docs/drift.md), computed on
//! labelled photos with the serving path's own preprocessing and written next to its card.
use std::path::{Path, PathBuf};

use catsdogs_core::{BackendKind, InferenceError, LoadedModel};
use catsdogs_model::drift::{InputProperties, Observation, REFERENCE_FILE, ReferenceStats};
use catsdogs_model::preprocess;
use rayon::prelude::*;

use crate::data::Sample;
use crate::eval::EvalError;

/// What one photo gives the reference: the model input and the upload's upright size.
fn prepare(model: &LoadedModel, path: &Path) -> Option<(image::RgbImage, (u32, u32))> {
    let bytes = std::fs::read(path).ok()?;
    let config = model.preprocess_config();
    let plan = preprocess::plan_decode(&bytes, config.max_pixels, preprocess::needed_short_side(&config)).ok()?;
    let rgb = preprocess::decode_planned(&bytes, &plan).ok()?;
    Some((model.preprocess_pixels(&rgb).ok()?, plan.upright_size()))
}

/// Classifies `samples` as the server would and summarises them; unreadable files are
/// skipped (counted in the returned number).
pub fn observe(model: &LoadedModel, samples: &[Sample], batch: usize) -> Result<(Vec<Observation>, usize), EvalError> {
    let prepared: Vec<_> = samples.par_iter().filter_map(|s| prepare(model, &s.path)).collect();
    let skipped = samples.len() - prepared.len();
    Ok((observe_inputs(model, &prepared, batch)?, skipped))
}

/// Classifies model inputs (each with the upright size of the image it came from) and
/// returns what drift monitoring records of each, as the server records it.
pub fn observe_inputs(
    model: &LoadedModel,
    prepared: &[(image::RgbImage, (u32, u32))],
    batch: usize,
) -> Result<Vec<Observation>, EvalError> {
    let mut out = Vec::with_capacity(prepared.len());
    for chunk in prepared.chunks(batch.max(1)) {
        let images: Vec<image::RgbImage> = chunk.iter().map(|(img, _)| img.clone()).collect();
        for (p, (img, size)) in model.predict_images(&images)?.into_iter().zip(chunk) {
            out.push(Observation {
                p_dog: p.p_dog,
                embedding: p.embedding,
                properties: Some(InputProperties::of(img, *size)),
                is_cat_or_dog: p.is_cat_or_dog,
            });
        }
    }
    if out.is_empty() {
        return Err(EvalError::NothingDecoded);
    }
    Ok(out)
}

/// Computes the reference of `model` on `samples` (described by `source`) and writes it to
/// `<model dir>/reference.json`. Returns the file and the statistics.
pub fn write_reference(
    model: &LoadedModel,
    samples: &[Sample],
    source: &str,
    batch: usize,
) -> Result<(PathBuf, ReferenceStats), EvalError> {
    let (observations, _) = observe(model, samples, batch)?;
    let stats = ReferenceStats::build(&model.card.version, source, model.tta_flip, &observations);
    let path = model.dir.join(REFERENCE_FILE);
    let text = serde_json::to_string(&stats).map_err(std::io::Error::other);
    text.and_then(|t| std::fs::write(&path, t)).map_err(|source| EvalError::Write { path: path.clone(), source })?;
    Ok((path, stats))
}

/// The drift reference of a freshly trained model in `model_dir` on the validation split of
/// `data_dir` its card records, written next to the card: what `catsdogs train` does last.
/// Runs the graph with ONNX Runtime when the directory has one, else the candle network.
pub fn write_after_training(model_dir: &Path, data_dir: &Path, batch: usize) -> Result<ReferenceStats, EvalError> {
    let card = catsdogs_model::card::ModelCard::load(&model_dir.join("model.json")).map_err(InferenceError::from)?;
    let has_graph = card.onnx.as_ref().is_some_and(|f| model_dir.join(f).is_file());
    let backend = if has_graph { BackendKind::Onnxruntime } else { BackendKind::Candle };
    let model = LoadedModel::load(model_dir, backend, 2)?;
    let samples = crate::eval::select_samples(&model, data_dir, true, None)?;
    Ok(write_reference(&model, &samples, "validation split", batch)?.1)
}
