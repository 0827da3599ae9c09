//! Makes sure the ONNX Runtime shared library is present for `cargo run` / `cargo test`
//! on a fresh checkout: if `.cache/onnxruntime/libonnxruntime.so` is missing, run
//! `scripts/fetch-onnxruntime.sh` (PyPI `onnxruntime` wheel). Failure is only a warning:
//! the binary then explains the fix at run time and the candle backend still works.
use std::path::Path;
use std::process::Command;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let script = root.join("scripts/fetch-onnxruntime.sh");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-env-changed=CATSDOGS_SKIP_ORT_FETCH");
    let lib = root.join(".cache/onnxruntime/libonnxruntime.so");
    if lib.exists() || std::env::var_os("CATSDOGS_SKIP_ORT_FETCH").is_some() || !script.exists() {
        return;
    }
    match Command::new("bash").arg(&script).status() {
        Ok(s) if s.success() => {}
        Ok(s) => println!(
            "cargo:warning=scripts/fetch-onnxruntime.sh failed ({s}); the onnxruntime backend will be unavailable"
        ),
        Err(e) => println!("cargo:warning=cannot run scripts/fetch-onnxruntime.sh: {e}"),
    }
}
