//! The `tarn` command: `serve` runs the database; `demo` runs it with a built-in tweet stream.

mod bench;
mod bench_kafka;
mod bench_live;
mod bench_scale;
mod demo;
mod produce;
mod tweets;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tarn_storage::{SealPolicy, Storage};

// Ingest allocates many small strings and maps per document; mimalloc handles that
// pattern markedly faster than glibc's allocator (measured with `tarn bench`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tarn",
    version,
    about = "A real-time analytics database with Rockset's API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Run the server with the collection `twitter-kinesis-demo` fed by generated tweets.
    Demo(DemoArgs),
    /// Manage API keys: `tarn apikey create NAME`, `list`, `revoke NAME`.
    Apikey(ApikeyArgs),
    /// Produce generated data: `tarn produce tweets SINK`.
    Produce(produce::ProduceArgs),
    /// Measure ingest, freshness and window queries; compare loading with DuckDB and chDB.
    Bench(bench::BenchArgs),
}

#[derive(clap::Args, Clone)]
pub struct ServeArgs {
    /// Where collections, logs and segments are kept.
    #[arg(long, env = "TARN_DATA_DIR", default_value = "./tarn-data")]
    pub data_dir: PathBuf,
    /// Address of the HTTP API (port 0 picks a free port).
    #[arg(long, env = "TARN_HTTP", default_value = "127.0.0.1:3000")]
    pub http: SocketAddr,
    /// Seal the mutable segment after this many documents.
    #[arg(long, env = "TARN_SEAL_ROWS", default_value_t = SealPolicy::default().max_rows)]
    pub seal_rows: usize,
    /// Seal the mutable segment after this many seconds.
    #[arg(long, env = "TARN_SEAL_SECS", default_value_t = SealPolicy::default().max_age.as_secs())]
    pub seal_secs: u64,
    /// Memory for decoded columns of sealed segments, in MiB, shared by all collections
    /// (default: a quarter of the machine's memory). Sealed segments live in compressed
    /// files; what does not fit here is decoded again when a query reads it.
    #[arg(long, env = "TARN_CACHE_MB")]
    pub cache_mb: Option<usize>,
    /// Address of the Postgres endpoint (port 0 picks a free port; `off` disables it).
    #[arg(long, env = "TARN_PG", default_value = "127.0.0.1:5433")]
    pub pg: String,
    /// PEM certificate (the server's first, then its chain) for TLS on the Postgres
    /// endpoint; with --pg-tls-key. Without it an SSLRequest is answered `N`.
    #[arg(
        long,
        env = "TARN_PG_TLS_CERT",
        value_name = "FILE",
        requires = "pg_tls_key"
    )]
    pub pg_tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --pg-tls-cert.
    #[arg(
        long,
        env = "TARN_PG_TLS_KEY",
        value_name = "FILE",
        requires = "pg_tls_cert"
    )]
    pub pg_tls_key: Option<PathBuf>,
    /// A dashboard document to load at start (JSON, or YAML when the file ends in `.yaml`
    /// or `.yml`), replacing one of the same name; may be given more than once.
    #[arg(long = "dashboard", value_name = "FILE")]
    pub dashboards: Vec<PathBuf>,
}

#[derive(clap::Args)]
pub struct ApikeyArgs {
    #[command(subcommand)]
    action: ApikeyAction,
    /// The data directory whose keys to manage (the server's `--data-dir`).
    #[arg(
        long,
        env = "TARN_DATA_DIR",
        default_value = "./tarn-data",
        global = true
    )]
    data_dir: PathBuf,
}

#[derive(Subcommand)]
enum ApikeyAction {
    /// Create a key and print it (the only time it is shown).
    Create { name: String },
    /// List keys (names, last four characters, creation time).
    List,
    /// Revoke a key; requests with it are refused at once.
    Revoke { name: String },
}

fn apikey(args: ApikeyArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)?;
    let keys = tarn_server::auth::ApiKeys::open(&args.data_dir)?;
    match args.action {
        ApikeyAction::Create { name } => {
            let (_, key) = keys.create(&name)?;
            println!("{key}");
            eprintln!(
                "API key '{name}' created; send it as `Authorization: ApiKey KEY`. It is not shown again."
            );
        }
        ApikeyAction::List => {
            for k in keys.list() {
                println!("{}\t****{}\t{}", k.name, k.last4, k.created_at);
            }
        }
        ApikeyAction::Revoke { name } => {
            keys.revoke(&name)?;
            eprintln!("API key '{name}' revoked");
        }
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Tweets per second from the built-in producer.
    #[arg(long, default_value_t = 50)]
    pub rate: u64,
}

impl ServeArgs {
    /// Applies the settings that belong to the whole process (the column cache).
    fn apply_process_settings(&self) {
        if let Some(mb) = self.cache_mb {
            tarn_storage::cache::column_cache().set_budget(mb << 20);
        }
    }

    fn policy(&self) -> SealPolicy {
        SealPolicy {
            max_rows: self.seal_rows,
            max_age: std::time::Duration::from_secs(self.seal_secs),
            ..SealPolicy::default()
        }
    }
}

fn main() -> anyhow::Result<()> {
    tarn_common::allocator::tune();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve(args) => rt.block_on(serve(args, None)),
        Command::Demo(args) => rt.block_on(demo::run(args)),
        Command::Bench(args) => rt.block_on(bench::run(args)),
        Command::Produce(args) => produce::run(args),
        Command::Apikey(args) => apikey(args),
    }
}

/// Called once the server accepts requests, with its storage and address.
pub type OnReady = Box<dyn FnOnce(tarn_server::AppState, SocketAddr) + Send>;

/// Opens the data directory, serves until SIGINT or SIGTERM, then stops cleanly.
/// `on_ready` runs once the server accepts requests.
pub async fn serve(args: ServeArgs, on_ready: Option<OnReady>) -> anyhow::Result<()> {
    // A bad certificate or key stops the server before anything starts.
    let pg_tls = match (&args.pg_tls_cert, &args.pg_tls_key) {
        (Some(cert), Some(key)) if args.pg != "off" => {
            Some(tarn_server::pg::PgTls::load(cert, key).map_err(anyhow::Error::msg)?)
        }
        _ => None,
    };
    args.apply_process_settings();
    let policy = args.policy();
    let data_dir = args.data_dir.clone();
    let storage = tokio::task::spawn_blocking(move || Storage::open(&data_dir, policy))
        .await?
        .with_context(|| format!("opening data directory {}", args.data_dir.display()))?;
    let listener =
        tarn_server::bind_listener(args.http).with_context(|| format!("binding {}", args.http))?;
    let addr = listener.local_addr()?;
    tracing::info!(data_dir = %storage.dir().display(), "tarn listening on http://{addr}");
    // A machine-readable line for scripts and tests that start tarn on port 0.
    println!("tarn listening on http://{addr}");
    let mut state = tarn_server::AppState::new(storage.clone())?;
    state.open_without_keys = args.http.ip().is_loopback();
    if state.keys.is_empty() {
        if state.open_without_keys {
            tracing::warn!(
                "no API key exists: serving without authentication, on loopback only (create one with `tarn apikey create NAME`)"
            );
        } else {
            tracing::warn!(
                "no API key exists and {} is not loopback: every API request is refused until one is created with `tarn apikey create NAME`",
                args.http
            );
        }
    }
    for file in &args.dashboards {
        let text = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let format = tarn_server::dashboards::Format::from_path(file);
        let d = tarn_server::dashboards::Dashboard::parse_as(&text, format)
            .map_err(|e| anyhow::anyhow!("{}: {}", file.display(), e.message))?;
        tracing::info!(dashboard = %d.name, file = %file.display(), "dashboard loaded");
        state.dashboards.put(d, true)?;
    }
    state.start_sources();
    if args.pg != "off" {
        let pg_addr: SocketAddr = args
            .pg
            .parse()
            .with_context(|| format!("--pg {} is not an address (or `off`)", args.pg))?;
        let pg_listener = tarn_server::bind_listener(pg_addr).with_context(|| {
            format!("binding the Postgres endpoint on {pg_addr} (choose another with --pg ADDR, or --pg off)")
        })?;
        let local = pg_listener.local_addr()?;
        let tls = if pg_tls.is_some() { " (TLS)" } else { "" };
        tracing::info!("tarn Postgres endpoint on {local}{tls}");
        println!("tarn pg listening on {local}");
        tokio::spawn(tarn_server::pg::serve(pg_listener, state.clone(), pg_tls));
    }
    if let Some(f) = on_ready {
        f(state.clone(), addr);
    }
    tarn_server::serve(listener, state, shutdown_signal()).await?;
    tracing::info!("shutting down");
    let s = storage.clone();
    tokio::task::spawn_blocking(move || s.close()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
