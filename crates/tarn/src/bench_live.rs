//! `tarn bench --live`: the demo (its in-process Kafka stream into `twitter-kinesis-demo`) at a
//! given rate, watched by N simulated viewers of the Tweets dashboard over HTTP; per viewer
//! count, time to first data on page load, queries per panel per interval, server CPU, the
//! ingest rate achieved and the events each viewer receives.
//!
//! Each viewer does what the browser does on page load, over its own TCP connections: it
//! fetches `/ui/` and the scripts and style sheets the page names, then opens the view's
//! server-sent event stream (the dashboard document, then every panel's results) and reads
//! it until the end. Viewers run on a
//! runtime of their own (threads named `tarn-viewer`), so the CPU they use is read from
//! their threads and left out of the server's share.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use tarn_storage::{DEFAULT_WORKSPACE, SealPolicy, Storage};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::bench::percentile;
use crate::demo::DEMO_COLLECTION;

const API: &str = "/v1/orgs/self";
const DASHBOARD: &str = "tweets";
/// Name of the viewers' runtime threads (at most 15 bytes: Linux truncates thread names).
const VIEWER_THREAD: &str = "tarn-viewer";
/// Ingest between the first stored tweet and the viewers' arrival, so every round starts
/// from the same state.
const WARM_UP: Duration = Duration::from_secs(5);
/// Page loads, one at a time after the steady phase, onto feeds that are already running.
const LATE_LOADS: usize = 10;
const FIRST_DATA_TARGET_MS: f64 = 200.0;
/// "Server CPU does not grow with viewers": the most viewers may cost at most this factor
/// of the CPU of the fewest (room for measurement noise and for writing the events).
const CPU_GROWTH_LIMIT: f64 = 1.2;
/// Clock ticks per second of /proc's CPU times (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

pub async fn run(dir: &Path, viewer_counts: &[usize], rate: u64, secs: u64) -> anyhow::Result<()> {
    let client = ClientRuntime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(VIEWER_THREAD)
            .enable_all()
            .build()?,
    ));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "live dashboard '{DASHBOARD}': the demo stream at {rate} tweets/s, {secs} s steady phase per viewer count, {cores} cores"
    );
    println!(
        "{:>7}  {:>21}  {:>20}  {:>14}  {:>8}  {:>9}  {:>7}  {:>7}  {:>8}  {:>9}",
        "viewers",
        "first data p50/p99 ms",
        "late load p50/max ms",
        "queries/panel/",
        "feeds x",
        "server",
        "viewers'",
        "others'",
        "ingested",
        "events/"
    );
    println!(
        "{:>7}  {:>21}  {:>20}  {:>14}  {:>8}  {:>9}  {:>7}  {:>7}  {:>8}  {:>9}",
        "",
        "",
        "",
        "interval (max)",
        "viewers",
        "CPU s/s",
        "CPU s/s",
        "CPU s/s",
        "tweets/s",
        "viewer/s"
    );
    let mut rounds = Vec::new();
    for &n in viewer_counts {
        let r = round(dir, n, rate, secs, client.handle()).await?;
        print_row(&r);
        rounds.push(r);
    }
    let _ = std::fs::remove_dir_all(dir);
    println!(
        "first data: from a viewer's first request (GET /ui/) to data in every panel; viewers arrive together. \
         late load: one more page load at a time after the steady phase. queries/panel/interval: query runs of \
         each panel's feed (GET {API}/live/stats) per refresh interval in the steady phase. CPU: seconds of CPU \
         per second; server = this process minus the viewers' threads (it includes the demo's tweet producer \
         and mock Kafka broker); others = the rest of the machine."
    );
    verdicts(&rounds, rate);
    Ok(())
}

/// The viewers' runtime, shut down without blocking when dropped (it is dropped inside the
/// bench's own runtime, where a blocking shutdown panics).
struct ClientRuntime(Option<tokio::runtime::Runtime>);

impl ClientRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("present until dropped").handle()
    }
}

impl Drop for ClientRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// What one viewer count measured.
struct Round {
    viewers: usize,
    /// Per viewer that got data in every panel: ms from its first request.
    first_data_ms: Vec<f64>,
    /// Per viewer: ms from its first request to the page and its assets loaded.
    page_ms: Vec<f64>,
    late_ms: Vec<f64>,
    /// Viewers whose page load or feed failed, with the first reason.
    failed: usize,
    failure: Option<String>,
    /// Events carrying a query error, all viewers.
    error_events: u64,
    /// Per panel: (id, query runs in the steady phase, runs allowed at one per interval,
    /// runs per interval).
    runs: Vec<(String, u64, u64, f64)>,
    feeds: usize,
    viewers_per_feed: usize,
    server_cpu: f64,
    viewer_cpu: f64,
    other_cpu: f64,
    ingested_per_s: f64,
    events_per_viewer_s: f64,
}

/// One viewer count on a fresh demo: data dir, server on 127.0.0.1 port 0, stream.
async fn round(
    dir: &Path,
    n: usize,
    rate: u64,
    secs: u64,
    client: &tokio::runtime::Handle,
) -> anyhow::Result<Round> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let storage = Storage::open(&dir.join("data"), SealPolicy::default())?;
    let state = tarn_server::AppState::new(storage.clone())?;
    let listener = tarn_server::bind_listener(([127, 0, 0, 1], 0).into())?;
    let addr = listener.local_addr()?;
    let (down_tx, down_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tarn_server::serve(listener, state.clone(), async move {
        let _ = down_rx.await;
    }));
    let stop_stream = Arc::new(AtomicBool::new(false));
    let measured = match crate::demo::start(&state, rate, stop_stream.clone()) {
        Ok(stream) => {
            let r = measure(&state, addr, n, secs, client).await;
            // The server first (it stops the Kafka source), then the stream and its cluster.
            let _ = down_tx.send(());
            let _ = tokio::time::timeout(Duration::from_secs(15), server).await;
            stop_stream.store(true, Ordering::Relaxed);
            let _ = tokio::task::spawn_blocking(move || stream.join()).await;
            r
        }
        Err(e) => {
            let _ = down_tx.send(());
            let _ = tokio::time::timeout(Duration::from_secs(15), server).await;
            stop_stream.store(true, Ordering::Relaxed);
            Err(e)
        }
    };
    state.sources.stop_all();
    drop(state);
    let s = storage.clone();
    tokio::task::spawn_blocking(move || s.close()).await?;
    drop(storage);
    let _ = std::fs::remove_dir_all(dir);
    measured
}

/// A moment of the steady phase.
struct Snapshot {
    at: Instant,
    process_cpu: f64,
    viewer_cpu: f64,
    machine_cpu: f64,
    docs: u64,
    /// Per panel of the dashboard: (id, viewers, runs).
    feeds: Vec<(String, u64, u64)>,
    events: u64,
}

async fn snapshot(
    addr: SocketAddr,
    c: &tarn_storage::Collection,
    viewers: &[Arc<ViewerStats>],
) -> anyhow::Result<Snapshot> {
    let feeds = live_feeds(addr).await?;
    let (process_cpu, viewer_cpu) = process_cpu();
    Ok(Snapshot {
        at: Instant::now(),
        process_cpu,
        viewer_cpu,
        machine_cpu: machine_cpu(),
        docs: c.stats().doc_count,
        feeds,
        events: viewers
            .iter()
            .map(|v| v.events.load(Ordering::Relaxed))
            .sum(),
    })
}

async fn measure(
    state: &tarn_server::AppState,
    addr: SocketAddr,
    n: usize,
    secs: u64,
    client: &tokio::runtime::Handle,
) -> anyhow::Result<Round> {
    let (_, c) = state
        .storage
        .get_collection(DEFAULT_WORKSPACE, DEMO_COLLECTION)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.stats().doc_count == 0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no tweet reached the demo collection in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(WARM_UP).await;
    let dashboard = state.dashboards.get(DASHBOARD)?;

    // The viewers arrive together.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stats: Vec<Arc<ViewerStats>> = (0..n).map(|_| Arc::default()).collect();
    let tasks: Vec<_> = stats
        .iter()
        .map(|s| client.spawn(viewer(addr, s.clone(), stop_rx.clone())))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && !stats.iter().all(|s| s.done()) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // The steady phase.
    let before = snapshot(addr, &c, &stats).await?;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let after = snapshot(addr, &c, &stats).await?;
    let wall = after.at.duration_since(before.at).as_secs_f64();

    // Late page loads onto running feeds, one at a time.
    let mut late_ms = Vec::new();
    if n > 0 {
        for _ in 0..LATE_LOADS {
            let s = Arc::new(ViewerStats::default());
            let (tx, rx) = watch::channel(false);
            let task = client.spawn(viewer(addr, s.clone(), rx));
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && !s.done() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let _ = tx.send(true);
            let _ = task.await;
            if let Some(ms) = s.first_data_ms() {
                late_ms.push(ms);
            }
        }
    }

    // The viewers leave; their feeds stop at their next interval.
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline
        && state.live.stats()["feeds"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut runs = Vec::new();
    for (id, _, end) in &after.feeds {
        let start = before
            .feeds
            .iter()
            .find(|(p, _, _)| p == id)
            .map_or(0, |f| f.2);
        let interval_s = dashboard
            .panel(id)
            .map_or(2.0, |p| p.refresh_ms as f64 / 1e3);
        let ran = end.saturating_sub(start);
        runs.push((
            id.clone(),
            ran,
            (wall / interval_s).ceil() as u64,
            ran as f64 / (wall / interval_s),
        ));
    }
    let failures: Vec<String> = stats
        .iter()
        .filter_map(|s| s.failure.lock().expect("not poisoned").clone())
        .collect();
    let process = after.process_cpu - before.process_cpu;
    let viewer = after.viewer_cpu - before.viewer_cpu;
    Ok(Round {
        viewers: n,
        first_data_ms: stats.iter().filter_map(|s| s.first_data_ms()).collect(),
        page_ms: stats
            .iter()
            .filter_map(|s| match s.page_us.load(Ordering::Relaxed) {
                0 => None,
                us => Some(us as f64 / 1e3),
            })
            .collect(),
        late_ms,
        failed: stats.iter().filter(|s| s.first_data_ms().is_none()).count(),
        failure: failures.into_iter().next(),
        error_events: stats.iter().map(|s| s.errors.load(Ordering::Relaxed)).sum(),
        feeds: after.feeds.len(),
        viewers_per_feed: after.feeds.iter().map(|f| f.1 as usize).max().unwrap_or(0),
        runs,
        server_cpu: (process - viewer) / wall,
        viewer_cpu: viewer / wall,
        other_cpu: ((after.machine_cpu - before.machine_cpu) - process).max(0.0) / wall,
        ingested_per_s: after.docs.saturating_sub(before.docs) as f64 / wall,
        events_per_viewer_s: if n == 0 {
            0.0
        } else {
            (after.events - before.events) as f64 / n as f64 / wall
        },
    })
}

fn print_row(r: &Round) {
    let pair = |v: &[f64], p: f64| {
        if v.is_empty() {
            "–".to_owned()
        } else {
            let mut v = v.to_vec();
            format!(
                "{:.1} / {:.1}",
                percentile(&mut v, 0.5),
                percentile(&mut v, p)
            )
        }
    };
    let max_runs = r
        .runs
        .iter()
        .map(|x| x.3)
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    println!(
        "{:>7}  {:>21}  {:>20}  {:>14}  {:>8}  {:>9.3}  {:>7.3}  {:>7.3}  {:>8.0}  {:>9.2}",
        r.viewers,
        pair(&r.first_data_ms, 0.99),
        pair(&r.late_ms, 1.0),
        max_runs.map_or("–".to_owned(), |m| format!("{m:.2}")),
        format!("{} x {}", r.feeds, r.viewers_per_feed),
        r.server_cpu,
        r.viewer_cpu,
        r.other_cpu,
        r.ingested_per_s,
        r.events_per_viewer_s,
    );
    if !r.page_ms.is_empty() {
        println!(
            "         of which the page and its assets: p50/p99 {} ms",
            pair(&r.page_ms, 0.99)
        );
    }
    if r.failed > 0 {
        println!(
            "         {} of {} viewers never had data in every panel: {}",
            r.failed,
            r.viewers,
            r.failure.as_deref().unwrap_or("no data within 60 s")
        );
    }
    if r.error_events > 0 {
        println!(
            "         {} panel events carried a query error",
            r.error_events
        );
    }
}

fn verdicts(rounds: &[Round], rate: u64) {
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    let watched: Vec<&Round> = rounds.iter().filter(|r| r.viewers > 0).collect();
    if watched.is_empty() {
        println!("no viewers: nothing to judge");
        return;
    }

    // Time to first data: the p99 of every viewer count, no viewer left without data.
    let mut ok = true;
    let mut parts = Vec::new();
    for r in &watched {
        if r.first_data_ms.is_empty() || r.failed > 0 {
            ok = false;
            parts.push(format!(
                "{} of {} viewers without data at {} viewers",
                r.failed, r.viewers, r.viewers
            ));
            continue;
        }
        let mut v = r.first_data_ms.clone();
        let p99 = percentile(&mut v, 0.99);
        ok &= p99 <= FIRST_DATA_TARGET_MS;
        parts.push(format!(
            "p50 {:.0} ms, p99 {p99:.0} ms at {} viewers",
            percentile(&mut v, 0.5),
            r.viewers
        ));
    }
    let mut late: Vec<f64> = watched.iter().flat_map(|r| r.late_ms.clone()).collect();
    if !late.is_empty() {
        parts.push(format!(
            "later page loads p50 {:.0} ms",
            percentile(&mut late, 0.5)
        ));
    }
    println!(
        "time to first data on page load <= {FIRST_DATA_TARGET_MS:.0} ms: {} ({})",
        met(ok),
        parts.join("; ")
    );

    // Queries: at most one run per panel per interval, whatever the number of viewers.
    let mut ok = true;
    let mut parts = Vec::new();
    for r in &watched {
        let worst = r.runs.iter().map(|x| x.3).fold(0.0, f64::max);
        ok &= !r.runs.is_empty() && r.runs.iter().all(|x| x.1 <= x.2);
        let total: u64 = r.runs.iter().map(|x| x.1).sum();
        let per_viewer: u64 = r.runs.iter().map(|x| x.2).sum::<u64>() * r.viewers as u64;
        parts.push(format!(
            "max {worst:.2} at {} viewers: {total} queries where one per viewer would be {per_viewer}",
            r.viewers
        ));
    }
    println!(
        "queries per panel per interval <= 1: {} ({})",
        met(ok),
        parts.join("; ")
    );

    // CPU: the most viewers against the fewest.
    let fewest = rounds.iter().min_by_key(|r| r.viewers).expect("not empty");
    let most = rounds.iter().max_by_key(|r| r.viewers).expect("not empty");
    if most.viewers > fewest.viewers {
        let growth = most.server_cpu / fewest.server_cpu.max(1e-9);
        let per_viewer_ms =
            (most.server_cpu - fewest.server_cpu) / (most.viewers - fewest.viewers) as f64 * 1e3;
        println!(
            "server CPU does not grow with viewers (at most x{CPU_GROWTH_LIMIT} from {} to {} viewers): {} ({:.3} -> {:.3} CPU s/s, x{growth:.2}; {per_viewer_ms:.2} ms of CPU per second per added viewer)",
            fewest.viewers,
            most.viewers,
            met(growth <= CPU_GROWTH_LIMIT),
            fewest.server_cpu,
            most.server_cpu,
        );
    }

    // Ingest: the offered rate was stored meanwhile (within 5%).
    let slowest = rounds
        .iter()
        .map(|r| r.ingested_per_s)
        .fold(f64::INFINITY, f64::min);
    println!(
        "ingest kept up with {rate} tweets/s during the steady phases: {} (lowest {slowest:.0} tweets/s)",
        met(slowest >= rate as f64 * 0.95)
    );
}

/// What one simulated viewer saw.
#[derive(Default)]
struct ViewerStats {
    /// Microseconds from the page load's first request to data in every panel; 0 before.
    first_data_us: AtomicU64,
    /// Microseconds from the first request to the page and its assets loaded (before the
    /// live stream opens); 0 before.
    page_us: AtomicU64,
    /// Events carrying results, all panels together.
    events: AtomicU64,
    /// Events carrying a query error.
    errors: AtomicU64,
    /// Why the page load or a feed failed.
    failure: Mutex<Option<String>>,
}

impl ViewerStats {
    fn first_data_ms(&self) -> Option<f64> {
        match self.first_data_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(us as f64 / 1e3),
        }
    }

    /// Data in every panel, or given up.
    fn done(&self) -> bool {
        self.first_data_ms().is_some() || self.failure.lock().expect("not poisoned").is_some()
    }
}

/// A simulated browser tab on the dashboard, until `stop`.
async fn viewer(addr: SocketAddr, stats: Arc<ViewerStats>, stop: watch::Receiver<bool>) {
    if let Err(e) = view(addr, &stats, stop).await {
        let mut failure = stats.failure.lock().expect("not poisoned");
        failure.get_or_insert_with(|| format!("{e:#}"));
    }
}

/// Loads the page as the browser does (the page, then its scripts and style sheets in
/// parallel), then reads the view's live stream as `app.js` does (one `EventSource`: the
/// dashboard document, then each panel's results) until `stop`.
async fn view(
    addr: SocketAddr,
    stats: &Arc<ViewerStats>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let mut page = Conn::open(addr).await?;
    let html = page.get("/ui/", "text/html").await?;
    let mut fetches = JoinSet::new();
    for path in asset_paths(&String::from_utf8_lossy(&html)) {
        fetches.spawn(async move { Conn::open(addr).await?.get(&path, "*/*").await.map(|_| ()) });
    }
    while let Some(r) = fetches.join_next().await {
        r??;
    }
    stats
        .page_us
        .store(t0.elapsed().as_micros().max(1) as u64, Ordering::Relaxed);

    let path = format!("{API}/dashboards/{DASHBOARD}/live");
    let head = page.send(&path, "text/event-stream").await?;
    if head.status != 200 {
        let body = page.body(&head).await.unwrap_or_default();
        bail!(
            "GET {path}: {} {}",
            head.status,
            String::from_utf8_lossy(&body)
        );
    }
    anyhow::ensure!(head.chunked, "GET {path}: not a chunked event stream");
    let mut events = EventReader {
        conn: page,
        buf: Vec::new(),
        scanned: 0,
    };
    // Panels without results yet; filled from the `dashboard` event.
    let mut waiting: Option<std::collections::HashSet<String>> = None;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let event = tokio::select! {
            e = events.next() => e?,
            _ = stop.changed() => return Ok(()),
        };
        let Some((name, data)) = event else {
            bail!("GET {path}: the server ended the stream");
        };
        match name.as_str() {
            "dashboard" => {
                let v: Value = serde_json::from_str(&data).context("the dashboard event")?;
                if waiting.is_none() {
                    let panels: std::collections::HashSet<String> = v["dashboard"]["panels"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|p| p["id"].as_str().map(str::to_owned))
                        .collect();
                    anyhow::ensure!(!panels.is_empty(), "the dashboard has no panels");
                    waiting = Some(panels);
                }
            }
            "panel" => {
                let payload: Payload =
                    serde_json::from_str(&data).with_context(|| format!("an event of {path}"))?;
                if payload.results.is_none() {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                stats.events.fetch_add(1, Ordering::Relaxed);
                let Some(w) = waiting.as_mut() else {
                    bail!("GET {path}: a panel event before the dashboard event");
                };
                if w.remove(&payload.panel) && w.is_empty() {
                    let us = t0.elapsed().as_micros().max(1) as u64;
                    stats.first_data_us.store(us, Ordering::Relaxed);
                }
            }
            other => bail!("GET {path}: an event named {other:?}"),
        }
    }
}

#[derive(serde::Deserialize)]
struct Payload {
    #[serde(default)]
    panel: String,
    #[serde(default)]
    results: Option<serde::de::IgnoredAny>,
}

/// The `/ui/` scripts and style sheets a page names in `src` and `href` attributes.
fn asset_paths(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in ["src=\"", "href=\""] {
        let mut rest = html;
        while let Some(i) = rest.find(attr) {
            rest = &rest[i + attr.len()..];
            let Some(end) = rest.find('"') else { break };
            if rest[..end].starts_with("/ui/") {
                out.push(rest[..end].to_owned());
            }
            rest = &rest[end..];
        }
    }
    out
}

/// The dashboard's feeds from `GET /live/stats`: (panel, viewers, query runs).
async fn live_feeds(addr: SocketAddr) -> anyhow::Result<Vec<(String, u64, u64)>> {
    let body = Conn::open(addr)
        .await?
        .get(&format!("{API}/live/stats"), "application/json")
        .await?;
    let v: Value = serde_json::from_slice(&body)?;
    Ok(v["feeds"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["dashboard"] == DASHBOARD)
        .map(|f| {
            (
                f["panel"].as_str().unwrap_or("").to_owned(),
                f["viewers"].as_u64().unwrap_or(0),
                f["runs"].as_u64().unwrap_or(0),
            )
        })
        .collect())
}

/// (thread or process name, CPU seconds) from a `/proc/.../stat` line.
fn stat_cpu(text: &str) -> Option<(&str, f64)> {
    let name = &text[text.find('(')? + 1..text.rfind(')')?];
    let f: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some((name, ticks / TICKS))
}

/// CPU seconds of this process (all threads, ended ones too) and of the viewers' threads.
fn process_cpu() -> (f64, f64) {
    let process = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| stat_cpu(&s).map(|x| x.1))
        .unwrap_or(0.0);
    let mut viewers = 0.0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("stat"))
                && let Some((name, cpu)) = stat_cpu(&s)
                && name == VIEWER_THREAD
            {
                viewers += cpu;
            }
        }
    }
    (process, viewers)
}

/// CPU seconds the whole machine has been busy (all but idle and I/O wait), from /proc/stat.
fn machine_cpu() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?;
            let f: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal (guest time is within user).
            let total: f64 = f.iter().take(8).sum();
            Some((total - f.get(3)? - f.get(4)?) / TICKS)
        })
        .unwrap_or(0.0)
}

/// An HTTP/1.1 client connection: keep-alive, bodies with Content-Length or chunked, and
/// chunks read one at a time for event streams.
struct Conn {
    io: BufReader<TcpStream>,
    host: String,
}

struct Head {
    status: u16,
    length: Option<usize>,
    chunked: bool,
}

impl Conn {
    async fn open(addr: SocketAddr) -> anyhow::Result<Conn> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Conn {
            io: BufReader::new(s),
            host: addr.to_string(),
        })
    }

    /// Sends a GET and reads the response's status and headers.
    async fn send(&mut self, path: &str, accept: &str) -> anyhow::Result<Head> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: {accept}\r\nUser-Agent: tarn-bench-live\r\n\r\n",
            self.host
        );
        self.io.get_mut().write_all(request.as_bytes()).await?;
        let mut line = String::new();
        self.io.read_line(&mut line).await?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("GET {path}: status line {line:?}"))?;
        let mut head = Head {
            status,
            length: None,
            chunked: false,
        };
        loop {
            line.clear();
            if self.io.read_line(&mut line).await? == 0 {
                bail!("GET {path}: the connection closed in the headers");
            }
            let l = line.trim_end();
            if l.is_empty() {
                return Ok(head);
            }
            if let Some((k, v)) = l.split_once(':') {
                let v = v.trim();
                if k.eq_ignore_ascii_case("content-length") {
                    head.length = v.parse().ok();
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    head.chunked = v.to_ascii_lowercase().contains("chunked");
                }
            }
        }
    }

    /// The next chunk of a chunked body; `None` after the last.
    async fn chunk(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        let mut line = String::new();
        if self.io.read_line(&mut line).await? == 0 {
            bail!("the connection closed in a chunked body");
        }
        let size = line.trim_end().split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(size, 16).with_context(|| format!("chunk size line {line:?}"))?;
        if size == 0 {
            // Trailers, up to an empty line.
            loop {
                line.clear();
                if self.io.read_line(&mut line).await? == 0 || line.trim_end().is_empty() {
                    return Ok(None);
                }
            }
        }
        let mut buf = vec![0; size + 2];
        self.io.read_exact(&mut buf).await?;
        buf.truncate(size);
        Ok(Some(buf))
    }

    async fn body(&mut self, head: &Head) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::new();
        if head.chunked {
            while let Some(c) = self.chunk().await? {
                out.extend_from_slice(&c);
            }
        } else if let Some(n) = head.length {
            out.resize(n, 0);
            self.io.read_exact(&mut out).await?;
        } else {
            self.io.read_to_end(&mut out).await?;
        }
        Ok(out)
    }

    /// A GET answered with 200: its body.
    async fn get(&mut self, path: &str, accept: &str) -> anyhow::Result<Vec<u8>> {
        let head = self.send(path, accept).await?;
        let body = self.body(&head).await?;
        if head.status != 200 {
            bail!(
                "GET {path}: {} {}",
                head.status,
                String::from_utf8_lossy(&body)
            );
        }
        Ok(body)
    }
}

/// Server-sent events from a chunked response.
struct EventReader {
    conn: Conn,
    /// Received text not yet cut into events (carriage returns dropped).
    buf: Vec<u8>,
    /// How far `buf` is known to hold no blank line.
    scanned: usize,
}

impl EventReader {
    /// The name (`message` when unnamed) and data of the next event that has data
    /// (comments and keep-alives skipped); `None` when the stream ends.
    async fn next(&mut self) -> anyhow::Result<Option<(String, String)>> {
        loop {
            let from = self.scanned.saturating_sub(1);
            if let Some(i) = self.buf[from..].windows(2).position(|w| w == b"\n\n") {
                let end = from + i + 2;
                let event: Vec<u8> = self.buf.drain(..end).collect();
                self.scanned = 0;
                if let Some(parsed) = parse_event(&String::from_utf8_lossy(&event)) {
                    return Ok(Some(parsed));
                }
                continue;
            }
            self.scanned = self.buf.len();
            match self.conn.chunk().await? {
                Some(c) => self.buf.extend(c.into_iter().filter(|&b| b != b'\r')),
                None => return Ok(None),
            }
        }
    }
}

/// An event's name and data, from its lines; `None` when it has no data.
fn parse_event(text: &str) -> Option<(String, String)> {
    let mut name = "message".to_owned();
    let mut data: Option<String> = None;
    for line in text.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => name = value.to_owned(),
            "data" => match &mut data {
                Some(s) => {
                    s.push('\n');
                    s.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            _ => {}
        }
    }
    data.map(|d| (name, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_name_their_assets() {
        let html = r##"<link rel="stylesheet" href="/ui/app.css"><a href="#/d/x">x</a>
            <script src="/ui/vendor/u.js"></script>"##;
        assert_eq!(asset_paths(html), ["/ui/vendor/u.js", "/ui/app.css"]);
    }

    #[test]
    fn events_have_names_and_data() {
        assert_eq!(
            parse_event("event: panel\ndata: {\"a\":1}\n\n"),
            Some(("panel".to_owned(), "{\"a\":1}".to_owned()))
        );
        assert_eq!(
            parse_event("data:x\ndata: y\n"),
            Some(("message".to_owned(), "x\ny".to_owned()))
        );
        assert_eq!(parse_event(": keep-alive\n\n"), None);
    }

    #[test]
    fn stat_lines_give_cpu_seconds() {
        let line = "42 (tarn viewer) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0";
        assert_eq!(stat_cpu(line), Some(("tarn viewer", 3.0)));
    }
}
