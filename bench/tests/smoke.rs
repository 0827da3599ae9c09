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
        .args(["--forward-secs", "0.2", "--train-secs", "0.5", "--no-reference"])
        .args(["--sizes", "1mp", "--size-clients", "2", "--size-per-class", "2", "--size-model", "models/seed-cnn"])
        .args(["--warmup-restarts", "2", "--steady-secs", "10", "--scale-rows", "3600"])
        .args(["--explain-requests", "3", "--explain-rounds", "5", "--drift-rows", "300"])
        .args(["--tracing-requests", "3", "--tracing-clients", "2"])
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run the harness");
    assert!(status.success());
    let table = std::fs::read_to_string(&out).expect("table written");
    let cols = |row: &str| row.split('|').map(|c| c.trim().to_string()).collect::<Vec<_>>();
    let rows: Vec<Vec<String>> = table.lines().filter(|l| l.starts_with("| seed-cnn")).map(cols).collect();
    let forward: Vec<_> =
        rows.iter().filter(|c| c[2].contains("ONNX Runtime") || c[2].starts_with("catsdogs")).collect();
    assert_eq!(forward.len(), 2, "backend and bare session rows: {table}");
    for c in forward {
        assert!(c[5].parse::<f64>().is_ok_and(|r| r > 0.0), "no forward throughput: {c:?}");
    }
    let e2e: Vec<_> = rows.iter().filter(|c| c[2] == "off" || c[2] == "on").collect();
    assert_eq!(e2e.len(), 4, "{table}");
    for c in e2e {
        assert!(c[4].parse::<f64>().is_ok_and(|r| r > 0.0), "no throughput: {c:?}");
        assert_eq!(c[7], "0", "errors in the smoke run: {c:?}");
    }
    let training = table.lines().find(|l| l.starts_with("| catsdogs (candle)")).expect("training row");
    assert!(cols(training)[2].parse::<f64>().is_ok_and(|r| r > 0.0), "{training}");
    // Section 4: generated 1 MP JPEGs, served without errors, with their decode time.
    let sized = table.lines().find(|l| l.starts_with("| 1 MP JPEG") && l.contains("| catsdogs |")).expect("1 MP row");
    let c = cols(sized);
    assert!(c[2].parse::<f64>().is_ok_and(|kib| kib > 20.0), "upscaled JPEGs are larger: {sized}");
    let number = |i: usize| c[i].parse::<f64>().unwrap_or(f64::NAN);
    assert!(number(6) > number(3), "the one-client budget adds the forward pass to the decode: {sized}");
    assert!(number(9) > 0.0 && c[13] == "0", "{sized}");
    // Section 7: the metrics routes answer on a filled database and the purge takes the
    // oldest day (3,600 rows over 180 days: 20 a day).
    let scale = table.lines().find(|l| l.starts_with("| SQLite |")).expect("scale row");
    let c = cols(scale);
    assert!((3..=5).all(|i| c[i].parse::<f64>().is_ok_and(|ms| ms > 0.0)), "{scale}");
    assert!(c[7].contains("(20 predictions"), "{scale}");
    // Section 6: resident memory sampled over random phases, and the throughput after them.
    let steady_header = table.lines().position(|l| l.starts_with("| phases |")).expect("steady-memory table");
    let row = table.lines().nth(steady_header + 2).expect("steady-memory row");
    let c = cols(row);
    assert!(c[1].parse::<usize>().is_ok_and(|n| n >= 2), "several phases: {row}");
    assert!(c[2].parse::<f64>().is_ok_and(|m| m > 10.0) && c[3].parse::<f64>().is_ok_and(|m| m > 10.0), "{row}");
    assert!(c[7].parse::<f64>().is_ok_and(|r| r > 0.0), "{row}");
    // Section 5: the first request after a start and after a reload, timed.
    for moment in ["| after start |", "| after reload |"] {
        let row = table.lines().find(|l| l.starts_with(moment)).expect("warm-up row");
        let c = cols(row);
        assert!(c[3].parse::<f64>().is_ok_and(|ms| ms > 0.0) && c[4].parse::<f64>().is_ok_and(|ms| ms > 0.0), "{row}");
    }
    // Section 8: the graphs with and without their extra outputs, and explain=true end to end.
    let forward = table.lines().find(|l| l.starts_with("| seed-cnn | 8 |")).expect("explain forward row");
    assert!(cols(forward)[3].parse::<f64>().is_ok_and(|ms| ms > 0.0), "{forward}");
    let e2e = table.lines().find(|l| l.starts_with("| 12 MP JPEG |")).expect("explain end-to-end row");
    let c = cols(e2e);
    assert!(c[2].parse::<f64>().is_ok_and(|ms| ms > 0.0) && c[3].parse::<f64>().is_ok_and(|ms| ms > 0.0), "{e2e}");
    // Section 9: the drift report answers on a filled database.
    let drift = table.lines().find(|l| l.starts_with("| today (the hourly check) |")).expect("drift row");
    assert!(cols(drift)[2].parse::<f64>().is_ok_and(|ms| ms > 0.0), "{drift}");
    // Section 10: a server exporting every span to the harness's receiver, against one
    // without; the section fails by itself when no span arrives.
    for load in [
        "| one client, small (shared photos) (ms) |",
        "| one client, 12 MP JPEG (ms) |",
        "| 2 clients, small (req/s) |",
    ] {
        let row = table.lines().find(|l| l.starts_with(load)).expect("tracing row");
        let c = cols(row);
        assert!(c[2].parse::<f64>().is_ok_and(|x| x > 0.0) && c[3].parse::<f64>().is_ok_and(|x| x > 0.0), "{row}");
    }
    assert!(table.contains("spans per request"), "{table}");
}
