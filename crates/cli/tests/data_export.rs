//! The retraining data path from the command line: consented uploads with feedback come
//! out of `catsdogs data export` as a labelled folder, and `catsdogs db erase` takes the
//! image with the prediction.
mod support;

use std::process::Command;

use serde_json::{Value, json};
use support::{TOKEN, client, png};

async fn predict_consenting(c: &reqwest::Client, base: &str, image: Vec<u8>, consent: bool) -> Value {
    let part = reqwest::multipart::Part::bytes(image).file_name("pet.png");
    let form = reqwest::multipart::Form::new().part("file", part).text("consent", consent.to_string());
    let r = c.post(format!("{base}/api/predict")).bearer_auth(TOKEN).multipart(form).send().await.expect("predict");
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    r.json().await.expect("json")
}

async fn judge(c: &reqwest::Client, base: &str, id: &str, body: Value) {
    let mut body = body;
    body["prediction_id"] = json!(id);
    let r = c.post(format!("{base}/api/feedback")).bearer_auth(TOKEN).json(&body).send().await.expect("feedback");
    assert_eq!(r.status(), reqwest::StatusCode::OK);
}

/// `catsdogs GROUP --data-dir DATA ARGS...`, its last stdout line as JSON.
fn catsdogs(group: &str, args: &[&str], data: &std::path::Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_catsdogs"))
        .arg(group)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run catsdogs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().expect("a JSON line")).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consented_feedback_becomes_a_labelled_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let secrets = support::shared_secrets(dir.path());
    let server = support::start(None, &data, &secrets);
    let c = client();
    let (a, b, c_img, d) = (png(1), png(2), png(3), png(4));
    // Consented + confirmed, consented + corrected, consented without feedback, and
    // feedback without consent: only the first two are training examples.
    let pa = predict_consenting(&c, &server.base, a.clone(), true).await;
    let pb = predict_consenting(&c, &server.base, b.clone(), true).await;
    let _pc = predict_consenting(&c, &server.base, c_img, true).await;
    let pd = predict_consenting(&c, &server.base, d, false).await;
    judge(&c, &server.base, pa["id"].as_str().expect("id"), json!({"correct": true})).await;
    judge(&c, &server.base, pb["id"].as_str().expect("id"), json!({"label": "dog"})).await;
    judge(&c, &server.base, pd["id"].as_str().expect("id"), json!({"label": "cat"})).await;
    drop(server); // SIGKILL: what was acknowledged is in the database

    let out = dir.path().join("export");
    let summary = catsdogs("data", &["export", "--out", out.to_str().expect("utf-8")], &data);
    let label_a = pa["label"].as_str().expect("label");
    let expected_cat = usize::from(label_a == "cat");
    assert_eq!(summary["cat"], expected_cat, "{summary}");
    assert_eq!(summary["dog"], 2 - expected_cat, "{summary}");
    assert_eq!(summary["missing_files"], 0);
    let exported = |label: &str, id: &Value| out.join(label).join(format!("{}.png", id.as_str().expect("id")));
    assert_eq!(std::fs::read(exported(label_a, &pa["id"])).expect("confirmed example"), a);
    assert_eq!(std::fs::read(exported("dog", &pb["id"])).expect("corrected example"), b);

    // Erasure from the command line removes the kept file too.
    let images_before = walk_files(&data.join("images"));
    assert_eq!(images_before, 3, "three consented uploads, three files");
    let erased = catsdogs("db", &["erase", "--id", pb["id"].as_str().expect("id")], &data);
    assert_eq!(erased["removed"]["images"], 1, "{erased}");
    assert_eq!(walk_files(&data.join("images")), 2);
}

fn walk_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| if e.path().is_dir() { walk_files(&e.path()) } else { 1 })
        .sum()
}
