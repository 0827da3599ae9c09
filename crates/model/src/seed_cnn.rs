//! The seed's network, rebuilt in candle: 3 x [conv 3x3 "same" + ReLU + max-pool 2]
//! with 32/64/128 filters, global average pooling, dropout 0.5, dense -> logit of P(dog).
//!
//! The model takes the preprocessed image as it leaves [`crate::preprocess`]: `u8` RGB in
//! NHWC layout. Scaling to `[0, 1]` happens inside the network, so training, the candle
//! backend and the exported ONNX graph all start from the very same bytes.
//!
//! Convolutions are computed as im2col + one large matrix product in NHWC layout
//! (see [`conv3x3_same_nhwc`] and [`crate::ops`]): several times faster than candle's
//! `conv2d` on CPU for both the forward and the backward pass.
use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use std::collections::BTreeMap;

use crate::onnx::{Attr, Dim, ExportError, GraphBuilder};
use crate::ops::{Im2Col3x3, MaxPool2};
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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            input_size: 128,
            channels: [32, 64, 128],
            dropout: 0.5,
        }
    }
}

/// One 3x3 convolution, weights stored OIHW like PyTorch and ONNX.
#[derive(Debug, Clone)]
pub struct Conv3x3 {
    /// `(out, in, 3, 3)`.
    pub weight: Tensor,
    /// `(out,)`.
    pub bias: Tensor,
}

impl Conv3x3 {
    fn load(vb: VarBuilder, c_in: usize, c_out: usize) -> Result<Self> {
        let fan_in = (c_in * 9) as f64;
        let bound = (6.0 / fan_in).sqrt();
        let weight = vb.get_with_hints(
            (c_out, c_in, 3, 3),
            "weight",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        let bias = vb.get_with_hints(c_out, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias })
    }

    /// NHWC in, NHWC out.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        conv3x3_same_nhwc(x, &self.weight, &self.bias)
    }
}

/// 3x3 convolution, stride 1, zero padding 1, on an NHWC tensor.
///
/// The nine shifted views are concatenated along channels (im2col), giving a
/// `(B*H*W, 9*C)` matrix multiplied by the `(9*C, O)` weight matrix: forward and both
/// gradients are then single large GEMMs.
pub fn conv3x3_same_nhwc(x: &Tensor, weight_oihw: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    let o = weight_oihw.dim(0)?;
    let cols = x.contiguous()?.apply_op1(Im2Col3x3)?;
    // OIHW -> (O, H, W, I) -> (O, 9*I) so that column (dy*3+dx)*C + c matches `cols`.
    let wmat = weight_oihw
        .permute((0, 2, 3, 1))?
        .reshape((o, 9 * c))?
        .t()?;
    cols.matmul(&wmat)?
        .broadcast_add(bias)?
        .reshape((b, h, w, o))
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
            convs.push(Conv3x3::load(vb.pp(format!("conv{}", i + 1)), c_in, c_out)?);
            c_in = c_out;
        }
        let bound = (1.0 / c_in as f64).sqrt();
        let fc = vb.pp("fc");
        let fc_weight = fc.get_with_hints(
            (1, c_in),
            "weight",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        let fc_bias = fc.get_with_hints(1, "bias", Init::Const(0.0))?;
        Ok(Self {
            convs,
            fc_weight,
            fc_bias,
            config: config.clone(),
        })
    }

    /// The configuration the network was built with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Pooled features `(B, channels[2])` of a `u8` NHWC batch.
    pub fn features(&self, images_u8_nhwc: &Tensor) -> Result<Tensor> {
        let mut x = (images_u8_nhwc.to_dtype(DType::F32)? * (1.0 / 255.0))?;
        for conv in &self.convs {
            x = max_pool2_nhwc(&conv.forward(&x)?.relu()?)?;
        }
        x.mean(2)?.mean(1)
    }

    /// Logits of P(dog), shape `(B,)`. `train` enables dropout.
    pub fn forward_logits(&self, images_u8_nhwc: &Tensor, train: bool) -> Result<Tensor> {
        let mut f = self.features(images_u8_nhwc)?;
        if train && self.config.dropout > 0.0 {
            f = candle_nn::ops::dropout(&f, self.config.dropout)?;
        }
        f.matmul(&self.fc_weight.t()?)?
            .broadcast_add(&self.fc_bias)?
            .squeeze(D::Minus1)
    }
}

impl SeedCnn {
    /// The same network as an ONNX graph: input `image` (u8, `[N, S, S, 3]`), output
    /// `p_dog` (f32, `[N]`). Cast, scaling and the NHWC->NCHW transpose are in-graph.
    pub fn to_onnx(
        &self,
        metadata: &BTreeMap<String, String>,
    ) -> std::result::Result<Vec<u8>, ExportError> {
        let s = self.config.input_size as i64;
        let mut g = GraphBuilder::new("seed_cnn");
        g.input_u8(
            "image",
            &[Dim::Named("N"), Dim::Fixed(s), Dim::Fixed(s), Dim::Fixed(3)],
        );
        let x = g.node("Cast", &["image"], vec![("to", Attr::Int(1))], None);
        let scale = g.f32_tensor("scale", vec![], &[1.0 / 255.0]);
        let x = g.node("Mul", &[&x, &scale], vec![], None);
        let mut x = g.node(
            "Transpose",
            &[&x],
            vec![("perm", Attr::Ints(vec![0, 3, 1, 2]))],
            None,
        );
        for (i, conv) in self.convs.iter().enumerate() {
            let w = g.weight(&format!("conv{}.weight", i + 1), &conv.weight)?;
            let b = g.weight(&format!("conv{}.bias", i + 1), &conv.bias)?;
            let attrs = vec![
                ("kernel_shape", Attr::Ints(vec![3, 3])),
                ("pads", Attr::Ints(vec![1, 1, 1, 1])),
            ];
            let y = g.node("Conv", &[&x, &w, &b], attrs, None);
            let y = g.node("Relu", &[&y], vec![], None);
            let pool = vec![
                ("kernel_shape", Attr::Ints(vec![2, 2])),
                ("strides", Attr::Ints(vec![2, 2])),
            ];
            x = g.node("MaxPool", &[&y], pool, None);
        }
        let x = g.node("GlobalAveragePool", &[&x], vec![], None);
        let x = g.node("Flatten", &[&x], vec![("axis", Attr::Int(1))], None);
        let w = g.weight("fc.weight", &self.fc_weight)?;
        let b = g.weight("fc.bias", &self.fc_bias)?;
        let logit = g.node("Gemm", &[&x, &w, &b], vec![("transB", Attr::Int(1))], None);
        let p = g.node("Sigmoid", &[&logit], vec![], None);
        let shape = g.i64_tensor("flat_shape", &[-1]);
        g.node("Reshape", &[&p, &shape], vec![], Some("p_dog"));
        g.output_f32("p_dog", &[Dim::Named("N")]);
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
        let x = candle_nn::Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 7, 9, 5), &dev)?)?;
        let w = candle_nn::Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 5, 3, 3), &dev)?)?;
        let b = Tensor::randn(0f32, 1.0, 4, &dev)?;
        let ours = conv3x3_same_nhwc(&x, &w, &b)?;
        let reference = x
            .permute((0, 3, 1, 2))?
            .conv2d(&w, 1, 1, 1, 1)?
            .broadcast_add(&b.reshape((1, 4, 1, 1))?)?
            .permute((0, 2, 3, 1))?;
        let max_diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
            (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
        };
        assert!(max_diff(&ours, &reference)? < 1e-4);
        // Gradients w.r.t. input and weights agree with candle's conv2d.
        let g_ours = (ours.sqr()?.sum_all()?).backward()?;
        let g_ref = (reference.sqr()?.sum_all()?).backward()?;
        for v in [x.as_tensor(), w.as_tensor()] {
            let (a, b) = (g_ours.get(v).expect("grad"), g_ref.get(v).expect("grad"));
            assert!(max_diff(a, b)? < 1e-3, "gradient differs");
        }
        Ok(())
    }

    #[test]
    fn max_pool_matches_candle() -> Result<()> {
        let dev = Device::Cpu;
        let x = candle_nn::Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 6, 8, 3), &dev)?)?;
        let ours = max_pool2_nhwc(&x)?;
        let reference = x
            .permute((0, 3, 1, 2))?
            .max_pool2d(2)?
            .permute((0, 2, 3, 1))?;
        let diff = (&ours - &reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        // Gradients agree too (random inputs have no ties).
        let g_ours = (ours.sqr()?.sum_all()?).backward()?;
        let g_ref = (reference.sqr()?.sum_all()?).backward()?;
        let (a, b) = (g_ours.get(&x).expect("grad"), g_ref.get(&x).expect("grad"));
        assert_eq!((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
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
