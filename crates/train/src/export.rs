//! `catsdogs export`: the trained candle network written as an ONNX graph, and the step
//! that puts a freshly trained model into the registry with its graph.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use catsdogs_core::registry::{Registry, RegistryError};
use catsdogs_model::card::{Architecture, ArchitectureConfig, ModelCard};
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
    #[error("{0} graphs are written by its training (`catsdogs train --arch efficientnet-lite0`)")]
    NotSeedCnn(Architecture),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Exports the model in `model_dir` to `out` (default `model_dir/model.onnx`); when the
/// graph lands in the model directory, the card's `onnx` field is updated to point at it.
pub fn export_onnx(model_dir: &Path, out: Option<&Path>) -> Result<PathBuf, ExportError> {
    let card_path = model_dir.join("model.json");
    let mut card = ModelCard::load(&card_path)?;
    let ArchitectureConfig::SeedCnn(cfg) = card.architecture_config()? else {
        return Err(ExportError::NotSeedCnn(card.architecture));
    };
    let weights = model_dir.join(&card.weights);
    // SAFETY: read-only memory map of a file we do not modify while it is mapped.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &Device::Cpu)? };
    let model = SeedCnn::load(vb, &cfg)?;
    let mut metadata = BTreeMap::new();
    metadata.insert("model_version".to_string(), card.version.clone());
    metadata.insert("architecture".to_string(), card.architecture.to_string());
    metadata.insert("classes".to_string(), card.classes.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(","));
    metadata.insert("input".to_string(), card.preprocessing.input.clone());
    let bytes = model.to_onnx(&metadata)?;
    let target = out.map(Path::to_path_buf).unwrap_or_else(|| model_dir.join("model.onnx"));
    std::fs::write(&target, bytes).map_err(|source| ExportError::Write { path: target.clone(), source })?;
    if target.parent() == Some(model_dir) || out.is_none() {
        card.onnx = target.file_name().map(|n| n.to_string_lossy().into_owned());
        card.save(&card_path)?;
    }
    Ok(target)
}

/// Puts a trained model directory into the registry, writing its ONNX graph into `from`
/// first when training left none (the server runs ONNX Runtime). Returns the version.
pub fn register(registry: &Registry, from: &Path) -> Result<String, ExportError> {
    let card = ModelCard::load(&from.join("model.json"))?;
    if card.onnx.as_ref().is_none_or(|f| !from.join(f).is_file()) {
        export_onnx(from, None)?;
    }
    Ok(registry.add(from)?)
}
