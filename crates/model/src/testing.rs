//! Seeded random tensors for tests. candle's CPU generator cannot be seeded, so tests that
//! drew inputs with `Tensor::randn` compared different numbers on every run (and failed
//! about one run in ten); these draw from a seeded `StdRng` instead.
use candle_core::{Device, Result, Shape, Tensor};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// Normal samples of mean `mean` and standard deviation `std` (Box-Muller).
pub fn randn(seed: u64, mean: f32, std: f32, shape: impl Into<Shape>, dev: &Device) -> Result<Tensor> {
    let shape = shape.into();
    let mut rng = StdRng::seed_from_u64(seed);
    let values: Vec<f32> = (0..shape.elem_count())
        .map(|_| {
            let (u1, u2): (f32, f32) = (rng.random_range(f32::EPSILON..1.0), rng.random());
            mean + std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect();
    Tensor::from_vec(values, shape, dev)
}

/// Uniform samples in `[low, high)`.
pub fn rand(seed: u64, low: f32, high: f32, shape: impl Into<Shape>, dev: &Device) -> Result<Tensor> {
    let shape = shape.into();
    let mut rng = StdRng::seed_from_u64(seed);
    let values: Vec<f32> = (0..shape.elem_count()).map(|_| rng.random_range(low..high)).collect();
    Tensor::from_vec(values, shape, dev)
}

/// Largest `|a - b|` relative to the larger magnitude of `b` (at least `floor`), so that a
/// comparison means the same whatever the scale of the numbers compared.
pub fn max_relative_diff(a: &Tensor, b: &Tensor, floor: f32) -> Result<f32> {
    let diff = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?.max(floor);
    Ok(diff / scale)
}
