//! AdamW with decoupled weight decay whose moment estimates can be saved and restored,
//! so `train --resume` continues exactly where a run stopped (candle_nn's AdamW keeps
//! its moments private).
use std::collections::HashMap;
use std::path::Path;

use candle_core::{Result, Tensor, Var};

/// Named parameters with their first and second moment estimates.
pub struct AdamW {
    params: Vec<(String, Var, Var, Var)>,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    step: usize,
}

impl AdamW {
    /// Optimiser over `named` variables (sorted by name for a stable file layout).
    pub fn new(mut named: Vec<(String, Var)>, lr: f64, weight_decay: f64) -> Result<Self> {
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let params = named
            .into_iter()
            .map(|(name, var)| {
                let m = Var::zeros(var.shape(), var.dtype(), var.device())?;
                let v = Var::zeros(var.shape(), var.dtype(), var.device())?;
                Ok((name, var, m, v))
            })
            .collect::<Result<_>>()?;
        Ok(Self { params, lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay, step: 0 })
    }

    /// Number of steps taken so far.
    pub fn step_count(&self) -> usize {
        self.step
    }

    /// Back-propagates `loss` and updates every parameter once.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = loss.backward()?;
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.beta1, self.beta2);
        let lr_hat = self.lr * (1.0 - b2.powi(t)).sqrt() / (1.0 - b1.powi(t));
        for (_, var, m, v) in &self.params {
            let Some(g) = grads.get(var) else { continue };
            let m_new = ((m.as_tensor() * b1)? + (g * (1.0 - b1))?)?;
            let v_new = ((v.as_tensor() * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let decayed = (var.as_tensor() * (1.0 - self.lr * self.weight_decay))?;
            let update = (m_new.clone() / (v_new.sqrt()? + self.eps)?)?;
            var.set(&(decayed - (update * lr_hat)?)?)?;
            m.set(&m_new)?;
            v.set(&v_new)?;
        }
        Ok(())
    }

    /// Writes the moments and step count to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (name, _, m, v) in &self.params {
            tensors.insert(format!("{name}.m"), m.as_tensor().clone());
            tensors.insert(format!("{name}.v"), v.as_tensor().clone());
        }
        tensors.insert("step".into(), Tensor::new(&[self.step as u32], &candle_core::Device::Cpu)?);
        candle_core::safetensors::save(&tensors, path)
    }

    /// Restores what [`AdamW::save`] wrote; fails naming the first missing tensor.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let tensors = candle_core::safetensors::load(path, &candle_core::Device::Cpu)?;
        let get = |k: &str| tensors.get(k).ok_or_else(|| candle_core::Error::Msg(format!("optimizer state lacks {k}")));
        for (name, _, m, v) in &self.params {
            m.set(get(&format!("{name}.m"))?)?;
            v.set(get(&format!("{name}.v"))?)?;
        }
        self.step = get("step")?.to_vec1::<u32>()?.first().copied().unwrap_or(0) as usize;
        Ok(())
    }
}
