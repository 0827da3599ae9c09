//! The reference backend: the training network's own candle forward pass.
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use catsdogs_model::seed_cnn::{self, SeedCnn};
use image::RgbImage;

use catsdogs_model::onnx::{EMBEDDING_DIMS, embedding_projection};

use crate::{Backend, BackendKind, InferenceError, Scores, pack_nhwc, split_maps};

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
        Ok(self.scores(images)?.into_iter().map(|s| s.p_dog).collect())
    }

    /// The same outputs as the exported graph: P(dog), the logit map, the embedding.
    fn scores(&self, images: &[RgbImage]) -> Result<Vec<Scores>, InferenceError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let s = self.size as usize;
        let x = Tensor::from_vec(pack_nhwc(images, self.size)?, (images.len(), s, s, 3), &Device::Cpu)?;
        let map = self.model.feature_map(&x, false)?;
        let (n, rows, cols, channels) = map.dims4()?;
        let pooled = map.mean(2)?.mean(1)?;
        let p = candle_nn::ops::sigmoid(&self.model.head(&pooled)?.squeeze(1)?)?.to_vec1::<f32>()?;
        let logit_maps = self.model.logit_map_of(&map)?.flatten_all()?.to_vec1::<f32>()?;
        let logit_maps = split_maps(&logit_maps, n, rows, cols)?;
        let projection = Tensor::from_vec(embedding_projection(channels), (channels, EMBEDDING_DIMS), &Device::Cpu)?;
        let embeddings = pooled.matmul(&projection)?.to_vec2::<f32>()?;
        Ok(p.into_iter()
            .zip(logit_maps)
            .zip(embeddings)
            .map(|((p_dog, map), e)| Scores { p_dog, cat_or_dog_score: None, logit_map: Some(map), embedding: Some(e) })
            .collect())
    }
}
