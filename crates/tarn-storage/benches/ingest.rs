//! Storage-engine ingest throughput, without the rest of tarn: `cargo bench -p tarn-storage
//! --bench ingest`. Loads an NDJSON file of tweets (`TARN_BENCH_NDJSON`, by default the
//! recorded tweets in `../shared/data/real-tweets.ndjson` repeated to ~200 MB) the way
//! `tarn bench` does, and prints MB per CPU-second: the figure issue 3's 100 MB/s per
//! core is about, measured here in a build of this crate alone.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde_json::json;
use tarn_common::time::process_cpu_seconds as cpu_seconds;
use tarn_storage::build::{Preparing, documents_to_batch_texts};
use tarn_storage::catalog::{DEFAULT_WORKSPACE, Storage};
use tarn_storage::collection::{CollectionOptions, SealPolicy};
use tarn_storage::document::{EventTimeInfo, IngestContext, parse_limited, prepare, prepare_text};
use tarn_storage::segment::encode_ipc_with;

// The allocator the `tarn` binary uses, tuned as it tunes it (first thing in `main`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn input() -> Vec<u8> {
    let path = std::env::var_os("TARN_BENCH_NDJSON").map(PathBuf::from);
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this too, without it,
    // and there 2 MB check that the bench still works.
    let benching = std::env::args().any(|a| a == "--bench");
    let limit: usize = std::env::var("TARN_BENCH_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if benching { 200 } else { 2 })
        << 20;
    let (path, repeat) = match path {
        Some(p) => (p, false),
        None => (
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared/data/real-tweets.ndjson"),
            true,
        ),
    };
    let text = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "reading {} (set TARN_BENCH_NDJSON to an NDJSON file): {e}",
            path.display()
        )
    });
    let mut out = Vec::with_capacity(limit + text.len());
    for line in text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .cycle()
    {
        if out.len() >= limit || (!repeat && out.len() >= text.len()) {
            break;
        }
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out
}

/// The fewest seconds `f` took in `rounds` runs: the run the machine's noise disturbed least.
fn best_of(rounds: usize, f: &mut dyn FnMut()) -> f64 {
    (0..rounds)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// The stages alone, on one thread, over the first 20,000 documents: the best of five
/// rounds, which the machine's noise disturbs least.
fn stages(lines: &[&[u8]], ctx: &IngestContext) {
    let lines = &lines[..lines.len().min(20_000)];
    let mb = lines.iter().map(|l| l.len()).sum::<usize>() as f64 / 1e6;
    let best = |f: &mut dyn FnMut()| best_of(5, f);
    let prepare = |l: &&[u8]| prepare_text(l, ctx).expect("on a tape").expect("valid");
    let parse = best(&mut || {
        std::hint::black_box(lines.iter().map(prepare).collect::<Vec<_>>());
    });
    let docs: Vec<_> = lines.iter().map(prepare).collect();
    let pairs: Vec<_> = docs.iter().zip(lines).map(|(d, l)| (d, *l)).collect();
    let build = best(&mut || {
        for chunk in pairs.chunks(2000) {
            std::hint::black_box(documents_to_batch_texts(chunk));
        }
    });
    println!(
        "one thread: parse and prepare {:.1} MB/s, build columns {:.1} MB/s",
        mb / parse,
        mb / build
    );
}

/// What sealing one segment's worth of documents (up to 65,536) costs at each zstd level,
/// on one thread: encode MB/s and decode MB/s of the documents' JSON text, and how many times
/// smaller than that text the file is. The best of three rounds each.
fn codecs(lines: &[&[u8]], ctx: &IngestContext) {
    let lines = &lines[..lines.len().min(65_536)];
    let mb = lines.iter().map(|l| l.len()).sum::<usize>() as f64 / 1e6;
    let docs: Vec<_> = lines
        .iter()
        .map(|l| prepare_text(l, ctx).expect("on a tape").expect("valid"))
        .collect();
    let pairs: Vec<_> = docs.iter().zip(lines).map(|(d, l)| (d, *l)).collect();
    let batch = documents_to_batch_texts(&pairs);
    let best = |f: &mut dyn FnMut()| best_of(3, f);
    for level in [3, 1, -1, -3, -5] {
        let file = encode_ipc_with(&batch, level).expect("encoding");
        let encode = best(&mut || {
            std::hint::black_box(encode_ipc_with(&batch, level).expect("encoding"));
        });
        let decode = best(&mut || {
            let reader = arrow_ipc::reader::FileReader::try_new(std::io::Cursor::new(&file), None)
                .expect("a file");
            for b in reader {
                std::hint::black_box(b.expect("a batch"));
            }
        });
        println!(
            "zstd level {level} over {} docs: encode {:.0} MB/s, decode {:.0} MB/s, {:.1}x smaller than the JSON",
            lines.len(),
            mb / encode,
            mb / decode,
            mb * 1e6 / file.len() as f64
        );
    }
}

fn main() {
    tarn_common::allocator::tune();
    let text = input();
    let lines: Vec<&[u8]> = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let mb = text.len() as f64 / 1e6;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let _entered = runtime.enter();
    let storage = Storage::open(dir.path(), SealPolicy::default()).expect("opening storage");
    let options = CollectionOptions {
        event_time_info: Some(EventTimeInfo {
            field: "timestamp_ms".into(),
            format: Some("milliseconds_since_epoch".into()),
            time_zone: None,
        }),
        retention_secs: None,
    };
    let (info, c) = storage
        .create_collection(DEFAULT_WORKSPACE, "bench", "", options, Default::default())
        .expect("creating the collection");
    let meta = json!({"source": "bench"});
    let ctx = IngestContext {
        event_time_info: info.options.event_time_info.as_ref(),
        now_micros: 0,
        meta: &meta,
    };
    // `TARN_BENCH_STAGES=0` leaves them out, for a profile of the load alone.
    if std::env::var("TARN_BENCH_STAGES").as_deref() != Ok("0") {
        stages(&lines, &ctx);
    }
    // `TARN_BENCH_CODECS=1` compares the zstd levels a segment can be sealed with.
    if std::env::var("TARN_BENCH_CODECS").as_deref() == Ok("1") {
        codecs(&lines, &ctx);
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunks: Vec<&[&[u8]]> = lines.chunks(2000).collect();
    let next = AtomicUsize::new(0);
    let (started, cpu_before) = (Instant::now(), cpu_seconds());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while let Some(chunk) = chunks.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let preparing = Preparing::start();
                    let docs = chunk
                        .iter()
                        .map(|l| {
                            let doc = prepare_text(l, &ctx).unwrap_or_else(|| {
                                prepare(parse_limited(l, 0).expect("JSON"), &ctx)
                            });
                            (doc.expect("a valid document"), l.to_vec())
                        })
                        .collect();
                    drop(preparing);
                    c.insert_blocking(docs, Vec::new()).expect("inserting");
                }
            });
        }
    });
    let (secs, cpu) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu_before);
    println!(
        "acknowledged: {} docs, {mb:.1} MB in {secs:.2} s: {:.1} MB/s, {:.1} MB per CPU-second \
         ({cpu:.2} CPU-s on {workers} cores)",
        lines.len(),
        mb / secs,
        mb / cpu
    );
    // The whole cost: the rest of the documents sealed into segment files too.
    runtime.block_on(c.seal()).expect("sealing");
    let (secs, cpu) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu_before);
    println!(
        "sealed: {mb:.1} MB in {secs:.2} s: {:.1} MB/s, {:.1} MB per CPU-second; \
         {:.1} MB on disk in {} segments",
        mb / secs,
        mb / cpu,
        tarn_common::fs::dir_size(dir.path()) as f64 / 1e6,
        c.stats().segments,
    );
}
