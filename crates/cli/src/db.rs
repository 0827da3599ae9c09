//! `catsdogs db`: retention purge, erasure and export from the command line (for cron, and
//! for requests handled while the server is stopped). Same code as the server's, audited
//! under `cli:<user>`.
use std::path::PathBuf;

use anyhow::{Context, Result};
use catsdogs_store::ImageStore;
use catsdogs_store::inference_log::{HEADER, LogFiles};
use catsdogs_store::retention::{self, Holdings, Retention};
use catsdogs_store::{Store, StoreOptions};
use chrono::{NaiveDate, Utc};
use clap::{Args, Subcommand};

/// Retention periods, shared by `serve` and `db purge`.
#[derive(Args, Clone, Copy)]
pub struct RetentionArgs {
    /// Days predictions (rows and inference-log lines) are kept.
    #[arg(long, env = "CATSDOGS_RETENTION_PREDICTIONS_DAYS", default_value_t = 180)]
    pub retention_predictions_days: u32,
    /// Days feedback is kept.
    #[arg(long, env = "CATSDOGS_RETENTION_FEEDBACK_DAYS", default_value_t = 365)]
    pub retention_feedback_days: u32,
    /// Days the audit log is kept.
    #[arg(long, env = "CATSDOGS_RETENTION_AUDIT_DAYS", default_value_t = 365)]
    pub retention_audit_days: u32,
}

impl From<RetentionArgs> for Retention {
    fn from(a: RetentionArgs) -> Self {
        Retention {
            predictions_days: a.retention_predictions_days,
            feedback_days: a.retention_feedback_days,
            audit_days: a.retention_audit_days,
        }
    }
}

/// Where the server keeps its data.
#[derive(Args)]
pub struct StorePlace {
    /// The server's data directory (SQLite file, inference log under logs/, images/).
    #[arg(long, env = "CATSDOGS_STATE_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// `sqlite://FILE` or `postgres://...` (default: SQLite in --data-dir).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Where the server's secrets are (the pseudonymisation key erasure tombstones are made
    /// with); default: --data-dir.
    #[arg(long, env = "CATSDOGS_SECRETS_DIR")]
    pub secrets_dir: Option<PathBuf>,
    /// The replicas' shared folder (consented images, inference log); default: --data-dir.
    #[arg(long, env = "CATSDOGS_SHARED_DIR")]
    pub shared_dir: Option<PathBuf>,
}

impl StorePlace {
    /// Where consented images and (by default) the inference log are.
    fn shared(&self) -> PathBuf {
        self.shared_dir.clone().unwrap_or_else(|| self.data_dir.clone())
    }

    /// Opens the store and runs the migrations.
    async fn open(&self) -> Result<Store> {
        self.open_with(StoreOptions::default()).await
    }

    /// Opens the store with the server's erasure key (read, never created: a key of our
    /// own would make tombstones the server cannot match).
    async fn open_for_erasure(&self) -> Result<Store> {
        let dir = self.secrets_dir.clone().unwrap_or_else(|| self.data_dir.clone());
        let path = dir.join("pseudonym-key");
        let secret = std::fs::read_to_string(&path).with_context(|| {
            format!("cannot read the server's pseudonymisation key {} (give --secrets-dir)", path.display())
        })?;
        let erasure_key = Some(catsdogs_store::ErasureKey::from_secret(&secret));
        self.open_with(StoreOptions { erasure_key, ..StoreOptions::default() }).await
    }

    async fn open_with(&self, options: StoreOptions) -> Result<Store> {
        let url = self
            .database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", self.data_dir.join("catsdogs.db").display()));
        let store = Store::open(&url, &options)?;
        store.migrate().await.context("cannot reach the database")?;
        Ok(store)
    }
}

#[derive(Args)]
pub struct DbArgs {
    #[command(flatten)]
    pub place: StorePlace,
    /// Inference log directory (default: --shared-dir/logs).
    #[arg(long, env = "CATSDOGS_INFERENCE_LOG_DIR")]
    pub inference_log_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: DbCommand,
}

#[derive(Subcommand)]
pub enum DbCommand {
    /// Delete what is older than the retention periods (database and inference log).
    Purge(RetentionArgs),
    /// Erase predictions (rows, feedback, inference-log lines) by id or by date.
    Erase {
        /// Prediction id (repeatable).
        #[arg(long)]
        id: Vec<String>,
        /// Erase everything created before this UTC date (YYYY-MM-DD).
        #[arg(long)]
        before: Option<NaiveDate>,
    },
    /// Print, as JSON, everything held about a prediction.
    Export {
        #[arg(long)]
        id: String,
    },
}

pub(crate) fn actor() -> String {
    format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("async runtime")
}

pub fn db(a: DbArgs) -> Result<()> {
    let log = LogFiles::new(a.inference_log_dir.clone().unwrap_or_else(|| a.place.shared().join("logs")));
    runtime()?.block_on(async move {
        let store = match a.command {
            DbCommand::Erase { ref id, .. } if !id.is_empty() => a.place.open_for_erasure().await?,
            _ => a.place.open().await?,
        };
        let images = ImageStore::new(&a.place.shared());
        // Rows the server spilled while its database was down: an erasure removes them too.
        let spill = a.place.data_dir.join(catsdogs_store::outbox::SPILL_FILE);
        let queued = catsdogs_store::Queued::SpillFile(&spill);
        let holdings = Holdings { store: &store, log: Some(&log), images: &images, queued };
        let now = Utc::now();
        match a.command {
            DbCommand::Purge(r) => {
                let removed = retention::purge(holdings, r.into(), now, &actor()).await?;
                println!("{}", serde_json::to_string(&removed)?);
            }
            DbCommand::Erase { id, before } => {
                anyhow::ensure!(!id.is_empty() || before.is_some(), "give --id ID (repeatable) or --before DATE");
                for id in &id {
                    let id: catsdogs_store::PredictionId = id.parse()?;
                    let removed = retention::erase_id(holdings, id.as_str(), now, &actor()).await?;
                    println!("{}", serde_json::json!({"id": id.to_string(), "removed": removed}));
                }
                if let Some(day) = before {
                    let t = day.and_hms_opt(0, 0, 0).context("date")?.and_utc();
                    let removed = retention::erase_before(holdings, t, now, &actor()).await?;
                    println!("{}", serde_json::json!({"before": day.to_string(), "removed": removed}));
                }
            }
            DbCommand::Export { id } => {
                let prediction = store.get_prediction(&id).await?.context("no prediction has this id")?;
                store.audit(now, &actor(), "export", &format!("prediction {id}")).await?;
                let out = serde_json::json!({
                    "prediction": prediction,
                    "feedback": store.feedback_for(&id).await?,
                    "inference_log": log.lines_for(&id)?,
                    "inference_log_header": HEADER,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            }
        }
        store.close().await;
        Ok(())
    })
}

#[derive(Args)]
pub struct DataArgs {
    #[command(flatten)]
    pub place: StorePlace,
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(Subcommand)]
pub enum DataCommand {
    /// Write the consented images that have feedback as a labelled folder (OUT/cat,
    /// OUT/dog), the label being the one the user gave or confirmed: training examples
    /// for `catsdogs train` / retraining. Audited.
    Export {
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn data(a: DataArgs) -> Result<()> {
    runtime()?.block_on(async move {
        let store = a.place.open().await?;
        let images = ImageStore::new(&a.place.shared());
        match a.command {
            DataCommand::Export { out } => {
                let examples = store.labelled_images().await?;
                store.audit(Utc::now(), &actor(), "export", &format!("{} labelled images to {}", examples.len(), out.display())).await?;
                let (mut written, mut missing) = ([0usize; 2], 0usize);
                // When each example was made, so `catsdogs retrain` can hold out the newest.
                let mut manifest = String::from(catsdogs_train::retrain::MANIFEST_HEADER);
                for e in &examples {
                    let Some(src) = images.path(&e.image_ref).filter(|p| p.is_file()) else {
                        missing += 1;
                        continue;
                    };
                    let dir = out.join(e.label.as_str());
                    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
                    let ext = e.image_ref.rsplit('.').next().unwrap_or("jpg");
                    let dst = dir.join(format!("{}.{ext}", e.prediction_id));
                    std::fs::copy(&src, &dst).with_context(|| format!("cannot write {}", dst.display()))?;
                    written[usize::from(e.label.index())] += 1;
                    manifest.push_str(&format!(
                        "{}/{}.{ext},{},{},{}\n",
                        e.label,
                        e.prediction_id,
                        e.label,
                        e.created_at.to_rfc3339(),
                        e.prediction_id
                    ));
                }
                std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
                let path = out.join(catsdogs_train::retrain::MANIFEST);
                std::fs::write(&path, manifest).with_context(|| format!("cannot write {}", path.display()))?;
                println!(
                    "{}",
                    serde_json::json!({"out": out.display().to_string(), "cat": written[0], "dog": written[1], "missing_files": missing})
                );
            }
        }
        store.close().await;
        Ok(())
    })
}
