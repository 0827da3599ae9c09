//! Training-time augmentation: its parameters are recorded in the model card, and the
//! random views it draws go through the same resize as serving.
use image::RgbImage;
use rand::Rng;

use crate::preprocess::{self, CropBox, PreprocessError};

/// Strength of the training-time augmentation.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Augment {
    /// Range of the crop's area as a fraction of the image.
    pub min_area: f64,
    /// Largest crop aspect-ratio change (e.g. 4/3).
    pub max_aspect: f64,
    /// Largest rotation in degrees (either way).
    pub max_rotation_deg: f64,
    /// Brightness, contrast and saturation factors vary in `1 +- jitter`.
    pub jitter: f64,
    /// Horizontal flip probability.
    pub flip: f64,
}

impl Default for Augment {
    fn default() -> Self {
        Self { min_area: 0.6, max_aspect: 4.0 / 3.0, max_rotation_deg: 12.0, jitter: 0.2, flip: 0.5 }
    }
}

impl Augment {
    /// A random view of `img` at `size x size`: crop -> resize (the shared filter) ->
    /// flip -> rotation -> colour jitter.
    pub fn apply(&self, img: &RgbImage, size: u32, rng: &mut impl Rng) -> Result<RgbImage, PreprocessError> {
        let (w, h) = (f64::from(img.width()), f64::from(img.height()));
        let area = rng.random_range(self.min_area..=1.0);
        let log_r = rng.random_range(-self.max_aspect.ln()..=self.max_aspect.ln());
        let aspect = log_r.exp();
        let cw = (w * (area * aspect).sqrt()).min(w);
        let ch = (h * (area / aspect).sqrt()).min(h);
        let crop = CropBox {
            left: rng.random_range(0.0..=(w - cw)),
            top: rng.random_range(0.0..=(h - ch)),
            width: cw,
            height: ch,
        };
        let mut out = preprocess::resize_rgb(img, Some(crop), size)?;
        if rng.random_bool(self.flip) {
            image::imageops::flip_horizontal_in_place(&mut out);
        }
        if self.max_rotation_deg > 0.0 {
            let deg = rng.random_range(-self.max_rotation_deg..=self.max_rotation_deg);
            out = rotate_edge_clamped(&out, deg.to_radians());
        }
        if self.jitter > 0.0 {
            let j = self.jitter;
            colour_jitter(
                &mut out,
                rng.random_range(1.0 - j..=1.0 + j),
                rng.random_range(1.0 - j..=1.0 + j),
                rng.random_range(1.0 - j..=1.0 + j),
            );
        }
        Ok(out)
    }
}

/// Rotation about the centre with bilinear sampling; outside pixels take the nearest edge.
fn rotate_edge_clamped(src: &RgbImage, angle: f64) -> RgbImage {
    let (w, h) = src.dimensions();
    let (cx, cy) = ((f64::from(w) - 1.0) / 2.0, (f64::from(h) - 1.0) / 2.0);
    let (s, c) = angle.sin_cos();
    let mut out = RgbImage::new(w, h);
    let (wm, hm) = (f64::from(w) - 1.0, f64::from(h) - 1.0);
    for (x, y, px) in out.enumerate_pixels_mut() {
        let (dx, dy) = (f64::from(x) - cx, f64::from(y) - cy);
        let sx = (c * dx + s * dy + cx).clamp(0.0, wm);
        let sy = (-s * dx + c * dy + cy).clamp(0.0, hm);
        let (x0, y0) = (sx.floor() as u32, sy.floor() as u32);
        let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
        let (fx, fy) = (sx - f64::from(x0), sy - f64::from(y0));
        for k in 0..3 {
            let p = |xx: u32, yy: u32| f64::from(src.get_pixel(xx, yy)[k]);
            let top = p(x0, y0) * (1.0 - fx) + p(x1, y0) * fx;
            let bottom = p(x0, y1) * (1.0 - fx) + p(x1, y1) * fx;
            px[k] = (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

fn colour_jitter(img: &mut RgbImage, brightness: f64, contrast: f64, saturation: f64) {
    let n = f64::from(img.width() * img.height()).max(1.0);
    let mean =
        img.pixels().map(|p| 0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2])).sum::<f64>()
            / n;
    for p in img.pixels_mut() {
        let grey = 0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2]);
        for k in 0..3 {
            let v = f64::from(p[k]) * brightness;
            let v = grey * brightness + (v - grey * brightness) * saturation;
            let v = mean * brightness + (v - mean * brightness) * contrast;
            p[k] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};

    #[test]
    fn augmentation_gives_requested_size_and_varies() {
        let img = RgbImage::from_fn(180, 120, |x, y| image::Rgb([x as u8, y as u8, (x ^ y) as u8]));
        let mut rng = StdRng::seed_from_u64(1);
        let a = Augment::default().apply(&img, 64, &mut rng).expect("augment");
        let b = Augment::default().apply(&img, 64, &mut rng).expect("augment");
        assert_eq!(a.dimensions(), (64, 64));
        assert_ne!(a, b);
    }
}
