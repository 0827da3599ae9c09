//! The EfficientNet-Lite0 import and the shipped default model built on it.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use catsdogs_core::{BackendKind, LoadedModel};
use catsdogs_model::efficientnet_lite::{Config, EfficientNetLite, zero_shot};
use catsdogs_model::preprocess::{PreprocessConfig, preprocess};
use catsdogs_train::evaluate;
use catsdogs_train::transfer::{FeatureExtractor, load_backbone};

use catsdogs_testkit::{effnet_checkpoint, photos, photos_dir, repo};

fn input(path: &Path) -> image::RgbImage {
    preprocess(&std::fs::read(path).expect("read"), &PreprocessConfig { size: 224, ..Default::default() })
        .expect("preprocess")
}

pub fn onnx_graph_matches_candle_reference_and_imagenet() {
    let (pth, dir) = (effnet_checkpoint(), photos());
    let net = load_backbone(&pth).expect("load checkpoint");
    let fx = FeatureExtractor::from_onnx(
        &net.to_onnx(&Default::default(), &BTreeMap::new()).expect("export"),
        &net.config,
        2,
    )
    .expect("ort");
    let images = [input(&dir.join("cat/1.jpg")), input(&dir.join("dog/0.jpg"))];
    let mut batch = Vec::new();
    for img in &images {
        batch.extend_from_slice(img.as_raw());
    }
    let x = Tensor::from_vec(batch, (2, 224, 224, 3), &Device::Cpu).expect("tensor");
    let (features, logits) = net.forward_all(&x).expect("candle forward");
    let ours = fx.run(&images).expect("ort run");
    let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let reference = logits.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("logits");
    assert!(max_diff(&reference, &ours.logits) < 1e-4, "logits differ by {}", max_diff(&reference, &ours.logits));
    let f = features.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("features");
    assert!(max_diff(&f, &ours.features) < 1e-4);
    // A known ImageNet answer: cat/1.jpg is a tabby (class 281); dog/0.jpg is a dog breed.
    let top1 = |l: &[f32]| (0..l.len()).max_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap_or(0);
    assert_eq!(top1(&ours.logits[..1000]), 281);
    assert!((151..=268).contains(&top1(&ours.logits[1000..])));
    assert!(zero_shot(&ours.logits[..1000]).0 < 0.1 && zero_shot(&ours.logits[1000..]).0 > 0.9);
}

pub fn missing_or_misshaped_tensor_is_named() {
    let pth = effnet_checkpoint();
    let mut tensors = catsdogs_model::pth::read_state_dict(&pth).expect("read");
    assert_eq!(tensors.len(), 296, "lukemelas naming: 296 entries");
    let removed = "_blocks.7._bn1.running_var";
    let saved = tensors.remove(removed).expect("present");
    let err = EfficientNetLite::load(
        VarBuilder::from_tensors(tensors.clone(), candle_core::DType::F32, &Device::Cpu),
        &Config::lite0(),
    )
    .err()
    .expect("missing tensor must fail")
    .to_string();
    assert!(err.contains(removed), "{err}");
    tensors.insert(removed.into(), saved);
    tensors.insert(
        "_conv_head.weight".into(),
        Tensor::zeros((10, 320, 1, 1), candle_core::DType::F32, &Device::Cpu).expect("t"),
    );
    let err = EfficientNetLite::load(
        VarBuilder::from_tensors(tensors, candle_core::DType::F32, &Device::Cpu),
        &Config::lite0(),
    )
    .err()
    .expect("wrong shape must fail")
    .to_string();
    assert!(err.contains("_conv_head.weight"), "{err}");
}

fn shipped() -> PathBuf {
    repo().join("models/effnet-lite0")
}

pub fn shipped_default_scores_on_the_validation_split() {
    let dir = photos();
    let model = LoadedModel::load(&shipped(), BackendKind::Onnxruntime, 2).expect("load shipped model");
    // The whole validation split recorded in the card (4,995 photos, ~1 min).
    let report = evaluate(&model, &dir, true, None, 32).expect("evaluate");
    assert!(report.metrics.count >= 4900);
    assert!(report.metrics.accuracy >= 0.985, "accuracy {:.4} below 98.5 %", report.metrics.accuracy);
}

pub fn generated_non_animal_image_is_flagged_neither() {
    let model = LoadedModel::load(&shipped(), BackendKind::Onnxruntime, 2).expect("load shipped model");
    assert!(model.neither_threshold.is_some(), "the card records the neither threshold");
    // A checkerboard with stripes: no animal in it.
    let img = image::RgbImage::from_fn(224, 224, |x, y| {
        if ((x / 28) + (y / 28)) % 2 == 0 { image::Rgb([230, 40, 40]) } else { image::Rgb([20, 20, (y % 255) as u8]) }
    });
    let p = model.predict_images(std::slice::from_ref(&img)).expect("predict");
    assert_eq!(p[0].is_cat_or_dog, Some(false), "score {:?}", p[0].cat_or_dog_score);
    if let Some(dir) = photos_dir() {
        let p = model.predict_bytes(&std::fs::read(dir.join("dog/1.jpg")).expect("read")).expect("predict");
        assert_eq!(p.is_cat_or_dog, Some(true), "score {:?}", p.cat_or_dog_score);
    }
    // The seed model has no ImageNet head: the field is absent, not guessed.
    let seed = LoadedModel::load(&repo().join("models/seed-cnn"), BackendKind::Onnxruntime, 2).expect("seed model");
    let small = image::imageops::resize(&img, 128, 128, image::imageops::FilterType::Triangle);
    assert_eq!(seed.predict_images(&[small]).expect("predict")[0].is_cat_or_dog, None);
}

/// The whole transfer pipeline on a small subset: views, cached trunk activations, head
/// tuning, export. The exported graph must reproduce the validation figures that training
/// computed from its cached activations (so the graph carries the tuned weights), and the
/// ImageNet branch must stay the pretrained one (the "neither" score does not drift).
pub fn transfer_run_exports_the_tuned_head() {
    let (pth, dir) = (effnet_checkpoint(), photos());
    let out = tempfile::tempdir().expect("tempdir");
    // A 40 + 40 photo folder (links), so that `evaluate --val-split` finds the same split.
    let data = out.path().join("data");
    for class in ["cat", "dog"] {
        std::fs::create_dir_all(data.join(class)).expect("mkdir");
        let mut names: Vec<_> = std::fs::read_dir(dir.join(class)).expect("list").flatten().map(|e| e.path()).collect();
        names.sort();
        for src in names.iter().filter(|p| p.extension().is_some_and(|e| e == "jpg")).take(40) {
            std::os::unix::fs::symlink(src, data.join(class).join(src.file_name().expect("name"))).expect("link");
        }
    }
    let mut cfg = catsdogs_train::transfer::TransferConfig::new(data.clone(), pth.clone(), out.path().join("model"));
    cfg.tune_epochs = 2;
    cfg.feature_cache = Some(out.path().join("cache"));
    let (card, report) = catsdogs_train::transfer::train_head(&cfg).expect("train");
    assert_eq!(report.train_views, 64 * 4, "centre + mirror + 2 random views of 64 training photos");
    assert_eq!(report.tail_tuning.len(), 3, "epoch 0 (logistic head) and 2 tuning epochs");
    let cached = std::fs::read_dir(out.path().join("cache")).expect("cache dir").count();
    assert_eq!(cached, 1, "one feature cache file");

    let model = LoadedModel::load(&out.path().join("model"), BackendKind::Onnxruntime, 2).expect("load trained model");
    let eval = evaluate(&model, &data, true, None, 16).expect("evaluate");
    let recorded = card.validation.expect("validation metrics");
    assert_eq!(eval.metrics.count, recorded.count);
    assert!(
        (eval.metrics.log_loss - recorded.log_loss).abs() < 1e-3,
        "graph log loss {} vs training {}",
        eval.metrics.log_loss,
        recorded.log_loss
    );

    // The ImageNet branch of the trained graph equals the pretrained backbone's.
    let net = load_backbone(&pth).expect("load checkpoint");
    let bytes = std::fs::read(out.path().join("model/model.onnx")).expect("onnx");
    let trained = FeatureExtractor::from_onnx(&bytes, &net.config, 2).expect("ort");
    let plain = FeatureExtractor::from_onnx(
        &net.to_onnx(&Default::default(), &BTreeMap::new()).expect("export"),
        &net.config,
        2,
    )
    .expect("ort");
    let img = [input(&dir.join("cat/1.jpg"))];
    let (a, b) = (trained.run(&img).expect("run"), plain.run(&img).expect("run"));
    let diff = a.logits.iter().zip(&b.logits).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-5, "ImageNet logits moved by {diff}");

    // Second run: features come from the cache, same result.
    let (_, again) = catsdogs_train::transfer::train_head(&cfg).expect("train from cache");
    assert!((again.val.log_loss - report.val.log_loss).abs() < 1e-9);
}

/// The tail that tuning starts from (last block + head convolution, BatchNorm folded, in
/// candle with the custom depthwise kernel), applied to the graph's `trunk` output,
/// reproduces the graph's own pooled features: training and the export see one network.
pub fn pretrained_tail_on_the_trunk_reproduces_the_features() {
    let (pth, dir) = (effnet_checkpoint(), photos());
    let net = load_backbone(&pth).expect("load checkpoint");
    let heads = catsdogs_model::efficientnet_lite::OnnxHeads { trunk: true, ..Default::default() };
    let fx = FeatureExtractor::from_onnx(&net.to_onnx(&heads, &BTreeMap::new()).expect("export"), &net.config, 2)
        .expect("ort");
    let images = [input(&dir.join("cat/1.jpg")), input(&dir.join("dog/0.jpg"))];
    let out = fx.run(&images).expect("run");
    let trunk = out.trunk.expect("trunk output");
    let c = net.trunk_channels();
    assert_eq!(c, 192, "the last block's input");
    let x = Tensor::from_vec(trunk, (2, c, 49), &Device::Cpu).expect("tensor").transpose(1, 2).expect("transpose");
    let pooled = net.tail_folded().expect("tail").pooled(&x).expect("pooled");
    let pooled = pooled.flatten_all().expect("flat").to_vec1::<f32>().expect("vec");
    let diff = pooled.iter().zip(&out.features).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-4, "tail features differ from the graph's by {diff}");
}

/// The shipped graph's `logit_map` equals the candle reference (the tuned tail and the head
/// on each cell of the trunk the backbone graph computes), whose mean is its logit; and the
/// graph `catsdogs export --pretrained` rebuilds is the shipped one, outputs and all.
pub fn shipped_logit_map_matches_the_candle_reference() {
    let (pth, dir) = (effnet_checkpoint(), photos());
    let model_dir = catsdogs_testkit::default_model_dir();
    let net = load_backbone(&pth).expect("load checkpoint");
    let heads = catsdogs_model::efficientnet_lite::OnnxHeads { trunk: true, ..Default::default() };
    let fx = FeatureExtractor::from_onnx(&net.to_onnx(&heads, &BTreeMap::new()).expect("export"), &net.config, 2)
        .expect("ort");
    let names = ["cat/1.jpg", "dog/0.jpg", "cat/100.jpg", "dog/100.jpg"];
    let images: Vec<_> = names.iter().map(|n| input(&dir.join(n))).collect();
    let n = images.len();
    let trunk = fx.run(&images).expect("run").trunk.expect("trunk output");
    let c = net.trunk_channels();
    let x = Tensor::from_vec(trunk, (n, c, 49), &Device::Cpu).expect("tensor").transpose(1, 2).expect("transpose");
    let head = candle_core::safetensors::load(model_dir.join("head.safetensors"), &Device::Cpu).expect("head");
    let tail = catsdogs_model::efficientnet_lite::Tail::from_named(&head, "tuned_tail").expect("tail").expect("tuned");
    let (w, b) = (&head["catdog.weight"], &head["catdog.bias"]);
    let candle_maps = tail.logit_map(&x, (w, b)).expect("map").to_vec2::<f32>().expect("vec");
    let logits = tail.pooled(&x).expect("pooled").matmul(&w.t().expect("t")).expect("matmul");
    let logits = logits.broadcast_add(b).expect("bias").flatten_all().expect("flat").to_vec1::<f32>().expect("vec");
    let shipped = LoadedModel::load(&model_dir, BackendKind::Onnxruntime, 2).expect("load shipped");
    let answers = shipped.predict_images(&images).expect("predict");
    for ((candle, logit), answer) in candle_maps.iter().zip(&logits).zip(&answers) {
        let mean = candle.iter().map(|&v| f64::from(v)).sum::<f64>() / candle.len() as f64;
        assert!((mean - f64::from(*logit)).abs() < 1e-4, "candle map mean {mean} vs its logit {logit}");
        let graph = answer.logit_map.as_ref().expect("graph map");
        let d = graph.values.iter().zip(candle).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(d < 1e-3, "the graph's map and candle's differ by {d} (logits near {logit})");
    }
    // Rebuilding the graph from the checkpoint and the head gives the same answers.
    let tmp = tempfile::tempdir().expect("tempdir");
    for f in ["model.json", "head.safetensors"] {
        std::fs::copy(model_dir.join(f), tmp.path().join(f)).expect("copy");
    }
    catsdogs_train::export_onnx(tmp.path(), None, Some(&pth)).expect("export");
    let rebuilt = LoadedModel::load(tmp.path(), BackendKind::Onnxruntime, 2).expect("load rebuilt");
    let again = rebuilt.predict_images(&images).expect("predict");
    for (a, b) in answers.iter().zip(&again) {
        assert_eq!(a.p_dog, b.p_dog);
        assert_eq!(a.logit_map, b.logit_map);
        assert_eq!(a.embedding, b.embedding);
    }
}
