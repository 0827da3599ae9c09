//! The feedback loop end to end on generated photos: a base model is trained and served
//! from a registry; users upload consenting images and correct the labels; the export
//! feeds `catsdogs retrain`, whose candidate lands in the registry with its lineage and a
//! report comparing it with its parent; the admin API lists both versions.
mod support;

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use support::{TOKEN, catsdogs_json, client, judge, predict_consenting};

/// A PNG whose colour says the class (cats warm, dogs cool) under per-image noise.
fn coloured(dog: bool, seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(96, 96, |x, y| {
        let n = (x.wrapping_mul(7919) ^ y.wrapping_mul(104_729) ^ seed.wrapping_mul(2_654_435_761)) % 60;
        let (warm, cool) = (170 + n as u8, 40 + n as u8);
        if dog { image::Rgb([cool, 90, warm]) } else { image::Rgb([warm, 90, cool]) }
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img).write_to(&mut out, image::ImageFormat::Png).expect("encode");
    out.into_inner()
}

fn generated_set(dir: &Path, per_class: u32) {
    for (class, dog) in [("cat", false), ("dog", true)] {
        std::fs::create_dir_all(dir.join(class)).expect("mkdir");
        for i in 0..per_class {
            std::fs::write(dir.join(class).join(format!("{i}.png")), coloured(dog, i)).expect("write");
        }
    }
}

fn catsdogs(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_catsdogs")).args(args).env_remove("CATSDOGS_REGISTRY").output().expect("run")
}

fn ok(out: std::process::Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The held-out feedback `retrain` linked in its working folder, as `class/file`.
fn held_out(work: &Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for class in ["cat", "dog"] {
        for e in std::fs::read_dir(work.join("feedback-holdout").join(class)).expect("holdout folder").flatten() {
            out.insert(format!("{class}/{}", e.file_name().to_string_lossy()));
        }
    }
    out
}

fn json_file(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .expect("json")
}

async fn admin_models(base: &str) -> Value {
    let r = client().get(format!("{base}/api/admin/models")).bearer_auth(TOKEN).send().await.expect("models");
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    r.json().await.expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_flows_into_a_retrained_candidate_with_a_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_string();
    let (train, registry, data) = (p("train"), p("registry"), dir.path().join("data"));
    generated_set(Path::new(&train), 30);
    let quick = ["--epochs", "1", "--steps-per-epoch", "3", "--batch-size", "8", "--quiet"];
    ok(catsdogs(&[&["train", "--data", &train, "--out", &p("base"), "--version", "base-1"], &quick[..]].concat()));
    ok(catsdogs(&["models", "--registry", &registry, "add", &p("base")]));
    ok(catsdogs(&["models", "--registry", &registry, "promote", "base-1"]));

    // Eight consented uploads, each labelled by its user, one after the other.
    let secrets = support::shared_secrets(dir.path());
    let server = support::start_model(None, &data, &secrets, &Path::new(&registry).join("current"));
    let c = client();
    let mut ids = Vec::new();
    for i in 0..8u32 {
        let dog = i % 2 == 1;
        let answer = predict_consenting(&c, &server.base, coloured(dog, 100 + i), true).await;
        assert_eq!(answer["image_kept"], true, "{answer}");
        let id = answer["id"].as_str().expect("id").to_string();
        judge(&c, &server.base, &id, json!({"label": if dog { "dog" } else { "cat" }})).await;
        ids.push((id, dog));
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let listed = admin_models(&server.base).await;
    assert_eq!(listed["versions"].as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed["versions"][0]["current"], true);
    assert_eq!(listed["versions"][0]["loaded"], true);
    drop(server);

    let feedback = p("feedback");
    let exported = catsdogs_json("data", &["export", "--out", &feedback], &data);
    assert_eq!((exported["cat"].clone(), exported["dog"].clone()), (json!(4), json!(4)), "{exported}");

    // Both retrains differ only in the held-out share, the version and the working folder.
    let retrain_with = |holdout: &str, version: &str, work: &str| {
        let args =
            ["retrain", "--registry", &registry, "--data", &train, "--feedback", &feedback, "--holdout", holdout];
        let named = ["--version", version, "--work", &p(work)];
        catsdogs(&[&args[..], &named[..], &quick[..]].concat())
    };
    let report_md = ok(retrain_with("0.25", "cand-1", "work"));
    assert!(report_md.contains("| fixed | candidate |") && report_md.contains("| feedback (held out) | parent |"));

    // The candidate is in the registry with its lineage; nothing was promoted.
    let cand = Path::new(&registry).join("cand-1");
    let card = json_file(&cand.join("model.json"));
    let base_card = json_file(&Path::new(&registry).join("base-1/model.json"));
    assert_eq!(card["lineage"]["parent"], "base-1");
    assert_eq!(card["lineage"]["data_digest"], base_card["data"]["digest"], "same training folder");
    assert_eq!(card["lineage"]["feedback_train"], 6);
    assert_eq!(card["lineage"]["feedback_holdout"], 2);
    assert_eq!(card["data"]["val_cat"], base_card["data"]["val_cat"], "the parent's validation split is kept out");
    assert!(cand.join("model.onnx").is_file());
    assert_eq!(std::fs::read_link(Path::new(&registry).join("current")).expect("link").to_str(), Some("base-1"));

    // The report: both models on the same fixed set and on the two newest examples.
    let report = json_file(&cand.join("retrain-report.json"));
    let val = base_card["data"]["val_cat"].as_u64().unwrap_or(0) + base_card["data"]["val_dog"].as_u64().unwrap_or(0);
    assert_eq!(report["gate"]["fixed"]["candidate"]["count"], val);
    assert_eq!(report["gate"]["fixed"]["current"]["count"], val);
    assert_eq!(report["gate"]["feedback"]["candidate"]["count"], 2);
    let newest: Vec<String> =
        ids[6..].iter().rev().map(|(id, dog)| format!("{}/{id}.png", if *dog { "dog" } else { "cat" })).collect();
    assert_eq!(held_out(Path::new(&p("work"))), newest.into_iter().collect(), "the newest feedback is held out");
    // Prediction ids stay out of the registry (it is outside retention and erasure).
    let report_text = std::fs::read_to_string(cand.join("retrain-report.json")).expect("report");
    assert!(ids.iter().all(|(id, _)| !report_text.contains(id.as_str())), "{report_text}");
    assert!(report["gate"]["passed"].is_boolean());
    for plot in ["roc_fixed.png", "roc_fixed.svg", "roc_feedback.png", "retrain-report.md"] {
        assert!(cand.join(plot).is_file(), "{plot} missing");
    }

    let list = ok(catsdogs(&["models", "--registry", &registry, "list"]));
    assert!(list.lines().any(|l| l.contains("cand-1") && l.contains("base-1 (+6x5)")), "{list}");
    let server = support::start_model(None, &data, &secrets, &Path::new(&registry).join("current"));
    let listed = admin_models(&server.base).await;
    let versions: Vec<&str> =
        listed["versions"].as_array().expect("versions").iter().filter_map(|v| v["version"].as_str()).collect();
    assert_eq!(versions, ["base-1", "cand-1"], "{listed}");
    assert_eq!(listed["versions"][1]["parent"], "base-1");
    assert_eq!(listed["versions"][1]["current"], false);
    assert_eq!(listed["promotions"].as_array().map(Vec::len), Some(1));
    drop(server);

    // One example held out, so one class only: scored, but no ROC curve to draw.
    ok(retrain_with("0.125", "cand-2", "work2"));
    let cand2 = Path::new(&registry).join("cand-2");
    assert_eq!(json_file(&cand2.join("retrain-report.json"))["gate"]["feedback"]["candidate"]["count"], 1);
    assert!(cand2.join("roc_fixed.svg").is_file() && !cand2.join("roc_feedback.svg").exists());
}

#[test]
fn retraining_without_an_exported_feedback_set_says_how_to_make_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_string();
    generated_set(Path::new(&p("train")), 2);
    std::fs::create_dir_all(p("registry")).expect("mkdir");
    let out = catsdogs(&[
        "retrain",
        "--registry",
        &p("registry"),
        "--base",
        "none",
        "--data",
        &p("train"),
        "--feedback",
        &p("train"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("none is not in the registry"), "{err}");
    let reg = p("registry");
    std::fs::create_dir_all(Path::new(&reg).join("m")).expect("mkdir");
    std::fs::copy(support::repo().join("models/seed-cnn/model.json"), Path::new(&reg).join("m/model.json"))
        .expect("copy");
    let out =
        catsdogs(&["retrain", "--registry", &reg, "--base", "m", "--data", &p("train"), "--feedback", &p("train")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("catsdogs data export"), "{err}");
}

/// Real photos for the EfficientNet case (`CATSDOGS_DATA_DIR`, else `../shared/data/train`)
/// and the pretrained checkpoint; skipped without them unless CI requires them.
fn photos_and_checkpoint() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let photos = std::env::var_os("CATSDOGS_DATA_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| support::repo().join("../shared/data/train"));
    let pth = std::env::var_os("CATSDOGS_EFFNET_PTH")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| support::repo().join(".cache/efficientnet/efficientnet-lite0-57934424.pth"));
    let required = std::env::var("CATSDOGS_REQUIRE_EFFNET").is_ok_and(|v| v == "1");
    if !photos.join("cat").is_dir() || !pth.is_file() {
        assert!(!required, "photos at {} or checkpoint {} missing", photos.display(), pth.display());
        eprintln!("SKIPPED: needs photos at {} and the checkpoint {}", photos.display(), pth.display());
        return None;
    }
    Some((photos, pth))
}

#[test]
fn an_efficientnet_base_refits_its_head_on_real_feedback() {
    let Some((photos, pth)) = photos_and_checkpoint() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_string();
    // A small training folder (links to 16 photos per class) and an export-shaped feedback
    // folder of 6 other photos per class, judged over six days.
    let mut manifest = String::from("file,label,created_at,prediction_id\n");
    for class in ["cat", "dog"] {
        for (sub, range) in [("train", 1..17), ("feedback", 200..206)] {
            std::fs::create_dir_all(dir.path().join(sub).join(class)).expect("mkdir");
            for i in range {
                let (src, dst) = (
                    photos.join(class).join(format!("{i}.jpg")),
                    dir.path().join(sub).join(class).join(format!("{i}.jpg")),
                );
                std::os::unix::fs::symlink(&src, &dst).expect("link");
                if sub == "feedback" {
                    let hour = if class == "cat" { 10 } else { 11 };
                    manifest.push_str(&format!(
                        "{class}/{i}.jpg,{class},2026-11-{:02}T{hour}:00:00Z,{class}{i}\n",
                        i - 190
                    ));
                }
            }
        }
    }
    std::fs::write(dir.path().join("feedback/manifest.csv"), manifest).expect("manifest");
    let registry = p("registry");
    let shipped = support::repo().join("models/effnet-lite0");
    ok(catsdogs(&["models", "--registry", &registry, "add", shipped.to_str().expect("utf-8")]));
    let parent = json_file(&shipped.join("model.json"))["version"].as_str().expect("version").to_string();
    ok(catsdogs(&["models", "--registry", &registry, "promote", &parent]));
    ok(catsdogs(&[
        "retrain",
        "--registry",
        &registry,
        "--data",
        &p("train"),
        "--feedback",
        &p("feedback"),
        "--pretrained",
        pth.to_str().expect("utf-8"),
        "--version",
        "eff-r1",
        "--work",
        &p("work"),
        "--quiet",
    ]));

    let cand = Path::new(&registry).join("eff-r1");
    let card = json_file(&cand.join("model.json"));
    assert_eq!(card["architecture"], "efficientnet-lite0");
    assert_eq!(card["lineage"]["parent"], parent.as_str());
    assert_eq!(
        (card["lineage"]["feedback_train"].clone(), card["lineage"]["feedback_holdout"].clone()),
        (json!(8), json!(4))
    );
    let report = json_file(&cand.join("retrain-report.json"));
    // The four newest examples: the last two days, a cat and a dog each.
    let expected = ["dog/205.jpg", "cat/205.jpg", "dog/204.jpg", "cat/204.jpg"].map(String::from);
    assert_eq!(held_out(&dir.path().join("work")), expected.into_iter().collect());
    for model in ["candidate", "current"] {
        let acc = report["gate"]["feedback"][model]["accuracy"].as_f64().expect("accuracy");
        assert!(acc >= 0.75, "{model} on held-out real photos: {acc}");
    }
    assert!(cand.join("model.onnx").is_file() && cand.join("roc_feedback.svg").is_file());
}
