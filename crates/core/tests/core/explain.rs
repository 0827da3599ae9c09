//! The per-cell logit map both shipped graphs output (issue 29): its mean is the answer's
//! logit, the ONNX graph and the candle network agree on it, and it points at the animal.
use std::path::{Path, PathBuf};

use catsdogs_core::{BackendKind, Classifier, ImageInput, LoadedModel, Prediction};
use image::{Rgb, RgbImage};

/// `n` photos of each class, spread over the folder.
fn photos(n: usize) -> Vec<(PathBuf, bool)> {
    let dir = catsdogs_testkit::photos();
    let mut out = Vec::new();
    for (class, is_dog) in [("cat", false), ("dog", true)] {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(dir.join(class)).expect("read dir").filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        let step = (files.len() / n).max(1);
        out.extend(files.into_iter().step_by(step).take(n).map(|f| (f, is_dog)));
    }
    out
}

/// Real photos, and cat/dog blends whose answers are uncertain (moderate logits, where
/// logit(p_dog) is well defined in f32).
fn inputs(model: &LoadedModel) -> Vec<RgbImage> {
    let files = photos(12);
    let images: Vec<RgbImage> =
        files.iter().map(|(f, _)| model.preprocess(&std::fs::read(f).expect("read")).expect("preprocess")).collect();
    let half = images.len() / 2;
    let blends: Vec<RgbImage> = (0..half)
        .map(|i| {
            let (a, b) = (&images[i], &images[half + i]);
            RgbImage::from_fn(a.width(), a.height(), |x, y| {
                let (p, q) = (a.get_pixel(x, y).0, b.get_pixel(x, y).0);
                Rgb([0, 1, 2].map(|c| ((u16::from(p[c]) + u16::from(q[c])) / 2) as u8))
            })
        })
        .collect();
    images.into_iter().chain(blends).collect()
}

fn logit(p: f32) -> f64 {
    let p = f64::from(p);
    (p / (1.0 - p)).ln()
}

fn sigmoid(z: f32) -> f64 {
    1.0 / (1.0 + (-f64::from(z)).exp())
}

/// Checks the map of every prediction against its P(dog); returns how many had a moderate
/// answer (0.01 <= p <= 0.99), where the logit itself is compared.
fn check_means(name: &str, predictions: &[Prediction]) -> usize {
    let mut moderate = 0;
    for p in predictions {
        let map = p.logit_map.as_ref().unwrap_or_else(|| panic!("{name}: no logit map"));
        let mean = map.mean();
        let dp = (sigmoid(mean) - f64::from(p.p_dog)).abs();
        assert!(dp < 1e-6, "{name}: sigmoid(mean of the map) {} vs p_dog {}", sigmoid(mean), p.p_dog);
        if (0.01..=0.99).contains(&p.p_dog) {
            moderate += 1;
            let d = (f64::from(mean) - logit(p.p_dog)).abs();
            assert!(d < 1e-4, "{name}: mean of the map {mean} vs logit(p_dog) {} (p {})", logit(p.p_dog), p.p_dog);
        }
    }
    moderate
}

pub fn the_logit_map_mean_is_the_answers_logit_on_both_graphs_and_candle() {
    let seed = catsdogs_testkit::seed_cnn_dir();
    let ort = LoadedModel::load(&seed, BackendKind::Onnxruntime, 2).expect("seed onnx");
    let candle = LoadedModel::load(&seed, BackendKind::Candle, 2).expect("seed candle");
    let images = inputs(&ort);
    let (a, b) = (ort.predict_images(&images).expect("ort"), candle.predict_images(&images).expect("candle"));
    let moderate = check_means("seed cnn, onnx", &a) + check_means("seed cnn, candle", &b);
    for (x, y) in a.iter().zip(&b) {
        let (mx, my) = (x.logit_map.as_ref().expect("map"), y.logit_map.as_ref().expect("map"));
        assert_eq!((mx.rows, mx.cols), (16, 16), "the seed CNN's last feature map is 16x16");
        assert_eq!((mx.rows, mx.cols), (my.rows, my.cols));
        let d = mx.values.iter().zip(&my.values).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        assert!(d < 1e-4, "seed cnn: onnx and candle maps differ by {d}");
        let (ex, ey) = (x.embedding.as_ref().expect("embedding"), y.embedding.as_ref().expect("embedding"));
        assert_eq!(ex.len(), 32);
        let d = ex.iter().zip(ey).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        assert!(d < 1e-4, "seed cnn: onnx and candle embeddings differ by {d}");
    }
    let effnet =
        LoadedModel::load(&catsdogs_testkit::default_model_dir(), BackendKind::Onnxruntime, 2).expect("effnet");
    let images = inputs(&effnet);
    let c = effnet.predict_images(&images).expect("effnet");
    assert!(c.iter().all(|p| p.logit_map.as_ref().is_some_and(|m| (m.rows, m.cols) == (7, 7))), "7x7 cells");
    let moderate = moderate + check_means("efficientnet-lite0", &c);
    assert!(moderate >= 6, "only {moderate} answers between 0.01 and 0.99: the logit was barely compared");
}

pub fn the_mirrored_map_is_flipped_back_under_test_time_flip() {
    let mut model =
        LoadedModel::load(&catsdogs_testkit::default_model_dir(), BackendKind::Onnxruntime, 2).expect("load");
    let (f, _) = photos(1).remove(0);
    let img = model.preprocess(&std::fs::read(f).expect("read")).expect("preprocess");
    let mirror = image::imageops::flip_horizontal(&img);
    let plain = model.predict_images(&[img.clone(), mirror]).expect("predict");
    model.tta_flip = true;
    let flipped = model.predict_images(std::slice::from_ref(&img)).expect("predict").remove(0);
    let (a, b, m) = (
        plain[0].logit_map.as_ref().expect("map"),
        plain[1].logit_map.as_ref().expect("map"),
        flipped.logit_map.as_ref().expect("map"),
    );
    for r in 0..a.rows {
        for c in 0..a.cols {
            let expected = (a.values[r * a.cols + c] + b.values[r * b.cols + (b.cols - 1 - c)]) / 2.0;
            assert!((m.values[r * m.cols + c] - expected).abs() < 1e-5, "cell ({r}, {c})");
        }
    }
    // Still the logit of the (averaged) answer, up to the averaging of two sigmoids.
    assert!((sigmoid(m.mean()) - f64::from(flipped.p_dog)).abs() < 0.02);
}

/// A graph exported before the outputs existed still loads, without maps.
pub fn a_card_without_declared_outputs_loads_without_maps() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let seed = catsdogs_testkit::seed_cnn_dir();
    for f in ["model.onnx", "model.safetensors"] {
        std::fs::copy(seed.join(f), tmp.path().join(f)).expect("copy");
    }
    let mut card = catsdogs_model::card::ModelCard::load(&seed.join("model.json")).expect("card");
    card.outputs.clear();
    card.save(&tmp.path().join("model.json")).expect("save");
    let model = LoadedModel::load(tmp.path(), BackendKind::Onnxruntime, 1).expect("load");
    let img = RgbImage::from_pixel(128, 128, Rgb([90, 120, 150]));
    let p = model.predict_images(&[img]).expect("predict").remove(0);
    assert!(p.logit_map.is_none() && p.embedding.is_none());
    // A card that declares an output its graph lacks is refused at load, by name.
    card.outputs = vec![catsdogs_model::card::GraphOutput::LogitMap];
    let old = tmp.path().join("old.onnx");
    std::fs::write(&old, without_optional_outputs(&seed.join("model.onnx"))).expect("write");
    card.onnx = Some("old.onnx".into());
    card.save(&tmp.path().join("model.json")).expect("save");
    match LoadedModel::load(tmp.path(), BackendKind::Onnxruntime, 1) {
        Err(e) => assert!(e.to_string().contains("logit_map"), "{e}"),
        Ok(_) => panic!("a card declaring a missing output must not load"),
    }
}

/// The graph at `path` as exported before `logit_map` and `embedding` existed.
fn without_optional_outputs(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).expect("read graph");
    catsdogs_model::onnx::keep_outputs(&bytes, &["p_dog"]).expect("decode graph")
}

/// The photo pasted into quadrant `q` (0 top-left, 1 top-right, 2 bottom-left, 3
/// bottom-right) of a neutral grey canvas twice its size, as a PNG.
fn pasted(photo: &Path, q: usize) -> Vec<u8> {
    let img = image::open(photo).expect("open").to_rgb8();
    let (w, h) = img.dimensions();
    let side = w.max(h);
    let mut canvas = RgbImage::from_pixel(2 * side, 2 * side, Rgb([128, 128, 128]));
    let (ox, oy) = ((q % 2) as u32 * side + (side - w) / 2, (q / 2) as u32 * side + (side - h) / 2);
    image::imageops::overlay(&mut canvas, &img, i64::from(ox), i64::from(oy));
    let mut png = Vec::new();
    canvas.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).expect("png");
    png
}

/// Positive evidence per quadrant of the upright image; cells across the middle line are
/// shared by the quadrants they overlap, in proportion.
fn quadrant_shares(e: &catsdogs_core::Explanation, width: f64, height: f64) -> [f64; 4] {
    let mut shares = [0.0; 4];
    let (cw, ch) = (e.crop.width / e.cols as f64, e.crop.height / e.rows as f64);
    for r in 0..e.rows {
        for c in 0..e.cols {
            let v = f64::from(e.evidence[r * e.cols + c].max(0.0));
            let (x0, y0) = (e.crop.x + c as f64 * cw, e.crop.y + r as f64 * ch);
            let left = ((width / 2.0 - x0) / cw).clamp(0.0, 1.0);
            let top = ((height / 2.0 - y0) / ch).clamp(0.0, 1.0);
            shares[0] += v * left * top;
            shares[1] += v * (1.0 - left) * top;
            shares[2] += v * left * (1.0 - top);
            shares[3] += v * (1.0 - left) * (1.0 - top);
        }
    }
    let total: f64 = shares.iter().sum();
    shares.map(|s| s / total.max(f64::MIN_POSITIVE))
}

pub async fn the_map_points_at_the_quadrant_holding_the_animal() {
    let cfg = crate::engine::config(&catsdogs_testkit::default_model_dir());
    let engine = Classifier::new(cfg.clone(), Classifier::load(&cfg).await);
    let files = photos(25);
    let (mut hits, mut majority) = (0, 0);
    for (i, (f, _)) in files.iter().enumerate() {
        let q = i % 4;
        let png = pasted(f, q);
        let (w, h) = image::load_from_memory(&png).expect("png").into_rgb8().dimensions();
        let answer = engine.classify(ImageInput::Encoded(png)).await.expect("classify");
        let e = answer.explanation().expect("the default model explains its answers");
        let shares = quadrant_shares(&e, f64::from(w), f64::from(h));
        let best = (0..4).max_by(|&a, &b| shares[a].total_cmp(&shares[b])).unwrap_or(0);
        hits += usize::from(best == q);
        majority += usize::from(shares[q] > 0.5);
    }
    let n = files.len();
    eprintln!("quadrant holding the most positive evidence: {hits}/{n}; holding over half of it: {majority}/{n}");
    assert!(hits * 5 >= n * 4, "the animal's quadrant held the most evidence in only {hits} of {n} images");
}
