//! Two CPU kernels candle lacks in a fast form, as candle custom ops with backward passes:
//! im2col for 3x3 "same" convolutions and 2x2 max-pooling, both in NHWC layout.
//!
//! Measured on the 2-core Zen 4 machine, batch 32, layer 2 of the seed CNN (64x64x32):
//! building im2col from nine shifted views with `Tensor::cat` took 490 ms (candle's
//! strided `cat` copies element by element) and candle's `conv2d` 221 ms per forward;
//! these kernels do the im2col in a few ms, leaving the time to the GEMM.
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = match storage {
        CpuStorage::F32(v) => v.as_slice(),
        _ => bail!("{op}: expected an f32 tensor"),
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{op}: input must be contiguous"),
    }
}

fn dims4(layout: &Layout, op: &str) -> Result<(usize, usize, usize, usize)> {
    match layout.dims() {
        &[b, h, w, c] => Ok((b, h, w, c)),
        d => bail!("{op}: expected a 4-d NHWC tensor, got {d:?}"),
    }
}

/// im2col for a 3x3 kernel, stride 1, zero padding 1: `(B,H,W,C)` -> `(B*H*W, 9*C)`,
/// column `(dy*3+dx)*C + c`.
pub struct Im2Col3x3;

impl CustomOp1 for Im2Col3x3 {
    fn name(&self) -> &'static str {
        "im2col3x3"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(storage, layout, self.name())?;
        let (b, h, w, c) = dims4(layout, self.name())?;
        let mut out = vec![0f32; b * h * w * 9 * c];
        out.par_chunks_mut(w * 9 * c).enumerate().for_each(|(row_idx, row)| {
            let (bi, y) = (row_idx / h, row_idx % h);
            for x in 0..w {
                let dst = &mut row[x * 9 * c..(x + 1) * 9 * c];
                for dy in 0..3 {
                    let sy = y as isize + dy as isize - 1;
                    if sy < 0 || sy >= h as isize {
                        continue;
                    }
                    for dx in 0..3 {
                        let sx = x as isize + dx as isize - 1;
                        if sx < 0 || sx >= w as isize {
                            continue;
                        }
                        let s = ((bi * h + sy as usize) * w + sx as usize) * c;
                        let t = (dy * 3 + dx) * c;
                        dst[t..t + c].copy_from_slice(&src[s..s + c]);
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b * h * w, 9 * c))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (b, h, w, c) = arg.dims4()?;
        let grad = grad_res.contiguous()?.reshape((b, h, w, 9 * c))?;
        Ok(Some(grad.apply_op1_no_bwd(&Col2Im3x3)?))
    }
}

/// Adjoint of [`Im2Col3x3`]: `(B,H,W,9*C)` -> `(B,H,W,C)`, summing each pixel's nine uses.
struct Col2Im3x3;

impl CustomOp1 for Col2Im3x3 {
    fn name(&self) -> &'static str {
        "col2im3x3"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(storage, layout, self.name())?;
        let (b, h, w, c9) = dims4(layout, self.name())?;
        let c = c9 / 9;
        let mut out = vec![0f32; b * h * w * c];
        out.par_chunks_mut(w * c).enumerate().for_each(|(row_idx, row)| {
            let (bi, sy) = (row_idx / h, row_idx % h);
            for sx in 0..w {
                let dst = &mut row[sx * c..(sx + 1) * c];
                // Pixel (sy, sx) was tap (dy, dx) of output pixel (sy + 1 - dy, sx + 1 - dx).
                for dy in 0..3 {
                    let y = sy as isize + 1 - dy as isize;
                    if y < 0 || y >= h as isize {
                        continue;
                    }
                    for dx in 0..3 {
                        let x = sx as isize + 1 - dx as isize;
                        if x < 0 || x >= w as isize {
                            continue;
                        }
                        let s = ((bi * h + y as usize) * w + x as usize) * c9 + (dy * 3 + dx) * c;
                        for (d, g) in dst.iter_mut().zip(&src[s..s + c]) {
                            *d += g;
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, h, w, c))))
    }
}

/// 2x2 max-pool, stride 2, NHWC; height and width must be even.
pub struct MaxPool2;

impl CustomOp1 for MaxPool2 {
    fn name(&self) -> &'static str {
        "maxpool2-nhwc"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(storage, layout, self.name())?;
        let (b, h, w, c) = dims4(layout, self.name())?;
        if h % 2 != 0 || w % 2 != 0 {
            bail!("{}: height and width must be even, got {h}x{w}", self.name());
        }
        let (h2, w2) = (h / 2, w / 2);
        let mut out = vec![0f32; b * h2 * w2 * c];
        out.par_chunks_mut(w2 * c).enumerate().for_each(|(row_idx, row)| {
            let (bi, y) = (row_idx / h2, row_idx % h2);
            for x in 0..w2 {
                let dst = &mut row[x * c..(x + 1) * c];
                let p = |dy: usize, dx: usize| ((bi * h + 2 * y + dy) * w + 2 * x + dx) * c;
                let (a, b_, c_, d) = (p(0, 0), p(0, 1), p(1, 0), p(1, 1));
                for (k, o) in dst.iter_mut().enumerate() {
                    *o = src[a + k].max(src[b_ + k]).max(src[c_ + k]).max(src[d + k]);
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, h2, w2, c))))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad_res.contiguous()?;
        Ok(Some(arg.apply_op3_no_bwd(res, &grad, &MaxPool2Bwd)?))
    }
}

/// Routes each pooled gradient to the first input of its window that held the maximum.
struct MaxPool2Bwd;

impl CustomOp3 for MaxPool2Bwd {
    fn name(&self) -> &'static str {
        "maxpool2-nhwc-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let arg = contiguous_f32(s1, l1, self.name())?;
        let res = contiguous_f32(s2, l2, self.name())?;
        let grad = contiguous_f32(s3, l3, self.name())?;
        let (b, h, w, c) = dims4(l1, self.name())?;
        let (h2, w2) = (h / 2, w / 2);
        let mut out = vec![0f32; b * h * w * c];
        // One chunk = two input rows, written only by the pooled row above them.
        out.par_chunks_mut(2 * w * c).enumerate().for_each(|(chunk_idx, rows)| {
            let (bi, y) = (chunk_idx / h2, chunk_idx % h2);
            for x in 0..w2 {
                let o = ((bi * h2 + y) * w2 + x) * c;
                for k in 0..c {
                    let m = res[o + k];
                    for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        let src = ((bi * h + 2 * y + dy) * w + 2 * x + dx) * c + k;
                        if arg[src] == m {
                            rows[(dy * w + 2 * x + dx) * c + k] = grad[o + k];
                            break;
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, h, w, c))))
    }
}
