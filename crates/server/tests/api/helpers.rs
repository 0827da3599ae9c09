//! The test harness of the API binary, in the style of zero2prod's `tests/api/helpers.rs`:
//! the real app on an ephemeral loopback port ([`TestApp`]) with typed helpers that put the
//! bearer token in themselves, a browser-like page session ([`Session`]), generated images,
//! and the log capture the privacy tests read.
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use catsdogs_server::api::feedback::FeedbackResponse;
use catsdogs_server::api::health::HealthReport;
use catsdogs_server::api::predict::{BatchResponse, PredictResponse};
use catsdogs_server::error::ErrorBody;
use catsdogs_server::{AppState, ServerConfig};
use catsdogs_testkit::pg::PgCluster;
use image::ImageFormat;
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock, oneshot};

pub const TOKEN: &str = "test-token-0123456789";
pub const ROTATED_TOKEN: &str = "next-token-9876543210";
pub const MAX_UPLOAD: usize = 256 * 1024;
pub const MAX_BATCH: usize = 4;

/// The shipped seed CNN (every app serves it unless a test says otherwise).
pub fn model_dir() -> PathBuf {
    catsdogs_testkit::seed_cnn_dir()
}

/// Every log line any test of this binary produced (DEBUG and up): installed once, before
/// the first app starts, so the privacy tests can scan what the service logged.
pub fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_writer(move || Capture(sink.clone()))
            .with_ansi(false)
            .try_init();
        buf
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Apps share the process: its Prometheus recorder and its memory. A test that measures
/// either runs its app alone (write lock); every other app holds a read lock while it runs.
static ALONE: LazyLock<Arc<RwLock<()>>> = LazyLock::new(|| Arc::new(RwLock::new(())));

enum Gate {
    Shared(#[allow(dead_code)] OwnedRwLockReadGuard<()>),
    Alone(#[allow(dead_code)] OwnedRwLockWriteGuard<()>),
}

/// Where an app keeps its database: a fresh SQLite file, or a given URL.
#[derive(Clone)]
pub enum Db {
    Sqlite,
    Url(String),
}

/// A running service.
pub struct TestApp {
    pub base: String,
    pub state: AppState,
    pub data_dir: PathBuf,
    /// The temporary folder of an app that owns its data (`data/` and the SQLite file in it).
    pub dir: Option<tempfile::TempDir>,
    pub client: reqwest::Client,
    /// `host:port` of the gRPC service, when the configuration asked for one.
    pub grpc: Option<String>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _gate: Gate,
}

impl TestApp {
    /// The app on a fresh SQLite database in its own temporary folder.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// As [`TestApp::spawn`], with a last say on the configuration.
    pub async fn spawn_with(configure: impl FnOnce(&mut ServerConfig)) -> Self {
        Self::start(Db::Sqlite, None, configure, false).await
    }

    /// As [`TestApp::spawn_with`], with no other app running in this process meanwhile
    /// (for tests that read the process-wide Prometheus recorder or the process' memory).
    pub async fn spawn_alone(configure: impl FnOnce(&mut ServerConfig)) -> Self {
        Self::start(Db::Sqlite, None, configure, true).await
    }

    /// The app on `db`; its files (and a SQLite database) in a fresh temporary folder.
    pub async fn spawn_on(db: &Db) -> Self {
        Self::spawn_on_with(db, |_| {}).await
    }

    /// As [`TestApp::spawn_on`], with a last say on the configuration.
    pub async fn spawn_on_with(db: &Db, configure: impl FnOnce(&mut ServerConfig)) -> Self {
        Self::start(db.clone(), None, configure, false).await
    }

    /// The app on `db_url`, keeping its files in `data_dir` (which the caller owns).
    pub async fn spawn_at(db_url: &str, data_dir: &Path, configure: impl FnOnce(&mut ServerConfig)) -> Self {
        Self::start(Db::Url(db_url.to_string()), Some(data_dir.to_path_buf()), configure, false).await
    }

    async fn start(db: Db, data_dir: Option<PathBuf>, configure: impl FnOnce(&mut ServerConfig), alone: bool) -> Self {
        captured_logs();
        let gate = if alone {
            Gate::Alone(ALONE.clone().write_owned().await)
        } else {
            Gate::Shared(ALONE.clone().read_owned().await)
        };
        let (dir, data_dir) = match data_dir {
            Some(d) => (None, d),
            None => {
                let dir = tempfile::tempdir().expect("tempdir");
                let data = dir.path().join("data");
                (Some(dir), data)
            }
        };
        std::fs::create_dir_all(&data_dir).expect("data dir");
        let db_url = match db {
            Db::Sqlite => format!("sqlite://{}?mode=rwc", data_dir.join("catsdogs.db").display()),
            Db::Url(url) => url,
        };
        let mut cfg = ServerConfig::new(model_dir(), data_dir.clone());
        cfg.addr = "127.0.0.1:0".parse().expect("addr");
        cfg.database_url = Some(db_url);
        cfg.tokens = vec![TOKEN.into(), ROTATED_TOKEN.into()];
        cfg.max_upload_bytes = MAX_UPLOAD;
        cfg.max_batch_files = MAX_BATCH;
        cfg.inference_threads = 1;
        cfg.max_concurrent_inferences = 2;
        cfg.retry_interval = std::time::Duration::from_millis(200);
        configure(&mut cfg);
        let listener = catsdogs_server::bind(&cfg).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let grpc_listener = catsdogs_server::bind_grpc(&cfg).await.expect("bind gRPC");
        let grpc = grpc_listener.as_ref().map(|l| l.local_addr().expect("gRPC address").to_string());
        let (app, _) = catsdogs_server::build(cfg).await.expect("build app");
        let state = app.state.clone();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(catsdogs_server::run_with_grpc(app, listener, grpc_listener, async move {
            let _ = rx.await;
        }));
        Self {
            base: format!("http://{addr}"),
            state,
            data_dir,
            dir,
            client: client(),
            grpc,
            shutdown: Some(tx),
            task: Some(task),
            _gate: gate,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `host:port`, for hand-written requests over TCP.
    pub fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
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

    /// A request with the operator token.
    pub fn authed(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path)).bearer_auth(TOKEN)
    }

    /// GET with the token.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.authed(reqwest::Method::GET, path).send().await.expect("send")
    }

    /// GET without any credentials.
    pub async fn get_anonymous(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("send")
    }

    /// GET with the token; the body of a 200 as `T`.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> T {
        ok_json(self.get(path).await).await
    }

    /// Any method with the token; the body of a 200 as `T`.
    pub async fn get_json_with<T: DeserializeOwned>(&self, method: reqwest::Method, path: &str) -> T {
        ok_json(self.authed(method, path).send().await.expect("send")).await
    }

    /// DELETE with the token.
    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.authed(reqwest::Method::DELETE, path).send().await.expect("send")
    }

    /// `POST /api/predict` with one file in the `file` field.
    pub async fn post_predict(&self, name: &str, bytes: Vec<u8>, mime: &str) -> reqwest::Response {
        self.post_predict_form(file_form(name, bytes, mime)).await
    }

    /// `POST /api/predict` with any multipart form.
    pub async fn post_predict_form(&self, form: Form) -> reqwest::Response {
        self.authed(reqwest::Method::POST, "/api/predict").multipart(form).send().await.expect("send")
    }

    /// `POST /api/predict` with a raw body and content type.
    pub async fn post_predict_raw(&self, content_type: &str, body: Vec<u8>) -> reqwest::Response {
        let req = self.authed(reqwest::Method::POST, "/api/predict").header("Content-Type", content_type);
        req.body(body).send().await.expect("send")
    }

    /// A successful prediction of a generated PNG named `name`.
    pub async fn predict(&self, name: &str) -> PredictResponse {
        ok_json(self.post_predict(name, image_bytes(ImageFormat::Png), "image/png").await).await
    }

    /// `POST /api/predict/batch` with the files, in order, in `file` fields.
    pub async fn post_batch(&self, files: Vec<(String, Vec<u8>)>) -> reqwest::Response {
        let form =
            files.into_iter().fold(Form::new(), |f, (name, bytes)| f.part("file", Part::bytes(bytes).file_name(name)));
        self.try_post_batch_form(form).await.expect("send")
    }

    /// `POST /api/predict/batch` with any form; the client error when the server hung up first.
    pub async fn try_post_batch_form(&self, form: Form) -> reqwest::Result<reqwest::Response> {
        self.authed(reqwest::Method::POST, "/api/predict/batch").multipart(form).send().await
    }

    /// A successful batch.
    pub async fn batch(&self, files: Vec<(String, Vec<u8>)>) -> BatchResponse {
        ok_json(self.post_batch(files).await).await
    }

    /// `POST /api/feedback` with a JSON body.
    pub async fn post_feedback(&self, body: &Value) -> reqwest::Response {
        self.authed(reqwest::Method::POST, "/api/feedback").json(body).send().await.expect("send")
    }

    /// `POST /api/feedback` with a raw body and content type.
    pub async fn post_feedback_raw(&self, content_type: &str, body: Vec<u8>) -> reqwest::Response {
        let req = self.authed(reqwest::Method::POST, "/api/feedback").header("Content-Type", content_type);
        req.body(body).send().await.expect("send")
    }

    /// Successful feedback.
    pub async fn feedback(&self, body: &Value) -> FeedbackResponse {
        ok_json(self.post_feedback(body).await).await
    }

    /// `GET /api/metrics/daily`: one object per day, newest first. The rows are the store's
    /// `DayMetrics`, which is not `Deserialize`: JSON values.
    pub async fn metrics_daily(&self) -> Vec<Value> {
        self.get_json("/api/metrics/daily").await
    }

    /// `GET /api/metrics/7d` (the store's `WindowMetrics`, as JSON).
    pub async fn metrics_7d(&self) -> Value {
        self.get_json("/api/metrics/7d").await
    }

    /// `GET /api/health`: the status and the readiness report.
    pub async fn health(&self) -> (StatusCode, HealthReport) {
        let r = self.get_anonymous("/api/health").await;
        let status = r.status();
        (status, r.json().await.expect("health report"))
    }

    /// Polls `/api/health` until readiness is `want` (30 s at most).
    pub async fn wait_ready(&self, want: bool) -> HealthReport {
        for _ in 0..150 {
            let (status, report) = self.health().await;
            if (status == StatusCode::OK) == want {
                return report;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        panic!("readiness never became {want}");
    }

    /// Waits (10 s at most) until the purge the server runs at start is in the audit log, so
    /// that a test counting audit rows sees only its own.
    pub async fn wait_for_the_startup_purge(&self) {
        for _ in 0..100 {
            let audit = self.state.store.audit_entries(100).await.expect("audit");
            if audit.iter().any(|a| a.action == "purge") {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("the startup purge was never audited");
    }

    /// `/metrics` (Prometheus text) with the token.
    pub async fn scrape(&self) -> String {
        let r = self.get("/metrics").await;
        assert_eq!(r.status(), StatusCode::OK);
        r.text().await.expect("text")
    }

    /// `POST /api/admin/model/reload` with the token.
    pub async fn reload_model(&self) -> reqwest::Response {
        self.authed(reqwest::Method::POST, "/api/admin/model/reload").send().await.expect("reload")
    }

    /// A handle on the API that spawned tasks can own.
    pub fn api(&self) -> Api {
        Api { client: self.client.clone(), base: self.base.clone() }
    }

    /// A new page session, as a browser gets it from `GET /`: its cookie and CSRF token.
    pub async fn visitor(&self) -> Session {
        let client = browser_client();
        let r = client.get(self.url("/")).send().await.expect("home");
        assert_eq!(r.status(), StatusCode::OK);
        let home = r.text().await.expect("html");
        Session { csrf: csrf_of(&home), client, base: self.base.clone() }
    }

    /// An operator page session: a visitor signed in with `token`.
    pub async fn login(&self, token: &str) -> Session {
        let visitor = self.visitor().await;
        let r = visitor.sign_in(token, &visitor.csrf, "/dashboard").await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "sign-in");
        let (status, html) = visitor.page("/dashboard").await;
        assert_eq!(status, StatusCode::OK);
        Session { csrf: csrf_of(&html), ..visitor }
    }
}

/// A cloneable handle on a running app's API with the operator token, for spawned tasks.
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    /// `POST /api/predict` with one file; the client's error when no answer came.
    pub async fn try_post_predict(&self, name: &str, bytes: Vec<u8>, mime: &str) -> reqwest::Result<reqwest::Response> {
        let url = format!("{}/api/predict", self.base);
        self.client.post(url).bearer_auth(TOKEN).multipart(file_form(name, bytes, mime)).send().await
    }
}

/// A browser-like page session: keeps its cookie, does not follow redirects (so they can be
/// checked), and knows its CSRF token.
pub struct Session {
    pub client: reqwest::Client,
    pub csrf: String,
    pub base: String,
}

impl Session {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GET a page: status and body.
    pub async fn page(&self, path: &str) -> (StatusCode, String) {
        let r = self.client.get(self.url(path)).send().await.expect("get");
        (r.status(), r.text().await.expect("body"))
    }

    /// `POST /api/predict` with the session cookie and `csrf` as `X-CSRF-Token` (if any).
    pub async fn post_predict(&self, csrf: Option<&str>) -> reqwest::Response {
        let mut req =
            self.client.post(self.url("/api/predict")).multipart(Form::new().part("file", image_part("a.png")));
        if let Some(t) = csrf {
            req = req.header("X-CSRF-Token", t);
        }
        req.send().await.expect("send")
    }

    /// A prediction made by this session (it alone may then give feedback on it).
    pub async fn predict(&self) -> PredictResponse {
        let r = self.post_predict(Some(&self.csrf)).await;
        assert_eq!(r.status(), StatusCode::OK, "visitor predict");
        r.json().await.expect("prediction")
    }

    /// `POST /api/feedback` with the session cookie and its CSRF header.
    pub async fn post_feedback(&self, body: &Value) -> reqwest::Response {
        let req = self.client.post(self.url("/api/feedback")).header("X-CSRF-Token", &self.csrf);
        req.json(body).send().await.expect("feedback")
    }

    /// GET with the session cookie and its CSRF header.
    pub async fn get_api(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).header("X-CSRF-Token", &self.csrf).send().await.expect("send")
    }

    /// `POST /classify`, the no-JavaScript form.
    pub async fn classify(&self, form: Form) -> reqwest::Response {
        self.client.post(self.url("/classify")).multipart(form).send().await.expect("classify")
    }

    /// `POST /login` with the given token, CSRF token and `next`.
    pub async fn sign_in(&self, token: &str, csrf: &str, next: &str) -> reqwest::Response {
        let form = [("csrf", csrf), ("token", token), ("next", next)];
        self.client.post(self.url("/login")).form(&form).send().await.expect("login")
    }

    /// A plain form post (`/feedback`, `/logout`).
    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.client.post(self.url(path)).form(form).send().await.expect("form")
    }
}

/// A browser-like client: keeps cookies, does not follow redirects.
pub fn browser_client() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("client")
}

/// The attribute value that follows `prefix` (which ends with the opening quote).
pub fn attr_after(html: &str, prefix: &str) -> String {
    let start = html.find(prefix).unwrap_or_else(|| panic!("{prefix} not in page")) + prefix.len();
    html[start..].split('"').next().unwrap_or_default().to_string()
}

/// The CSRF token a page carries in its `<meta>`.
pub fn csrf_of(html: &str) -> String {
    attr_after(html, r#"name="csrf-token" content=""#)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build().expect("client")
}

/// The body of a 200 as `T` (the body is shown when the status is not 200).
pub async fn ok_json<T: DeserializeOwned>(r: reqwest::Response) -> T {
    let status = r.status();
    let text = r.text().await.expect("body");
    assert_eq!(status, StatusCode::OK, "{text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Checks an API error response (status, JSON content type, a message) and returns its code.
pub async fn error_code(resp: reqwest::Response, status: StatusCode) -> String {
    assert_eq!(resp.status(), status, "unexpected status");
    let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert!(ct.starts_with("application/json"), "error body is not JSON: {ct}");
    let body: ErrorBody = resp.json().await.expect("json error body");
    assert!(!body.error.message.is_empty(), "no message in {body:?}");
    body.error.code
}

/// Status and error code (`None` for a success).
pub async fn outcome(r: reqwest::Response) -> (StatusCode, Option<String>) {
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return (status, None);
    }
    let code = body["error"]["code"].as_str().unwrap_or_else(|| panic!("{status} without a JSON error: {body}"));
    (status, Some(code.to_string()))
}

/// The seed's percentage format.
pub fn pct(p: f64) -> String {
    format!("{:.2}%", p * 100.0)
}

/// A small generated photo-like image (gradient + disc) in the given format.
pub fn image_bytes(format: ImageFormat) -> Vec<u8> {
    let img = image::RgbImage::from_fn(96, 80, |x, y| {
        let d = ((x as i32 - 48).pow(2) + (y as i32 - 40).pow(2)) as f32;
        if d < 600.0 { image::Rgb([200, 120, 60]) } else { image::Rgb([(x * 2) as u8, (y * 3) as u8, 90]) }
    });
    encode(image::DynamicImage::ImageRgb8(img), format)
}

pub fn encode(img: image::DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

/// A generated PNG as a multipart part named `name`.
pub fn image_part(name: &str) -> Part {
    Part::bytes(image_bytes(ImageFormat::Png)).file_name(name.to_string())
}

pub fn file_form(name: &str, bytes: Vec<u8>, mime: &str) -> Form {
    let part = Part::bytes(bytes).file_name(name.to_string()).mime_str(mime).expect("mime");
    Form::new().part("file", part)
}

/// `n` generated PNGs named `0.png`, `1.png`...
pub fn pngs(n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n).map(|i| (format!("{i}.png"), image_bytes(ImageFormat::Png))).collect()
}

/// A throw-away PostgreSQL cluster and a database `name` on it, for a test that declared
/// `Need::Postgres`.
pub fn postgres(name: &str) -> (PgCluster, String) {
    let pg = PgCluster::start_for_test();
    let url = pg.create_db(name).expect("createdb");
    (pg, url)
}

/// Declares `pub async fn` tests `sqlite::$name` and `postgres::$name` (the latter to be
/// registered with `Need::Postgres`) that run the module's `async fn $name(&Db)`.
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        pub mod sqlite {
            $(pub async fn $name() {
                super::$name(&$crate::helpers::Db::Sqlite).await
            })*
        }
        pub mod postgres {
            $(pub async fn $name() {
                let (_pg, url) = $crate::helpers::postgres("test");
                super::$name(&$crate::helpers::Db::Url(url)).await
            })*
        }
    };
}
pub(crate) use on_both_databases;
