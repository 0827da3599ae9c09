//! Checks the EfficientNet-Lite0 import: ImageNet top-5 of a few photos from the candle
//! reference and from the exported ONNX graph in ONNX Runtime, and their largest difference.
//!
//! cargo run --release -p catsdogs-train --example effnet_check -- PTH IMAGE...
use std::collections::BTreeMap;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use catsdogs_model::preprocess::{PreprocessConfig, preprocess};
use catsdogs_train::transfer::{FeatureExtractor, load_backbone};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (pth, images) = args.split_first().context("usage: effnet_check PTH IMAGE...")?;
    let net = load_backbone(pth.as_ref())?;
    let onnx = net.to_onnx(&Default::default(), &BTreeMap::new())?;
    let fx = FeatureExtractor::from_onnx(&onnx, &net.config, 2)?;
    let cfg = PreprocessConfig { size: 224, ..Default::default() };
    for path in images {
        let img = preprocess(&std::fs::read(path)?, &cfg)?;
        let x = Tensor::from_vec(img.as_raw().clone(), (1, 224, 224, 3), &Device::Cpu)?;
        let t = std::time::Instant::now();
        let (_, logits) = net.forward_all(&x)?;
        let candle_ms = t.elapsed().as_secs_f64() * 1e3;
        let reference = logits.flatten_all()?.to_vec1::<f32>()?;
        let ours = fx.run(std::slice::from_ref(&img))?.logits;
        let diff = reference.iter().zip(&ours).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let mut idx: Vec<usize> = (0..reference.len()).collect();
        idx.sort_by(|&a, &b| ours[b].total_cmp(&ours[a]));
        let (p_dog, mass) = catsdogs_model::efficientnet_lite::zero_shot(&ours);
        println!(
            "{path}: top5 {:?}  max|candle-ort| {diff:.2e}  zero-shot P(dog) {p_dog:.3} cat+dog mass {mass:.3}  candle {candle_ms:.0} ms",
            &idx[..5]
        );
    }
    Ok(())
}
