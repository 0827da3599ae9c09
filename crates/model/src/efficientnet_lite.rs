//! EfficientNet-Lite0 (EfficientNet-B0's block table without squeeze-excitation, ReLU6,
//! stem 32 and head 1280 fixed), read from the lukemelas-style PyTorch checkpoint
//! (`efficientnet-lite0-57934424.pth`), with its ONNX export.
//!
//! The checkpoint was converted from TensorFlow, so it is reproduced with TF "same"
//! padding (the extra row/column of a stride-2 convolution goes bottom/right), BatchNorm
//! eps 1e-3 and inputs scaled to [-1, 1]. The candle forward is the reference (slow:
//! candle runs grouped convolutions one group at a time); the ONNX graph folds BatchNorm
//! into the convolutions and expresses the padding with asymmetric `pads`.
use std::collections::BTreeMap;

use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::onnx::{Attr, Dim, ExportError, GraphBuilder};

/// One MBConv stage of the block table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageArgs {
    pub expand: usize,
    pub kernel: usize,
    pub stride: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub repeats: usize,
}

/// Network hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub input_size: usize,
    pub stem_channels: usize,
    pub head_channels: usize,
    pub num_classes: usize,
    pub bn_eps: f64,
    pub stages: Vec<StageArgs>,
}

impl Config {
    /// EfficientNet-Lite0 at 224x224 with the 1000 ImageNet classes.
    pub fn lite0() -> Self {
        let s = |expand, kernel, stride, in_channels, out_channels, repeats| StageArgs {
            expand,
            kernel,
            stride,
            in_channels,
            out_channels,
            repeats,
        };
        Self {
            input_size: 224,
            stem_channels: 32,
            head_channels: 1280,
            num_classes: 1000,
            bn_eps: 1e-3,
            stages: vec![
                s(1, 3, 1, 32, 16, 1),
                s(6, 3, 2, 16, 24, 2),
                s(6, 5, 2, 24, 40, 2),
                s(6, 3, 2, 40, 80, 3),
                s(6, 5, 1, 80, 112, 3),
                s(6, 5, 2, 112, 192, 4),
                s(6, 3, 1, 192, 320, 1),
            ],
        }
    }
}

/// TF "same" padding of one spatial dimension: (before, after).
pub fn same_pads(input: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = input.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(input);
    (total / 2, total - total / 2)
}

/// A bias-free convolution followed by inference-mode BatchNorm.
struct ConvBn {
    weight: Tensor,
    gamma: Tensor,
    beta: Tensor,
    mean: Tensor,
    var: Tensor,
    eps: f64,
    stride: usize,
    groups: usize,
    kernel: usize,
}

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    fn load(
        conv: VarBuilder,
        bn: VarBuilder,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        groups: usize,
        eps: f64,
    ) -> Result<Self> {
        Ok(Self {
            weight: conv.get((cout, cin / groups, kernel, kernel), "weight")?,
            gamma: bn.get(cout, "weight")?,
            beta: bn.get(cout, "bias")?,
            mean: bn.get(cout, "running_mean")?,
            var: bn.get(cout, "running_var")?,
            eps,
            stride,
            groups,
            kernel,
        })
    }

    /// Output side for an input side.
    fn out_size(&self, input: usize) -> usize {
        input.div_ceil(self.stride)
    }

    /// NCHW forward with explicit (unfolded) BatchNorm.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (top, bottom) = same_pads(h, self.kernel, self.stride);
        let (left, right) = same_pads(w, self.kernel, self.stride);
        let x = x.pad_with_zeros(2, top, bottom)?.pad_with_zeros(3, left, right)?;
        let y = x.conv2d(&self.weight, 0, self.stride, 1, self.groups)?;
        let c = self.gamma.dim(0)?;
        let shape = (1, c, 1, 1);
        let scale = (&self.gamma / (&self.var + self.eps)?.sqrt()?)?;
        let y = y.broadcast_sub(&self.mean.reshape(shape)?)?.broadcast_mul(&scale.reshape(shape)?)?;
        y.broadcast_add(&self.beta.reshape(shape)?)
    }

    /// BatchNorm folded into the convolution: (weight, bias).
    fn folded(&self) -> Result<(Tensor, Tensor)> {
        let scale = (&self.gamma / (&self.var + self.eps)?.sqrt()?)?;
        let w = self.weight.broadcast_mul(&scale.reshape((scale.dim(0)?, 1, 1, 1))?)?;
        let b = (&self.beta - (&self.mean * &scale)?)?;
        Ok((w, b))
    }

    /// Adds the folded convolution to an ONNX graph for an input of side `input`.
    fn to_onnx(
        &self,
        g: &mut GraphBuilder,
        name: &str,
        x: &str,
        input: usize,
    ) -> std::result::Result<String, ExportError> {
        let (w, b) = self.folded()?;
        let w = g.weight(&format!("{name}.weight"), &w)?;
        let b = g.weight(&format!("{name}.bias"), &b)?;
        let (before, after) = same_pads(input, self.kernel, self.stride);
        let (k, s, p0, p1) = (self.kernel as i64, self.stride as i64, before as i64, after as i64);
        let attrs = vec![
            ("kernel_shape", Attr::Ints(vec![k, k])),
            ("strides", Attr::Ints(vec![s, s])),
            ("pads", Attr::Ints(vec![p0, p0, p1, p1])),
            ("group", Attr::Int(self.groups as i64)),
        ];
        Ok(g.node("Conv", &[x, &w, &b], attrs, None))
    }
}

fn relu6(x: &Tensor) -> Result<Tensor> {
    x.clamp(0f32, 6f32)
}

/// One MBConv block (no squeeze-excitation in Lite).
struct Block {
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    project: ConvBn,
    residual: bool,
}

/// The network: backbone, 1280-d pooled features and the ImageNet classifier.
pub struct EfficientNetLite {
    pub config: Config,
    stem: ConvBn,
    blocks: Vec<Block>,
    head: ConvBn,
    fc_weight: Tensor,
    fc_bias: Tensor,
}

/// ImageNet class indices of dog breeds (151-268) and domestic cats (281-285).
pub const IMAGENET_DOGS: std::ops::RangeInclusive<usize> = 151..=268;
pub const IMAGENET_CATS: std::ops::RangeInclusive<usize> = 281..=285;

impl EfficientNetLite {
    /// Reads the network from a VarBuilder over the lukemelas checkpoint's names. A missing
    /// or wrongly shaped tensor is an error naming it.
    pub fn load(vb: VarBuilder, config: &Config) -> Result<Self> {
        let eps = config.bn_eps;
        let stem = ConvBn::load(vb.pp("_conv_stem"), vb.pp("_bn0"), 3, config.stem_channels, 3, 2, 1, eps)?;
        let mut blocks = Vec::new();
        for stage in &config.stages {
            for r in 0..stage.repeats {
                let (cin, stride) = if r == 0 { (stage.in_channels, stage.stride) } else { (stage.out_channels, 1) };
                let b = vb.pp(format!("_blocks.{}", blocks.len()));
                let mid = cin * stage.expand;
                let expand = (stage.expand != 1)
                    .then(|| ConvBn::load(b.pp("_expand_conv"), b.pp("_bn0"), cin, mid, 1, 1, 1, eps))
                    .transpose()?;
                let depthwise =
                    ConvBn::load(b.pp("_depthwise_conv"), b.pp("_bn1"), mid, mid, stage.kernel, stride, mid, eps)?;
                let project = ConvBn::load(b.pp("_project_conv"), b.pp("_bn2"), mid, stage.out_channels, 1, 1, 1, eps)?;
                blocks.push(Block { expand, depthwise, project, residual: stride == 1 && cin == stage.out_channels });
            }
        }
        let last = config.stages.last().map(|s| s.out_channels).unwrap_or(320);
        let head = ConvBn::load(vb.pp("_conv_head"), vb.pp("_bn1"), last, config.head_channels, 1, 1, 1, eps)?;
        let fc = vb.pp("_fc");
        let fc_weight = fc.get((config.num_classes, config.head_channels), "weight")?;
        let fc_bias = fc.get(config.num_classes, "bias")?;
        Ok(Self { config: config.clone(), stem, blocks, head, fc_weight, fc_bias })
    }

    /// Pooled 1280-d features and ImageNet logits of a `u8` NHWC batch.
    pub fn forward_all(&self, images: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = images.to_dtype(DType::F32)?.affine(1.0 / 127.5, -1.0)?.permute((0, 3, 1, 2))?.contiguous()?;
        let mut x = relu6(&self.stem.forward(&x)?)?;
        for b in &self.blocks {
            let input = x.clone();
            if let Some(e) = &b.expand {
                x = relu6(&e.forward(&x)?)?;
            }
            x = relu6(&b.depthwise.forward(&x)?)?;
            x = b.project.forward(&x)?;
            if b.residual {
                x = (x + input)?;
            }
        }
        let x = relu6(&self.head.forward(&x)?)?;
        let features = x.mean(D::Minus1)?.mean(D::Minus1)?;
        let logits = features.matmul(&self.fc_weight.t()?)?.broadcast_add(&self.fc_bias)?;
        Ok((features, logits))
    }

    /// The last MBConv block and the 1x1 head convolution, BatchNorm folded (the starting
    /// point of tail tuning). The last block must be a non-residual 3x3 block with an
    /// expansion, as in Lite0.
    pub fn tail_folded(&self) -> Result<Tail> {
        let Some(last) = self.blocks.last() else { candle_core::bail!("the network has no blocks") };
        let Some(expand) = &last.expand else { candle_core::bail!("the last block has no expansion") };
        if last.residual || last.depthwise.kernel != 3 || last.depthwise.stride != 1 {
            candle_core::bail!("the last block must be a 3x3, stride-1, non-residual block");
        }
        // Conv [cout, cin, 1, 1] -> matrix [cin, cout] (x @ W).
        let pointwise = |c: &ConvBn| -> Result<(Tensor, Tensor)> {
            let (w, b) = c.folded()?;
            let (cout, cin, _, _) = w.dims4()?;
            Ok((w.reshape((cout, cin))?.t()?.contiguous()?, b))
        };
        let (dw, db) = last.depthwise.folded()?;
        let mid = dw.dim(0)?;
        Ok(Tail {
            expand: pointwise(expand)?,
            depthwise: (dw.reshape((mid, 9))?.t()?.contiguous()?, db),
            project: pointwise(&last.project)?,
            head: pointwise(&self.head)?,
        })
    }

    /// Channels of the trunk: the input of the last block.
    pub fn trunk_channels(&self) -> usize {
        self.blocks.last().and_then(|b| b.expand.as_ref()).map_or(0, |e| e.weight.dim(1).unwrap_or(0))
    }

    /// The graph: `image` (u8 NHWC) -> `features` [N, 1280], `imagenet_logits` [N, 1000],
    /// plus what `heads` asks for; with the cat/dog head also `logit_map` [N, 7, 7] (the head
    /// on each cell of its branch's last feature map) and `embedding` [N, 32] (the pretrained
    /// features, projected).
    pub fn to_onnx(
        &self,
        heads: &OnnxHeads,
        metadata: &BTreeMap<String, String>,
    ) -> std::result::Result<Vec<u8>, ExportError> {
        let s = self.config.input_size;
        let mut g = GraphBuilder::new("efficientnet_lite0");
        g.input_u8("image", &[Dim::Named("N"), Dim::Fixed(s as i64), Dim::Fixed(s as i64), Dim::Fixed(3)]);
        let x = g.node("Cast", &["image"], vec![("to", Attr::Int(1))], None);
        let scale = g.f32_tensor("input_scale", vec![], &[1.0 / 127.5]);
        let shift = g.f32_tensor("input_shift", vec![], &[-1.0]);
        let x = g.node("Mul", &[&x, &scale], vec![], None);
        let x = g.node("Add", &[&x, &shift], vec![], None);
        let x = g.node("Transpose", &[&x], vec![("perm", Attr::Ints(vec![0, 3, 1, 2]))], None);
        let lo = g.f32_tensor("relu6_min", vec![], &[0.0]);
        let hi = g.f32_tensor("relu6_max", vec![], &[6.0]);
        let relu6 = |g: &mut GraphBuilder, x: &str| g.node("Clip", &[x, &lo, &hi], vec![], None);
        let mut size = s;
        let y = self.stem.to_onnx(&mut g, "stem", &x, size)?;
        size = self.stem.out_size(size);
        let mut x = relu6(&mut g, &y);
        let mut trunk = x.clone();
        let mut trunk_side = size;
        for (i, b) in self.blocks.iter().enumerate() {
            let input = x.clone();
            if i + 1 == self.blocks.len() {
                (trunk, trunk_side) = (x.clone(), size);
            }
            if let Some(e) = &b.expand {
                let y = e.to_onnx(&mut g, &format!("blocks.{i}.expand"), &x, size)?;
                x = relu6(&mut g, &y);
            }
            let y = b.depthwise.to_onnx(&mut g, &format!("blocks.{i}.depthwise"), &x, size)?;
            size = b.depthwise.out_size(size);
            x = relu6(&mut g, &y);
            x = b.project.to_onnx(&mut g, &format!("blocks.{i}.project"), &x, size)?;
            if b.residual {
                x = g.node("Add", &[&x, &input], vec![], None);
            }
        }
        if heads.trunk {
            g.node("Identity", &[&trunk], vec![], Some("trunk"));
            let (c, side) = (self.trunk_channels() as i64, trunk_side as i64);
            g.output_f32("trunk", &[Dim::Named("N"), Dim::Fixed(c), Dim::Fixed(side), Dim::Fixed(side)]);
        }
        let y = self.head.to_onnx(&mut g, "head", &x, size)?;
        let head_map = relu6(&mut g, &y);
        let x = g.node("GlobalAveragePool", &[&head_map], vec![], None);
        let features = g.node("Flatten", &[&x], vec![("axis", Attr::Int(1))], Some("features"));
        let w = g.weight("fc.weight", &self.fc_weight)?;
        let b = g.weight("fc.bias", &self.fc_bias)?;
        g.node("Gemm", &[&features, &w, &b], vec![("transB", Attr::Int(1))], Some("imagenet_logits"));
        g.output_f32("features", &[Dim::Named("N"), Dim::Fixed(self.config.head_channels as i64)]);
        g.output_f32("imagenet_logits", &[Dim::Named("N"), Dim::Fixed(self.config.num_classes as i64)]);
        if let Some((hw, hb)) = heads.catdog {
            let catdog_map = match heads.tuned_tail {
                Some(tail) => tail.to_onnx(&mut g, &trunk, &lo, &hi)?,
                None => head_map,
            };
            let pooled = g.node("GlobalAveragePool", &[&catdog_map], vec![], None);
            let catdog_features = g.node("Flatten", &[&pooled], vec![("axis", Attr::Int(1))], None);
            let hw = g.weight("catdog.weight", hw)?;
            let hb = g.weight("catdog.bias", hb)?;
            g.p_dog_head(&catdog_features, &hw, &hb);
            g.logit_map_output(&catdog_map, &hw, &hb, self.config.head_channels, size);
            // The embedding comes from the pretrained features, not the tuned branch: they
            // describe any photo (a flood of non-pet images moves them), not only cat/dog cues.
            g.embedding_output(&features, self.config.head_channels);
        }
        Ok(g.finish(metadata))
    }
}

/// What an ONNX export adds to the backbone's `features` and `imagenet_logits` outputs.
#[derive(Debug, Default, Clone, Copy)]
pub struct OnnxHeads<'a> {
    /// The cat/dog logistic head (`weight` [1, 1280], `bias` [1]) -> output `p_dog` [N].
    pub catdog: Option<(&'a Tensor, &'a Tensor)>,
    /// A fine-tuned copy of the last block and the head convolution whose pooled output
    /// feeds `catdog`. The ImageNet branch keeps the pretrained layers, so the "neither"
    /// score does not drift with the tuning.
    pub tuned_tail: Option<&'a Tail>,
    /// Also output `trunk` [N, 192, 7, 7], the last block's input, for caching.
    pub trunk: bool,
}

/// The layers that cat/dog training tunes, after the frozen trunk: the last MBConv block
/// (1x1 expansion, depthwise 3x3, 1x1 projection) and the 1x1 head convolution, BatchNorm
/// folded. Pointwise weights are matrices [in, out] so that, on activations laid out
/// [cells, channels], each layer is one matrix product; the depthwise weight is [9, channels].
#[derive(Debug, Clone)]
pub struct Tail {
    pub expand: (Tensor, Tensor),
    pub depthwise: (Tensor, Tensor),
    pub project: (Tensor, Tensor),
    pub head: (Tensor, Tensor),
}

/// Tensor names of a [`Tail`] in safetensors files.
pub const TAIL_NAMES: [&str; 4] = ["expand", "depthwise", "project", "head"];

impl Tail {
    fn layers(&self) -> [&(Tensor, Tensor); 4] {
        [&self.expand, &self.depthwise, &self.project, &self.head]
    }

    /// Pooled 1280-d features of trunk activations `x` [B, side*side, C] (any float dtype).
    pub fn pooled(&self, x: &Tensor) -> Result<Tensor> {
        self.cell_features(x)?.mean(1)
    }

    /// The cat/dog head `(weight [1, 1280], bias [1])` on each cell of the tail's output:
    /// [B, side*side] logits whose mean is the image's logit (the candle reference of the
    /// graph's `logit_map`).
    pub fn logit_map(&self, x: &Tensor, (w, bias): (&Tensor, &Tensor)) -> Result<Tensor> {
        let cells = self.cell_features(x)?;
        let (b, n, c) = cells.dims3()?;
        cells.reshape((b * n, c))?.matmul(&w.t()?)?.broadcast_add(bias)?.reshape((b, n))
    }

    /// The tail's 1280-d features of each cell before pooling, [B, side*side, 1280].
    pub fn cell_features(&self, x: &Tensor) -> Result<Tensor> {
        let (b, cells, c) = x.dims3()?;
        let side = (cells as f64).sqrt() as usize;
        if side * side != cells {
            candle_core::bail!("trunk activations must cover a square grid, got {cells} cells");
        }
        let pointwise = |x: &Tensor, (w, bias): &(Tensor, Tensor)| x.matmul(w)?.broadcast_add(bias);
        let y = relu6(&pointwise(&x.to_dtype(DType::F32)?.reshape((b * cells, c))?, &self.expand)?)?;
        let mid = y.dim(1)?;
        let y = crate::ops::depthwise3x3_nhwc(&y.reshape((b, side, side, mid))?, &self.depthwise.0)?;
        let y = relu6(&y.reshape((b * cells, mid))?.broadcast_add(&self.depthwise.1)?)?;
        let y = pointwise(&y, &self.project)?;
        let y = relu6(&pointwise(&y, &self.head)?)?;
        y.reshape((b, cells, ()))
    }

    /// The tail saved by [`Self::named`] under `prefix`, or `None` when `tensors` holds none
    /// of it (a model with a logistic head only).
    pub fn from_named(tensors: &std::collections::HashMap<String, Tensor>, prefix: &str) -> Result<Option<Self>> {
        if !tensors.keys().any(|k| k.starts_with(&format!("{prefix}."))) {
            return Ok(None);
        }
        let get = |name: &str, part: &str| {
            let key = format!("{prefix}.{name}.{part}");
            tensors.get(&key).cloned().ok_or_else(|| candle_core::Error::Msg(format!("tensor {key} is missing")))
        };
        let layer = |name: &str| Ok::<_, candle_core::Error>((get(name, "weight")?, get(name, "bias")?));
        let [expand, depthwise, project, head] = TAIL_NAMES;
        Ok(Some(Self {
            expand: layer(expand)?,
            depthwise: layer(depthwise)?,
            project: layer(project)?,
            head: layer(head)?,
        }))
    }

    /// The tensors by name (`{prefix}.expand.weight`, ...), for safetensors.
    pub fn named(&self, prefix: &str) -> Vec<(String, Tensor)> {
        TAIL_NAMES
            .iter()
            .zip(self.layers())
            .flat_map(|(name, (w, b))| {
                [(format!("{prefix}.{name}.weight"), w.clone()), (format!("{prefix}.{name}.bias"), b.clone())]
            })
            .collect()
    }

    /// Number of parameters.
    pub fn parameters(&self) -> usize {
        self.layers().iter().map(|(w, b)| w.elem_count() + b.elem_count()).sum()
    }

    /// Adds the tail to a graph on the trunk `x` (NCHW); returns its feature map before
    /// pooling [N, 1280, 7, 7].
    fn to_onnx(&self, g: &mut GraphBuilder, x: &str, lo: &str, hi: &str) -> std::result::Result<String, ExportError> {
        let conv = |g: &mut GraphBuilder, name: &str, x: &str, w: Tensor, b: &Tensor, attrs: Vec<(&str, Attr)>| {
            let w = g.weight(&format!("tuned_tail.{name}.weight"), &w)?;
            let b = g.weight(&format!("tuned_tail.{name}.bias"), b)?;
            Ok::<_, ExportError>(g.node("Conv", &[x, &w, &b], attrs, None))
        };
        let one = || vec![("kernel_shape", Attr::Ints(vec![1, 1]))];
        // Matrix [in, out] -> Conv weight [out, in, 1, 1].
        let onnx_weight = |w: &Tensor| -> Result<Tensor> {
            let (cin, cout) = w.dims2()?;
            w.t()?.contiguous()?.reshape((cout, cin, 1, 1))
        };
        let y = conv(g, "expand", x, onnx_weight(&self.expand.0)?, &self.expand.1, one())?;
        let y = g.node("Clip", &[&y, lo, hi], vec![], None);
        let mid = self.depthwise.0.dim(1)?;
        let dw = self.depthwise.0.t()?.contiguous()?.reshape((mid, 1, 3, 3))?;
        let attrs = vec![
            ("kernel_shape", Attr::Ints(vec![3, 3])),
            ("pads", Attr::Ints(vec![1, 1, 1, 1])),
            ("group", Attr::Int(mid as i64)),
        ];
        let y = conv(g, "depthwise", &y, dw, &self.depthwise.1, attrs)?;
        let y = g.node("Clip", &[&y, lo, hi], vec![], None);
        let y = conv(g, "project", &y, onnx_weight(&self.project.0)?, &self.project.1, one())?;
        let y = conv(g, "head", &y, onnx_weight(&self.head.0)?, &self.head.1, one())?;
        Ok(g.node("Clip", &[&y, lo, hi], vec![], None))
    }
}

impl Module for EfficientNetLite {
    /// ImageNet logits of a `u8` NHWC batch.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(self.forward_all(xs)?.1)
    }
}

/// Zero-shot P(dog) from ImageNet logits: dog-breed mass / (dog + cat mass), and the
/// cat-or-dog mass itself (low for images that show neither).
pub fn zero_shot(logits: &[f32]) -> (f32, f32) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let total: f32 = exp.iter().sum();
    let dogs: f32 = exp[IMAGENET_DOGS].iter().sum();
    let cats: f32 = exp[IMAGENET_CATS].iter().sum();
    let p_dog = if dogs + cats > 0.0 { dogs / (dogs + cats) } else { 0.5 };
    (p_dog, (dogs + cats) / total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf_same_padding() {
        assert_eq!(same_pads(224, 3, 2), (0, 1));
        assert_eq!(same_pads(56, 5, 2), (1, 2));
        assert_eq!(same_pads(14, 5, 1), (2, 2));
        assert_eq!(same_pads(7, 1, 1), (0, 0));
    }

    #[test]
    fn lite0_block_count() {
        assert_eq!(Config::lite0().stages.iter().map(|s| s.repeats).sum::<usize>(), 16);
    }
}
