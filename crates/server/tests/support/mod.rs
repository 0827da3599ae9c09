//! Test harness: the real app on an ephemeral loopback port, generated images, and a
//! throw-away PostgreSQL cluster.
#![allow(dead_code)]
pub mod pg;

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use catsdogs_server::{AppState, ServerConfig};
use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

pub const TOKEN: &str = "test-token-0123456789";
pub const ROTATED_TOKEN: &str = "next-token-9876543210";
pub const MAX_UPLOAD: usize = 256 * 1024;
pub const MAX_BATCH: usize = 4;

/// A running service.
pub struct TestApp {
    pub base: String,
    pub state: AppState,
    pub data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

pub fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/seed-cnn")
}

/// The shipped default model (EfficientNet-Lite0 + our head).
pub fn default_model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/effnet-lite0")
}

/// Real photos: `CATSDOGS_DATA_DIR`, else `../shared/data/train` beside the repository.
pub fn photos_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("CATSDOGS_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/train"));
    dir.join("cat").is_dir().then_some(dir)
}

impl TestApp {
    /// Starts the app against `db_url`, storing its files in `data_dir`.
    pub async fn spawn(db_url: &str, data_dir: PathBuf, now: Option<DateTime<Utc>>) -> Self {
        Self::spawn_with(db_url, data_dir, now, |_| {}).await
    }

    /// As `spawn`, with a last say on the configuration.
    pub async fn spawn_with(
        db_url: &str,
        data_dir: PathBuf,
        now: Option<DateTime<Utc>>,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(std::env::var("LOG_LEVEL").unwrap_or_else(|_| "warn".into()))
            .try_init();
        let mut cfg = ServerConfig::new(model_dir(), data_dir.clone());
        cfg.addr = "127.0.0.1:0".parse().expect("addr");
        cfg.database_url = Some(db_url.to_string());
        cfg.tokens = vec![TOKEN.into(), ROTATED_TOKEN.into()];
        cfg.max_upload_bytes = MAX_UPLOAD;
        cfg.max_batch_files = MAX_BATCH;
        cfg.inference_threads = 1;
        cfg.max_concurrent_inferences = 2;
        cfg.retry_interval = std::time::Duration::from_millis(200);
        if let Some(t) = now {
            cfg.clock = Arc::new(move || t);
        }
        configure(&mut cfg);
        let listener = catsdogs_server::bind(&cfg).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (app, _) = catsdogs_server::build(cfg).await.expect("build app");
        let state = app.state.clone();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(catsdogs_server::run(app, listener, async move {
            let _ = rx.await;
        }));
        Self { base: format!("http://{addr}"), state, data_dir, shutdown: Some(tx), task: Some(task) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Graceful shutdown, as on SIGTERM.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server run");
        }
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build().expect("client")
}

/// A small generated photo-like image (gradient + disc) in the given format.
pub fn image_bytes(format: image::ImageFormat) -> Vec<u8> {
    let img = image::RgbImage::from_fn(96, 80, |x, y| {
        let d = ((x as i32 - 48).pow(2) + (y as i32 - 40).pow(2)) as f32;
        if d < 600.0 { image::Rgb([200, 120, 60]) } else { image::Rgb([(x * 2) as u8, (y * 3) as u8, 90]) }
    });
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img).write_to(&mut out, format).expect("encode");
    out.into_inner()
}

pub fn file_form(name: &str, bytes: Vec<u8>, mime: &str) -> reqwest::multipart::Form {
    let part = reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()).mime_str(mime).expect("mime");
    reqwest::multipart::Form::new().part("file", part)
}
