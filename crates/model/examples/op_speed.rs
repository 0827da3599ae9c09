//! Micro-benchmark of the candle operations the seed CNN is built from (NHWC layer 2,
//! batch 32): the figures behind the im2col custom op. `cargo run --release -p
//! catsdogs-model --example op_speed`
use candle_core::{DType, Device, Tensor};
use std::time::Instant;
fn t<F: FnMut() -> candle_core::Result<Tensor>>(name: &str, mut f: F) -> candle_core::Result<()> {
    let _ = f()?;
    let s = Instant::now();
    for _ in 0..3 {
        let _ = f()?;
    }
    println!("{name:>30}: {:.1} ms", s.elapsed().as_secs_f64() * 1000.0 / 3.0);
    Ok(())
}
fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::rand(0f32, 1.0, (32, 64, 64, 32), &dev)?;
    let w = Tensor::rand(0f32, 1.0, (64, 32, 3, 3), &dev)?;
    let b = Tensor::rand(0f32, 1.0, 64, &dev)?;
    let p = x.pad_with_zeros(1, 1, 1)?.pad_with_zeros(2, 1, 1)?;
    t("pad", || x.pad_with_zeros(1, 1, 1)?.pad_with_zeros(2, 1, 1))?;
    t("narrow+contig", || p.narrow(1, 1, 64)?.narrow(2, 1, 64)?.contiguous())?;
    let taps: Vec<Tensor> = (0..9).map(|i| p.narrow(1, i / 3, 64).unwrap().narrow(2, i % 3, 64).unwrap()).collect();
    t("cat9", || Tensor::cat(&taps, 3))?;
    let cols = Tensor::cat(&taps, 3)?.reshape((32 * 64 * 64, 288))?;
    let wm = w.permute((0, 2, 3, 1))?.reshape((64, 288))?.t()?;
    t("matmul (131k x 288 x 64)", || cols.matmul(&wm))?;
    let wmc = wm.contiguous()?;
    t("matmul contiguous w", || cols.matmul(&wmc))?;
    let y = cols.matmul(&wm)?.reshape((32, 64, 64, 64))?;
    t("bias add", || y.broadcast_add(&b))?;
    t("relu", || y.relu())?;
    t("maxpool reshape max", || y.reshape((32, 32, 2, 32, 2, 64))?.max(4)?.max(2))?;
    let yn = y.permute((0, 3, 1, 2))?.contiguous()?;
    t("maxpool2d nchw", || yn.max_pool2d(2))?;
    let xn = x.permute((0, 3, 1, 2))?.contiguous()?;
    t("conv2d nchw", || xn.conv2d(&w, 1, 1, 1, 1))?;
    let a = Tensor::rand(0f32, 1.0, (1024, 1024), &dev)?;
    t("matmul 1024^3", || a.matmul(&a))?;
    let _ = DType::F32;
    Ok(())
}
