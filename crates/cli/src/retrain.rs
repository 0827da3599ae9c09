//! `catsdogs retrain`: the flags and what is printed; the work is
//! [`catsdogs_train::retrain`].
use std::path::PathBuf;

use anyhow::Result;
use catsdogs_train::retrain::{RetrainOptions, retrain as run};
use clap::Args;

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

impl From<RetrainArgs> for RetrainOptions {
    fn from(a: RetrainArgs) -> Self {
        Self {
            registry: a.registry,
            base: a.base,
            data: a.data,
            feedback: a.feedback,
            feedback_weight: a.feedback_weight,
            holdout: a.holdout,
            eval_data: a.eval_data,
            version: a.version,
            work: a.work,
            epochs: a.epochs,
            steps_per_epoch: a.steps_per_epoch,
            batch_size: a.batch_size,
            lr: a.lr,
            max_per_class: a.max_per_class,
            pretrained: a.pretrained,
            feature_cache: a.feature_cache,
            tolerance: a.tolerance,
            progress: !a.quiet,
        }
    }
}

pub fn retrain(a: RetrainArgs) -> Result<()> {
    let registry = a.registry.clone();
    let o = run(&a.into())?;
    eprintln!(
        "feedback: {} examples, {} trained on, {} newest held out (from {})",
        o.feedback_total,
        o.feedback_trained,
        o.feedback_held,
        o.held_from.map_or("-".into(), |t| t.to_rfc3339())
    );
    if let Some(digest) = &o.data_digest_mismatch {
        eprintln!("warning: --data differs from the folder the parent was trained on (digest {digest})");
    }
    println!("{}", o.markdown);
    eprintln!(
        "candidate {} is in the registry; report: {}\nto promote it through the gate:\n  catsdogs models --registry {} promote {} --gate-data {}{} --feedback-data {}",
        o.candidate,
        o.dir.join("retrain-report.md").display(),
        registry.display(),
        o.candidate,
        o.fixed_dir.display(),
        if o.val_split { " --val-split" } else { "" },
        o.holdout_dir.display()
    );
    Ok(())
}
