//! Model forward in this process: the catsdogs backend wrapper (`LoadedModel`, what the
//! server calls) and a bare ONNX Runtime session on the same graph, batch-1 latency and
//! batch-32 throughput on seeded random images; and the matrix-product peak that the
//! forward passes' FLOP/s are compared with.
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use catsdogs_core::{BackendKind, LoadedModel};
use image::RgbImage;
use rand::{Rng, SeedableRng};

/// One engine on one model.
pub struct ForwardRow {
    pub engine: String,
    pub model: String,
    pub batch1_median_ms: f64,
    pub batch1_p99_ms: f64,
    pub batch32_img_s: f64,
}

pub const THROUGHPUT_BATCH: usize = 32;

/// Floating-point operations of one forward pass (multiply-adds count 2), from the card.
pub fn gflop_per_image(model: &LoadedModel) -> f64 {
    match model.card.architecture_config() {
        Ok(catsdogs_model::ArchitectureConfig::EfficientNetLite0 { transfer }) => {
            // 0.770 GFLOP for the backbone at 224x224 (measured-facts.md); a tuned tail adds
            // its own copy of the last block (192 -> 1152 -> depthwise 3x3 -> 320) and of the
            // 1x1 head convolution (320 -> 1280) on the 7x7 grid.
            let tuned = !transfer.tail_tuning.is_empty();
            let tail = 49.0 * 2.0 * (192.0 * 1152.0 + 1152.0 * 9.0 + 1152.0 * 320.0 + 320.0 * 1280.0);
            0.770 + if tuned { tail / 1e9 } else { 0.0 }
        }
        _ => {
            // 3 x (3x3 convolution at full resolution, then 2x2 max-pool).
            let mut side = model.preprocess_config().size as f64;
            let (mut cin, mut flop) = (3.0, 0.0);
            for cout in [32.0, 64.0, 128.0] {
                flop += side * side * cout * cin * 9.0 * 2.0;
                side /= 2.0;
                cin = cout;
            }
            flop / 1e9
        }
    }
}

/// `n` seeded random images of `size x size`.
pub fn random_images(n: usize, size: u32, seed: u64) -> Vec<RgbImage> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| RgbImage::from_fn(size, size, |_, _| image::Rgb([rng.random(), rng.random(), rng.random()])))
        .collect()
}

/// (median, p99) in ms of `f` called for `secs` after 0.5 s of warm-up.
fn latency(secs: f64, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    let warm = Instant::now();
    while warm.elapsed().as_secs_f64() < 0.5 {
        f()?;
    }
    let mut times = Vec::new();
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < secs || times.is_empty() {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let pct = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    Ok((pct(0.5), pct(0.99)))
}

/// Images/s of `f` on a batch of `batch` for `secs` after two warm-up calls.
fn throughput(secs: f64, batch: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    f()?;
    let started = Instant::now();
    let mut calls = 0;
    while started.elapsed().as_secs_f64() < secs || calls == 0 {
        f()?;
        calls += 1;
    }
    Ok((calls * batch) as f64 / started.elapsed().as_secs_f64())
}

fn model_name(dir: &Path) -> String {
    dir.file_name().and_then(|n| n.to_str()).unwrap_or("model").to_string()
}

/// The backend wrapper the server uses: preprocessed images in, predictions out.
pub fn catsdogs_backend(model: &LoadedModel, secs: f64) -> Result<ForwardRow> {
    let size = model.preprocess_config().size;
    let one = random_images(1, size, 1);
    let many = random_images(THROUGHPUT_BATCH, size, 2);
    let (median, p99) = latency(secs, || Ok(model.predict_images(&one).map(drop)?))?;
    let img_s = throughput(secs, THROUGHPUT_BATCH, || Ok(model.predict_images(&many).map(drop)?))?;
    Ok(ForwardRow {
        engine: "catsdogs (ort backend)".into(),
        model: model_name(&model.dir),
        batch1_median_ms: median,
        batch1_p99_ms: p99,
        batch32_img_s: img_s,
    })
}

/// A bare ONNX Runtime session on the same graph, same session settings, input tensor
/// built once: the floor the wrapper is measured against.
pub fn bare_ort(model: &LoadedModel, threads: usize, secs: f64) -> Result<ForwardRow> {
    let path = model.dir.join(model.card.onnx.as_deref().context("the card names no ONNX graph")?);
    let mut session = catsdogs_core::ort_session(&path, threads)?;
    let s = model.preprocess_config().size as usize;
    let pack = |images: &[RgbImage]| images.iter().flat_map(|i| i.as_raw().iter().copied()).collect::<Vec<u8>>();
    let one = pack(&random_images(1, s as u32, 1));
    let many = pack(&random_images(THROUGHPUT_BATCH, s as u32, 2));
    let mut run = |n: usize, buf: &[u8]| -> Result<()> {
        let input = ort::value::TensorRef::from_array_view(([n, s, s, 3], buf))?;
        let out = session.run(ort::inputs!["image" => input])?;
        let (_, p) = out["p_dog"].try_extract_tensor::<f32>()?;
        anyhow::ensure!(p.len() == n, "p_dog has {} values for {n} images", p.len());
        Ok(())
    };
    let (median, p99) = latency(secs, || run(1, &one))?;
    let img_s = throughput(secs, THROUGHPUT_BATCH, || run(THROUGHPUT_BATCH, &many))?;
    Ok(ForwardRow {
        engine: "bare ONNX Runtime session (Rust)".into(),
        model: model_name(&model.dir),
        batch1_median_ms: median,
        batch1_p99_ms: p99,
        batch32_img_s: img_s,
    })
}

/// Loads a model directory with the ONNX Runtime backend.
pub fn load(dir: &Path, threads: usize) -> Result<LoadedModel> {
    LoadedModel::load(dir, BackendKind::Onnxruntime, threads).with_context(|| format!("cannot load {}", dir.display()))
}

/// GFLOP/s of a 2048x2048 f32 matrix product run by ONNX Runtime (its MLAS kernels, the
/// same session settings and threads as the models): the practical peak of this machine
/// that the forward passes' FLOP/s are compared with.
pub fn matmul_peak_gflops(threads: usize, secs: f64) -> Result<f64> {
    use catsdogs_model::onnx::{Dim, GraphBuilder};
    let n = 2048usize;
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let b: Vec<f32> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut g = GraphBuilder::new("matmul_peak");
    g.input_f32("a", &[Dim::Fixed(n as i64), Dim::Fixed(n as i64)]);
    let b = g.f32_tensor("b", vec![n as i64, n as i64], &b);
    g.node("MatMul", &["a", &b], vec![], Some("c"));
    g.output_f32("c", &[Dim::Fixed(n as i64), Dim::Fixed(n as i64)]);
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), g.finish(&Default::default()))?;
    let mut session = catsdogs_core::ort_session(file.path(), threads)?;
    let a: Vec<f32> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
    let calls_per_s = throughput(secs, 1, || {
        let input = ort::value::TensorRef::from_array_view(([n, n], a.as_slice()))?;
        session.run(ort::inputs!["a" => input])?;
        Ok(())
    })?;
    Ok(calls_per_s * 2.0 * (n * n * n) as f64 / 1e9)
}
