//! Hot reload: the model directory changes under a running server (a promotion moves the
//! `current` link) and `POST /api/admin/model/reload` swaps it in under load with no
//! failed request; requests that start after the reload answer with the new version; a
//! directory without a loadable model is refused and the old model keeps serving.
mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use image::ImageFormat;
use reqwest::StatusCode;
use serde_json::Value;
use support::{TOKEN, TestApp, client, default_model_dir, file_form, image_bytes, model_dir};

/// A copy of the seed CNN whose card says `version`.
fn model_copy(dir: &Path, version: &str) {
    copy_of(&model_dir(), dir, version)
}

/// A copy of the model in `from` (card and the files it names) whose card says `version`.
fn copy_of(from: &Path, dir: &Path, version: &str) {
    std::fs::create_dir_all(dir).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("model dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json" || e == "onnx" || e == "safetensors") {
            std::fs::copy(&path, dir.join(path.file_name().expect("name"))).expect("copy");
        }
    }
    let card = dir.join("model.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&card).expect("card")).expect("json");
    v["version"] = Value::from(version);
    std::fs::write(&card, serde_json::to_string_pretty(&v).expect("json")).expect("write card");
}

/// Points the `current` link at `target` atomically (new link, then rename over).
fn point(current: &Path, target: &Path) {
    let tmp = current.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).expect("symlink");
    std::fs::rename(&tmp, current).expect("rename");
}

async fn predict(c: &reqwest::Client, base: &str) -> Result<String, String> {
    let r = c
        .post(format!("{base}/api/predict"))
        .bearer_auth(TOKEN)
        .multipart(file_form("x.png", image_bytes(ImageFormat::Png), "image/png"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != StatusCode::OK {
        return Err(format!("status {}", r.status()));
    }
    let v: Value = r.json().await.map_err(|e| e.to_string())?;
    Ok(v["model_version"].as_str().unwrap_or_default().to_string())
}

/// The value of the `catsdogs_model_info` series labelled with `version` on `/metrics`.
async fn model_info(c: &reqwest::Client, app: &TestApp, version: &str) -> Option<f64> {
    let r = c.get(app.url("/metrics")).bearer_auth(TOKEN).send().await.expect("scrape");
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.expect("text");
    let label = format!("version=\"{version}\"");
    text.lines()
        .filter(|l| l.starts_with("catsdogs_model_info{") && l.contains(&label))
        .find_map(|l| l.rsplit(' ').next().and_then(|v| v.trim().parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_the_model_under_load_without_failures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (v1, v2, broken) = (dir.path().join("v1"), dir.path().join("v2"), dir.path().join("broken"));
    model_copy(&v1, "reload-test-1");
    model_copy(&v2, "reload-test-2");
    std::fs::create_dir_all(&broken).expect("mkdir");
    let current = dir.path().join("current");
    point(&current, &v1);
    let data = dir.path().join("data");
    let db = format!("sqlite://{}?mode=rwc", data.join("catsdogs.db").display());
    let cur = current.clone();
    let app = TestApp::spawn_with(&db, data, None, move |cfg| cfg.model_dir = cur).await;
    let c = client();
    assert_eq!(predict(&c, &app.base).await.as_deref(), Ok("reload-test-1"));
    assert_eq!(model_info(&c, &app, "reload-test-1").await, Some(1.0));

    // Load: 4 clients predicting in a loop, recording (start order, version or error).
    let stop = Arc::new(AtomicBool::new(false));
    let reloaded = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (c, base, stop, reloaded) = (c.clone(), app.base.clone(), stop.clone(), reloaded.clone());
        workers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let after_reload = reloaded.load(Ordering::SeqCst);
                seen.push((after_reload, predict(&c, &base).await));
            }
            seen
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    point(&current, &v2);
    let r = c.post(app.url("/api/admin/model/reload")).bearer_auth(TOKEN).send().await.expect("reload");
    assert_eq!(r.status(), StatusCode::OK);
    let report: Value = r.json().await.expect("json");
    reloaded.store(true, Ordering::SeqCst);
    assert_eq!(
        (report["previous_version"].as_str(), report["model_version"].as_str()),
        (Some("reload-test-1"), Some("reload-test-2"))
    );
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.expect("worker"));
    }
    let failures: Vec<_> = all.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(failures.is_empty(), "failed requests during the reload: {failures:?}");
    let after: Vec<_> = all.iter().filter(|(a, _)| *a).collect();
    assert!(!after.is_empty(), "no request after the reload");
    assert!(after.iter().all(|(_, r)| r.as_deref() == Ok("reload-test-2")), "old version after the reload");
    assert!(all.iter().any(|(a, r)| !a && r.as_deref() == Ok("reload-test-1")), "no request before the reload");
    // Prometheus: the replaced model's info series drops to 0, the served one reads 1.
    assert_eq!(model_info(&c, &app, "reload-test-1").await, Some(0.0));
    assert_eq!(model_info(&c, &app, "reload-test-2").await, Some(1.0));

    // A directory without a model is refused; the current model keeps serving.
    point(&current, &broken);
    let r = c.post(app.url("/api/admin/model/reload")).bearer_auth(TOKEN).send().await.expect("reload");
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(predict(&c, &app.base).await.as_deref(), Ok("reload-test-2"));
    assert_eq!(model_info(&c, &app, "reload-test-2").await, Some(1.0), "a refused reload changes nothing");
    let audit = app.state.store.audit_entries(50).await.expect("audit");
    assert!(
        audit.iter().any(|a| a.action == "model_reload"
            && a.detail.as_deref().is_some_and(|d| d.starts_with("reload-test-1 -> reload-test-2"))),
        "{audit:?}"
    );
    // Without a token: refused.
    let r = c.post(app.url("/api/admin/model/reload")).send().await.expect("reload");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // The registry listing (the `current` link's folder) is audited as `model_list`.
    let registry = dir.path().display().to_string();
    let r = c.get(app.url("/api/admin/models")).bearer_auth(TOKEN).send().await.expect("models");
    assert_eq!(r.status(), StatusCode::OK);
    let models: Value = r.json().await.expect("json");
    assert_eq!(models["registry"].as_str(), Some(registry.as_str()), "{models}");
    assert_eq!(models["loaded_version"], "reload-test-2", "{models}");
    let audit = app.state.store.audit_entries(50).await.expect("audit");
    assert!(
        audit.iter().any(|a| a.action == "model_list" && a.detail.as_deref() == Some(registry.as_str())),
        "listing not audited: {audit:?}"
    );
    let r = c.get(app.url("/api/admin/models")).send().await.expect("models");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}

/// One answer: the version it names and the P(dog) it gives.
async fn predict_scored(c: &reqwest::Client, base: &str) -> Result<(String, f64), String> {
    let r = c
        .post(format!("{base}/api/predict"))
        .bearer_auth(TOKEN)
        .multipart(file_form("x.png", image_bytes(ImageFormat::Png), "image/png"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != StatusCode::OK {
        return Err(format!("status {}", r.status()));
    }
    let v: Value = r.json().await.map_err(|e| e.to_string())?;
    Ok((v["model_version"].as_str().unwrap_or_default().to_string(), v["p_dog"].as_f64().unwrap_or(f64::NAN)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_names_the_model_that_computed_it_across_reloads() {
    // Two models that disagree on the same image: the seed CNN and EfficientNet-Lite0.
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    copy_of(&model_dir(), &a, "race-seed");
    copy_of(&default_model_dir(), &b, "race-effnet");
    let current = dir.path().join("current");
    point(&current, &a);
    let data = dir.path().join("data");
    let db = format!("sqlite://{}?mode=rwc", data.join("catsdogs.db").display());
    let cur = current.clone();
    let app = TestApp::spawn_with(&db, data, None, move |cfg| cfg.model_dir = cur).await;
    let c = client();
    let reload = |c: reqwest::Client, url: String| async move {
        let r = c.post(url).bearer_auth(TOKEN).send().await.expect("reload");
        assert_eq!(r.status(), StatusCode::OK);
    };

    // What each model answers for the image, alone.
    let mut expected = std::collections::HashMap::new();
    for (target, version) in [(&a, "race-seed"), (&b, "race-effnet")] {
        point(&current, target);
        reload(c.clone(), app.url("/api/admin/model/reload")).await;
        let (v, p) = predict_scored(&c, &app.base).await.expect("predict");
        assert_eq!(v, version);
        expected.insert(v, p);
    }
    let (pa, pb) = (expected["race-seed"], expected["race-effnet"]);
    assert!((pa - pb).abs() > 1e-3, "the two models must disagree to tell them apart ({pa} vs {pb})");

    // Clients predict in a loop while the model flips back and forth under them.
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..6 {
        let (c, base, stop) = (c.clone(), app.base.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                seen.push(predict_scored(&c, &base).await);
            }
            seen
        }));
    }
    for i in 0..8 {
        point(&current, if i % 2 == 0 { &a } else { &b });
        reload(c.clone(), app.url("/api/admin/model/reload")).await;
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut answers = Vec::new();
    for w in workers {
        answers.extend(w.await.expect("worker"));
    }
    let answers: Vec<(String, f64)> = answers.into_iter().collect::<Result<_, _>>().expect("no request fails");
    let by_version = |v: &str| answers.iter().filter(|(x, _)| x == v).count();
    assert!(by_version("race-seed") > 0 && by_version("race-effnet") > 0, "both models answered: {answers:?}");
    for (version, p_dog) in &answers {
        let want = expected[version];
        // The same graph on the same image: equal up to batching's float reassociation.
        assert!(
            (p_dog - want).abs() <= 1e-4 * want.abs().max(1.0),
            "{version} answered {p_dog}, its graph gives {want}"
        );
    }
    app.stop().await;
}
