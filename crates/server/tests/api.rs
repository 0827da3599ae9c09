//! The HTTP API end to end, on SQLite and on a real PostgreSQL cluster: the same checks
//! run against both.
mod support;

use catsdogs_store::{FeedbackRecord, FeedbackSource, PredictionRecord, PredictionStatus};
use chrono::{DateTime, TimeZone, Utc};
use image::ImageFormat;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::pg::PgCluster;
use support::{MAX_BATCH, MAX_UPLOAD, ROTATED_TOKEN, TOKEN, TestApp, client, file_form, image_bytes};

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

async fn error_code(resp: reqwest::Response, status: StatusCode) -> String {
    assert_eq!(resp.status(), status, "unexpected status");
    let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert!(ct.starts_with("application/json"), "error body is not JSON: {ct}");
    let body: Value = resp.json().await.expect("json error body");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "no message in {body}");
    body["error"]["code"].as_str().expect("code").to_string()
}

async fn predict(app: &TestApp, name: &str, bytes: Vec<u8>, mime: &str) -> reqwest::Response {
    client()
        .post(app.url("/api/predict"))
        .header("Authorization", bearer(TOKEN))
        .multipart(file_form(name, bytes, mime))
        .send()
        .await
        .expect("send")
}

/// GET with the token, JSON body.
async fn get_json(app: &TestApp, path: &str) -> Value {
    client()
        .get(app.url(path))
        .header("Authorization", bearer(TOKEN))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json")
}

fn pct(p: f64) -> String {
    format!("{:.2}%", p * 100.0)
}

/// Every route and every error status.
async fn routes(db_url: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(db_url, dir.path().to_path_buf(), None).await;
    let c = client();

    // Health and readiness.
    let h: Value = c.get(app.url("/api/health")).send().await.expect("health").json().await.expect("json");
    assert_eq!(h["ready"], true, "{h}");
    assert_eq!(h["store"]["reachable"], true);
    assert_eq!(h["store"]["dropped_rows"], 0);
    let seed: Value = c.get(app.url("/health")).send().await.expect("health").json().await.expect("json");
    assert_eq!(seed["status"], "healthy");
    assert_eq!(seed["model_loaded"], true);

    // Auth: missing, wrong scheme, wrong token -> 401 with WWW-Authenticate; both rotated tokens work.
    let png = image_bytes(ImageFormat::Png);
    let r = c
        .post(app.url("/api/predict"))
        .multipart(file_form("a.png", png.clone(), "image/png"))
        .send()
        .await
        .expect("send");
    assert!(r.headers().get("www-authenticate").is_some_and(|v| v.to_str().unwrap_or_default().starts_with("Bearer")));
    assert_eq!(error_code(r, StatusCode::UNAUTHORIZED).await, "unauthorized");
    for value in ["Basic dXNlcjpwYXNz", "Bearer wrong-token", "Bearer "] {
        let r = c.get(app.url("/api/metrics/7d")).header("Authorization", value).send().await.expect("send");
        assert_eq!(error_code(r, StatusCode::UNAUTHORIZED).await, "unauthorized");
    }
    for path in ["/api/info", "/api/metrics/daily", "/api/metrics/7d"] {
        let r = c.get(app.url(path)).send().await.expect("send");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path} is open");
    }
    let r = c.get(app.url("/api/info")).header("Authorization", bearer(ROTATED_TOKEN)).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let info: Value = r.json().await.expect("json");
    assert_eq!(info["model_loaded"], true);
    assert!(info["parameters"].as_u64().is_some_and(|p| p > 10_000));
    assert!(info["version"].is_string() && info["model_path"].is_string());

    // Predict: the seed's fields and formats, plus ours; every format sniffed from content,
    // whatever name and MIME type the client claims.
    let r = predict(&app, "my cat.png", png.clone(), "image/png").await;
    assert_eq!(r.status(), StatusCode::OK);
    let p: Value = r.json().await.expect("json");
    let p_dog = p["p_dog"].as_f64().expect("p_dog");
    assert!((0.0..=1.0).contains(&p_dog));
    assert_eq!(p["probabilities"]["dog"], pct(p_dog));
    assert_eq!(p["probabilities"]["cat"], pct(1.0 - p_dog));
    assert_eq!(p["prediction"], if p_dog >= 0.5 { "Dog" } else { "Cat" });
    assert_eq!(p["confidence"], pct(p_dog.max(1.0 - p_dog)));
    assert_eq!(p["filename"], "my cat.png");
    assert!(p["latency_ms"].as_f64().is_some_and(|l| l >= 0.0));
    assert!(p["model_version"].is_string());
    let first_id = p["id"].as_str().expect("id").to_string();
    assert!(uuid::Uuid::parse_str(&first_id).is_ok());
    let stored = app.state.store.get_prediction(&first_id).await.expect("query").expect("row stored");
    let file_ref = stored.file_ref.expect("pseudonymised name");
    assert!(file_ref.starts_with("upload-") && !file_ref.contains("cat"), "{file_ref}");
    let mut ok_predictions = 1;
    for (fmt, name) in [
        (ImageFormat::Jpeg, "x.txt"),
        (ImageFormat::Gif, "y.gif"),
        (ImageFormat::WebP, "z"),
        (ImageFormat::Bmp, "w.bmp"),
    ] {
        let r = predict(&app, name, image_bytes(fmt), "text/plain").await;
        assert_eq!(r.status(), StatusCode::OK, "{fmt:?}");
        ok_predictions += 1;
    }

    // Predict errors.
    let r = predict(&app, "notes.txt", b"hello, this is text".to_vec(), "image/png").await;
    assert_eq!(error_code(r, StatusCode::UNSUPPORTED_MEDIA_TYPE).await, "unsupported_media_type");
    let mut corrupt = png.clone();
    corrupt.truncate(60);
    let r = predict(&app, "broken.png", corrupt, "image/png").await;
    assert_eq!(error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await, "corrupt_image");
    let r = predict(&app, "empty.png", Vec::new(), "image/png").await;
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "empty_file");
    let mut big = image_bytes(ImageFormat::Bmp);
    big.resize(MAX_UPLOAD + 1, 0);
    let r = predict(&app, "big.bmp", big, "image/bmp").await;
    assert_eq!(error_code(r, StatusCode::PAYLOAD_TOO_LARGE).await, "payload_too_large");
    let failed_predictions = 4;
    let form = reqwest::multipart::Form::new().text("other", "x");
    let r = c
        .post(app.url("/api/predict"))
        .header("Authorization", bearer(TOKEN))
        .multipart(form)
        .send()
        .await
        .expect("send");
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "missing_file");
    let r = c
        .post(app.url("/api/predict"))
        .header("Authorization", bearer(TOKEN))
        .json(&json!({"file": "x"}))
        .send()
        .await
        .expect("send");
    assert_eq!(error_code(r, StatusCode::UNSUPPORTED_MEDIA_TYPE).await, "unsupported_content_type");

    // Batch: a bad file does not fail the others.
    let part = |name: &str, bytes: Vec<u8>| reqwest::multipart::Part::bytes(bytes).file_name(name.to_string());
    let form = reqwest::multipart::Form::new()
        .part("file", part("a.png", png.clone()))
        .part("file", part("b.txt", b"not an image".to_vec()))
        .part("file", part("c.jpg", image_bytes(ImageFormat::Jpeg)));
    let r = c
        .post(app.url("/api/predict/batch"))
        .header("Authorization", bearer(TOKEN))
        .multipart(form)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let b: Value = r.json().await.expect("json");
    let statuses: Vec<u64> =
        b["results"].as_array().expect("results").iter().map(|i| i["status"].as_u64().unwrap_or(0)).collect();
    assert_eq!(statuses, [200, 415, 200]);
    assert_eq!((b["succeeded"].as_u64(), b["failed"].as_u64()), (Some(2), Some(1)));
    assert_eq!(b["results"][1]["error"]["code"], "unsupported_media_type");
    assert_eq!(
        b["results"][0]["result"]["probabilities"]["dog"],
        pct(b["results"][0]["result"]["p_dog"].as_f64().unwrap_or(-1.0))
    );
    let batch_id = b["results"][2]["result"]["id"].as_str().expect("batch id").to_string();
    ok_predictions += 2;
    let failed_predictions = failed_predictions + 1;
    let mut form = reqwest::multipart::Form::new();
    for i in 0..=MAX_BATCH {
        form = form.part("file", part(&format!("{i}.png"), png.clone()));
    }
    let r = c
        .post(app.url("/api/predict/batch"))
        .header("Authorization", bearer(TOKEN))
        .multipart(form)
        .send()
        .await
        .expect("send");
    assert_eq!(error_code(r, StatusCode::PAYLOAD_TOO_LARGE).await, "too_many_files");

    // Feedback keyed by prediction id; a second one replaces the first.
    let fb = |body: Value| c.post(app.url("/api/feedback")).header("Authorization", bearer(TOKEN)).json(&body).send();
    let r = fb(json!({"prediction_id": first_id, "correct": true})).await.expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    assert_eq!(
        (v["positive"].as_bool(), v["replaced"].as_bool(), v["saved_to_db"].as_bool()),
        (Some(true), Some(false), Some(true))
    );
    let other = if p_dog >= 0.5 { "cat" } else { "dog" };
    let v: Value = fb(json!({"prediction_id": first_id, "label": other, "comment": "it is a"}))
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!((v["positive"].as_bool(), v["replaced"].as_bool()), (Some(false), Some(true)), "{v}");
    let v: Value =
        fb(json!({"prediction_id": batch_id, "correct": true})).await.expect("send").json().await.expect("json");
    assert_eq!(v["positive"], true);
    let r = fb(json!({"prediction_id": uuid::Uuid::new_v4().to_string(), "correct": true})).await.expect("send");
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "unknown_prediction");
    let r = fb(json!({"prediction_id": "not-a-uuid", "correct": true})).await.expect("send");
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "unknown_prediction");
    let r = fb(json!({"prediction_id": first_id})).await.expect("send");
    assert_eq!(error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await, "invalid_body");
    let r = fb(json!({"prediction_id": first_id, "correct": true, "label": other})).await.expect("send");
    assert_eq!(error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await, "invalid_body");
    // The seed's body and response fields.
    let r =
        fb(json!({"feedback": "negative", "resultat_prediction": 0.8765, "input_user": "chat"})).await.expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["status"], "received");
    assert_eq!(v["feedback"], "negative");
    assert_eq!(v["resultat_prediction"], 0.8765);
    assert_eq!(v["input_user"], "chat");
    assert_eq!(v["saved_to_db"], true);
    assert!(v["timestamp"].as_f64().is_some_and(|t| t > 1.7e9));
    let r = fb(json!({"feedback": "maybe", "resultat_prediction": 0.5, "input_user": ""})).await.expect("send");
    assert_eq!(error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await, "invalid_body");
    let r = fb(json!({"hello": 1})).await.expect("send");
    assert_eq!(error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await, "invalid_body");
    let raw = |content_type: &'static str, body: &'static str| {
        c.post(app.url("/api/feedback"))
            .header("Authorization", bearer(TOKEN))
            .header("Content-Type", content_type)
            .body(body)
            .send()
    };
    let r = raw("application/json", "{not json").await.expect("send");
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "invalid_json");
    let r = raw("text/plain", "{}").await.expect("send");
    assert_eq!(error_code(r, StatusCode::UNSUPPORTED_MEDIA_TYPE).await, "unsupported_content_type");

    // Metrics count exactly what happened above.
    let auth = bearer(TOKEN);
    let days = get_json(&app, "/api/metrics/daily").await;
    let today = &days.as_array().expect("list")[0];
    assert_eq!(today["inf_count"], ok_predictions + failed_predictions, "{today}");
    assert_eq!(today["inf_success"], ok_predictions);
    assert_eq!(today["inf_errors"], failed_predictions);
    // Feedback rows: first_id (replaced, now negative), batch_id positive, the seed's negative.
    assert_eq!((today["feedback_pos"].as_u64(), today["feedback_neg"].as_u64()), (Some(1), Some(2)));
    let w = get_json(&app, "/api/metrics/7d").await;
    assert_eq!(w["inf_7d"], ok_predictions + failed_predictions);
    assert_eq!(w["window_days"], 7);

    // The seed's SQL view works on this database.
    let seed_rows = app.state.store.count_rows("feedback_user").await.expect("view");
    assert_eq!(seed_rows, 3);

    // Docs, pages, unknown routes, wrong methods.
    let docs = c.get(app.url("/docs/")).send().await.expect("docs");
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await.unwrap_or_default().to_lowercase().contains("swagger"));
    let spec: Value = c.get(app.url("/openapi.json")).send().await.expect("spec").json().await.expect("json");
    for path in
        ["/api/predict", "/api/predict/batch", "/api/feedback", "/api/metrics/daily", "/api/metrics/7d", "/api/health"]
    {
        assert!(spec["paths"][path].is_object(), "{path} missing from the OpenAPI document");
    }
    for page in ["/", "/info", "/inference"] {
        let r = c.get(app.url(page)).send().await.expect("page");
        assert_eq!(r.status(), StatusCode::OK, "{page}");
        let html = r.text().await.unwrap_or_default();
        assert!(html.contains("<html") && !html.contains(TOKEN), "{page}");
    }
    let r = c.get(app.url("/api/nope")).header("Authorization", &auth).send().await.expect("send");
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    let r = c.get(app.url("/api/predict")).header("Authorization", &auth).send().await.expect("send");
    assert_eq!(error_code(r, StatusCode::METHOD_NOT_ALLOWED).await, "method_not_allowed");
    app.stop().await;
}

fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, 0, 0).single().expect("valid date")
}

/// Metrics arithmetic on known rows, with a fixed clock.
async fn metrics(db_url: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = at(2030, 6, 15, 12);
    let app = TestApp::spawn(db_url, dir.path().to_path_buf(), Some(now)).await;
    let store = &app.state.store;
    let mut n = 0;
    let mut pred = |t: DateTime<Utc>, label: Option<&str>, ms: f64| {
        n += 1;
        PredictionRecord {
            id: format!("00000000-0000-0000-0000-{n:012}"),
            created_at: t,
            model_version: "test".into(),
            status: if label.is_some() { PredictionStatus::Ok } else { PredictionStatus::Error },
            label: label.map(|l: &str| l.parse().expect("label")),
            p_dog: label.map(|l| if l == "dog" { 0.9 } else { 0.1 }),
            latency_ms: ms,
            error_code: label.is_none().then(|| "corrupt_image".into()),
            file_ref: None,
            image_ref: None,
        }
    };
    let rows = [
        pred(at(2030, 6, 15, 1), Some("cat"), 10.0),
        pred(at(2030, 6, 15, 2), Some("dog"), 20.0),
        pred(at(2030, 6, 15, 3), Some("dog"), 30.0),
        pred(at(2030, 6, 15, 4), None, 5.0),
        pred(at(2030, 6, 14, 23), Some("cat"), 100.0),
        pred(at(2030, 6, 9, 0), Some("dog"), 40.0),
        pred(at(2030, 6, 8, 23), Some("cat"), 50.0),
        pred(at(2030, 5, 10, 12), Some("cat"), 60.0),
    ];
    for r in &rows {
        store.insert_prediction(r).await.expect("insert");
    }
    let fb = |i: usize, t: DateTime<Utc>, positive: bool| FeedbackRecord {
        id: format!("f{i}"),
        prediction_id: Some(rows[i].id.clone()),
        created_at: t,
        positive,
        true_label: None,
        p_dog: rows[i].p_dog,
        comment: None,
        source: FeedbackSource::V2,
    };
    for f in [
        fb(0, at(2030, 6, 15, 5), true),
        fb(1, at(2030, 6, 15, 6), true),
        fb(2, at(2030, 6, 15, 7), false),
        fb(4, at(2030, 6, 14, 23), false),
    ] {
        store.upsert_feedback(&f).await.expect("feedback");
    }
    let days = get_json(&app, "/api/metrics/daily").await;
    let list = days.as_array().expect("list");
    let names: Vec<&str> = list.iter().map(|d| d["day"].as_str().unwrap_or_default()).collect();
    assert_eq!(names, ["2030-06-15", "2030-06-14", "2030-06-09", "2030-06-08"], "30-day window, newest first");
    let mut d = list[0].clone();
    // Summation order follows the database's row order: compare the mean with a tolerance.
    let mean = d.as_object_mut().and_then(|o| o.remove("p_dog_mean")).and_then(|v| v.as_f64()).expect("mean");
    assert!((mean - 1.9 / 3.0).abs() < 1e-12, "{mean}");
    let expect = json!({
        "day": "2030-06-15", "inf_count": 4, "inf_success": 3, "inf_errors": 1,
        "inf_latency_avg_ms": 20.0, "inf_latency_p50_ms": 20.0, "inf_latency_p90_ms": 30.0, "inf_latency_p99_ms": 30.0,
        "feedback_pos": 2, "feedback_neg": 1, "inf_latency_p95_ms": 30.0, "error_rate": 0.25, "feedback_count": 3,
        "satisfaction_rate": 2.0 / 3.0, "cat_count": 1, "dog_count": 2, "cat_share": 1.0 / 3.0, "dog_share": 2.0 / 3.0,
        "low_confidence_share": 0.0
    });
    assert_eq!(d, expect);
    assert_eq!(list[1]["feedback_neg"], 1);
    assert_eq!(list[1]["satisfaction_rate"], 0.0);
    assert_eq!(list[2]["error_rate"], 0.0);
    assert_eq!(list[2]["satisfaction_rate"], Value::Null);
    let mut w = get_json(&app, "/api/metrics/7d").await;
    let mean = w.as_object_mut().and_then(|o| o.remove("p_dog_mean_7d")).and_then(|v| v.as_f64()).expect("mean");
    assert!((mean - 0.58).abs() < 1e-12, "{mean}");
    let expect = json!({
        "as_of": "2030-06-15", "inf_7d": 6, "latency_avg_ms_7d": 40.0, "latency_p90_ms_7d": 100.0,
        "fb_pos_7d": 2, "fb_neg_7d": 2, "window_start": "2030-06-09", "window_end": "2030-06-15", "window_days": 7,
        "inf_success_7d": 5, "inf_errors_7d": 1, "error_rate_7d": 1.0 / 6.0, "latency_p50_ms_7d": 30.0,
        "latency_p99_ms_7d": 100.0, "latency_p95_ms_7d": 100.0, "feedback_count_7d": 4, "satisfaction_rate_7d": 0.5,
        "cat_share_7d": 0.4, "dog_share_7d": 0.6, "low_confidence_share_7d": 0.0
    });
    assert_eq!(w, expect);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_routes_and_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    routes(&format!("sqlite://{}?mode=rwc", dir.path().join("routes.db").display())).await;
    metrics(&format!("sqlite://{}?mode=rwc", dir.path().join("metrics.db").display())).await;
}

/// PostgreSQL must be present where `CATSDOGS_REQUIRE_POSTGRES=1` (CI); elsewhere its absence skips.
fn cluster() -> Option<PgCluster> {
    PgCluster::start_or_skip("the PostgreSQL tests")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_routes_metrics_and_outage() {
    let Some(pg) = cluster() else { return };
    routes(&pg.create_db("routes").expect("createdb")).await;
    metrics(&pg.create_db("metrics").expect("createdb")).await;
    outage(&pg, &pg.create_db("outage").expect("createdb")).await;
}

async fn wait_ready(app: &TestApp, want: bool) -> Value {
    let c = client();
    for _ in 0..150 {
        let r = c.get(app.url("/api/health")).send().await.expect("health");
        let ok = r.status() == StatusCode::OK;
        let body: Value = r.json().await.expect("json");
        if ok == want {
            return body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("readiness never became {want}");
}

/// Database stopped mid-test: predictions still answer, feedback is 503, readiness says why,
/// and everything recovers (queued rows written) when the database returns. Rows still
/// queued at shutdown are kept on disk and written by the next start.
async fn outage(pg: &PgCluster, db_url: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(db_url, dir.path().to_path_buf(), None).await;
    let png = image_bytes(ImageFormat::Png);
    assert_eq!(predict(&app, "a.png", png.clone(), "image/png").await.status(), StatusCode::OK);

    pg.stop_server().expect("stop postgres");
    let r = predict(&app, "b.png", png.clone(), "image/png").await;
    assert_eq!(r.status(), StatusCode::OK, "predictions must answer while the database is down");
    let during: Value = r.json().await.expect("json");
    let during_id = during["id"].as_str().expect("id").to_string();
    let c = client();
    let fb = |id: &str| {
        c.post(app.url("/api/feedback"))
            .header("Authorization", bearer(TOKEN))
            .json(&json!({"prediction_id": id, "correct": true}))
            .send()
    };
    let r = fb(&during_id).await.expect("send");
    assert_eq!(error_code(r, StatusCode::SERVICE_UNAVAILABLE).await, "store_unavailable");
    let health = wait_ready(&app, false).await;
    assert_eq!(health["store"]["reachable"], false);
    assert!(health["store"]["pending_rows"].as_u64().is_some_and(|n| n >= 1), "{health}");
    assert!(health["store"]["error"].is_string());

    pg.start_server().expect("restart postgres");
    wait_ready(&app, true).await;
    let r = fb(&during_id).await.expect("send");
    assert_eq!(r.status(), StatusCode::OK, "the prediction made during the outage was written after it");

    // Down again, then a graceful shutdown: the queued row goes to disk, the next start writes it.
    pg.stop_server().expect("stop postgres");
    let r = predict(&app, "c.png", png, "image/png").await;
    let late_id = r.json::<Value>().await.expect("json")["id"].as_str().expect("id").to_string();
    app.stop().await;
    assert!(dir.path().join("pending-predictions.jsonl").is_file(), "pending rows not saved at shutdown");
    pg.start_server().expect("restart postgres");
    let app = TestApp::spawn(db_url, dir.path().to_path_buf(), None).await;
    wait_ready(&app, true).await;
    let r = client()
        .post(app.url("/api/feedback"))
        .header("Authorization", bearer(TOKEN))
        .json(&json!({"prediction_id": late_id, "correct": false}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK, "row saved at shutdown was written at the next start");
    assert!(!dir.path().join("pending-predictions.jsonl").exists());
    app.stop().await;
}
