//! Measures training throughput of the seed CNN on random data:
//! im2col NHWC convolutions (what the crate uses) vs candle's conv2d in NCHW.
use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use catsdogs_model::seed_cnn::{Config, SeedCnn};
use std::time::Instant;
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn candle_conv_logits(m: &SeedCnn, x: &Tensor) -> candle_core::Result<Tensor> {
    let mut x = (x.to_dtype(DType::F32)? * (1.0 / 255.0))?.permute((0, 3, 1, 2))?.contiguous()?;
    for c in &m.convs {
        let o = c.weight.dim(0)?;
        x = x.conv2d(&c.weight, 1, 1, 1, 1)?.broadcast_add(&c.bias.reshape((1, o, 1, 1))?)?.relu()?.max_pool2d(2)?;
    }
    let f = x.mean(3)?.mean(2)?;
    f.matmul(&m.fc_weight.t()?)?.broadcast_add(&m.fc_bias)?.squeeze(1)
}

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let bs = 32;
    let steps = 6;
    let x = Tensor::rand(0f32, 255.0, (bs, 128, 128, 3), &dev)?.to_dtype(DType::U8)?;
    let y = Tensor::rand(0f32, 1.0, bs, &dev)?.ge(0.5)?.to_dtype(DType::F32)?;
    let only = std::env::args().nth(1);
    for variant in ["im2col-nhwc", "candle-conv2d"] {
        if only.as_deref().is_some_and(|o| o != variant) {
            continue;
        }
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let m = SeedCnn::load(vb, &Config::default())?;
        let mut opt = candle_nn::AdamW::new_lr(varmap.all_vars(), 1e-3)?;
        let mut t_fwd = 0.0;
        let start = Instant::now();
        for i in 0..=steps {
            let t0 = Instant::now();
            let logits =
                if variant == "im2col-nhwc" { m.forward_logits(&x, true)? } else { candle_conv_logits(&m, &x)? };
            let loss = candle_nn::loss::binary_cross_entropy_with_logit(&logits, &y)?;
            let _ = loss.to_scalar::<f32>()?;
            if i > 0 {
                t_fwd += t0.elapsed().as_secs_f64();
            }
            opt.backward_step(&loss)?;
            if i == 0 { /* warm-up */ }
        }
        let total = start.elapsed().as_secs_f64();
        let t0 = Instant::now();
        for _ in 0..steps {
            let _ = if variant == "im2col-nhwc" { m.forward_logits(&x, false)? } else { candle_conv_logits(&m, &x)? };
        }
        let inf = t0.elapsed().as_secs_f64();
        println!(
            "{variant:>14}: train {:.1} img/s (fwd share {:.0}%), inference {:.1} img/s",
            (bs * (steps + 1)) as f64 / total,
            100.0 * t_fwd / total,
            (bs * steps) as f64 / inf
        );
    }
    Ok(())
}
