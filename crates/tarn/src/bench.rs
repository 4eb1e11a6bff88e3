//! `tarn bench`: ingest throughput, freshness, a one-minute window count, memory and disk, and
//! the same NDJSON loaded into DuckDB and chDB when a Python with them is available.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use tarn_sql::{QueryEngine, QueryRequest};
use tarn_storage::document::{IngestContext, prepare, prepare_text};
use tarn_storage::{CollectionOptions, DEFAULT_WORKSPACE, EventTimeInfo, SealPolicy, Storage};

use crate::tweets::TweetGenerator;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Documents to generate and load.
    #[arg(long, default_value_t = 200_000)]
    pub docs: usize,
    /// Python with `duckdb` and `chdb` (made by scripts/bench-deps); skipped when absent.
    #[arg(long, default_value = ".venv-bench/bin/python")]
    pub python: PathBuf,
    /// Small documents over 24 hours for the one-minute window count at scale.
    #[arg(long, default_value_t = 10_000_000)]
    pub window_docs: usize,
    /// Scratch directory (deleted afterwards).
    #[arg(long, default_value = "./tarn-bench")]
    pub dir: PathBuf,
    /// Run only the Kafka streaming benchmark: ingest through the Kafka source at each of
    /// `--kafka-rates` tweets/s, then drain a backlog at full speed.
    #[arg(long)]
    pub kafka: bool,
    #[arg(long, value_delimiter = ',', default_value = "5000,6700,20000")]
    pub kafka_rates: Vec<u64>,
    /// Seconds of producing at each rate.
    #[arg(long, default_value_t = 10)]
    pub kafka_secs: u64,
    /// Tweets in the backlog a new collection drains at full speed (800,000 are 2.4 GB,
    /// held twice in memory: by the bench and by the in-process broker). The rate is
    /// reported for the whole drain and for its second half, the sustained one.
    #[arg(long, default_value_t = 800_000)]
    pub kafka_backlog: usize,
    /// Run only the live-dashboard benchmark: the demo's stream at `--live-rate` tweets/s
    /// and, for each of `--live-viewers`, that many simulated viewers of the Tweets dashboard.
    #[arg(long)]
    pub live: bool,
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    pub live_viewers: Vec<usize>,
    #[arg(long, default_value_t = 5_000)]
    pub live_rate: u64,
    /// Seconds of the measured steady phase at each viewer count.
    #[arg(long, default_value_t = 20)]
    pub live_secs: u64,
    /// Run only the queries-at-scale benchmark: this many generated tweets over 24 hours,
    /// loaded into tarn, DuckDB and chDB from one zstd-compressed NDJSON file, then the
    /// tutorial's six queries on each (for example 10000000).
    #[arg(long, default_value_t = 0)]
    pub scale_docs: usize,
    /// Keep the scale benchmark's data directory (`DIR/data`, for `tarn serve`) and its
    /// NDJSON instead of deleting them.
    #[arg(long)]
    pub keep: bool,
    /// Run the scale benchmark again over what a `--keep` run left in `--dir`: no
    /// generating, and no loading for tarn unless `DIR/data` was deleted (DuckDB and chDB
    /// load the NDJSON again); kept after.
    #[arg(long)]
    pub reuse: bool,
    /// Runs of each query in the scale benchmark, after a first one; their median is reported.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Run only the tutorial queries of these names (for profiling one
    /// query: `--only "Live Tweets" --runs 5000`); all six when empty.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Column cache budget in MiB for this run (the server's --cache-mb).
    #[arg(long)]
    pub cache_mb: Option<usize>,
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

pub(crate) use tarn_common::time::process_cpu_seconds as cpu_seconds;

pub(crate) fn rss_bytes() -> u64 {
    status_bytes("VmRSS:")
}

/// A size from `/proc/self/status` (`VmRSS:`, `RssAnon:`, `RssFile:`), 0 where unreadable.
fn status_bytes(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

pub(crate) use tarn_common::fs::dir_size;

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(mb) = args.cache_mb {
        tarn_storage::cache::column_cache().set_budget(mb << 20);
    }
    if args.scale_docs > 0 {
        return crate::bench_scale::run(&args).await;
    }
    if args.kafka {
        return crate::bench_kafka::run(&args).await;
    }
    if args.live {
        return crate::bench_live::run(
            &args.dir,
            &args.live_viewers,
            args.live_rate,
            args.live_secs,
        )
        .await;
    }
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let ndjson = args.dir.join("tweets.ndjson");
    // Tweets spread over the last 24 hours, as a day of a stream would be.
    let now_ms = chrono::Utc::now().timestamp_millis();
    let day_ms = 86_400_000i64;
    {
        let mut gen_ =
            TweetGenerator::new(42, vec!["music".into(), "facebook".into(), "apple".into()]);
        let mut w = std::io::BufWriter::new(std::fs::File::create(&ndjson)?);
        for i in 0..args.docs {
            let t = now_ms - day_ms + (i as i64 * day_ms) / args.docs as i64;
            serde_json::to_writer(&mut w, &gen_.tweet(t))?;
            w.write_all(b"\n")?;
        }
    }
    let text = std::fs::read(&ndjson)?;
    let mb = text.len() as f64 / 1e6;
    println!(
        "generated {} tweets, {:.1} MB ({} bytes/tweet)",
        args.docs,
        mb,
        text.len() / args.docs.max(1)
    );

    // 1. Storage engine ingest: parse, prepare, log with fsync, build columns.
    let data = args.dir.join("data");
    tarn_common::allocator::release_freed();
    let rss_before = rss_bytes();
    let file_before = status_bytes("RssFile:");
    let storage = Storage::open(&data, SealPolicy::default())?;
    let options = tweets_collection_options();
    let (info, c) = storage.create_collection(
        DEFAULT_WORKSPACE,
        "bench",
        "",
        options.clone(),
        Default::default(),
    )?;
    let meta = json!({"source": "bench"});
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    let lines: Vec<&[u8]> = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    // As the HTTP API and the stream sources do, each worker thread parses and prepares its
    // own batches (columns and log record) and hands them to the collection's writer, which
    // commits concurrent batches together.
    let next_chunk = std::sync::atomic::AtomicUsize::new(0);
    let chunks: Vec<&[&[u8]]> = lines.chunks(2000).collect();
    let ctx = IngestContext {
        event_time_info: info.options.event_time_info.as_ref(),
        now_micros: 0,
        meta: &meta,
    };
    // Two writers per core, as a bulk loader keeps requests in flight: with one per core,
    // a core idles while its writer waits for the group commit's fsync.
    let writers = 2 * cores as usize;
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..writers)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let i = next_chunk.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(chunk) = chunks.get(i) else {
                            return Ok(());
                        };
                        let preparing = tarn_storage::build::Preparing::start();
                        let docs = chunk
                            .iter()
                            .map(|l| {
                                Ok((
                                    prepare_text(l, &ctx)
                                        .context("a generated tweet went the value path")?
                                        .map_err(anyhow::Error::msg)?,
                                    l.to_vec(),
                                ))
                            })
                            .collect::<anyhow::Result<Vec<_>>>()?;
                        drop(preparing);
                        c.insert_blocking(docs, Vec::new())?;
                    }
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("an ingest worker panicked"))??;
        }
        Ok(())
    })?;
    let secs = started.elapsed().as_secs_f64();
    let cpu_secs = cpu_seconds() - cpu_before;
    let storage_mbps = mb / secs;
    // MB per CPU-second does not depend on what else the machine runs meanwhile.
    println!(
        "storage ingest ({writers} writers): {:.0} docs/s, {:.1} MB/s ({:.1} MB/s per core over {cores} cores; \
         {:.1} MB per CPU-second used)",
        args.docs as f64 / secs,
        storage_mbps,
        storage_mbps / cores,
        mb / cpu_secs.max(1e-9)
    );
    c.seal().await?;
    let disk = dir_size(&data);
    let per_million = 1e6 / args.docs as f64;
    let arrow_bytes = c.stats().total_size;
    println!(
        "disk: {:.0} MB per million docs; all columns decoded would take {:.0} MB per million docs \
         (decoded/disk = {:.2})",
        disk as f64 / 1e6 * per_million,
        arrow_bytes as f64 / 1e6 * per_million,
        arrow_bytes as f64 / disk.max(1) as f64
    );

    // 2. One-minute window count over the loaded day.
    let window_ms =
        median_window_count_ms(&QueryEngine::new(storage.clone()), "bench", now_ms).await?;
    println!(
        "one-minute _event_time window count over {} docs: median {:.2} ms",
        args.docs, window_ms
    );

    // 2a. The tutorial's six queries (typos fixed) and the dialect layer's share of planning.
    let engine = QueryEngine::new(storage.clone());
    let mut tarn_ms: Vec<(&str, f64)> = Vec::new();
    for (name, sql) in tutorial_queries("bench", now_ms) {
        let mut run_ms = Vec::new();
        let mut dialect_ms = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            engine_query(&engine, &sql).await?;
            run_ms.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            engine.dialect(&sql, &[])?;
            dialect_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let run = median(&mut run_ms);
        tarn_ms.push((name, run));
        println!(
            "{name}: median {run:.2} ms; dialect layer (parse, paths, rewrites) median {:.3} ms",
            median(&mut dialect_ms)
        );
    }

    // Memory once the dashboard has run: what the process holds beyond what it held before
    // the storage opened (the input text was read before), freed memory given back first.
    tarn_common::allocator::release_freed();
    let held = rss_bytes().saturating_sub(rss_before);
    println!(
        "memory after load, seal and the six queries: {:.0} MB per million docs of resident \
         growth ({:.0} MB decoded columns in the cache, {:.0} MB pages of mapped segment files); \
         memory/disk = {:.2}",
        held as f64 / 1e6 * per_million,
        tarn_storage::cache::column_cache().used() as f64 / 1e6 * per_million,
        status_bytes("RssFile:").saturating_sub(file_before) as f64 / 1e6 * per_million,
        held as f64 / disk.max(1) as f64
    );

    // 2b. The same window count over many small documents (10 million by default).
    if args.window_docs > 0 {
        let (count_ms, load_secs) =
            window_at_scale(&args.dir.join("window"), args.window_docs, now_ms).await?;
        println!(
            "one-minute window count over {} small docs (loaded in {load_secs:.1} s): median {count_ms:.2} ms",
            args.window_docs
        );
    }

    // 3. Through the HTTP API, and freshness.
    let (http_mbps, fresh) = http_phase(&args.dir.join("http"), &lines).await?;
    println!(
        "HTTP ingest: {:.1} MB/s ({:.1} MB/s per core)",
        http_mbps,
        http_mbps / cores
    );
    let mut f = fresh;
    println!(
        "freshness (200 response → counted by a query): p50 {:.2} ms, p99 {:.2} ms",
        percentile(&mut f, 0.5),
        percentile(&mut f, 0.99)
    );

    // 4. DuckDB and chDB on the same file.
    compare_with_peers(
        &args.python,
        &ndjson,
        now_ms,
        &args.dir,
        mb,
        Some(storage_mbps),
        &tarn_ms,
    )?;
    storage.close();
    drop(storage);
    let _ = std::fs::remove_dir_all(&args.dir);
    Ok(())
}

/// Loads `n` small documents spread over the last day, then times one-minute window counts.
async fn window_at_scale(dir: &Path, n: usize, now_ms: i64) -> anyhow::Result<(f64, f64)> {
    let storage = Storage::open(dir, SealPolicy::default())?;
    let (_, c) = storage.create_collection(
        DEFAULT_WORKSPACE,
        "w",
        "",
        CollectionOptions::default(),
        Default::default(),
    )?;
    let day_us = 86_400_000_000i64;
    let start_us = now_ms * 1000 - day_us;
    let started = Instant::now();
    let c2 = c.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let meta = Value::Null;
        let batch = 50_000;
        for b in 0..n.div_ceil(batch) {
            let docs = (b * batch..((b + 1) * batch).min(n))
                .map(|i| {
                    let kind = ["click", "view", "buy"][i % 3];
                    let body = json!({"n": i, "kind": kind});
                    let ctx = IngestContext {
                        event_time_info: None,
                        now_micros: start_us + (i as i64 * day_us) / n as i64,
                        meta: &meta,
                    };
                    let text = body.to_string().into_bytes();
                    Ok((prepare(body, &ctx).map_err(anyhow::Error::msg)?, text))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            c2.insert_blocking(docs, Vec::new())?;
        }
        Ok(())
    })
    .await??;
    let load_secs = started.elapsed().as_secs_f64();
    let count_ms = median_window_count_ms(&QueryEngine::new(storage.clone()), "w", now_ms).await?;
    storage.close();
    Ok((count_ms, load_secs))
}

/// A collection of tweets as the tutorial creates it: `_event_time` from `timestamp_ms`.
pub(crate) fn tweets_collection_options() -> CollectionOptions {
    CollectionOptions {
        event_time_info: Some(EventTimeInfo {
            field: "timestamp_ms".into(),
            format: Some("milliseconds_since_epoch".into()),
            time_zone: None,
        }),
        retention_secs: None,
    }
}

pub(crate) async fn engine_query(
    engine: &QueryEngine,
    sql: &str,
) -> anyhow::Result<tarn_sql::QueryOutput> {
    Ok(engine
        .query(&QueryRequest {
            sql: sql.to_owned(),
            ..Default::default()
        })
        .await?)
}

/// The tutorial's six queries (typos fixed) over `table`, with "now" fixed at `now_ms`, the
/// end of the generated data: the same windows for tarn, DuckDB and chDB, however long
/// each took to load.
pub(crate) fn tutorial_queries(table: &str, now_ms: i64) -> Vec<(&'static str, String)> {
    crate::demo::TUTORIAL_QUERIES
        .iter()
        .map(|(name, sql)| {
            let sql = sql.replace("\"twitter-kinesis-demo\"", table).replace(
                "current_timestamp()",
                &format!("timestamp_millis({now_ms})"),
            );
            (*name, sql)
        })
        .collect()
}

/// Loads `ndjson` (plain or `.zst`) into DuckDB and chDB with `python`, runs the six
/// queries there with "now" at `now_ms`, and prints each load rate and each ratio to
/// tarn's medians in `tarn_ms`. Skipped, saying so, without the venv.
pub(crate) fn compare_with_peers(
    python: &Path,
    ndjson: &Path,
    now_ms: i64,
    work_dir: &Path,
    json_mb: f64,
    tarn_ingest_mbps: Option<f64>,
    tarn_ms: &[(&str, f64)],
) -> anyhow::Result<()> {
    if !python.exists() {
        println!(
            "DuckDB/chDB comparison skipped: {} not found (run scripts/bench-deps)",
            python.display()
        );
        return Ok(());
    }
    let mut child = std::process::Command::new(python)
        .arg("-c")
        .arg(PY_PEERS)
        .arg(ndjson)
        .arg(now_ms.to_string())
        .arg(work_dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running the DuckDB/chDB loader")?;
    let stdout = child.stdout.take().expect("piped");
    // Lines are reported as they come: at scale each load takes minutes.
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line?;
        let fields: Vec<&str> = line.splitn(4, ' ').collect();
        match fields.as_slice() {
            ["load", peer, secs] => {
                if let Ok(secs) = secs.trim().parse::<f64>() {
                    let rate = json_mb / secs;
                    print!("{peer} load: {secs:.1} s, {rate:.1} MB/s");
                    match tarn_ingest_mbps {
                        Some(ours) => {
                            println!("; tarn storage ingest / {peer} = {:.2}", ours / rate)
                        }
                        None => println!(),
                    }
                }
            }
            ["query", peer, ms, name] => {
                if let (Ok(ms), Some((_, ours))) =
                    (ms.parse::<f64>(), tarn_ms.iter().find(|(n, _)| n == name))
                {
                    println!(
                        "{name}: {peer} median {ms:.2} ms; tarn {ours:.2} ms; tarn is {:.1}x faster",
                        ms / ours
                    );
                }
            }
            _ => println!("{line}"),
        }
    }
    let out = child.wait_with_output()?;
    if !out.status.success() || !out.stderr.is_empty() {
        println!(
            "the DuckDB/chDB loader reported: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The median time of 30 one-minute `_event_time` window counts spread over the last day.
async fn median_window_count_ms(
    engine: &QueryEngine,
    table: &str,
    now_ms: i64,
) -> anyhow::Result<f64> {
    let mut times = Vec::new();
    for i in 0..30 {
        let end = now_ms - (i * 7_919_000) % 86_400_000;
        let sql = format!(
            "SELECT count(*) FROM {table} WHERE _event_time > to_timestamp_millis({}) AND _event_time <= to_timestamp_millis({end})",
            end - 60_000
        );
        let t = Instant::now();
        engine
            .query(&QueryRequest {
                sql,
                ..Default::default()
            })
            .await?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(&mut times))
}

const PY_PEERS: &str = r#"
import sys, os, shutil, time, tempfile, statistics
path, now_ms, work = sys.argv[1], sys.argv[2], sys.argv[3]
DUCK = {
 "Live Tweets": "SELECT timestamp_ms, created_at, text, \"user\".screen_name AS screen_name FROM t WHERE CAST(timestamp_ms AS BIGINT) > NOW_MS - 60000 ORDER BY timestamp_ms DESC LIMIT 100",
 "Top Hashtags": "SELECT count(*) AS tweet_count, hashtag FROM (SELECT lower(unnest(extended_tweet.entities.hashtags).text) AS hashtag FROM t WHERE CAST(timestamp_ms AS BIGINT) > NOW_MS - 3600000) GROUP BY hashtag ORDER BY tweet_count DESC LIMIT 10",
 "Incoming Tweets": "SELECT count(*) FROM t WHERE CAST(timestamp_ms AS BIGINT) > NOW_MS - 2000",
 "Influencers": "SELECT \"user\".screen_name, \"user\".followers_count AS fc FROM t WHERE list_contains(list_transform(entities.hashtags, lambda x: x.text), 'music') GROUP BY 1, 2 ORDER BY 2 DESC LIMIT 5",
 "Related Hashtags": "SELECT h AS hashtag, count(*) AS c FROM (SELECT unnest(list_transform(entities.hashtags, lambda x: x.text)) AS h FROM t WHERE list_contains(list_transform(entities.hashtags, lambda x: x.text), 'music')) WHERE h != 'music' GROUP BY 1 ORDER BY 2 DESC LIMIT 10",
 "Live Tweets for #music": "SELECT timestamp_ms, text, \"user\".screen_name FROM t WHERE list_contains(list_transform(entities.hashtags, lambda x: x.text), 'music') AND CAST(timestamp_ms AS BIGINT) > NOW_MS - 60000 ORDER BY timestamp_ms DESC LIMIT 100",
}
TAGS = "arrayMap(x -> tupleElement(x, 'text'), tupleElement(entities, 'hashtags'))"
CH = {
 "Live Tweets": "SELECT timestamp_ms, created_at, text, tupleElement(user, 'screen_name') FROM t WHERE toInt64(timestamp_ms) > NOW_MS - 60000 ORDER BY timestamp_ms DESC LIMIT 100",
 "Top Hashtags": "SELECT count(*) AS tweet_count, lower(h) AS hashtag FROM t ARRAY JOIN arrayMap(x -> tupleElement(x, 'text'), tupleElement(tupleElement(extended_tweet, 'entities'), 'hashtags')) AS h WHERE toInt64(timestamp_ms) > NOW_MS - 3600000 GROUP BY hashtag ORDER BY tweet_count DESC LIMIT 10",
 "Incoming Tweets": "SELECT count(*) FROM t WHERE toInt64(timestamp_ms) > NOW_MS - 2000",
 "Influencers": f"SELECT tupleElement(user, 'screen_name') AS sn, tupleElement(user, 'followers_count') AS fc FROM t WHERE has({TAGS}, 'music') GROUP BY sn, fc ORDER BY fc DESC LIMIT 5",
 "Related Hashtags": f"SELECT h AS hashtag, count(*) AS c FROM t ARRAY JOIN {TAGS} AS h WHERE has({TAGS}, 'music') AND h != 'music' GROUP BY h ORDER BY c DESC LIMIT 10",
 "Live Tweets for #music": f"SELECT timestamp_ms, text, tupleElement(user, 'screen_name') FROM t WHERE has({TAGS}, 'music') AND toInt64(timestamp_ms) > NOW_MS - 60000 ORDER BY timestamp_ms DESC LIMIT 100",
}
DUCK = {k: v.replace("NOW_MS", now_ms) for k, v in DUCK.items()}
CH = {k: v.replace("NOW_MS", now_ms) for k, v in CH.items()}
def timed(run, n=10):
    times = []
    for _ in range(n):
        s = time.perf_counter(); run(); times.append((time.perf_counter() - s) * 1000)
    return statistics.median(times)
try:
    import duckdb
    # On disk, as chDB's MergeTree is: at scale the data does not fit in memory.
    con = duckdb.connect(os.path.join(work, "duck.db"))
    con.execute("SET enable_progress_bar = false")
    s = time.time()
    con.execute(f"CREATE TABLE t AS SELECT * FROM read_json_auto('{path}', format='newline_delimited', maximum_object_size=100000000)")
    print("load duckdb", time.time() - s, flush=True)
    for name, q in DUCK.items():
        print("query duckdb", timed(lambda: con.execute(q).fetchall()), name, flush=True)
    con.close()
except Exception as e:
    print("duckdb-error", e, file=sys.stderr)
# Each peer's database goes once measured (at 10 million tweets, 3 and 5 GB).
for f in ("duck.db", "duck.db.wal"):
    if os.path.exists(os.path.join(work, f)):
        os.remove(os.path.join(work, f))
chdb_dir = None
try:
    from chdb import session
    chdb_dir = tempfile.mkdtemp(dir=work)
    sess = session.Session(chdb_dir)
    s = time.time()
    sess.query("CREATE TABLE t ENGINE = MergeTree ORDER BY tuple() AS SELECT * FROM file('" + path + "', 'JSONEachRow')")
    print("load chdb", time.time() - s, flush=True)
    for name, q in CH.items():
        print("query chdb", timed(lambda: sess.query(q)), name, flush=True)
    getattr(sess, "close", lambda: None)()
except Exception as e:
    print("chdb-error", e, file=sys.stderr)
if chdb_dir:
    shutil.rmtree(chdb_dir, ignore_errors=True)
"#;

/// Loads through the HTTP API and measures freshness on the same server.
async fn http_phase(dir: &Path, lines: &[&[u8]]) -> anyhow::Result<(f64, Vec<f64>)> {
    let storage = Storage::open(dir, SealPolicy::default())?;
    let listener = tarn_server::bind_listener(([127, 0, 0, 1], 0).into())?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let state = tarn_server::AppState::new(storage.clone())?;
    let server = tokio::spawn(tarn_server::serve(listener, state, async {
        let _ = stop_rx.await;
    }));
    let base = format!("http://{addr}/v1/orgs/self");
    let bodies: Vec<Vec<u8>> = lines
        .chunks(500)
        .map(|chunk| {
            let mut b = b"{\"data\":[".to_vec();
            for (i, l) in chunk.iter().enumerate() {
                if i > 0 {
                    b.push(b',');
                }
                b.extend_from_slice(l);
            }
            b.extend_from_slice(b"]}");
            b
        })
        .collect();
    let total: usize = bodies.iter().map(Vec::len).sum();
    let base2 = base.clone();
    let result = tokio::task::spawn_blocking(move || -> anyhow::Result<(f64, Vec<f64>)> {
        let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(300))).build().into();
        agent.post(format!("{base2}/ws/commons/collections")).send(json!({"name": "h"}).to_string())?;
        let started = Instant::now();
        let bodies = Arc::new(bodies);
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let agent = agent.clone();
                let bodies = bodies.clone();
                let url = format!("{base2}/ws/commons/collections/h/docs");
                std::thread::spawn(move || -> anyhow::Result<()> {
                    for b in bodies.iter().skip(w).step_by(2) {
                        agent.post(&url).header("Content-Type", "application/json").send(&b[..])?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
        }
        let mbps = total as f64 / 1e6 / started.elapsed().as_secs_f64();
        let mut fresh = Vec::new();
        for i in 0..200 {
            let id = format!("fresh-{i}");
            agent
                .post(format!("{base2}/ws/commons/collections/h/docs"))
                .header("Content-Type", "application/json")
                .send(json!({"data": [{"_id": id, "probe": i}]}).to_string())?;
            let acked = Instant::now();
            loop {
                let q = json!({"sql": {"query": format!("SELECT count(*) AS n FROM h WHERE _id = '{id}'")}});
                let v: Value = agent.post(format!("{base2}/queries")).send(q.to_string())?.body_mut().read_json()?;
                if v["results"][0]["n"] == 1 {
                    break;
                }
            }
            fresh.push(acked.elapsed().as_secs_f64() * 1e3);
        }
        Ok((mbps, fresh))
    })
    .await??;
    let _ = stop_tx.send(());
    let _ = server.await;
    storage.close();
    Ok(result)
}
