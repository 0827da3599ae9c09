//! The serving engine: one [`Classifier`] owns the model being served (hot-swappable), the
//! bounded decode pool, the dynamic batcher and the waiting, and answers each input with
//! a [`Classified`] (label, probabilities, the version of the model that computed them,
//! stage timings) or a [`ClassifyError`]. It knows nothing of HTTP: the server maps
//! `ClassifyError` to status codes.
//!
//! A request pins the model it starts with ([`Serving`]): it decodes with that model's
//! preprocessing, queues on that model's batcher, and its answers name that model's
//! version, even when a reload swaps a new model in meanwhile. The old batcher drains its
//! queue once the last request holding it is done.
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use catsdogs_model::Label;
use catsdogs_model::card::Architecture;
use catsdogs_model::drift::InputProperties;
use catsdogs_model::preprocess::{self, PreprocessError};
use image::RgbImage;
use tokio::sync::Semaphore;

use crate::batcher::{BatchError, Batcher, BatcherConfig, RunBatch};
use crate::{BackendKind, InferenceError, LoadedModel, LogitMap, Prediction};

/// One image to classify: a file as uploaded, or pixels (inference-protocol tensors).
pub enum ImageInput {
    Encoded(Vec<u8>),
    Pixels(RgbImage),
}

/// Where each input's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimings {
    /// Decode, orientation and resize (the request's inputs in parallel).
    pub decode: Duration,
    /// Waiting in the batcher's queue for a forward pass.
    pub queue: Duration,
    /// The forward pass the input was part of.
    pub forward: Duration,
    /// Inputs in that forward pass.
    pub batch_size: usize,
}

/// One classified input.
#[derive(Debug, Clone, PartialEq)]
pub struct Classified {
    pub p_dog: f32,
    /// ImageNet probability mass on cat and dog classes (models with an ImageNet head).
    pub cat_or_dog_score: Option<f32>,
    /// False when the image probably shows neither a cat nor a dog.
    pub is_cat_or_dog: Option<bool>,
    /// The version of the model whose forward pass produced these numbers.
    pub model_version: Arc<str>,
    pub timings: StageTimings,
    /// Per-cell logits over the model input (models whose graph outputs them).
    pub logit_map: Option<LogitMap>,
    /// The projected features (models whose graph outputs them).
    pub embedding: Option<Vec<f32>>,
    /// Where the model input was taken from in the upright image.
    pub input_crop: InputCrop,
    /// Brightness, contrast and saturation of the model input; the upload's size.
    pub properties: InputProperties,
}

/// The region of the upright image (EXIF orientation applied, full-resolution pixels, not
/// the decode scale) the model's input was resized from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputCrop {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
    /// The side of a square centre crop; `None` when the whole image was squashed.
    pub square: Option<f64>,
}

impl InputCrop {
    /// The crop `config` takes from an upright `width x height` image.
    pub fn of(width: u32, height: u32, config: &preprocess::PreprocessConfig) -> Self {
        match preprocess::center_crop(width, height, config) {
            Some(c) => Self { x: c.left, y: c.top, width: c.width, height: c.height, square: Some(c.width) },
            None => Self { x: 0.0, y: 0.0, width: f64::from(width), height: f64::from(height), square: None },
        }
    }
}

/// Per-cell evidence for the answered class of one image, over the model input's grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub rows: usize,
    pub cols: usize,
    /// Row-major; positive cells support the answer. Their mean is the answer's logit.
    pub evidence: Vec<f32>,
    pub crop: InputCrop,
}

impl Classified {
    fn new(
        p: Prediction,
        model_version: Arc<str>,
        timings: StageTimings,
        (input_crop, properties): (InputCrop, InputProperties),
    ) -> Self {
        Self {
            p_dog: p.p_dog,
            cat_or_dog_score: p.cat_or_dog_score,
            is_cat_or_dog: p.is_cat_or_dog,
            model_version,
            timings,
            logit_map: p.logit_map,
            embedding: p.embedding,
            input_crop,
            properties,
        }
    }

    /// The class-activation map for the answered class: the logit map as is for "dog",
    /// negated for "cat". `None` for models whose graph has no logit map.
    pub fn explanation(&self) -> Option<Explanation> {
        let map = self.logit_map.as_ref()?;
        let sign = if self.label() == Label::Dog { 1.0 } else { -1.0 };
        Some(Explanation {
            rows: map.rows,
            cols: map.cols,
            evidence: map.values.iter().map(|v| v * sign).collect(),
            crop: self.input_crop,
        })
    }

    /// P(cat) = 1 - P(dog).
    pub fn p_cat(&self) -> f32 {
        1.0 - self.p_dog
    }

    /// The answer at the 0.5 threshold.
    pub fn label(&self) -> Label {
        Label::from_p_dog(self.p_dog)
    }
}

/// Why an input got no answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClassifyError {
    /// The input itself is unusable: empty, not an image, corrupt, too many pixels.
    #[error(transparent)]
    Input(#[from] PreprocessError),
    /// No model is loaded (with the reason).
    #[error("no model loaded: {0}")]
    NoModel(String),
    /// The batcher's queue is full: retry shortly.
    #[error("too many images waiting for the model; retry shortly")]
    Overloaded,
    /// The engine is stopping.
    #[error("the service is stopping")]
    ShuttingDown,
    /// The forward pass failed or panicked (a bug or a broken model).
    #[error("inference failed: {0}")]
    Inference(String),
}

impl ClassifyError {
    /// A stable machine-readable code for logs and API errors.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Input(e) => e.code(),
            Self::NoModel(_) => "model_unavailable",
            Self::Overloaded => "overloaded",
            Self::ShuttingDown => "shutting_down",
            Self::Inference(_) => "internal_error",
        }
    }
}

impl From<BatchError> for ClassifyError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::QueueFull(_) => Self::Overloaded,
            BatchError::Stopped => Self::ShuttingDown,
            BatchError::Failed(m) | BatchError::Panicked(m) => {
                tracing::error!(error = %m, "inference failed");
                Self::Inference(m)
            }
        }
    }
}

/// What a reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelChange {
    /// Version and architecture served before (none when no model was loaded).
    pub previous: Option<(String, Architecture)>,
    pub current: (String, Architecture),
}

/// Which model to load and how to run it.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub model_dir: PathBuf,
    pub backend: BackendKind,
    /// Intra-op threads of each forward pass.
    pub inference_threads: usize,
    /// Classify each image and its mirror image, and average.
    pub tta_flip: bool,
    pub batching: BatcherConfig,
    /// Images decoding at once (the CPU work outside the model).
    pub max_concurrent_decodes: usize,
    /// Memory one image's decode may take (bytes, after JPEG DCT scaling); beyond, the
    /// image is refused (`image_too_large`).
    pub max_decode_bytes: u64,
    /// Memory all decodes in flight may take together (bytes): a decode waits for room up
    /// to [`DECODE_BUDGET_WAIT`], then is refused as [`ClassifyError::Overloaded`].
    pub decode_budget_bytes: u64,
}

/// Defaults sized for a 1 GiB container: one image at most 128 MiB (a 40-megapixel RGB
/// PNG; a 16-bit PNG of that size is refused), all decodes 384 MiB.
pub const DEFAULT_MAX_DECODE_BYTES: u64 = 128 << 20;
pub const DEFAULT_DECODE_BUDGET_BYTES: u64 = 384 << 20;
/// Longest a decode waits for room in the decode budget.
pub const DECODE_BUDGET_WAIT: Duration = Duration::from_secs(1);

/// The model being served and the batcher that runs it, swapped together by a reload.
pub struct Serving {
    pub model: Arc<LoadedModel>,
    /// The card's version, shared by every answer of this model.
    pub version: Arc<str>,
    batcher: Batcher<RgbImage, Prediction>,
}

impl Serving {
    fn new(model: LoadedModel, batching: BatcherConfig) -> Arc<Self> {
        let model = Arc::new(model);
        let version: Arc<str> = Arc::from(model.card.version.as_str());
        Arc::new(Self { batcher: Batcher::new(batching, forward_pass(model.clone())), version, model })
    }
}

/// The serving engine; see the module documentation.
pub struct Classifier {
    cfg: EngineConfig,
    serving: RwLock<Option<Arc<Serving>>>,
    /// Why no model is loaded (set when the engine starts without one, cleared by a reload).
    model_error: Mutex<Option<String>>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    decode_slots: Arc<Semaphore>,
    /// Bytes of decode memory (see [`EngineConfig::decode_budget_bytes`]).
    decode_budget: Arc<Semaphore>,
}

impl Classifier {
    /// An engine serving `model`, or none yet (`Err` says why; requests get
    /// [`ClassifyError::NoModel`] until a reload succeeds).
    pub fn new(cfg: EngineConfig, model: Result<LoadedModel, String>) -> Self {
        let (serving, model_error) = match model {
            Ok(m) => (Some(Serving::new(m, cfg.batching)), None),
            Err(e) => (None, Some(without_paths(&e))),
        };
        let decode_slots = Arc::new(Semaphore::new(cfg.max_concurrent_decodes.max(1)));
        let budget = usize::try_from(cfg.decode_budget_bytes).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        let decode_budget = Arc::new(Semaphore::new(budget));
        Self {
            cfg,
            serving: RwLock::new(serving),
            model_error: Mutex::new(model_error),
            reloading: tokio::sync::Mutex::new(()),
            decode_slots,
            decode_budget,
        }
    }

    /// Loads the configured model directory on the blocking pool and warms it up (one run
    /// per batch size the batcher will send, see [`LoadedModel::warm_up`]): the server is
    /// not ready, and a reload does not swap, until that is done.
    pub async fn load(cfg: &EngineConfig) -> Result<LoadedModel, String> {
        let (dir, backend, threads, tta_flip, max_batch) =
            (cfg.model_dir.clone(), cfg.backend, cfg.inference_threads, cfg.tta_flip, cfg.batching.max_batch);
        tokio::task::spawn_blocking(move || {
            let mut model = LoadedModel::load(&dir, backend, threads)?;
            model.tta_flip = tta_flip;
            if let Some(flipped) = model.reference.as_ref().and_then(|r| r.tta_flip).filter(|f| *f != tta_flip) {
                tracing::warn!(
                    reference_tta_flip = flipped,
                    server_tta_flip = tta_flip,
                    "the drift reference was computed with test-time flip set otherwise than this server: \
                     output and embedding drift may fire for that alone; rebuild it with the server's setting"
                );
            }
            let t = Instant::now();
            let sizes = model.warm_up(max_batch)?;
            tracing::info!(?sizes, ms = t.elapsed().as_millis() as u64, "model warmed up");
            Ok(model)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e: InferenceError| e.to_string()))
    }

    /// The configuration the engine was started with.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// The model served now and its batcher, or why there is none.
    pub fn serving(&self) -> Result<Arc<Serving>, ClassifyError> {
        self.serving
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| ClassifyError::NoModel(self.model_error().unwrap_or_else(|| "unknown reason".into())))
    }

    /// The model served now, if any.
    pub fn model(&self) -> Option<Arc<LoadedModel>> {
        self.serving().ok().map(|s| s.model.clone())
    }

    /// Why no model is loaded, with filesystem paths cut to their last component: the
    /// reason reaches the public (readiness, 503 answers); the server log has the full one.
    pub fn model_error(&self) -> Option<String> {
        self.model_error.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The version served now, for places that describe the service rather than an answer
    /// (health, the page); answers carry their own [`Classified::model_version`].
    pub fn current_version(&self) -> Option<String> {
        self.model().map(|m| m.card.version.clone())
    }

    /// Loads the configured model directory again and swaps it in without dropping
    /// requests: those already decoding or queued finish on the model they started with.
    /// On failure the old model stays and the error is returned (and logged).
    pub async fn reload(&self) -> Result<ModelChange, String> {
        let _one = self.reloading.lock().await;
        let previous = self.model().map(|m| (m.card.version.clone(), m.card.architecture));
        let model = Self::load(&self.cfg).await.inspect_err(|e| {
            tracing::error!(error = %e, dir = %self.cfg.model_dir.display(), "model reload failed; the current model stays");
        })?;
        let current = (model.card.version.clone(), model.card.architecture);
        let fresh = Serving::new(model, self.cfg.batching);
        *self.serving.write().unwrap_or_else(PoisonError::into_inner) = Some(fresh);
        *self.model_error.lock().unwrap_or_else(PoisonError::into_inner) = None;
        Ok(ModelChange { previous, current })
    }

    /// Classifies one input.
    pub async fn classify(&self, input: ImageInput) -> Result<Classified, ClassifyError> {
        self.classify_all(vec![input]).await?.pop().unwrap_or(Err(ClassifyError::ShuttingDown))
    }

    /// Classifies encoded files or raw pixels; each input gets its own result, in order.
    /// Decoding runs on the blocking pool (parallel within the request, bounded across
    /// requests); the decoded images join the batcher's queue with other requests' images.
    /// The outer error means no input was tried (no model, or the engine is stopping).
    pub async fn classify_all(
        &self,
        inputs: Vec<ImageInput>,
    ) -> Result<Vec<Result<Classified, ClassifyError>>, ClassifyError> {
        let serving = self.serving()?;
        let model = serving.model.clone();
        // Workers wait briefly for these images while they are decoded, to batch them
        // with others; the announcement ends once they are submitted.
        let arrival = serving.batcher.announce(inputs.len());
        let started = Instant::now();
        // Each image is planned from its headers (size after DCT scaling, memory), reserves
        // its memory in the decode budget and a decode slot, then decodes on the blocking
        // pool; the images of one request decode in parallel within the slots.
        let config = model.preprocess_config();
        let mut decoding = Vec::with_capacity(inputs.len());
        for input in inputs {
            let model = model.clone();
            let task = match input {
                ImageInput::Encoded(bytes) => {
                    let plan =
                        preprocess::plan_decode(&bytes, config.max_pixels, preprocess::needed_short_side(&config))
                            .and_then(|p| p.within(self.cfg.max_decode_bytes));
                    let plan = match plan {
                        Ok(p) => p,
                        Err(e) => {
                            decoding.push(Err(ClassifyError::Input(e)));
                            continue;
                        }
                    };
                    let memory = match self.reserve_decode_memory(plan.bytes).await {
                        Ok(m) => m,
                        Err(e) => {
                            decoding.push(Err(e));
                            continue;
                        }
                    };
                    let slot = self.decode_slot().await?;
                    let upright = plan.upright_size();
                    let crop = InputCrop::of(upright.0, upright.1, &config);
                    tokio::task::spawn_blocking(move || {
                        // Held by the work itself: a request that times out and is dropped
                        // does not free them while its decoding still runs.
                        let _held = (slot, memory);
                        preprocess::decode_planned(&bytes, &plan)
                            .and_then(|rgb| preprocess::preprocess_pixels(&rgb, &model.preprocess_config()))
                            .map(|img| {
                                let properties = InputProperties::of(&img, upright);
                                (img, (crop, properties))
                            })
                            .map_err(InferenceError::from)
                    })
                }
                ImageInput::Pixels(img) => {
                    let slot = self.decode_slot().await?;
                    let crop = InputCrop::of(img.width(), img.height(), &config);
                    tokio::task::spawn_blocking(move || {
                        let _held = slot;
                        let upright = img.dimensions();
                        model.preprocess_pixels(&img).map(|img| {
                            let properties = InputProperties::of(&img, upright);
                            (img, (crop, properties))
                        })
                    })
                }
            };
            decoding.push(Ok(task));
        }
        let mut decoded = Vec::with_capacity(decoding.len());
        for d in decoding {
            decoded.push(match d {
                Ok(task) => task
                    .await
                    .map_err(|e| ClassifyError::Inference(format!("decoding task failed: {e}")))?
                    .map_err(input_error),
                Err(e) => Err(e),
            });
        }
        let decode = started.elapsed();
        metrics::histogram!("catsdogs_prediction_duration_seconds", "stage" => "decode").record(decode.as_secs_f64());

        // Every decoded image is queued before any answer is awaited, so they can share a batch.
        let queued: Vec<Result<_, ClassifyError>> = decoded
            .into_iter()
            .map(|r| {
                let (img, about) = r?;
                let (tx, rx) = tokio::sync::oneshot::channel();
                serving.batcher.submit(img, Box::new(move |r| drop(tx.send(r))))?;
                Ok((rx, about))
            })
            .collect();
        drop(arrival);
        let mut results = Vec::with_capacity(queued.len());
        for q in queued {
            let answer = match q {
                Err(e) => Err(e),
                Ok((rx, about)) => match rx.await {
                    Ok(Ok((p, t))) => {
                        metrics::histogram!("catsdogs_prediction_duration_seconds", "stage" => "queue")
                            .record(t.queue.as_secs_f64());
                        let timings =
                            StageTimings { decode, queue: t.queue, forward: t.forward, batch_size: t.batch_size };
                        Ok(Classified::new(p, serving.version.clone(), timings, about))
                    }
                    Ok(Err(e)) => Err(e.into()),
                    Err(_) => Err(ClassifyError::Inference("the inference worker dropped the request".into())),
                },
            };
            results.push(answer);
        }
        Ok(results)
    }
}

impl Classifier {
    /// A decode slot (bounds the CPU spent decoding across requests).
    async fn decode_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ClassifyError> {
        self.decode_slots.clone().acquire_owned().await.map_err(|_| ClassifyError::ShuttingDown)
    }

    /// Reserves `bytes` of the decode budget, waiting up to [`DECODE_BUDGET_WAIT`]; a decode
    /// that finds no room in time is refused as overloaded (503 + Retry-After upstream).
    async fn reserve_decode_memory(&self, bytes: u64) -> Result<tokio::sync::OwnedSemaphorePermit, ClassifyError> {
        let n = u32::try_from(bytes).map_err(|_| ClassifyError::Overloaded)?.max(1);
        let wait = self.decode_budget.clone().acquire_many_owned(n);
        match tokio::time::timeout(DECODE_BUDGET_WAIT, wait).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(ClassifyError::ShuttingDown),
            Err(_) => {
                metrics::counter!("catsdogs_decode_budget_refusals_total").increment(1);
                Err(ClassifyError::Overloaded)
            }
        }
    }

    /// Decode memory reserved right now (bytes).
    pub fn decode_memory_in_use(&self) -> u64 {
        let total = usize::try_from(self.cfg.decode_budget_bytes).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        total.saturating_sub(self.decode_budget.available_permits()) as u64
    }
}

/// `text` with every absolute path cut to `…/<last component>`, so that an error can be
/// shown to anyone without revealing where the service is installed.
pub fn without_paths(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('/') {
        // A path starts a word: at the beginning, or after a space, quote, '(' or '='.
        let at_word_start = start == 0 || rest[..start].ends_with([' ', '"', '\'', '(', '=', '[', ',']);
        if !at_word_start {
            out.push_str(&rest[..=start]);
            rest = &rest[start + 1..];
            continue;
        }
        out.push_str(&rest[..start]);
        let path_len = rest[start..].find([' ', '"', '\'', ')', ',', ';', ']']).unwrap_or(rest.len() - start);
        let path = &rest[start..start + path_len];
        let last = path.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
        out.push_str("…/");
        out.push_str(last);
        rest = &rest[start + path_len..];
    }
    out.push_str(rest);
    out
}

/// A preprocessing failure of one input.
fn input_error(e: InferenceError) -> ClassifyError {
    match e {
        InferenceError::Preprocess(p) => ClassifyError::Input(p),
        other => ClassifyError::Inference(other.to_string()),
    }
}

/// The batcher's forward pass over the loaded model; records the model-stage metrics
/// once per batch.
fn forward_pass(model: Arc<LoadedModel>) -> Arc<RunBatch<RgbImage, Prediction>> {
    Arc::new(move |images: &[RgbImage]| {
        let t = Instant::now();
        let out = model.predict_images(images).map_err(|e| e.to_string());
        metrics::histogram!("catsdogs_prediction_duration_seconds", "stage" => "model")
            .record(t.elapsed().as_secs_f64());
        metrics::histogram!("catsdogs_batch_size").record(images.len() as f64);
        out
    })
}

#[cfg(test)]
mod tests {
    use super::without_paths;

    #[test]
    fn absolute_paths_are_cut_to_their_last_component() {
        assert_eq!(
            without_paths("model file missing: /srv/app/models/effnet-lite0/model.json"),
            "model file missing: …/model.json"
        );
        assert_eq!(
            without_paths("looked for \"/opt/ort/libonnxruntime.so\", /usr/lib/libonnxruntime.so)"),
            "looked for \"…/libonnxruntime.so\", …/libonnxruntime.so)"
        );
        assert_eq!(
            without_paths("no model: seed-cnn/model.json and 3/4 done"),
            "no model: seed-cnn/model.json and 3/4 done"
        );
    }
}
