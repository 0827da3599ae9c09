//! The fast path: the exported ONNX graph run by ONNX Runtime, loaded at run time from
//! the shared library of the PyPI `onnxruntime` wheel (`scripts/fetch-onnxruntime.sh`).
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use image::RgbImage;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use catsdogs_model::card::GraphOutput;
use catsdogs_model::onnx::{EMBEDDING_OUTPUT, LOGIT_MAP_OUTPUT};

use crate::{Backend, BackendKind, InferenceError, Scores, pack_nhwc, split_maps};

/// Where `libonnxruntime.so` is looked for, in order: `ORT_DYLIB_PATH`, next to the
/// executable, `.cache/onnxruntime/` above the executable (cargo's `target/<profile>/`)
/// and in the source checkout this binary was built from.
fn candidate_paths() -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        paths.push(PathBuf::from(p));
    }
    let lib = "libonnxruntime.so";
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        paths.push(dir.join(lib));
        for up in dir.ancestors().skip(1).take(3) {
            paths.push(up.join(".cache/onnxruntime").join(lib));
        }
    }
    paths.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/onnxruntime").join(lib));
    paths.push(PathBuf::from("/usr/local/lib").join(lib));
    paths
}

/// The first existing ONNX Runtime library, or an error listing where we looked.
pub fn find_onnxruntime_library() -> Result<PathBuf, InferenceError> {
    let candidates = candidate_paths();
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| InferenceError::OrtLibraryMissing {
        searched: candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
    })
}

pub(crate) fn environment() -> Result<&'static ort::environment::Environment, InferenceError> {
    /// Why the process-wide environment could not be created (kept, so every later
    /// load reports the same typed error).
    enum Failure {
        Missing(String),
        Broken(String),
    }
    static ENV: OnceLock<Result<ort::environment::Environment, Failure>> = OnceLock::new();
    let env = ENV.get_or_init(|| {
        let lib = find_onnxruntime_library().map_err(|e| match e {
            InferenceError::OrtLibraryMissing { searched } => Failure::Missing(searched),
            other => Failure::Broken(other.to_string()),
        })?;
        let builder =
            ort::init_from(&lib).map_err(|e| Failure::Broken(format!("cannot load {}: {e}", lib.display())))?;
        builder.with_name("catsdogs").build().map_err(|e| Failure::Broken(e.to_string()))
    });
    match env {
        Ok(env) => Ok(env),
        Err(Failure::Missing(searched)) => Err(InferenceError::OrtLibraryMissing { searched: searched.clone() }),
        Err(Failure::Broken(msg)) => Err(InferenceError::Ort(msg.clone())),
    }
}

/// An ONNX Runtime failure as our error type.
pub fn ort_err(e: impl std::fmt::Display) -> InferenceError {
    InferenceError::Ort(e.to_string())
}

/// The session settings every graph of ours uses: full graph optimisation, `threads`
/// intra-op threads that sleep instead of spinning, one inter-op thread.
pub fn session_builder(threads: usize) -> Result<ort::session::builder::SessionBuilder, InferenceError> {
    Session::builder(environment()?)
        .map_err(ort_err)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(ort_err)?
        .with_intra_threads(threads.max(1))
        .map_err(ort_err)?
        .with_inter_threads(1)
        .map_err(ort_err)?
        // Spinning pool threads wait for the next op by burning their core, and the
        // decoders need those cores. Measured with 16 clients sending 12 MP photos (bench
        // section 4): ONNX Runtime's default spinning took 42 % of both cores for 18 % of
        // useful work (40 req/s, 72 % of the ceiling); spinning only within a run
        // (`session.force_spinning_stop`) gave 44 req/s (77 %); no spinning 52 req/s
        // (91 %). The price: waking the pool per op adds ~0.8 ms to a lone small photo.
        .with_intra_op_spinning(false)
        .map_err(ort_err)?
        .with_inter_op_spinning(false)
        .map_err(ort_err)
}

/// A bare ONNX Runtime session on a graph, with the settings our backend uses: what the
/// benchmark compares the backend wrapper against.
pub fn ort_session(path: &Path, threads: usize) -> Result<Session, InferenceError> {
    session_builder(threads)?.commit_from_file(path).map_err(ort_err)
}

/// An ONNX Runtime session over a model with input `image` (u8 NHWC) and output `p_dog`,
/// plus the optional outputs its card declares.
pub struct OrtBackend {
    session: Mutex<Session>,
    size: u32,
    outputs: Vec<GraphOutput>,
}

impl OrtBackend {
    /// Loads the ONNX graph at `path`; `threads` sizes ONNX Runtime's intra-op pool;
    /// `outputs` are the optional outputs the card declares (each must be in the graph).
    pub fn load(path: &Path, size: u32, threads: usize, outputs: &[GraphOutput]) -> Result<Self, InferenceError> {
        if !path.is_file() {
            return Err(InferenceError::MissingFile(path.display().to_string()));
        }
        let session = ort_session(path, threads)?;
        let outputs: Vec<GraphOutput> = outputs.iter().copied().filter(|o| *o != GraphOutput::Unknown).collect();
        for o in &outputs {
            let name = output_name(*o);
            if !session.outputs().iter().any(|out| out.name() == name) {
                return Err(InferenceError::Ort(format!("the model card declares output {name}, the graph has none")));
            }
        }
        Ok(Self { session: Mutex::new(session), size, outputs })
    }
}

/// The graph output's name.
fn output_name(output: GraphOutput) -> &'static str {
    match output {
        GraphOutput::LogitMap => LOGIT_MAP_OUTPUT,
        GraphOutput::Embedding => EMBEDDING_OUTPUT,
        GraphOutput::Unknown => "",
    }
}

impl Backend for OrtBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Onnxruntime
    }

    fn predict(&self, images: &[RgbImage]) -> Result<Vec<f32>, InferenceError> {
        Ok(self.scores(images)?.into_iter().map(|s| s.p_dog).collect())
    }

    fn scores(&self, images: &[RgbImage]) -> Result<Vec<Scores>, InferenceError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let (s, n) = (self.size as usize, images.len());
        let buf = pack_nhwc(images, self.size)?;
        let input = TensorRef::from_array_view(([n, s, s, 3], buf.as_slice())).map_err(ort_err)?;
        let mut session = self.session.lock().map_err(|_| InferenceError::Ort("session lock poisoned".into()))?;
        let outputs = session.run(ort::inputs!["image" => input]).map_err(ort_err)?;
        let (_, p) = outputs["p_dog"].try_extract_tensor::<f32>().map_err(ort_err)?;
        let mut scores: Vec<Scores> = p.iter().map(|&p_dog| Scores { p_dog, ..Scores::default() }).collect();
        if let Some(v) = outputs.get("imagenet_logits") {
            let (_, logits) = v.try_extract_tensor::<f32>().map_err(ort_err)?;
            let classes = (logits.len() / n).max(1);
            for (score, l) in scores.iter_mut().zip(logits.chunks(classes)) {
                score.cat_or_dog_score = Some(catsdogs_model::efficientnet_lite::zero_shot(l).1);
            }
        }
        if self.outputs.contains(&GraphOutput::LogitMap) {
            let (shape, values) = outputs[LOGIT_MAP_OUTPUT].try_extract_tensor::<f32>().map_err(ort_err)?;
            let (rows, cols) = match &shape[..] {
                [_, r, c] => (*r as usize, *c as usize),
                other => return Err(InferenceError::Ort(format!("logit map of shape {other:?}"))),
            };
            for (score, map) in scores.iter_mut().zip(split_maps(values, n, rows, cols)?) {
                score.logit_map = Some(map);
            }
        }
        if self.outputs.contains(&GraphOutput::Embedding) {
            let (_, values) = outputs[EMBEDDING_OUTPUT].try_extract_tensor::<f32>().map_err(ort_err)?;
            let dims = values.len() / n;
            for (score, e) in scores.iter_mut().zip(values.chunks(dims.max(1))) {
                score.embedding = Some(e.to_vec());
            }
        }
        Ok(scores)
    }
}
