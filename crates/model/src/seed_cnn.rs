//! The seed's network, rebuilt in candle: 3 x [conv 3x3 "same" + ReLU + max-pool 2]
//! with 32/64/128 filters, global average pooling, dropout 0.5, dense -> logit of P(dog).
//!
//! The model takes the preprocessed image as it leaves [`crate::preprocess`]: `u8` RGB in
//! NHWC layout. Scaling to `[0, 1]` happens inside the network, so training, the candle
//! backend and the exported ONNX graph all start from the very same bytes.
//!
//! Convolutions are computed as im2col + one matrix product per image in NHWC layout,
//! forward and backward inside one custom op (see [`conv3x3_same_nhwc`] and
//! [`crate::ops`]): several times faster than candle's `conv2d` on CPU.
use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use std::collections::BTreeMap;

use crate::onnx::{Attr, Dim, ExportError, GraphBuilder};
use crate::ops::MaxPool2;
use serde::{Deserialize, Serialize};

/// Hyper-parameters of the seed network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Square input side in pixels.
    pub input_size: usize,
    /// Filters of the three convolution blocks.
    pub channels: [usize; 3],
    /// Dropout probability before the dense layer (training only).
    pub dropout: f32,
    /// Batch normalisation after each convolution, for training only: it is folded into
    /// the convolution weights when the model is saved ([`SeedCnn::inference_tensors`]),
    /// so the shipped network is exactly the seed's.
    #[serde(default)]
    pub batch_norm: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self { input_size: 128, channels: [32, 64, 128], dropout: 0.5, batch_norm: false }
    }
}

/// Momentum of the running statistics (PyTorch convention).
const BN_MOMENTUM: f64 = 0.1;
/// Variance epsilon.
const BN_EPS: f64 = 1e-5;

/// Training-time batch normalisation over the channels of an NHWC tensor.
#[derive(Debug, Clone)]
pub struct BatchNorm {
    pub gamma: Tensor,
    pub beta: Tensor,
    /// Running statistics, updated in place during training (not optimised).
    pub running_mean: candle_core::Var,
    pub running_var: candle_core::Var,
}

impl BatchNorm {
    fn load(vb: VarBuilder, c: usize) -> Result<Self> {
        let gamma = vb.get_with_hints(c, "weight", Init::Const(1.0))?;
        let beta = vb.get_with_hints(c, "bias", Init::Const(0.0))?;
        let running_mean = candle_core::Var::from_tensor(&vb.get_with_hints(c, "running_mean", Init::Const(0.0))?)?;
        let running_var = candle_core::Var::from_tensor(&vb.get_with_hints(c, "running_var", Init::Const(1.0))?)?;
        Ok(Self { gamma, beta, running_mean, running_var })
    }

    /// `relu(batch_norm(x))` in training mode through the fused kernel of
    /// [`crate::ops::batch_norm_relu_train`]; updates the running statistics.
    fn forward_relu_train(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, _) = x.dims4()?;
        let (y, mean, var) = crate::ops::batch_norm_relu_train(x, &self.gamma, &self.beta, BN_EPS)?;
        self.update_running(&mean, &var, b * h * w)?;
        Ok(y)
    }

    fn update_running(&self, mean: &Tensor, biased_var: &Tensor, n: usize) -> Result<()> {
        let n = n as f64;
        let unbiased = (biased_var.detach() * (n / (n - 1.0).max(1.0)))?;
        let new_mean = ((self.running_mean.as_tensor() * (1.0 - BN_MOMENTUM))? + (mean.detach() * BN_MOMENTUM)?)?;
        let new_var = ((self.running_var.as_tensor() * (1.0 - BN_MOMENTUM))? + (unbiased * BN_MOMENTUM)?)?;
        self.running_mean.set(&new_mean)?;
        self.running_var.set(&new_var)
    }

    /// Batch norm from candle's primitives: the reference the fused kernel is tested
    /// against, and the inference path (running statistics).
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let x2 = x.reshape((b * h * w, c))?;
        let (mean, var) = if train {
            let mean = x2.mean_keepdim(0)?;
            let var = x2.broadcast_sub(&mean)?.sqr()?.mean_keepdim(0)?;
            self.update_running(&mean.squeeze(0)?, &var.squeeze(0)?, b * h * w)?;
            (mean, var)
        } else {
            (self.running_mean.as_tensor().unsqueeze(0)?, self.running_var.as_tensor().unsqueeze(0)?)
        };
        let scale = (var + BN_EPS)?.sqrt()?.recip()?.broadcast_mul(&self.gamma.unsqueeze(0)?)?;
        let shift = (self.beta.unsqueeze(0)? - mean.mul(&scale)?)?;
        x2.broadcast_mul(&scale)?.broadcast_add(&shift)?.reshape((b, h, w, c))
    }
}

/// One 3x3 convolution, weights stored OIHW like PyTorch and ONNX.
#[derive(Debug, Clone)]
pub struct Conv3x3 {
    /// `(out, in, 3, 3)`.
    pub weight: Tensor,
    /// `(out,)`.
    pub bias: Tensor,
    /// Training-time batch norm, folded away on save.
    pub bn: Option<BatchNorm>,
}

impl Conv3x3 {
    fn load(vb: VarBuilder, c_in: usize, c_out: usize, batch_norm: bool) -> Result<Self> {
        let fan_in = (c_in * 9) as f64;
        let bound = (6.0 / fan_in).sqrt();
        let weight = vb.get_with_hints((c_out, c_in, 3, 3), "weight", Init::Uniform { lo: -bound, up: bound })?;
        let bias = vb.get_with_hints(c_out, "bias", Init::Const(0.0))?;
        let bn = if batch_norm { Some(BatchNorm::load(vb.pp("bn"), c_out)?) } else { None };
        Ok(Self { weight, bias, bn })
    }

    /// `relu(conv(x))`, with the batch norm between them when training with one.
    /// NHWC in, NHWC out.
    fn forward_relu(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = conv3x3_same_nhwc(x, &self.weight, &self.bias)?;
        match &self.bn {
            Some(bn) if train => bn.forward_relu_train(&y),
            Some(bn) => bn.forward(&y, false)?.relu(),
            None => y.relu(),
        }
    }

    /// Weight and bias with the batch norm (running statistics) folded in.
    fn folded(&self) -> Result<(Tensor, Tensor)> {
        let Some(bn) = &self.bn else { return Ok((self.weight.clone(), self.bias.clone())) };
        let scale = (bn.running_var.as_tensor() + BN_EPS)?.sqrt()?.recip()?.mul(&bn.gamma)?;
        let o = scale.dim(0)?;
        let weight = self.weight.broadcast_mul(&scale.reshape((o, 1, 1, 1))?)?;
        let bias = ((&self.bias - bn.running_mean.as_tensor())?.mul(&scale)? + &bn.beta)?;
        Ok((weight, bias))
    }
}

/// 3x3 convolution, stride 1, zero padding 1, on an NHWC tensor, weights OIHW: im2col +
/// GEMM per image in one custom op ([`crate::ops::conv3x3_nhwc`]), forward and backward.
pub fn conv3x3_same_nhwc(x: &Tensor, weight_oihw: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (o, c) = (weight_oihw.dim(0)?, weight_oihw.dim(1)?);
    // OIHW -> (O, H, W, I) -> (O, 9*I) -> (9*I, O): row (dy*3+dx)*C + c matches im2col.
    let wmat = weight_oihw.permute((0, 2, 3, 1))?.reshape((o, 9 * c))?.t()?;
    crate::ops::conv3x3_nhwc(x, &wmat, bias)
}

/// 2x2 max-pool with stride 2 on an NHWC tensor with even height and width.
pub fn max_pool2_nhwc(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(MaxPool2)
}

/// The seed CNN.
#[derive(Debug, Clone)]
pub struct SeedCnn {
    /// The three convolution blocks.
    pub convs: Vec<Conv3x3>,
    /// Dense layer, `(1, channels[2])`.
    pub fc_weight: Tensor,
    /// Dense bias, `(1,)`.
    pub fc_bias: Tensor,
    config: Config,
}

impl SeedCnn {
    /// Builds the network from a `VarBuilder` (fresh `VarMap` for training, safetensors
    /// for inference). Tensor names: `conv{1,2,3}.{weight,bias}`, `fc.{weight,bias}`.
    pub fn load(vb: VarBuilder, config: &Config) -> Result<Self> {
        let mut convs = Vec::with_capacity(3);
        let mut c_in = 3;
        for (i, &c_out) in config.channels.iter().enumerate() {
            convs.push(Conv3x3::load(vb.pp(format!("conv{}", i + 1)), c_in, c_out, config.batch_norm)?);
            c_in = c_out;
        }
        let bound = (1.0 / c_in as f64).sqrt();
        let fc = vb.pp("fc");
        let fc_weight = fc.get_with_hints((1, c_in), "weight", Init::Uniform { lo: -bound, up: bound })?;
        let fc_bias = fc.get_with_hints(1, "bias", Init::Const(0.0))?;
        Ok(Self { convs, fc_weight, fc_bias, config: config.clone() })
    }

    /// Seeded initial tensors for every variable `load` creates (He-uniform convolutions,
    /// uniform dense layer, zero biases, identity batch norm): candle's CPU generator cannot
    /// be seeded, and a reproducible start is what makes runs and resumes comparable.
    pub fn initial_tensors(config: &Config, seed: u64) -> Result<std::collections::HashMap<String, Tensor>> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let dev = candle_core::Device::Cpu;
        let mut uniform = |shape: &[usize], bound: f64| -> Result<Tensor> {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound) as f32).collect();
            Tensor::from_vec(v, shape, &dev)
        };
        let mut out = std::collections::HashMap::new();
        let mut c_in = 3;
        for (i, &c) in config.channels.iter().enumerate() {
            let p = format!("conv{}", i + 1);
            out.insert(format!("{p}.weight"), uniform(&[c, c_in, 3, 3], (6.0 / (c_in * 9) as f64).sqrt())?);
            out.insert(format!("{p}.bias"), Tensor::zeros(c, DType::F32, &dev)?);
            if config.batch_norm {
                out.insert(format!("{p}.bn.weight"), Tensor::ones(c, DType::F32, &dev)?);
                out.insert(format!("{p}.bn.bias"), Tensor::zeros(c, DType::F32, &dev)?);
                out.insert(format!("{p}.bn.running_mean"), Tensor::zeros(c, DType::F32, &dev)?);
                out.insert(format!("{p}.bn.running_var"), Tensor::ones(c, DType::F32, &dev)?);
            }
            c_in = c;
        }
        out.insert("fc.weight".into(), uniform(&[1, c_in], (1.0 / c_in as f64).sqrt())?);
        out.insert("fc.bias".into(), Tensor::zeros(1, DType::F32, &dev)?);
        Ok(out)
    }

    /// The configuration the network was built with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Pooled features `(B, channels[2])` of a `u8` NHWC batch.
    pub fn features(&self, images_u8_nhwc: &Tensor, train: bool) -> Result<Tensor> {
        self.feature_map(images_u8_nhwc, train)?.mean(2)?.mean(1)
    }

    /// The last block's output before pooling, `(B, side, side, channels[2])` (NHWC).
    pub fn feature_map(&self, images_u8_nhwc: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = (images_u8_nhwc.to_dtype(DType::F32)? * (1.0 / 255.0))?;
        for conv in &self.convs {
            x = max_pool2_nhwc(&conv.forward_relu(&x, train)?)?;
        }
        Ok(x)
    }

    /// The dense layer applied to each cell of [`Self::feature_map`]: `(B, side, side)`
    /// logits whose mean over the cells is the image's logit (pooling is a mean and the
    /// layer is linear), the class-activation map of the answer.
    pub fn logit_map(&self, images_u8_nhwc: &Tensor) -> Result<Tensor> {
        self.logit_map_of(&self.feature_map(images_u8_nhwc, false)?)
    }

    /// [`Self::logit_map`] of an already computed feature map.
    pub fn logit_map_of(&self, feature_map: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = feature_map.dims4()?;
        self.head(&feature_map.reshape((b * h * w, c))?)?.reshape((b, h, w))
    }

    /// The dense layer on feature rows `(R, channels[2])`: `(R, 1)` logits.
    pub fn head(&self, features: &Tensor) -> Result<Tensor> {
        features.matmul(&self.fc_weight.t()?)?.broadcast_add(&self.fc_bias)
    }

    /// The inference network's tensors by name, batch norm folded into the convolutions:
    /// what `model.safetensors` holds, loadable with `batch_norm: false`.
    pub fn inference_tensors(&self) -> Result<std::collections::HashMap<String, Tensor>> {
        let mut out = std::collections::HashMap::new();
        for (i, conv) in self.convs.iter().enumerate() {
            let (w, b) = conv.folded()?;
            out.insert(format!("conv{}.weight", i + 1), w.contiguous()?);
            out.insert(format!("conv{}.bias", i + 1), b.contiguous()?);
        }
        out.insert("fc.weight".into(), self.fc_weight.clone());
        out.insert("fc.bias".into(), self.fc_bias.clone());
        Ok(out)
    }

    /// Logits of P(dog), shape `(B,)`. `train` enables dropout and batch statistics.
    pub fn forward_logits(&self, images_u8_nhwc: &Tensor, train: bool) -> Result<Tensor> {
        let mut f = self.features(images_u8_nhwc, train)?;
        if train && self.config.dropout > 0.0 {
            f = candle_nn::ops::dropout(&f, self.config.dropout)?;
        }
        self.head(&f)?.squeeze(D::Minus1)
    }
}

impl SeedCnn {
    /// The same network as an ONNX graph: input `image` (u8, `[N, S, S, 3]`), outputs
    /// `p_dog` (f32, `[N]`), `logit_map` ([`Self::logit_map`]) and `embedding` (pooled
    /// features, projected). Cast, scaling and the NHWC->NCHW transpose are in-graph.
    pub fn to_onnx(&self, metadata: &BTreeMap<String, String>) -> std::result::Result<Vec<u8>, ExportError> {
        let s = self.config.input_size as i64;
        let mut g = GraphBuilder::new("seed_cnn");
        g.input_u8("image", &[Dim::Named("N"), Dim::Fixed(s), Dim::Fixed(s), Dim::Fixed(3)]);
        let x = g.node("Cast", &["image"], vec![("to", Attr::Int(1))], None);
        let scale = g.f32_tensor("scale", vec![], &[1.0 / 255.0]);
        let x = g.node("Mul", &[&x, &scale], vec![], None);
        let mut x = g.node("Transpose", &[&x], vec![("perm", Attr::Ints(vec![0, 3, 1, 2]))], None);
        for (i, conv) in self.convs.iter().enumerate() {
            let (w, b) = conv.folded()?;
            let w = g.weight(&format!("conv{}.weight", i + 1), &w)?;
            let b = g.weight(&format!("conv{}.bias", i + 1), &b)?;
            let attrs = vec![("kernel_shape", Attr::Ints(vec![3, 3])), ("pads", Attr::Ints(vec![1, 1, 1, 1]))];
            let y = g.node("Conv", &[&x, &w, &b], attrs, None);
            let y = g.node("Relu", &[&y], vec![], None);
            let pool = vec![("kernel_shape", Attr::Ints(vec![2, 2])), ("strides", Attr::Ints(vec![2, 2]))];
            x = g.node("MaxPool", &[&y], pool, None);
        }
        let map = x;
        let x = g.node("GlobalAveragePool", &[&map], vec![], None);
        let x = g.node("Flatten", &[&x], vec![("axis", Attr::Int(1))], None);
        let w = g.weight("fc.weight", &self.fc_weight)?;
        let b = g.weight("fc.bias", &self.fc_bias)?;
        g.p_dog_head(&x, &w, &b);
        let channels = self.config.channels[2];
        let side = self.config.input_size >> self.convs.len();
        g.logit_map_output(&map, &w, &b, channels, side);
        g.embedding_output(&x, channels);
        Ok(g.finish(metadata))
    }
}

impl Module for SeedCnn {
    /// P(dog) for each image of a `u8` NHWC batch.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        candle_nn::ops::sigmoid(&self.forward_logits(xs, false)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn im2col_conv_matches_candle_conv2d() -> Result<()> {
        let dev = Device::Cpu;
        // Batch 1 takes the one-image-at-a-time path with a parallel GEMM, batch 3 the
        // images-in-parallel path.
        for batch in [1, 3] {
            let x = candle_core::Var::from_tensor(&crate::testing::randn(1, 0f32, 1.0, (batch, 7, 9, 5), &dev)?)?;
            let w = candle_core::Var::from_tensor(&crate::testing::randn(2, 0f32, 1.0, (4, 5, 3, 3), &dev)?)?;
            let b = candle_core::Var::from_tensor(&crate::testing::randn(3, 0f32, 1.0, 4, &dev)?)?;
            let ours = conv3x3_same_nhwc(&x, &w, &b)?;
            let reference = x
                .permute((0, 3, 1, 2))?
                .conv2d(&w, 1, 1, 1, 1)?
                .broadcast_add(&b.reshape((1, 4, 1, 1))?)?
                .permute((0, 2, 3, 1))?;
            let max_diff = |a: &Tensor, b: &Tensor| -> Result<f32> { (a - b)?.abs()?.max_all()?.to_scalar::<f32>() };
            assert!(max_diff(&ours, &reference)? < 1e-4);
            // Gradients w.r.t. input, weights and bias agree with candle's conv2d.
            let g_ours = (ours.sqr()?.sum_all()?).backward()?;
            let g_ref = (reference.sqr()?.sum_all()?).backward()?;
            for v in [x.as_tensor(), w.as_tensor(), b.as_tensor()] {
                let (a, b) = (g_ours.get(v).expect("grad"), g_ref.get(v).expect("grad"));
                let scale = b.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
                assert!(max_diff(a, b)? / scale < 1e-4, "gradient differs at batch {batch}");
            }
        }
        Ok(())
    }

    #[test]
    fn max_pool_matches_candle() -> Result<()> {
        let dev = Device::Cpu;
        let x = candle_core::Var::from_tensor(&crate::testing::randn(4, 0f32, 1.0, (2, 6, 8, 3), &dev)?)?;
        let ours = max_pool2_nhwc(&x)?;
        let reference = x.permute((0, 3, 1, 2))?.max_pool2d(2)?.permute((0, 2, 3, 1))?;
        let diff = (&ours - &reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        // Gradient of sum(pooled^2): 2 * max at each window's maximum, 0 elsewhere (random
        // inputs have no ties). candle's own max_pool2d backward scales this by 1/4, so it
        // cannot serve as the reference here.
        let grads = (ours.sqr()?.sum_all()?).backward()?;
        let got = grads.get(&x).expect("grad");
        let up = ours.permute((0, 3, 1, 2))?.upsample_nearest2d(6, 8)?.permute((0, 2, 3, 1))?;
        let expected = (x.as_tensor().eq(&up)?.to_dtype(DType::F32)? * (up * 2.0)?)?;
        assert_eq!((got - expected)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }

    #[test]
    fn fused_batch_norm_relu_matches_candle_composition() -> Result<()> {
        let dev = Device::Cpu;
        let (m, c) = (5000, 7);
        let x = candle_core::Var::from_tensor(&(crate::testing::randn(5, 0f32, 2.0, (m, c), &dev)? + 0.5)?)?;
        let gamma = candle_core::Var::from_tensor(&crate::testing::randn(6, 1f32, 0.3, c, &dev)?)?;
        let beta = candle_core::Var::from_tensor(&crate::testing::randn(7, 0f32, 0.3, c, &dev)?)?;
        // A loss that weighs every output differently, so each gradient term matters.
        let weights = crate::testing::randn(8, 0f32, 1.0, (m, c), &dev)?;

        let (fused, mean, var) = crate::ops::batch_norm_relu_train(&x, &gamma, &beta, BN_EPS)?;
        let mean_ref = x.mean_keepdim(0)?;
        let centred = x.broadcast_sub(&mean_ref)?;
        let var_ref = centred.sqr()?.mean_keepdim(0)?;
        let reference = centred
            .broadcast_div(&(&var_ref + BN_EPS)?.sqrt()?)?
            .broadcast_mul(&gamma.unsqueeze(0)?)?
            .broadcast_add(&beta.unsqueeze(0)?)?
            .relu()?;
        // Relative to the magnitudes compared: the sums behind the mean and variance of 5,000
        // values are reassociated differently by the two implementations.
        let rel = crate::testing::max_relative_diff;
        assert!(rel(&fused, &reference, 1.0)? < 1e-5);
        assert!(rel(&mean, &mean_ref.squeeze(0)?, 1.0)? < 1e-5);
        assert!(rel(&var, &var_ref.squeeze(0)?, 1.0)? < 1e-4);

        let g_fused = fused.mul(&weights)?.sum_all()?.backward()?;
        let g_ref = reference.mul(&weights)?.sum_all()?.backward()?;
        for (name, v) in [("x", x.as_tensor()), ("gamma", gamma.as_tensor()), ("beta", beta.as_tensor())] {
            let (a, b) = (g_fused.get(v).expect("fused grad"), g_ref.get(v).expect("reference grad"));
            assert!(rel(a, b, 1e-3)? < 1e-4, "gradient of {name} differs");
        }
        Ok(())
    }

    #[test]
    fn folded_batch_norm_matches_eval_mode() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let cfg = Config { input_size: 16, batch_norm: true, ..Config::default() };
        let model = SeedCnn::load(vb, &cfg)?;
        let x = crate::testing::rand(9, 0f32, 255.0, (4, 16, 16, 3), &dev)?.to_dtype(DType::U8)?;
        // A few training passes move the running statistics away from (0, 1).
        for _ in 0..3 {
            model.forward_logits(&x, true)?;
        }
        let eval = model.forward_logits(&x, false)?;
        let folded = SeedCnn::load(
            VarBuilder::from_tensors(model.inference_tensors()?, DType::F32, &dev),
            &Config { batch_norm: false, ..cfg },
        )?;
        let diff = (eval - folded.forward_logits(&x, false)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "folded network differs by {diff}");
        Ok(())
    }

    #[test]
    fn parameter_count_matches_seed() -> Result<()> {
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let _ = SeedCnn::load(vb, &Config::default())?;
        let n: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
        assert_eq!(n, 93_377);
        Ok(())
    }
}
