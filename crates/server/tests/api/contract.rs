//! Contract test: schemathesis (from PyPI) generates requests from `/openapi.json` and
//! checks the running server's answers: no 5xx, every status documented, bodies and
//! content types matching the schema. Registered with `Need::Schemathesis`.
use std::path::PathBuf;

use crate::helpers::{TOKEN, TestApp};

pub async fn the_openapi_contract_holds_under_schemathesis() {
    let st = std::env::var_os("CATSDOGS_SCHEMATHESIS").map(PathBuf::from).expect("CATSDOGS_SCHEMATHESIS");
    let app = TestApp::spawn().await;
    let spec = app.url("/openapi.json");
    let work = app.dir.as_ref().expect("temp dir").path().to_path_buf();
    // schemathesis sends the token itself: the header goes on its command line.
    let auth = format!("Authorization: Bearer {TOKEN}");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&st)
            .current_dir(&work)
            .args(["run", &spec, "-H", &auth])
            .args([
                "--checks",
                "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
            ])
            .args(["--max-examples", "15", "--workers", "1", "--seed", "20261128"])
            .env("NO_COLOR", "1")
            .output()
    })
    .await
    .expect("join")
    .expect("run schemathesis");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found contract violations:\n{text}");
    let summary: Vec<&str> = text.lines().filter(|l| l.contains("generated") || l.contains("Tested")).collect();
    eprintln!("schemathesis: {}", summary.join(" | "));
    app.stop().await;
}
