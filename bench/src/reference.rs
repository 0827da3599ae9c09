//! The Python references (bench/reference/): the venv they run in, and their JSON output.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::forward::ForwardRow;

/// Creates the venv if needed (`bench/reference/setup.sh`, several GB the first time) and
/// returns its python.
pub fn python() -> Result<PathBuf> {
    let out = Command::new("bash")
        .arg("bench/reference/setup.sh")
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run bench/reference/setup.sh")?;
    if !out.status.success() {
        bail!("bench/reference/setup.sh failed ({})", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().context("setup.sh printed no python path")?;
    Ok(PathBuf::from(last.trim()))
}

/// Runs a reference script and parses the one JSON line it prints.
fn run_json(python: &Path, script: &str, args: &[String]) -> Result<serde_json::Value> {
    let out = Command::new(python)
        .arg(format!("bench/reference/{script}"))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {script}"))?;
    if !out.status.success() {
        bail!("{script} failed ({})", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).context("no JSON line")?;
    serde_json::from_str(line).with_context(|| format!("{script} printed bad JSON: {line}"))
}

/// What `models.py` measured.
pub struct PythonForward {
    pub rows: Vec<ForwardRow>,
    /// Largest |p_dog(PyTorch) - p_dog(ONNX Runtime)| per "engine / model": proof that the
    /// same weights ran.
    pub agreement: Vec<(String, f64)>,
    /// Package versions, as JSON.
    pub versions: String,
}

/// PyTorch eager and ONNX Runtime (Python) on both shipped models.
pub fn model_rows(
    python: &Path,
    seed_cnn: &Path,
    effnet: Option<(&Path, &Path)>,
    threads: usize,
    secs: f64,
) -> Result<PythonForward> {
    let mut args = vec!["--seed-cnn".into(), seed_cnn.display().to_string()];
    if let Some((dir, pth)) = effnet {
        args.extend(["--effnet".into(), dir.display().to_string(), "--pth".into(), pth.display().to_string()]);
    }
    args.extend(["--threads".into(), threads.to_string(), "--seconds".into(), secs.to_string()]);
    let v = run_json(python, "models.py", &args)?;
    let mut rows = Vec::new();
    let mut agreement = Vec::new();
    for r in v["rows"].as_array().context("models.py: no rows")? {
        let num = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        let model = r["model"].as_str().unwrap_or("?").to_string();
        let engine = r["engine"].as_str().unwrap_or("?").to_string();
        if let Some(d) = r["max_abs_diff_vs_ort"].as_f64() {
            agreement.push((format!("{engine} / {model}"), d));
        }
        rows.push(ForwardRow {
            engine,
            model,
            batch1_median_ms: num("batch1_median_ms"),
            batch1_p99_ms: num("batch1_p99_ms"),
            batch32_img_s: num("batch32_img_s"),
        });
    }
    Ok(PythonForward { rows, agreement, versions: v["versions"].to_string() })
}

/// Seed-CNN training images/s of a Python engine (`keras` or `pytorch`) and its version.
pub fn training(python: &Path, engine: &str, threads: usize, secs: f64) -> Result<(f64, String)> {
    let args = [
        "--engine".into(),
        engine.into(),
        "--threads".into(),
        threads.to_string(),
        "--seconds".into(),
        secs.to_string(),
    ];
    let v = run_json(python, "train.py", &args)?;
    Ok((v["train_img_s"].as_f64().unwrap_or(f64::NAN), v["version"].as_str().unwrap_or("?").to_string()))
}
