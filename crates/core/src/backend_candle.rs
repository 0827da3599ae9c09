//! The reference backend: the training network's own candle forward pass.
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use catsdogs_model::seed_cnn::{self, SeedCnn};
use image::RgbImage;

use crate::{Backend, BackendKind, InferenceError, pack_nhwc};

/// Seed CNN weights loaded from safetensors, run with candle on the CPU.
pub struct CandleBackend {
    model: SeedCnn,
    size: u32,
}

impl CandleBackend {
    /// Loads `weights` (safetensors) for the seed CNN described by `config`.
    pub fn load(weights: &Path, config: &seed_cnn::Config) -> Result<Self, InferenceError> {
        // SAFETY: the weights file is memory-mapped read-only and not modified while loaded.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &Device::Cpu)? };
        Ok(Self { model: SeedCnn::load(vb, config)?, size: config.input_size as u32 })
    }
}

impl Backend for CandleBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Candle
    }

    fn predict(&self, images: &[RgbImage]) -> Result<Vec<f32>, InferenceError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let s = self.size as usize;
        let x = Tensor::from_vec(pack_nhwc(images, self.size)?, (images.len(), s, s, 3), &Device::Cpu)?;
        let logits = self.model.forward_logits(&x, false)?;
        Ok(candle_nn::ops::sigmoid(&logits)?.to_vec1::<f32>()?)
    }
}
