//! The one preprocessing path shared by training, evaluation, `predict` and the server:
//! bytes -> sniffed format -> decode (first frame) -> EXIF orientation -> RGB -> resize
//! with one filter -> `u8` RGB HWC pixels. Scaling/normalisation is part of each network,
//! so every consumer feeds the model the very same bytes.
use std::io::Cursor;

use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

/// The resize filter used everywhere (training, eval, serving).
pub const RESIZE_FILTER: &str = "bilinear (fast_image_resize convolution)";

fn resize_alg() -> ResizeAlg {
    ResizeAlg::Convolution(FilterType::Bilinear)
}

/// Why an input could not be turned into a model tensor.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PreprocessError {
    /// Zero bytes were given.
    #[error("the file is empty")]
    Empty,
    /// The bytes are not one of the supported image formats.
    #[error("not a supported image (JPEG, PNG, GIF, WebP or BMP expected)")]
    UnsupportedFormat,
    /// Declared dimensions exceed the pixel budget (decompression-bomb guard).
    #[error("image is {width}x{height} pixels, more than the limit of {limit} pixels")]
    TooManyPixels { width: u32, height: u32, limit: u64 },
    /// Declared dimensions are zero.
    #[error("image has no pixels ({width}x{height})")]
    ZeroSize { width: u32, height: u32 },
    /// The format was recognised but the data is corrupt or truncated.
    #[error("corrupt or truncated {format} image: {reason}")]
    Corrupt { format: &'static str, reason: String },
    /// Resizing failed (should not happen for valid sizes).
    #[error("resize failed: {0}")]
    Resize(String),
}

impl PreprocessError {
    /// A stable machine-readable code, used in API errors and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Empty => "empty_file",
            Self::UnsupportedFormat => "unsupported_media_type",
            Self::TooManyPixels { .. } => "image_too_large",
            Self::ZeroSize { .. } => "empty_image",
            Self::Corrupt { .. } => "corrupt_image",
            Self::Resize(_) => "resize_failed",
        }
    }
}

/// Limits and output size of preprocessing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PreprocessConfig {
    /// Side of the square model input, in pixels.
    pub size: u32,
    /// Largest accepted `width * height` before decoding (decompression-bomb guard).
    pub max_pixels: u64,
    /// 0: the whole image is squashed to `size x size`. Otherwise the central square that
    /// "resize the short side to `center_crop_from`, then centre-crop `size`" keeps, resized
    /// in one step (the ImageNet evaluation geometry).
    #[serde(default)]
    pub center_crop_from: u32,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self { size: 128, max_pixels: 40_000_000, center_crop_from: 0 }
    }
}

/// The formats we accept, recognised from content (never from a name or MIME type).
pub fn sniff_format(bytes: &[u8]) -> Option<ImageFormat> {
    let format = image::guess_format(bytes).ok()?;
    matches!(format, ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::Gif | ImageFormat::WebP | ImageFormat::Bmp)
        .then_some(format)
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::Gif => "GIF",
        ImageFormat::WebP => "WebP",
        ImageFormat::Bmp => "BMP",
        _ => "image",
    }
}

/// Decodes an image file to upright RGB: first frame of animations, EXIF orientation
/// applied, grey/CMYK/16-bit converted, transparency composited over white.
pub fn decode_rgb(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, PreprocessError> {
    if bytes.is_empty() {
        return Err(PreprocessError::Empty);
    }
    let format = sniff_format(bytes).ok_or(PreprocessError::UnsupportedFormat)?;
    let corrupt =
        |e: image::ImageError| PreprocessError::Corrupt { format: format_name(format), reason: e.to_string() };
    if format == ImageFormat::Jpeg && !jpeg_has_end(bytes) {
        // The JPEG decoder fills a cut-off scan with grey and reports success: classifying
        // half an image would be a confident answer about something else.
        return Err(PreprocessError::Corrupt { format: "JPEG", reason: "no end-of-image marker (truncated)".into() });
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    // Decoders may allocate a few buffers of the output size; 16 bytes a pixel covers RGBA16.
    limits.max_alloc = Some(max_pixels.saturating_mul(16).max(64 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(PreprocessError::ZeroSize { width, height });
    }
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(PreprocessError::TooManyPixels { width, height, limit: max_pixels });
    }
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    // A decoder bug must not take the caller down: the fuzzer found a progressive JPEG that
    // makes the JPEG decoder panic (fuzz/regressions/preprocess/jpeg-decoder-panic).
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| DynamicImage::from_decoder(decoder)));
    let mut img = match decoded {
        Ok(r) => r.map_err(corrupt)?,
        Err(_) => {
            return Err(PreprocessError::Corrupt {
                format: format_name(format),
                reason: "the decoder failed on this file".into(),
            });
        }
    };
    img.apply_orientation(orientation);
    Ok(to_rgb_over_white(img))
}

/// Whether a JPEG's last scan is followed by the end-of-image marker. Inside entropy-coded
/// data every 0xFF is followed by 0x00 or a restart marker, so 0xFFD9 after the last 0xFFDA
/// (start of scan) can only be the real end (an EXIF thumbnail's markers come before).
fn jpeg_has_end(bytes: &[u8]) -> bool {
    let find_last = |m: [u8; 2]| bytes.windows(2).rposition(|w| w == m);
    match (find_last([0xFF, 0xDA]), find_last([0xFF, 0xD9])) {
        (Some(sos), Some(eoi)) => eoi > sos,
        _ => false,
    }
}

fn to_rgb_over_white(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (dst, src) in out.pixels_mut().zip(rgba.pixels()) {
        let a = u16::from(src[3]);
        for k in 0..3 {
            dst[k] = ((u16::from(src[k]) * a + 255 * (255 - a) + 127) / 255) as u8;
        }
    }
    out
}

/// A crop rectangle in source pixels (fractional edges allowed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropBox {
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
}

/// Resizes (optionally a crop of) an RGB image to `size x size` with the shared filter.
/// The whole image is squashed, aspect ratio not kept: the training photos were squashed
/// the same way, so serving sees the geometry training saw.
pub fn resize_rgb(src: &RgbImage, crop: Option<CropBox>, size: u32) -> Result<RgbImage, PreprocessError> {
    let mut dst = RgbImage::new(size, size);
    let mut options = ResizeOptions::new().resize_alg(resize_alg());
    if let Some(c) = crop {
        options = options.crop(c.left, c.top, c.width, c.height);
    }
    Resizer::new().resize(src, &mut dst, &options).map_err(|e| PreprocessError::Resize(e.to_string()))?;
    Ok(dst)
}

/// Shrinks an image so its shorter side is at most `max_short_side`, keeping aspect ratio.
/// Used to bound the memory of training caches; images already small are returned as is.
pub fn bound_short_side(img: RgbImage, max_short_side: u32) -> Result<RgbImage, PreprocessError> {
    let (w, h) = img.dimensions();
    let short = w.min(h);
    if short <= max_short_side {
        return Ok(img);
    }
    let scale = f64::from(max_short_side) / f64::from(short);
    let (nw, nh) = (((f64::from(w) * scale).round() as u32).max(1), ((f64::from(h) * scale).round() as u32).max(1));
    let mut dst = RgbImage::new(nw, nh);
    Resizer::new()
        .resize(&img, &mut dst, &ResizeOptions::new().resize_alg(resize_alg()))
        .map_err(|e| PreprocessError::Resize(e.to_string()))?;
    Ok(dst)
}

/// The full inference path: file bytes -> `size x size` RGB pixels, HWC `u8`.
pub fn preprocess(bytes: &[u8], config: &PreprocessConfig) -> Result<RgbImage, PreprocessError> {
    preprocess_pixels(&decode_rgb(bytes, config.max_pixels)?, config)
}

/// The same path for images that arrive as pixels (tensor inputs of the inference
/// protocol): crop and resize exactly as for decoded files.
pub fn preprocess_pixels(rgb: &RgbImage, config: &PreprocessConfig) -> Result<RgbImage, PreprocessError> {
    resize_rgb(rgb, center_crop(rgb.width(), rgb.height(), config), config.size)
}

/// The crop `config` asks for on a `width x height` image (`None`: squash the whole image).
pub fn center_crop(width: u32, height: u32, config: &PreprocessConfig) -> Option<CropBox> {
    if config.center_crop_from == 0 {
        return None;
    }
    let short = f64::from(width.min(height));
    let side = (short * f64::from(config.size) / f64::from(config.center_crop_from)).min(short);
    Some(CropBox {
        left: (f64::from(width) - side) / 2.0,
        top: (f64::from(height) - side) / 2.0,
        width: side,
        height: side,
    })
}

#[cfg(test)]
mod crop_tests {
    use super::*;

    #[test]
    fn center_crop_keeps_the_central_square() {
        let cfg = PreprocessConfig { size: 224, center_crop_from: 256, ..PreprocessConfig::default() };
        let c = center_crop(400, 300, &cfg).expect("crop");
        assert!((c.width - 262.5).abs() < 1e-9 && (c.height - 262.5).abs() < 1e-9);
        assert!((c.left - 68.75).abs() < 1e-9 && (c.top - 18.75).abs() < 1e-9);
        assert!(center_crop(400, 300, &PreprocessConfig::default()).is_none());
    }
}
