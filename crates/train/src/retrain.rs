//! Retraining from feedback: fine-tunes a registry model on its training folder plus the
//! examples users corrected or confirmed (weighted), holding the newest feedback out by
//! time; puts the candidate in the registry with its lineage; scores candidate and parent
//! on the same fixed evaluation set and on the held-out feedback; and writes a report
//! (metrics side by side, ROC plots, the gate's verdict). Promotion stays a separate,
//! deliberate step.
use std::path::{Path, PathBuf};

use catsdogs_core::registry::{Registry, RegistryError};
use catsdogs_core::{BackendKind, InferenceError, LoadedModel};
use catsdogs_model::Label;
use catsdogs_model::card::{Architecture, ArchitectureConfig, CardError, Lineage, ModelCard};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::data::{self, DataError};
use crate::eval::EvalError;
use crate::gate::{self, GateRun, Scores};
use crate::plots::{self, Curve};
use crate::seed_cnn::{self, TrainConfig, TrainError};
use crate::transfer::{TransferConfig, TransferError, train_head};

/// The file `catsdogs data export` writes beside the `cat/` and `dog/` folders.
pub const MANIFEST: &str = "manifest.csv";
pub const MANIFEST_HEADER: &str = "file,label,created_at,prediction_id\n";

/// Why a retraining stopped.
#[derive(Debug, thiserror::Error)]
pub enum RetrainError {
    #[error("cannot read {path} (write the feedback set with `catsdogs data export --out DIR`): {source}")]
    ManifestMissing { path: PathBuf, source: std::io::Error },
    #[error("{path} line {line}: {problem}")]
    Manifest { path: PathBuf, line: usize, problem: String },
    #[error("{0} holds no feedback example: nothing to learn from")]
    NoFeedback(PathBuf),
    #[error("nothing is served from this registry yet: name the model with --base")]
    NoCurrentModel,
    #[error("{version} is not in the registry {registry}: {source}")]
    UnknownBase { version: String, registry: PathBuf, source: CardError },
    #[error("version {0} is already in the registry")]
    VersionTaken(String),
    #[error("--max-per-class is for seed-cnn bases only: with {0} it would train on the fixed set")]
    MaxPerClassOnTransfer(Architecture),
    #[error("the base model's card records no data split to keep out of training")]
    NoSplit,
    #[error("an efficientnet-lite0 base needs --pretrained PATH")]
    NoPretrained,
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
    #[error(transparent)]
    Card(#[from] CardError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("fine-tuning failed: {0}")]
    Train(#[from] TrainError),
    #[error("retraining the head failed: {0}")]
    Transfer(#[from] TransferError),
    #[error(transparent)]
    Inference(#[from] InferenceError),
    #[error(transparent)]
    Eval(#[from] EvalError),
    #[error("plot: {0}")]
    Plot(String),
    #[error("cannot write the report: {0}")]
    Report(#[from] serde_json::Error),
    #[error("evaluating {version} failed; it was taken out of the registry: {source}")]
    Evaluation { version: String, source: Box<RetrainError> },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RetrainError + 'a {
    move |source| RetrainError::Io { what, path: path.to_path_buf(), source }
}

/// What a retraining needs (the CLI's `catsdogs retrain` flags).
#[derive(Debug, Clone)]
pub struct RetrainOptions {
    pub registry: PathBuf,
    /// Version to fine-tune (default: the one served, `current`).
    pub base: Option<String>,
    /// The training folder the base was trained on; its validation split stays out.
    pub data: PathBuf,
    /// The folder `catsdogs data export` wrote (with manifest.csv).
    pub feedback: PathBuf,
    /// Times each feedback example is drawn per pass over the training data.
    pub feedback_weight: usize,
    /// Share of the feedback held out for evaluation: the newest examples.
    pub holdout: f64,
    /// Fixed evaluation set; default: the base's validation split of `data`.
    pub eval_data: Option<PathBuf>,
    /// Version of the candidate (default: `<base>-r<UTC time>`).
    pub version: Option<String>,
    /// Working directory; default runs/retrain/<version>.
    pub work: Option<PathBuf>,
    pub epochs: usize,
    pub steps_per_epoch: Option<usize>,
    pub batch_size: usize,
    pub lr: f64,
    pub max_per_class: Option<usize>,
    /// efficientnet-lite0 bases: the pretrained checkpoint the backbone comes from.
    pub pretrained: Option<PathBuf>,
    /// efficientnet-lite0 bases: feature cache directory.
    pub feature_cache: Option<PathBuf>,
    /// Accuracy drop on the fixed set the gate tolerates.
    pub tolerance: f64,
    pub progress: bool,
}

/// What a finished retraining left, for the CLI to print.
#[derive(Debug, Clone)]
pub struct RetrainOutcome {
    pub candidate: String,
    /// The candidate's folder in the registry (report files inside).
    pub dir: PathBuf,
    /// `retrain-report.md`'s text.
    pub markdown: String,
    pub fixed_dir: PathBuf,
    pub val_split: bool,
    pub holdout_dir: PathBuf,
    pub feedback_total: usize,
    pub feedback_trained: usize,
    pub feedback_held: usize,
    /// Time of the oldest held-out example.
    pub held_from: Option<DateTime<Utc>>,
    /// Set when `data` is not the folder the parent was trained on (its digest).
    pub data_digest_mismatch: Option<String>,
}

/// One feedback example from the export's manifest.
#[derive(Debug, Clone)]
struct Example {
    path: PathBuf,
    label: Label,
    created_at: DateTime<Utc>,
}

/// Reads `manifest.csv`: examples oldest first.
fn read_manifest(dir: &Path) -> Result<Vec<Example>, RetrainError> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path)
        .map_err(|source| RetrainError::ManifestMissing { path: path.clone(), source })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |problem: &str| RetrainError::Manifest {
            path: path.clone(),
            line: i + 1,
            problem: format!("{problem} (expected file,label,created_at,prediction_id)"),
        };
        let fields: Vec<&str> = line.split(',').collect();
        let [file, label, at, _id] = fields[..] else { return Err(bad("wrong number of fields")) };
        let label: Label = label.parse().map_err(|e: catsdogs_model::label::UnknownLabel| bad(&e.to_string()))?;
        let created_at =
            DateTime::parse_from_rfc3339(at).map_err(|e| bad(&format!("created_at: {e}")))?.with_timezone(&Utc);
        let file = Path::new(file);
        if file.is_absolute() || file.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(bad(&format!("{} points outside the folder", file.display())));
        }
        out.push(Example { path: dir.join(file), label, created_at });
    }
    out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.path.cmp(&b.path)));
    Ok(out)
}

/// Splits examples by time: the newest `holdout` share (at least one when there are two or
/// more and the share is positive) is held out.
fn split_by_time(examples: &[Example], holdout: f64) -> (Vec<Example>, Vec<Example>) {
    let n = examples.len();
    let mut held = (n as f64 * holdout.clamp(0.0, 1.0)).round() as usize;
    if n < 2 {
        // A single example is trained on: holding it out would leave nothing to learn.
        held = 0;
    } else if holdout > 0.0 {
        held = held.clamp(1, n - 1);
    }
    let cut = n - held.min(n);
    (examples[..cut].to_vec(), examples[cut..].to_vec())
}

/// A `cat/` `dog/` folder of links to `examples` (the photos stay where the export put them).
fn link_folder(dir: &Path, examples: &[Example]) -> Result<(), RetrainError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io_err("cannot clear", dir))?;
    }
    for class in Label::ALL {
        std::fs::create_dir_all(dir.join(class.as_str())).map_err(io_err("cannot create", dir))?;
    }
    for e in examples {
        let src = std::path::absolute(&e.path).map_err(io_err("cannot resolve", &e.path))?;
        let Some(name) = src.file_name() else {
            return Err(RetrainError::Io {
                what: "feedback file without a name:",
                path: src.clone(),
                source: std::io::ErrorKind::InvalidInput.into(),
            });
        };
        let dst = dir.join(e.label.as_str()).join(name);
        std::os::unix::fs::symlink(&src, &dst).map_err(io_err("cannot link", &dst))?;
    }
    Ok(())
}

/// What `retrain-report.json` holds.
#[derive(Serialize)]
struct Report<'a> {
    created_at: String,
    parent: &'a str,
    candidate: &'a str,
    architecture: Architecture,
    training_data: String,
    data_digest: &'a str,
    fixed_set: String,
    lineage: &'a Lineage,
    /// The held-out files stay in the working folder (`feedback-holdout/`): their names are
    /// prediction ids, which the registry (outside retention and erasure) must not keep.
    training_wall_time_s: f64,
    gate: &'a gate::GateReport,
}

fn metrics_rows(name: &str, s: &Scores, out: &mut String) {
    for (who, r) in [("candidate", &s.candidate), ("parent", &s.current)] {
        let m = &r.metrics;
        out.push_str(&format!(
            "| {name} | {who} | {} | {:.2} % | {:.4} | {:.4} | {:.4} | {} / {} |\n",
            m.count,
            m.accuracy * 100.0,
            m.roc_auc,
            m.log_loss,
            m.ece,
            m.confusion[0][1],
            m.confusion[1][0]
        ));
    }
}

fn markdown(report: &Report, run: &GateRun, plotted: &[&str]) -> String {
    let mut s = format!(
        "# Retraining report: {} from {}\n\n{}\n\nTraining folder `{}` (digest {}); fixed evaluation set: {}.\n\
         Feedback: {} examples trained on (each drawn {}x per pass), {} newest held out (digest {}).\n\n\
         | set | model | photos | accuracy | ROC AUC | log loss | ECE | cats called dog / dogs called cat |\n\
         |---|---|---|---|---|---|---|---|\n",
        report.candidate,
        report.parent,
        report.created_at,
        report.training_data,
        report.data_digest,
        report.fixed_set,
        report.lineage.feedback_train,
        report.lineage.feedback_weight,
        report.lineage.feedback_holdout,
        report.lineage.feedback_digest,
    );
    metrics_rows("fixed", &run.fixed, &mut s);
    if let Some(f) = &run.feedback {
        metrics_rows("feedback (held out)", f, &mut s);
    }
    s.push_str(&format!(
        "\nGate (tolerance {:.3}): **{}**\n\n",
        run.report.tolerance,
        if run.report.passed { "would pass" } else { "would not pass" }
    ));
    for r in &run.report.reasons {
        s.push_str(&format!("- {r}\n"));
    }
    s.push('\n');
    for stem in plotted {
        s.push_str(&format!("![{stem}]({stem}.svg)\n"));
    }
    s
}

/// Draws the ROC comparisons; a set with one class only has no ROC curve and is skipped.
/// Returns the stems drawn.
fn roc_plots(dir: &Path, run: &GateRun, parent: &str, candidate: &str) -> Result<Vec<&'static str>, RetrainError> {
    let mut drawn = Vec::new();
    let sets = [
        ("roc_fixed", "fixed evaluation set", Some(&run.fixed)),
        ("roc_feedback", "held-out feedback", run.feedback.as_ref()),
    ];
    for (stem, title, scores) in sets {
        let Some(s) = scores else { continue };
        if !(s.current.labels.contains(&0) && s.current.labels.contains(&1)) {
            continue;
        }
        let curves = [
            Curve { name: candidate, p_dog: &s.candidate.p_dog, labels: &s.candidate.labels },
            Curve { name: parent, p_dog: &s.current.p_dog, labels: &s.current.labels },
        ];
        plots::roc_comparison(dir, stem, &format!("ROC, {title}"), &curves)
            .map_err(|e| RetrainError::Plot(e.to_string()))?;
        drawn.push(stem);
    }
    Ok(drawn)
}

/// Trains the candidate into `out`; returns the training wall time.
fn fine_tune(
    o: &RetrainOptions,
    base: &ModelCard,
    base_dir: &Path,
    out: &Path,
    extra: &Path,
    version: &str,
) -> Result<f64, RetrainError> {
    let split = base.data.as_ref().ok_or(RetrainError::NoSplit)?;
    let started = std::time::Instant::now();
    match base.architecture_config()? {
        ArchitectureConfig::SeedCnn(network) => {
            let mut cfg = TrainConfig::new(o.data.clone(), out.to_path_buf());
            // The shipped network has batch norm folded away: fine-tune it as it is.
            cfg.model = network;
            cfg.preprocess = base.preprocessing.config;
            cfg.init_weights = Some(base_dir.join(&base.weights));
            cfg.seed = split.split_seed;
            cfg.val_fraction = split.val_fraction;
            cfg.epochs = o.epochs;
            cfg.patience = o.epochs.max(1);
            cfg.steps_per_epoch = o.steps_per_epoch;
            cfg.batch_size = o.batch_size;
            cfg.learning_rate = o.lr;
            cfg.max_per_class = o.max_per_class;
            cfg.extra_data = Some(extra.to_path_buf());
            cfg.extra_weight = o.feedback_weight.max(1);
            // Milder augmentation than from scratch: the network already knows the task.
            cfg.augment.min_area = 0.8;
            cfg.augment.max_rotation_deg = 0.0;
            cfg.augment.jitter = 0.1;
            cfg.version = version.to_string();
            cfg.progress = o.progress;
            seed_cnn::train(&cfg)?;
        }
        ArchitectureConfig::EfficientNetLite0 { .. } => {
            let pth = o.pretrained.clone().ok_or(RetrainError::NoPretrained)?;
            // The backbone is frozen: the head is refitted on features of the training
            // split plus the weighted feedback, with the parent's recipe and split.
            let mut cfg = TransferConfig::new(o.data.clone(), pth, out.to_path_buf());
            cfg.seed = split.split_seed;
            cfg.val_fraction = split.val_fraction;
            cfg.max_per_class = o.max_per_class;
            cfg.center_crop_from = base.preprocessing.config.center_crop_from;
            cfg.feature_cache = o.feature_cache.clone();
            cfg.extra_data = Some(extra.to_path_buf());
            cfg.extra_weight = o.feedback_weight.max(1);
            cfg.version = version.to_string();
            train_head(&cfg)?;
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Runs a whole retraining: split the feedback, fine-tune, register the candidate with its
/// lineage, score it against its parent and write the report beside it. A candidate whose
/// evaluation fails is taken out of the registry again.
pub fn retrain(o: &RetrainOptions) -> Result<RetrainOutcome, RetrainError> {
    let reg = Registry::new(&o.registry);
    let parent = match &o.base {
        Some(v) => {
            Registry::check_version(v)?;
            v.clone()
        }
        None => reg.current().ok_or(RetrainError::NoCurrentModel)?,
    };
    let parent_dir = reg.path(&parent);
    let base = ModelCard::load(&parent_dir.join("model.json")).map_err(|source| RetrainError::UnknownBase {
        version: parent.clone(),
        registry: o.registry.clone(),
        source,
    })?;
    let version = o.version.clone().unwrap_or_else(|| format!("{parent}-r{}", Utc::now().format("%Y%m%d%H%M%S")));
    Registry::check_version(&version)?;
    if reg.path(&version).exists() {
        return Err(RetrainError::VersionTaken(version));
    }
    if o.max_per_class.is_some() && base.architecture != Architecture::SeedCnn {
        // The head's recipe caps the photos before splitting, which would move photos of the
        // parent's validation split (the fixed evaluation set) into training.
        return Err(RetrainError::MaxPerClassOnTransfer(base.architecture));
    }
    let work = o.work.clone().unwrap_or_else(|| PathBuf::from("runs/retrain").join(&version));

    let examples = read_manifest(&o.feedback)?;
    if examples.is_empty() {
        return Err(RetrainError::NoFeedback(o.feedback.clone()));
    }
    let (trained, held) = split_by_time(&examples, o.holdout);
    let (train_dir, holdout_dir) = (work.join("feedback-train"), work.join("feedback-holdout"));
    link_folder(&train_dir, &trained)?;
    link_folder(&holdout_dir, &held)?;
    tracing::info!(
        examples = examples.len(),
        trained = trained.len(),
        weight = o.feedback_weight,
        held_out = held.len(),
        "feedback split by time"
    );

    let out = work.join("model");
    let wall = fine_tune(o, &base, &parent_dir, &out, &train_dir, &version)?;
    let mut card = ModelCard::load(&out.join("model.json"))?;
    let data_digest = card.data.as_ref().map(|d| d.digest.clone()).unwrap_or_default();
    let data_digest_mismatch = base.data.as_ref().is_some_and(|d| d.digest != data_digest).then(|| data_digest.clone());
    let lineage = Lineage {
        parent: parent.clone(),
        data_digest: data_digest.clone(),
        feedback_digest: data::digest(&data::scan_labelled(&train_dir)?),
        feedback_train: trained.len(),
        feedback_weight: o.feedback_weight.max(1),
        feedback_holdout: held.len(),
    };
    card.lineage = Some(lineage.clone());
    card.save(&out.join("model.json"))?;
    crate::export::register(&reg, &out)?;
    let dir = reg.path(&version);
    // A candidate without its report must not stay in the registry (it could be promoted
    // unexamined, and its version would be taken).
    let evaluated = (|| -> Result<(String, PathBuf, bool), RetrainError> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let load = |p: &Path| LoadedModel::load(p, BackendKind::Onnxruntime, threads);
        let (candidate, current) = (load(&dir)?, load(&parent_dir)?);
        let (fixed_dir, val_split) = match &o.eval_data {
            Some(d) => (d.clone(), false),
            None => (o.data.clone(), true),
        };
        let feedback_eval = (!held.is_empty()).then_some(holdout_dir.as_path());
        let run = gate::run(&candidate, &current, &fixed_dir, val_split, feedback_eval, o.tolerance)?;
        let report = Report {
            created_at: Utc::now().to_rfc3339(),
            parent: &parent,
            candidate: &version,
            architecture: card.architecture,
            training_data: o.data.display().to_string(),
            data_digest: &data_digest,
            fixed_set: if val_split {
                format!("validation split of {} (seed and fraction from {parent}'s card)", fixed_dir.display())
            } else {
                fixed_dir.display().to_string()
            },
            lineage: &lineage,
            training_wall_time_s: wall,
            gate: &run.report,
        };
        let json = dir.join("retrain-report.json");
        std::fs::write(&json, serde_json::to_string_pretty(&report)?).map_err(io_err("cannot write", &json))?;
        let plotted = roc_plots(&dir, &run, &parent, &version)?;
        let md = markdown(&report, &run, &plotted);
        let md_path = dir.join("retrain-report.md");
        std::fs::write(&md_path, &md).map_err(io_err("cannot write", &md_path))?;
        // The candidate's own drift reference, on the fixed set as training writes it on its
        // validation split: once promoted, drift checks compare with this model, not its parent.
        // The photos the gate scored: selected with the parent's card, as `gate::run` does.
        let samples = crate::eval::select_samples(&current, &fixed_dir, val_split, None)?;
        crate::reference::write_reference(&candidate, &samples, &report.fixed_set, 32)?;
        Ok((md, fixed_dir, val_split))
    })();
    let (markdown, fixed_dir, val_split) = match evaluated {
        Ok(done) => done,
        Err(e) => {
            if let Err(rm) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %rm, "cannot remove the unevaluated candidate");
            }
            return Err(RetrainError::Evaluation { version, source: Box::new(e) });
        }
    };
    Ok(RetrainOutcome {
        candidate: version,
        dir,
        markdown,
        fixed_dir,
        val_split,
        holdout_dir,
        feedback_total: examples.len(),
        feedback_trained: trained.len(),
        feedback_held: held.len(),
        held_from: held.first().map(|e| e.created_at),
        data_digest_mismatch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(minute: u32) -> Example {
        Example {
            path: PathBuf::from(format!("cat/{minute}.jpg")),
            label: Label::Cat,
            created_at: DateTime::parse_from_rfc3339(&format!("2026-11-01T10:{minute:02}:00Z"))
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_default(),
        }
    }

    #[test]
    fn the_newest_feedback_is_held_out() {
        let all: Vec<Example> = (0..10).map(ex).collect();
        let (train, held) = split_by_time(&all, 0.3);
        assert_eq!((train.len(), held.len()), (7, 3));
        assert!(train.iter().all(|t| held.iter().all(|h| t.created_at < h.created_at)));
        // Two examples and a positive share: one of each; none held out when asked so.
        assert_eq!(split_by_time(&all[..2], 0.1).1.len(), 1);
        assert_eq!(split_by_time(&all, 0.0).1.len(), 0);
        assert_eq!(split_by_time(&all[..1], 0.5).1.len(), 0, "a single example is trained on");
    }

    #[test]
    fn a_manifest_is_read_oldest_first_and_checked() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let m = dir.path().join(MANIFEST);
        std::fs::write(
            &m,
            format!(
                "{MANIFEST_HEADER}dog/b.jpg,dog,2026-11-02T00:00:00+00:00,b\ncat/a.png,cat,2026-11-01T00:00:00Z,a\n"
            ),
        )?;
        let e = read_manifest(dir.path())?;
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].label, Label::Cat);
        assert_eq!(e[1].path, dir.path().join("dog/b.jpg"));
        for bad in [
            "x/a.jpg,bird,2026-11-01T00:00:00Z,a",
            "../a.jpg,cat,2026-11-01T00:00:00Z,a",
            "cat/a.jpg,cat,yesterday,a",
            "cat/a.jpg,cat",
        ] {
            std::fs::write(&m, format!("{MANIFEST_HEADER}{bad}\n"))?;
            assert!(read_manifest(dir.path()).is_err(), "{bad}");
        }
        Ok(())
    }
}
