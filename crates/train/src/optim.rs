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

/// Exponential moving average of the weights (Polyak averaging). Evaluating and shipping
/// the average instead of the last iterate smooths out the epoch-to-epoch swings of a
/// small network trained with noisy augmented batches.
pub struct WeightAverage {
    /// Each averaged variable with its running mean.
    params: Vec<(String, Var, Tensor)>,
    decay: f64,
    updates: usize,
}

impl WeightAverage {
    /// Starts the average at the variables' current values.
    pub fn new(mut named: Vec<(String, Var)>, decay: f64) -> Result<Self> {
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let params = named
            .into_iter()
            .map(|(name, var)| {
                let mean = var.as_tensor().detach().copy()?;
                Ok((name, var, mean))
            })
            .collect::<Result<_>>()?;
        Ok(Self { params, decay, updates: 0 })
    }

    /// Folds the variables' current values into the average. The decay ramps up as
    /// `(1 + n) / (10 + n)` so the first updates are not dominated by the initial weights.
    pub fn update(&mut self) -> Result<()> {
        self.updates += 1;
        let n = self.updates as f64;
        let d = self.decay.min((1.0 + n) / (10.0 + n));
        for (_, var, mean) in &mut self.params {
            *mean = ((&*mean * d)? + (var.as_tensor().detach() * (1.0 - d))?)?;
        }
        Ok(())
    }

    /// Puts the averaged values into the variables and returns what they held, for
    /// [`WeightAverage::restore`].
    pub fn swap_in(&self) -> Result<Vec<Tensor>> {
        self.params
            .iter()
            .map(|(_, var, mean)| {
                let current = var.as_tensor().detach().copy()?;
                var.set(mean)?;
                Ok(current)
            })
            .collect()
    }

    /// Puts back the values [`WeightAverage::swap_in`] returned.
    pub fn restore(&self, saved: &[Tensor]) -> Result<()> {
        for ((_, var, _), t) in self.params.iter().zip(saved) {
            var.set(t)?;
        }
        Ok(())
    }

    /// Writes the average (with its update count) to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut map: HashMap<String, Tensor> = self.params.iter().map(|(n, _, m)| (n.clone(), m.clone())).collect();
        map.insert("updates".into(), Tensor::new(&[self.updates as u32], &candle_core::Device::Cpu)?);
        candle_core::safetensors::save(&map, path)
    }

    /// Reads an average written by [`WeightAverage::save`].
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let mut map = candle_core::safetensors::load(path, &candle_core::Device::Cpu)?;
        for (name, _, mean) in &mut self.params {
            *mean = map
                .remove(name.as_str())
                .ok_or_else(|| candle_core::Error::Msg(format!("weight average lacks {name}")))?;
        }
        if let Some(u) = map.get("updates") {
            self.updates = u.to_vec1::<u32>()?.first().copied().unwrap_or(0) as usize;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn average_follows_the_weights_and_swaps_back() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let var = Var::new(&[0f32, 0.0], &dev)?;
        let mut avg = WeightAverage::new(vec![("w".into(), var.clone())], 0.5)?;
        var.set(&Tensor::new(&[4f32, 8.0], &dev)?)?;
        // First update: decay min(0.5, 2/11) = 2/11, so mean = 9/11 * new value.
        avg.update()?;
        let saved = avg.swap_in()?;
        let mean = var.as_tensor().to_vec1::<f32>()?;
        assert!((mean[0] - 4.0 * 9.0 / 11.0).abs() < 1e-5 && (mean[1] - 8.0 * 9.0 / 11.0).abs() < 1e-5, "{mean:?}");
        avg.restore(&saved)?;
        assert_eq!(var.as_tensor().to_vec1::<f32>()?, vec![4.0, 8.0]);

        let dir = tempfile::tempdir().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        avg.save(&dir.path().join("avg.safetensors"))?;
        let mut back = WeightAverage::new(vec![("w".into(), var.clone())], 0.5)?;
        back.load(&dir.path().join("avg.safetensors"))?;
        assert_eq!(back.updates, 1);
        assert_eq!(back.params[0].2.to_vec1::<f32>()?, avg.params[0].2.to_vec1::<f32>()?);
        Ok(())
    }
}
