//! The offline commands end to end: `catsdogs predict` (text and JSON, a bad file among
//! good ones), `catsdogs eval` with its plots, `catsdogs export`.
use std::path::Path;

use catsdogs_testkit::seed_cnn_dir;
use image::{Rgb, RgbImage};
use serde_json::Value;

use crate::helpers::{assert_close, catsdogs, output, stderr};

/// A labelled folder of `n` generated PNGs per class, of varied sizes.
fn write_images(dir: &Path, n: u32) {
    for (k, class) in ["cat", "dog"].iter().enumerate() {
        let d = dir.join(class);
        std::fs::create_dir_all(&d).expect("mkdir");
        for i in 0..n {
            RgbImage::from_fn(90 + i, 70, |x, y| Rgb([(x * 2) as u8, (y + i * 9) as u8, (k as u32 * 120) as u8]))
                .save(d.join(format!("{i}.png")))
                .expect("save");
        }
    }
}

/// `catsdogs predict --backend BACKEND` on a good file, a text file named `.jpg` and
/// another good file: both good files get a line, the bad one an error, the exit code 1.
fn predict_reports_the_bad_file_and_keeps_going(backend: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    write_images(tmp.path(), 2);
    let bad = tmp.path().join("notes.jpg");
    std::fs::write(&bad, "plain text").expect("write");
    let out = output(
        catsdogs()
            .args(["predict", "--backend", backend, "--model"])
            .arg(seed_cnn_dir())
            .arg(tmp.path().join("cat/0.png"))
            .arg(&bad)
            .arg(tmp.path().join("dog/1.png")),
    );
    assert_eq!(out.status.code(), Some(1), "non-zero exit when a file fails");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].contains("P(cat)=") && lines[0].contains("P(dog)="));
    assert!(stderr(&out).contains("not a supported image"));
}

pub fn predict_on_onnxruntime_reports_a_bad_file_and_keeps_going() {
    predict_reports_the_bad_file_and_keeps_going("onnxruntime");
}

pub fn predict_on_candle_reports_a_bad_file_and_keeps_going() {
    predict_reports_the_bad_file_and_keeps_going("candle");
}

/// The default model (EfficientNet-Lite0) also says whether the image shows a cat or a dog.
pub fn predict_json_with_the_default_model_says_whether_it_is_a_cat_or_dog() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write_images(tmp.path(), 1);
    let out = output(catsdogs().args(["predict", "--json"]).arg(tmp.path().join("cat/0.png")));
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json line");
    assert!(v["is_cat_or_dog"].is_boolean(), "{v}");
    let p_dog = v["p_dog"].as_f64().expect("p_dog");
    let p_cat = v["p_cat"].as_f64().expect("p_cat");
    assert_close(p_dog + p_cat, 1.0, 1e-6, "P(dog) + P(cat)");
    assert_eq!(v["label"], if p_dog >= 0.5 { "dog" } else { "cat" });
}

/// `catsdogs eval --data DATA --out PLOTS` on 3 generated images per class.
fn eval(tmp: &Path) -> (std::process::Output, std::path::PathBuf) {
    let data = tmp.join("data");
    write_images(&data, 3);
    let plots = tmp.join("plots");
    let out = output(catsdogs().args(["eval", "--data"]).arg(&data).arg("--out").arg(&plots));
    assert!(out.status.success(), "{}", stderr(&out));
    (out, plots)
}

pub fn eval_prints_accuracy_roc_auc_and_the_image_count() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (out, _) = eval(tmp.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("accuracy") && stdout.contains("ROC AUC") && stdout.contains("images           6"),
        "{stdout}"
    );
}

pub fn eval_writes_the_confusion_matrix_roc_curve_and_reliability_plots() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_, plots) = eval(tmp.path());
    for f in ["confusion_matrix.png", "roc_curve.svg", "reliability.png"] {
        assert!(plots.join(f).is_file(), "{f}");
    }
}

pub fn export_writes_the_committed_onnx_graph_from_the_committed_weights() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for f in ["model.json", "model.safetensors"] {
        std::fs::copy(seed_cnn_dir().join(f), tmp.path().join(f)).expect("copy");
    }
    let out = output(catsdogs().args(["export", "--model"]).arg(tmp.path()));
    assert!(out.status.success(), "{}", stderr(&out));
    let fresh = std::fs::read(tmp.path().join("model.onnx")).expect("exported");
    let shipped = std::fs::read(seed_cnn_dir().join("model.onnx")).expect("shipped onnx");
    assert_eq!(fresh, shipped, "the committed model.onnx is what `export` writes from the committed weights");
}

/// `catsdogs reference` on a copy of the seed CNN, with and without `--tta-flip`: the file
/// next to the card names the model, counts the photos and records the flip setting.
pub fn reference_writes_the_drift_reference_next_to_the_card() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    write_images(&data, 4);
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).expect("mkdir");
    for f in ["model.json", "model.onnx", "model.safetensors"] {
        std::fs::copy(seed_cnn_dir().join(f), model.join(f)).expect("copy");
    }
    for flip in [false, true] {
        let mut cmd = catsdogs();
        cmd.args(["reference", "--model"]).arg(&model).arg("--data").arg(&data);
        if flip {
            cmd.arg("--tta-flip");
        }
        let out = output(&mut cmd);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = std::fs::read_to_string(model.join("reference.json")).expect("reference.json written");
        let r: Value = serde_json::from_str(&text).expect("json");
        let card: Value =
            serde_json::from_str(&std::fs::read_to_string(model.join("model.json")).expect("card")).expect("json");
        assert_eq!(r["model_version"], card["version"]);
        assert_eq!(r["count"], 8);
        assert_eq!(r["p_dog"].as_array().map(Vec::len), Some(8));
        assert_eq!(r["tta_flip"], flip, "{}", r["source"]);
        assert_eq!(r["properties"].as_array().map(Vec::len), Some(6), "brightness .. aspect");
    }
}
