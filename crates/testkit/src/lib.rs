//! The test harness of every integration-test binary in the workspace (`harness = false`,
//! one binary per crate). A test declares what it needs ([`Need`]: the photos, PostgreSQL,
//! Chromium...); when something is missing the test is reported as *ignored*, its reason in
//! brackets on its line and again in a `SKIPPED` line, never as passed. Where `.ci/run`
//! sets the matching `CATSDOGS_REQUIRE_*=1`, a missing need fails the test instead.
//!
//! ```text
//! fn main() -> std::process::ExitCode {
//!     catsdogs_testkit::run(vec![
//!         catsdogs_testkit::sync_test!(preprocess::any_shape_becomes_the_input_size),
//!         catsdogs_testkit::async_test!(api::predict_answers_the_seed_fields).needs(&[Need::Photos]),
//!     ])
//! }
//! ```
pub mod pg;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;

pub use libtest_mimic;

/// Something a test cannot run without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// The shared training photos (`CATSDOGS_DATA_DIR`, else `../shared/data/train`).
    Photos,
    /// PostgreSQL server binaries (`initdb`, `pg_ctl`).
    Postgres,
    /// `chromium` and `chromedriver`.
    Chromium,
    /// schemathesis' `st` (`CATSDOGS_SCHEMATHESIS`).
    Schemathesis,
    /// A Python with `tritonclient[http]` (`CATSDOGS_TRITON_PYTHON`).
    Triton,
    /// `kubernetes-validate` (`CATSDOGS_K8S_VALIDATE`).
    K8sValidate,
    /// The EfficientNet-Lite0 checkpoint (scripts/fetch-efficientnet-lite0.sh).
    EffnetCheckpoint,
}

impl Need {
    /// The variable that turns this need's absence into a failure (set by `.ci/run`).
    pub fn require_var(self) -> &'static str {
        match self {
            Need::Photos => "CATSDOGS_REQUIRE_PHOTOS",
            Need::Postgres => "CATSDOGS_REQUIRE_POSTGRES",
            Need::Chromium => "CATSDOGS_REQUIRE_BROWSER",
            Need::Schemathesis => "CATSDOGS_REQUIRE_SCHEMATHESIS",
            Need::Triton => "CATSDOGS_REQUIRE_TRITON",
            Need::K8sValidate => "CATSDOGS_REQUIRE_K8S_VALIDATE",
            Need::EffnetCheckpoint => "CATSDOGS_REQUIRE_EFFNET",
        }
    }

    /// Whether `.ci/run` (or the caller) requires it.
    pub fn required(self) -> bool {
        std::env::var(self.require_var()).is_ok_and(|v| v == "1")
    }

    /// `Ok` when present, else why not (with how to get it).
    pub fn check(self) -> Result<(), String> {
        match self {
            Need::Photos => photos_dir().map(drop).ok_or_else(|| {
                format!("no photos (cat/, dog/) at {} (set CATSDOGS_DATA_DIR)", photos_path().display())
            }),
            Need::Postgres => pg::find_bin()
                .map(drop)
                .ok_or_else(|| "PostgreSQL server binaries (initdb, pg_ctl) not found (apt install postgresql)".into()),
            Need::Chromium => {
                which("chromium", "CATSDOGS_CHROMIUM").ok_or("no `chromium` on PATH (apt install chromium)")?;
                which("chromedriver", "CATSDOGS_CHROMEDRIVER")
                    .ok_or("no `chromedriver` on PATH (apt install chromium-driver)")?;
                Ok(())
            }
            Need::Schemathesis => env_file("CATSDOGS_SCHEMATHESIS", "schemathesis' `st` (pip install schemathesis)"),
            Need::Triton => env_file("CATSDOGS_TRITON_PYTHON", "a Python with tritonclient[http]"),
            Need::K8sValidate => {
                env_file("CATSDOGS_K8S_VALIDATE", "kubernetes-validate (pip install kubernetes-validate)")
            }
            Need::EffnetCheckpoint => {
                let p = effnet_checkpoint();
                if p.is_file() {
                    Ok(())
                } else {
                    Err(format!(
                        "no EfficientNet-Lite0 checkpoint at {} (run scripts/fetch-efficientnet-lite0.sh)",
                        p.display()
                    ))
                }
            }
        }
    }
}

fn env_file(var: &str, what: &str) -> Result<(), String> {
    match std::env::var_os(var).map(PathBuf::from) {
        Some(p) if p.is_file() => Ok(()),
        Some(p) => Err(format!("{var}={} is not a file ({what})", p.display())),
        None => Err(format!("set {var} to {what}")),
    }
}

/// The repository root.
pub fn repo() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// Where the photos are looked for: `CATSDOGS_DATA_DIR`, else `../shared/data/train`
/// beside the repository.
fn photos_path() -> PathBuf {
    std::env::var_os("CATSDOGS_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| repo().join("../shared/data/train"))
}

/// The photo folder (`cat/`, `dog/`), if present.
pub fn photos_dir() -> Option<PathBuf> {
    let dir = photos_path();
    (dir.join("cat").is_dir() && dir.join("dog").is_dir()).then_some(dir)
}

/// The photo folder, for a test that declared [`Need::Photos`].
pub fn photos() -> PathBuf {
    photos_dir().unwrap_or_else(|| panic!("{}", Need::Photos.check().err().unwrap_or_default()))
}

/// The EfficientNet-Lite0 checkpoint's path (`CATSDOGS_EFFNET_PTH`, else the fetch script's).
pub fn effnet_checkpoint() -> PathBuf {
    std::env::var_os("CATSDOGS_EFFNET_PTH")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".cache/efficientnet/efficientnet-lite0-57934424.pth"))
}

/// Inserts an EXIF APP1 segment with the given orientation right after the JPEG SOI.
pub fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"MM\x00\x2a\x00\x00\x00\x08"); // big-endian TIFF, IFD at 8
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes()); // count
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    let mut payload = b"Exif\x00\x00".to_vec();
    payload.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// The shipped seed CNN.
pub fn seed_cnn_dir() -> PathBuf {
    repo().join("models/seed-cnn")
}

/// The shipped default model (EfficientNet-Lite0 + our head).
pub fn default_model_dir() -> PathBuf {
    repo().join("models/effnet-lite0")
}

/// A program named by `env`, else `name` on `PATH`.
pub fn which(name: &str, env: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// A free TCP port on loopback (for helper processes such as chromedriver).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

type AsyncBody = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

enum Body {
    Sync(Box<dyn FnOnce() + Send>),
    Async(AsyncBody),
}

/// One test: a name, what it needs, and its body.
pub struct Test {
    name: String,
    needs: Vec<Need>,
    body: Body,
}

impl Test {
    /// A plain test.
    pub fn sync(name: &str, body: impl FnOnce() + Send + 'static) -> Self {
        Self { name: clean(name), needs: Vec::new(), body: Body::Sync(Box::new(body)) }
    }

    /// A test run on its own multi-threaded tokio runtime (two workers).
    pub fn tokio<F>(name: &str, body: impl FnOnce() -> F + Send + 'static) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        Self { name: clean(name), needs: Vec::new(), body: Body::Async(Box::new(move || Box::pin(body()))) }
    }

    /// Declares what the test cannot run without.
    pub fn needs(mut self, needs: &[Need]) -> Self {
        self.needs.extend_from_slice(needs);
        self
    }

    fn trial(self) -> libtest_mimic::Trial {
        let missing: Vec<(Need, String)> =
            self.needs.iter().filter_map(|&n| n.check().err().map(|why| (n, why))).collect();
        let required: Vec<String> = missing
            .iter()
            .filter(|(n, _)| n.required())
            .map(|(n, why)| format!("{} is set but: {why}", n.require_var()))
            .collect();
        let name = self.name;
        if !required.is_empty() {
            let msg = required.join("; ");
            return libtest_mimic::Trial::test(name, move || Err(msg.into()));
        }
        if !missing.is_empty() {
            let why = missing.iter().map(|(_, w)| w.as_str()).collect::<Vec<_>>().join("; ");
            eprintln!("SKIPPED {name}: {why}");
            let kind = format!("skipped: {why}");
            return libtest_mimic::Trial::test(name, || Ok(())).with_kind(kind).with_ignored_flag(true);
        }
        let body = self.body;
        libtest_mimic::Trial::test(name, move || {
            match body {
                Body::Sync(f) => f(),
                Body::Async(f) => {
                    let rt = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .map_err(|e| libtest_mimic::Failed::from(format!("tokio runtime: {e}")))?;
                    rt.block_on(f());
                }
            }
            Ok(())
        })
    }
}

/// `module :: test` as written by `stringify!`, without the spaces.
fn clean(name: &str) -> String {
    name.split_whitespace().collect()
}

/// A [`Test`] of a plain `fn()`, named after its path.
#[macro_export]
macro_rules! sync_test {
    ($f:path) => {
        $crate::Test::sync(stringify!($f), $f)
    };
}

/// A [`Test`] of an `async fn()`, named after its path.
#[macro_export]
macro_rules! async_test {
    ($f:path) => {
        $crate::Test::tokio(stringify!($f), $f)
    };
}

/// Runs the tests with libtest's command line (filters, `--test-threads`, `--ignored`...),
/// prints libtest's summary, and returns the exit code.
pub fn run(tests: Vec<Test>) -> ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let conclusion = libtest_mimic::run(&args, tests.into_iter().map(Test::trial).collect());
    if conclusion.has_failed() { ExitCode::from(101) } else { ExitCode::SUCCESS }
}
