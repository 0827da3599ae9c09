//! `catsdogs export`: the trained candle network written as an ONNX graph, and the step
//! that puts a freshly trained model into the registry with its graph.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use catsdogs_core::registry::{Registry, RegistryError};
use catsdogs_model::card::{Architecture, ArchitectureConfig, GraphOutput, ModelCard};
use catsdogs_model::efficientnet_lite::{OnnxHeads, Tail};
use catsdogs_model::seed_cnn::SeedCnn;

/// Errors of an export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Card(#[from] catsdogs_model::card::CardError),
    #[error("cannot load weights: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Onnx(#[from] catsdogs_model::onnx::ExportError),
    #[error("{0} graphs are rebuilt from the pretrained checkpoint: pass --pretrained")]
    NeedsCheckpoint(Architecture),
    #[error(transparent)]
    Transfer(#[from] crate::transfer::TransferError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Exports the model in `model_dir` to `out` (default `model_dir/model.onnx`); when the
/// graph lands in the model directory, the card's `onnx` field and its declared outputs are
/// updated. An EfficientNet-Lite0 model is rebuilt from its `pretrained` checkpoint and its
/// trained head (`head.safetensors`): the same numbers, with the outputs this build exports.
pub fn export_onnx(model_dir: &Path, out: Option<&Path>, pretrained: Option<&Path>) -> Result<PathBuf, ExportError> {
    let card_path = model_dir.join("model.json");
    let mut card = ModelCard::load(&card_path)?;
    let weights = model_dir.join(&card.weights);
    let bytes = match card.architecture_config()? {
        ArchitectureConfig::SeedCnn(cfg) => {
            // SAFETY: read-only memory map of a file we do not modify while it is mapped.
            let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &Device::Cpu)? };
            let model = SeedCnn::load(vb, &cfg)?;
            let mut metadata = BTreeMap::new();
            metadata.insert("model_version".to_string(), card.version.clone());
            metadata.insert("architecture".to_string(), card.architecture.to_string());
            metadata
                .insert("classes".to_string(), card.classes.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(","));
            metadata.insert("input".to_string(), card.preprocessing.input.clone());
            model.to_onnx(&metadata)?
        }
        config @ ArchitectureConfig::EfficientNetLite0 { .. } => {
            let pth = pretrained.ok_or(ExportError::NeedsCheckpoint(card.architecture))?;
            let net = crate::transfer::load_backbone(pth)?;
            let head = candle_core::safetensors::load(&weights, &Device::Cpu)?;
            let tensor = |name: &str| {
                head.get(name).ok_or_else(|| candle_core::Error::Msg(format!("{} has no {name}", weights.display())))
            };
            let (w, b) = (tensor("catdog.weight")?, tensor("catdog.bias")?);
            let tail = Tail::from_named(&head, "tuned_tail")?;
            let heads = OnnxHeads { catdog: Some((w, b)), tuned_tail: tail.as_ref(), trunk: false };
            net.to_onnx(&heads, &crate::transfer::graph_metadata(&card.version, config.neither_threshold()))?
        }
    };
    let target = out.map(Path::to_path_buf).unwrap_or_else(|| model_dir.join("model.onnx"));
    std::fs::write(&target, bytes).map_err(|source| ExportError::Write { path: target.clone(), source })?;
    if target.parent() == Some(model_dir) || out.is_none() {
        card.onnx = target.file_name().map(|n| n.to_string_lossy().into_owned());
        card.outputs = GraphOutput::EXPORTED.to_vec();
        card.save(&card_path)?;
    }
    Ok(target)
}

/// Puts a trained model directory into the registry, writing its ONNX graph into `from`
/// first when training left none (the server runs ONNX Runtime). Returns the version.
pub fn register(registry: &Registry, from: &Path) -> Result<String, ExportError> {
    let card = ModelCard::load(&from.join("model.json"))?;
    if card.onnx.as_ref().is_none_or(|f| !from.join(f).is_file()) {
        export_onnx(from, None, None)?;
    }
    Ok(registry.add(from)?)
}
