//! The feedback loop end to end on generated photos: a base model is trained and served
//! from a registry; users upload consenting images and correct the labels; the export
//! feeds `catsdogs retrain`, whose candidate lands in the registry with its lineage and a
//! report comparing it with its parent; the admin API lists both versions. Then the same
//! with an EfficientNet-Lite0 base on real photos.
//!
//! Training runs take minutes: each scenario is built once ([`Shared`]) and inspected by
//! several tests.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use catsdogs_model::Label;
use catsdogs_testkit::{default_model_dir, effnet_checkpoint, photos, seed_cnn_dir};
use serde_json::{Value, json};

use crate::helpers::{
    Api, Server, Shared, arg, block_on, catsdogs, catsdogs_json, coloured, coloured_set, json_file, models, ok, output,
    shared_secrets, stderr,
};

/// One short epoch: enough to make a model, not a good one.
const QUICK: [&str; 7] = ["--epochs", "1", "--steps-per-epoch", "3", "--batch-size", "8", "--quiet"];

/// `catsdogs models --registry REGISTRY ARGS...`, which must succeed; its stdout.
fn models_ok(registry: &Path, args: &[&str]) -> String {
    let out = models(registry, args);
    assert!(out.status.success(), "catsdogs models {args:?}: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The held-out feedback `retrain` linked in its working folder, as `class/file`.
fn held_out(work: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for class in ["cat", "dog"] {
        for e in std::fs::read_dir(work.join("feedback-holdout").join(class)).expect("holdout folder").flatten() {
            out.insert(format!("{class}/{}", e.file_name().to_string_lossy()));
        }
    }
    out
}

/// `catsdogs retrain` of the registry's current version on `train` plus the exported
/// `feedback`, `holdout` of it held out, as `version` (working folder `work`).
fn retrain(registry: &Path, train: &Path, feedback: &Path, holdout: &str, version: &str, work: &Path) -> String {
    ok(catsdogs()
        .args(["retrain", "--registry", arg(registry), "--data", arg(train), "--feedback", arg(feedback)])
        .args(["--holdout", holdout, "--version", version, "--work", arg(work)])
        .args(QUICK))
}

/// The generated-photo feedback loop, up to the first candidate.
struct Loop {
    dir: PathBuf,
    registry: PathBuf,
    train: PathBuf,
    feedback: PathBuf,
    /// The consented uploads, oldest first, with the label their user gave.
    ids: Vec<(String, Label)>,
    /// Whether each upload was kept (consent).
    kept: Vec<bool>,
    /// `/api/admin/models` while only base-1 was in the registry.
    listed_before: Value,
    /// `catsdogs data export`'s summary.
    exported: Value,
    /// What `catsdogs retrain` printed (the Markdown report).
    report_md: String,
}

/// A base model (base-1) trained on 30 generated images per class and promoted; eight
/// consented uploads, each labelled by its user, one after the other; their export; a
/// retrain with a quarter held out (cand-1).
fn build_loop(dir: &Path) -> Loop {
    let (train, registry, data) = (dir.join("train"), dir.join("registry"), dir.join("data"));
    coloured_set(&train, 30);
    ok(catsdogs()
        .args(["train", "--data", arg(&train), "--out", arg(&dir.join("base")), "--version", "base-1"])
        .args(QUICK));
    models_ok(&registry, &["add", arg(&dir.join("base"))]);
    models_ok(&registry, &["promote", "base-1"]);

    let server = Server::start_model(None, &data, &shared_secrets(dir), &registry.join("current"));
    let (ids, kept, listed_before) = block_on(async {
        let api = server.api();
        let (mut ids, mut kept) = (Vec::new(), Vec::new());
        for i in 0..8u32 {
            let label = if i % 2 == 1 { Label::Dog } else { Label::Cat };
            let answer = api.predict_consenting(coloured(label, 100 + i), true).await;
            api.label(&answer.id, label).await;
            kept.push(answer.image_kept);
            ids.push((answer.id, label));
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        (ids, kept, admin_models(&api).await)
    });
    drop(server);

    let feedback = dir.join("feedback");
    let exported = catsdogs_json("data", &["export", "--out", arg(&feedback)], &data);
    let report_md = retrain(&registry, &train, &feedback, "0.25", "cand-1", &dir.join("work"));
    Loop { dir: dir.to_path_buf(), registry, train, feedback, ids, kept, listed_before, exported, report_md }
}

static LOOP: Shared<Loop> = Shared::new(build_loop);

/// `GET /api/admin/models` (must be 200).
async fn admin_models(api: &Api) -> Value {
    api.get_ok("/api/admin/models").await
}

impl Loop {
    fn cand(&self) -> PathBuf {
        self.registry.join("cand-1")
    }

    fn card(&self) -> Value {
        json_file(&self.cand().join("model.json"))
    }

    fn base_card(&self) -> Value {
        json_file(&self.registry.join("base-1/model.json"))
    }

    fn report(&self) -> Value {
        json_file(&self.cand().join("retrain-report.json"))
    }
}

pub fn retrain_loop_every_consented_upload_is_kept() {
    let l = LOOP.get();
    assert!(l.kept.iter().all(|k| *k), "{:?}", l.kept);
}

pub fn retrain_loop_the_server_lists_its_one_promoted_loaded_version() {
    let listed = &LOOP.get().listed_before;
    assert_eq!(listed["versions"].as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed["versions"][0]["current"], true);
    assert_eq!(listed["versions"][0]["loaded"], true);
}

pub fn retrain_loop_the_export_holds_every_labelled_upload() {
    let exported = &LOOP.get().exported;
    assert_eq!((exported["cat"].clone(), exported["dog"].clone()), (json!(4), json!(4)), "{exported}");
}

pub fn retrain_prints_a_report_table_of_candidate_and_parent() {
    let md = &LOOP.get().report_md;
    assert!(md.contains("| fixed | candidate |") && md.contains("| feedback (held out) | parent |"), "{md}");
}

/// The candidate is in the registry with its lineage: parent, training data, feedback
/// used and held out; the parent's validation split is kept out.
pub fn retrain_candidate_card_records_its_lineage() {
    let l = LOOP.get();
    let (card, base_card) = (l.card(), l.base_card());
    assert_eq!(card["lineage"]["parent"], "base-1");
    assert_eq!(card["lineage"]["data_digest"], base_card["data"]["digest"], "same training folder");
    assert_eq!(card["lineage"]["feedback_train"], 6);
    assert_eq!(card["lineage"]["feedback_holdout"], 2);
    assert_eq!(card["data"]["val_cat"], base_card["data"]["val_cat"], "the parent's validation split is kept out");
    assert!(l.cand().join("model.onnx").is_file());
}

/// The candidate gets its own drift reference on the fixed set (its parent's would make
/// every window of the promoted model look drifted, or hide a drift).
pub fn retrain_candidate_has_its_own_drift_reference() {
    let l = LOOP.get();
    let (reference, base_card) = (json_file(&l.cand().join("reference.json")), l.base_card());
    let val = base_card["data"]["val_cat"].as_u64().unwrap_or(0) + base_card["data"]["val_dog"].as_u64().unwrap_or(0);
    assert_eq!(reference["model_version"], "cand-1", "{}", reference["source"]);
    assert_eq!(reference["count"], val);
    assert_eq!(reference["p_dog"].as_array().map(Vec::len), Some(val as usize));
    assert!(reference["source"].as_str().is_some_and(|s| s.contains("validation split")), "{}", reference["source"]);
}

pub fn retrain_promotes_nothing() {
    let l = LOOP.get();
    assert_eq!(std::fs::read_link(l.registry.join("current")).expect("link").to_str(), Some("base-1"));
}

/// The report: both models on the same fixed set and on the two newest examples.
pub fn retrain_report_scores_both_models_on_the_same_sets() {
    let l = LOOP.get();
    let (report, base_card) = (l.report(), l.base_card());
    let val = base_card["data"]["val_cat"].as_u64().unwrap_or(0) + base_card["data"]["val_dog"].as_u64().unwrap_or(0);
    assert_eq!(report["gate"]["fixed"]["candidate"]["count"], val);
    assert_eq!(report["gate"]["fixed"]["current"]["count"], val);
    assert_eq!(report["gate"]["feedback"]["candidate"]["count"], 2);
    assert!(report["gate"]["passed"].is_boolean());
}

pub fn retrain_holds_out_the_newest_feedback() {
    let l = LOOP.get();
    let newest: BTreeSet<String> = l.ids[6..].iter().rev().map(|(id, label)| format!("{label}/{id}.png")).collect();
    assert_eq!(held_out(&l.dir.join("work")), newest, "the newest feedback is held out");
}

/// Prediction ids stay out of the registry (it is outside retention and erasure).
pub fn retrain_report_keeps_no_prediction_ids() {
    let l = LOOP.get();
    let report_text = std::fs::read_to_string(l.cand().join("retrain-report.json")).expect("report");
    assert!(l.ids.iter().all(|(id, _)| !report_text.contains(id.as_str())), "{report_text}");
}

pub fn retrain_writes_roc_plots_and_the_markdown_report() {
    let cand = LOOP.get().cand();
    for plot in ["roc_fixed.png", "roc_fixed.svg", "roc_feedback.png", "retrain-report.md"] {
        assert!(cand.join(plot).is_file(), "{plot} missing");
    }
}

pub fn models_list_shows_the_candidate_lineage() {
    let l = LOOP.get();
    let list = models_ok(&l.registry, &["list"]);
    assert!(list.lines().any(|l| l.contains("cand-1") && l.contains("base-1 (+6x5)")), "{list}");
}

pub async fn admin_api_lists_the_candidate_beside_its_unpromoted_parent() {
    let l = LOOP.get();
    let dir = tempfile::tempdir().expect("tempdir");
    let server =
        Server::start_model(None, &dir.path().join("data"), &shared_secrets(dir.path()), &l.registry.join("current"));
    let listed = admin_models(&server.api()).await;
    let versions: Vec<&str> =
        listed["versions"].as_array().expect("versions").iter().filter_map(|v| v["version"].as_str()).collect();
    assert_eq!(versions, ["base-1", "cand-1"], "{listed}");
    assert_eq!(listed["versions"][1]["parent"], "base-1");
    assert_eq!(listed["versions"][1]["current"], false);
    assert_eq!(listed["promotions"].as_array().map(Vec::len), Some(1));
}

/// One example held out, so one class only: scored, but no ROC curve to draw. (A registry
/// of its own holding the loop's base, so that the loop's registry keeps two versions.)
pub fn retrain_scores_a_one_example_holdout_without_a_roc_curve() {
    let l = LOOP.get();
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = dir.path().join("registry");
    models_ok(&registry, &["add", arg(&l.dir.join("base"))]);
    models_ok(&registry, &["promote", "base-1"]);
    retrain(&registry, &l.train, &l.feedback, "0.125", "cand-2", &dir.path().join("work"));
    let cand2 = registry.join("cand-2");
    assert_eq!(json_file(&cand2.join("retrain-report.json"))["gate"]["feedback"]["candidate"]["count"], 1);
    assert!(cand2.join("roc_fixed.svg").is_file() && !cand2.join("roc_feedback.svg").exists());
}

/// `catsdogs retrain --base BASE` on a registry holding only `registered` (a seed-CNN card),
/// with the training folder as feedback (it has no manifest): must fail; returns stderr.
fn failed_retrain(base: &str, registered: Option<&str>) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let (train, registry) = (dir.path().join("train"), dir.path().join("registry"));
    coloured_set(&train, 2);
    std::fs::create_dir_all(&registry).expect("mkdir");
    if let Some(version) = registered {
        std::fs::create_dir_all(registry.join(version)).expect("mkdir");
        std::fs::copy(seed_cnn_dir().join("model.json"), registry.join(version).join("model.json")).expect("copy");
    }
    let out = output(catsdogs().args(["retrain", "--registry", arg(&registry), "--base", base]).args([
        "--data",
        arg(&train),
        "--feedback",
        arg(&train),
    ]));
    assert!(!out.status.success());
    stderr(&out)
}

pub fn retrain_names_a_base_missing_from_the_registry() {
    let err = failed_retrain("none", None);
    assert!(err.contains("none is not in the registry"), "{err}");
}

/// A feedback folder without the export's manifest: the error says how to make one.
pub fn retrain_without_an_exported_feedback_set_says_how_to_make_one() {
    let err = failed_retrain("m", Some("m"));
    assert!(err.contains("catsdogs data export"), "{err}");
}

/// The EfficientNet-Lite0 retrain on real photos.
struct Effnet {
    dir: PathBuf,
    registry: PathBuf,
    parent: String,
}

/// A small training folder (links to 16 photos per class) and an export-shaped feedback
/// folder of 6 other photos per class, judged over six days; the shipped default model as
/// the promoted base; a retrain from the pretrained checkpoint (eff-r1).
fn build_effnet(dir: &Path) -> Effnet {
    let photos = photos();
    let mut manifest = String::from("file,label,created_at,prediction_id\n");
    for class in ["cat", "dog"] {
        for (sub, range) in [("train", 1..17), ("feedback", 200..206)] {
            std::fs::create_dir_all(dir.join(sub).join(class)).expect("mkdir");
            for i in range {
                let (src, dst) =
                    (photos.join(class).join(format!("{i}.jpg")), dir.join(sub).join(class).join(format!("{i}.jpg")));
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
    std::fs::write(dir.join("feedback/manifest.csv"), manifest).expect("manifest");
    let registry = dir.join("registry");
    let shipped = default_model_dir();
    models_ok(&registry, &["add", arg(&shipped)]);
    let parent = json_file(&shipped.join("model.json"))["version"].as_str().expect("version").to_string();
    models_ok(&registry, &["promote", &parent]);
    ok(catsdogs()
        .args(["retrain", "--registry", arg(&registry), "--data", arg(&dir.join("train"))])
        .args(["--feedback", arg(&dir.join("feedback")), "--pretrained", arg(&effnet_checkpoint())])
        .args(["--version", "eff-r1", "--work", arg(&dir.join("work")), "--quiet"]));
    Effnet { dir: dir.to_path_buf(), registry, parent }
}

static EFFNET: Shared<Effnet> = Shared::new(build_effnet);

pub fn efficientnet_retrain_card_records_the_architecture_and_lineage() {
    let e = EFFNET.get();
    let card = json_file(&e.registry.join("eff-r1/model.json"));
    assert_eq!(card["architecture"], "efficientnet-lite0");
    assert_eq!(card["lineage"]["parent"], e.parent.as_str());
    assert_eq!(
        (card["lineage"]["feedback_train"].clone(), card["lineage"]["feedback_holdout"].clone()),
        (json!(8), json!(4))
    );
}

/// The four newest examples: the last two days, a cat and a dog each.
pub fn efficientnet_retrain_holds_out_the_two_newest_days() {
    let e = EFFNET.get();
    let expected = ["dog/205.jpg", "cat/205.jpg", "dog/204.jpg", "cat/204.jpg"].map(String::from);
    assert_eq!(held_out(&e.dir.join("work")), expected.into_iter().collect());
}

pub fn efficientnet_candidate_and_parent_classify_held_out_real_photos() {
    let report = json_file(&EFFNET.get().registry.join("eff-r1/retrain-report.json"));
    for model in ["candidate", "current"] {
        let acc = report["gate"]["feedback"][model]["accuracy"].as_f64().expect("accuracy");
        assert!(acc >= 0.75, "{model} on held-out real photos: {acc}");
    }
}

pub fn efficientnet_retrain_exports_onnx_and_the_feedback_roc_curve() {
    let cand = EFFNET.get().registry.join("eff-r1");
    assert!(cand.join("model.onnx").is_file() && cand.join("roc_feedback.svg").is_file());
}
