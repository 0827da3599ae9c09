//! Contract test: schemathesis (from PyPI) generates requests from `/openapi.json` and
//! checks the running server's answers: no 5xx, every status documented, bodies and
//! content types matching the schema.
mod support;

use std::path::PathBuf;

use support::{TOKEN, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_contract_holds_under_schemathesis() {
    let st = std::env::var_os("CATSDOGS_SCHEMATHESIS").map(PathBuf::from).filter(|p| p.exists());
    let Some(st) = st else {
        assert!(
            std::env::var("CATSDOGS_REQUIRE_SCHEMATHESIS").as_deref() != Ok("1"),
            "CATSDOGS_SCHEMATHESIS must point to the `st` executable"
        );
        eprintln!("SKIPPED: set CATSDOGS_SCHEMATHESIS to schemathesis' `st` (pip install schemathesis)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("contract.db").display());
    let app = TestApp::spawn(&db, dir.path().join("data"), None).await;
    let spec = app.url("/openapi.json");
    let work = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&st)
            .current_dir(&work)
            .args(["run", &spec, "-H", &format!("Authorization: Bearer {TOKEN}")])
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
