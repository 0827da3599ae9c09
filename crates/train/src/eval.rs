//! Evaluation of a loaded model on a labelled folder, through whichever backend it uses.
use std::path::{Path, PathBuf};

use crate::data::{self, CAT, DOG, Sample};
use catsdogs_model::metrics::{self, Metrics};
use image::RgbImage;
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use rayon::prelude::*;

use catsdogs_core::{InferenceError, LoadedModel};

/// Errors of an evaluation run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error(transparent)]
    Inference(#[from] InferenceError),
    #[error("the model card records no data split, so --val-split cannot be used")]
    NoSplit,
    #[error("no image in the folder could be decoded")]
    NothingDecoded,
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("plotting failed: {0}")]
    Plot(String),
}

/// Per-image results and their summary.
pub struct EvalReport {
    pub metrics: Metrics,
    pub p_dog: Vec<f32>,
    pub labels: Vec<u8>,
    pub files: Vec<PathBuf>,
    /// Files that could not be decoded, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
    pub backend: String,
}

impl EvalReport {
    /// A plain-text table of the metrics.
    pub fn table(&self) -> String {
        let m = &self.metrics;
        let c = m.confusion;
        format!(
            "backend          {}\nimages           {} ({} skipped)\naccuracy         {:.2} %\nROC AUC          {:.4}\nlog loss         {:.4}\nECE (10 bins)    {:.4}\n\
             confusion        predicted cat  predicted dog\n  true cat       {:>13}  {:>13}\n  true dog       {:>13}  {:>13}",
            self.backend,
            m.count,
            self.skipped.len(),
            100.0 * m.accuracy,
            m.roc_auc,
            m.log_loss,
            m.ece,
            c[0][0],
            c[0][1],
            c[1][0],
            c[1][1]
        )
    }
}

/// The labelled files to evaluate: the whole folder, or the validation split recorded in
/// the card; optionally a fixed seeded sample of at most `max_per_class` per class.
pub fn select_samples(
    model: &LoadedModel,
    data_dir: &Path,
    val_split: bool,
    max_per_class: Option<usize>,
) -> Result<Vec<Sample>, EvalError> {
    let all = data::scan(data_dir)?;
    let mut chosen = if val_split {
        let d = model.card.data.as_ref().ok_or(EvalError::NoSplit)?;
        data::split(&all, d.val_fraction, d.split_seed).1
    } else {
        all
    };
    if let Some(n) = max_per_class {
        let mut sample = Vec::new();
        for label in [CAT, DOG] {
            let mut class: Vec<Sample> = chosen.iter().filter(|s| s.label == label).cloned().collect();
            class.shuffle(&mut StdRng::seed_from_u64(0x5eed));
            sample.extend(class.into_iter().take(n));
        }
        chosen = sample;
    }
    Ok(chosen)
}

/// Preprocesses (the shared path), classifies and scores a labelled folder.
pub fn evaluate(
    model: &LoadedModel,
    data_dir: &Path,
    val_split: bool,
    max_per_class: Option<usize>,
    batch: usize,
) -> Result<EvalReport, EvalError> {
    let samples = select_samples(model, data_dir, val_split, max_per_class)?;
    evaluate_samples(model, samples, batch)
}

/// Classifies and scores given samples (several models on the very same set).
pub fn evaluate_samples(model: &LoadedModel, samples: Vec<Sample>, batch: usize) -> Result<EvalReport, EvalError> {
    let prepared: Vec<(Sample, Result<RgbImage, String>)> = samples
        .into_par_iter()
        .map(|s| {
            let r = std::fs::read(&s.path)
                .map_err(|e| e.to_string())
                .and_then(|b| model.preprocess(&b).map_err(|e| e.to_string()));
            (s, r)
        })
        .collect();
    let (mut files, mut labels, mut images, mut skipped) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (s, r) in prepared {
        match r {
            Ok(img) => {
                files.push(s.path);
                labels.push(s.label);
                images.push(img);
            }
            Err(e) => skipped.push((s.path, e)),
        }
    }
    if images.is_empty() {
        return Err(EvalError::NothingDecoded);
    }
    let mut p_dog = Vec::with_capacity(images.len());
    for chunk in images.chunks(batch.max(1)) {
        p_dog.extend(model.predict_images(chunk)?.into_iter().map(|p| p.p_dog));
    }
    Ok(EvalReport {
        metrics: metrics::compute(&p_dog, &labels),
        p_dog,
        labels,
        files,
        skipped,
        backend: model.backend_kind().to_string(),
    })
}

/// Evaluates a labelled folder and writes, into `out` (default: `<model dir>/eval`), the
/// evaluation plots and `predictions.csv`, the misclassified first (most confident mistakes
/// on top), so that what the model gets wrong can be looked at.
pub fn evaluate_folder(
    model: &LoadedModel,
    data: &Path,
    val_split: bool,
    max_per_class: Option<usize>,
    batch: usize,
    out: Option<PathBuf>,
) -> Result<(EvalReport, PathBuf), EvalError> {
    let report = evaluate(model, data, val_split, max_per_class, batch)?;
    let out = out.unwrap_or_else(|| model.dir.join("eval"));
    std::fs::create_dir_all(&out).map_err(|source| EvalError::Write { path: out.clone(), source })?;
    crate::plots::evaluation_plots(&out, &report.p_dog, &report.labels).map_err(|e| EvalError::Plot(e.to_string()))?;
    let mut rows: Vec<(bool, f32, String)> = report
        .files
        .iter()
        .zip(&report.p_dog)
        .zip(&report.labels)
        .map(|((f, &p), &l)| {
            let wrong = (p >= 0.5) != (l == DOG);
            let confidence = if l == DOG { 1.0 - p } else { p };
            let label = catsdogs_model::Label::from_index(l).map_or("?", |l| l.as_str());
            (!wrong, -confidence, format!("{},{label},{p:.6},{}\n", f.display(), !wrong))
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let csv = out.join("predictions.csv");
    let body: String =
        std::iter::once("file,true_label,p_dog,correct\n".to_string()).chain(rows.into_iter().map(|r| r.2)).collect();
    std::fs::write(&csv, body).map_err(|source| EvalError::Write { path: csv, source })?;
    Ok((report, out))
}
