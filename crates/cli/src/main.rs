//! `catsdogs`: the command-line entry point wiring the library crates together.
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod commands;
mod db;
mod models;
mod otel;
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
    /// Compute a model's drift reference on labelled photos (reference.json next to its card).
    Reference(commands::ReferenceArgs),
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
    let Cli { log_level, log_format, command } = Cli::parse();
    let args = match command {
        Command::Serve(a) => a,
        other => {
            // Batch work keeps freed memory (faster); the server hands it back (steady memory).
            catsdogs_core::tune_allocator();
            init_logging(&log_level, &log_format, None)?;
            return run_command(other);
        }
    };
    // The server's runtime exists before logging starts: the OTLP exporter's gRPC
    // connection lives in it.
    let runtime = serve::runtime()?;
    let traces = {
        let _inside = runtime.enter();
        otel::TraceExport::from_env()?
    };
    init_logging(&log_level, &log_format, traces.as_ref())?;
    if let Some(t) = &traces {
        tracing::info!(protocol = ?t.protocol, "exporting request traces over OTLP");
    }
    let served = serve::serve(args, &runtime, traces.is_some());
    if let Some(t) = traces {
        t.shutdown();
    }
    served.map(|_| ExitCode::SUCCESS)
}

/// Every command but `serve` (which `main` runs with its runtime and traces).
fn run_command(command: Command) -> Result<ExitCode> {
    match command {
        Command::Train(a) => commands::train(a).map(|_| ExitCode::SUCCESS),
        Command::Eval(a) => commands::eval(a).map(|_| ExitCode::SUCCESS),
        Command::Predict(a) => commands::predict(a),
        Command::Export(a) => commands::export(a).map(|_| ExitCode::SUCCESS),
        Command::Reference(a) => commands::reference(a).map(|_| ExitCode::SUCCESS),
        Command::Serve(a) => serve::serve(a, &serve::runtime()?, false).map(|_| ExitCode::SUCCESS),
        Command::Db(a) => db::db(a).map(|_| ExitCode::SUCCESS),
        Command::Data(a) => db::data(a).map(|_| ExitCode::SUCCESS),
        Command::Retrain(a) => retrain::retrain(a).map(|_| ExitCode::SUCCESS),
        Command::Models(a) => models::models(a).map(|_| ExitCode::SUCCESS),
        Command::Healthcheck(a) => {
            serve::healthcheck(a).map(|ok| if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}

/// Log lines on stderr (text or JSON) filtered by `--log-level`; with `traces`, the
/// server's spans also go to the OTLP exporter, whatever the log level.
fn init_logging(level: &str, format: &str, traces: Option<&otel::TraceExport>) -> Result<()> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_new(level).context("invalid --log-level")?;
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if format == "json" { logs.json().with_current_span(true).boxed() } else { logs.boxed() };
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(traces.map(otel::TraceExport::layer))
        .try_init()
        .context("cannot install the log subscriber")
}
