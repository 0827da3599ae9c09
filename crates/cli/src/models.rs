//! `catsdogs models`: the model registry ([`catsdogs_core::registry`]) from the command line.
//! Serve `REGISTRY/current` (`catsdogs serve --model REGISTRY/current`); after `promote` or
//! `rollback`, `kill -HUP` the server or call `POST /api/admin/model/reload`.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use catsdogs_core::registry::{Promotion, Registry};
use catsdogs_core::{BackendKind, LoadedModel};
use chrono::Utc;
use clap::{Args, Subcommand};

use crate::db::actor;

#[derive(Args)]
pub struct ModelsArgs {
    /// The registry directory.
    #[arg(long, env = "CATSDOGS_REGISTRY", default_value = "models/registry")]
    pub registry: PathBuf,
    #[command(subcommand)]
    pub command: ModelsCommand,
}

#[derive(Subcommand)]
pub enum ModelsCommand {
    /// Versions with their validation metrics; `*` marks the served one.
    List,
    /// Copy a trained model directory into the registry under its card's version.
    Add {
        /// Model directory (holding model.json).
        from: PathBuf,
    },
    /// Serve VERSION from now on (then reload the server). With --gate-data, only if it
    /// passes the evaluation gate against the version served now.
    Promote {
        version: String,
        /// Evaluation gate: labelled folder (cat/, dog/) of the fixed evaluation set.
        #[arg(long)]
        gate_data: Option<PathBuf>,
        /// Gate on the current model's validation split of --gate-data (from its card).
        #[arg(long)]
        val_split: bool,
        /// Gate: feedback examples (`catsdogs data export`) the candidate must do better on.
        #[arg(long)]
        feedback_data: Option<PathBuf>,
        /// Gate: largest accuracy drop on the fixed set still accepted (0.005 = half a point).
        #[arg(long, default_value_t = 0.005)]
        tolerance: f64,
    },
    /// Serve the version that was served before the last promotion.
    Rollback,
}

/// Runs the evaluation gate of `version` against `now`, writes `REGISTRY/<version>/gate.json`
/// and fails when the candidate does not pass.
fn gate(
    reg: &Path,
    version: &str,
    now: &str,
    data: &Path,
    val_split: bool,
    feedback: Option<&Path>,
    tolerance: f64,
) -> Result<bool> {
    let load = |v: &str| {
        LoadedModel::load(&reg.join(v), BackendKind::Onnxruntime, 2).with_context(|| format!("cannot load {v}"))
    };
    let (candidate, current) = (load(version)?, load(now)?);
    let report = catsdogs_train::gate::run(&candidate, &current, data, val_split, feedback, tolerance)?.report;
    let path = reg.join(version).join("gate.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    for r in &report.reasons {
        eprintln!("gate: {r}");
    }
    if !report.passed {
        bail!("{version} did not pass the evaluation gate against {now} (report: {})", path.display());
    }
    Ok(true)
}

pub fn models(a: ModelsArgs) -> Result<()> {
    let reg = Registry::new(&a.registry);
    let dir = a.registry.as_path();
    match a.command {
        ModelsCommand::List => {
            println!(
                "  {:<28} {:<20} {:>9} {:>9}  {:<16} {:<24} created",
                "version", "architecture", "accuracy", "log loss", "data digest", "parent (+feedback)"
            );
            for v in reg.versions()? {
                let mark = if v.served { "*" } else { " " };
                let (acc, loss) = v.validation.as_ref().map_or(("-".into(), "-".into()), |m| {
                    (format!("{:.2} %", m.accuracy * 100.0), format!("{:.4}", m.log_loss))
                });
                let parent = v
                    .lineage
                    .as_ref()
                    .map_or("-".to_string(), |l| format!("{} (+{}x{})", l.parent, l.feedback_train, l.feedback_weight));
                println!(
                    "{mark} {:<28} {:<20} {acc:>9} {loss:>9}  {:<16} {parent:<24} {}",
                    v.version,
                    v.architecture,
                    v.data_digest.as_deref().unwrap_or("-"),
                    v.created_at
                );
            }
        }
        ModelsCommand::Add { from } => {
            let version = catsdogs_train::export::register(&reg, &from)?;
            println!("added {} as {}", from.display(), reg.path(&version).display());
        }
        ModelsCommand::Promote { version, gate_data, val_split, feedback_data, tolerance } => {
            Registry::check_version(&version)?;
            let previous = reg.current();
            let gate_passed = match (&gate_data, &previous) {
                (Some(data), Some(now)) => {
                    Some(gate(dir, &version, now, data, val_split, feedback_data.as_deref(), tolerance)?)
                }
                (Some(_), None) => {
                    eprintln!("nothing is served yet: no gate to pass");
                    None
                }
                (None, _) => None,
            };
            let p = Promotion {
                at: Utc::now().to_rfc3339(),
                version: version.clone(),
                previous,
                actor: actor(),
                rollback: false,
                gate_passed,
            };
            // `previous` is read again under the registry's lock (another promotion may
            // have happened while the gate ran).
            let p = reg.promote(&version, p)?;
            println!("{}", serde_json::to_string(&p)?);
            eprintln!("now reload the server: kill -HUP <pid> or POST /api/admin/model/reload");
        }
        ModelsCommand::Rollback => {
            let p = Promotion {
                at: Utc::now().to_rfc3339(),
                version: String::new(),
                previous: None,
                actor: actor(),
                rollback: true,
                gate_passed: None,
            };
            let p = reg.rollback(p)?;
            println!("{}", serde_json::to_string(&p)?);
            eprintln!("now reload the server: kill -HUP <pid> or POST /api/admin/model/reload");
        }
    }
    Ok(())
}
