//! The benchmark harness runs end to end in a few seconds and writes a well-formed table
//! (CI's smoke run; the real run is `cargo run --release -p catsdogs-bench`).
use std::path::PathBuf;
use std::process::Command;

#[test]
fn harness_produces_a_table() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    // The debug `catsdogs` next to this test's own binary (target/debug/deps/..).
    let exe = std::env::current_exe().expect("test exe");
    let catsdogs = exe.parent().and_then(|d| d.parent()).expect("target dir").join("catsdogs");
    if !catsdogs.is_file() {
        panic!("{} not built; run `cargo test --workspace`", catsdogs.display());
    }
    let photos =
        std::env::var_os("CATSDOGS_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("../shared/data/train"));
    if !photos.join("cat").is_dir() {
        eprintln!("SKIPPED: benchmark smoke run needs photos at {}", photos.display());
        return;
    }
    let out = tempfile::tempdir().expect("tempdir").keep().join("latest.md");
    let status = Command::new(env!("CARGO_BIN_EXE_catsdogs-bench"))
        .current_dir(&root)
        .arg("--catsdogs")
        .arg(&catsdogs)
        .arg("--photos")
        .arg(&photos)
        .args(["--per-class", "4", "--models", "models/seed-cnn", "--clients", "1,4", "--secs", "1"])
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run the harness");
    assert!(status.success());
    let table = std::fs::read_to_string(&out).expect("table written");
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| seed-cnn")).collect();
    assert_eq!(rows.len(), 4, "{table}");
    for row in rows {
        let cols: Vec<&str> = row.split('|').map(str::trim).collect();
        assert!(cols[4].parse::<f64>().is_ok_and(|r| r > 0.0), "no throughput: {row}");
        assert_eq!(cols[7], "0", "errors in the smoke run: {row}");
    }
}
