//! `tarn bench --scale-docs N`: the tutorial's six queries over N generated tweets spread
//! over 24 hours (10 million are about 30 GB of JSON, more than this machine's memory),
//! against DuckDB and chDB loaded from the same file in the same run.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::mpsc;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;
use tarn_sql::QueryEngine;
use tarn_storage::document::{IngestContext, prepare_text};
use tarn_storage::{DEFAULT_WORKSPACE, SealPolicy, Storage};

use crate::bench::{
    BenchArgs, compare_with_peers, cpu_seconds, dir_size, engine_query, median, rss_bytes,
    tutorial_queries, tweets_collection_options,
};
use crate::tweets::TweetGenerator;

/// Tweets per generated chunk (one zstd frame) and per stored batch.
const CHUNK: usize = 2_000;
const DAY_MS: i64 = 86_400_000;

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    // Checked before minutes of generating and loading.
    let names = crate::demo::TUTORIAL_QUERIES.map(|(name, _)| name);
    if let Some(unknown) = args
        .only
        .iter()
        .find(|o| !names.iter().any(|name| name.eq_ignore_ascii_case(o)))
    {
        anyhow::bail!(
            "--only {unknown:?} names no tutorial query; they are: {}",
            names.join(", ")
        );
    }
    let n = args.scale_docs;
    let ndjson = args.dir.join("tweets.ndjson.zst");
    let data = args.dir.join("data");
    // What a later `--reuse` run needs to know of this one.
    let run_file = args.dir.join("scale-run.json");
    let (now_ms, json_mb, storage, c) = if args.reuse {
        let run: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&run_file).with_context(|| {
                format!(
                    "--reuse: reading {} (left by a --keep run)",
                    run_file.display()
                )
            })?)?;
        let (Some(now_ms), Some(json_bytes), Some(docs)) = (
            run["now_ms"].as_i64(),
            run["json_bytes"].as_u64(),
            run["docs"].as_u64(),
        ) else {
            anyhow::bail!(
                "--reuse: {} lacks now_ms, json_bytes or docs",
                run_file.display()
            );
        };
        anyhow::ensure!(
            docs == n as u64,
            "--reuse: {} holds {docs} tweets, not --scale-docs {n}",
            args.dir.display()
        );
        let json_mb = json_bytes as f64 / 1e6;
        let (storage, c) = if data.exists() {
            let started = Instant::now();
            let storage = Storage::open(&data, SealPolicy::default())?;
            let (_, c) = storage.get_collection(DEFAULT_WORKSPACE, "bench")?;
            println!(
                "reusing {} tweets in {}: opened in {:.1} s",
                docs,
                args.dir.display(),
                started.elapsed().as_secs_f64()
            );
            (storage, c)
        } else {
            // Reloads tarn alone from the kept tweets (after a change to how tarn stores
            // them), without generating them again.
            println!(
                "reusing the {docs} tweets of {}; loading tarn again into {}",
                ndjson.display(),
                data.display()
            );
            load_tarn(&ndjson, &data, json_mb).await?
        };
        (now_ms, json_mb, storage, c)
    } else {
        let _ = std::fs::remove_dir_all(&args.dir);
        std::fs::create_dir_all(&args.dir)?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let started = Instant::now();
        let (json_bytes, zst_bytes) = generate(&ndjson, n, now_ms)?;
        let json_mb = json_bytes as f64 / 1e6;
        println!(
            "generated {n} tweets over 24 hours: {:.1} GB of JSON ({} bytes/tweet), {:.1} GB as zstd, in {:.0} s",
            json_mb / 1e3,
            json_bytes / n.max(1) as u64,
            zst_bytes as f64 / 1e9,
            started.elapsed().as_secs_f64()
        );
        std::fs::write(
            &run_file,
            json!({"now_ms": now_ms, "json_bytes": json_bytes, "docs": n}).to_string(),
        )?;
        let (storage, c) = load_tarn(&ndjson, &data, json_mb).await?;
        (now_ms, json_mb, storage, c)
    };
    let cache = tarn_storage::cache::column_cache();
    anyhow::ensure!(
        c.stats().doc_count == n as u64,
        "tarn holds {} documents, not {n}",
        c.stats().doc_count
    );

    let engine = QueryEngine::new(storage.clone());
    let mut tarn_ms: Vec<(&str, f64)> = Vec::new();
    for (name, sql) in tutorial_queries("bench", now_ms) {
        if !args.only.is_empty() && !args.only.iter().any(|o| name.eq_ignore_ascii_case(o)) {
            continue;
        }
        let t = Instant::now();
        let first = engine_query(&engine, &sql).await?;
        let first_ms = t.elapsed().as_secs_f64() * 1e3;
        let mut times = Vec::new();
        for _ in 0..args.runs.max(1) {
            let t = Instant::now();
            engine_query(&engine, &sql).await?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let run = median(&mut times);
        tarn_ms.push((name, run));
        println!(
            "{name}: tarn median {run:.2} ms (first run {first_ms:.1} ms); {} rows, first {}",
            first.results.len(),
            first
                .results
                .first()
                .map_or("none".into(), |r| serde_json::Value::Object(r.clone())
                    .to_string())
        );
    }
    println!(
        "RSS after the queries {:.1} GB; column cache {:.1} GB",
        rss_bytes() as f64 / 1e9,
        cache.used() as f64 / 1e9
    );
    // The peers get the memory tarn held.
    drop(engine);
    storage.close();
    drop(c);
    drop(storage);
    cache.set_budget(0);
    compare_with_peers(
        &args.python,
        &ndjson,
        now_ms,
        &args.dir,
        json_mb,
        None,
        &tarn_ms,
    )?;
    if args.keep || args.reuse {
        println!(
            "kept {} (serve it with: tarn serve --data-dir {})",
            args.dir.display(),
            data.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&args.dir);
    }
    Ok(())
}

/// Loads the tweets of `ndjson` into a new tarn store in `data`, sealed, and prints the
/// load's rate, CPU, disk and memory.
async fn load_tarn(
    ndjson: &Path,
    data: &Path,
    json_mb: f64,
) -> anyhow::Result<(
    std::sync::Arc<Storage>,
    std::sync::Arc<tarn_storage::Collection>,
)> {
    let storage = Storage::open(data, SealPolicy::default())?;
    let (_, c) = storage.create_collection(
        DEFAULT_WORKSPACE,
        "bench",
        "",
        tweets_collection_options(),
        Default::default(),
    )?;
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    let (c2, path) = (c.clone(), ndjson.to_owned());
    tokio::task::spawn_blocking(move || load(&path, &c2)).await??;
    c.seal().await?;
    let secs = started.elapsed().as_secs_f64();
    let cache = tarn_storage::cache::column_cache();
    println!(
        "tarn load (zstd decoding included): {secs:.0} s, {:.1} MB/s of JSON, {:.1} MB per CPU-second; \
         disk {:.2} GB in {} segments; RSS {:.1} GB; column cache {:.1} of {:.1} GB",
        json_mb / secs,
        json_mb / (cpu_seconds() - cpu_before).max(1e-9),
        dir_size(data) as f64 / 1e9,
        c.stats().segments,
        rss_bytes() as f64 / 1e9,
        cache.used() as f64 / 1e9,
        cache.budget() as f64 / 1e9,
    );
    Ok((storage, c))
}

/// Writes `n` tweets spread over the day before `now_ms` to `path` as NDJSON in zstd frames
/// of [`CHUNK`] tweets, generated on every core; returns the JSON and the file's bytes.
fn generate(path: &Path, n: usize, now_ms: i64) -> anyhow::Result<(u64, u64)> {
    let workers = std::thread::available_parallelism().map_or(1, |c| c.get());
    let chunks = n.div_ceil(CHUNK);
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let (tx, rx) = mpsc::sync_channel::<anyhow::Result<(usize, usize, Vec<u8>)>>(workers * 4);
    std::thread::scope(|scope| -> anyhow::Result<(u64, u64)> {
        for w in 0..workers {
            let tx = tx.clone();
            scope.spawn(move || {
                let mut tweets = TweetGenerator::new(
                    42 + w as u64,
                    vec!["music".into(), "facebook".into(), "apple".into()],
                );
                for k in (w..chunks).step_by(workers) {
                    let frame = (|| -> anyhow::Result<(usize, usize, Vec<u8>)> {
                        let mut text = Vec::with_capacity(CHUNK * 3_500);
                        for i in k * CHUNK..((k + 1) * CHUNK).min(n) {
                            let t = now_ms - DAY_MS + (i as i64 * DAY_MS) / n as i64;
                            serde_json::to_writer(&mut text, &tweets.tweet(t))?;
                            text.push(b'\n');
                        }
                        Ok((k, text.len(), zstd::bulk::compress(&text, 1)?))
                    })();
                    if tx.send(frame).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        // Frames are written in chunk order, so the file's tweets are in time order.
        let mut pending = std::collections::BTreeMap::new();
        let (mut next, mut json_bytes, mut zst_bytes) = (0, 0u64, 0u64);
        for frame in rx {
            let (k, len, bytes) = frame?;
            pending.insert(k, (len, bytes));
            while let Some((len, bytes)) = pending.remove(&next) {
                out.write_all(&bytes)?;
                json_bytes += len as u64;
                zst_bytes += bytes.len() as u64;
                next += 1;
            }
        }
        anyhow::ensure!(
            next == chunks,
            "a generator stopped at chunk {next} of {chunks}"
        );
        out.flush()?;
        Ok((json_bytes, zst_bytes))
    })
}

/// Stores the NDJSON of `path` in `c`: one thread decompresses and splits lines, one per
/// core prepares and inserts batches of [`CHUNK`], as the HTTP API's handlers would.
fn load(path: &Path, c: &tarn_storage::Collection) -> anyhow::Result<()> {
    let workers = std::thread::available_parallelism().map_or(1, |c| c.get());
    let (tx, rx) = mpsc::sync_channel::<Vec<Vec<u8>>>(workers * 2);
    let rx = std::sync::Mutex::new(rx);
    let options = tweets_collection_options();
    let meta = json!({"source": "bench"});
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let mut inserters = Vec::new();
        for _ in 0..workers {
            inserters.push(scope.spawn(|| -> anyhow::Result<()> {
                let ctx = IngestContext {
                    event_time_info: options.event_time_info.as_ref(),
                    now_micros: 0,
                    meta: &meta,
                };
                loop {
                    let Ok(lines) = rx.lock().expect("not poisoned").recv() else {
                        return Ok(());
                    };
                    let preparing = tarn_storage::build::Preparing::start();
                    let docs = lines
                        .into_iter()
                        .map(|l| {
                            let doc = prepare_text(&l, &ctx)
                                .context("a generated tweet went the value path")?
                                .map_err(anyhow::Error::msg)?;
                            Ok((doc, l))
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    drop(preparing);
                    c.insert_blocking(docs, Vec::new())?;
                }
            }));
        }
        let read = (|| -> anyhow::Result<()> {
            let file = std::fs::File::open(path)?;
            let mut lines =
                std::io::BufReader::with_capacity(1 << 20, zstd::stream::read::Decoder::new(file)?);
            loop {
                let mut chunk = Vec::with_capacity(CHUNK);
                for _ in 0..CHUNK {
                    let mut line = Vec::with_capacity(4_096);
                    if lines.read_until(b'\n', &mut line)? == 0 {
                        break;
                    }
                    if line.last() == Some(&b'\n') {
                        line.pop();
                    }
                    chunk.push(line);
                }
                if chunk.is_empty() {
                    return Ok(());
                }
                if tx.send(chunk).is_err() {
                    anyhow::bail!("the inserters stopped");
                }
            }
        })();
        drop(tx);
        for h in inserters {
            h.join()
                .map_err(|_| anyhow::anyhow!("an inserter panicked"))??;
        }
        read
    })
}
