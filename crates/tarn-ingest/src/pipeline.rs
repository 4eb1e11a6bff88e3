//! What every source shares: turning raw records into documents, the per-collection log of
//! bad records, source status, and the one write that stores documents with their positions.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use tarn_common::TarnResult;
use tarn_storage::collection::PreparedWrite;
use tarn_storage::document::{EventTimeInfo, IngestContext, parse_limited, prepare, prepare_text};
use tarn_storage::jsonscan::value_depth;
use tarn_storage::{Collection, Document};

/// Recent bad records kept in memory per collection; all of them go to the file.
const RECENT_ERRORS: usize = 100;
/// The bad records of earlier runs a restarted source may meet again, at most: those it
/// reads again are the ones since its collection's last seal (see `IngestErrorLog::record`).
const EARLIER_ERRORS: usize = 10_000;

/// A record as a stream gave it: its bytes, where it came from, and the `_meta` to store.
pub struct RawRecord {
    pub data: Vec<u8>,
    /// Where the record is in its stream, for the error log (`shard-000:4960...`).
    pub position: String,
    pub meta: Value,
}

/// An ingest transformation (the collection's `field_mapping_query`), applied to each batch
/// of parsed documents before they are stored.
///
/// Contract: the output documents replace the input, and the second list holds an error
/// message for each input document that could not enter the transformation (it is logged
/// as a bad record). An `Err` rejects the whole batch: the source records the error, stays
/// at its position and retries, so an implementation fails only for reasons that retrying
/// can fix or that need the user's attention. Documents the query filters out are dropped,
/// and the source's position still advances past them.
pub trait IngestTransform: Send + Sync {
    #[allow(clippy::type_complexity)]
    fn apply(
        &self,
        docs: Vec<Map<String, Value>>,
    ) -> BoxFuture<'_, TarnResult<(Vec<Map<String, Value>>, Vec<String>)>>;
}

/// Builds a transform from a `field_mapping_query` SQL text and the collection's
/// `event_time_info`; fails with a clear error when the SQL is not a valid mapping.
/// Supplied by the SQL layer, which this crate does not link.
pub type TransformFactory =
    Arc<dyn Fn(&str, Option<&EventTimeInfo>) -> TarnResult<Arc<dyn IngestTransform>> + Send + Sync>;

/// One bad record: why and where.
#[derive(Clone, Debug)]
pub struct IngestError {
    pub at_ms: i64,
    pub source: String,
    pub position: String,
    pub message: String,
}

impl IngestError {
    pub fn to_json(&self) -> Value {
        json!({
            "time": tarn_common::time::format_micros(self.at_ms * 1000),
            "source": self.source,
            "position": self.position,
            "message": self.message,
        })
    }
}

/// The bad records of one collection: a count, the most recent in memory, and every one
/// appended to `ingest-errors.ndjson` in the collection's directory.
pub struct IngestErrorLog {
    path: PathBuf,
    inner: Mutex<(u64, VecDeque<IngestError>)>,
    /// How many times each (source, position, message) was logged by earlier runs, among
    /// their last `EARLIER_ERRORS`.
    earlier: Mutex<HashMap<(String, String, String), u32>>,
}

impl IngestErrorLog {
    pub fn new(collection_dir: PathBuf) -> IngestErrorLog {
        let path = collection_dir.join("ingest-errors.ndjson");
        // Earlier errors survive restarts: count them and keep the recent ones.
        let mut recent = VecDeque::new();
        let mut count = 0;
        let mut earlier = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            let lines = text.lines().count();
            for (i, line) in text.lines().enumerate() {
                let Ok(v) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                count += 1;
                let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
                if i + EARLIER_ERRORS >= lines {
                    *earlier
                        .entry((s("source"), s("position"), s("message")))
                        .or_insert(0) += 1;
                }
                recent.push_back(IngestError {
                    at_ms: v["at_ms"].as_i64().unwrap_or_default(),
                    source: s("source"),
                    position: s("position"),
                    message: s("message"),
                });
                if recent.len() > RECENT_ERRORS {
                    recent.pop_front();
                }
            }
        }
        IngestErrorLog {
            path,
            inner: Mutex::new((count, recent)),
            earlier: Mutex::new(earlier),
        }
    }

    /// Logs and counts bad records, except those an earlier run logged already: a source's
    /// writes are durable only once sealed, so after a crash it reads the records since the
    /// last seal again, bad ones included.
    pub fn record(&self, mut errors: Vec<IngestError>) {
        {
            let mut earlier = self.earlier.lock();
            if !earlier.is_empty() {
                errors.retain(|e| {
                    let key = (e.source.clone(), e.position.clone(), e.message.clone());
                    match earlier.get_mut(&key) {
                        Some(n) if *n > 0 => {
                            *n -= 1;
                            false
                        }
                        _ => true,
                    }
                });
            }
        }
        if errors.is_empty() {
            return;
        }
        let mut lines = Vec::new();
        for e in &errors {
            tracing::warn!(source = %e.source, position = %e.position, error = %e.message, "bad record skipped");
            let line = json!({"at_ms": e.at_ms, "source": e.source, "position": e.position, "message": e.message});
            lines.extend_from_slice(line.to_string().as_bytes());
            lines.push(b'\n');
        }
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| f.write_all(&lines));
        if let Err(e) = appended {
            tracing::error!(path = %self.path.display(), error = %e, "cannot append to the ingest-error log");
        }
        let mut inner = self.inner.lock();
        inner.0 += errors.len() as u64;
        for e in errors {
            inner.1.push_back(e);
            if inner.1.len() > RECENT_ERRORS {
                inner.1.pop_front();
            }
        }
    }

    pub fn count(&self) -> u64 {
        self.inner.lock().0
    }

    /// The most recent errors, newest first.
    pub fn recent(&self) -> Vec<IngestError> {
        self.inner.lock().1.iter().rev().cloned().collect()
    }
}

/// Where a source is, as the collection response shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceState {
    Initializing,
    Watching,
    Processing,
    Error,
}

impl SourceState {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceState::Initializing => "INITIALIZING",
            SourceState::Watching => "WATCHING",
            SourceState::Processing => "PROCESSING",
            SourceState::Error => "ERROR",
        }
    }
}

#[derive(Debug)]
struct StatusInner {
    state: SourceState,
    message: Option<String>,
    last_processed_ms: Option<i64>,
    records_processed: u64,
    bad_records: u64,
    /// Per shard or partition: milliseconds behind (Kinesis) or messages behind (Kafka).
    lag: BTreeMap<String, i64>,
    last_error: Option<(i64, String)>,
}

/// The live status of one source, shared by its tasks and the API.
#[derive(Debug)]
pub struct SourceStatus {
    inner: Mutex<StatusInner>,
    /// `lag_ms` for Kinesis, `lag_messages` for Kafka.
    lag_key: &'static str,
}

impl SourceStatus {
    pub fn new(lag_key: &'static str) -> Arc<SourceStatus> {
        Arc::new(SourceStatus {
            inner: Mutex::new(StatusInner {
                state: SourceState::Initializing,
                message: None,
                last_processed_ms: None,
                records_processed: 0,
                bad_records: 0,
                lag: BTreeMap::new(),
                last_error: None,
            }),
            lag_key,
        })
    }

    pub fn state(&self) -> SourceState {
        self.inner.lock().state
    }

    /// Records an error and puts the source in ERROR until it makes progress again.
    pub fn error(&self, message: impl Into<String>) {
        let message = message.into();
        let mut s = self.inner.lock();
        s.state = SourceState::Error;
        s.message = Some(message.clone());
        s.last_error = Some((chrono::Utc::now().timestamp_millis(), message));
    }

    /// The source is connected and waiting for records.
    pub fn watching(&self) {
        let mut s = self.inner.lock();
        if s.state != SourceState::Processing {
            s.state = SourceState::Watching;
            s.message = None;
        }
    }

    /// The source is connected and has nothing to read right now; it shows WATCHING once
    /// no records arrived for two seconds (other shards or partitions may still be busy).
    pub fn idle(&self) {
        let mut s = self.inner.lock();
        let now = chrono::Utc::now().timestamp_millis();
        if s.state == SourceState::Error || s.last_processed_ms.is_none_or(|t| now - t > 2_000) {
            s.state = SourceState::Watching;
            s.message = None;
        }
    }

    pub fn processed(&self, records: u64, bad: u64) {
        let mut s = self.inner.lock();
        s.state = SourceState::Processing;
        s.message = None;
        s.records_processed += records;
        s.bad_records += bad;
        s.last_processed_ms = Some(chrono::Utc::now().timestamp_millis());
    }

    pub fn set_lag(&self, key: &str, lag: i64) {
        self.inner.lock().lag.insert(key.to_owned(), lag);
    }

    pub fn remove_lag(&self, key: &str) {
        self.inner.lock().lag.remove(key);
    }

    pub fn records_processed(&self) -> u64 {
        self.inner.lock().records_processed
    }

    /// Rockset's source `status` object, with tarn's lag and counts.
    pub fn to_json(&self) -> Value {
        let s = self.inner.lock();
        let mut out = json!({
            "state": s.state.as_str(),
            "records_processed": s.records_processed,
            "bad_records": s.bad_records,
            "lag": s.lag.iter().map(|(k, v)| json!({"id": k, self.lag_key: v})).collect::<Vec<_>>(),
        });
        if let Some(m) = &s.message {
            out["message"] = json!(m);
        }
        if let Some(t) = s.last_processed_ms {
            out["last_processed_at"] = json!(tarn_common::time::format_micros(t * 1000));
        }
        if let Some((t, m)) = &s.last_error {
            out["last_error"] =
                json!({"time": tarn_common::time::format_micros(t * 1000), "message": m});
        }
        out
    }
}

/// A document to store: its body, its original text when unchanged, `_meta`, position.
type Ready = (Map<String, Value>, Option<Vec<u8>>, Value, String);

/// A record that parsed as a JSON object: the object and the record.
type Parsed = (Map<String, Value>, RawRecord);

/// Everything a source needs to store what it reads.
pub struct SourceSink {
    pub collection: Arc<Collection>,
    pub event_time_info: Option<EventTimeInfo>,
    pub transform: Option<Arc<dyn IngestTransform>>,
    pub status: Arc<SourceStatus>,
    pub errors: Arc<IngestErrorLog>,
    /// Names the source in the error log (`kinesis:twitter-stream`).
    pub label: String,
}

impl SourceSink {
    /// Parses, transforms and stores `records` in one write together with `checkpoints`,
    /// the positions just after them. Bad records go to the error log and are passed over:
    /// the checkpoints cover them too. Returns once visible (durable when sealed, see
    /// [`Collection::prepare_source_insert`]); on an error nothing of the batch is stored
    /// and the caller retries from its old position.
    ///
    /// Parsing and preparing a batch take milliseconds of CPU, so they run on the blocking
    /// pool: on the async workers they would hold up every request the server is serving.
    /// A large batch is cut into one piece per core, parsed and prepared side by side, and
    /// put back together in order (a later record with the same `_id` still wins).
    pub async fn write(
        &self,
        records: Vec<RawRecord>,
        checkpoints: Vec<(String, String)>,
    ) -> TarnResult<()> {
        let batch = self.prepare(records, checkpoints).await?;
        self.store(batch).await
    }

    /// The first half of [`SourceSink::write`]: parses, transforms and builds the batch,
    /// storing nothing. A source may prepare its next batch while the one before is being
    /// stored (the CPU-bound half beside the writer's), as long as it
    /// stores them in the order it read them.
    pub async fn prepare(
        &self,
        records: Vec<RawRecord>,
        checkpoints: Vec<(String, String)>,
    ) -> TarnResult<PreparedBatch> {
        let started = std::time::Instant::now();
        let now_micros = tarn_common::time::now_micros();
        let now_ms = now_micros / 1000;
        let total = records.len() as u64;
        let (mut docs, mut bad) = (Vec::with_capacity(records.len()), Vec::new());
        match &self.transform {
            None => {
                let (label, event_time_info) = (self.label.clone(), self.event_time_info.clone());
                let pieces = in_parallel(records, move |piece| {
                    prepare_records(piece, event_time_info.as_ref(), &label, now_micros)
                })
                .await?;
                for (d, b) in pieces {
                    docs.extend(d);
                    bad.extend(b);
                }
            }
            Some(t) => {
                let label = self.label.clone();
                let pieces =
                    in_parallel(records, move |piece| parse_records(piece, &label, now_ms)).await?;
                let mut parsed = Vec::new();
                for (p, b) in pieces {
                    parsed.extend(p);
                    bad.extend(b);
                }
                let (bodies, raws): (Vec<_>, Vec<_>) = parsed.into_iter().unzip();
                let meta = raws.first().map(|r| r.meta.clone()).unwrap_or(Value::Null);
                let position = raws.first().map(|r| r.position.clone()).unwrap_or_default();
                if !bodies.is_empty() {
                    let (out, rejected) = t.apply(bodies).await?;
                    for message in rejected {
                        bad.push(IngestError {
                            at_ms: now_ms,
                            source: self.label.clone(),
                            position: position.clone(),
                            message,
                        });
                    }
                    let ready: Vec<Ready> = out
                        .into_iter()
                        .map(|body| (body, None, meta.clone(), position.clone()))
                        .collect();
                    let (label, event_time_info) =
                        (self.label.clone(), self.event_time_info.clone());
                    let pieces = in_parallel(ready, move |piece| {
                        prepare_all(piece, event_time_info.as_ref(), &label, now_micros)
                    })
                    .await?;
                    for (d, b) in pieces {
                        docs.extend(d);
                        bad.extend(b);
                    }
                }
            }
        }
        let write = Collection::prepare_source_insert(docs, checkpoints).await?;
        Ok(PreparedBatch {
            write,
            records: total,
            bad,
            prepare_ms: started.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// The second half of [`SourceSink::write`]: stores a prepared batch with its
    /// checkpoints in one write; returns once visible. On an error nothing of it is stored.
    pub async fn store(&self, batch: PreparedBatch) -> TarnResult<()> {
        let started = std::time::Instant::now();
        self.collection.insert_prepared(batch.write).await?;
        tracing::debug!(
            source = %self.label,
            records = batch.records,
            prepare_ms = batch.prepare_ms,
            store_ms = started.elapsed().as_secs_f64() * 1e3,
            "source batch written"
        );
        // Counts first: whoever sees a bad record in the log sees it counted.
        self.status.processed(batch.records, batch.bad.len() as u64);
        self.errors.record(batch.bad);
        Ok(())
    }
}

/// A batch parsed and built by [`SourceSink::prepare`], not stored yet.
pub struct PreparedBatch {
    write: PreparedWrite,
    records: u64,
    bad: Vec<IngestError>,
    prepare_ms: f64,
}

impl PreparedBatch {
    /// How many records the batch was prepared from, bad ones included.
    pub fn records(&self) -> usize {
        self.records as usize
    }
}

/// Below this many items a batch is not worth cutting up.
const MIN_PIECE: usize = 64;

/// Runs `f` over pieces of `items` on the blocking pool, one piece per core, and returns
/// the results in the order of the pieces.
async fn in_parallel<T, R>(
    mut items: Vec<T>,
    f: impl Fn(Vec<T>) -> R + Send + Sync + 'static,
) -> TarnResult<Vec<R>>
where
    T: Send + 'static,
    R: Send + 'static,
{
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pieces = (items.len() / MIN_PIECE).clamp(1, cores);
    let f = Arc::new(f);
    let size = items.len().div_ceil(pieces);
    let mut tails = Vec::with_capacity(pieces);
    while items.len() > size {
        tails.push(items.split_off(items.len() - size));
    }
    tails.push(items);
    let tasks: Vec<_> = tails
        .into_iter()
        .rev()
        .map(|piece| {
            let f = f.clone();
            blocking(move || f(piece))
        })
        .collect();
    futures::future::try_join_all(tasks).await
}

/// Runs CPU-bound work of a batch on tokio's blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> TarnResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| tarn_common::TarnError::internal(format!("an ingest task failed: {e}")))
}

/// The records that are JSON objects, each with its record; an error for each other one.
fn parse_records(
    records: Vec<RawRecord>,
    label: &str,
    now_ms: i64,
) -> (Vec<Parsed>, Vec<IngestError>) {
    let mut bad = Vec::new();
    let mut parsed = Vec::with_capacity(records.len());
    for r in records {
        let value = value_depth(&r.data)
            .map_err(|e| format!("the record is not valid JSON: {}", e.message))
            .and_then(|depth| parse_limited(&r.data, depth));
        let message = match value {
            Ok(Value::Object(m)) => {
                parsed.push((m, r));
                continue;
            }
            Ok(other) => format!(
                "a record must be a JSON object, not {}",
                tarn_storage::document::json_kind(&other)
            ),
            Err(message) => message,
        };
        bad.push(IngestError {
            at_ms: now_ms,
            source: label.to_owned(),
            position: r.position,
            message,
        });
    }
    (parsed, bad)
}

/// Documents straight from records' texts, with no transformation between (no value tree
/// is built for a record that is a plain JSON object), and an error for each other record.
fn prepare_records(
    records: Vec<RawRecord>,
    event_time_info: Option<&EventTimeInfo>,
    label: &str,
    now_micros: i64,
) -> (Vec<(Document, Vec<u8>)>, Vec<IngestError>) {
    let _preparing = tarn_storage::build::Preparing::start();
    let mut bad = Vec::new();
    let mut docs = Vec::with_capacity(records.len());
    for r in records {
        if r.data.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            // Not an object: the value path says what it is instead.
            let (parsed, refused) = parse_records(vec![r], label, now_micros / 1000);
            bad.extend(refused);
            let ready = parsed
                .into_iter()
                .map(|(body, r)| (body, Some(r.data), r.meta, r.position))
                .collect();
            let (prepared, refused) = prepare_all(ready, event_time_info, label, now_micros);
            docs.extend(prepared);
            bad.extend(refused);
            continue;
        }
        let ctx = IngestContext {
            event_time_info,
            now_micros,
            meta: &r.meta,
        };
        let prepared = prepare_text(&r.data, &ctx).unwrap_or_else(|| {
            value_depth(&r.data)
                .map_err(|e| format!("the record is not valid JSON: {}", e.message))
                .and_then(|depth| parse_limited(&r.data, depth))
                .and_then(|v| prepare(v, &ctx))
        });
        match prepared {
            Ok(d) => docs.push((d, r.data)),
            Err(message) => bad.push(IngestError {
                at_ms: now_micros / 1000,
                source: label.to_owned(),
                position: r.position,
                message,
            }),
        }
    }
    (docs, bad)
}

/// Documents ready to store (with their text), and an error for each body that is not.
fn prepare_all(
    ready: Vec<Ready>,
    event_time_info: Option<&EventTimeInfo>,
    label: &str,
    now_micros: i64,
) -> (Vec<(Document, Vec<u8>)>, Vec<IngestError>) {
    let mut bad = Vec::new();
    let mut docs = Vec::with_capacity(ready.len());
    for (body, raw, meta, position) in ready {
        let ctx = IngestContext {
            event_time_info,
            now_micros,
            meta: &meta,
        };
        let value = Value::Object(body);
        let text = match raw {
            Some(t) => t,
            None => serde_json::to_vec(&value).expect("JSON values serialize"),
        };
        match prepare(value, &ctx) {
            Ok(d) => docs.push((d, text)),
            Err(message) => bad.push(IngestError {
                at_ms: now_micros / 1000,
                source: label.to_owned(),
                position,
                message,
            }),
        }
    }
    (docs, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pieces_come_back_whole_and_in_order() {
        for n in [0, 1, 63, 64, 65, 1000, 1001] {
            let items: Vec<usize> = (0..n).collect();
            let pieces = in_parallel(items, |piece| piece).await.unwrap();
            let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
            assert!(pieces.len() <= cores.max(1), "{n}: {} pieces", pieces.len());
            let back: Vec<usize> = pieces.into_iter().flatten().collect();
            assert_eq!(back, (0..n).collect::<Vec<_>>(), "{n} items");
        }
    }
    fn bad(position: &str) -> IngestError {
        IngestError {
            at_ms: 1,
            source: "kafka:t".into(),
            position: position.into(),
            message: "not JSON".into(),
        }
    }

    #[test]
    fn bad_records_read_again_after_a_restart_are_logged_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = IngestErrorLog::new(dir.path().to_path_buf());
        log.record(vec![bad("t/0@5"), bad("t/0@5"), bad("t/1@9")]);
        assert_eq!(log.count(), 3);
        drop(log);
        // A crash before the seal: the source reads the same records again, and new ones.
        let log = IngestErrorLog::new(dir.path().to_path_buf());
        log.record(vec![
            bad("t/0@5"),
            bad("t/0@5"),
            bad("t/1@9"),
            bad("t/1@10"),
        ]);
        assert_eq!(log.count(), 4);
        log.record(vec![bad("t/1@9")]);
        assert_eq!(
            log.count(),
            5,
            "only what earlier runs logged is passed over"
        );
        let lines = std::fs::read_to_string(dir.path().join("ingest-errors.ndjson")).unwrap();
        assert_eq!(lines.lines().count(), 5);
        assert_eq!(log.recent()[0].position, "t/1@9");
    }
}
