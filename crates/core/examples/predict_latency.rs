//! End-to-end single-image latency as the service sees it: decode + resize + forward,
//! batch 1, on real JPEG photos held in memory, for each model directory given (default:
//! the shipped EfficientNet-Lite0 model and the seed CNN), same process, same photos.
//!
//! cargo run --release -p catsdogs-core --example predict_latency -- [PHOTOS_DIR] [MODEL_DIR...]
//! (`CATSDOGS_TTA_FLIP=1` to measure with the test-time flip)
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use catsdogs_core::{BackendKind, LoadedModel};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let photos = args.next().map(PathBuf::from).unwrap_or_else(|| root.join("../shared/data/train"));
    let mut models: Vec<PathBuf> = args.map(PathBuf::from).collect();
    if models.is_empty() {
        models = vec![root.join("models/effnet-lite0"), root.join("models/seed-cnn")];
    }
    let mut files = Vec::new();
    for class in ["cat", "dog"] {
        let mut names: Vec<PathBuf> = std::fs::read_dir(photos.join(class))
            .with_context(|| format!("no photos in {}", photos.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        files.extend(names.into_iter().step_by(211).take(32));
    }
    let bytes: Vec<Vec<u8>> = files.iter().map(std::fs::read).collect::<std::io::Result<_>>()?;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    println!(
        "| model | decode+resize+forward median | p90 | p99 | of which decode+resize (median) | forward (median) | photos |"
    );
    println!("|---|---|---|---|---|---|---|");
    for dir in &models {
        let mut model = LoadedModel::load(dir, BackendKind::Onnxruntime, threads)?;
        // CATSDOGS_TTA_FLIP=1 measures the test-time flip's cost.
        model.tta_flip = std::env::var("CATSDOGS_TTA_FLIP").is_ok_and(|v| v == "1");
        for b in bytes.iter().take(8) {
            model.predict_bytes(b)?;
        }
        let (mut total, mut pre, mut fwd) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..6 {
            for b in &bytes {
                let t = Instant::now();
                model.predict_bytes(b)?;
                total.push(t.elapsed().as_secs_f64() * 1e3);
                let t = Instant::now();
                let img = model.preprocess(b)?;
                pre.push(t.elapsed().as_secs_f64() * 1e3);
                let t = Instant::now();
                model.predict_images(std::slice::from_ref(&img))?;
                fwd.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        for v in [&mut total, &mut pre, &mut fwd] {
            v.sort_by(f64::total_cmp);
        }
        let q = |v: &[f64], p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        println!(
            "| {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
            model.card.version,
            q(&total, 0.5),
            q(&total, 0.9),
            q(&total, 0.99),
            q(&pre, 0.5),
            q(&fwd, 0.5),
            bytes.len()
        );
    }
    Ok(())
}
