//! `GET /api/metrics/drift` on the shipped default model: the report's shape and window,
//! the gauges, feedback accuracy beside the estimate, a flood of non-pet images caught, and
//! the per-prediction signals exported with their row.
use serde_json::{Value, json};

use crate::helpers::{Db, TestApp, ok_json, on_both_databases};

on_both_databases!(the_dashboard_reuses_closed_days_and_recounts_their_feedback);

async fn drift(app: &TestApp, query: &str) -> reqwest::Response {
    app.get(&format!("/api/metrics/drift{query}")).await
}

fn photo(class: &str, i: usize) -> Vec<u8> {
    let dir = catsdogs_testkit::photos().join(class);
    std::fs::read(dir.join(format!("{i}.jpg"))).expect("read photo")
}

pub async fn drift_reports_a_window_of_real_photos_and_catches_non_pets() {
    let app = TestApp::spawn_with(|cfg| cfg.model_dir = catsdogs_testkit::default_model_dir()).await;
    let mut ids = Vec::new();
    for i in 0..15 {
        for class in ["cat", "dog"] {
            let r: Value =
                ok_json(app.post_predict(&format!("{class}{i}.jpg"), photo(class, i), "image/jpeg").await).await;
            ids.push((r["id"].as_str().expect("id").to_string(), r["label"].as_str() == Some(class)));
        }
    }
    // Feedback on two answers: the measured accuracy appears beside the estimate.
    for (id, right) in &ids[..2] {
        let r = app.feedback(&json!({"prediction_id": id, "correct": right})).await;
        assert_eq!(r.status, "received");
    }
    app.state.maintain_store().await;
    let r: Value = ok_json(drift(&app, "?last=30").await).await;
    assert_eq!(r["window"]["kind"], "last");
    assert_eq!(r["n"], 30, "{r}");
    assert_eq!(r["reference"]["count"], 4995, "the shipped reference: the validation split");
    assert_eq!(
        (r["reference"]["tta_flip"].clone(), r["reference"]["matches_server"].clone()),
        (json!(false), json!(true))
    );
    let estimated = r["estimated_accuracy"].as_f64().expect("estimate");
    assert!((0.9..=1.0).contains(&estimated), "{r}");
    assert_eq!(r["feedback_count"], 2);
    assert!(r["feedback_accuracy"].as_f64().is_some() && r["accuracy_gap"].as_f64().is_some(), "{r}");
    assert!(r["output_drift"]["ks"].as_f64().is_some() && r["output_drift"]["psi"].as_f64().is_some(), "{r}");
    assert!(r["embedding_drift"]["mmd2"].as_f64().is_some(), "{r}");
    for p in ["brightness", "contrast", "saturation"] {
        assert!(r["input_drift"][p]["distance"].as_f64().is_some(), "{p}: {r}");
    }
    assert_eq!(r["input_drift"]["width"]["drifted"], Value::Null, "size is not in the verdict");
    assert_eq!(r["drifted"], false, "photos like the reference: {}", r["reasons"]);
    // Today's window (the default) publishes the gauges.
    let today: Value = ok_json(drift(&app, "").await).await;
    assert_eq!(today["window"]["kind"], "day");
    let scrape = app.scrape().await;
    for gauge in ["catsdogs_drift_detected 0", "catsdogs_estimated_accuracy", "catsdogs_drift_mmd2"] {
        assert!(scrape.contains(gauge), "{gauge} missing from the scrape");
    }
    // A flood of non-pet images: the neither rate and the embedding fire.
    for i in 0..30u32 {
        let img = image::RgbImage::from_fn(320, 240, |x, y| {
            let on = ((x / (4 + i % 9)) + (y / (5 + i % 7))) % 2 == 0;
            if on {
                image::Rgb([(40 + i * 7) as u8, 200, (i * 13) as u8])
            } else {
                image::Rgb([250, (i * 5) as u8, 30])
            }
        });
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).expect("png");
        let _: Value = ok_json(app.post_predict("pattern.png", png, "image/png").await).await;
    }
    app.state.maintain_store().await;
    let r: Value = ok_json(drift(&app, "?last=30").await).await;
    assert_eq!(r["drifted"], true, "{r}");
    assert!(r["neither_rate"].as_f64().is_some_and(|v| v > 0.5), "{r}");
    let reasons = r["reasons"].to_string();
    assert!(reasons.contains("neither") && reasons.contains("embedding"), "{reasons}");
    let _: Value = ok_json(drift(&app, "").await).await;
    assert!(app.scrape().await.contains("catsdogs_drift_detected 1"));
    // The signals are part of the prediction's data: exported with it.
    let export: Value = ok_json(app.get(&format!("/api/predictions/{}", ids[0].0)).await).await;
    assert!(export.to_string().contains("\"brightness\""), "{export}");
    // Bad windows.
    for q in ["?last=0", "?last=10001", "?last=ten"] {
        let r = drift(&app, q).await;
        assert_eq!(r.status(), reqwest::StatusCode::BAD_REQUEST, "{q}");
    }
    app.stop().await;
}

/// An operator rebuilds the reference from the last served predictions (a copy of the
/// default model, so the shipped reference is untouched): written, audited, used at once.
/// The server flips (`--tta-flip`), the shipped reference does not: the report says so
/// until the rebuilt reference, made of flipped answers, replaces it.
pub async fn an_operator_rebuilds_the_reference_from_served_predictions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shipped = catsdogs_testkit::default_model_dir();
    for f in ["model.json", "model.onnx", "head.safetensors", "reference.json"] {
        std::fs::copy(shipped.join(f), dir.path().join(f)).expect("copy model");
    }
    let model_dir = dir.path().to_path_buf();
    let app = TestApp::spawn_with(move |cfg| {
        cfg.model_dir = model_dir;
        cfg.tta_flip = true;
    })
    .await;
    for i in 0..50 {
        for class in ["cat", "dog"] {
            let _: Value = ok_json(app.post_predict("p.jpg", photo(class, 100 + i), "image/jpeg").await).await;
        }
    }
    app.state.maintain_store().await;
    let before: Value = ok_json(drift(&app, "?last=100").await).await;
    assert_eq!(before["reference"]["matches_server"], false, "{}", before["reference"]);
    let rebuild =
        |last: u32| app.authed(reqwest::Method::POST, &format!("/api/admin/drift/reference?last={last}")).send();
    assert_eq!(rebuild(99).await.expect("send").status(), reqwest::StatusCode::BAD_REQUEST, "under 100");
    let r: Value = ok_json(rebuild(100).await.expect("send")).await;
    assert_eq!(r["count"], 100, "{r}");
    let written = std::fs::read_to_string(dir.path().join("reference.json")).expect("reference written");
    assert!(written.contains("100 served predictions"), "the new source is recorded");
    let report: Value = ok_json(drift(&app, "?last=100").await).await;
    assert_eq!(report["reference"]["count"], 100, "the reloaded model uses it: {report}");
    assert_eq!(
        (report["reference"]["tta_flip"].clone(), report["reference"]["matches_server"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(report["drifted"], false, "a window compared with itself: {}", report["reasons"]);
    let audit = app.state.store.audit_entries(20).await.expect("audit");
    assert!(audit.iter().any(|a| a.action == "drift_reference"), "{audit:?}");
    app.stop().await;
}

/// The dashboard's drift table keeps the scores of closed days between views and recounts
/// only their feedback; today's scores, and a closed day whose predictions change (a late
/// row, an erasure), are computed again.
async fn the_dashboard_reuses_closed_days_and_recounts_their_feedback(db: &Db) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};
    let today_noon = chrono::Utc::now().date_naive().and_hms_opt(12, 0, 0).expect("noon").and_utc();
    let yesterday = today_noon - chrono::Duration::days(1);
    let clock = Arc::new(AtomicI64::new(yesterday.timestamp()));
    let app = {
        let clock = clock.clone();
        TestApp::spawn_on_with(db, move |cfg| {
            cfg.model_dir = catsdogs_testkit::default_model_dir();
            cfg.clock = Arc::new(move || {
                chrono::DateTime::from_timestamp(clock.load(Ordering::Relaxed), 0).unwrap_or_default()
            });
        })
        .await
    };
    let mut ids = Vec::new();
    for i in 0..6 {
        let class = if i % 2 == 0 { "cat" } else { "dog" };
        let r: Value = ok_json(app.post_predict("p.jpg", photo(class, i), "image/jpeg").await).await;
        ids.push((r["id"].as_str().expect("id").to_string(), r["label"].as_str() == Some(class)));
    }
    app.state.maintain_store().await;
    clock.store(today_noon.timestamp(), Ordering::Relaxed);
    let today = today_noon.date_naive();
    let per_day = || catsdogs_server::api::drift::per_day(&app.state, today, 7);
    // A prediction written at `at` (a row that reached the database late), then back to today.
    let predict_late = {
        let (clock, app) = (&clock, &app);
        move |at: i64, bytes: Vec<u8>| async move {
            clock.store(at, Ordering::Relaxed);
            let _: Value = ok_json(app.post_predict("late.jpg", bytes, "image/jpeg").await).await;
            clock.store(today_noon.timestamp(), Ordering::Relaxed);
            app.state.maintain_store().await;
        }
    };

    let first = per_day().await.expect("drift per day");
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!((first[0].day, first[0].n, first[0].feedback_accuracy), (yesterday.date_naive(), 6, None));
    assert_eq!((app.state.drift_days.len(), app.state.drift_days.hits()), (1, 0));

    // Feedback arrives today for yesterday's answers: the same scores, the new accuracy.
    let r = app.feedback(&json!({"prediction_id": ids[0].0, "correct": ids[0].1})).await;
    assert_eq!(r.status, "received");
    app.state.maintain_store().await;
    let second = per_day().await.expect("drift per day");
    assert_eq!(app.state.drift_days.hits(), 1, "yesterday's scores reused");
    let expected = if ids[0].1 { 1.0 } else { 0.0 };
    assert_eq!(second[0].feedback_accuracy, Some(expected));
    assert_eq!((second[0].psi, second[0].mmd_p_value), (first[0].psi, first[0].mmd_p_value));

    // Today is never kept; a late prediction of yesterday (a spilled row) is recounted.
    let _: Value = ok_json(app.post_predict("t.jpg", photo("cat", 20), "image/jpeg").await).await;
    predict_late(yesterday.timestamp() + 60, photo("dog", 21)).await;
    let third = per_day().await.expect("drift per day");
    assert_eq!(third.iter().map(|d| d.n).collect::<Vec<_>>(), vec![1, 7], "{third:?}");
    assert_eq!(app.state.drift_days.hits(), 1, "yesterday changed: computed again");
    assert_eq!(app.state.drift_days.len(), 2, "the new key of yesterday; today is not kept");

    // An erasure and a late row at the same instant leave count and times alike: the
    // erasure alone makes the day computed again.
    let erased = app.delete(&format!("/api/predictions/{}", ids[1].0)).await;
    assert!(erased.status().is_success(), "erasure: {}", erased.status());
    predict_late(yesterday.timestamp(), photo("dog", 22)).await;
    let fourth = per_day().await.expect("drift per day");
    assert_eq!(fourth.iter().map(|d| d.n).collect::<Vec<_>>(), vec![1, 7], "{fourth:?}");
    assert_eq!(app.state.drift_days.hits(), 1, "an erasure since: computed again");
    assert_eq!(app.state.drift_days.len(), 3);
    app.stop().await;
}
