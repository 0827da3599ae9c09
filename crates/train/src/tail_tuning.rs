//! Tuning EfficientNet-Lite0's last layers for cats and dogs: the last MBConv block, the
//! 1x1 head convolution (BatchNorm folded) and the logistic cat/dog head are trained
//! together in candle on cached 7x7 activations of the frozen trunk (the last block's
//! input). At 7x7 the pointwise convolutions are matrix products and the depthwise one is
//! a small custom kernel, so back-propagating through them is cheap on a CPU, unlike the
//! blocks before them.
use candle_core::{D, Device, Tensor, Var};

use crate::optim::AdamW;
use crate::seed_cnn::smoothed_bce;
use catsdogs_model::efficientnet_lite::{TAIL_NAMES, Tail};
use catsdogs_model::metrics;

/// Trunk activations of a set of views: `x` [N, 49, C] (f16), labels 0 = cat, 1 = dog.
pub struct TrunkSet<'a> {
    pub x: &'a Tensor,
    pub labels: &'a [u8],
}

/// Hyper-parameters of the tuning run.
#[derive(Debug, Clone)]
pub struct TuneConfig {
    pub epochs: usize,
    /// Examples drawn (without replacement, from all views) per epoch; 0 = all of them.
    /// With several views per photo, one photo's worth per epoch keeps epochs short.
    pub samples_per_epoch: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub label_smoothing: f64,
    /// Dropout on the pooled 1280-d features during training.
    pub dropout: f32,
    pub seed: u64,
}

/// One epoch's figures, for the log and the card.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TuneEpoch {
    pub epoch: usize,
    pub train_loss: f64,
    pub val_log_loss: f64,
    pub val_accuracy: f64,
}

/// The tuned weights of the epoch with the lowest validation log loss.
pub struct TunedTail {
    pub tail: Tail,
    pub fc_weight: Tensor,
    pub fc_bias: Tensor,
    /// Uncalibrated validation logits of the kept epoch.
    pub val_logits: Vec<f32>,
    pub history: Vec<TuneEpoch>,
    pub best_epoch: usize,
}

/// The trainable tensors: the tail's eight and the classifier's two.
struct Params {
    tail: [(Var, Var); 4],
    fc_w: Var,
    fc_b: Var,
}

impl Params {
    fn new(tail: &Tail, fc: (&Tensor, &Tensor)) -> candle_core::Result<Self> {
        let var = |t: &Tensor| Var::from_tensor(&t.contiguous()?);
        let pair = |(w, b): &(Tensor, Tensor)| -> candle_core::Result<(Var, Var)> { Ok((var(w)?, var(b)?)) };
        Ok(Self {
            tail: [pair(&tail.expand)?, pair(&tail.depthwise)?, pair(&tail.project)?, pair(&tail.head)?],
            fc_w: var(fc.0)?,
            fc_b: var(fc.1)?,
        })
    }

    /// The tail over the current values (shares the variables' storage and gradients).
    fn tail(&self) -> Tail {
        let pair = |(w, b): &(Var, Var)| (w.as_tensor().clone(), b.as_tensor().clone());
        let [e, d, p, h] = &self.tail;
        Tail { expand: pair(e), depthwise: pair(d), project: pair(p), head: pair(h) }
    }

    fn named(&self) -> Vec<(String, Var)> {
        let mut out: Vec<(String, Var)> = TAIL_NAMES
            .iter()
            .zip(&self.tail)
            .flat_map(|(n, (w, b))| [(format!("tail.{n}.weight"), w.clone()), (format!("tail.{n}.bias"), b.clone())])
            .collect();
        out.push(("catdog.weight".into(), self.fc_w.clone()));
        out.push(("catdog.bias".into(), self.fc_b.clone()));
        out
    }

    /// Logits of a batch of trunk activations [B, 49, C] (any float dtype); `dropout` > 0
    /// drops pooled features (training).
    fn logits(&self, x: &Tensor, dropout: f32) -> candle_core::Result<Tensor> {
        let mut pooled = self.tail().pooled(x)?;
        if dropout > 0.0 {
            pooled = candle_nn::ops::dropout(&pooled, dropout)?;
        }
        pooled.matmul(&self.fc_w.as_tensor().t()?)?.squeeze(D::Minus1)?.broadcast_add(self.fc_b.as_tensor())
    }

    fn logits_all(&self, x: &Tensor) -> candle_core::Result<Vec<f32>> {
        let n = x.dim(0)?;
        let mut out = Vec::with_capacity(n);
        for start in (0..n).step_by(256) {
            let len = 256.min(n - start);
            out.extend(self.logits(&x.narrow(0, start, len)?, 0.0)?.detach().to_vec1::<f32>()?);
        }
        Ok(out)
    }

    /// Detached copies of the current values.
    fn snapshot(&self) -> candle_core::Result<(Tail, Tensor, Tensor)> {
        let copy = |(w, b): &(Var, Var)| -> candle_core::Result<(Tensor, Tensor)> {
            Ok((w.as_tensor().copy()?.detach(), b.as_tensor().copy()?.detach()))
        };
        let [e, d, p, h] = &self.tail;
        let tail = Tail { expand: copy(e)?, depthwise: copy(d)?, project: copy(p)?, head: copy(h)? };
        Ok((tail, self.fc_w.as_tensor().copy()?.detach(), self.fc_b.as_tensor().copy()?.detach()))
    }
}

/// Trains the tail from `init_tail` and the logistic head from `init_fc` ([1, 1280], [1])
/// with AdamW and a cosine schedule; keeps the epoch with the lowest validation log loss
/// (epoch 0 = the starting point, so tuning never makes it worse).
pub fn tune(
    train: &TrunkSet,
    val: &TrunkSet,
    init_tail: &Tail,
    init_fc: (&Tensor, &Tensor),
    cfg: &TuneConfig,
    progress: &indicatif::ProgressBar,
) -> candle_core::Result<TunedTail> {
    let dev = Device::Cpu;
    let p = Params::new(init_tail, init_fc)?;
    let mut opt = AdamW::new(p.named(), cfg.learning_rate, cfg.weight_decay)?;
    let evaluate = |p: &Params| -> candle_core::Result<(Vec<f32>, metrics::Metrics)> {
        let z = p.logits_all(val.x)?;
        let probs: Vec<f32> = z.iter().map(|&z| 1.0 / (1.0 + (-z).exp())).collect();
        let m = metrics::compute(&probs, val.labels);
        Ok((z, m))
    };
    let (z0, m0) = evaluate(&p)?;
    let mut history =
        vec![TuneEpoch { epoch: 0, train_loss: f64::NAN, val_log_loss: m0.log_loss, val_accuracy: m0.accuracy }];
    let mut best = (m0.log_loss, 0, p.snapshot()?, z0);

    let n = train.labels.len();
    let per_epoch = if cfg.samples_per_epoch == 0 { n } else { cfg.samples_per_epoch.min(n) };
    let y_all = Tensor::from_vec(train.labels.iter().map(|&l| f32::from(l)).collect::<Vec<_>>(), n, &dev)?;
    let total = per_epoch.div_ceil(cfg.batch_size) * cfg.epochs;
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(cfg.seed);
    let mut step = 0;
    progress.set_length(total as u64);
    for epoch in 1..=cfg.epochs {
        rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rng);
        let (mut loss_sum, mut batches) = (0.0, 0);
        for batch in order[..per_epoch].chunks(cfg.batch_size) {
            let idx = Tensor::from_slice(batch, batch.len(), &dev)?;
            let xb = train.x.index_select(&idx, 0)?;
            let yb = y_all.index_select(&idx, 0)?;
            let loss = smoothed_bce(&p.logits(&xb, cfg.dropout)?, &yb, cfg.label_smoothing)?;
            opt.lr = cfg.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total as f64).cos());
            opt.backward_step(&loss)?;
            loss_sum += f64::from(loss.to_scalar::<f32>()?);
            batches += 1;
            step += 1;
            progress.inc(1);
        }
        let (z, m) = evaluate(&p)?;
        let record = TuneEpoch {
            epoch,
            train_loss: loss_sum / f64::from(batches.max(1)),
            val_log_loss: m.log_loss,
            val_accuracy: m.accuracy,
        };
        tracing::info!(
            epoch,
            train_loss = record.train_loss,
            val_log_loss = m.log_loss,
            val_accuracy = m.accuracy,
            "tail tuning"
        );
        history.push(record);
        if m.log_loss < best.0 {
            best = (m.log_loss, epoch, p.snapshot()?, z);
        }
    }
    let (_, best_epoch, (tail, fc_weight, fc_bias), val_logits) = best;
    Ok(TunedTail { tail, fc_weight, fc_bias, val_logits, history, best_epoch })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    /// On separable synthetic activations, tuning from a useless head lowers the loss and
    /// keeps the better epoch.
    #[test]
    fn tuning_learns_a_separable_set() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let (n, cells, c, h) = (256, 4, 8, 16);
        let labels: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
        let noise = catsdogs_model::testing::rand(13, 0f32, 1f32, (n, cells, c), &dev)?;
        let signal: Vec<f32> = labels
            .iter()
            .flat_map(|&l| (0..cells * c).map(move |k| if k % c == 0 { f32::from(l) * 2.0 } else { 0.0 }))
            .collect();
        let x = (noise + Tensor::from_vec(signal, (n, cells, c), &dev)?)?.to_dtype(DType::F16)?;
        let set = TrunkSet { x: &x, labels: &labels };
        let mid = 12;
        let tail = Tail {
            expand: (
                catsdogs_model::testing::rand(14, -0.5f32, 0.5f32, (c, mid), &dev)?,
                Tensor::zeros(mid, DType::F32, &dev)?,
            ),
            depthwise: (
                catsdogs_model::testing::rand(15, 0f32, 0.3f32, (9, mid), &dev)?,
                Tensor::zeros(mid, DType::F32, &dev)?,
            ),
            project: (
                catsdogs_model::testing::rand(16, -0.5f32, 0.5f32, (mid, c), &dev)?,
                Tensor::zeros(c, DType::F32, &dev)?,
            ),
            head: (
                catsdogs_model::testing::rand(17, -0.5f32, 0.5f32, (c, h), &dev)?,
                Tensor::zeros(h, DType::F32, &dev)?,
            ),
        };
        let fc_w = Tensor::zeros((1, h), DType::F32, &dev)?;
        let fc_b = Tensor::zeros(1, DType::F32, &dev)?;
        let cfg = TuneConfig {
            epochs: 20,
            samples_per_epoch: 0,
            batch_size: 32,
            learning_rate: 1e-2,
            weight_decay: 0.0,
            label_smoothing: 0.0,
            dropout: 0.0,
            seed: 1,
        };
        let tuned = tune(&set, &set, &tail, (&fc_w, &fc_b), &cfg, &indicatif::ProgressBar::hidden())?;
        let first = tuned.history[0].val_log_loss;
        let best = tuned.history[tuned.best_epoch].val_log_loss;
        assert!(best < first * 0.5, "log loss {first} -> {best}");
        assert!(tuned.history[tuned.best_epoch].val_accuracy > 0.95);
        assert_eq!(tuned.tail.head.0.dims(), &[c, h]);
        Ok(())
    }
}
