//! The serving engine of catsdogs: a [`Classifier`] owns the hot-swappable model, the
//! decode pool, the dynamic batcher and the waiting, and answers each input with its label,
//! probabilities and the version of the model that computed them. Below it, a loaded model
//! (card + weights) runs through one of two backends behind the [`Backend`] trait: ONNX
//! Runtime (the fast path) and candle (the reference, the training model's own forward
//! pass). The model registry the server serves from lives here too. Nothing here knows
//! about HTTP.
mod backend_candle;
mod backend_ort;
pub mod batcher;
pub mod engine;
mod model;
pub mod registry;

pub use backend_candle::CandleBackend;
pub use backend_ort::{OrtBackend, find_onnxruntime_library, ort_err, ort_session, session_builder};
pub use engine::{
    Classified, Classifier, ClassifyError, DECODE_BUDGET_WAIT, DEFAULT_DECODE_BUDGET_BYTES, DEFAULT_MAX_DECODE_BYTES,
    EngineConfig, Explanation, ImageInput, InputCrop, ModelChange, StageTimings, without_paths,
};
pub use model::{LoadedModel, Prediction};

/// Rows of a `[N, rows, cols]` output split per image (shape checked).
fn split_maps(values: &[f32], n: usize, rows: usize, cols: usize) -> Result<Vec<LogitMap>, InferenceError> {
    if values.len() != n * rows * cols {
        return Err(InferenceError::Ort(format!("logit map has {} values, expected {n}x{rows}x{cols}", values.len())));
    }
    Ok(values.chunks(rows * cols).map(|v| LogitMap { rows, cols, values: v.to_vec() }).collect())
}

/// Makes glibc keep freed memory instead of returning it to the kernel. Page faults dominate
/// large-tensor work on these VMs: the seed CNN's training went from 14 to 25 img/s with it.
/// Call it early in `main` of batch work (training, evaluation); not in a server, whose
/// memory must come back down after a burst (see [`release_free_memory`]).
pub fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters and takes glibc's arena locks itself.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Hands the allocator's free pages back to the kernel (glibc `malloc_trim`, which also
/// releases free pages inside each thread's heap, not only at its top). Without it a burst
/// of 12 MP uploads left the server holding its peak: after a random-load run resident
/// memory ended at 1.98x its value after the first minute (bench section 6). Returns
/// whether memory was released.
pub fn release_free_memory() -> bool {
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks.
    unsafe { libc::malloc_trim(0) == 1 }
}

use image::RgbImage;

/// Which backend runs the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// ONNX Runtime through the `ort` crate (needs `libonnxruntime.so`).
    Onnxruntime,
    /// candle, the training model's own forward pass.
    Candle,
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "onnxruntime" | "ort" | "onnx" => Ok(Self::Onnxruntime),
            "candle" => Ok(Self::Candle),
            other => Err(format!("unknown backend {other:?} (expected onnxruntime or candle)")),
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Onnxruntime => "onnxruntime",
            Self::Candle => "candle",
        })
    }
}

/// Errors of loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error(transparent)]
    Card(#[from] catsdogs_model::card::CardError),
    #[error("model file missing: {0}")]
    MissingFile(String),
    #[error("unsupported architecture {0:?}")]
    UnsupportedArchitecture(String),
    #[error(
        "ONNX Runtime shared library not found (looked for {searched}); run scripts/fetch-onnxruntime.sh, \
         set ORT_DYLIB_PATH to libonnxruntime.so, or use the candle backend"
    )]
    OrtLibraryMissing { searched: String },
    #[error("ONNX Runtime error: {0}")]
    Ort(String),
    #[error("candle error: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("batch images must be {expected}x{expected} RGB, got {got_w}x{got_h}")]
    BadInput { expected: u32, got_w: u32, got_h: u32 },
    #[error(transparent)]
    Preprocess(#[from] catsdogs_model::preprocess::PreprocessError),
}

/// A network that maps preprocessed images to P(dog).
pub trait Backend: Send + Sync {
    /// Which implementation this is.
    fn kind(&self) -> BackendKind;
    /// P(dog) for each image; all images are `size x size` RGB as the card says.
    fn predict(&self, images: &[RgbImage]) -> Result<Vec<f32>, InferenceError>;
    /// Everything the network gives per image: P(dog) and, where the graph outputs them,
    /// the ImageNet cat+dog mass, the per-cell logit map and the embedding.
    fn scores(&self, images: &[RgbImage]) -> Result<Vec<Scores>, InferenceError> {
        Ok(self.predict(images)?.into_iter().map(|p_dog| Scores { p_dog, ..Scores::default() }).collect())
    }
}

/// What one forward pass gives for one image.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Scores {
    pub p_dog: f32,
    /// ImageNet probability mass on cat and dog classes (low when the image shows neither).
    pub cat_or_dog_score: Option<f32>,
    /// The head on each cell of the last feature map (its mean is logit(p_dog)).
    pub logit_map: Option<LogitMap>,
    /// The pooled features through the graph's fixed projection.
    pub embedding: Option<Vec<f32>>,
}

/// Per-cell logits of one image, row-major over the model input's grid (row 0 at the top).
#[derive(Debug, Clone, PartialEq)]
pub struct LogitMap {
    pub rows: usize,
    pub cols: usize,
    pub values: Vec<f32>,
}

impl LogitMap {
    /// The mean over the cells: the image's logit.
    pub fn mean(&self) -> f32 {
        (self.values.iter().map(|&v| f64::from(v)).sum::<f64>() / self.values.len().max(1) as f64) as f32
    }

    /// The map of the mirrored image flipped back, averaged with this one (test-time flip).
    pub fn averaged_with_mirrored(&self, mirrored: &LogitMap) -> LogitMap {
        let values = (0..self.rows)
            .flat_map(|r| (0..self.cols).map(move |c| (r, c)))
            .map(|(r, c)| {
                let back = mirrored.values.get(r * mirrored.cols + (mirrored.cols - 1 - c)).copied().unwrap_or(0.0);
                (self.values[r * self.cols + c] + back) / 2.0
            })
            .collect();
        LogitMap { rows: self.rows, cols: self.cols, values }
    }
}

/// Packs equally sized RGB images into one contiguous NHWC `u8` buffer.
pub fn pack_nhwc(images: &[RgbImage], size: u32) -> Result<Vec<u8>, InferenceError> {
    let mut buf = Vec::with_capacity(images.len() * (size * size * 3) as usize);
    for img in images {
        if img.dimensions() != (size, size) {
            return Err(InferenceError::BadInput { expected: size, got_w: img.width(), got_h: img.height() });
        }
        buf.extend_from_slice(img.as_raw());
    }
    Ok(buf)
}
