//! Seeded test inputs. Random tensors: candle's CPU generator cannot be seeded, so tests that
//! drew inputs with `Tensor::randn` compared different numbers on every run (and failed
//! about one run in ten); these draw from a seeded `StdRng` instead. Phone-size photos: the
//! shared photos upscaled into JPEGs of a phone photo's size (tests and the benchmark).
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

/// `small` upscaled to `w x h` (bilinear) with seeded noise of +-8 per channel, so that the
/// JPEG (quality 90, 4:2:0, libjpeg-turbo) has a phone photo's size: 12 MP from a 180 px
/// training photo gives about 2.2 MB.
pub fn upscaled_jpeg(small: &image::RgbImage, (w, h): (u32, u32), seed: u32) -> std::result::Result<Vec<u8>, String> {
    use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
    let mut big = image::RgbImage::new(w, h);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new().resize(small, &mut big, &options).map_err(|e| e.to_string())?;
    // xorshift32: cheap enough for 36 million values.
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    for v in big.iter_mut() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        *v = v.saturating_add((state % 17) as u8).saturating_sub(8);
    }
    let image = turbojpeg::Image {
        pixels: &big.as_raw()[..],
        width: w as usize,
        pitch: w as usize * 3,
        height: h as usize,
        format: turbojpeg::PixelFormat::RGB,
    };
    turbojpeg::compress(image, 90, turbojpeg::Subsamp::Sub2x2).map(|b| b.to_vec()).map_err(|e| e.to_string())
}
