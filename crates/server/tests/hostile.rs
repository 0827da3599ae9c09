//! Hostile input, generated here (nothing downloaded): every case gets its documented
//! status with a JSON error (or a normal answer where the input is legitimate), memory
//! stays bounded, and the next valid request still works. Plus the authentication matrix
//! over every protected route.
mod support;

use std::io::Cursor;
use std::time::Duration;

use image::{ImageFormat, Rgb, RgbImage};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{MAX_BATCH, MAX_UPLOAD, TOKEN, TestApp, client, image_bytes};

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

fn encode(img: image::DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

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

async fn post_file(app: &TestApp, field: &str, name: &str, bytes: Vec<u8>) -> reqwest::Response {
    let part = reqwest::multipart::Part::bytes(bytes).file_name(name.to_string());
    client()
        .post(app.url("/api/predict"))
        .header("Authorization", bearer())
        .multipart(reqwest::multipart::Form::new().part(field.to_string(), part))
        .send()
        .await
        .expect("send")
}

/// (what, form field, bytes, expected status, expected error code).
type UploadCase = (&'static str, &'static str, Vec<u8>, StatusCode, Option<&'static str>);

/// Status and error code (`None` for a success).
async fn outcome(r: reqwest::Response) -> (StatusCode, Option<String>) {
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return (status, None);
    }
    let code = body["error"]["code"].as_str().unwrap_or_else(|| panic!("{status} without a JSON error: {body}"));
    (status, Some(code.to_string()))
}

/// The service still answers a valid request.
async fn still_works(app: &TestApp) {
    let r = post_file(app, "file", "ok.png", image_bytes(ImageFormat::Png)).await;
    assert_eq!(r.status(), StatusCode::OK, "a valid request after hostile input");
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_uploads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("h.db").display());
    let app = TestApp::spawn_with(&db, dir.path().join("data"), None, |cfg| {
        cfg.request_timeout = Duration::from_secs(2);
        cfg.header_read_timeout = Duration::from_secs(2);
    })
    .await;

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
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
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

    // File names: invalid UTF-8 (percent-escaped by the client), very long, SQL-looking.
    for name in
        ["\u{fffd}\u{fffd}.png".to_string(), "x".repeat(10_000) + ".png", "'; DROP TABLE predictions; --.png".into()]
    {
        let r = post_file(&app, "file", &name, image_bytes(ImageFormat::Png)).await;
        assert_eq!(r.status(), StatusCode::OK, "name of {} chars", name.len());
    }
    let c = client();
    let raw_invalid_utf8 = {
        let mut body = b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"".to_vec();
        body.extend_from_slice(&[0xff, 0xfe, b'.', b'p', b'n', b'g']);
        body.extend_from_slice(b"\"\r\nContent-Type: image/png\r\n\r\n");
        body.extend_from_slice(&image_bytes(ImageFormat::Png));
        body.extend_from_slice(b"\r\n--B--\r\n");
        body
    };
    let r = c
        .post(app.url("/api/predict"))
        .header("Authorization", bearer())
        .header("Content-Type", "multipart/form-data; boundary=B")
        .body(raw_invalid_utf8)
        .send()
        .await
        .expect("send");
    assert!(r.status() == StatusCode::OK || r.status() == StatusCode::BAD_REQUEST, "{}", r.status());

    // Bodies that are not what they claim.
    for (ct, body, status) in [
        ("multipart/form-data; boundary=B", b"".to_vec(), StatusCode::BAD_REQUEST),
        ("multipart/form-data; boundary=B", b"--B\r\nnot a header\r\n\r\n".to_vec(), StatusCode::BAD_REQUEST),
        ("multipart/form-data", b"--B--".to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ("application/json", b"{\"file\": 1}".to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE),
    ] {
        let r = c.post(app.url("/api/predict")).header("Authorization", bearer()).header("Content-Type", ct);
        let (got, _) = outcome(r.body(body).send().await.expect("send")).await;
        assert_eq!(got, status, "{ct}");
    }

    // Thousands of parts: ignored fields cost nothing, extra files are refused.
    let mut form = reqwest::multipart::Form::new();
    for i in 0..1500 {
        form = form.text(format!("junk{i}"), "x");
    }
    let r = c.post(app.url("/api/predict")).header("Authorization", bearer()).multipart(form).send().await;
    assert_eq!(outcome(r.expect("send")).await, (StatusCode::BAD_REQUEST, Some("missing_file".into())));
    let mut form = reqwest::multipart::Form::new();
    for i in 0..(MAX_BATCH * 50) {
        form = form
            .part("file", reqwest::multipart::Part::bytes(image_bytes(ImageFormat::Png)).file_name(format!("{i}.png")));
    }
    let r = c.post(app.url("/api/predict/batch")).header("Authorization", bearer()).multipart(form).send().await;
    // The server answers 413 at the first file over the limit and may close the connection
    // before the client has finished sending: a broken pipe is the same refusal.
    match r {
        Ok(r) => assert_eq!(outcome(r).await.0, StatusCode::PAYLOAD_TOO_LARGE),
        Err(e) => assert!(e.is_request(), "unexpected client error: {e}"),
    }
    still_works(&app).await;

    // A 200 MiB stream: cut at the limit, memory stays bounded.
    let before = rss_kib();
    let addr = app.base.trim_start_matches("http://").to_string();
    let status = raw_upload(addr.clone(), 200 * 1024 * 1024, Duration::ZERO).await;
    assert!(status.is_none() || status == Some(413), "200 MiB upload answered {status:?}");
    let grown = rss_kib().saturating_sub(before);
    assert!(grown < 100 * 1024, "memory grew by {grown} KiB for a 200 MiB upload");
    still_works(&app).await;

    // A stalled upload is cut by the request deadline (2 s here) with 408.
    let started = std::time::Instant::now();
    let status = raw_upload(addr.clone(), 1000, Duration::from_secs(30)).await;
    assert_eq!(status, Some(408), "stalled upload");
    assert!(started.elapsed() < Duration::from_secs(15));
    still_works(&app).await;

    // Slowloris: headers dribbled one byte every 200 ms are cut off by the header read
    // timeout (2 s here, 10 s by default), while twenty such clients do not stop others.
    let slow: Vec<_> = (0..20).map(|_| tokio::spawn(slow_headers(addr.clone()))).collect();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_json_abuse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("f.db").display());
    let app = TestApp::spawn(&db, dir.path().join("data"), None).await;
    let r = post_file(&app, "file", "ok.png", image_bytes(ImageFormat::Png)).await;
    let id = r.json::<Value>().await.expect("json")["id"].as_str().expect("id").to_string();
    let c = client();
    let cases = [
        (json!({"prediction_id": id, "correct": "yes"}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"prediction_id": id, "correct": 1e308}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"prediction_id": 12345678901234567890u64, "correct": true}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"prediction_id": id, "correct": true, "admin": true}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"prediction_id": "00000000-0000-0000-0000-000000000000", "correct": true}), StatusCode::NOT_FOUND),
        (json!({"prediction_id": "' OR 1=1; --", "correct": true}), StatusCode::NOT_FOUND),
        (json!({"feedback": "positive", "resultat_prediction": 1e308}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"feedback": ["positive"]}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"prediction_id": id, "label": "cat'); DELETE FROM feedback; --"}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!([1, 2, 3]), StatusCode::UNPROCESSABLE_ENTITY),
    ];
    for (body, status) in cases {
        let r = c.post(app.url("/api/feedback")).header("Authorization", bearer()).json(&body).send().await;
        let (got, code) = outcome(r.expect("send")).await;
        assert_eq!(got, status, "{body}");
        assert!(code.is_some());
    }
    for raw in [&b"{\"prediction_id\": "[..], b"\xff\xfe{}", b""] {
        let r = c
            .post(app.url("/api/feedback"))
            .header("Authorization", bearer())
            .header("Content-Type", "application/json")
            .body(raw.to_vec())
            .send()
            .await;
        assert_eq!(outcome(r.expect("send")).await.0, StatusCode::BAD_REQUEST);
    }
    let r = c
        .post(app.url("/api/feedback"))
        .header("Authorization", bearer())
        .json(&json!({"prediction_id": id, "correct": true}));
    assert_eq!(r.send().await.expect("send").status(), StatusCode::OK, "valid feedback still works");
    assert_eq!(app.state.store.count_rows("feedback").await.expect("count"), 1);
    assert_eq!(app.state.store.count_rows("predictions").await.expect("count"), 1, "nothing was dropped or injected");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protected_route_refuses_bad_credentials() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
    let app = TestApp::spawn(&db, dir.path().join("data"), None).await;
    let mut last_byte = TOKEN.to_string();
    let last = last_byte.pop().map_or('x', |c| if c == '0' { '1' } else { '0' });
    last_byte.push(last);
    let headers = [
        None,
        Some(format!("Bearer {}", "wrong")),
        Some(format!("Bearer {last_byte}")),
        Some(TOKEN.to_string()),
        Some(format!("Basic {TOKEN}")),
        Some("Bearer ".to_string()),
    ];
    let id = "00000000-0000-0000-0000-000000000001";
    let routes: Vec<(reqwest::Method, String)> = vec![
        (reqwest::Method::POST, "/api/predict".into()),
        (reqwest::Method::POST, "/api/predict/batch".into()),
        (reqwest::Method::POST, "/api/feedback".into()),
        (reqwest::Method::GET, "/api/metrics/daily".into()),
        (reqwest::Method::GET, "/api/metrics/7d".into()),
        (reqwest::Method::GET, "/api/info".into()),
        (reqwest::Method::GET, format!("/api/predictions/{id}")),
        (reqwest::Method::DELETE, format!("/api/predictions/{id}")),
        (reqwest::Method::GET, "/metrics".into()),
        (reqwest::Method::GET, "/v2".into()),
        (reqwest::Method::GET, "/v2/models/catsdogs".into()),
        (reqwest::Method::POST, "/v2/models/catsdogs/infer".into()),
    ];
    let c = client();
    for (method, path) in &routes {
        for h in &headers {
            let mut req = c.request(method.clone(), app.url(path));
            if let Some(h) = h {
                req = req.header("Authorization", h);
            }
            let r = req.send().await.expect("send");
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{method} {path} with {h:?}");
            assert!(r.headers().get("www-authenticate").is_some(), "{method} {path}: WWW-Authenticate");
        }
    }
    // The public routes stay public.
    for path in ["/api/health", "/health", "/v2/health/live", "/v2/health/ready", "/", "/docs/"] {
        assert_eq!(c.get(app.url(path)).send().await.expect("send").status(), StatusCode::OK, "{path}");
    }
    app.stop().await;
}

/// The feedback fuzz target's seed corpus and regressions (`fuzz/`), replayed through the
/// same parser: accepted, or refused with a 4xx and an error code.
#[test]
fn feedback_fuzz_inputs_replay() {
    use catsdogs_server::api::feedback::parse_feedback;
    let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut seen = 0;
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(kind).join("feedback_json")) else { continue };
        for path in entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_none_or(|x| x != "md")) {
            let bytes = std::fs::read(&path).expect("read fuzz input");
            for content_type in [None, Some("application/json"), Some("text/plain")] {
                if let Err(e) = parse_feedback(content_type, &bytes) {
                    assert!(e.status.is_client_error() && !e.code.is_empty(), "{}: {}", path.display(), e.status);
                }
            }
            seen += 1;
        }
    }
    assert!(seen >= 5, "feedback seed corpus missing ({seen} files)");
}

/// A full inference queue refuses at once with 503 + `Retry-After` and the `overloaded`
/// code, per file, instead of queueing without bound; the service recovers at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_inference_queue_answers_503() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("q.db").display());
    let app = TestApp::spawn_with(&db, dir.path().join("data"), None, |cfg| {
        // One image per forward pass and room for one more: a batch upload overflows.
        cfg.batching.max_batch = 1;
        cfg.batching.max_wait = Duration::ZERO;
        cfg.batching.queue_capacity = 1;
    })
    .await;
    let mut refused = 0;
    for _ in 0..5 {
        let mut form = reqwest::multipart::Form::new();
        for i in 0..MAX_BATCH {
            let part = reqwest::multipart::Part::bytes(image_bytes(ImageFormat::Png)).file_name(format!("{i}.png"));
            form = form.part("file", part);
        }
        let r = client()
            .post(app.url("/api/predict/batch"))
            .header("Authorization", bearer())
            .multipart(form)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.expect("json");
        for item in body["results"].as_array().expect("results") {
            match item["status"].as_u64() {
                Some(200) => assert!(item["result"]["label"].is_string()),
                Some(503) => {
                    assert_eq!(item["error"]["code"], "overloaded", "{item}");
                    refused += 1;
                }
                other => panic!("unexpected per-file status {other:?}: {item}"),
            }
        }
    }
    assert!(refused > 0, "a queue of one never overflowed under batch uploads");
    // A single upload refused the same way carries Retry-After; here the queue is free again.
    still_works(&app).await;
    app.stop().await;
}
