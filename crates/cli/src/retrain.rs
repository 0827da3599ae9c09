//! `catsdogs retrain`: closes the feedback loop. Fine-tunes the served model on its training
//! folder plus the examples users corrected or confirmed (weighted), holding the newest
//! feedback out by time; puts the candidate in the registry with its lineage; scores
//! candidate and parent on the same fixed evaluation set and on the held-out feedback; and
//! writes a report (metrics side by side, ROC plots, the gate's verdict). Promotion stays a
//! separate, deliberate step (`catsdogs models promote --gate-data ...`).
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use catsdogs_core::gate::{self, GateRun, Scores};
use catsdogs_core::registry::Registry;
use catsdogs_core::transfer::{TransferConfig, train_head};
use catsdogs_core::{BackendKind, LoadedModel};
use catsdogs_model::card::{Lineage, ModelCard};
use catsdogs_model::data;
use catsdogs_model::plots::{self, Curve};
use catsdogs_model::seed_cnn;
use catsdogs_model::train::{self, TrainConfig};
use chrono::{DateTime, Utc};
use clap::Args;
use serde::Serialize;

/// The file `catsdogs data export` writes beside the `cat/` and `dog/` folders.
pub const MANIFEST: &str = "manifest.csv";
pub const MANIFEST_HEADER: &str = "file,label,created_at,prediction_id\n";

#[derive(Args)]
pub struct RetrainArgs {
    /// The registry directory.
    #[arg(long, env = "CATSDOGS_REGISTRY", default_value = "models/registry")]
    pub registry: PathBuf,
    /// Version to fine-tune (default: the one served, `current`).
    #[arg(long)]
    pub base: Option<String>,
    /// The training folder (cat/, dog/) the base model was trained on; its validation split
    /// (seed and fraction from the base's card) stays out of training.
    #[arg(long)]
    pub data: PathBuf,
    /// Feedback examples: the folder `catsdogs data export` wrote (with manifest.csv).
    #[arg(long)]
    pub feedback: PathBuf,
    /// Times each feedback example is drawn per pass over the training data.
    #[arg(long, default_value_t = 5)]
    pub feedback_weight: usize,
    /// Share of the feedback held out for evaluation: the newest examples.
    #[arg(long, default_value_t = 0.3)]
    pub holdout: f64,
    /// Fixed evaluation set (cat/, dog/); default: the base's validation split of --data.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Version of the candidate (default: `<base>-r<UTC time>`).
    #[arg(long)]
    pub version: Option<String>,
    /// Working directory (training run, feedback split); default runs/retrain/<version>.
    #[arg(long)]
    pub work: Option<PathBuf>,
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Optimisation steps per epoch (default: one pass over the training split).
    #[arg(long)]
    pub steps_per_epoch: Option<usize>,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Peak learning rate of the fine-tuning (lower than training from scratch).
    #[arg(long, default_value_t = 3e-4)]
    pub lr: f64,
    /// Use at most N training photos per class (quick runs).
    #[arg(long)]
    pub max_per_class: Option<usize>,
    /// efficientnet-lite0 bases: the pretrained checkpoint the backbone comes from.
    #[arg(long)]
    pub pretrained: Option<PathBuf>,
    /// efficientnet-lite0 bases: feature cache directory (see `catsdogs train`).
    #[arg(long)]
    pub feature_cache: Option<PathBuf>,
    /// Accuracy drop on the fixed set the gate tolerates (as for `models promote`).
    #[arg(long, default_value_t = 0.005)]
    pub tolerance: f64,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// One feedback example from the export's manifest.
#[derive(Debug, Clone)]
struct Example {
    path: PathBuf,
    label: String,
    created_at: DateTime<Utc>,
}

/// Reads `manifest.csv`: examples oldest first.
fn read_manifest(dir: &Path) -> Result<Vec<Example>> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("cannot read {} (write the feedback set with `catsdogs data export --out DIR`)", path.display())
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || format!("{} line {}: expected file,label,created_at,prediction_id", path.display(), i + 1);
        let fields: Vec<&str> = line.split(',').collect();
        let [file, label, at, _id] = fields[..] else { bail!(bad()) };
        if label != "cat" && label != "dog" {
            bail!("{}: label {label:?} is neither cat nor dog", bad());
        }
        let created_at = DateTime::parse_from_rfc3339(at).with_context(bad)?.with_timezone(&Utc);
        let file = Path::new(file);
        if file.is_absolute() || file.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            bail!("{}: {} points outside the folder", bad(), file.display());
        }
        out.push(Example { path: dir.join(file), label: label.to_string(), created_at });
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
fn link_folder(dir: &Path, examples: &[Example]) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    for class in ["cat", "dog"] {
        std::fs::create_dir_all(dir.join(class)).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    for e in examples {
        let src = std::path::absolute(&e.path)?;
        let name = src.file_name().context("feedback file without a name")?;
        let dst = dir.join(&e.label).join(name);
        std::os::unix::fs::symlink(&src, &dst).with_context(|| format!("cannot link {}", dst.display()))?;
    }
    Ok(())
}

/// What `retrain-report.json` holds.
#[derive(Serialize)]
struct Report<'a> {
    created_at: String,
    parent: &'a str,
    candidate: &'a str,
    architecture: &'a str,
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
fn roc_plots(dir: &Path, run: &GateRun, parent: &str, candidate: &str) -> Result<Vec<&'static str>> {
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
        plots::roc_comparison(dir, stem, &format!("ROC, {title}"), &curves).map_err(anyhow::Error::msg)?;
        drawn.push(stem);
    }
    Ok(drawn)
}

/// Trains the candidate into `out`; returns the training wall time.
fn fine_tune(
    a: &RetrainArgs,
    base: &ModelCard,
    base_dir: &Path,
    out: &Path,
    extra: &Path,
    version: &str,
) -> Result<f64> {
    let split = base.data.as_ref().context("the base model's card records no data split to keep out of training")?;
    let started = std::time::Instant::now();
    match base.architecture.as_str() {
        "seed-cnn" => {
            let mut cfg = TrainConfig::new(a.data.clone(), out.to_path_buf());
            // The shipped network has batch norm folded away: fine-tune it as it is.
            cfg.model = serde_json::from_value::<seed_cnn::Config>(base.architecture_config.clone())
                .context("the base card's architecture config")?;
            cfg.preprocess = base.preprocessing.config;
            cfg.init_weights = Some(base_dir.join(&base.weights));
            cfg.seed = split.split_seed;
            cfg.val_fraction = split.val_fraction;
            cfg.epochs = a.epochs;
            cfg.patience = a.epochs.max(1);
            cfg.steps_per_epoch = a.steps_per_epoch;
            cfg.batch_size = a.batch_size;
            cfg.learning_rate = a.lr;
            cfg.max_per_class = a.max_per_class;
            cfg.extra_data = Some(extra.to_path_buf());
            cfg.extra_weight = a.feedback_weight.max(1);
            // Milder augmentation than from scratch: the network already knows the task.
            cfg.augment.min_area = 0.8;
            cfg.augment.max_rotation_deg = 0.0;
            cfg.augment.jitter = 0.1;
            cfg.version = version.to_string();
            cfg.progress = !a.quiet;
            train::train(&cfg).context("fine-tuning failed")?;
        }
        "efficientnet-lite0" => {
            let pth = a.pretrained.clone().context("an efficientnet-lite0 base needs --pretrained PATH")?;
            // The backbone is frozen: the head is refitted on features of the training
            // split plus the weighted feedback, with the parent's recipe and split.
            let mut cfg = TransferConfig::new(a.data.clone(), pth, out.to_path_buf());
            cfg.seed = split.split_seed;
            cfg.val_fraction = split.val_fraction;
            cfg.max_per_class = a.max_per_class;
            cfg.center_crop_from = base.preprocessing.config.center_crop_from;
            cfg.feature_cache = a.feature_cache.clone();
            cfg.extra_data = Some(extra.to_path_buf());
            cfg.extra_weight = a.feedback_weight.max(1);
            cfg.version = version.to_string();
            train_head(&cfg).context("retraining the head failed")?;
        }
        other => bail!("cannot retrain architecture {other:?}"),
    }
    Ok(started.elapsed().as_secs_f64())
}

pub fn retrain(a: RetrainArgs) -> Result<()> {
    let reg = Registry::new(&a.registry);
    let parent = match &a.base {
        Some(v) => {
            Registry::check_version(v)?;
            v.clone()
        }
        None => reg.current().context("nothing is served from this registry yet: name the model with --base")?,
    };
    let parent_dir = reg.path(&parent);
    let base = ModelCard::load(&parent_dir.join("model.json"))
        .with_context(|| format!("{parent} is not in the registry {}", a.registry.display()))?;
    let version = a.version.clone().unwrap_or_else(|| format!("{parent}-r{}", Utc::now().format("%Y%m%d%H%M%S")));
    Registry::check_version(&version)?;
    if reg.path(&version).exists() {
        bail!("version {version} is already in the registry");
    }
    if a.max_per_class.is_some() && base.architecture != "seed-cnn" {
        // The head's recipe caps the photos before splitting, which would move photos of the
        // parent's validation split (the fixed evaluation set) into training.
        bail!("--max-per-class is for seed-cnn bases only: with {} it would train on the fixed set", base.architecture);
    }
    let work = a.work.clone().unwrap_or_else(|| PathBuf::from("runs/retrain").join(&version));

    let examples = read_manifest(&a.feedback)?;
    if examples.is_empty() {
        bail!("{} holds no feedback example: nothing to learn from", a.feedback.display());
    }
    let (trained, held) = split_by_time(&examples, a.holdout);
    let (train_dir, holdout_dir) = (work.join("feedback-train"), work.join("feedback-holdout"));
    link_folder(&train_dir, &trained)?;
    link_folder(&holdout_dir, &held)?;
    eprintln!(
        "feedback: {} examples, {} trained on (x{}), {} newest held out (from {})",
        examples.len(),
        trained.len(),
        a.feedback_weight,
        held.len(),
        held.first().map_or("-".into(), |e| e.created_at.to_rfc3339())
    );

    let out = work.join("model");
    let wall = fine_tune(&a, &base, &parent_dir, &out, &train_dir, &version)?;
    let mut card = ModelCard::load(&out.join("model.json"))?;
    let data_digest = card.data.as_ref().map(|d| d.digest.clone()).unwrap_or_default();
    if base.data.as_ref().is_some_and(|d| d.digest != data_digest) {
        eprintln!("warning: --data differs from the folder {parent} was trained on (digest {data_digest})");
    }
    let lineage = Lineage {
        parent: parent.clone(),
        data_digest: data_digest.clone(),
        feedback_digest: data::digest(&data::scan_labelled(&train_dir)?),
        feedback_train: trained.len(),
        feedback_weight: a.feedback_weight.max(1),
        feedback_holdout: held.len(),
    };
    card.lineage = Some(lineage.clone());
    card.save(&out.join("model.json"))?;
    reg.add(&out)?;
    let dir = reg.path(&version);
    // A candidate without its report must not stay in the registry (it could be promoted
    // unexamined, and its version would be taken).
    let evaluated = (|| -> Result<(String, PathBuf, bool)> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let load = |p: &Path| LoadedModel::load(p, BackendKind::Onnxruntime, threads);
        let (candidate, current) = (load(&dir)?, load(&parent_dir)?);
        let (fixed_dir, val_split) = match &a.eval_data {
            Some(d) => (d.clone(), false),
            None => (a.data.clone(), true),
        };
        let feedback_eval = (!held.is_empty()).then_some(holdout_dir.as_path());
        let run = gate::run(&candidate, &current, &fixed_dir, val_split, feedback_eval, a.tolerance)?;
        let report = Report {
            created_at: Utc::now().to_rfc3339(),
            parent: &parent,
            candidate: &version,
            architecture: &card.architecture,
            training_data: a.data.display().to_string(),
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
        std::fs::write(&json, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", json.display()))?;
        let plotted = roc_plots(&dir, &run, &parent, &version)?;
        let md = markdown(&report, &run, &plotted);
        std::fs::write(dir.join("retrain-report.md"), &md).context("cannot write the report")?;
        Ok((md, fixed_dir, val_split))
    })();
    let (md, fixed_dir, val_split) = match evaluated {
        Ok(done) => done,
        Err(e) => {
            if let Err(rm) = std::fs::remove_dir_all(&dir) {
                eprintln!("warning: cannot remove {}: {rm}", dir.display());
            }
            return Err(e.context(format!("evaluating {version} failed; it was taken out of the registry")));
        }
    };
    println!("{md}");
    eprintln!(
        "candidate {version} is in the registry; report: {}\nto promote it through the gate:\n  catsdogs models --registry {} promote {version} --gate-data {}{} --feedback-data {}",
        dir.join("retrain-report.md").display(),
        a.registry.display(),
        fixed_dir.display(),
        if val_split { " --val-split" } else { "" },
        holdout_dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(minute: u32) -> Example {
        Example {
            path: PathBuf::from(format!("cat/{minute}.jpg")),
            label: "cat".into(),
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
    fn a_manifest_is_read_oldest_first_and_checked() -> Result<()> {
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
        assert_eq!(e[0].label, "cat");
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
