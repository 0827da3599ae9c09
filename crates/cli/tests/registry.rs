//! The model registry from the command line, with a running server: add two versions,
//! promote, `kill -HUP` the server to reload, roll back.
mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::{client, get, repo};

fn catsdogs(registry: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_catsdogs"))
        .arg("models")
        .arg("--registry")
        .arg(registry)
        .args(args)
        .output()
        .expect("run catsdogs models")
}

/// A copy of the seed CNN whose card says `version`.
fn version_dir(dir: &Path, version: &str) -> std::path::PathBuf {
    let out = dir.join(format!("trained-{version}"));
    std::fs::create_dir_all(&out).expect("mkdir");
    for f in ["model.json", "model.onnx", "model.safetensors"] {
        std::fs::copy(repo().join("models/seed-cnn").join(f), out.join(f)).expect("copy");
    }
    let card = out.join("model.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&card).expect("card")).expect("json");
    v["version"] = Value::from(version);
    std::fs::write(&card, serde_json::to_string(&v).expect("json")).expect("write");
    out
}

async fn served_version(base: &str) -> String {
    let (_, health) = get(&client(), base, "/api/health").await;
    health["model"]["version"].as_str().unwrap_or_default().to_string()
}

async fn wait_for_version(base: &str, want: &str) {
    for _ in 0..100 {
        if served_version(base).await == want {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the server never served {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_reload_and_roll_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = dir.path().join("registry");
    for v in ["seed-a", "seed-b"] {
        let out = catsdogs(&registry, &["add", version_dir(dir.path(), v).to_str().expect("utf-8")]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let again = catsdogs(&registry, &["add", version_dir(dir.path(), "seed-a").to_str().expect("utf-8")]);
    assert!(!again.status.success(), "a version is added once");
    assert!(!catsdogs(&registry, &["promote", "seed-zzz"]).status.success(), "unknown version refused");
    assert!(!catsdogs(&registry, &["promote", "../seed-a"]).status.success(), "path-like name refused");
    assert!(catsdogs(&registry, &["promote", "seed-a"]).status.success());

    let secrets = support::shared_secrets(dir.path());
    let server = support::start_model(None, &dir.path().join("data"), &secrets, &registry.join("current"));
    assert_eq!(served_version(&server.base).await, "seed-a");

    assert!(catsdogs(&registry, &["promote", "seed-b"]).status.success());
    let list = String::from_utf8_lossy(&catsdogs(&registry, &["list"]).stdout).into_owned();
    assert!(list.lines().any(|l| l.starts_with("* seed-b")), "{list}");
    let hup = Command::new("kill").args(["-HUP", &server.child.id().to_string()]).status().expect("kill -HUP");
    assert!(hup.success());
    wait_for_version(&server.base, "seed-b").await;

    let out = catsdogs(&registry, &["rollback"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = client()
        .post(format!("{}/api/admin/model/reload", server.base))
        .bearer_auth(support::TOKEN)
        .send()
        .await
        .expect("reload");
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    assert_eq!(served_version(&server.base).await, "seed-a");
    let log = std::fs::read_to_string(registry.join("promotions.jsonl")).expect("promotions");
    assert_eq!(log.lines().count(), 3, "two promotions and a rollback: {log}");
}

/// The evaluation gate on real photos: a model trained for a moment on a handful of photos
/// is refused against the shipped seed CNN; a copy of the shipped model passes (not worse).
#[test]
fn the_gate_refuses_a_worse_candidate() {
    let photos = std::env::var_os("CATSDOGS_DATA_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/data/train"));
    if !photos.join("cat").is_dir() {
        eprintln!("SKIPPED: the gate test needs photos at {}", photos.display());
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = dir.path().join("registry");
    let add = |from: &Path| catsdogs(&registry, &["add", from.to_str().expect("utf-8")]);
    assert!(add(&version_dir(dir.path(), "seed-shipped")).status.success());
    assert!(add(&version_dir(dir.path(), "seed-same")).status.success());
    assert!(catsdogs(&registry, &["promote", "seed-shipped"]).status.success());
    // A barely trained candidate: one short epoch on 24 photos of each class.
    let weak = dir.path().join("weak");
    let out = Command::new(env!("CARGO_BIN_EXE_catsdogs"))
        .args(["train", "--data"])
        .arg(&photos)
        .arg("--out")
        .arg(&weak)
        .args(["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8", "--max-per-class", "24"])
        .args(["--version", "seed-weak", "--quiet"])
        .output()
        .expect("train");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(add(&weak).status.success());

    // The fixed set: 80 photos of each class (a folder of links).
    let fixed = dir.path().join("fixed");
    for class in ["cat", "dog"] {
        std::fs::create_dir_all(fixed.join(class)).expect("mkdir");
        let mut names: Vec<_> =
            std::fs::read_dir(photos.join(class)).expect("list").flatten().map(|e| e.path()).collect();
        names.sort();
        for src in names.iter().rev().take(80) {
            std::os::unix::fs::symlink(src, fixed.join(class).join(src.file_name().expect("name"))).expect("link");
        }
    }
    let gate = |v: &str| catsdogs(&registry, &["promote", v, "--gate-data", fixed.to_str().expect("utf-8")]);
    let refused = gate("seed-weak");
    assert!(!refused.status.success(), "the weak model passed the gate");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("did not pass the evaluation gate"));
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
    let same = gate("seed-same");
    assert!(same.status.success(), "{}", String::from_utf8_lossy(&same.stderr));
}
