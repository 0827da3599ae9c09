//! `GET /api/metrics/daily` and `/api/metrics/7d`: they count exactly what happened, and
//! their arithmetic on known rows with a fixed clock; the seed's SQL view.
use std::sync::Arc;

use catsdogs_store::{FeedbackRecord, FeedbackSource, PredictionRecord, PredictionStatus, Store};
use chrono::{DateTime, TimeZone, Utc};
use image::ImageFormat;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Db, TestApp, image_bytes, on_both_databases};

on_both_databases!(
    daily_metrics_count_every_prediction_and_feedback,
    daily_metrics_on_known_rows,
    window_metrics_on_known_rows,
    sql_metrics_match_the_reference_definition_on_random_rows,
);

async fn daily_metrics_count_every_prediction_and_feedback(db: &Db) {
    let app = TestApp::spawn_on(db).await;
    let first = app.predict("a.png").await;
    let ok = app.post_predict("b.jpg", image_bytes(ImageFormat::Jpeg), "image/jpeg").await;
    assert_eq!(ok.status(), StatusCode::OK);
    for (name, bytes) in [("c.txt", b"just text".to_vec()), ("d.png", Vec::new())] {
        assert!(app.post_predict(name, bytes, "image/png").await.status().is_client_error());
    }
    let b = app
        .batch(vec![
            ("e.png".into(), image_bytes(ImageFormat::Png)),
            ("f.txt".into(), b"not an image".to_vec()),
            ("g.jpg".into(), image_bytes(ImageFormat::Jpeg)),
        ])
        .await;
    let batch_id = b.results[2].result.as_ref().expect("batch result").id.clone();
    let (ok_predictions, failed_predictions) = (2 + 2, 2 + 1);
    // Feedback rows: first (replaced, now negative), the batch's positive, the seed's negative.
    app.feedback(&json!({"prediction_id": first.id, "correct": true})).await;
    let other = if first.p_dog >= 0.5 { "cat" } else { "dog" };
    app.feedback(&json!({"prediction_id": first.id, "label": other})).await;
    app.feedback(&json!({"prediction_id": batch_id, "correct": true})).await;
    app.feedback(&json!({"feedback": "negative", "resultat_prediction": 0.8765, "input_user": "chat"})).await;

    let days = app.metrics_daily().await;
    let today = &days[0];
    assert_eq!(today["inf_count"], ok_predictions + failed_predictions, "{today}");
    assert_eq!(today["inf_success"], ok_predictions);
    assert_eq!(today["inf_errors"], failed_predictions);
    assert_eq!((today["feedback_pos"].as_u64(), today["feedback_neg"].as_u64()), (Some(1), Some(2)));
    let w = app.metrics_7d().await;
    assert_eq!(w["inf_7d"], ok_predictions + failed_predictions);
    assert_eq!(w["window_days"], 7);
    // The seed's SQL view works on this database.
    assert_eq!(app.state.store.count_rows("feedback_user").await.expect("view"), 3);
    app.stop().await;
}

fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, 0, 0).single().expect("valid date")
}

/// An app whose clock says 2030-06-15 12:00 UTC, with known predictions and feedback.
async fn app_with_known_rows(db: &Db) -> TestApp {
    let now = at(2030, 6, 15, 12);
    let app = TestApp::spawn_on_with(db, |cfg| cfg.clock = Arc::new(move || now)).await;
    insert_known_rows(&app.state.store).await;
    app
}

async fn insert_known_rows(store: &Store) {
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
            owner: None,
            signals: None,
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
}

/// Removes a float field and checks it relative to its magnitude (summation order follows
/// the database's row order).
fn take_close(v: &mut Value, field: &str, want: f64) {
    let got = v.as_object_mut().and_then(|o| o.remove(field)).and_then(|v| v.as_f64()).expect(field);
    assert!((got - want).abs() <= 1e-12 * want.abs().max(1.0), "{field}: {got} vs {want}");
}

async fn daily_metrics_on_known_rows(db: &Db) {
    let app = app_with_known_rows(db).await;
    let list = app.metrics_daily().await;
    let names: Vec<&str> = list.iter().map(|d| d["day"].as_str().unwrap_or_default()).collect();
    assert_eq!(names, ["2030-06-15", "2030-06-14", "2030-06-09", "2030-06-08"], "30-day window, newest first");
    let mut d = list[0].clone();
    take_close(&mut d, "p_dog_mean", 1.9 / 3.0);
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
    app.stop().await;
}

async fn window_metrics_on_known_rows(db: &Db) {
    let app = app_with_known_rows(db).await;
    let mut w = app.metrics_7d().await;
    take_close(&mut w, "p_dog_mean_7d", 0.58);
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

/// The database's grouped figures (`percentile_disc` on PostgreSQL, window functions on
/// SQLite) equal the reference definition computed in Rust from the same rows: 1,500 random
/// predictions over 9 days (errors, ties, P(dog) at and around the low-confidence bounds)
/// and random feedback, the first and last days of the window included.
async fn sql_metrics_match_the_reference_definition_on_random_rows(db: &Db) {
    use catsdogs_store::metrics::{FeedbackRow, PredictionRow, by_day, window};
    use rand::{Rng, SeedableRng};
    let app = TestApp::spawn_on(db).await;
    let store = &app.state.store;
    let mut rng = rand::rngs::StdRng::seed_from_u64(26);
    let today = at(2030, 6, 15, 23);
    let (mut preds, mut fbs) = (Vec::new(), Vec::new());
    for i in 0..1500u32 {
        let t = today - chrono::Duration::minutes(rng.random_range(0..9 * 24 * 60));
        let ok = rng.random_bool(0.9);
        let p_dog = ok.then(|| match rng.random_range(0..4) {
            0 => 0.2,
            1 => 0.8,
            _ => f64::from(rng.random_range(0..=1000u32)) / 1000.0,
        });
        // Coarse latencies: many ties.
        let latency_ms = f64::from(rng.random_range(1..200u32)) / 4.0;
        let label = p_dog.map(|p| if p >= 0.5 { "dog" } else { "cat" });
        let rec = PredictionRecord {
            id: format!("00000000-0000-0000-0000-{i:012}"),
            created_at: t,
            model_version: "test".into(),
            status: if ok { PredictionStatus::Ok } else { PredictionStatus::Error },
            label: label.map(|l| l.parse().expect("label")),
            p_dog,
            latency_ms,
            error_code: (!ok).then(|| "corrupt_image".into()),
            file_ref: None,
            image_ref: None,
            owner: None,
            signals: None,
        };
        store.insert_prediction(&rec).await.expect("insert");
        let day = catsdogs_store::day_of(t);
        preds.push(PredictionRow { day: day.clone(), ok, label: rec.label, p_dog, latency_ms });
        if rng.random_bool(0.3) {
            let positive = rng.random_bool(0.7);
            let f = FeedbackRecord {
                id: format!("fb{i}"),
                prediction_id: Some(rec.id.clone()),
                created_at: t,
                positive,
                true_label: None,
                p_dog,
                comment: None,
                source: FeedbackSource::V2,
            };
            store.upsert_feedback(&f).await.expect("feedback");
            fbs.push(FeedbackRow { day, positive });
        }
    }
    let end = today.date_naive();
    let start = end - chrono::Days::new(6);
    let in_window = |d: &str| d >= start.format("%Y-%m-%d").to_string().as_str();
    let (wp, wf): (Vec<_>, Vec<_>) = (
        preds.iter().filter(|p| in_window(&p.day)).cloned().collect(),
        fbs.iter().filter(|f| in_window(&f.day)).cloned().collect(),
    );
    // Means are sums in the database's order: equal to 1e-9; everything else exactly.
    let round = |v: &mut Option<f64>| *v = v.map(|x| (x * 1e9).round() / 1e9);
    let normalise = |mut days: Vec<catsdogs_store::DayMetrics>| {
        days.iter_mut().for_each(|d| {
            round(&mut d.inf_latency_avg_ms);
            round(&mut d.p_dog_mean);
        });
        days
    };
    let daily = store.daily_metrics(end, 7).await.expect("daily");
    assert_eq!(daily.len(), 7);
    assert_eq!(normalise(daily), normalise(by_day(&wp, &wf)), "daily metrics differ from the reference");
    let mut w = store.window_metrics(end, 7).await.expect("window");
    let mut reference = window(start, end, &wp, &wf);
    for m in [&mut w, &mut reference] {
        round(&mut m.latency_avg_ms_7d);
        round(&mut m.p_dog_mean_7d);
    }
    assert_eq!(w, reference, "window metrics differ from the reference");
    assert!(w.latency_p99_ms_7d.is_some() && w.low_confidence_share_7d.is_some_and(|s| s > 0.0));
    app.stop().await;
}
