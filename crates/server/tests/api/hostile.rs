//! Hostile input, generated here (nothing downloaded): every case gets its documented
//! status with a JSON error (or a normal answer where the input is legitimate), memory
//! stays bounded, slow clients are cut off, and the next valid request still works.
use std::time::Duration;

use image::{ImageFormat, Rgb, RgbImage};
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};

use crate::helpers::{MAX_BATCH, MAX_UPLOAD, TOKEN, TestApp, encode, image_bytes, outcome};

/// A PNG whose header declares `w x h` pixels, with one tiny valid IDAT: a decompression
/// bomb's signature, refused before any pixel is decoded.
fn png_declaring(w: u32, h: u32) -> Vec<u8> {
    let mut png = image_bytes(ImageFormat::Png);
    // IHDR data starts at byte 16 (8 signature + 4 length + 4 type); its CRC follows the 13 bytes.
    png[16..20].copy_from_slice(&w.to_be_bytes());
    png[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn animated_gif() -> Vec<u8> {
    use image::codecs::gif::{GifEncoder, Repeat};
    let mut out = Vec::new();
    {
        let mut enc = GifEncoder::new(&mut out);
        enc.set_repeat(Repeat::Infinite).expect("repeat");
        for i in 0..3u8 {
            let frame = image::RgbaImage::from_pixel(40, 30, image::Rgba([i * 80, 100, 200, 255]));
            enc.encode_frame(image::Frame::new(frame)).expect("frame");
        }
    }
    out
}

/// One file in form field `field`.
async fn post_file(app: &TestApp, field: &str, name: &str, bytes: Vec<u8>) -> reqwest::Response {
    app.post_predict_form(Form::new().part(field.to_string(), Part::bytes(bytes).file_name(name.to_string()))).await
}

/// The service still answers a valid request.
async fn still_works(app: &TestApp) {
    let r = post_file(app, "file", "ok.png", image_bytes(ImageFormat::Png)).await;
    assert_eq!(r.status(), StatusCode::OK, "a valid request after hostile input");
}

/// The app with short request and header deadlines (2 s).
async fn app_with_short_deadlines() -> TestApp {
    TestApp::spawn_with(|cfg| {
        cfg.request_timeout = Duration::from_secs(2);
        cfg.header_read_timeout = Duration::from_secs(2);
    })
    .await
}

/// (what, form field, bytes, expected status, expected error code).
type UploadCase = (&'static str, &'static str, Vec<u8>, StatusCode, Option<&'static str>);

pub async fn hostile_uploads_get_their_documented_status() {
    let app = TestApp::spawn().await;
    let mut truncated_jpeg = image_bytes(ImageFormat::Jpeg);
    truncated_jpeg.truncate(truncated_jpeg.len() / 2);
    let mut truncated_png = image_bytes(ImageFormat::Png);
    truncated_png.truncate(truncated_png.len() / 2);
    let rgb16 = image::DynamicImage::ImageRgb16(image::ImageBuffer::from_fn(50, 40, |x, y| {
        image::Rgb([(x * 1000) as u16, (y * 1500) as u16, 40000])
    }));
    let cases: Vec<UploadCase> = vec![
        ("empty file", "file", Vec::new(), StatusCode::BAD_REQUEST, Some("empty_file")),
        ("wrong field name", "image", image_bytes(ImageFormat::Png), StatusCode::BAD_REQUEST, Some("missing_file")),
        (
            "text named .jpg",
            "file",
            b"just some text, not a photo".to_vec(),
            StatusCode::BAD_REQUEST,
            Some("unsupported_media_type"),
        ),
        ("truncated JPEG", "file", truncated_jpeg, StatusCode::UNPROCESSABLE_ENTITY, Some("corrupt_image")),
        ("truncated PNG", "file", truncated_png, StatusCode::UNPROCESSABLE_ENTITY, Some("corrupt_image")),
        (
            "PNG declaring 100000x100000",
            "file",
            png_declaring(100_000, 100_000),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("image_too_large"),
        ),
        (
            "1x1 image",
            "file",
            encode(RgbImage::from_pixel(1, 1, Rgb([9, 9, 9])).into(), ImageFormat::Png),
            StatusCode::OK,
            None,
        ),
        (
            "20000x1 image",
            "file",
            encode(RgbImage::from_pixel(20_000, 1, Rgb([9, 90, 9])).into(), ImageFormat::Png),
            StatusCode::OK,
            None,
        ),
        ("16-bit PNG", "file", encode(rgb16, ImageFormat::Png), StatusCode::OK, None),
        ("animated GIF", "file", animated_gif(), StatusCode::OK, None),
        (
            "over the size limit",
            "file",
            vec![0u8; MAX_UPLOAD + 1],
            StatusCode::PAYLOAD_TOO_LARGE,
            Some("payload_too_large"),
        ),
    ];
    for (what, field, bytes, status, code) in cases {
        let got = outcome(post_file(&app, field, &format!("{what}.jpg"), bytes).await).await;
        assert_eq!(got, (status, code.map(str::to_string)), "{what}");
    }
    still_works(&app).await;
    app.stop().await;
}

pub async fn odd_file_names_are_accepted() {
    let app = TestApp::spawn().await;
    // Invalid UTF-8 (percent-escaped by the client), very long, SQL-looking.
    for name in
        ["\u{fffd}\u{fffd}.png".to_string(), "x".repeat(10_000) + ".png", "'; DROP TABLE predictions; --.png".into()]
    {
        let r = post_file(&app, "file", &name, image_bytes(ImageFormat::Png)).await;
        assert_eq!(r.status(), StatusCode::OK, "name of {} chars", name.len());
    }
    app.stop().await;
}

pub async fn a_raw_invalid_utf8_file_name_is_answered_or_refused_with_400() {
    let app = TestApp::spawn().await;
    let mut body = b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"".to_vec();
    body.extend_from_slice(&[0xff, 0xfe, b'.', b'p', b'n', b'g']);
    body.extend_from_slice(b"\"\r\nContent-Type: image/png\r\n\r\n");
    body.extend_from_slice(&image_bytes(ImageFormat::Png));
    body.extend_from_slice(b"\r\n--B--\r\n");
    let r = app.post_predict_raw("multipart/form-data; boundary=B", body).await;
    assert!(r.status() == StatusCode::OK || r.status() == StatusCode::BAD_REQUEST, "{}", r.status());
    still_works(&app).await;
    app.stop().await;
}

pub async fn bodies_that_are_not_what_they_claim_are_refused() {
    let app = TestApp::spawn().await;
    for (ct, body, status) in [
        ("multipart/form-data; boundary=B", b"".to_vec(), StatusCode::BAD_REQUEST),
        ("multipart/form-data; boundary=B", b"--B\r\nnot a header\r\n\r\n".to_vec(), StatusCode::BAD_REQUEST),
        ("multipart/form-data", b"--B--".to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ("application/json", b"{\"file\": 1}".to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE),
    ] {
        let (got, _) = outcome(app.post_predict_raw(ct, body).await).await;
        assert_eq!(got, status, "{ct}");
    }
    still_works(&app).await;
    app.stop().await;
}

pub async fn thousands_of_ignored_fields_cost_nothing() {
    let app = TestApp::spawn().await;
    let form = (0..1500).fold(Form::new(), |f, i| f.text(format!("junk{i}"), "x"));
    let r = app.post_predict_form(form).await;
    assert_eq!(outcome(r).await, (StatusCode::BAD_REQUEST, Some("missing_file".into())));
    still_works(&app).await;
    app.stop().await;
}

pub async fn a_batch_of_far_too_many_files_is_refused_with_413() {
    let app = TestApp::spawn().await;
    let form = (0..(MAX_BATCH * 50)).fold(Form::new(), |f, i| {
        f.part("file", Part::bytes(image_bytes(ImageFormat::Png)).file_name(format!("{i}.png")))
    });
    // The server answers 413 at the first file over the limit and may close the connection
    // before the client has finished sending: a broken pipe is the same refusal.
    match app.try_post_batch_form(form).await {
        Ok(r) => assert_eq!(outcome(r).await.0, StatusCode::PAYLOAD_TOO_LARGE),
        Err(e) => assert!(e.is_request(), "unexpected client error: {e}"),
    }
    still_works(&app).await;
    app.stop().await;
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Alone in the process (the memory measured is the process').
pub async fn a_200_mib_upload_is_cut_at_the_limit_with_bounded_memory() {
    let app = TestApp::spawn_alone(|cfg| {
        cfg.request_timeout = Duration::from_secs(2);
        cfg.header_read_timeout = Duration::from_secs(2);
    })
    .await;
    let before = rss_kib();
    let status = raw_upload(app.addr(), 200 * 1024 * 1024, Duration::ZERO).await;
    assert!(status.is_none() || status == Some(413), "200 MiB upload answered {status:?}");
    let grown = rss_kib().saturating_sub(before);
    assert!(grown < 100 * 1024, "memory grew by {grown} KiB for a 200 MiB upload");
    still_works(&app).await;
    app.stop().await;
}

pub async fn a_stalled_upload_is_cut_by_the_request_deadline_with_408() {
    let app = app_with_short_deadlines().await;
    let started = std::time::Instant::now();
    let status = raw_upload(app.addr(), 1000, Duration::from_secs(30)).await;
    assert_eq!(status, Some(408), "stalled upload");
    assert!(started.elapsed() < Duration::from_secs(15));
    still_works(&app).await;
    app.stop().await;
}

/// Headers dribbled one byte every 200 ms are cut off by the header read timeout (2 s
/// here, 10 s by default), while twenty such clients do not stop others.
pub async fn slowloris_clients_are_cut_off_and_do_not_stop_others() {
    let app = app_with_short_deadlines().await;
    let slow: Vec<_> = (0..20).map(|_| tokio::spawn(slow_headers(app.addr()))).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    still_works(&app).await;
    for s in slow {
        let (sent, held) = s.await.expect("slow client");
        assert!(held < Duration::from_secs(6), "slow headers held the connection for {held:?} ({sent} bytes)");
        assert!(sent < 40, "the server read {sent} header bytes before cutting off");
    }
    still_works(&app).await;
    app.stop().await;
}

/// Sends request headers one byte every 200 ms, as slowloris does; returns how many
/// bytes went out and how long the server kept the connection open.
async fn slow_headers(addr: String) -> (usize, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = std::time::Instant::now();
    let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await else { return (0, Duration::ZERO) };
    let head = format!("GET /api/health HTTP/1.1\r\nHost: {addr}\r\nX-Padding: {}\r\n\r\n", "a".repeat(200));
    let mut sent = 0;
    for b in head.as_bytes() {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        sent += 1;
        // The server hangs up (or answers 408): reading then returns at once.
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(_)) | Ok(Err(_)) => break,
            Err(_) => {}
        }
        if started.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    (sent, started.elapsed())
}

/// Sends a multipart upload by hand over TCP: the headers announce `len` body bytes; with
/// `stall` zero it writes them all (1 MiB at a time, stopping when the server hangs up),
/// otherwise it writes the part's start and then waits up to `stall` for an answer.
/// Returns the status the server answered with, if any.
async fn raw_upload(addr: String, len: usize, stall: Duration) -> Option<u16> {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        // A hand-written request: the token goes in the raw header.
        let head = format!(
            "POST /api/predict HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: multipart/form-data; boundary=B\r\nContent-Length: {len}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).ok()?;
        let preamble = b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.bin\"\r\n\r\n";
        s.write_all(preamble).ok()?;
        if stall.is_zero() {
            let chunk = vec![0u8; 1024 * 1024];
            let mut sent = preamble.len();
            while sent < len {
                let n = chunk.len().min(len - sent);
                if s.write_all(&chunk[..n]).is_err() {
                    break; // the server answered and closed: the refusal we expect
                }
                sent += n;
            }
        }
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).ok()?;
        let line = String::from_utf8_lossy(&buf[..n]).to_string();
        line.split_whitespace().nth(1).and_then(|c| c.parse().ok())
    })
    .await
    .ok()
    .flatten()
}
