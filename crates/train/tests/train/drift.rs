//! Drift monitoring of the shipped default model on real photos (issue 27): its own kind
//! of photos do not alarm and its accuracy is estimated without labels; dark grey photos
//! and non-pet images are caught, by the tests meant to catch them.
use catsdogs_core::{BackendKind, LoadedModel};
use catsdogs_model::drift::{DriftConfig, Observation, assess, subsample};
use catsdogs_train::data::scan;
use catsdogs_train::reference::{observe, observe_inputs};
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};

/// Photos observed for the tests (drawn from the whole folder, both splits).
const POOL: usize = 1600;
const WINDOW: usize = 200;

fn model() -> LoadedModel {
    LoadedModel::load(&catsdogs_testkit::default_model_dir(), BackendKind::Onnxruntime, 2).expect("load")
}

/// A seeded sample of the whole folder, observed as the server would, with its labels.
fn pool(model: &LoadedModel) -> (Vec<Observation>, Vec<u8>, Vec<catsdogs_train::data::Sample>) {
    let all = scan(&catsdogs_testkit::photos()).expect("scan photos");
    let mut samples = subsample(&all, POOL, 27);
    // The folder lists cats then dogs: shuffle, so that any slice mixes both.
    rand::seq::SliceRandom::shuffle(&mut samples[..], &mut rand::rngs::StdRng::seed_from_u64(28));
    let (observed, skipped) = observe(model, &samples, 32).expect("observe");
    assert_eq!(skipped, 0);
    let labels = samples.iter().map(|s| s.label).collect();
    (observed, labels, samples)
}

fn accuracy(observed: &[Observation], labels: &[u8]) -> f64 {
    let right = observed.iter().zip(labels).filter(|(o, l)| u8::from(o.p_dog >= 0.5) == **l).count();
    right as f64 / observed.len() as f64
}

pub fn photos_like_the_reference_do_not_alarm_and_their_accuracy_is_estimated() {
    let model = model();
    let reference = model.reference.clone().expect("the shipped model has a drift reference");
    let (observed, labels, _) = pool(&model);
    let config = DriftConfig::default();
    let first = assess(Some(&reference), &observed[..WINDOW], &config);
    assert!(!first.drifted, "{:?}", first.reasons);
    let estimated = first.estimated_accuracy.expect("estimate");
    let truth = accuracy(&observed[..WINDOW], &labels[..WINDOW]);
    eprintln!("200 photos: estimated accuracy {estimated:.4}, true {truth:.4}");
    assert!((estimated - truth).abs() <= 0.03, "estimated {estimated} vs true {truth}");
    // 20 windows of 200 photos, each drawn from the pool: at most one false alarm.
    let mut rng = rand::rngs::StdRng::seed_from_u64(2027);
    let mut alarms = Vec::new();
    for w in 0..20 {
        let picked = rand::seq::index::sample(&mut rng, observed.len(), WINDOW);
        let window: Vec<Observation> = picked.iter().map(|i| observed[i].clone()).collect();
        let a = assess(Some(&reference), &window, &config);
        if a.drifted {
            alarms.push((w, a.reasons));
        }
    }
    eprintln!("false alarms over 20 windows: {alarms:?}");
    assert!(alarms.len() <= 1, "{alarms:?}");
}

pub fn dark_grey_photos_drift_in_input_and_embedding() {
    let model = model();
    let reference = model.reference.clone().expect("reference");
    let all = scan(&catsdogs_testkit::photos()).expect("scan photos");
    let samples = subsample(&all, WINDOW, 99);
    let prepared: Vec<(RgbImage, (u32, u32))> = samples
        .iter()
        .map(|s| {
            let img = image::open(&s.path).expect("open").to_rgb8();
            let size = img.dimensions();
            let dark = RgbImage::from_fn(img.width(), img.height(), |x, y| {
                let [r, g, b] = img.get_pixel(x, y).0.map(f32::from);
                let v = ((0.299 * r + 0.587 * g + 0.114 * b) * 0.35) as u8;
                Rgb([v, v, v])
            });
            (model.preprocess_pixels(&dark).expect("preprocess"), size)
        })
        .collect();
    let observed = observe_inputs(&model, &prepared, 32).expect("observe");
    let a = assess(Some(&reference), &observed, &DriftConfig::default());
    eprintln!("dark grey: {:?}", a.reasons);
    assert!(a.drifted);
    assert_eq!(a.input_drifted, Some(true), "{:?}", a.input_drift);
    assert_eq!(a.embedding_drift.drifted, Some(true), "{:?}", a.embedding_drift);
    for p in ["brightness", "saturation"] {
        assert_eq!(a.input_drift[p].drifted, Some(true), "{p}: {:?}", a.input_drift[p]);
    }
    // The reference photos are all 180x180: size is reported, never in the verdict.
    assert_eq!(a.input_drift["width"].drifted, None);
}

/// Seeded synthetic images with no animal in them: stripes, checks, rings and noise.
fn non_pets(n: usize) -> Vec<RgbImage> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    (0..n)
        .map(|i| {
            let (c1, c2) = (Rgb(rng.random::<[u8; 3]>()), Rgb(rng.random::<[u8; 3]>()));
            let period = rng.random_range(6..40u32);
            let noise = rng.random_range(0..60u8);
            let mut local = rand::rngs::StdRng::seed_from_u64(i as u64);
            RgbImage::from_fn(300, 240, |x, y| {
                let on = match i % 4 {
                    0 => (x / period).is_multiple_of(2),
                    1 => ((x / period) + (y / period)).is_multiple_of(2),
                    2 => (((x as f32 - 150.0).hypot(y as f32 - 120.0)) as u32 / period).is_multiple_of(2),
                    _ => ((x + 2 * y) / period).is_multiple_of(3),
                };
                let base = if on { c1 } else { c2 };
                let jitter = if noise > 0 { local.random_range(0..=noise) } else { 0 };
                Rgb(base.0.map(|v| v.saturating_add(jitter)))
            })
        })
        .collect()
}

pub fn non_pet_images_drift_in_the_neither_rate_and_embedding() {
    let model = model();
    let reference = model.reference.clone().expect("reference");
    let prepared: Vec<(RgbImage, (u32, u32))> = non_pets(WINDOW)
        .into_iter()
        .map(|img| {
            let size = img.dimensions();
            (model.preprocess_pixels(&img).expect("preprocess"), size)
        })
        .collect();
    let observed = observe_inputs(&model, &prepared, 32).expect("observe");
    let a = assess(Some(&reference), &observed, &DriftConfig::default());
    eprintln!("non-pets: neither rate {:?}; {:?}", a.neither_rate, a.reasons);
    assert!(a.drifted);
    assert!(a.neither_p_value.is_some_and(|p| p < 1e-6), "{:?} vs {:?}", a.neither_rate, a.reference_neither_rate);
    assert!(a.reasons.iter().any(|r| r.starts_with("neither")), "{:?}", a.reasons);
    assert_eq!(a.embedding_drift.drifted, Some(true), "{:?}", a.embedding_drift);
}
