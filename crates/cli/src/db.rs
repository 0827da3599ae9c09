//! `catsdogs db`: retention purge, erasure and export from the command line (for cron, and
//! for requests handled while the server is stopped). Same code as the server's, audited
//! under `cli:<user>`.
use std::path::PathBuf;

use anyhow::{Context, Result};
use catsdogs_server::inference_log::{HEADER, LogFiles};
use catsdogs_server::{Retention, retention};
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

#[derive(Args)]
pub struct DbArgs {
    /// The server's data directory (SQLite file, inference log under logs/).
    #[arg(long, env = "CATSDOGS_STATE_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// `sqlite://FILE` or `postgres://...` (default: SQLite in --data-dir).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Inference log directory (default: --data-dir/logs).
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

fn actor() -> String {
    format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()))
}

pub fn db(a: DbArgs) -> Result<()> {
    let url = a
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", a.data_dir.join("catsdogs.db").display()));
    let log = LogFiles::new(a.inference_log_dir.clone().unwrap_or_else(|| a.data_dir.join("logs")));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("async runtime")?;
    rt.block_on(async move {
        let store = Store::open(&url, &StoreOptions::default())?;
        store.migrate().await.context("cannot reach the database")?;
        let now = Utc::now();
        match a.command {
            DbCommand::Purge(r) => {
                let removed = retention::purge(&store, Some(&log), r.into(), now, &actor()).await?;
                println!("{}", serde_json::to_string(&removed)?);
            }
            DbCommand::Erase { id, before } => {
                anyhow::ensure!(!id.is_empty() || before.is_some(), "give --id ID (repeatable) or --before DATE");
                for id in &id {
                    let id = uuid::Uuid::parse_str(id).with_context(|| format!("{id} is not a prediction id"))?;
                    let removed = retention::erase_id(&store, Some(&log), &id.to_string(), now, &actor()).await?;
                    println!("{}", serde_json::json!({"id": id.to_string(), "removed": removed}));
                }
                if let Some(day) = before {
                    let t = day.and_hms_opt(0, 0, 0).context("date")?.and_utc();
                    let removed = retention::erase_before(&store, Some(&log), t, now, &actor()).await?;
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
