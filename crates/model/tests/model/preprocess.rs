//! The shared preprocessing path: every format and orientation decodes, every bad input
//! is a typed error (never a panic), and every consumer gets the same pixels.
use std::io::Cursor;

use catsdogs_model::preprocess::{self, PreprocessConfig, PreprocessError, decode_rgb, preprocess};
use image::{DynamicImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};

const LIMIT: u64 = 40_000_000;

/// A 48x32 test card: left half red, right half blue, a green top-left corner.
fn card() -> RgbImage {
    RgbImage::from_fn(48, 32, |x, y| {
        if x < 8 && y < 8 {
            Rgb([0, 255, 0])
        } else if x < 24 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    })
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

fn close(a: &Rgb<u8>, b: [u8; 3], tol: u8) -> bool {
    a.0.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= tol)
}

pub fn every_supported_format_decodes_to_rgb() {
    let img = DynamicImage::ImageRgb8(card());
    for format in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::Gif, ImageFormat::WebP, ImageFormat::Bmp] {
        let bytes = encode(&img, format);
        assert_eq!(preprocess::sniff_format(&bytes), Some(format));
        let rgb = decode_rgb(&bytes, LIMIT).unwrap_or_else(|e| panic!("{format:?}: {e}"));
        assert_eq!(rgb.dimensions(), (48, 32), "{format:?}");
        assert!(
            close(rgb.get_pixel(40, 20), [0, 0, 255], 40),
            "{format:?} right half is blue: {:?}",
            rgb.get_pixel(40, 20)
        );
        assert!(close(rgb.get_pixel(15, 20), [255, 0, 0], 40), "{format:?} left half is red");
    }
}

pub fn grey_sixteen_bit_and_alpha_become_rgb() {
    let grey = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(10, 10, image::Luma([77])));
    let rgb = decode_rgb(&encode(&grey, ImageFormat::Png), LIMIT).expect("grey");
    assert_eq!(rgb.get_pixel(3, 3).0, [77, 77, 77]);

    let deep = DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(10, 10, Rgb([65535u16, 0, 32896])));
    let rgb = decode_rgb(&encode(&deep, ImageFormat::Png), LIMIT).expect("16-bit");
    assert_eq!(rgb.get_pixel(0, 0).0, [255, 0, 128]);

    // Fully transparent pixels become white, opaque ones keep their colour.
    let rgba = RgbaImage::from_fn(10, 10, |x, _| if x < 5 { Rgba([10, 20, 30, 0]) } else { Rgba([10, 20, 30, 255]) });
    let rgb = decode_rgb(&encode(&DynamicImage::ImageRgba8(rgba), ImageFormat::Png), LIMIT).expect("alpha");
    assert_eq!(rgb.get_pixel(1, 1).0, [255, 255, 255]);
    assert_eq!(rgb.get_pixel(8, 1).0, [10, 20, 30]);
}

pub fn cmyk_jpeg_decodes_to_rgb() {
    // Pure cyan in CMYK (C=255, M=Y=K=0); the encoder writes the Adobe marker.
    let (w, h) = (16u16, 16u16);
    let data: Vec<u8> = (0..w as usize * h as usize).flat_map(|_| [255u8, 0, 0, 0]).collect();
    let mut bytes = Vec::new();
    jpeg_encoder::Encoder::new(&mut bytes, 95).encode(&data, w, h, jpeg_encoder::ColorType::Cmyk).expect("cmyk jpeg");
    let rgb = decode_rgb(&bytes, LIMIT).expect("CMYK decodes");
    assert_eq!(rgb.dimensions(), (16, 16));
    let p = rgb.get_pixel(8, 8);
    assert!(p[0] < 80 && p[1] > 170 && p[2] > 170, "cyan expected, got {p:?}");
}

pub fn animated_gif_uses_the_first_frame() {
    use image::codecs::gif::GifEncoder;
    use image::{Delay, Frame};
    let mut bytes = Vec::new();
    {
        let mut enc = GifEncoder::new(&mut bytes);
        for colour in [[255u8, 0, 0, 255], [0, 0, 255, 255]] {
            let frame =
                Frame::from_parts(RgbaImage::from_pixel(8, 8, Rgba(colour)), 0, 0, Delay::from_numer_denom_ms(100, 1));
            enc.encode_frame(frame).expect("frame");
        }
    }
    let rgb = decode_rgb(&bytes, LIMIT).expect("gif");
    assert!(close(rgb.get_pixel(4, 4), [255, 0, 0], 10), "first frame is red, got {:?}", rgb.get_pixel(4, 4));
}

use catsdogs_testkit::with_exif_orientation;

pub fn exif_orientation_is_applied() {
    let jpeg = encode(&DynamicImage::ImageRgb8(card()), ImageFormat::Jpeg);
    // 6 = rotate 90 degrees clockwise to display: 48x32 becomes 32x48 and the green
    // top-left corner moves to the top-right.
    let rgb = decode_rgb(&with_exif_orientation(&jpeg, 6), LIMIT).expect("exif jpeg");
    assert_eq!(rgb.dimensions(), (32, 48));
    assert!(close(rgb.get_pixel(28, 3), [0, 255, 0], 60), "corner moved: {:?}", rgb.get_pixel(28, 3));
    // 3 = rotate 180: the corner is bottom-right.
    let rgb = decode_rgb(&with_exif_orientation(&jpeg, 3), LIMIT).expect("exif jpeg");
    assert_eq!(rgb.dimensions(), (48, 32));
    assert!(close(rgb.get_pixel(44, 28), [0, 255, 0], 60));
}

fn png_with_declared_size(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = encode(&DynamicImage::ImageRgb8(RgbImage::new(1, 1)), ImageFormat::Png);
    // IHDR data starts at byte 16 (8 signature + 4 length + 4 type); CRC covers type+data.
    bytes[16..20].copy_from_slice(&width.to_be_bytes());
    bytes[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32fast::hash(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

pub fn bad_inputs_are_typed_errors() {
    assert_eq!(decode_rgb(&[], LIMIT), Err(PreprocessError::Empty));
    assert_eq!(decode_rgb(b"hello, I am a text file named cat.jpg", LIMIT), Err(PreprocessError::UnsupportedFormat));
    // A TIFF header: an image format, but not one we accept.
    let tiff = b"II*\x00\x08\x00\x00\x00rest of a tiff file";
    assert_eq!(decode_rgb(tiff, LIMIT), Err(PreprocessError::UnsupportedFormat));

    let bomb = png_with_declared_size(100_000, 100_000);
    assert!(matches!(
        decode_rgb(&bomb, LIMIT),
        Err(PreprocessError::TooManyPixels { width: 100_000, height: 100_000, .. })
    ));

    let zero = png_with_declared_size(0, 10);
    let err = decode_rgb(&zero, LIMIT).expect_err("0-width PNG");
    assert!(matches!(err, PreprocessError::ZeroSize { .. } | PreprocessError::Corrupt { .. }), "{err:?}");

    let jpeg = encode(&DynamicImage::ImageRgb8(card()), ImageFormat::Jpeg);
    let err = decode_rgb(&jpeg[..jpeg.len() / 2], LIMIT).expect_err("truncated JPEG");
    assert_eq!(err.code(), "corrupt_image", "{err:?}");
    // A smooth image cut mid-scan decodes "successfully" (grey fill) in the JPEG decoder:
    // the missing end-of-image marker must still make it an error.
    let smooth = RgbImage::from_fn(200, 150, |x, y| image::Rgb([x as u8, y as u8, 128]));
    let jpeg = encode(&DynamicImage::ImageRgb8(smooth), ImageFormat::Jpeg);
    for cut in [jpeg.len() * 3 / 5, jpeg.len() - 2] {
        let err = decode_rgb(&jpeg[..cut], LIMIT).expect_err("JPEG without its end");
        assert_eq!(err.code(), "corrupt_image", "cut at {cut}: {err:?}");
    }
    let mut trailing = jpeg.clone();
    trailing.extend_from_slice(&[0u8; 100]);
    assert!(decode_rgb(&trailing, LIMIT).is_ok(), "bytes after the end marker are tolerated");
    let png = encode(&DynamicImage::ImageRgb8(card()), ImageFormat::Png);
    let err = decode_rgb(&png[..png.len() - 20], LIMIT).expect_err("truncated PNG");
    assert_eq!(err.code(), "corrupt_image", "{err:?}");
}

pub fn no_prefix_or_bit_flip_panics() {
    let config = PreprocessConfig::default();
    for format in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::Gif, ImageFormat::WebP, ImageFormat::Bmp] {
        let bytes = encode(&DynamicImage::ImageRgb8(card()), format);
        for cut in (0..bytes.len()).step_by(7) {
            let _ = preprocess(&bytes[..cut], &config);
        }
        for i in (0..bytes.len()).step_by(5) {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x5a;
            let _ = preprocess(&flipped, &config);
        }
    }
}

pub fn any_shape_becomes_the_model_input_size() {
    let config = PreprocessConfig::default();
    for (w, h) in [(1, 1), (2000, 1), (1, 3000), (640, 480), (128, 128)] {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(w, h, Rgb([9, 99, 199])));
        let out = preprocess(&encode(&img, ImageFormat::Png), &config).expect("resize");
        assert_eq!(out.dimensions(), (128, 128));
        assert_eq!(out.get_pixel(64, 64).0, [9, 99, 199], "{w}x{h} keeps a flat colour");
    }
}

pub fn fuzz_corpus_and_regressions_replay_without_panics() {
    let config = PreprocessConfig { size: 32, max_pixels: 1 << 20, center_crop_from: 0 };
    let corpus = fuzz_inputs("preprocess", "corpus");
    assert!(corpus.len() >= 10, "seed corpus missing: {} files", corpus.len());
    for (path, bytes) in &corpus {
        // The seed corpus is valid images of every format, plus one text file.
        let is_text = path.extension().is_some_and(|x| x == "txt");
        match preprocess(bytes, &config) {
            Ok(img) => assert!(!is_text && img.dimensions() == (32, 32), "{}", path.display()),
            Err(e) => assert!(is_text, "{}: {e}", path.display()),
        }
    }
    // Inputs that once crashed the fuzzer: any typed answer will do, a panic fails.
    for (path, bytes) in fuzz_inputs("preprocess", "regressions") {
        if let Err(e) = preprocess(&bytes, &config) {
            assert!(!e.code().is_empty(), "{}", path.display());
        }
    }
}

/// Files of a fuzz target's seed corpus and regressions (`fuzz/`).
fn fuzz_inputs(target: &str, kind: &str) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let dir = catsdogs_testkit::repo().join("fuzz").join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_none_or(|x| x != "md"))
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read fuzz input");
            (p, bytes)
        })
        .collect()
}

/// A `w x h` photo-like JPEG (smooth gradients plus a little noise), quality 90.
fn photo_jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| {
        let n = ((x.wrapping_mul(2654435761) ^ y.wrapping_mul(40503)) >> 7) as u8 % 9;
        Rgb([(x * 255 / w) as u8 ^ n, (y * 255 / h) as u8, ((x + y) % 256) as u8])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(&img).expect("encode");
    out
}

/// JPEGs decode at the smallest DCT scale that keeps the short side the geometry needs;
/// the pixel limit and the memory figure apply to that decoded size.
pub fn jpegs_decode_at_the_smallest_scale_the_geometry_allows() {
    let jpeg = photo_jpeg(2400, 1800);
    let effnet = PreprocessConfig { size: 224, center_crop_from: 256, ..PreprocessConfig::default() };
    let plan = preprocess::plan_decode(&jpeg, LIMIT, preprocess::needed_short_side(&effnet)).expect("plan");
    // The 256 px the crop needs: 1800 / 4 = 450 >= 256, 1800 / 8 = 225 < 256.
    assert_eq!((plan.scale, plan.decoded, plan.bytes), (4, (600, 450), 600 * 450 * 3));
    let seed = PreprocessConfig { size: 128, ..PreprocessConfig::default() };
    let plan = preprocess::plan_decode(&jpeg, LIMIT, preprocess::needed_short_side(&seed)).expect("plan");
    // The 128 px of the squash: 1800 / 8 = 225 >= 128.
    assert_eq!((plan.scale, plan.decoded), (8, (300, 225)));
    let rgb = preprocess::decode_planned(&jpeg, &plan).expect("decode");
    assert_eq!(rgb.dimensions(), (300, 225));
    assert_eq!(preprocess::plan_decode(&jpeg, LIMIT, 451).expect("plan").scale, 2);
    // Full size when asked, and a small JPEG is never upsampled.
    assert_eq!(preprocess::plan_decode(&jpeg, LIMIT, u32::MAX).expect("plan").decoded, (2400, 1800));
    let small = photo_jpeg(180, 180);
    assert_eq!(preprocess::plan_decode(&small, LIMIT, 128).expect("plan").scale, 1);
    // 4.3 Mpx stored, 270 kpx decoded: allowed under a 1 Mpx limit at 1/4, refused at full size.
    assert!(preprocess::plan_decode(&jpeg, 1_000_000, 256).is_ok());
    let err = preprocess::plan_decode(&jpeg, 1_000_000, u32::MAX).expect_err("full size over the limit");
    assert_eq!(err.code(), "image_too_large");
    // The scaled decode is the full decode, averaged: the model input barely differs.
    let full = preprocess::preprocess_pixels(&decode_rgb(&jpeg, LIMIT).expect("full"), &effnet).expect("resize");
    let scaled = preprocess(&jpeg, &effnet).expect("scaled");
    let diff: f64 = full.as_raw().iter().zip(scaled.as_raw()).map(|(a, b)| f64::from(a.abs_diff(*b))).sum::<f64>()
        / full.as_raw().len() as f64;
    assert!(diff < 4.0, "mean absolute difference {diff}");
}

/// What a decode allocates is known before decoding: a 16-bit RGBA PNG declaring
/// 6324 x 6324 pixels (40 Mpx, 320 MB decoded) is refused by the per-image memory limit
/// before any pixel is read.
pub fn a_decode_over_the_memory_limit_is_refused_before_decoding() {
    let deep = DynamicImage::ImageRgba16(image::ImageBuffer::from_pixel(8, 8, Rgba([1u16, 2, 3, 65535])));
    let mut png = encode(&deep, ImageFormat::Png);
    png[16..20].copy_from_slice(&6324u32.to_be_bytes());
    png[20..24].copy_from_slice(&6324u32.to_be_bytes());
    let crc = crc32fast::hash(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    let plan = preprocess::plan_decode(&png, LIMIT, 128).expect("headers only");
    assert!(plan.bytes >= 6324 * 6324 * 8, "{}", plan.bytes);
    let err = plan.within(128 << 20).expect_err("over 128 MiB");
    assert!(matches!(err, PreprocessError::DecodeTooLarge { .. }) && err.code() == "image_too_large", "{err:?}");
    // A PNG within the limit passes the same check.
    let ok = preprocess::plan_decode(&encode(&deep, ImageFormat::Png), LIMIT, 128).expect("plan");
    assert!(ok.within(128 << 20).is_ok());
}
