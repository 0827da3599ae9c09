//! Hot reload: the model directory changes under a running server (a promotion moves the
//! `current` link) and `POST /api/admin/model/reload` swaps it in under load with no
//! failed request; requests that start after the reload answer with the new version; a
//! directory without a loadable model is refused and the old model keeps serving.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use catsdogs_server::api::admin::{ModelsReport, ReloadReport};
use catsdogs_server::api::predict::PredictResponse;
use image::ImageFormat;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{Api, TestApp, image_bytes, model_dir};

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

/// A registry folder with two copies of the seed CNN (versions `{tag}-1` and `{tag}-2`: the
/// `catsdogs_model_info` gauge is process-wide, so each test has its own versions),
/// an empty `broken/`, and `current` pointing at the first; an app serving `current`.
struct Registry {
    v1: String,
    v2: String,
    dir: tempfile::TempDir,
    current: PathBuf,
    app: TestApp,
}

impl Registry {
    async fn start(tag: &str) -> Self {
        let (v1, v2) = (format!("reload-{tag}-1"), format!("reload-{tag}-2"));
        let dir = tempfile::tempdir().expect("tempdir");
        copy_of(&model_dir(), &dir.path().join("v1"), &v1);
        copy_of(&model_dir(), &dir.path().join("v2"), &v2);
        std::fs::create_dir_all(dir.path().join("broken")).expect("mkdir");
        let current = dir.path().join("current");
        point(&current, &dir.path().join("v1"));
        let cur = current.clone();
        let app = TestApp::spawn_with(move |cfg| cfg.model_dir = cur).await;
        Self { v1, v2, dir, current, app }
    }

    fn point_at(&self, name: &str) {
        point(&self.current, &self.dir.path().join(name));
    }
}

/// One answer: the version it names and the P(dog) it gives, or why there was none.
async fn answer(api: &Api) -> Result<(String, f64), String> {
    let r =
        api.try_post_predict("x.png", image_bytes(ImageFormat::Png), "image/png").await.map_err(|e| e.to_string())?;
    if r.status() != StatusCode::OK {
        return Err(format!("status {}", r.status()));
    }
    let v: PredictResponse = r.json().await.map_err(|e| e.to_string())?;
    Ok((v.model_version, v.p_dog))
}

/// The version one answer names.
async fn version_of_answer(api: &Api) -> Result<String, String> {
    answer(api).await.map(|(v, _)| v)
}

/// The value of the `catsdogs_model_info` series labelled with `version` on `/metrics`.
async fn model_info(app: &TestApp, version: &str) -> Option<f64> {
    let text = app.scrape().await;
    let label = format!("version=\"{version}\"");
    text.lines()
        .filter(|l| l.starts_with("catsdogs_model_info{") && l.contains(&label))
        .find_map(|l| l.rsplit(' ').next().and_then(|v| v.trim().parse().ok()))
}

pub async fn reload_swaps_the_model_under_load_without_failures() {
    let reg = Registry::start("swap").await;
    let (v1, v2) = (reg.v1.as_str(), reg.v2.as_str());
    let app = &reg.app;
    assert_eq!(version_of_answer(&app.api()).await.as_deref(), Ok(v1));
    assert_eq!(model_info(app, v1).await, Some(1.0));

    // Load: 4 clients predicting in a loop, recording (started after the reload, version or error).
    let stop = Arc::new(AtomicBool::new(false));
    let reloaded = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (api, stop, reloaded) = (app.api(), stop.clone(), reloaded.clone());
        workers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let after_reload = reloaded.load(Ordering::SeqCst);
                seen.push((after_reload, version_of_answer(&api).await));
            }
            seen
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    reg.point_at("v2");
    let report: ReloadReport = crate::helpers::ok_json(app.reload_model().await).await;
    reloaded.store(true, Ordering::SeqCst);
    assert_eq!((report.previous_version.as_str(), report.model_version.as_str()), (v1, v2));
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
    assert!(after.iter().all(|(_, r)| r.as_deref() == Ok(v2)), "old version after the reload");
    assert!(all.iter().any(|(a, r)| !a && r.as_deref() == Ok(v1)), "no request before the reload");
    // Prometheus: the replaced model's info series drops to 0, the served one reads 1.
    assert_eq!(model_info(app, v1).await, Some(0.0));
    assert_eq!(model_info(app, v2).await, Some(1.0));
    reg.app.stop().await;
}

pub async fn a_reload_is_audited_with_both_versions() {
    let reg = Registry::start("audit").await;
    let (v1, v2) = (reg.v1.as_str(), reg.v2.as_str());
    reg.point_at("v2");
    assert_eq!(reg.app.reload_model().await.status(), StatusCode::OK);
    let audit = reg.app.state.store.audit_entries(50).await.expect("audit");
    assert!(
        audit.iter().any(|a| a.action == "model_reload"
            && a.detail.as_deref().is_some_and(|d| d.starts_with(&format!("{v1} -> {v2}")))),
        "{audit:?}"
    );
    reg.app.stop().await;
}

pub async fn a_directory_without_a_model_is_refused_and_the_old_model_keeps_serving() {
    let reg = Registry::start("broken").await;
    let v2 = reg.v2.as_str();
    let app = &reg.app;
    reg.point_at("v2");
    assert_eq!(app.reload_model().await.status(), StatusCode::OK);
    reg.point_at("broken");
    assert_eq!(app.reload_model().await.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(version_of_answer(&app.api()).await.as_deref(), Ok(v2));
    assert_eq!(model_info(app, v2).await, Some(1.0), "a refused reload changes nothing");
    reg.app.stop().await;
}

pub async fn reloading_and_listing_models_need_the_token() {
    let reg = Registry::start("auth").await;
    let app = &reg.app;
    let r = app.client.post(app.url("/api/admin/model/reload")).send().await.expect("reload");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app.get_anonymous("/api/admin/models").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    reg.app.stop().await;
}

/// The registry listing (the `current` link's folder) is audited as `model_list`.
pub async fn the_registry_listing_names_the_loaded_version_and_is_audited() {
    let reg = Registry::start("list").await;
    let v2 = reg.v2.as_str();
    let app = &reg.app;
    reg.point_at("v2");
    assert_eq!(app.reload_model().await.status(), StatusCode::OK);
    let registry = reg.dir.path().display().to_string();
    let models: ModelsReport = app.get_json("/api/admin/models").await;
    assert_eq!(models.registry.as_deref(), Some(registry.as_str()), "{models:?}");
    assert_eq!(models.loaded_version.as_deref(), Some(v2), "{models:?}");
    let audit = app.state.store.audit_entries(50).await.expect("audit");
    assert!(
        audit.iter().any(|a| a.action == "model_list" && a.detail.as_deref() == Some(registry.as_str())),
        "listing not audited: {audit:?}"
    );
    reg.app.stop().await;
}

pub async fn every_answer_names_the_model_that_computed_it_across_reloads() {
    // Two models that disagree on the same image: the seed CNN and EfficientNet-Lite0.
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    copy_of(&model_dir(), &a, "race-seed");
    copy_of(&catsdogs_testkit::default_model_dir(), &b, "race-effnet");
    let current = dir.path().join("current");
    point(&current, &a);
    let cur = current.clone();
    let app = TestApp::spawn_with(move |cfg| cfg.model_dir = cur).await;

    // What each model answers for the image, alone.
    let mut expected = std::collections::HashMap::new();
    for (target, version) in [(&a, "race-seed"), (&b, "race-effnet")] {
        point(&current, target);
        assert_eq!(app.reload_model().await.status(), StatusCode::OK);
        let (v, p) = answer(&app.api()).await.expect("predict");
        assert_eq!(v, version);
        expected.insert(v, p);
    }
    let (pa, pb) = (expected["race-seed"], expected["race-effnet"]);
    assert!((pa - pb).abs() > 1e-3, "the two models must disagree to tell them apart ({pa} vs {pb})");

    // Clients predict in a loop while the model flips back and forth under them.
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..6 {
        let (api, stop) = (app.api(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                seen.push(answer(&api).await);
            }
            seen
        }));
    }
    for i in 0..8 {
        point(&current, if i % 2 == 0 { &a } else { &b });
        assert_eq!(app.reload_model().await.status(), StatusCode::OK);
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
