//! Forward-pass speed of the shipped model through both backends, same process, same
//! inputs: batch-1 latency (median, p99) and batch-32 throughput.
//! `cargo run --release -p catsdogs-core --example backend_speed [MODEL_DIR]`
use std::path::PathBuf;
use std::time::Instant;

use catsdogs_core::{BackendKind, LoadedModel};
use image::{Rgb, RgbImage};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/seed-cnn")));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("| backend | batch-1 median | batch-1 p99 | batch-32 throughput |");
    println!("|---|---|---|---|");
    for kind in [BackendKind::Onnxruntime, BackendKind::Candle] {
        let model = LoadedModel::load(&dir, kind, threads)?;
        let s = model.preprocess_config().size;
        let images: Vec<RgbImage> = (0..32u32)
            .map(|k| RgbImage::from_fn(s, s, |x, y| Rgb([(x + k) as u8, (y * 2) as u8, (x ^ y) as u8])))
            .collect();
        for _ in 0..5 {
            model.predict_images(&images[..1])?;
        }
        let mut lat: Vec<f64> = (0..200)
            .map(|i| {
                let t = Instant::now();
                let _ = model.predict_images(&images[i % 32..i % 32 + 1]);
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        lat.sort_by(f64::total_cmp);
        model.predict_images(&images)?;
        let rounds = if kind == BackendKind::Candle { 5 } else { 20 };
        let t = Instant::now();
        for _ in 0..rounds {
            model.predict_images(&images)?;
        }
        let ips = (32 * rounds) as f64 / t.elapsed().as_secs_f64();
        println!("| {kind} | {:.2} ms | {:.2} ms | {:.0} img/s |", lat[100], lat[197], ips);
    }
    Ok(())
}
