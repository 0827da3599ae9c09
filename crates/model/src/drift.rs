//! Label-free monitoring of a served model: what its inputs and outputs looked like on
//! reference photos ([`ReferenceStats`], written next to the model card), and the tests
//! that say whether a window of served predictions still looks like them ([`assess`]):
//! confidence-based accuracy estimation (CBPE), Kolmogorov-Smirnov and population
//! stability index on P(dog), unbiased MMD² with a permutation test on the embedding,
//! normalised Wasserstein-1 distances on simple image properties, and a binomial test of
//! the "neither cat nor dog" rate. The formulas are the published ones, implemented here
//! (no crate has them) and checked against SciPy/NumPy values recorded in the tests.
use image::RgbImage;
use serde::{Deserialize, Serialize};
use statrs::distribution::{Binomial, DiscreteCDF};

/// File name of the reference statistics, next to `model.json`.
pub const REFERENCE_FILE: &str = "reference.json";
/// Format of [`ReferenceStats`] this build writes.
pub const REFERENCE_FORMAT: u32 = 1;
/// Embeddings kept in a reference (a fixed subsample keeps MMD fast).
pub const REFERENCE_EMBEDDINGS: usize = 500;

/// Simple properties of one input: brightness, contrast and saturation of the model input
/// (after crop and resize, so they describe what the model saw), and the upload's size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InputProperties {
    /// Mean luma (Rec. 601), 0-1.
    pub brightness: f32,
    /// Standard deviation of luma, 0-0.5.
    pub contrast: f32,
    /// Mean HSV saturation, 0-1.
    pub saturation: f32,
    /// The upright upload's size in pixels.
    pub width: u32,
    pub height: u32,
}

impl InputProperties {
    /// The properties of model input `img`, uploaded at `width x height`.
    pub fn of(img: &RgbImage, (width, height): (u32, u32)) -> Self {
        let (mut sum, mut sum_sq, mut sat) = (0f64, 0f64, 0f64);
        for p in img.pixels() {
            let [r, g, b] = p.0.map(f64::from);
            let luma = (0.299 * r + 0.587 * g + 0.114 * b) / 255.0;
            sum += luma;
            sum_sq += luma * luma;
            let (max, min) = (r.max(g).max(b), r.min(g).min(b));
            if max > 0.0 {
                sat += (max - min) / max;
            }
        }
        let n = f64::from((img.width() * img.height()).max(1));
        let mean = sum / n;
        Self {
            brightness: mean as f32,
            contrast: (sum_sq / n - mean * mean).max(0.0).sqrt() as f32,
            saturation: (sat / n) as f32,
            width,
            height,
        }
    }

    /// Width / height.
    pub fn aspect(&self) -> f32 {
        self.width as f32 / self.height.max(1) as f32
    }
}

/// One property's name and value, in the order reports list them.
pub const PROPERTIES: [&str; 6] = ["brightness", "contrast", "saturation", "width", "height", "aspect_ratio"];

fn property_values(p: &InputProperties) -> [f32; 6] {
    [p.brightness, p.contrast, p.saturation, p.width as f32, p.height as f32, p.aspect()]
}

/// What a model's inputs and outputs looked like on its reference photos.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceStats {
    pub format: u32,
    pub model_version: String,
    /// Where the photos came from (a folder and split, or a window of served predictions).
    pub source: String,
    pub created_at: String,
    /// Photos it summarises.
    pub count: usize,
    /// P(dog) of every photo, sorted.
    pub p_dog: Vec<f32>,
    /// A fixed subsample of the embeddings (models whose graph outputs them).
    #[serde(default)]
    pub embeddings: Vec<Vec<f32>>,
    /// RBF bandwidth for MMD: the median distance between reference embeddings.
    #[serde(default)]
    pub bandwidth: Option<f64>,
    /// Each property of every photo, in [`PROPERTIES`] order.
    pub properties: Vec<Vec<f32>>,
    /// Share of photos flagged "neither cat nor dog" (models with that head).
    #[serde(default)]
    pub neither_rate: Option<f64>,
    /// Whether P(dog) and the embeddings were averaged over each photo and its mirror image
    /// (`--tta-flip`): a server must compute its answers the same way to be compared with it.
    /// `None` in files written before the setting was recorded (unknown).
    #[serde(default)]
    pub tta_flip: Option<bool>,
}

/// One served prediction as drift monitoring sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub p_dog: f32,
    pub embedding: Option<Vec<f32>>,
    pub properties: Option<InputProperties>,
    pub is_cat_or_dog: Option<bool>,
}

/// Rounds to 5 decimals (the reference file stays small; far below the tests' resolution).
fn round5(v: f32) -> f32 {
    (v * 1e5).round() / 1e5
}

impl ReferenceStats {
    /// Summarises `observations` of `model_version`, computed with test-time flip or not
    /// (every field the model gives must be present).
    pub fn build(model_version: &str, source: &str, tta_flip: bool, observations: &[Observation]) -> Self {
        let mut p_dog: Vec<f32> = observations.iter().map(|o| round5(o.p_dog)).collect();
        p_dog.sort_by(f32::total_cmp);
        let all: Vec<&Vec<f32>> = observations.iter().filter_map(|o| o.embedding.as_ref()).collect();
        let embeddings: Vec<Vec<f32>> = subsample(&all, REFERENCE_EMBEDDINGS, 0x5eed)
            .into_iter()
            .map(|e| e.iter().map(|&v| round5(v)).collect())
            .collect();
        let bandwidth = (embeddings.len() >= 2).then(|| median_distance(&embeddings));
        let mut properties = vec![Vec::new(); PROPERTIES.len()];
        for p in observations.iter().filter_map(|o| o.properties.as_ref()) {
            for (column, v) in properties.iter_mut().zip(property_values(p)) {
                column.push(round5(v));
            }
        }
        let flags: Vec<bool> = observations.iter().filter_map(|o| o.is_cat_or_dog).collect();
        let neither_rate =
            (!flags.is_empty()).then(|| flags.iter().filter(|f| !**f).count() as f64 / flags.len() as f64);
        Self {
            format: REFERENCE_FORMAT,
            model_version: model_version.to_string(),
            source: source.to_string(),
            created_at: chrono::Utc::now().to_rfc3339(),
            count: observations.len(),
            p_dog,
            embeddings,
            bandwidth,
            properties,
            neither_rate,
            tta_flip: Some(tta_flip),
        }
    }
}

/// At most `k` items of `items`, drawn without replacement with a fixed seed (all of them,
/// in order, when there are no more than `k`).
pub fn subsample<T: Clone>(items: &[T], k: usize, seed: u64) -> Vec<T> {
    if items.len() <= k {
        return items.to_vec();
    }
    use rand::SeedableRng;
    use rand::seq::index::sample;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut picked = sample(&mut rng, items.len(), k).into_vec();
    picked.sort_unstable();
    picked.into_iter().map(|i| items[i].clone()).collect()
}

/// The Kolmogorov distribution's survival function `Q(x) = 2 sum (-1)^(k-1) exp(-2 k² x²)`
/// (SciPy's `scipy.special.kolmogorov`).
pub fn kolmogorov_sf(x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    if x < 0.2 {
        // The alternating series converges slowly here; the value is 1 to double precision.
        return 1.0;
    }
    let mut sum = 0.0;
    for k in 1..=100 {
        let k = f64::from(k);
        let term = (-2.0 * k * k * x * x).exp();
        sum += if k as u32 % 2 == 1 { term } else { -term };
        if term < 1e-17 {
            break;
        }
    }
    (2.0 * sum).clamp(0.0, 1.0)
}

/// Two-sample Kolmogorov-Smirnov test: the statistic `D = sup |F_a - F_b|` and its
/// two-sided p-value from the asymptotic Kolmogorov distribution with Stephens' small-sample
/// correction, `Q((sqrt(e) + 0.12 + 0.11 / sqrt(e)) D)`, `e = nm / (n + m)`.
pub fn ks_2samp(a: &[f32], b: &[f32]) -> (f64, f64) {
    if a.is_empty() || b.is_empty() {
        return (0.0, 1.0);
    }
    let mut a: Vec<f32> = a.to_vec();
    let mut b: Vec<f32> = b.to_vec();
    a.sort_by(f32::total_cmp);
    b.sort_by(f32::total_cmp);
    let (n, m) = (a.len(), b.len());
    let (mut i, mut j, mut d) = (0, 0, 0f64);
    while i < n && j < m {
        let x = a[i].min(b[j]);
        while i < n && a[i] <= x {
            i += 1;
        }
        while j < m && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / n as f64 - j as f64 / m as f64).abs());
    }
    let e = (n * m) as f64 / (n + m) as f64;
    let p = kolmogorov_sf((e.sqrt() + 0.12 + 0.11 / e.sqrt()) * d);
    (d, p)
}

/// Population stability index of `window` against `reference` over the reference's deciles
/// (bins with no reference or window value count as 1e-4 of it).
pub fn psi(reference: &[f32], window: &[f32]) -> f64 {
    if reference.is_empty() || window.is_empty() {
        return 0.0;
    }
    let mut sorted = reference.to_vec();
    sorted.sort_by(f32::total_cmp);
    let mut edges: Vec<f32> = (1..10).map(|k| sorted[(k * sorted.len() / 10).min(sorted.len() - 1)]).collect();
    edges.dedup();
    let bin = |v: f32| edges.partition_point(|&e| e < v);
    let shares = |values: &[f32]| {
        let mut counts = vec![0usize; edges.len() + 1];
        for &v in values {
            counts[bin(v)] += 1;
        }
        counts.into_iter().map(|c| (c as f64 / values.len() as f64).max(1e-4)).collect::<Vec<f64>>()
    };
    let (r, w) = (shares(reference), shares(window));
    r.iter().zip(&w).map(|(r, w)| (w - r) * (w / r).ln()).sum()
}

fn squared_distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum()
}

/// The median Euclidean distance between distinct pairs (the RBF bandwidth heuristic).
pub fn median_distance(points: &[Vec<f32>]) -> f64 {
    let mut d: Vec<f64> = Vec::with_capacity(points.len() * points.len().saturating_sub(1) / 2);
    for i in 0..points.len() {
        for j in i + 1..points.len() {
            d.push(squared_distance(&points[i], &points[j]).sqrt());
        }
    }
    if d.is_empty() {
        return 1.0;
    }
    d.sort_by(f64::total_cmp);
    d[d.len() / 2].max(1e-12)
}

/// Unbiased MMD² from a pooled kernel matrix `k` (row-major, `n x n`, unit diagonal for
/// the RBF kernel but not assumed) where `first[i]` is 1.0 when point `i` belongs to the
/// first sample, 0.0 otherwise. One matrix-vector product: with `s_i = sum_j k_ij first_j`
/// and the row sums `t_i`, the three pair sums follow without a branch per entry.
fn mmd2_from_kernel(k: &[f64], row_sums: &[f64], first: &[f64]) -> f64 {
    let n = first.len();
    let m1: f64 = first.iter().sum();
    let m2 = n as f64 - m1;
    let (mut xx, mut yy, mut xy) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let row = &k[i * n..(i + 1) * n];
        let to_first: f64 = row.iter().zip(first).map(|(v, f)| v * f).sum();
        let diag = row[i];
        if first[i] > 0.5 {
            xx += to_first - diag;
            xy += row_sums[i] - to_first;
        } else {
            yy += row_sums[i] - to_first - diag;
            xy += to_first;
        }
    }
    xx / (m1 * (m1 - 1.0)) + yy / (m2 * (m2 - 1.0)) - xy / (m1 * m2)
}

/// Unbiased MMD² between samples `x` and `y` with the RBF kernel
/// `exp(-|a - b|² / (2 bandwidth²))` (Gretton et al., 2012, eq. 3).
pub fn mmd2_unbiased(x: &[Vec<f32>], y: &[Vec<f32>], bandwidth: f64) -> f64 {
    let (k, row_sums, first) = pooled_kernel(x, y, bandwidth);
    mmd2_from_kernel(&k, &row_sums, &first)
}

/// The kernel matrix of `x` then `y`, its row sums, and the membership of each point.
fn pooled_kernel(x: &[Vec<f32>], y: &[Vec<f32>], bandwidth: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let pooled: Vec<&Vec<f32>> = x.iter().chain(y).collect();
    let n = pooled.len();
    let gamma = 1.0 / (2.0 * bandwidth * bandwidth);
    let mut k = vec![0.0; n * n];
    for i in 0..n {
        for j in i..n {
            let v = (-gamma * squared_distance(pooled[i], pooled[j])).exp();
            k[i * n + j] = v;
            k[j * n + i] = v;
        }
    }
    let row_sums = k.chunks(n).map(|r| r.iter().sum()).collect();
    let first = (0..n).map(|i| if i < x.len() { 1.0 } else { 0.0 }).collect();
    (k, row_sums, first)
}

/// MMD² and its permutation p-value, `(1 + #{permuted >= observed}) / (1 + permutations)`,
/// the sample labels shuffled with a fixed seed.
pub fn mmd_test(x: &[Vec<f32>], y: &[Vec<f32>], bandwidth: f64, permutations: usize, seed: u64) -> (f64, f64) {
    if x.len() < 2 || y.len() < 2 {
        return (0.0, 1.0);
    }
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    use rayon::prelude::*;
    let (k, row_sums, first) = pooled_kernel(x, y, bandwidth);
    let observed = mmd2_from_kernel(&k, &row_sums, &first);
    // Permutations in parallel chunks, each with its own seeded generator: the same p-value
    // whatever the number of threads.
    const CHUNK: usize = 50;
    let at_least: usize = (0..permutations.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(c as u64));
            let mut labels = first.clone();
            let runs = CHUNK.min(permutations - c * CHUNK);
            (0..runs)
                .filter(|_| {
                    labels.shuffle(&mut rng);
                    mmd2_from_kernel(&k, &row_sums, &labels) >= observed
                })
                .count()
        })
        .sum();
    (observed, (1 + at_least) as f64 / (1 + permutations) as f64)
}

/// Wasserstein-1 distance between two empirical distributions: the area between their
/// cumulative distribution functions.
pub fn wasserstein1(a: &[f32], b: &[f32]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let mut a: Vec<f64> = a.iter().map(|&v| f64::from(v)).collect();
    let mut b: Vec<f64> = b.iter().map(|&v| f64::from(v)).collect();
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let mut all: Vec<f64> = a.iter().chain(&b).copied().collect();
    all.sort_by(f64::total_cmp);
    let cdf = |s: &[f64], x: f64| s.partition_point(|&v| v <= x) as f64 / s.len() as f64;
    all.windows(2).map(|w| (cdf(&a, w[0]) - cdf(&b, w[0])).abs() * (w[1] - w[0])).sum()
}

fn std_dev(v: &[f32]) -> f64 {
    let n = v.len().max(1) as f64;
    let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    (v.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / n).sqrt()
}

/// Settings of [`assess`]; the defaults are documented in docs/drift.md.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DriftConfig {
    /// Family-wise significance of the p-value tests (Bonferroni-corrected over those run).
    pub alpha: f64,
    /// PSI of P(dog) above which the output has drifted.
    pub psi_threshold: f64,
    /// Wasserstein-1 distance, in reference standard deviations, above which a property
    /// has drifted.
    pub property_threshold: f64,
    /// Window embeddings compared (a seeded subsample beyond it).
    pub max_embeddings: usize,
    /// Permutations of the MMD test.
    pub permutations: usize,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self { alpha: 0.01, psi_threshold: 0.25, property_threshold: 0.5, max_embeddings: 500, permutations: 1000 }
    }
}

/// Output drift: P(dog) against the reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputDrift {
    pub ks: f64,
    pub p_value: f64,
    pub psi: f64,
    pub drifted: bool,
}

/// Embedding drift (`null` fields for models without an embedding).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingDrift {
    pub mmd2: Option<f64>,
    pub p_value: Option<f64>,
    pub drifted: Option<bool>,
}

/// One input property: its distance from the reference and whether it counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PropertyDrift {
    /// Wasserstein-1 in reference standard deviations (`null` when the reference has no
    /// spread: the value is then reported in `raw_distance` only).
    pub distance: Option<f64>,
    /// Wasserstein-1 in the property's own units.
    pub raw_distance: f64,
    pub window_mean: f64,
    pub reference_mean: f64,
    /// `null` when left out of the verdict (no spread in the reference).
    pub drifted: Option<bool>,
}

/// Everything [`assess`] finds about a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftAssessment {
    pub n: usize,
    /// Confidence-based performance estimation: the mean probability of the answered class.
    pub estimated_accuracy: Option<f64>,
    pub output_drift: Option<OutputDrift>,
    pub embedding_drift: EmbeddingDrift,
    /// Per property, in [`PROPERTIES`] order, plus `drifted` over those in the verdict.
    pub input_drift: std::collections::BTreeMap<String, PropertyDrift>,
    pub input_drifted: Option<bool>,
    pub neither_rate: Option<f64>,
    pub reference_neither_rate: Option<f64>,
    pub neither_p_value: Option<f64>,
    pub drifted: bool,
    /// Which tests fired, e.g. `"output: KS p=0.0001 < 0.0033"`.
    pub reasons: Vec<String>,
}

/// What a model without reference statistics is compared with: nothing, so only what needs
/// no reference (the estimate and the neither rate) is reported.
static NO_REFERENCE: ReferenceStats = ReferenceStats {
    format: REFERENCE_FORMAT,
    model_version: String::new(),
    source: String::new(),
    created_at: String::new(),
    count: 0,
    p_dog: Vec::new(),
    embeddings: Vec::new(),
    bandwidth: None,
    properties: Vec::new(),
    neither_rate: None,
    tta_flip: None,
};

/// Compares a window of served predictions with the reference (`None`: the model has none).
pub fn assess(reference: Option<&ReferenceStats>, window: &[Observation], config: &DriftConfig) -> DriftAssessment {
    let reference = reference.unwrap_or(&NO_REFERENCE);
    let n = window.len();
    let mut reasons = Vec::new();
    let p_dog: Vec<f32> = window.iter().map(|o| o.p_dog).collect();
    let estimated_accuracy =
        (n > 0).then(|| window.iter().map(|o| f64::from(o.p_dog.max(1.0 - o.p_dog))).sum::<f64>() / n as f64);

    // The p-value tests that can run on this window share the family-wise alpha.
    let embeddings: Vec<Vec<f32>> = window.iter().filter_map(|o| o.embedding.clone()).collect();
    let embedding_ready = reference.embeddings.len() >= 2 && embeddings.len() >= 2 && reference.bandwidth.is_some();
    let flags: Vec<bool> = window.iter().filter_map(|o| o.is_cat_or_dog).collect();
    let neither_ready = reference.neither_rate.is_some() && !flags.is_empty();
    let tests = 1 + usize::from(embedding_ready) + usize::from(neither_ready);
    let alpha = config.alpha / tests as f64;

    let output_drift = (n > 0 && !reference.p_dog.is_empty()).then(|| {
        let (ks, p_value) = ks_2samp(&reference.p_dog, &p_dog);
        let psi = psi(&reference.p_dog, &p_dog);
        let (by_ks, by_psi) = (p_value < alpha, psi > config.psi_threshold);
        if by_ks {
            reasons.push(format!("output: KS p={p_value:.2e} < {alpha:.2e}"));
        }
        if by_psi {
            reasons.push(format!("output: PSI {psi:.3} > {}", config.psi_threshold));
        }
        OutputDrift { ks, p_value, psi, drifted: by_ks || by_psi }
    });

    let embedding_drift = match (embedding_ready, reference.bandwidth) {
        (true, Some(bandwidth)) => {
            let sample = subsample(&embeddings, config.max_embeddings, 0xd41f7);
            let (mmd2, p) = mmd_test(&reference.embeddings, &sample, bandwidth, config.permutations, 0x3a3d);
            let drifted = p < alpha;
            if drifted {
                reasons.push(format!("embedding: MMD² {mmd2:.4} p={p:.2e} < {alpha:.2e}"));
            }
            EmbeddingDrift { mmd2: Some(mmd2), p_value: Some(p), drifted: Some(drifted) }
        }
        _ => EmbeddingDrift { mmd2: None, p_value: None, drifted: None },
    };

    let mut input_drift = std::collections::BTreeMap::new();
    let observed: Vec<[f32; 6]> = window.iter().filter_map(|o| o.properties.as_ref()).map(property_values).collect();
    let mut input_drifted = None;
    if !observed.is_empty() && reference.properties.len() == PROPERTIES.len() {
        for (i, name) in PROPERTIES.iter().enumerate() {
            let (r, w): (&[f32], Vec<f32>) = (&reference.properties[i], observed.iter().map(|v| v[i]).collect());
            if r.is_empty() {
                continue;
            }
            let raw = wasserstein1(r, &w);
            let spread = std_dev(r);
            let distance = (spread > 1e-9).then(|| raw / spread);
            let drifted = distance.map(|d| d > config.property_threshold);
            if drifted == Some(true) {
                reasons.push(format!(
                    "input: {name} moved {:.2} sd > {}",
                    distance.unwrap_or(0.0),
                    config.property_threshold
                ));
            }
            if let Some(d) = drifted {
                input_drifted = Some(input_drifted.unwrap_or(false) || d);
            }
            let mean = |v: &[f32]| v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len().max(1) as f64;
            input_drift.insert(
                (*name).to_string(),
                PropertyDrift { distance, raw_distance: raw, window_mean: mean(&w), reference_mean: mean(r), drifted },
            );
        }
    }

    let neither_rate = (!flags.is_empty()).then(|| flags.iter().filter(|f| !**f).count() as f64 / flags.len() as f64);
    let neither_p_value = match (neither_ready, reference.neither_rate) {
        (true, Some(rate)) => {
            let k = flags.iter().filter(|f| !**f).count() as u64;
            // One-sided: more "neither" answers than the reference rate explains.
            let p = Binomial::new(rate.clamp(1e-3, 1.0), flags.len() as u64)
                .map(|b| if k == 0 { 1.0 } else { b.sf(k - 1) })
                .unwrap_or(1.0);
            if p < alpha {
                reasons.push(format!(
                    "neither: {:.1} % of answers vs {:.1} % in the reference, p={p:.2e} < {alpha:.2e}",
                    neither_rate.unwrap_or(0.0) * 100.0,
                    rate * 100.0
                ));
            }
            Some(p)
        }
        _ => None,
    };
    let drifted = !reasons.is_empty();
    DriftAssessment {
        n,
        estimated_accuracy,
        output_drift,
        embedding_drift,
        input_drift,
        input_drifted,
        neither_rate,
        reference_neither_rate: reference.neither_rate,
        neither_p_value,
        drifted,
        reasons,
    }
}

#[cfg(test)]
mod tests {
    //! Expected values computed independently with SciPy 1.16 / NumPy 2 on the same samples
    //! (`scipy.stats.ks_2samp`, `scipy.special.kolmogorov`, `scipy.stats.wasserstein_distance`,
    //! `scipy.stats.binom.sf`, and the MMD² and PSI formulas written in NumPy).
    use super::*;

    fn a() -> Vec<f32> {
        (0..40).map(|i| ((i * 37) % 101) as f32 / 101.0).collect()
    }

    fn b() -> Vec<f32> {
        (0..50).map(|j| ((j * 53) % 97) as f32 / 97.0 * 0.8 + 0.15).collect()
    }

    #[test]
    fn kolmogorov_matches_scipy() {
        for (x, expected) in [
            (0.3, 0.9999906941986655),
            (0.5, 0.9639452436648751),
            (1.0, 0.26999967167735456),
            (1.36, 0.049485876755377876),
            (2.0, 0.0006709252557796953),
        ] {
            assert!((kolmogorov_sf(x) - expected).abs() < 1e-12, "Q({x}) = {} vs {expected}", kolmogorov_sf(x));
        }
    }

    #[test]
    fn ks_matches_scipy() {
        let (d, p) = ks_2samp(&a(), &b());
        assert!((d - 0.15).abs() < 1e-12, "D = {d}");
        // SciPy: 0.6513 (method="asymp"), 0.6473 (exact); ours is Stephens' approximation.
        assert!((p - 0.663235387731219).abs() < 1e-9, "p = {p}");
        assert!((p - 0.6473162716136354).abs() < 0.02);
        assert_eq!(ks_2samp(&a(), &a()).0, 0.0);
    }

    #[test]
    fn wasserstein_matches_scipy() {
        assert!((wasserstein1(&a(), &b()) - 0.061059504570439446).abs() < 1e-7);
        assert_eq!(wasserstein1(&a(), &a()), 0.0);
    }

    #[test]
    fn psi_matches_numpy() {
        assert!((psi(&a(), &b()) - 1.4788212186207785).abs() < 1e-9, "{}", psi(&a(), &b()));
        assert!(psi(&a(), &a()).abs() < 1e-12);
    }

    #[test]
    fn mmd_matches_numpy_and_its_permutation_test_separates_samples() {
        let x: Vec<Vec<f32>> = (0..5).map(|i| (0..3).map(|k| ((i * 7 + k * 3) % 11) as f32 / 11.0).collect()).collect();
        let y: Vec<Vec<f32>> =
            (0..6).map(|i| (0..3).map(|k| ((i * 5 + k * 2) % 13) as f32 / 13.0 + 0.2).collect()).collect();
        assert!((mmd2_unbiased(&x, &y, 1.3) - (-0.01516168795968209)).abs() < 1e-6);
        assert!((median_distance(&x) - 0.8232168307397651).abs() < 1e-6);
        // Two clouds 3 bandwidths apart: the permutation test fires; one cloud against itself does not.
        let cloud = |shift: f32| -> Vec<Vec<f32>> {
            (0..40).map(|i| (0..4).map(|k| ((i * 13 + k * 7) % 17) as f32 / 17.0 + shift).collect()).collect()
        };
        let (_, p) = mmd_test(&cloud(0.0), &cloud(3.0), 1.0, 100, 1);
        assert!(p < 0.02, "{p}");
        let (_, p) = mmd_test(&cloud(0.0)[..20], &cloud(0.0)[20..], 1.0, 100, 1);
        assert!(p > 0.05, "{p}");
    }

    #[test]
    fn binomial_tail_matches_scipy() {
        let p = Binomial::new(0.01, 200).map(|b| b.sf(4)).unwrap_or(f64::NAN);
        assert!((p - 0.05174626363078591).abs() < 1e-9, "{p}");
    }

    #[test]
    fn properties_of_flat_and_grey_images() {
        let grey = RgbImage::from_pixel(8, 8, image::Rgb([128, 128, 128]));
        let p = InputProperties::of(&grey, (4032, 3024));
        assert!((p.brightness - 128.0 / 255.0).abs() < 1e-4 && p.contrast < 1e-4 && p.saturation == 0.0);
        assert!((p.aspect() - 4.0 / 3.0).abs() < 1e-6);
        let red = RgbImage::from_pixel(8, 8, image::Rgb([200, 0, 0]));
        assert!((InputProperties::of(&red, (8, 8)).saturation - 1.0).abs() < 1e-6);
    }
}
