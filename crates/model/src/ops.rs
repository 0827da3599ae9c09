//! CPU kernels candle lacks in a fast form, as candle custom ops with backward passes:
//! 3x3 "same" convolutions (im2col + GEMM), 2x2 max-pooling, a fused batch norm + ReLU and a
//! depthwise 3x3 convolution, all in NHWC layout.
//!
//! Measured on the 2-core Zen 4 machine, batch 32, layer 2 of the seed CNN (64x64x32):
//! building im2col from nine shifted views with `Tensor::cat` took 490 ms (candle's
//! strided `cat` copies element by element) and candle's `conv2d` 221 ms per forward;
//! these kernels do the im2col in a few ms, leaving the time to the GEMM.
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, D, Layout, Result, Shape, Tensor, bail};
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

/// Calls `f(tap, sy, sx)` for each in-bounds pixel of the 3x3 window centred on (y, x) in
/// an `h` x `w` image (zero padding 1), `tap = dy * 3 + dx`.
#[inline(always)]
fn window3x3(y: usize, x: usize, h: usize, w: usize, mut f: impl FnMut(usize, usize, usize)) {
    for dy in 0..3 {
        let Some(sy) = (y + dy).checked_sub(1).filter(|&s| s < h) else { continue };
        for dx in 0..3 {
            let Some(sx) = (x + dx).checked_sub(1).filter(|&s| s < w) else { continue };
            f(dy * 3 + dx, sy, sx);
        }
    }
}

/// A row-major view of a matrix inside a slice: element (r, c) at `r * rs + c * cs`, so
/// a transpose is just swapped strides.
#[derive(Clone, Copy)]
struct MatRef<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> MatRef<'a> {
    fn row_major(data: &'a [f32], cols: usize) -> Self {
        Self { data, rs: cols, cs: 1 }
    }

    fn transposed(self) -> Self {
        Self { rs: self.cs, cs: self.rs, ..self }
    }

    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// `dst (m x n, row-major) = [dst +] a (m x k) * b (k x n)` with the `gemm` crate's AVX-512
/// kernels; `parallel` splits the product over rayon's threads.
fn gemm_into(
    dst: &mut [f32],
    (m, n, k): (usize, usize, usize),
    a: MatRef,
    b: MatRef,
    accumulate: bool,
    parallel: bool,
) -> Result<()> {
    if dst.len() < m * n || !a.fits(m, k) || !b.fits(k, n) {
        bail!("gemm: operands do not match {m}x{k} * {k}x{n}");
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return Ok(());
    }
    let parallelism = if parallel { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    let s = |x: usize| x as isize;
    // SAFETY: the checks above keep every element gemm reads or writes inside the three
    // slices, and `dst` is a unique borrow, so it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            s(n),
            accumulate,
            a.data.as_ptr(),
            s(a.cs),
            s(a.rs),
            b.data.as_ptr(),
            s(b.cs),
            s(b.rs),
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

thread_local! {
    /// Per-thread im2col buffer, kept between calls: fresh multi-MiB allocations cost
    /// more in page faults than the copy itself on these VMs.
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer resized to `len`. The buffer is taken out
/// while `f` runs, so a nested call (rayon work stealing) gets a fresh one, never a panic.
fn with_scratch<T>(len: usize, f: impl FnOnce(&mut [f32]) -> Result<T>) -> Result<T> {
    let mut buf = SCRATCH.with(|s| s.take());
    buf.clear();
    buf.resize(len, 0.0);
    let out = f(&mut buf);
    SCRATCH.with(|s| s.set(buf));
    out
}

/// Runs `f(image, out_chunk, parallel_gemm)` over `out` cut into per-image chunks: images in
/// parallel when there are enough to keep every thread busy, else one after the other with
/// the GEMM itself parallel (batch-1 inference).
fn per_image(out: &mut [f32], per: usize, f: impl Fn(usize, &mut [f32], bool) -> Result<()> + Sync) -> Result<()> {
    if per == 0 {
        return Ok(());
    }
    if out.len() / per >= rayon::current_num_threads() {
        out.par_chunks_mut(per).enumerate().try_for_each(|(i, o)| f(i, o, false))
    } else {
        out.chunks_mut(per).enumerate().try_for_each(|(i, o)| f(i, o, true))
    }
}

/// im2col of one `(H, W, C)` image for a 3x3 kernel, zero padding 1: row `y * W + x`,
/// column `(dy * 3 + dx) * C + c`. `cols` must be zeroed where the window leaves the image.
fn im2col_image(src: &[f32], (h, w, c): (usize, usize, usize), cols: &mut [f32]) {
    for y in 0..h {
        for x in 0..w {
            let dst = &mut cols[(y * w + x) * 9 * c..][..9 * c];
            window3x3(y, x, h, w, |tap, sy, sx| {
                let s = (sy * w + sx) * c;
                dst[tap * c..(tap + 1) * c].copy_from_slice(&src[s..s + c]);
            });
        }
    }
}

/// Adjoint of [`im2col_image`]: adds each column block back onto the pixel it came from.
fn col2im_image(cols: &[f32], (h, w, c): (usize, usize, usize), dst: &mut [f32]) {
    for y in 0..h {
        for x in 0..w {
            let row = &cols[(y * w + x) * 9 * c..][..9 * c];
            window3x3(y, x, h, w, |tap, sy, sx| {
                let d = &mut dst[(sy * w + sx) * c..][..c];
                for (o, g) in d.iter_mut().zip(&row[tap * c..(tap + 1) * c]) {
                    *o += g;
                }
            });
        }
    }
}

/// 3x3 convolution, stride 1, zero padding 1, NHWC: `x` (B,H,W,C), `weight` (9*C, O) with
/// row `(dy*3+dx)*C + c`, `bias` (O,). Each image is one im2col + one GEMM into the output,
/// and the backward pass is two more GEMMs per image, all inside this op: through candle's
/// matmul, broadcast and reduction ops the same step spent 80 % of its time outside the
/// GEMM kernels (seed CNN training, batch 32, `examples/train_speed.rs`: 29.8 -> 53.5 img/s).
pub fn conv3x3_nhwc(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, Conv3x3)
}

struct Conv3x3;

/// Checks `weight` is `(9*C, O)` and returns it with `O`.
fn conv_weight<'a>(s: &'a CpuStorage, l: &Layout, c: usize, op: &str) -> Result<(&'a [f32], usize)> {
    let w = contiguous_f32(s, l, op)?;
    match l.dims() {
        &[k, o] if k == 9 * c => Ok((w, o)),
        d => bail!("{op}: weight must be (9*{c}, O), got {d:?}"),
    }
}

impl CustomOp3 for Conv3x3 {
    fn name(&self) -> &'static str {
        "conv3x3-nhwc"
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
        let src = contiguous_f32(s1, l1, self.name())?;
        let (b, h, w, c) = dims4(l1, self.name())?;
        let (wmat, o) = conv_weight(s2, l2, c, self.name())?;
        let bias = contiguous_f32(s3, l3, self.name())?;
        if bias.len() != o {
            bail!("{}: bias has {} values for {o} filters", self.name(), bias.len());
        }
        let hw = h * w;
        let mut out = vec![0f32; b * hw * o];
        per_image(&mut out, hw * o, |i, dst, parallel| {
            dst.chunks_mut(o).for_each(|row| row.copy_from_slice(bias));
            with_scratch(hw * 9 * c, |cols| {
                im2col_image(&src[i * hw * c..][..hw * c], (h, w, c), cols);
                gemm_into(
                    dst,
                    (hw, o, 9 * c),
                    MatRef::row_major(cols, 9 * c),
                    MatRef::row_major(wmat, o),
                    true,
                    parallel,
                )
            })
        })?;
        Ok((CpuStorage::F32(out), Shape::from((b, h, w, o))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (k, o) = weight.dims2()?;
        let flat = x.apply_op2_no_bwd(&grad, &Conv3x3ParamGrad)?;
        let grad_w = flat.narrow(0, 0, k * o)?.reshape((k, o))?;
        let grad_b = flat.narrow(0, k * o, o)?;
        // The network's input needs no gradient: skip the largest GEMM of the first layer.
        let grad_x = if x.track_op() { Some(grad.apply_op2_no_bwd(weight, &Conv3x3InputGrad)?) } else { None };
        Ok((grad_x, Some(grad_w), Some(grad_b)))
    }
}

/// `(x, grad)` -> `[grad_weight (9*C*O) | grad_bias (O)]`, flat: per-thread partial sums of
/// `im2col(x)^T * grad`, reduced at the end.
struct Conv3x3ParamGrad;

impl CustomOp2 for Conv3x3ParamGrad {
    fn name(&self) -> &'static str {
        "conv3x3-nhwc-param-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(s1, l1, self.name())?;
        let grad = contiguous_f32(s2, l2, self.name())?;
        let (b, h, w, c) = dims4(l1, self.name())?;
        let (gb, gh, gw, o) = dims4(l2, self.name())?;
        if (gb, gh, gw) != (b, h, w) {
            bail!("{}: gradient {:?} does not match input {:?}", self.name(), l2.dims(), l1.dims());
        }
        let (hw, k) = (h * w, 9 * c);
        let zero = || vec![0f32; k * o + o];
        let total = (0..b)
            .into_par_iter()
            .try_fold(zero, |mut acc, i| {
                let g = &grad[i * hw * o..][..hw * o];
                with_scratch(hw * k, |cols| {
                    im2col_image(&src[i * hw * c..][..hw * c], (h, w, c), cols);
                    let cols_t = MatRef::row_major(cols, k).transposed();
                    gemm_into(&mut acc[..k * o], (k, o, hw), cols_t, MatRef::row_major(g, o), true, false)
                })?;
                let gb = &mut acc[k * o..];
                for row in g.chunks(o) {
                    gb.iter_mut().zip(row).for_each(|(a, v)| *a += v);
                }
                Ok::<_, candle_core::Error>(acc)
            })
            .try_reduce(zero, |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                Ok(a)
            })?;
        Ok((CpuStorage::F32(total), Shape::from(k * o + o)))
    }
}

/// `(grad, weight)` -> `grad_x`: `col2im(grad * weight^T)` per image.
struct Conv3x3InputGrad;

impl CustomOp2 for Conv3x3InputGrad {
    fn name(&self) -> &'static str {
        "conv3x3-nhwc-input-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let grad = contiguous_f32(s1, l1, self.name())?;
        let (b, h, w, o) = dims4(l1, self.name())?;
        let k = match l2.dims() {
            &[k, wo] if wo == o && k % 9 == 0 => k,
            d => bail!("{}: weight {d:?} does not match {o} filters", self.name()),
        };
        let wmat = contiguous_f32(s2, l2, self.name())?;
        let (hw, c) = (h * w, k / 9);
        let mut out = vec![0f32; b * hw * c];
        per_image(&mut out, hw * c, |i, dst, parallel| {
            with_scratch(hw * k, |cols| {
                let g = MatRef::row_major(&grad[i * hw * o..][..hw * o], o);
                gemm_into(cols, (hw, k, o), g, MatRef::row_major(wmat, o).transposed(), false, parallel)?;
                col2im_image(cols, (h, w, c), dst);
                Ok(())
            })
        })?;
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
        // One chunk = two input rows, written only by the pooled row above them. Each
        // window's four pixels are visited in order over whole channel rows (vectorised),
        // `taken` marking channels whose maximum was already found.
        out.par_chunks_mut(2 * w * c).enumerate().for_each(|(chunk_idx, rows)| {
            let (bi, y) = (chunk_idx / h2, chunk_idx % h2);
            let mut taken = vec![false; c];
            for x in 0..w2 {
                let o = ((bi * h2 + y) * w2 + x) * c;
                let (m, g) = (&res[o..o + c], &grad[o..o + c]);
                taken.fill(false);
                for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                    let src = &arg[((bi * h + 2 * y + dy) * w + 2 * x + dx) * c..][..c];
                    let dst = &mut rows[(dy * w + 2 * x + dx) * c..][..c];
                    for k in 0..c {
                        let hit = !taken[k] && src[k] == m[k];
                        dst[k] = if hit { g[k] } else { 0.0 };
                        taken[k] |= hit;
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, h, w, c))))
    }
}

/// Per-channel mean and biased variance of a contiguous `(M, C)` tensor, as a `(2, C)`
/// tensor (row 0 the means, row 1 the variances). Accumulated in f64 over row blocks in
/// parallel; no gradient (the batch-norm op below differentiates through the statistics).
struct ChannelStats;

/// Rows per parallel block of the batch-norm kernels.
const BN_BLOCK_ROWS: usize = 2048;

impl CustomOp1 for ChannelStats {
    fn name(&self) -> &'static str {
        "channel-stats"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(storage, layout, self.name())?;
        let (m, c) = rows_channels(layout, self.name())?;
        let (sum, sumsq) = src
            .par_chunks(BN_BLOCK_ROWS * c)
            .map(|block| {
                // f32 within a block (vectorised), f64 across blocks.
                let (mut s, mut q) = (vec![0f32; c], vec![0f32; c]);
                for row in block.chunks_exact(c) {
                    for ((s, q), &v) in s.iter_mut().zip(q.iter_mut()).zip(row) {
                        *s += v;
                        *q += v * v;
                    }
                }
                (to_f64(&s), to_f64(&q))
            })
            .reduce(|| (vec![0f64; c], vec![0f64; c]), add_pairs);
        let n = m.max(1) as f64;
        let mut out = Vec::with_capacity(2 * c);
        out.extend(sum.iter().map(|s| (s / n) as f32));
        out.extend(sum.iter().zip(&sumsq).map(|(s, q)| ((q / n - (s / n) * (s / n)).max(0.0)) as f32));
        Ok((CpuStorage::F32(out), Shape::from((2, c))))
    }
}

fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

fn add_pairs((mut s1, mut q1): (Vec<f64>, Vec<f64>), (s2, q2): (Vec<f64>, Vec<f64>)) -> (Vec<f64>, Vec<f64>) {
    s1.iter_mut().zip(&s2).for_each(|(a, b)| *a += b);
    q1.iter_mut().zip(&q2).for_each(|(a, b)| *a += b);
    (s1, q1)
}

/// `(rows, channels)` of a tensor whose last axis holds the channels (NHWC or `(M, C)`).
fn rows_channels(layout: &Layout, op: &str) -> Result<(usize, usize)> {
    match layout.dims().last() {
        Some(&c) if c > 0 => Ok((layout.shape().elem_count() / c, c)),
        _ => bail!("{op}: expected channels on the last axis, got {:?}", layout.dims()),
    }
}

/// Training-time batch normalisation followed by ReLU over the channels (last axis) of a
/// tensor (NHWC, or `(M, C)`), with batch statistics; returns the output and the batch's mean and
/// biased variance (for the running statistics).
///
/// One fused kernel forward and one backward instead of candle's dozen broadcast passes:
/// on layer 1 of the seed CNN (batch 32, 524,288 x 32) those passes took most of a
/// training step.
pub fn batch_norm_relu_train(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
    let x = x.contiguous()?;
    let stats = x.detach().apply_op1_no_bwd(&ChannelStats)?;
    let mean = stats.get(0)?;
    let var = stats.get(1)?;
    let mean_v = mean.to_vec1::<f32>()?;
    let inv_std: Vec<f32> = var.to_vec1::<f32>()?.iter().map(|v| (1.0 / (f64::from(*v) + eps).sqrt()) as f32).collect();
    let y = x.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, BnRelu { mean: mean_v, inv_std })?;
    Ok((y, mean, var))
}

/// Forward of [`batch_norm_relu_train`] for fixed batch statistics; differentiable in
/// the input, gamma and beta (the statistics' own dependence on the input included).
struct BnRelu {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
}

impl CustomOp3 for BnRelu {
    fn name(&self) -> &'static str {
        "batchnorm-relu"
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
        let x = contiguous_f32(s1, l1, self.name())?;
        let gamma = contiguous_f32(s2, l2, self.name())?;
        let beta = contiguous_f32(s3, l3, self.name())?;
        let (m, c) = rows_channels(l1, self.name())?;
        if gamma.len() != c || beta.len() != c || self.mean.len() != c {
            bail!("{}: {c} channels but {} / {} parameters", self.name(), gamma.len(), beta.len());
        }
        let scale: Vec<f32> = self.inv_std.iter().zip(gamma).map(|(s, g)| s * g).collect();
        let shift: Vec<f32> = beta.iter().zip(&self.mean).zip(&scale).map(|((b, mu), s)| b - mu * s).collect();
        let mut out = vec![0f32; m * c];
        out.par_chunks_mut(BN_BLOCK_ROWS * c).zip(x.par_chunks(BN_BLOCK_ROWS * c)).for_each(|(dst, src)| {
            let (scale, shift) = (&scale[..c], &shift[..c]);
            for (drow, srow) in dst.chunks_exact_mut(c).zip(src.chunks_exact(c)) {
                for k in 0..c {
                    drow[k] = (srow[k] * scale[k] + shift[k]).max(0.0);
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = x.dim(D::Minus1)?;
        let m = x.elem_count() / c.max(1);
        let bwd = BnReluBwd { mean: self.mean.clone(), inv_std: self.inv_std.clone(), gamma: gamma.to_vec1::<f32>()? };
        let packed = x.apply_op3_no_bwd(&res.contiguous()?, &grad_res.contiguous()?, &bwd)?;
        let dx = packed.narrow(0, 0, m * c)?.reshape(x.shape())?;
        let dgamma = packed.narrow(0, m * c, c)?;
        let dbeta = packed.narrow(0, m * c + c, c)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// Backward of [`BnRelu`]: `(x, y, dy)` -> `[dx (M*C) | dgamma (C) | dbeta (C)]`, flat.
struct BnReluBwd {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    gamma: Vec<f32>,
}

impl CustomOp3 for BnReluBwd {
    fn name(&self) -> &'static str {
        "batchnorm-relu-bwd"
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
        let x = contiguous_f32(s1, l1, self.name())?;
        let y = contiguous_f32(s2, l2, self.name())?;
        let dy = contiguous_f32(s3, l3, self.name())?;
        let (m, c) = rows_channels(l1, self.name())?;
        let block = BN_BLOCK_ROWS * c;
        // dbeta = sum(dz), dgamma = sum(dz * xhat), with dz = dy where the ReLU let it through.
        let (dbeta, dgamma) = x
            .par_chunks(block)
            .zip(y.par_chunks(block))
            .zip(dy.par_chunks(block))
            .map(|((xs, ys), gs)| {
                let (mut db, mut dg) = (vec![0f32; c], vec![0f32; c]);
                let (mean, inv_std) = (&self.mean[..c], &self.inv_std[..c]);
                for ((xr, yr), gr) in xs.chunks_exact(c).zip(ys.chunks_exact(c)).zip(gs.chunks_exact(c)) {
                    for k in 0..c {
                        let dz = if yr[k] > 0.0 { gr[k] } else { 0.0 };
                        db[k] += dz;
                        dg[k] += dz * (xr[k] - mean[k]) * inv_std[k];
                    }
                }
                (to_f64(&db), to_f64(&dg))
            })
            .reduce(|| (vec![0f64; c], vec![0f64; c]), add_pairs);
        let n = m.max(1) as f64;
        let coef: Vec<f32> = self.gamma.iter().zip(&self.inv_std).map(|(g, s)| g * s).collect();
        // dx = coef * (dz - mean(dz) - xhat * mean(dz * xhat)) = coef * dz + x * p + q.
        let p: Vec<f32> = (0..c).map(|k| -(coef[k] * self.inv_std[k]) * (dgamma[k] / n) as f32).collect();
        let q: Vec<f32> = (0..c).map(|k| -coef[k] * (dbeta[k] / n) as f32 - self.mean[k] * p[k]).collect();
        let mut out = vec![0f32; m * c + 2 * c];
        let (dx, tail) = out.split_at_mut(m * c);
        dx.par_chunks_mut(block).zip(x.par_chunks(block)).zip(y.par_chunks(block)).zip(dy.par_chunks(block)).for_each(
            |(((dst, xs), ys), gs)| {
                for (((drow, xr), yr), gr) in
                    dst.chunks_exact_mut(c).zip(xs.chunks_exact(c)).zip(ys.chunks_exact(c)).zip(gs.chunks_exact(c))
                {
                    let (coef, p, q) = (&coef[..c], &p[..c], &q[..c]);
                    for k in 0..c {
                        let dz = if yr[k] > 0.0 { gr[k] } else { 0.0 };
                        drow[k] = coef[k] * dz + xr[k] * p[k] + q[k];
                    }
                }
            },
        );
        for k in 0..c {
            tail[k] = dgamma[k] as f32;
            tail[c + k] = dbeta[k] as f32;
        }
        Ok((CpuStorage::F32(out), Shape::from(m * c + 2 * c)))
    }
}

/// Depthwise 3x3 convolution, stride 1, zero padding 1, NHWC: `x` (B,H,W,C) with
/// `weight` (9, C), tap `dy*3+dx`, no bias. Candle runs a grouped convolution one group
/// at a time (0.3 GFLOP/s); this kernel lets the last EfficientNet block be trained at 7x7.
pub fn depthwise3x3_nhwc(x: &Tensor, weight_9c: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&weight_9c.contiguous()?, Depthwise3x3 { rotate: false })
}

/// `rotate`: the kernel turned by 180 degrees (the input gradient's convolution).
struct Depthwise3x3 {
    rotate: bool,
}

/// `out[b,y,x,c] = sum over taps of src[b,y+dy-1,x+dx-1,c] * w[tap(dy,dx),c]`, where
/// `tap` maps the offsets to a row of `w` (identity forward, rotated for the input gradient).
fn depthwise_apply(src: &[f32], w: &[f32], (b, h, wd, c): (usize, usize, usize, usize), rotate: bool) -> Vec<f32> {
    let mut out = vec![0f32; b * h * wd * c];
    out.par_chunks_mut(wd * c).enumerate().for_each(|(row_idx, row)| {
        let (bi, y) = (row_idx / h, row_idx % h);
        for x in 0..wd {
            let dst = &mut row[x * c..(x + 1) * c];
            window3x3(y, x, h, wd, |tap, sy, sx| {
                let tap = if rotate { 8 - tap } else { tap };
                let s = ((bi * h + sy) * wd + sx) * c;
                let wt = &w[tap * c..(tap + 1) * c];
                for ((d, v), k) in dst.iter_mut().zip(&src[s..s + c]).zip(wt) {
                    *d += v * k;
                }
            });
        }
    });
    out
}

fn depthwise_weight<'a>(s: &'a CpuStorage, l: &Layout, c: usize, op: &str) -> Result<&'a [f32]> {
    let w = contiguous_f32(s, l, op)?;
    if l.dims() != [9, c] {
        bail!("{op}: weight must be (9, {c}), got {:?}", l.dims());
    }
    Ok(w)
}

impl CustomOp2 for Depthwise3x3 {
    fn name(&self) -> &'static str {
        if self.rotate { "depthwise3x3-nhwc-input-grad" } else { "depthwise3x3-nhwc" }
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(s1, l1, self.name())?;
        let dims = dims4(l1, self.name())?;
        let w = depthwise_weight(s2, l2, dims.3, self.name())?;
        Ok((CpuStorage::F32(depthwise_apply(src, w, dims, self.rotate)), Shape::from(dims)))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // The input gradient is the same convolution with the kernel rotated by 180 degrees.
        let grad_x = grad.apply_op2_no_bwd(w, &Depthwise3x3 { rotate: !self.rotate })?;
        let grad_w = x.apply_op2_no_bwd(&grad, &Depthwise3x3WeightGrad)?;
        Ok((Some(grad_x), Some(grad_w)))
    }
}

/// `grad_w[tap(dy,dx), c] = sum over b,y,x of x[b,y+dy-1,x+dx-1,c] * grad[b,y,x,c]`.
struct Depthwise3x3WeightGrad;

impl CustomOp2 for Depthwise3x3WeightGrad {
    fn name(&self) -> &'static str {
        "depthwise3x3-nhwc-weight-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(s1, l1, self.name())?;
        let grad = contiguous_f32(s2, l2, self.name())?;
        let (b, h, wd, c) = dims4(l1, self.name())?;
        if l2.dims() != l1.dims() {
            bail!("{}: gradient shape {:?} differs from the input's {:?}", self.name(), l2.dims(), l1.dims());
        }
        // One partial (9, C) sum per image, reduced afterwards: no shared writes.
        let partial = (0..b)
            .into_par_iter()
            .map(|bi| {
                let mut acc = vec![0f32; 9 * c];
                for y in 0..h {
                    for x in 0..wd {
                        let g = &grad[((bi * h + y) * wd + x) * c..][..c];
                        window3x3(y, x, h, wd, |tap, sy, sx| {
                            let s = &src[((bi * h + sy) * wd + sx) * c..][..c];
                            let a = &mut acc[tap * c..][..c];
                            for ((o, v), gv) in a.iter_mut().zip(s).zip(g) {
                                *o += v * gv;
                            }
                        });
                    }
                }
                acc
            })
            .reduce(
                || vec![0f32; 9 * c],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                    a
                },
            );
        Ok((CpuStorage::F32(partial), Shape::from((9, c))))
    }
}

#[cfg(test)]
mod depthwise_tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Forward and both gradients agree with candle's grouped `conv2d` (NCHW).
    #[test]
    fn depthwise_matches_candle_grouped_conv() -> Result<()> {
        let dev = Device::Cpu;
        let (b, h, w, c) = (2, 5, 4, 3);
        let x = Var::from_tensor(&crate::testing::randn(10, 0f32, 1f32, (b, h, w, c), &dev)?)?;
        let k = Var::from_tensor(&crate::testing::randn(11, 0f32, 1f32, (9, c), &dev)?)?;
        let target = crate::testing::randn(12, 0f32, 1f32, (b, h, w, c), &dev)?;
        let ours = depthwise3x3_nhwc(x.as_tensor(), k.as_tensor())?;
        let g1 = (&ours * &target)?.sum_all()?.backward()?;

        let x2 = Var::from_tensor(&x.as_tensor().permute((0, 3, 1, 2))?.contiguous()?)?;
        let k2 = Var::from_tensor(&k.as_tensor().t()?.reshape((c, 1, 3, 3))?.contiguous()?)?;
        let theirs = x2.as_tensor().conv2d(k2.as_tensor(), 1, 1, 1, c)?.permute((0, 2, 3, 1))?;
        let g2 = (&theirs * &target)?.sum_all()?.backward()?;

        let max_diff = |a: &Tensor, b: &Tensor| crate::testing::max_relative_diff(a, b, 1.0);
        assert!(max_diff(&ours, &theirs)? < 1e-5);
        let gx1 = g1.get(x.as_tensor()).expect("grad x");
        let gx2 = g2.get(x2.as_tensor()).expect("grad x").permute((0, 2, 3, 1))?;
        assert!(max_diff(gx1, &gx2)? < 1e-4);
        let gk1 = g1.get(k.as_tensor()).expect("grad w");
        let gk2 = g2.get(k2.as_tensor()).expect("grad w").reshape((c, 9))?.t()?;
        assert!(max_diff(gk1, &gk2)? < 1e-4);
        Ok(())
    }
}
