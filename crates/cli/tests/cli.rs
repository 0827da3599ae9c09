//! The `catsdogs` binary end to end: predict (text, JSON, a bad file among good ones),
//! eval with plots, export.
use std::path::Path;
use std::process::Command;

use image::{Rgb, RgbImage};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_catsdogs"))
}

fn shipped_model() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/seed-cnn")
}

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

#[test]
fn predict_reports_bad_files_and_keeps_going() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write_images(tmp.path(), 2);
    let bad = tmp.path().join("notes.jpg");
    std::fs::write(&bad, "plain text").expect("write");
    let good = tmp.path().join("cat/0.png");
    for backend in ["onnxruntime", "candle"] {
        let out = bin()
            .args(["predict", "--backend", backend, "--model"])
            .arg(shipped_model())
            .arg(&good)
            .arg(&bad)
            .arg(tmp.path().join("dog/1.png"))
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(1), "non-zero exit when a file fails");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 2, "{stdout}");
        assert!(lines[0].contains("P(cat)=") && lines[0].contains("P(dog)="));
        assert!(String::from_utf8_lossy(&out.stderr).contains("not a supported image"));
    }
    // The default model (EfficientNet-Lite0) also says whether the image shows a cat or a dog.
    let out = bin().args(["predict", "--json"]).arg(&good).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json line");
    assert!(v["is_cat_or_dog"].is_boolean(), "{v}");
    let p_dog = v["p_dog"].as_f64().expect("p_dog");
    let p_cat = v["p_cat"].as_f64().expect("p_cat");
    assert!((p_dog + p_cat - 1.0).abs() < 1e-6);
    assert_eq!(v["label"], if p_dog >= 0.5 { "dog" } else { "cat" });
}

#[test]
fn eval_prints_metrics_and_writes_plots() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    write_images(&data, 3);
    let plots = tmp.path().join("plots");
    let out = bin().args(["eval", "--data"]).arg(&data).arg("--out").arg(&plots).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("accuracy") && stdout.contains("ROC AUC") && stdout.contains("images           6"),
        "{stdout}"
    );
    for f in ["confusion_matrix.png", "roc_curve.svg", "reliability.png"] {
        assert!(plots.join(f).is_file(), "{f}");
    }
}

#[test]
fn export_writes_an_onnx_graph_that_matches_the_shipped_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for f in ["model.json", "model.safetensors"] {
        std::fs::copy(shipped_model().join(f), tmp.path().join(f)).expect("copy");
    }
    let out = bin().args(["export", "--model"]).arg(tmp.path()).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fresh = std::fs::read(tmp.path().join("model.onnx")).expect("exported");
    let shipped = std::fs::read(shipped_model().join("model.onnx")).expect("shipped onnx");
    assert_eq!(fresh, shipped, "the committed model.onnx is what `export` writes from the committed weights");
}
