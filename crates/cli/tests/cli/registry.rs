//! The model registry from the command line (`catsdogs models`): add versions, promote,
//! list, roll back; a running server follows promotions on `kill -HUP` and on the admin
//! reload; the evaluation gate on real photos.
use std::path::{Path, PathBuf};
use std::process::Command;

use catsdogs_testkit::{photos, seed_cnn_dir};
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{Server, arg, catsdogs, models, ok, shared_secrets, stderr};

/// A copy of the seed CNN whose card says `version`.
fn version_dir(dir: &Path, version: &str) -> PathBuf {
    let out = dir.join(format!("trained-{version}"));
    std::fs::create_dir_all(&out).expect("mkdir");
    for f in ["model.json", "model.onnx", "model.safetensors"] {
        std::fs::copy(seed_cnn_dir().join(f), out.join(f)).expect("copy");
    }
    let card = out.join("model.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&card).expect("card")).expect("json");
    v["version"] = Value::from(version);
    std::fs::write(&card, serde_json::to_string(&v).expect("json")).expect("write");
    out
}

/// `catsdogs models add` of a seed-CNN copy named `version`, which must succeed.
fn add(registry: &Path, dir: &Path, version: &str) {
    let out = models(registry, &["add", arg(&version_dir(dir, version))]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A registry in `dir` holding seed-a and seed-b, seed-a promoted.
fn registry_with_two_versions(dir: &Path) -> PathBuf {
    let registry = dir.join("registry");
    add(&registry, dir, "seed-a");
    add(&registry, dir, "seed-b");
    assert!(models(&registry, &["promote", "seed-a"]).status.success());
    registry
}

pub fn models_add_takes_a_version_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = registry_with_two_versions(dir.path());
    let again = models(&registry, &["add", arg(&version_dir(dir.path(), "seed-a"))]);
    assert!(!again.status.success(), "a version is added once");
}

pub fn models_promote_refuses_unknown_and_path_like_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = registry_with_two_versions(dir.path());
    assert!(!models(&registry, &["promote", "seed-zzz"]).status.success(), "unknown version refused");
    assert!(!models(&registry, &["promote", "../seed-a"]).status.success(), "path-like name refused");
}

pub fn models_list_stars_the_promoted_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = registry_with_two_versions(dir.path());
    assert!(models(&registry, &["promote", "seed-b"]).status.success());
    let list = String::from_utf8_lossy(&models(&registry, &["list"]).stdout).into_owned();
    assert!(list.lines().any(|l| l.starts_with("* seed-b")), "{list}");
}

pub async fn a_server_on_the_registry_follows_a_promotion_on_sighup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = registry_with_two_versions(dir.path());
    let secrets = shared_secrets(dir.path());
    let server = Server::start_model(None, &dir.path().join("data"), &secrets, &registry.join("current"));
    let api = server.api();
    assert_eq!(api.served_version().await, "seed-a");

    assert!(models(&registry, &["promote", "seed-b"]).status.success());
    let hup = Command::new("kill").args(["-HUP", &server.pid().to_string()]).status().expect("kill -HUP");
    assert!(hup.success());
    api.wait_for_version("seed-b").await;
}

/// Promote seed-b (served after an admin reload), roll back: the admin reload serves
/// seed-a again, and the promotion log has both promotions and the rollback.
pub async fn a_rollback_is_served_after_the_admin_reload_and_logged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = registry_with_two_versions(dir.path());
    let secrets = shared_secrets(dir.path());
    let server = Server::start_model(None, &dir.path().join("data"), &secrets, &registry.join("current"));
    let api = server.api();
    assert!(models(&registry, &["promote", "seed-b"]).status.success());
    assert_eq!(api.reload_model().await, StatusCode::OK);
    assert_eq!(api.served_version().await, "seed-b");

    let out = models(&registry, &["rollback"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(api.reload_model().await, StatusCode::OK);
    assert_eq!(api.served_version().await, "seed-a");
    let log = std::fs::read_to_string(registry.join("promotions.jsonl")).expect("promotions");
    assert_eq!(log.lines().count(), 3, "two promotions and a rollback: {log}");
}

/// A registry in `dir` holding copies of the shipped seed CNN named seed-shipped
/// (promoted) and seed-same, and the fixed gate set: the last 80 photos of each class (a
/// folder of links).
fn gate_setup(dir: &Path) -> (PathBuf, PathBuf) {
    let registry = dir.join("registry");
    add(&registry, dir, "seed-shipped");
    add(&registry, dir, "seed-same");
    assert!(models(&registry, &["promote", "seed-shipped"]).status.success());
    let photos = photos();
    let fixed = dir.join("fixed");
    for class in ["cat", "dog"] {
        std::fs::create_dir_all(fixed.join(class)).expect("mkdir");
        let mut names: Vec<_> =
            std::fs::read_dir(photos.join(class)).expect("list").flatten().map(|e| e.path()).collect();
        names.sort();
        for src in names.iter().rev().take(80) {
            std::os::unix::fs::symlink(src, fixed.join(class).join(src.file_name().expect("name"))).expect("link");
        }
    }
    (registry, fixed)
}

/// `catsdogs models promote VERSION --gate-data FIXED`.
fn gate(registry: &Path, version: &str, fixed: &Path) -> std::process::Output {
    models(registry, &["promote", version, "--gate-data", arg(fixed)])
}

/// A model trained for a moment (one short epoch on 24 photos of each class) is refused
/// against the shipped seed CNN, with a report; the current version stays.
pub fn the_gate_refuses_a_barely_trained_candidate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (registry, fixed) = gate_setup(dir.path());
    let weak = dir.path().join("weak");
    ok(catsdogs()
        .args(["train", "--data"])
        .arg(photos())
        .arg("--out")
        .arg(&weak)
        .args(["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8", "--max-per-class", "24"])
        .args(["--version", "seed-weak", "--quiet"]));
    assert!(models(&registry, &["add", arg(&weak)]).status.success());

    let refused = gate(&registry, "seed-weak", &fixed);
    assert!(!refused.status.success(), "the weak model passed the gate");
    assert!(stderr(&refused).contains("did not pass the evaluation gate"));
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(registry.join("seed-weak/gate.json")).expect("gate report"))
            .expect("json");
    assert_eq!(report["passed"], false);
    assert_eq!(report["fixed"]["candidate"]["count"], 160);
    assert_eq!(
        std::fs::read_link(registry.join("current")).expect("link").to_str(),
        Some("seed-shipped"),
        "nothing changed"
    );
}

/// A copy of the shipped model is not worse than itself: it passes.
pub fn the_gate_passes_a_copy_of_the_current_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (registry, fixed) = gate_setup(dir.path());
    let same = gate(&registry, "seed-same", &fixed);
    assert!(same.status.success(), "{}", stderr(&same));
}
