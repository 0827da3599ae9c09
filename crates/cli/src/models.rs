//! `catsdogs models`: a registry of model versions on disk, and which one is served.
//!
//! ```text
//! REGISTRY/<version>/      a model directory (model.json, model.onnx, weights, plots)
//! REGISTRY/current         symbolic link to the served version (moved atomically)
//! REGISTRY/promotions.jsonl one line per promotion or rollback: time, version, previous, actor
//! ```
//! Serve `REGISTRY/current` (`catsdogs serve --model REGISTRY/current`); after `promote` or
//! `rollback`, `kill -HUP` the server or call `POST /api/admin/model/reload`.
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use catsdogs_core::{BackendKind, LoadedModel};
use catsdogs_model::card::ModelCard;
use chrono::Utc;
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

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

/// One line of `promotions.jsonl`.
#[derive(Debug, Serialize, Deserialize)]
struct Promotion {
    at: String,
    version: String,
    previous: Option<String>,
    actor: String,
    rollback: bool,
    /// Whether an evaluation gate ran and passed (absent: no gate was asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gate_passed: Option<bool>,
}

fn actor() -> String {
    format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()))
}

/// The version `current` points at.
fn current(registry: &Path) -> Option<String> {
    let target = std::fs::read_link(registry.join("current")).ok()?;
    target.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// A version name is one path component of letters, digits, `.`, `_`, `-`.
fn check_version(v: &str) -> Result<()> {
    let ok = !v.is_empty()
        && v != "."
        && v != ".."
        && v != "current"
        && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        bail!("{v:?} is not a usable version name (letters, digits, '.', '_', '-')");
    }
    Ok(())
}

/// Points `current` at `version` atomically: a new link, renamed over the old one.
fn point_current(registry: &Path, version: &str) -> Result<()> {
    let card = registry.join(version).join("model.json");
    ModelCard::load(&card).with_context(|| format!("{version} is not in the registry ({})", card.display()))?;
    let tmp = registry.join(".current.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp).context("cannot create the link")?;
    std::fs::rename(&tmp, registry.join("current")).context("cannot move the link")?;
    Ok(())
}

fn record(registry: &Path, p: &Promotion) -> Result<()> {
    let path = registry.join("promotions.jsonl");
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
    writeln!(f, "{}", serde_json::to_string(p)?)?;
    f.sync_all()?;
    Ok(())
}

fn promotions(registry: &Path) -> Result<Vec<Promotion>> {
    let path = registry.join("promotions.jsonl");
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(Vec::new()) };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad line in {}: {l}", path.display())))
        .collect()
}

/// Copies a model directory, leaving out training checkpoints (optimiser state).
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_name() == "checkpoint" {
            continue;
        }
        let dst = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dst)?;
        } else {
            std::fs::copy(e.path(), &dst).with_context(|| format!("cannot copy {}", e.path().display()))?;
        }
    }
    Ok(())
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
    let report = catsdogs_core::gate::run(&candidate, &current, data, val_split, feedback, tolerance)?;
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
    let reg = &a.registry;
    match a.command {
        ModelsCommand::List => {
            let served = current(reg);
            let mut rows = Vec::new();
            for e in std::fs::read_dir(reg).with_context(|| format!("cannot list {}", reg.display()))?.flatten() {
                // `current` is a link to one of the versions, listed under its own name.
                if e.file_name() == "current" {
                    continue;
                }
                if let Ok(card) = ModelCard::load(&e.path().join("model.json")) {
                    rows.push(card);
                }
            }
            rows.sort_by(|x, y| x.created_at.cmp(&y.created_at));
            println!("  {:<28} {:<20} {:>9} {:>9}  created", "version", "architecture", "accuracy", "log loss");
            for c in rows {
                let mark = if served.as_deref() == Some(c.version.as_str()) { "*" } else { " " };
                let (acc, loss) = c.validation.as_ref().map_or(("-".into(), "-".into()), |m| {
                    (format!("{:.2} %", m.accuracy * 100.0), format!("{:.4}", m.log_loss))
                });
                println!("{mark} {:<28} {:<20} {acc:>9} {loss:>9}  {}", c.version, c.architecture, c.created_at);
            }
        }
        ModelsCommand::Add { from } => {
            let card = ModelCard::load(&from.join("model.json"))
                .with_context(|| format!("{} holds no model.json", from.display()))?;
            check_version(&card.version)?;
            let dst = reg.join(&card.version);
            if dst.exists() {
                bail!("version {} is already in the registry; give the new model another version", card.version);
            }
            copy_dir(&from, &dst)?;
            if card.onnx.is_none() {
                // Served by ONNX Runtime: a model fresh from `catsdogs train` gets its graph now.
                let graph = catsdogs_core::export_onnx(&dst, None)
                    .with_context(|| format!("cannot write the ONNX graph of {}", card.version))?;
                eprintln!("wrote {}", graph.display());
            }
            println!("added {} as {}", from.display(), dst.display());
        }
        ModelsCommand::Promote { version, gate_data, val_split, feedback_data, tolerance } => {
            check_version(&version)?;
            let previous = current(reg);
            let gate_passed = match (&gate_data, &previous) {
                (Some(data), Some(now)) => {
                    Some(gate(reg, &version, now, data, val_split, feedback_data.as_deref(), tolerance)?)
                }
                (Some(_), None) => {
                    eprintln!("nothing is served yet: no gate to pass");
                    None
                }
                (None, _) => None,
            };
            point_current(reg, &version)?;
            let p = Promotion {
                at: Utc::now().to_rfc3339(),
                version,
                previous,
                actor: actor(),
                rollback: false,
                gate_passed,
            };
            record(reg, &p)?;
            println!("{}", serde_json::to_string(&p)?);
            eprintln!("now reload the server: kill -HUP <pid> or POST /api/admin/model/reload");
        }
        ModelsCommand::Rollback => {
            let last = promotions(reg)?.pop().context("nothing was promoted in this registry")?;
            let target = last.previous.context("the last promotion had no previous version")?;
            point_current(reg, &target)?;
            let p = Promotion {
                at: Utc::now().to_rfc3339(),
                version: target,
                previous: Some(last.version),
                actor: actor(),
                rollback: true,
                gate_passed: None,
            };
            record(reg, &p)?;
            println!("{}", serde_json::to_string(&p)?);
            eprintln!("now reload the server: kill -HUP <pid> or POST /api/admin/model/reload");
        }
    }
    Ok(())
}
