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

/// 100 rapid predictions from one visitor session: the burst passes, then 429 with
/// `Retry-After` and the JSON error shape; a token client is not limited meanwhile.
pub async fn rapid_visitor_predictions_see_429_with_retry_after() {
    let app = TestApp::spawn().await;
    let visitor = app.visitor().await;
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..100 {
        let r = visitor.post_predict(Some(&visitor.csrf)).await;
        match r.status() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                let retry: u64 = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .expect("Retry-After in seconds");
                assert!((1..=60).contains(&retry), "Retry-After {retry}");
                assert_eq!(outcome(r).await, (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited".into())));
                limited += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(ok >= 20, "the burst of 20 passes, {ok} did");
    assert!(limited >= 50, "most of 100 rapid calls are refused, {limited} were");
    for _ in 0..30 {
        still_works(&app).await;
    }
    app.stop().await;
}

/// 30 wrong tokens on `/login` from one address: 401 until the limit, then 429 with
/// `Retry-After`, even for the right token; once the delay has passed the right token works.
pub async fn wrong_sign_ins_are_locked_out_and_the_right_token_works_after_the_delay() {
    let app = TestApp::spawn_with(|cfg| {
        cfg.limits.login_lockout = Duration::from_secs(1);
        cfg.limits.login_lockout_max = Duration::from_secs(2);
    })
    .await;
    let visitor = app.visitor().await;
    let mut statuses = Vec::new();
    for i in 0..30 {
        let r = visitor.sign_in(&format!("wrong-token-number-{i:02}"), &visitor.csrf, "/dashboard").await;
        statuses.push(r.status());
    }
    let unauthorized = statuses.iter().filter(|s| **s == StatusCode::UNAUTHORIZED).count();
    let limited = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!(unauthorized, 4, "four wrong tokens are answered 401: {statuses:?}");
    assert!(limited >= 20, "then the address is locked out: {statuses:?}");
    let r = visitor.sign_in(TOKEN, &visitor.csrf, "/dashboard").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "the right token waits for the lockout too");
    let retry: u64 = r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()).expect("Retry-After");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let r = visitor.sign_in(TOKEN, &visitor.csrf, "/dashboard").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "the right token once the delay has passed");
    app.stop().await;
}

/// A visitor may give feedback only on its own predictions: another session's id, or a
/// token client's, answers 404 as an unknown id does; token clients keep full access.
pub async fn a_visitor_gives_feedback_only_on_its_own_predictions() {
    let app = TestApp::spawn().await;
    let (a, b) = (app.visitor().await, app.visitor().await);
    let mine = a.predict().await.id;
    let by_token = app.predict("t.png").await.id;
    let verdict = |id: &str| serde_json::json!({"prediction_id": id, "label": "cat"});
    for (who, id) in [(&b, &mine), (&a, &by_token)] {
        let r = who.post_feedback(&verdict(id)).await;
        assert_eq!(outcome(r).await, (StatusCode::NOT_FOUND, Some("unknown_prediction".into())));
    }
    let unknown = catsdogs_store::PredictionId::new().to_string();
    let r = b.post_feedback(&verdict(&unknown)).await;
    assert_eq!(outcome(r).await, (StatusCode::NOT_FOUND, Some("unknown_prediction".into())), "same as unknown");
    assert_eq!(a.post_feedback(&verdict(&mine)).await.status(), StatusCode::OK);
    assert_eq!(app.post_feedback(&verdict(&mine)).await.status(), StatusCode::OK, "a token reaches every row");
    // The page's plain form follows the same rule.
    let form = [("csrf", b.csrf.as_str()), ("prediction_id", mine.as_str()), ("verdict", "dog")];
    assert_eq!(b.post_form("/feedback", &form).await.status(), StatusCode::NOT_FOUND);
    // The row holds a keyed hash of the session, never the session id (which is a credential).
    let row = app.state.store.get_prediction(&mine).await.expect("read").expect("row");
    let owner = row.owner.expect("a visitor's prediction has an owner");
    assert_eq!(owner.len(), 32);
    assert!(app.state.store.get_prediction(&by_token).await.expect("read").expect("row").owner.is_none());
    app.stop().await;
}

/// Visitors get smaller requests than token clients: fewer files, smaller files, shorter
/// comments, and a daily quota of seed-style feedback.
pub async fn visitor_requests_are_smaller_than_token_requests() {
    let app = TestApp::spawn_with(|cfg| {
        cfg.limits.visitor_max_files = 2;
        cfg.limits.visitor_max_upload_bytes = 8 * 1024;
        cfg.limits.visitor_seed_feedback_per_day = 3;
    })
    .await;
    let visitor = app.visitor().await;
    let three = || (0..3).fold(Form::new(), |f, i| f.part("file", crate::helpers::image_part(&format!("{i}.png"))));
    let r = visitor.client.post(visitor.url("/api/predict/batch")).header("X-CSRF-Token", &visitor.csrf);
    let r = r.multipart(three()).send().await.expect("batch");
    assert_eq!(outcome(r).await, (StatusCode::PAYLOAD_TOO_LARGE, Some("too_many_files".into())));
    let r = app.try_post_batch_form(three()).await.expect("batch");
    assert_eq!(r.status(), StatusCode::OK, "a token client sends 3");
    let big = Part::bytes(vec![7u8; 16 * 1024]).file_name("big.png");
    let r = visitor.client.post(visitor.url("/api/predict")).header("X-CSRF-Token", &visitor.csrf);
    let r = r.multipart(Form::new().part("file", big)).send().await.expect("predict");
    assert_eq!(outcome(r).await, (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large".into())));
    let long = "x".repeat(501);
    let seed = |comment: &str| serde_json::json!({"feedback": "positive", "input_user": comment});
    let r = visitor.post_feedback(&seed(&long)).await;
    assert_eq!(outcome(r).await, (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_body".into())));
    assert_eq!(app.post_feedback(&seed(&long)).await.status(), StatusCode::OK, "a token client's 501 characters");
    for _ in 0..3 {
        assert_eq!(visitor.post_feedback(&seed("nice")).await.status(), StatusCode::OK);
    }
    let r = visitor.post_feedback(&seed("nice")).await;
    assert_eq!(outcome(r).await, (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited".into())));
    app.stop().await;
}

/// Upload bytes in flight are bounded across requests: while a stalled upload holds most
/// of the budget, another upload gets 503 `overloaded` with `Retry-After`; once the stalled
/// one is gone, uploads pass again.
pub async fn the_upload_budget_is_shared_by_all_requests() {
    let app = TestApp::spawn_with(|cfg| cfg.limits.upload_budget_bytes = MAX_UPLOAD).await;
    let addr = app.addr();
    let held = 200 * 1024;
    let holder = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(&addr).expect("connect");
        let head = format!(
            "POST /api/predict HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: multipart/form-data; boundary=B\r\nContent-Length: {}\r\n\r\n",
            MAX_UPLOAD
        );
        s.write_all(head.as_bytes()).expect("head");
        s.write_all(b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.bin\"\r\n\r\n").expect("part");
        s.write_all(&vec![1u8; held]).expect("body");
        s.flush().expect("flush");
        s
    })
    .await
    .expect("holder");
    let in_flight = || app.state.limits.upload_bytes_in_flight();
    for _ in 0..100 {
        if in_flight() >= held {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(in_flight() >= held, "the stalled upload holds its bytes: {}", in_flight());
    let r = post_file(&app, "file", "second.bin", vec![2u8; 100 * 1024]).await;
    assert_eq!(r.headers().get("retry-after").map(|v| v.to_str().unwrap_or_default().to_string()), Some("1".into()));
    assert_eq!(outcome(r).await, (StatusCode::SERVICE_UNAVAILABLE, Some("overloaded".into())));
    drop(holder);
    for _ in 0..100 {
        if in_flight() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(in_flight(), 0, "a cut upload gives its bytes back");
    still_works(&app).await;
    app.stop().await;
}

/// Consented images have a quota per visitor session and in total: over it the prediction
/// still answers 200 with `image_kept: false`; the space used is reported in `/metrics`.
pub async fn consented_images_beyond_the_quotas_are_not_kept() {
    let app = TestApp::spawn_alone(|cfg| cfg.limits.images_per_session_per_day = 2).await;
    let visitor = app.visitor().await;
    let mut kept = Vec::new();
    for i in 0..3u8 {
        let img = image::DynamicImage::ImageRgb8(RgbImage::from_pixel(40, 30, Rgb([i * 60, 90, 30])));
        let png = encode(img, ImageFormat::Png);
        let form = Form::new().part("file", Part::bytes(png).file_name("c.png")).text("consent", "true");
        let r = visitor.client.post(visitor.url("/api/predict")).header("X-CSRF-Token", &visitor.csrf);
        let r = r.multipart(form).send().await.expect("predict");
        assert_eq!(r.status(), StatusCode::OK);
        let body: serde_json::Value = r.json().await.expect("json");
        kept.push(body["image_kept"].as_bool().expect("image_kept"));
    }
    assert_eq!(kept, [true, true, false]);
    let metrics = app.scrape().await;
    let used = app.state.images.total_bytes();
    assert!(used > 0);
    assert!(metrics.contains(&format!("catsdogs_images_bytes {used}")), "{metrics}");
    assert!(metrics.contains("catsdogs_images_refused_total{quota=\"session\"} 1"), "{metrics}");
    app.stop().await;
    let app = TestApp::spawn_with(|cfg| cfg.limits.images_max_total_bytes = 1).await;
    let form = Form::new().part("file", crate::helpers::image_part("t.png")).text("consent", "true");
    let body: serde_json::Value = app.post_predict_form(form).await.json().await.expect("json");
    assert_eq!(body["image_kept"], false, "over the total quota, even for a token client");
    app.stop().await;
}

/// Nothing the service writes can be read by other users: the data directory is 0700 and
/// every file in it (database, WAL, logs, images, spilled rows, secrets) 0600, including a
/// file an older version left world-readable.
pub async fn no_file_the_service_writes_is_readable_by_others() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("logs")).expect("data");
    std::fs::write(data.join("logs/inference-2026-01-01.csv"), "old\n").expect("old log");
    for p in [data.clone(), data.join("logs"), data.join("logs/inference-2026-01-01.csv")] {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let url = format!("sqlite://{}", data.join("catsdogs.db").display());
    let app = TestApp::spawn_at(&url, &data, |_| {}).await;
    let form = Form::new().part("file", crate::helpers::image_part("k.png")).text("consent", "true");
    assert_eq!(app.post_predict_form(form).await.status(), StatusCode::OK);
    app.predict("p.png").await;
    app.stop().await;
    let mut seen = 0;
    let mut stack = vec![data.clone()];
    while let Some(p) = stack.pop() {
        // SQLite may remove its WAL and shared-memory files while the last connection closes.
        let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
        let mode = meta.permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", p.display());
        seen += 1;
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&p).expect("dir").flatten().map(|e| e.path()));
        }
    }
    assert!(seen >= 8, "database, logs, images and secrets were checked ({seen} entries)");
    assert!(data.join("images").is_dir());
}

/// `X-Forwarded-For` decides the client address only when the peer is a trusted proxy:
/// otherwise a client writing a new address on each request still meets its limit.
pub async fn forwarded_for_from_an_untrusted_peer_does_not_dodge_the_limit() {
    let fresh_sessions = |app: &TestApp| {
        let client = reqwest::Client::new();
        let url = app.url("/");
        async move {
            let mut statuses = Vec::new();
            for i in 0..6 {
                let r = client.get(&url).header("x-forwarded-for", format!("198.51.100.{i}")).send().await;
                statuses.push(r.expect("home").status());
            }
            statuses
        }
    };
    let limit = |cfg: &mut catsdogs_server::ServerConfig| {
        cfg.limits.session_rate = catsdogs_server::limits::RateLimit { per_minute: 1, burst: 3 };
    };
    let app = TestApp::spawn_with(limit).await;
    let statuses = fresh_sessions(&app).await;
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::OK).count(), 3, "{statuses:?}");
    assert_eq!(statuses[5], StatusCode::TOO_MANY_REQUESTS);
    app.stop().await;
    let app = TestApp::spawn_with(|cfg| {
        limit(cfg);
        cfg.limits.trusted_proxies = vec!["127.0.0.1/32".parse().expect("net")];
    })
    .await;
    let statuses = fresh_sessions(&app).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::OK), "behind a trusted proxy: {statuses:?}");
    app.stop().await;
}

/// Settings that cannot work stop the start with a message naming the setting: sizes that
/// would overflow the body limits, zero durations, a budget no upload fits in, a zero rate.
pub async fn settings_that_cannot_work_are_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    type Edit = fn(&mut catsdogs_server::ServerConfig);
    let cases: [(Edit, &str); 6] = [
        (|c| c.max_upload_bytes = usize::MAX, "--max-upload-mib"),
        (|c| c.max_batch_files = 0, "--max-batch-files"),
        (|c| c.request_timeout = Duration::ZERO, "--request-timeout-s"),
        (|c| c.limits.upload_budget_bytes = 1024, "upload budget"),
        (|c| c.limits.visitor_rate.per_minute = 0, "rate limit"),
        (|c| c.batching.max_batch = 0, "--max-batch"),
    ];
    for (edit, says) in cases {
        let data = dir.path().join("data");
        let mut cfg = catsdogs_server::ServerConfig::new(catsdogs_testkit::seed_cnn_dir(), data);
        cfg.tokens = vec![TOKEN.into()];
        edit(&mut cfg);
        let err = catsdogs_server::build(cfg).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("invalid configuration") && err.contains(says), "{says}: {err:?}");
    }
}

/// The 16-bit RGBA PNG bomb of the phone-photo issue: 311 KB files declaring 6324 x 6324
/// pixels at 16 bits per channel (320 MB decoded) used to raise the server's RSS by
/// 459 MB each. Its decode is costed from the header and refused (422 `image_too_large`)
/// before any pixel is decoded, alone or four in a batch.
pub async fn a_sixteen_bit_png_bomb_is_refused_before_decoding() {
    let app = TestApp::spawn().await;
    let deep = image::DynamicImage::ImageRgba16(image::ImageBuffer::from_pixel(8, 8, image::Rgba([1u16, 2, 3, 65535])));
    let mut png = encode(deep, ImageFormat::Png);
    png[16..20].copy_from_slice(&6324u32.to_be_bytes());
    png[20..24].copy_from_slice(&6324u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    let r = post_file(&app, "file", "bomb.png", png.clone()).await;
    assert_eq!(outcome(r).await, (StatusCode::UNPROCESSABLE_ENTITY, Some("image_too_large".into())));
    let batch = app.batch((0..4).map(|i| (format!("bomb{i}.png"), png.clone())).collect()).await;
    assert!(batch.results.iter().all(|r| r.status == 422), "every bomb refused");
    assert_eq!(app.state.engine.decode_memory_in_use(), 0, "nothing reserved afterwards");
    still_works(&app).await;
    app.stop().await;
}
