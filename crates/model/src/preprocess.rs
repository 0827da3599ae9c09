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
    /// Decoding would allocate more than one image may (the per-image memory budget).
    #[error("decoding this image would take {bytes} bytes of memory, more than the limit of {limit}")]
    DecodeTooLarge { bytes: u64, limit: u64 },
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
            Self::TooManyPixels { .. } | Self::DecodeTooLarge { .. } => "image_too_large",
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

/// JPEG DCT scale denominators libjpeg-turbo decodes at, smallest image first.
const JPEG_SCALES: [u32; 4] = [8, 4, 2, 1];

/// What decoding a file will produce and cost, read from its headers before any pixel is
/// decoded: callers check and reserve memory with it ([`plan_decode`], then [`decode_planned`]).
#[derive(Debug, Clone, Copy)]
pub struct DecodePlan {
    format: ImageFormat,
    /// Size stored in the file.
    pub stored: (u32, u32),
    /// Size the decoder produces (after JPEG DCT scaling, before EXIF orientation).
    pub decoded: (u32, u32),
    /// JPEG DCT scale denominator (1, 2, 4 or 8); 1 for other formats.
    pub scale: u32,
    /// Bytes the decode allocates at its peak (decoder output plus the RGB conversion).
    pub bytes: u64,
    orientation: image::metadata::Orientation,
    /// Whether libjpeg-turbo decodes it (a JPEG in a colour space it converts to RGB);
    /// otherwise the `image` crate decodes it at full size.
    turbo: bool,
    /// Whether a full-size decode would stay under the pixel limit: the fallback when
    /// libjpeg-turbo refuses a file (or warns about it) that the `image` crate may read.
    full_size_allowed: bool,
    /// The pixel limit the plan was made under (bounds the decoders' allocations).
    max_pixels: u64,
}

impl DecodePlan {
    /// The stored size once EXIF orientation is applied, at full resolution (whatever the
    /// decode scale): the pixels a client sees its photo in.
    pub fn upright_size(&self) -> (u32, u32) {
        use image::metadata::Orientation::{Rotate90, Rotate90FlipH, Rotate270, Rotate270FlipH};
        let (w, h) = self.stored;
        match self.orientation {
            Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH => (h, w),
            _ => (w, h),
        }
    }

    /// Refuses a decode that would allocate more than `max_bytes`.
    pub fn within(self, max_bytes: u64) -> Result<Self, PreprocessError> {
        if self.bytes > max_bytes {
            return Err(PreprocessError::DecodeTooLarge { bytes: self.bytes, limit: max_bytes });
        }
        Ok(self)
    }
}

/// The shortest side a decode must keep for `config`'s geometry: the resize target when the
/// whole image is squashed, the short side before the centre crop otherwise. Decoding
/// smaller would upsample; decoding larger costs time: on 200 real photos upscaled to 12 MP
/// (`crates/core/tests/core/decode.rs`) decoding at twice this (1/4 instead of 1/8 for
/// EfficientNet) halved the mean change of P(dog) against a full decode (0.0011 instead of
/// 0.0021) but left as many photos beyond 0.02 (3 of 200, the same knife-edge photos), for
/// 22 % more decode time and 12 % fewer requests/s at 16 clients. Smaller photos are never
/// upsampled.
pub fn needed_short_side(config: &PreprocessConfig) -> u32 {
    if config.center_crop_from > 0 { config.center_crop_from } else { config.size }
}

/// Reads the headers of an image file and decides how it will be decoded: JPEGs at the
/// smallest DCT scale whose short side is still at least `min_short_side` (`u32::MAX`: full
/// size). The pixel limit applies to the decoded size, so a 12-megapixel photo decoded at
/// 1/8 costs 0.6 MB instead of 36 MB. Refuses empty, unknown, truncated, zero-size and
/// over-limit images.
pub fn plan_decode(bytes: &[u8], max_pixels: u64, min_short_side: u32) -> Result<DecodePlan, PreprocessError> {
    if bytes.is_empty() {
        return Err(PreprocessError::Empty);
    }
    let format = sniff_format(bytes).ok_or(PreprocessError::UnsupportedFormat)?;
    if format == ImageFormat::Jpeg && !jpeg_has_end(bytes) {
        // Decoders fill a cut-off scan with grey and report success: classifying half an
        // image would be a confident answer about something else.
        return Err(PreprocessError::Corrupt { format: "JPEG", reason: "no end-of-image marker (truncated)".into() });
    }
    let decoder = image_decoder(bytes, format, max_pixels)?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(PreprocessError::ZeroSize { width, height });
    }
    let native = decoder.total_bytes();
    let colour = decoder.color_type();
    let orientation = image_orientation(decoder);
    let pixels = |(w, h): (u32, u32)| u64::from(w) * u64::from(h);
    let full_size_allowed = pixels((width, height)) <= max_pixels;
    let mut plan = DecodePlan {
        format,
        stored: (width, height),
        decoded: (width, height),
        scale: 1,
        bytes: 0,
        orientation,
        turbo: false,
        full_size_allowed,
        max_pixels,
    };
    if format == ImageFormat::Jpeg && turbo_converts_to_rgb(bytes) {
        let scaled = |d: u32| (width.div_ceil(d), height.div_ceil(d));
        let scale = JPEG_SCALES.into_iter().find(|&d| scaled(d).0.min(scaled(d).1) >= min_short_side).unwrap_or(1);
        plan.turbo = true;
        plan.scale = scale;
        plan.decoded = scaled(scale);
        plan.bytes = pixels(plan.decoded) * 3;
    } else {
        // The decoder's own buffer, then the conversion: none for RGB8, an RGBA copy and
        // the RGB result with transparency, the RGB result otherwise.
        let wh = pixels(plan.decoded);
        plan.bytes = match colour {
            image::ColorType::Rgb8 => native,
            c if c.has_alpha() => native.saturating_add(wh.saturating_mul(4)).max(wh.saturating_mul(7)),
            _ => native.saturating_add(wh.saturating_mul(3)),
        };
    }
    if orientation != image::metadata::Orientation::NoTransforms {
        // Rotating or flipping writes a new image.
        plan.bytes = plan.bytes.saturating_add(pixels(plan.decoded).saturating_mul(3));
    }
    let (w, h) = plan.decoded;
    if pixels(plan.decoded) > max_pixels {
        return Err(PreprocessError::TooManyPixels { width: w, height: h, limit: max_pixels });
    }
    Ok(plan)
}

/// The `image` crate's decoder for `bytes`, with allocation limits.
fn image_decoder(
    bytes: &[u8],
    format: ImageFormat,
    max_pixels: u64,
) -> Result<Box<dyn image::ImageDecoder + '_>, PreprocessError> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    // Decoders may allocate a few buffers of the output size; 16 bytes a pixel covers RGBA16.
    limits.max_alloc = Some(max_pixels.saturating_mul(16).max(64 << 20));
    reader.limits(limits);
    let corrupt =
        |e: image::ImageError| PreprocessError::Corrupt { format: format_name(format), reason: e.to_string() };
    reader.into_decoder().map(|d| Box::new(d) as Box<dyn image::ImageDecoder + '_>).map_err(corrupt)
}

fn image_orientation(mut decoder: Box<dyn image::ImageDecoder + '_>) -> image::metadata::Orientation {
    decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms)
}

/// Whether libjpeg-turbo reads this JPEG's header and can convert its colour space to RGB
/// (CMYK and YCCK JPEGs go to the `image` crate, which converts them).
fn turbo_converts_to_rgb(bytes: &[u8]) -> bool {
    let Ok(mut d) = turbojpeg::Decompressor::new() else { return false };
    d.read_header(bytes)
        .is_ok_and(|h| !matches!(h.colorspace, turbojpeg::Colorspace::CMYK | turbojpeg::Colorspace::YCCK))
}

/// Decodes a planned file to upright RGB: first frame of animations, EXIF orientation
/// applied, grey/CMYK/16-bit converted, transparency composited over white.
pub fn decode_planned(bytes: &[u8], plan: &DecodePlan) -> Result<RgbImage, PreprocessError> {
    let img = if plan.turbo {
        match decode_turbo(bytes, plan.decoded) {
            Ok(rgb) => DynamicImage::ImageRgb8(rgb),
            // libjpeg-turbo also fails on files it only warns about (extraneous bytes, ...):
            // the `image` crate gets its chance at full size when the pixel limit allows it.
            Err(e) if !plan.full_size_allowed => return Err(e),
            Err(_) => decode_image(bytes, plan.format, plan.max_pixels)?,
        }
    } else {
        decode_image(bytes, plan.format, plan.max_pixels)?
    };
    let mut img = img;
    img.apply_orientation(plan.orientation);
    Ok(to_rgb_over_white(img))
}

/// libjpeg-turbo straight to RGB at `size` (the DCT scale that fits it).
fn decode_turbo(bytes: &[u8], (width, height): (u32, u32)) -> Result<RgbImage, PreprocessError> {
    let corrupt = |e: turbojpeg::Error| PreprocessError::Corrupt { format: "JPEG", reason: e.to_string() };
    let (w, h) = (width as usize, height as usize);
    let mut pixels = vec![0u8; w * h * 3];
    let out = turbojpeg::Image {
        pixels: &mut pixels[..],
        width: w,
        pitch: w * 3,
        height: h,
        format: turbojpeg::PixelFormat::RGB,
    };
    turbojpeg::Decompressor::new().map_err(corrupt)?.decompress(bytes, out).map_err(corrupt)?;
    RgbImage::from_raw(width, height, pixels).ok_or_else(|| PreprocessError::Corrupt {
        format: "JPEG",
        reason: "decoded buffer does not match the image size".into(),
    })
}

/// The `image` crate's decode at full size (PNG, GIF, WebP, BMP, CMYK JPEGs).
fn decode_image(bytes: &[u8], format: ImageFormat, max_pixels: u64) -> Result<DynamicImage, PreprocessError> {
    let corrupt =
        |e: image::ImageError| PreprocessError::Corrupt { format: format_name(format), reason: e.to_string() };
    let decoder = image_decoder(bytes, format, max_pixels)?;
    // A decoder bug must not take the caller down: the fuzzer found a progressive JPEG that
    // makes the JPEG decoder panic (fuzz/regressions/preprocess/jpeg-decoder-panic).
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| DynamicImage::from_decoder(decoder))) {
        Ok(r) => r.map_err(corrupt),
        Err(_) => Err(PreprocessError::Corrupt {
            format: format_name(format),
            reason: "the decoder failed on this file".into(),
        }),
    }
}

/// Decodes an image file to upright RGB at full size (see [`decode_planned`]).
pub fn decode_rgb(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, PreprocessError> {
    decode_rgb_at_least(bytes, max_pixels, u32::MAX)
}

/// Decodes an image file to upright RGB, JPEGs at the smallest DCT scale whose short side
/// is at least `min_short_side` (see [`plan_decode`]).
pub fn decode_rgb_at_least(bytes: &[u8], max_pixels: u64, min_short_side: u32) -> Result<RgbImage, PreprocessError> {
    decode_planned(bytes, &plan_decode(bytes, max_pixels, min_short_side)?)
}

/// Whether a JPEG's last scan is followed by the end-of-image marker. Inside entropy-coded
/// data every 0xFF is followed by 0x00 or a restart marker, so 0xFFD9 after the last 0xFFDA
/// (start of scan) can only be the real end (an EXIF thumbnail's markers come before).
fn jpeg_has_end(bytes: &[u8]) -> bool {
    // The last end-of-image marker sits at the very end of a whole file, and the first
    // start-of-scan in its header: searching from both ends reads a few bytes of a 3 MB
    // photo where a backward scan for the last start-of-scan read all of it (3 % of the
    // server's CPU on 12 MP uploads). Equivalent: "some SOS before the last EOI and none
    // after it" is "the last SOS comes before the last EOI".
    const SOS: &[u8] = &[0xFF, 0xDA];
    const EOI: &[u8] = &[0xFF, 0xD9];
    let Some(eoi) = memchr::memmem::rfind(bytes, EOI) else { return false };
    memchr::memmem::find(&bytes[..eoi], SOS).is_some() && memchr::memmem::find(&bytes[eoi..], SOS).is_none()
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

/// The full inference path: file bytes -> `size x size` RGB pixels, HWC `u8`, decoded at
/// the smallest scale the geometry allows.
pub fn preprocess(bytes: &[u8], config: &PreprocessConfig) -> Result<RgbImage, PreprocessError> {
    preprocess_pixels(&decode_rgb_at_least(bytes, config.max_pixels, needed_short_side(config))?, config)
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

#[cfg(test)]
mod tests {
    use super::jpeg_has_end;

    const SOI: [u8; 2] = [0xFF, 0xD8];
    const SOS: [u8; 2] = [0xFF, 0xDA];
    const EOI: [u8; 2] = [0xFF, 0xD9];

    fn file(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn the_end_marker_must_follow_the_last_scan() {
        let data: &[u8] = &[0x12, 0x34, 0x56];
        assert!(jpeg_has_end(&file(&[&SOI, &SOS, data, &EOI])));
        // Bytes after the end (some cameras append them) do not make a file truncated.
        assert!(jpeg_has_end(&file(&[&SOI, &SOS, data, &EOI, &[0, 0, 0]])));
        // A cut-off main scan after a complete EXIF thumbnail is still truncated.
        assert!(!jpeg_has_end(&file(&[&SOI, &SOI, &SOS, data, &EOI, &SOS, data])));
        assert!(jpeg_has_end(&file(&[&SOI, &SOI, &SOS, data, &EOI, &SOS, data, &EOI])));
        // No scan at all, or no end at all.
        assert!(!jpeg_has_end(&file(&[&SOI, data, &EOI])));
        assert!(!jpeg_has_end(&file(&[&SOI, &SOS, data])));
        assert!(!jpeg_has_end(&[]));
    }
}
