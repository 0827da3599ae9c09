//! `catsdogs`: the command-line entry point wiring the library crates together.
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod commands;
mod db;
mod models;
mod retrain;
mod serve;

#[derive(Parser)]
#[command(name = "catsdogs", version, about = "Cats-vs-dogs image classifier: train, evaluate, export, predict, serve")]
struct Cli {
    /// Log filter (e.g. info, debug, catsdogs_model=debug).
    #[arg(long, env = "LOG_LEVEL", default_value = "info", global = true)]
    log_level: String,
    /// Log lines as text or JSON (one object per line, with the request span).
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], global = true)]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model on a folder of cat/ and dog/ photos.
    Train(commands::TrainArgs),
    /// Evaluate a model on a labelled folder: metrics table and plots.
    Eval(commands::EvalArgs),
    /// Classify image files.
    Predict(commands::PredictArgs),
    /// Write a trained model as an ONNX graph.
    Export(commands::ExportArgs),
    /// Serve the web page and the JSON API (http://127.0.0.1:8000 by default).
    Serve(serve::ServeArgs),
    /// Retention purge, erasure and export of stored data.
    Db(db::DbArgs),
    /// Training data gathered by the service (consented images with feedback).
    Data(db::DataArgs),
    /// The model registry: list, add, promote, roll back.
    Models(models::ModelsArgs),
    /// Fine-tune the served model on its training data plus user feedback; the candidate
    /// goes into the registry with a report comparing it with its parent.
    Retrain(retrain::RetrainArgs),
    /// Exit 0 when the service answers its readiness route with 200 (container health checks).
    Healthcheck(serve::HealthcheckArgs),
}

fn main() -> Result<ExitCode> {
    // Precedence: flags, then the environment, then `.env` (which never overrides the environment).
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    // Batch work keeps freed memory (faster); the server hands it back (steady memory).
    if !matches!(cli.command, Command::Serve(_)) {
        catsdogs_core::tune_allocator();
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level).context("invalid --log-level")?;
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if cli.log_format == "json" {
        logs.json().with_current_span(true).init();
    } else {
        logs.init();
    }
    match cli.command {
        Command::Train(a) => commands::train(a).map(|_| ExitCode::SUCCESS),
        Command::Eval(a) => commands::eval(a).map(|_| ExitCode::SUCCESS),
        Command::Predict(a) => commands::predict(a),
        Command::Export(a) => commands::export(a).map(|_| ExitCode::SUCCESS),
        Command::Serve(a) => serve::serve(a).map(|_| ExitCode::SUCCESS),
        Command::Db(a) => db::db(a).map(|_| ExitCode::SUCCESS),
        Command::Data(a) => db::data(a).map(|_| ExitCode::SUCCESS),
        Command::Retrain(a) => retrain::retrain(a).map(|_| ExitCode::SUCCESS),
        Command::Models(a) => models::models(a).map(|_| ExitCode::SUCCESS),
        Command::Healthcheck(a) => {
            serve::healthcheck(a).map(|ok| if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}
