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

/// `mi_option_purge_delay`: its position in `mi_option_e` of mimalloc.h (v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// `mi_option_allow_thp`: its position in `mi_option_e` of v3's mimalloc.h (the version
/// libmimalloc-sys builds without its `v2` feature).
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// Keeps freed memory for a second before returning it to the OS. With a delay of 10 ms
/// (mimalloc v2's default; v3's is this second), the memory of each ingest batch went back to
/// the OS and was faulted in (and zeroed by the kernel) again for the next:
/// `MIMALLOC_PURGE_DELAY=1000 tarn bench` ingested 1.5x faster. Pinned here so that it holds
/// whichever version is built.
///
/// Also no transparent huge pages: mimalloc asks for them on its arenas, so each first touch
/// of fresh memory made the kernel zero 2 MiB. `perf` showed 15% of the demo's CPU in
/// `clear_page_erms`; without them `tarn bench --live` used 16% less server CPU and
/// `tarn bench` ingested 10% more per CPU-second with 16% less peak memory.
///
/// The environment variables, when set, still win.
///
/// The option alone only stops new arenas from asking for huge pages: mimalloc reserved its
/// first arena (with `MADV_HUGEPAGE`) before `main`, and disables THP for the process only
/// while starting up. So the process asks the kernel itself (`PR_SET_THP_DISABLE`, which
/// holds for memory mapped already); `perf` still showed `do_huge_pmd_anonymous_page` under
/// mimalloc's page allocation without it.
fn tune_allocator() {
    for (option, variable, value) in [
        (MI_OPTION_PURGE_DELAY, "MIMALLOC_PURGE_DELAY", 1000),
        (MI_OPTION_ALLOW_THP, "MIMALLOC_ALLOW_THP", 0),
    ] {
        if std::env::var_os(variable).is_none() {
            // SAFETY: mi_option_set stores an integer option that mimalloc reads later.
            unsafe { libmimalloc_sys::mi_option_set(option, value) }
        }
    }
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none()
        && let Err(e) = disable_transparent_huge_pages()
    {
        eprintln!("tarn: cannot disable transparent huge pages: {e}");
    }
}

#[cfg(target_os = "linux")]
fn disable_transparent_huge_pages() -> std::io::Result<()> {
    // SAFETY: prctl with PR_SET_THP_DISABLE only sets a flag of this process.
    match unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[cfg(not(target_os = "linux"))]
fn disable_transparent_huge_pages() -> std::io::Result<()> {
    Ok(())
}

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
    tune_allocator();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The option positions are mimalloc's: read where they are, its defaults come back.
    #[test]
    fn allocator_options_are_where_mimalloc_keeps_them() {
        // SAFETY: mi_option_get reads an integer option.
        let (purge_delay, allow_thp) = unsafe {
            (
                libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY),
                libmimalloc_sys::mi_option_get(MI_OPTION_ALLOW_THP),
            )
        };
        assert_eq!(purge_delay, 1000, "mi_option_purge_delay moved");
        assert_eq!(allow_thp, 1, "mi_option_allow_thp moved");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_process_runs_without_transparent_huge_pages() {
        disable_transparent_huge_pages().unwrap();
        // SAFETY: PR_GET_THP_DISABLE reads the flag.
        let flag = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(flag, 1);
    }
}
