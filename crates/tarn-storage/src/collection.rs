//! One collection: its writer thread (log, apply, merge, seal), its sealer thread, and snapshots.
//!
//! Only the writer thread changes a collection. It takes write requests in order, appends a
//! whole group of them to the log with one fsync, then applies them to the in-memory state
//! and answers. Applying means: a new run (an immutable batch) joins the mutable segment, the
//! `_id` index is updated, and rows that were replaced or deleted are marked in their
//! segment's deletion bitmap. Queries take a [`Snapshot`]: the list of segments with the
//! bitmaps of that moment, all behind `Arc`s, so a query never waits for ingest.
//!
//! When the mutable segment grows past a size or an age it is sealed: its runs are merged into
//! one segment, the log moves to a new generation, and the sealer thread writes the segment
//! (Arrow IPC through `object_store`), the changed deletion bitmaps and a new manifest, and
//! only then deletes the old log generation. Once its file is durable a sealed segment's
//! columns leave memory: queries read them from the file through the column cache.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Schema, SchemaRef};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tarn_common::{TarnError, TarnResult};
use tokio::sync::oneshot;

use crate::adapt::{adapt_batch, arrow_error};
use crate::build::documents_to_batch_parallel;
use crate::document::{Document, EventTimeInfo};
use crate::segment::{ColumnStats, DeleteBitmap, Segment, SegmentFile, SegmentStats, encode_ipc};
use crate::types::{self, ID};
use crate::wal::{self, LoggedDoc, WalRecord, WalWriter};

/// What happened to one document of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocStatus {
    Added,
    Replaced,
    Deleted,
    Error(String),
}

impl DocStatus {
    /// Rockset's uppercase status name.
    pub fn as_str(&self) -> &'static str {
        match self {
            DocStatus::Added => "ADDED",
            DocStatus::Replaced => "REPLACED",
            DocStatus::Deleted => "DELETED",
            DocStatus::Error(_) => "ERROR",
        }
    }
}

/// Settings of a collection that shape how it stores data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct CollectionOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time_info: Option<EventTimeInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_secs: Option<u64>,
}

/// When the mutable segment is sealed.
#[derive(Debug, Clone, Copy)]
pub struct SealPolicy {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub max_age: Duration,
}

impl Default for SealPolicy {
    fn default() -> Self {
        SealPolicy {
            max_rows: 65_536,
            max_bytes: 256 << 20,
            max_age: Duration::from_secs(600),
        }
    }
}

/// A segment with the deletion bitmap of the moment it was taken.
#[derive(Debug, Clone)]
pub struct SegmentEntry {
    pub segment: Arc<Segment>,
    pub deleted: Arc<DeleteBitmap>,
    /// False for runs of the mutable segment, whose rows are only in the log.
    pub sealed: bool,
}

impl SegmentEntry {
    pub fn live_rows(&self) -> u64 {
        self.segment.stats.rows - self.deleted.count() as u64
    }
}

/// A consistent view of a collection for one query.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The collection schema: the union of every segment's schema, which only grows.
    pub schema: SchemaRef,
    /// The sealed segments, shared with every other query until one of them changes.
    pub sealed: Arc<SegmentList>,
    /// The runs of the mutable segment (a handful), after the sealed segments.
    pub runs: Vec<SegmentEntry>,
    /// Rows with an older `_event_time` are past retention and must not be returned.
    pub retention_cutoff: Option<i64>,
}

impl Snapshot {
    /// Every segment: the sealed ones by id, then the runs by id.
    pub fn entries(&self) -> impl Iterator<Item = &SegmentEntry> {
        self.sealed.entries.iter().chain(&self.runs)
    }
}

/// The sealed segments of a collection at one moment, with what pruning reads of each laid
/// out side by side.
///
/// Built once per change to the sealed segments (a seal, a merge, retention, a deletion in
/// one) and shared by the queries in between. Reaching each segment's statistics through
/// its own allocations was cache misses: over a day of tweets (1,700 segments) pruning a
/// one-minute window, plus copying and dropping the list of `Arc`s, was a third of the
/// query (`perf` of `tarn serve`).
#[derive(Debug, Default)]
pub struct SegmentList {
    pub entries: Vec<SegmentEntry>,
    /// `(min, max)` `_event_time` of each entry.
    pub event_times: Vec<(i64, i64)>,
    /// Rows not deleted, of each entry.
    pub live_rows: Vec<u64>,
    /// One path's statistics in each entry, gathered the first time a query filters on it.
    column_stats: Mutex<HashMap<String, Arc<[Option<ColumnStats>]>>>,
    /// One path's integer ranges in each entry, likewise; by path and whether strings
    /// count by their integer range.
    int_ranges: Mutex<IntRangesByPath>,
}

/// Each segment's integer range of a path, by the path and whether strings count.
type IntRangesByPath = HashMap<(String, bool), Arc<[Option<IntRange>]>>;

/// A column's integer range in one segment and its rows without a value: what pruning
/// compares with an integer, laid out flat so that a time window checks a day's segments
/// in a tight loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntRange {
    pub min: i64,
    pub max: i64,
    pub nulls: u64,
}

impl SegmentList {
    pub fn new(entries: Vec<SegmentEntry>) -> SegmentList {
        SegmentList {
            event_times: entries
                .iter()
                .map(|e| {
                    (
                        e.segment.stats.min_event_time,
                        e.segment.stats.max_event_time,
                    )
                })
                .collect(),
            live_rows: entries.iter().map(SegmentEntry::live_rows).collect(),
            entries,
            column_stats: Mutex::default(),
            int_ranges: Mutex::default(),
        }
    }

    /// The integer range of column `path` in each entry: of an integer column, or of a
    /// string column whose every value is an integer when `from_strings` (the range
    /// `CAST(path AS BIGINT)` takes); `None` where a segment has no such range.
    pub fn int_ranges(&self, path: &str, from_strings: bool) -> Arc<[Option<IntRange>]> {
        let key = (path.to_owned(), from_strings);
        if let Some(found) = self.int_ranges.lock().get(&key) {
            return found.clone();
        }
        let gathered: Arc<[Option<IntRange>]> = self
            .column_stats(path)
            .iter()
            .map(|stats| match stats.as_ref()? {
                ColumnStats::Int { min, max, nulls } => Some(IntRange {
                    min: *min,
                    max: *max,
                    nulls: *nulls,
                }),
                ColumnStats::Str {
                    int_min: Some(min),
                    int_max: Some(max),
                    nulls,
                    ..
                } if from_strings => Some(IntRange {
                    min: *min,
                    max: *max,
                    nulls: *nulls,
                }),
                _ => None,
            })
            .collect();
        self.int_ranges.lock().insert(key, gathered.clone());
        gathered
    }

    /// The statistics of column `path` in each entry (`None` where a segment has none).
    pub fn column_stats(&self, path: &str) -> Arc<[Option<ColumnStats>]> {
        if let Some(found) = self.column_stats.lock().get(path) {
            return found.clone();
        }
        let gathered: Arc<[Option<ColumnStats>]> = self
            .entries
            .iter()
            .map(|e| e.segment.stats.column(path))
            .collect();
        self.column_stats
            .lock()
            .insert(path.to_owned(), gathered.clone());
        gathered
    }
}

/// A collection's segments by id: the sealed ones apart from the runs of the mutable
/// segment, so that the [`SegmentList`] queries share is rebuilt only when a sealed one
/// changes, not at every write.
#[derive(Default)]
struct Segments {
    sealed: BTreeMap<u64, SegmentEntry>,
    runs: BTreeMap<u64, SegmentEntry>,
    shared: OnceLock<Arc<SegmentList>>,
}

impl Segments {
    fn get(&self, id: &u64) -> Option<&SegmentEntry> {
        self.runs.get(id).or_else(|| self.sealed.get(id))
    }

    fn values(&self) -> impl Iterator<Item = &SegmentEntry> {
        self.sealed.values().chain(self.runs.values())
    }

    fn len(&self) -> usize {
        self.sealed.len() + self.runs.len()
    }

    fn insert(&mut self, id: u64, entry: SegmentEntry) {
        self.remove(&id);
        if entry.sealed {
            self.shared.take();
            self.sealed.insert(id, entry);
        } else {
            self.runs.insert(id, entry);
        }
    }

    fn remove(&mut self, id: &u64) -> Option<SegmentEntry> {
        if let Some(e) = self.runs.remove(id) {
            return Some(e);
        }
        let e = self.sealed.remove(id)?;
        self.shared.take();
        Some(e)
    }

    /// Changes one entry in place (its bitmap, whether it is sealed).
    fn update<R>(&mut self, id: &u64, change: impl FnOnce(&mut SegmentEntry) -> R) -> Option<R> {
        let mut entry = self.remove(id)?;
        let out = change(&mut entry);
        self.insert(*id, entry);
        Some(out)
    }

    fn shared_sealed(&self) -> Arc<SegmentList> {
        self.shared
            .get_or_init(|| Arc::new(SegmentList::new(self.sealed.values().cloned().collect())))
            .clone()
    }
}

/// Figures shown in the collection's `stats`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CollectionStats {
    pub doc_count: u64,
    pub total_size: u64,
    pub last_updated_ms: i64,
    pub segments: usize,
    pub sealed_segments: usize,
}

struct State {
    segments: Segments,
    schema: SchemaRef,
    live_docs: u64,
    last_updated_ms: i64,
    /// Source positions covered by what is stored (see [`WalRecord::Insert`]).
    checkpoints: BTreeMap<String, String>,
    /// Set while the mutable segment holds source writes that are not in the log: the
    /// checkpoints that were durable (sealed or logged) before the first of them. After a
    /// crash the sources resume from these and read those writes again.
    durable_checkpoints: Option<BTreeMap<String, String>>,
}

/// The manifest: what is durable in sealed segments, and where log replay starts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Manifest {
    segments: Vec<ManifestSegment>,
    wal_start: u64,
    next_segment_id: u64,
    schema: Option<Schema>,
    checkpoints: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ManifestSegment {
    id: u64,
    stats: SegmentStats,
    deleted_rows: usize,
}

/// A write prepared outside the writer thread: its Arrow batch, its framed log record and
/// the checkpoints logged with it.
pub struct PreparedWrite {
    batch: RecordBatch,
    ids: Vec<String>,
    framed: Vec<u8>,
    checkpoints: Vec<(String, String)>,
    /// A stream source's documents, which it can read again from the checkpoints it had
    /// before them: logged (framed by the writer) only when a logged write follows them in
    /// the same mutable segment. `None` once framed, and for every other write.
    replayable: Option<Vec<LoggedDoc>>,
}

enum WriterMsg {
    Insert {
        write: PreparedWrite,
        reply: oneshot::Sender<TarnResult<Vec<DocStatus>>>,
    },
    Delete {
        ids: Vec<String>,
        framed: Vec<u8>,
        reply: oneshot::Sender<TarnResult<Vec<DocStatus>>>,
    },
    Seal {
        reply: oneshot::Sender<TarnResult<()>>,
    },
}

impl WriterMsg {
    /// A write that must be in the log before it is answered: all but a stream source's.
    fn must_log(&self) -> bool {
        match self {
            WriterMsg::Insert { write, .. } => write.replayable.is_none(),
            WriterMsg::Delete { .. } => true,
            WriterMsg::Seal { .. } => false,
        }
    }

    /// Answers the message with `err`; nothing of it was applied.
    fn fail(self, err: TarnError) {
        match self {
            WriterMsg::Insert { reply, .. } | WriterMsg::Delete { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            WriterMsg::Seal { reply } => {
                let _ = reply.send(Err(err));
            }
        }
    }
}

enum SealerMsg {
    Persist(Box<SealJob>),
    Barrier(oneshot::Sender<TarnResult<()>>),
}

struct SealJob {
    new_segments: Vec<Arc<Segment>>,
    bitmaps: Vec<(u64, Arc<DeleteBitmap>)>,
    dropped: Vec<u64>,
    manifest: Manifest,
    delete_wal_before: u64,
}

/// Where a document lives.
#[derive(Debug, Clone, Copy)]
struct Loc {
    segment: u64,
    row: u32,
}

/// A collection of documents. Cheap to share; dropping the last handle stops its threads.
pub struct Collection {
    dir: PathBuf,
    state: Arc<RwLock<State>>,
    options: CollectionOptions,
    writer_tx: Mutex<Option<Sender<WriterMsg>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Collection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collection")
            .field("dir", &self.dir)
            .finish()
    }
}

fn manifest_path(dir: &Path) -> PathBuf {
    dir.join("manifest.json")
}

fn segment_object(prefix: &ObjectPath, id: u64) -> ObjectPath {
    prefix
        .clone()
        .join("segments")
        .join(format!("{id:016}.arrow"))
}

/// Where the local store puts segment `id` (its object is [`segment_object`]); sealed
/// segments are mapped from there.
fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join("segments").join(format!("{id:016}.arrow"))
}

fn bitmap_path(dir: &Path, id: u64) -> PathBuf {
    dir.join("segments").join(format!("{id:016}.del"))
}

/// Writes a file atomically and durably: temp file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> TarnResult<()> {
    write_file(path, bytes, false)
}

/// [`write_atomic`] for files that hold secrets: created with mode 0600.
pub fn write_private(path: &Path, bytes: &[u8]) -> TarnResult<()> {
    write_file(path, bytes, true)
}

fn write_file(path: &Path, bytes: &[u8], private: bool) -> TarnResult<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .ok_or_else(|| TarnError::internal("path without parent"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    wal::sync_dir(dir)
}

/// Writes a segment file around the page cache ([`crate::direct`]): a temp file, fsynced,
/// renamed into place (the caller fsyncs the directory). `false` where the filesystem
/// cannot, and the store is to write it.
fn write_segment_uncached(path: &Path, bytes: &[u8]) -> TarnResult<bool> {
    let dir = path
        .parent()
        .ok_or_else(|| TarnError::internal("path without parent"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    if !crate::direct::write_uncached(&tmp, bytes)? {
        return Ok(false);
    }
    std::fs::rename(&tmp, path)?;
    Ok(true)
}

/// Turns logged documents back into documents (replay).
fn logged_to_documents(docs: Vec<LoggedDoc>) -> TarnResult<Vec<(Document, Vec<u8>)>> {
    docs.into_iter()
        .map(|d| {
            let mut body = match serde_json::from_slice::<Value>(&d.json) {
                Ok(Value::Object(m)) => m,
                _ => {
                    return Err(TarnError::internal(format!(
                        "logged document {} is not an object",
                        d.id
                    )));
                }
            };
            for k in [types::ID, types::EVENT_TIME, types::META] {
                body.shift_remove(k);
            }
            let meta = serde_json::from_slice(&d.meta).unwrap_or(Value::Null);
            Ok((
                Document {
                    id: d.id,
                    event_time: d.event_time,
                    meta,
                    body,
                    tape: None,
                },
                d.json,
            ))
        })
        .collect()
}

/// The Arrow batch of documents and their `_id`s, in order.
fn batch_and_ids(docs: &[(Document, Vec<u8>)]) -> (RecordBatch, Vec<String>) {
    let pairs: Vec<(&Document, &[u8])> = docs.iter().map(|(d, t)| (d, t.as_slice())).collect();
    let ids = docs.iter().map(|(d, _)| d.id.clone()).collect();
    (documents_to_batch_parallel(&pairs), ids)
}

/// Builds the batch and the log record for documents (done by the caller's thread).
pub fn prepare_write(
    docs: Vec<(Document, Vec<u8>)>,
    checkpoints: Vec<(String, String)>,
) -> PreparedWrite {
    let (batch, ids) = batch_and_ids(&docs);
    let framed = frame_insert(logged_docs(docs), &checkpoints);
    PreparedWrite {
        batch,
        ids,
        framed,
        checkpoints,
        replayable: None,
    }
}

/// Builds the batch of documents a stream source read before `checkpoints`; the log record
/// is made only if the writer must log them (after a logged write in the same segment).
pub fn prepare_source_write(
    docs: Vec<(Document, Vec<u8>)>,
    checkpoints: Vec<(String, String)>,
) -> PreparedWrite {
    let (batch, ids) = batch_and_ids(&docs);
    PreparedWrite {
        batch,
        ids,
        framed: Vec::new(),
        checkpoints,
        replayable: Some(logged_docs(docs)),
    }
}

fn logged_docs(docs: Vec<(Document, Vec<u8>)>) -> Vec<LoggedDoc> {
    docs.into_iter()
        .map(|(d, json)| LoggedDoc {
            id: d.id,
            event_time: d.event_time,
            meta: serde_json::to_vec(&d.meta).expect("JSON values serialize"),
            json,
        })
        .collect()
}

/// The framed log record of an insert.
fn frame_insert(logged: Vec<LoggedDoc>, checkpoints: &[(String, String)]) -> Vec<u8> {
    // Sized up front: growing a buffer of megabytes by doubling faults in (and the kernel
    // zeroes) fresh pages at every step.
    let size: usize = logged
        .iter()
        .map(|d: &LoggedDoc| d.id.len() + d.meta.len() + d.json.len() + 20)
        .sum::<usize>()
        + checkpoints
            .iter()
            .map(|(k, v)| k.len() + v.len() + 8)
            .sum::<usize>()
        + 32;
    let mut framed = crate::wal::record_buffer(size);
    WalRecord::Insert {
        docs: logged,
        checkpoints: checkpoints.to_vec(),
    }
    .encode_into(&mut framed);
    framed
}

impl Collection {
    /// Opens (or creates) a collection in `dir`, replaying its log. `store` is the object
    /// store holding segment files under `prefix`.
    pub fn open(
        dir: PathBuf,
        store: Arc<dyn ObjectStore>,
        prefix: ObjectPath,
        options: CollectionOptions,
        policy: SealPolicy,
    ) -> TarnResult<Arc<Collection>> {
        std::fs::create_dir_all(dir.join("wal"))?;
        std::fs::create_dir_all(dir.join("segments"))?;
        let manifest: Manifest = match std::fs::read(manifest_path(&dir)) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                TarnError::internal(format!("{} is corrupt: {e}", manifest_path(&dir).display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Manifest {
                wal_start: 1,
                next_segment_id: 1,
                ..Default::default()
            },
            Err(e) => return Err(e.into()),
        };
        let mut schema: SchemaRef = Arc::new(
            manifest
                .schema
                .clone()
                .unwrap_or_else(|| types::base_schema().as_ref().clone()),
        );
        let mut segments = Segments::default();
        // Sized for every stored document up front: growing it by doubling rehashed the
        // ids again at each step, a third of opening a collection of 10 million.
        let stored: u64 = manifest
            .segments
            .iter()
            .map(|s| s.stats.rows.saturating_sub(s.deleted_rows as u64))
            .sum();
        let mut index = IdIndex::with_capacity(stored as usize);
        let mut live_docs = 0;
        for ms in &manifest.segments {
            let segment =
                Segment::open_stored(ms.id, &segment_path(&dir, ms.id), ms.stats.clone())?;
            let deleted = match std::fs::read(bitmap_path(&dir, ms.id)) {
                Ok(b) => DeleteBitmap::from_bytes(&b),
                Err(_) => DeleteBitmap::default(),
            };
            let ids = segment.ids()?;
            for row in 0..ids.len() {
                if !deleted.contains(row) {
                    index.insert(
                        ids.value(row).to_owned(),
                        Loc {
                            segment: ms.id,
                            row: row as u32,
                        },
                    );
                }
            }
            schema = types::merge_schemas(&schema, &segment.schema());
            live_docs += segment.stats.rows - deleted.count() as u64;
            segments.insert(
                ms.id,
                SegmentEntry {
                    segment,
                    deleted: Arc::new(deleted),
                    sealed: true,
                },
            );
        }
        let state = Arc::new(RwLock::new(State {
            segments,
            schema,
            live_docs,
            last_updated_ms: 0,
            checkpoints: manifest.checkpoints.clone(),
            durable_checkpoints: None,
        }));
        let wal_dir = dir.join("wal");
        let generations: Vec<u64> = wal::list_generations(&wal_dir)?
            .into_iter()
            .filter(|g| *g >= manifest.wal_start)
            .collect();
        let (sealer_tx, sealer_rx) = mpsc::channel();
        let mut writer = Writer {
            dir: dir.clone(),
            state: state.clone(),
            index,
            mutable: Vec::new(),
            mutable_since: None,
            next_segment_id: manifest.next_segment_id.max(1),
            wal: None,
            wal_start: manifest.wal_start,
            policy,
            retention: options.retention_secs,
            sealer: sealer_tx,
            persisted_bitmaps: manifest
                .segments
                .iter()
                .map(|s| (s.id, s.deleted_rows))
                .collect(),
            merger: None,
            log_sources: false,
        };
        let mut replayed = 0usize;
        for g in &generations {
            for rec in wal::read_generation(&wal::generation_path(&wal_dir, *g))? {
                replayed += 1;
                match rec {
                    WalRecord::Insert { docs, checkpoints } => {
                        let docs = logged_to_documents(docs)?;
                        // Already logged: only the batch is built, not a record to log.
                        let (batch, ids) = batch_and_ids(&docs);
                        let write = PreparedWrite {
                            batch,
                            ids,
                            framed: Vec::new(),
                            checkpoints,
                            replayable: None,
                        };
                        writer.apply_insert(write);
                        writer.merge_runs();
                    }
                    WalRecord::Delete { ids } => {
                        writer.apply_delete(&ids);
                    }
                }
            }
        }
        let current = generations.last().copied().unwrap_or(manifest.wal_start);
        writer.wal = Some(WalWriter::open(&wal_dir, current)?);
        if replayed > 0 {
            tracing::info!(collection = %dir.display(), records = replayed, docs = state.read().live_docs, "replayed the log");
        }
        writer.merger = Some(Merger::spawn()?);
        let (tx, rx) = mpsc::channel();
        let sealer_dir = dir.clone();
        let sealer = std::thread::Builder::new()
            .name("tarn-sealer".into())
            .spawn(move || run_sealer(sealer_dir, store, prefix, sealer_rx))?;
        let writer_thread = std::thread::Builder::new()
            .name("tarn-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok(Arc::new(Collection {
            dir,
            state,
            options,
            writer_tx: Mutex::new(Some(tx)),
            threads: Mutex::new(vec![writer_thread, sealer]),
        }))
    }

    pub fn options(&self) -> &CollectionOptions {
        &self.options
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn send(&self, msg: WriterMsg) -> TarnResult<()> {
        let tx = self.writer_tx.lock();
        match tx.as_ref() {
            Some(tx) => tx
                .send(msg)
                .map_err(|_| TarnError::unavailable("the collection is closed")),
            None => Err(TarnError::unavailable("the collection is closed")),
        }
    }

    /// Stores documents; answers once they are durable and visible. Each document's JSON text
    /// is logged as given.
    pub async fn insert(
        &self,
        docs: Vec<(Document, Vec<u8>)>,
        checkpoints: Vec<(String, String)>,
    ) -> TarnResult<Vec<DocStatus>> {
        let write = Self::prepare_insert(docs, checkpoints).await?;
        self.insert_prepared(write).await
    }

    /// The first half of [`Collection::insert`]: builds the write's Arrow batch and log
    /// record on the blocking pool. Nothing is stored yet; a caller may prepare the next
    /// write while the one before is being stored.
    pub async fn prepare_insert(
        docs: Vec<(Document, Vec<u8>)>,
        checkpoints: Vec<(String, String)>,
    ) -> TarnResult<PreparedWrite> {
        on_blocking_pool(move || prepare_write(docs, checkpoints)).await
    }

    /// The second half of [`Collection::insert`]: logs and applies a prepared write; answers
    /// once it is durable and visible. Writes are stored in the order this is called.
    pub async fn insert_prepared(&self, write: PreparedWrite) -> TarnResult<Vec<DocStatus>> {
        let (reply, rx) = oneshot::channel();
        self.send(WriterMsg::Insert { write, reply })?;
        rx.await
            .map_err(|_| TarnError::unavailable("the collection closed during the write"))?
    }

    /// [`Collection::prepare_insert`] for what a stream source read before `checkpoints`
    /// (its position just past the documents). Such a write is visible once
    /// [`Collection::insert_prepared`] answers, but is durable only once sealed (or logged
    /// ahead of a write that must be): until then a crash takes it back together with its
    /// checkpoints, and the source reads it again. It is not written to the log twice (once
    /// there and once sealed), which was a fifth of a Kafka backlog's ingest CPU.
    pub async fn prepare_source_insert(
        docs: Vec<(Document, Vec<u8>)>,
        checkpoints: Vec<(String, String)>,
    ) -> TarnResult<PreparedWrite> {
        on_blocking_pool(move || prepare_source_write(docs, checkpoints)).await
    }

    /// The blocking form of [`Collection::insert`], for threads outside the async runtime.
    pub fn insert_blocking(
        &self,
        docs: Vec<(Document, Vec<u8>)>,
        checkpoints: Vec<(String, String)>,
    ) -> TarnResult<Vec<DocStatus>> {
        let write = prepare_write(docs, checkpoints);
        let (reply, rx) = oneshot::channel();
        self.send(WriterMsg::Insert { write, reply })?;
        rx.blocking_recv()
            .map_err(|_| TarnError::unavailable("the collection closed during the write"))?
    }

    /// Deletes documents by `_id`; answers once durable.
    pub async fn delete(&self, ids: Vec<String>) -> TarnResult<Vec<DocStatus>> {
        let mut framed = Vec::new();
        WalRecord::Delete { ids: ids.clone() }.encode_into(&mut framed);
        let (reply, rx) = oneshot::channel();
        self.send(WriterMsg::Delete { ids, framed, reply })?;
        rx.await
            .map_err(|_| TarnError::unavailable("the collection closed during the write"))?
    }

    /// Seals the mutable segment now and waits until it is durable on disk.
    pub async fn seal(&self) -> TarnResult<()> {
        let (reply, rx) = oneshot::channel();
        self.send(WriterMsg::Seal { reply })?;
        rx.await
            .map_err(|_| TarnError::unavailable("the collection closed during sealing"))?
    }

    /// A consistent view for a query.
    pub fn snapshot(&self) -> Snapshot {
        let s = self.state.read();
        Snapshot {
            schema: s.schema.clone(),
            sealed: s.segments.shared_sealed(),
            runs: s.segments.runs.values().cloned().collect(),
            retention_cutoff: self
                .options
                .retention_secs
                .map(|r| tarn_common::time::now_micros() - r as i64 * 1_000_000),
        }
    }

    /// The collection schema (union of all segments').
    pub fn schema(&self) -> SchemaRef {
        self.state.read().schema.clone()
    }

    pub fn stats(&self) -> CollectionStats {
        let s = self.state.read();
        CollectionStats {
            doc_count: s.live_docs,
            total_size: s.segments.values().map(|e| e.segment.stats.bytes).sum(),
            last_updated_ms: s.last_updated_ms,
            segments: s.segments.len(),
            sealed_segments: s.segments.sealed.len(),
        }
    }

    /// Source positions covered by stored documents.
    pub fn checkpoints(&self) -> BTreeMap<String, String> {
        self.state.read().checkpoints.clone()
    }

    /// Source positions covered by documents that would survive a crash now: behind
    /// [`Collection::checkpoints`] while source writes wait unlogged for their seal.
    pub fn durable_checkpoints(&self) -> BTreeMap<String, String> {
        let s = self.state.read();
        s.durable_checkpoints
            .clone()
            .unwrap_or_else(|| s.checkpoints.clone())
    }

    /// Stops the threads after they finish what was sent. Everything acknowledged is in the
    /// log already; source writes not in it are sealed first, so that a restart does not
    /// read them again.
    pub fn close(&self) {
        self.writer_tx.lock().take();
        let threads: Vec<_> = self.threads.lock().drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Collection {
    fn drop(&mut self) {
        self.close();
    }
}

/// Where each live document is, by `_id`.
///
/// Split into [`ID_INDEX_SHARDS`] tables that grow one at a time. As one table, each
/// doubling rehashed every entry into a new table twice the size, on the writer's thread
/// (which holds back every write meanwhile), and faulted that table's memory in fresh: 4%
/// of a Kafka drain's CPU went to zeroing pages for those rehashes. A shard's table is a
/// 64th of that, and the memory a grown shard frees serves the next one.
///
/// foldhash, not SipHash: the index is hashed once per ingested row and again at every
/// merge, and SipHash was a tenth of the writer's time. The tables are seeded per process,
/// so ids chosen to collide cannot be precomputed. The shard is picked by a hash with
/// another seed: the tables' own hashes keep all their bits of entropy.
struct IdIndex {
    shards: Box<[HashMap<String, Loc, foldhash::quality::RandomState>]>,
    pick: foldhash::fast::FixedState,
}

const ID_INDEX_SHARDS: usize = 64;

impl IdIndex {
    fn with_capacity(docs: usize) -> IdIndex {
        IdIndex {
            shards: (0..ID_INDEX_SHARDS)
                .map(|_| {
                    HashMap::with_capacity_and_hasher(
                        docs.div_ceil(ID_INDEX_SHARDS),
                        Default::default(),
                    )
                })
                .collect(),
            pick: foldhash::fast::FixedState::with_seed(0x9e37_79b9_7f4a_7c15),
        }
    }

    fn shard(&self, id: &str) -> usize {
        // The top bits: foldhash mixes them best.
        (self.pick.hash_one(id) >> (64 - ID_INDEX_SHARDS.trailing_zeros())) as usize
    }

    /// The document's previous location, if it had one.
    fn insert(&mut self, id: String, loc: Loc) -> Option<Loc> {
        let shard = self.shard(&id);
        self.shards[shard].insert(id, loc)
    }

    fn get(&self, id: &str) -> Option<&Loc> {
        self.shards[self.shard(id)].get(id)
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut Loc> {
        let shard = self.shard(id);
        self.shards[shard].get_mut(id)
    }

    fn remove(&mut self, id: &str) -> Option<Loc> {
        let shard = self.shard(id);
        self.shards[shard].remove(id)
    }
}

struct Writer {
    dir: PathBuf,
    state: Arc<RwLock<State>>,
    index: IdIndex,
    /// Ids of the runs of the mutable segment, oldest first.
    mutable: Vec<u64>,
    mutable_since: Option<Instant>,
    next_segment_id: u64,
    wal: Option<WalWriter>,
    wal_start: u64,
    policy: SealPolicy,
    retention: Option<u64>,
    sealer: Sender<SealerMsg>,
    /// Deleted-row counts of bitmaps as last persisted, to write only changed ones.
    persisted_bitmaps: HashMap<u64, usize>,
    /// Merges runs off the writer thread; `None` while the log is replayed.
    merger: Option<Merger>,
    /// Source writes are logged too, until the next seal: a write that must be logged
    /// (an API insert, a delete) entered the mutable segment. A logged record may never
    /// follow unlogged writes of the same segment in the log: replay would put it before
    /// them when the source reads them again (a delete before the insert it deleted).
    log_sources: bool,
}

/// The merger thread of a collection: merges the runs it is sent, one job at a time.
struct Merger {
    jobs: Sender<Vec<SegmentEntry>>,
    done: Receiver<TarnResult<MergedRuns>>,
    /// A job was sent and its result not yet taken.
    busy: bool,
    thread: JoinHandle<()>,
}

/// Runs merged by the merger, for the writer to put in their place.
struct MergedRuns {
    /// The inputs' ids, each with how many of its rows were deleted when the merge began.
    inputs: Vec<(u64, usize)>,
    batch: RecordBatch,
    stats: SegmentStats,
}

impl Merger {
    fn spawn() -> std::io::Result<Merger> {
        let (jobs, job_rx) = mpsc::channel::<Vec<SegmentEntry>>();
        let (done_tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("tarn-merger".into())
            .spawn(move || {
                for entries in job_rx {
                    let inputs = entries
                        .iter()
                        .map(|e| (e.segment.id, e.deleted.count()))
                        .collect();
                    let result = merge_entries(&entries).map(|(batch, stats)| MergedRuns {
                        inputs,
                        batch,
                        stats,
                    });
                    if done_tx.send(result).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Merger {
            jobs,
            done,
            busy: false,
            thread,
        })
    }

    /// Waits for the job in hand, if any, and stops the thread.
    fn stop(self) {
        drop(self.jobs);
        let _ = self.thread.join();
    }
}

/// The current entries of segments `ids` (those still there), for a merge to read.
fn entries_of(state: &RwLock<State>, ids: &[u64]) -> Vec<SegmentEntry> {
    let s = state.read();
    ids.iter()
        .filter_map(|id| s.segments.get(id).cloned())
        .collect()
}

/// The live rows of `entries` in one batch, under the union of their schemas, with
/// statistics from theirs.
fn merge_entries(entries: &[SegmentEntry]) -> TarnResult<(RecordBatch, SegmentStats)> {
    let mut schema: SchemaRef = Arc::new(Schema::empty());
    let inputs: Vec<RecordBatch> = entries
        .iter()
        .map(|e| match e.segment.resident() {
            Some(b) => Ok(b),
            None => e.segment.read_all(),
        })
        .collect::<TarnResult<_>>()?;
    for b in &inputs {
        schema = types::merge_schemas(&schema, &b.schema());
    }
    let mut batches = Vec::with_capacity(entries.len());
    for (e, b) in entries.iter().zip(&inputs) {
        let mut b = adapt_batch(b, &schema)?;
        if !e.deleted.is_empty() {
            b = arrow::compute::filter_record_batch(&b, &e.deleted.keep_mask(b.num_rows()))
                .map_err(arrow_error)?;
        }
        batches.push(b);
    }
    let merged = arrow::compute::concat_batches(&schema, &batches).map_err(arrow_error)?;
    // Bounds from the inputs stay valid for their merge (deleted rows only narrow them).
    let stats = SegmentStats::merged(entries.iter().map(|e| &e.segment.stats), &merged);
    Ok((merged, stats))
}

const TICK: Duration = Duration::from_millis(500);
const MERGE_POLL: Duration = Duration::from_millis(2);
/// Runs of the mutable segment are merged up to this many rows. At 16,384 a merge copied
/// 50 MB of tweets on the writer thread (up to 150 ms); at 8,192 the six tutorial queries
/// also ran 15-50% faster over 200,000 tweets (`tarn bench`), their segments being smaller.
const MERGED_RUN_ROWS: usize = 8_192;
const MAX_GROUP: usize = 256;

impl Writer {
    fn run(mut self, rx: Receiver<WriterMsg>) {
        let mut last_retention = Instant::now();
        loop {
            // A merge in hand is looked for often, so it is put in place soon after it is
            // done even when no write comes.
            let wait = match &self.merger {
                Some(m) if m.busy => MERGE_POLL,
                _ => TICK,
            };
            let first = match rx.recv_timeout(wait) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if let Some(first) = first {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(m) => group.push(m),
                        Err(_) => break,
                    }
                }
                self.handle_group(group);
            } else {
                self.finish_merge();
                self.merge_runs();
            }
            if self
                .mutable_since
                .is_some_and(|t| t.elapsed() >= self.policy.max_age)
                && let Err(e) = self.seal()
            {
                tracing::error!(collection = %self.dir.display(), error = %e, "sealing failed");
            }
            if self.retention.is_some() && last_retention.elapsed() >= Duration::from_secs(1) {
                last_retention = Instant::now();
                self.apply_retention();
            }
        }
        if let Some(merger) = self.merger.take() {
            merger.stop();
        }
        if self.state.read().durable_checkpoints.is_some()
            && let Err(e) = self.seal()
        {
            tracing::error!(collection = %self.dir.display(), error = %e, "sealing unlogged source writes at close failed; the sources read them again");
        }
        // Wait for the sealer to finish what it was given.
        let (tx, rx) = oneshot::channel();
        if self.sealer.send(SealerMsg::Barrier(tx)).is_ok() {
            let _ = rx.blocking_recv();
        }
    }

    fn handle_group(&mut self, mut group: Vec<WriterMsg>) {
        // A seal starts a new log generation and the old one goes once the seal is durable:
        // writes after the seal are logged (and applied) as a group of their own, in the new
        // generation, not with those before it in the one being deleted.
        if let Some(at) = group
            .iter()
            .position(|m| matches!(m, WriterMsg::Seal { .. }))
            && at + 1 < group.len()
        {
            let rest = group.split_off(at + 1);
            self.handle_group(group);
            return self.handle_group(rest);
        }
        // The first write that must be logged ends the unlogged source writes: those of the
        // group before it are stored first, and sealed (waiting for the sealer) with those
        // already in the mutable segment; from it on, source writes are logged too.
        if !self.log_sources
            && let Some(at) = group.iter().position(WriterMsg::must_log)
        {
            let rest = group.split_off(at);
            if !group.is_empty() {
                self.handle_group(group);
            }
            if self.state.read().durable_checkpoints.is_some()
                && let Err(e) = self.seal().and_then(|_| self.sealer_barrier())
            {
                tracing::error!(collection = %self.dir.display(), error = %e, "sealing unlogged source writes failed");
                for m in rest {
                    m.fail(TarnError::internal(format!(
                        "earlier source writes could not be sealed before this write: {e}"
                    )));
                }
                return;
            }
            self.log_sources = true;
            return self.handle_group(rest);
        }
        let started = Instant::now();
        if self.log_sources {
            for m in &mut group {
                if let WriterMsg::Insert { write, .. } = m
                    && let Some(docs) = write.replayable.take()
                {
                    write.framed = frame_insert(docs, &write.checkpoints);
                }
            }
        }
        let framed: Vec<&[u8]> = group
            .iter()
            .filter_map(|m| match m {
                WriterMsg::Insert { write, .. } => Some(write.framed.as_slice()),
                WriterMsg::Delete { framed: f, .. } => Some(f.as_slice()),
                WriterMsg::Seal { .. } => None,
            })
            .filter(|f| !f.is_empty())
            .collect();
        if !framed.is_empty() {
            let wal = self.wal.as_mut().expect("log is open while running");
            if let Err(e) = wal.append_all_durable(&framed) {
                // Nothing of the group is applied or acknowledged.
                tracing::error!(collection = %self.dir.display(), error = %e, "log append failed");
                for m in group {
                    m.fail(TarnError::internal(format!(
                        "the write could not be logged: {e}"
                    )));
                }
                return;
            }
        }
        let logged = Instant::now();
        for m in group {
            match m {
                WriterMsg::Insert { write, reply } => {
                    let statuses = self.apply_insert(write);
                    let _ = reply.send(Ok(statuses));
                }
                WriterMsg::Delete { ids, reply, .. } => {
                    let statuses = self.apply_delete(&ids);
                    let _ = reply.send(Ok(statuses));
                }
                WriterMsg::Seal { reply } => {
                    let r = self.seal().and_then(|_| self.sealer_barrier());
                    let _ = reply.send(r);
                }
            }
        }
        // After the replies: the writes are durable and visible already. A merge the merger
        // finished is put in place, and the next one handed to it.
        let applied = Instant::now();
        self.finish_merge();
        self.merge_runs();
        let merged = Instant::now();
        let (rows, bytes) = self.mutable_size();
        if (rows >= self.policy.max_rows || bytes >= self.policy.max_bytes)
            && let Err(e) = self.seal()
        {
            tracing::error!(collection = %self.dir.display(), error = %e, "sealing failed");
        }
        tracing::debug!(
            logged_ms = (logged - started).as_secs_f64() * 1e3,
            applied_ms = (applied - logged).as_secs_f64() * 1e3,
            merged_ms = (merged - applied).as_secs_f64() * 1e3,
            sealed_ms = merged.elapsed().as_secs_f64() * 1e3,
            "write group"
        );
    }

    fn sealer_barrier(&self) -> TarnResult<()> {
        let (tx, rx) = oneshot::channel();
        self.sealer
            .send(SealerMsg::Barrier(tx))
            .map_err(|_| TarnError::internal("the sealer stopped"))?;
        rx.blocking_recv()
            .map_err(|_| TarnError::internal("the sealer stopped"))?
    }

    fn mutable_size(&self) -> (usize, usize) {
        let s = self.state.read();
        self.mutable
            .iter()
            .filter_map(|id| s.segments.get(id))
            .fold((0, 0), |(r, b), e| {
                (
                    r + e.segment.stats.rows as usize,
                    b + e.segment.stats.bytes as usize,
                )
            })
    }

    fn apply_insert(&mut self, write: PreparedWrite) -> Vec<DocStatus> {
        let PreparedWrite {
            batch,
            ids,
            framed,
            checkpoints,
            replayable,
        } = write;
        crate::wal::recycle_record_buffer(framed);
        let unlogged = replayable.is_some();
        drop(replayable);
        if ids.is_empty() {
            // A position-only record (a source moved past records that made no documents,
            // or reached the end of a shard): no segment, only the checkpoints.
            advance_checkpoints(&mut self.state.write(), checkpoints, unlogged);
            return Vec::new();
        }
        let seg_id = self.next_segment_id;
        self.next_segment_id += 1;
        let mut own_deleted = DeleteBitmap::default();
        let mut elsewhere: Vec<Loc> = Vec::new();
        let mut statuses = Vec::with_capacity(ids.len());
        for (row, id) in ids.into_iter().enumerate() {
            match self.index.insert(
                id,
                Loc {
                    segment: seg_id,
                    row: row as u32,
                },
            ) {
                Some(old) if old.segment == seg_id => {
                    own_deleted.insert(old.row as usize);
                    statuses.push(DocStatus::Replaced);
                }
                Some(old) => {
                    elsewhere.push(old);
                    statuses.push(DocStatus::Replaced);
                }
                None => statuses.push(DocStatus::Added),
            }
        }
        let segment = Segment::new(seg_id, batch);
        let added = segment.stats.rows - own_deleted.count() as u64;
        {
            let mut s = self.state.write();
            let replaced_elsewhere = mark_deleted(&mut s, &elsewhere);
            // The schema's `Arc` changes only when the schema does: cached query plans
            // are valid for as long as it stays the same.
            let merged = types::merge_schemas(&s.schema, &segment.schema());
            if merged != s.schema {
                s.schema = merged;
            }
            s.segments.insert(
                seg_id,
                SegmentEntry {
                    segment,
                    deleted: Arc::new(own_deleted),
                    sealed: false,
                },
            );
            s.live_docs = s.live_docs + added - replaced_elsewhere;
            s.last_updated_ms = chrono::Utc::now().timestamp_millis();
            advance_checkpoints(&mut s, checkpoints, unlogged);
        }
        self.mutable.push(seg_id);
        self.mutable_since.get_or_insert_with(Instant::now);
        statuses
    }

    fn apply_delete(&mut self, ids: &[String]) -> Vec<DocStatus> {
        let mut locs = Vec::new();
        let statuses = ids
            .iter()
            .map(|id| match self.index.remove(id) {
                Some(loc) => {
                    locs.push(loc);
                    DocStatus::Deleted
                }
                None => DocStatus::Error(format!("no document with _id '{id}'")),
            })
            .collect();
        let mut s = self.state.write();
        let n = mark_deleted(&mut s, &locs);
        s.live_docs -= n;
        s.last_updated_ms = chrono::Utc::now().timestamp_millis();
        statuses
    }

    /// Keeps the number of runs logarithmic: merges the newest runs into one while each is
    /// at most twice as large as all newer ones together, so every row is copied O(log n)
    /// times.
    ///
    /// Once the collection runs, merges are done by the merger thread, one at a time, and
    /// put in place by [`Writer::finish_merge`]: a merge copies megabytes, and every write
    /// waiting on the writer waited for it (30 ms at the 99th percentile at 20 MB/s). While
    /// the log is replayed, before the writer starts, they are done here.
    fn merge_runs(&mut self) {
        while let Some(ids) = self.runs_to_merge() {
            if let Some(merger) = &mut self.merger {
                if merger.busy {
                    return;
                }
                let entries = entries_of(&self.state, &ids);
                merger.busy = merger.jobs.send(entries).is_ok();
                return;
            }
            self.mutable.retain(|id| !ids.contains(id));
            match self.merge_segments(&ids, false) {
                Ok(id) => self.mutable.push(id),
                Err(e) => {
                    tracing::error!(error = %e, "merging runs failed; keeping them apart");
                    self.mutable.extend(ids);
                    return;
                }
            }
        }
    }

    /// The newest runs, when two or more are due for a merge: taken newest first while each
    /// is at most twice the rows of those already taken, up to `MERGED_RUN_ROWS` in all.
    ///
    /// Several at once, not a pair at a time: at 20 MB/s the writes made runs faster than
    /// pairwise merges on one merger thread could join them, and the runs left over were
    /// merged on the writer thread at the seal (280 ms).
    fn runs_to_merge(&self) -> Option<Vec<u64>> {
        let s = self.state.read();
        let rows = |id: &u64| s.segments.get(id).map_or(0, |e| e.segment.stats.rows);
        let (mut taken, mut total) = (0usize, 0u64);
        for id in self.mutable.iter().rev() {
            let r = rows(id);
            // Runs past MERGED_RUN_ROWS wait for sealing: merging them again would copy
            // their rows once more for little gain in query overhead.
            if taken > 0 && (r > total * 2 || total + r > MERGED_RUN_ROWS as u64) {
                break;
            }
            taken += 1;
            total += r;
        }
        (taken >= 2).then(|| self.mutable[self.mutable.len() - taken..].to_vec())
    }

    /// Replaces segments by one holding their live rows, on this thread; returns the new id.
    fn merge_segments(&mut self, ids: &[u64], sealed: bool) -> TarnResult<u64> {
        let (batch, stats) = merge_entries(&entries_of(&self.state, ids))?;
        Ok(self.install_merge(ids, batch, stats, sealed))
    }

    /// Puts the merge of segments `ids` in their place: a new segment id, the index pointed
    /// at its rows, and the swap in the state that queries see.
    fn install_merge(
        &mut self,
        ids: &[u64],
        batch: RecordBatch,
        stats: SegmentStats,
        sealed: bool,
    ) -> u64 {
        let new_id = self.next_segment_id;
        self.next_segment_id += 1;
        let ids_col = batch
            .column_by_name(ID)
            .expect("segments have _id")
            .as_string::<i32>()
            .clone();
        let segment = Segment::with_stats(new_id, batch, stats);
        for row in 0..ids_col.len() {
            let loc = Loc {
                segment: new_id,
                row: row as u32,
            };
            // Every live row of the inputs is indexed already: repoint it without allocating
            // its key again (runs are merged several times on their way to sealing).
            match self.index.get_mut(ids_col.value(row)) {
                Some(old) => *old = loc,
                None => {
                    self.index.insert(ids_col.value(row).to_owned(), loc);
                }
            }
        }
        let mut s = self.state.write();
        for id in ids {
            s.segments.remove(id);
        }
        s.segments.insert(
            new_id,
            SegmentEntry {
                segment,
                deleted: Arc::new(DeleteBitmap::default()),
                sealed,
            },
        );
        new_id
    }

    /// Puts a merge the merger finished in place of its inputs, if they are still runs of
    /// the mutable segment with no row deleted since it began. Otherwise the merge is
    /// dropped and the runs stay apart: a seal or retention took them, or a replace or a
    /// delete hit one of their rows (and the merged copy would bring that row back).
    fn finish_merge(&mut self) {
        let Some(merger) = &mut self.merger else {
            return;
        };
        let Ok(result) = merger.done.try_recv() else {
            return;
        };
        merger.busy = false;
        let merged = match result {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(collection = %self.dir.display(), error = %e, "merging runs failed; keeping them apart");
                return;
            }
        };
        let unchanged = {
            let s = self.state.read();
            merged.inputs.iter().all(|(id, deleted)| {
                self.mutable.contains(id)
                    && s.segments
                        .get(id)
                        .is_some_and(|e| e.deleted.count() == *deleted)
            })
        };
        if !unchanged {
            tracing::debug!(collection = %self.dir.display(), "a merge of runs was overtaken; keeping them apart");
            return;
        }
        let ids: Vec<u64> = merged.inputs.iter().map(|(id, _)| *id).collect();
        let at = self
            .mutable
            .iter()
            .position(|id| ids.contains(id))
            .expect("the inputs are runs");
        self.mutable.retain(|id| !ids.contains(id));
        let new_id = self.install_merge(&ids, merged.batch, merged.stats, false);
        self.mutable.insert(at, new_id);
    }

    /// Seals the mutable segment: its full runs as they are, the others merged into one;
    /// then moves the log to a new generation and hands the new segments to the sealer.
    ///
    /// Full runs (at least half of `MERGED_RUN_ROWS`, nothing deleted) are not copied into
    /// one segment again: a copy of the whole mutable segment held the writer, and every
    /// write waiting on it, for 150 ms and more at 20 MB/s. Segments of 4 to 8 thousand
    /// rows scan as fast (DataFusion's own batches are 8,192 rows) and prune finer.
    fn seal(&mut self) -> TarnResult<()> {
        self.mutable_since = None;
        let ids = std::mem::take(&mut self.mutable);
        let (whole, rest): (Vec<u64>, Vec<u64>) = {
            let s = self.state.read();
            ids.iter().partition(|id| {
                s.segments.get(id).is_some_and(|e| {
                    e.deleted.is_empty() && e.segment.stats.rows >= MERGED_RUN_ROWS as u64 / 2
                })
            })
        };
        let mut sealed = whole;
        if !rest.is_empty() {
            sealed.push(self.merge_segments(&rest, true)?);
        }
        let new_segments: Vec<Arc<Segment>> = {
            let mut s = self.state.write();
            sealed
                .iter()
                .filter_map(|id| {
                    s.segments.update(id, |e| {
                        e.sealed = true;
                        e.segment.clone()
                    })
                })
                .collect()
        };
        let old_generation = self.wal.as_ref().map_or(self.wal_start, |w| w.generation);
        let next = old_generation + 1;
        self.wal = Some(WalWriter::open(&self.dir.join("wal"), next)?);
        self.wal_start = next;
        // Everything of the mutable segment goes into this manifest, with its checkpoints.
        self.state.write().durable_checkpoints = None;
        self.log_sources = false;
        self.send_manifest(new_segments, Vec::new(), next)
    }

    /// Sends the sealer the current manifest, with the bitmaps that changed since last time.
    fn send_manifest(
        &mut self,
        new_segments: Vec<Arc<Segment>>,
        dropped: Vec<u64>,
        delete_wal_before: u64,
    ) -> TarnResult<()> {
        let s = self.state.read();
        let mut bitmaps = Vec::new();
        let mut segments = Vec::new();
        for e in s.segments.sealed.values() {
            let n = e.deleted.count();
            if self
                .persisted_bitmaps
                .get(&e.segment.id)
                .copied()
                .unwrap_or(0)
                != n
            {
                bitmaps.push((e.segment.id, e.deleted.clone()));
                self.persisted_bitmaps.insert(e.segment.id, n);
            }
            segments.push(ManifestSegment {
                id: e.segment.id,
                stats: e.segment.stats.clone(),
                deleted_rows: n,
            });
        }
        let manifest = Manifest {
            segments,
            wal_start: self.wal_start,
            next_segment_id: self.next_segment_id,
            schema: Some(s.schema.as_ref().clone()),
            // Not past what a restart would have: unlogged writes are not in this manifest.
            checkpoints: s
                .durable_checkpoints
                .clone()
                .unwrap_or_else(|| s.checkpoints.clone()),
        };
        drop(s);
        self.sealer
            .send(SealerMsg::Persist(Box::new(SealJob {
                new_segments,
                bitmaps,
                dropped,
                manifest,
                delete_wal_before,
            })))
            .map_err(|_| TarnError::internal("the sealer stopped"))
    }

    /// Drops whole segments past retention; partial ones are filtered at query time.
    fn apply_retention(&mut self) {
        let Some(secs) = self.retention else { return };
        let cutoff = tarn_common::time::now_micros() - secs as i64 * 1_000_000;
        let expired: Vec<SegmentEntry> = {
            let s = self.state.read();
            s.segments
                .values()
                .filter(|e| e.segment.stats.max_event_time < cutoff)
                .cloned()
                .collect()
        };
        if expired.is_empty() {
            return;
        }
        let mut dropped = Vec::new();
        {
            let mut s = self.state.write();
            for e in &expired {
                s.segments.remove(&e.segment.id);
                s.live_docs -= e.live_rows();
                self.mutable.retain(|id| *id != e.segment.id);
                if e.sealed {
                    dropped.push(e.segment.id);
                }
            }
        }
        for e in &expired {
            let ids = match e.segment.ids() {
                Ok(ids) => ids,
                Err(err) => {
                    tracing::error!(collection = %self.dir.display(), error = %err, "cannot read the ids of a segment past retention; they stay indexed");
                    continue;
                }
            };
            for row in 0..ids.len() {
                if self
                    .index
                    .get(ids.value(row))
                    .is_some_and(|l| l.segment == e.segment.id)
                {
                    self.index.remove(ids.value(row));
                }
            }
        }
        tracing::info!(collection = %self.dir.display(), segments = expired.len(), "dropped segments past retention");
        if !dropped.is_empty() {
            for id in &dropped {
                self.persisted_bitmaps.remove(id);
            }
            let wal_start = self.wal_start;
            if let Err(e) = self.send_manifest(Vec::new(), dropped, wal_start) {
                tracing::error!(error = %e, "cannot persist retention");
            }
        }
    }
}

/// Prepares a write on tokio's blocking pool: building a batch takes milliseconds of CPU.
async fn on_blocking_pool(
    prepare: impl FnOnce() -> PreparedWrite + Send + 'static,
) -> TarnResult<PreparedWrite> {
    tokio::task::spawn_blocking(prepare)
        .await
        .map_err(|e| TarnError::internal(format!("preparing the write failed: {e}")))
}

/// Moves the stored positions past a write; before the first write not in the log, keeps
/// the positions a crash would go back to.
fn advance_checkpoints(s: &mut State, checkpoints: Vec<(String, String)>, unlogged: bool) {
    if unlogged && s.durable_checkpoints.is_none() {
        s.durable_checkpoints = Some(s.checkpoints.clone());
    }
    s.checkpoints.extend(checkpoints);
}

/// Marks rows deleted in their segments; returns how many were live.
fn mark_deleted(s: &mut State, locs: &[Loc]) -> u64 {
    let mut n = 0;
    for loc in locs {
        n += s
            .segments
            .update(&loc.segment, |e| {
                Arc::make_mut(&mut e.deleted).insert(loc.row as usize)
            })
            .unwrap_or(false) as u64;
    }
    n
}

fn run_sealer(
    dir: PathBuf,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    rx: Receiver<SealerMsg>,
) {
    let mut failed: Option<TarnError> = None;
    for msg in rx {
        match msg {
            SealerMsg::Persist(job) => {
                if let Err(e) = persist(&dir, store.as_ref(), &prefix, *job) {
                    tracing::error!(collection = %dir.display(), error = %e, "persisting a segment failed; the log keeps the data");
                    failed = Some(e);
                }
            }
            SealerMsg::Barrier(reply) => {
                let _ = reply.send(match failed.take() {
                    Some(e) => Err(e),
                    None => Ok(()),
                });
            }
        }
    }
}

fn persist(
    dir: &Path,
    store: &dyn ObjectStore,
    prefix: &ObjectPath,
    job: SealJob,
) -> TarnResult<()> {
    for seg in &job.new_segments {
        let bytes = encode_ipc(&seg.read_all()?)?;
        let local = segment_path(dir, seg.id);
        if !write_segment_uncached(&local, &bytes)? {
            let path = segment_object(prefix, seg.id);
            futures::executor::block_on(store.put(&path, bytes.into()))
                .map_err(|e| TarnError::internal(format!("writing segment {}: {e}", seg.id)))?;
            // The store renames into place without fsync: make it durable before the log goes.
            if local.exists() {
                std::fs::File::open(&local)?.sync_all()?;
            }
        }
        if local.exists() {
            wal::sync_dir(&dir.join("segments"))?;
            // From now on its columns are read from the file, and memory holds only what
            // the column cache keeps.
            seg.store(SegmentFile::open(&local)?);
        }
    }
    for (id, bitmap) in &job.bitmaps {
        write_atomic(&bitmap_path(dir, *id), &bitmap.to_bytes())?;
    }
    let manifest =
        serde_json::to_vec_pretty(&job.manifest).map_err(|e| TarnError::internal(e.to_string()))?;
    write_atomic(&manifest_path(dir), &manifest)?;
    for g in wal::list_generations(&dir.join("wal"))? {
        if g < job.delete_wal_before {
            std::fs::remove_file(wal::generation_path(&dir.join("wal"), g))?;
        }
    }
    for id in job.dropped {
        let _ = futures::executor::block_on(store.delete(&segment_object(prefix, id)));
        let _ = std::fs::remove_file(bitmap_path(dir, id));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::{IngestContext, prepare};
    use serde_json::json;

    fn open(dir: &Path, policy: SealPolicy) -> Arc<Collection> {
        let store: Arc<dyn ObjectStore> =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir).unwrap());
        Collection::open(
            dir.to_path_buf(),
            store,
            ObjectPath::from(""),
            CollectionOptions::default(),
            policy,
        )
        .unwrap()
    }

    fn docs(values: &[Value]) -> Vec<(Document, Vec<u8>)> {
        let meta = json!({"source": "test"});
        values
            .iter()
            .map(|v| {
                let ctx = IngestContext {
                    event_time_info: None,
                    now_micros: 1_000,
                    meta: &meta,
                };
                (
                    prepare(v.clone(), &ctx).unwrap(),
                    serde_json::to_vec(v).unwrap(),
                )
            })
            .collect()
    }

    fn live_ids(c: &Collection) -> Vec<String> {
        let snap = c.snapshot();
        let mut out = Vec::new();
        for e in snap.entries() {
            let ids = e.segment.ids().unwrap();
            for r in 0..ids.len() {
                if !e.deleted.contains(r) {
                    out.push(ids.value(r).to_owned());
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn insert_replace_delete_and_replay() {
        let dir = tempfile::tempdir().unwrap();
        let c = open(dir.path(), SealPolicy::default());
        let st = c
            .insert_blocking(
                docs(&[json!({"_id": "a", "v": 1}), json!({"_id": "b", "v": 2})]),
                vec![],
            )
            .unwrap();
        assert_eq!(st, vec![DocStatus::Added, DocStatus::Added]);
        let st = c
            .insert_blocking(
                docs(&[json!({"_id": "a", "v": "one"})]),
                vec![("s".into(), "7".into())],
            )
            .unwrap();
        assert_eq!(st, vec![DocStatus::Replaced]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let st = rt
            .block_on(c.delete(vec!["b".into(), "zz".into()]))
            .unwrap();
        assert_eq!(st[0], DocStatus::Deleted);
        assert!(matches!(st[1], DocStatus::Error(_)));
        assert_eq!(c.stats().doc_count, 1);
        assert_eq!(live_ids(&c), vec!["a"]);
        c.close();
        drop(c);
        let c = open(dir.path(), SealPolicy::default());
        assert_eq!(live_ids(&c), vec!["a"]);
        assert_eq!(c.stats().doc_count, 1);
        assert_eq!(c.checkpoints().get("s").map(String::as_str), Some("7"));
    }

    /// The live ids and the checkpoint `s` that a crash now would leave: a copy of the
    /// collection's files as they are, opened.
    fn after_crash(dir: &Path) -> (Vec<String>, Option<String>) {
        fn copy(from: &Path, to: &Path) {
            std::fs::create_dir_all(to).unwrap();
            for e in std::fs::read_dir(from).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    copy(&e.path(), &to.join(e.file_name()));
                } else {
                    std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
                }
            }
        }
        let image = tempfile::tempdir().unwrap();
        copy(dir, image.path());
        let crashed = open(image.path(), SealPolicy::default());
        let position = crashed.checkpoints().get("s").cloned();
        (live_ids(&crashed), position)
    }

    fn source_write(c: &Collection, rt: &tokio::runtime::Runtime, values: &[Value], at: &str) {
        let write = prepare_source_write(docs(values), vec![("s".into(), at.into())]);
        rt.block_on(c.insert_prepared(write)).unwrap();
    }

    fn durable_position(c: &Collection) -> Option<String> {
        c.durable_checkpoints().get("s").cloned()
    }

    /// A new collection holding `x1` and `x2` from a source at position `s` = 2, unlogged.
    fn two_source_writes() -> (tokio::runtime::Runtime, tempfile::TempDir, Arc<Collection>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let c = open(dir.path(), SealPolicy::default());
        source_write(&c, &rt, &[json!({"_id": "x1"}), json!({"_id": "x2"})], "2");
        (rt, dir, c)
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn source_writes_are_durable_once_sealed() {
        let (rt, dir, c) = two_source_writes();
        assert_eq!(live_ids(&c), ids(&["x1", "x2"]));
        assert_eq!(c.checkpoints().get("s").map(String::as_str), Some("2"));
        assert_eq!(durable_position(&c), None);
        // Not in the log: a crash takes the writes back with their position.
        assert_eq!(after_crash(dir.path()), (vec![], None));
        rt.block_on(c.seal()).unwrap();
        assert_eq!(durable_position(&c), Some("2".into()));
        assert_eq!(
            after_crash(dir.path()),
            (ids(&["x1", "x2"]), Some("2".into()))
        );
        // Closing seals what is not in the log, so a restart does not read it again.
        source_write(&c, &rt, &[json!({"_id": "x3"})], "3");
        c.close();
        drop(c);
        let c = open(dir.path(), SealPolicy::default());
        assert_eq!(live_ids(&c), ids(&["x1", "x2", "x3"]));
        assert_eq!(c.checkpoints().get("s").map(String::as_str), Some("3"));
    }

    #[test]
    fn writes_grouped_after_a_seal_go_into_the_next_log_generation() {
        let dir = tempfile::tempdir().unwrap();
        let c = open(dir.path(), SealPolicy::default());
        let insert = |id: &str| {
            let (reply, rx) = oneshot::channel();
            let write = prepare_write(docs(&[json!({ "_id": id })]), vec![]);
            c.send(WriterMsg::Insert { write, reply }).unwrap();
            rx
        };
        // Holding the state keeps the writer applying `x`, so that the three writes queued
        // meanwhile reach it as one group.
        let held = c.state.read();
        let x = insert("x");
        std::thread::sleep(Duration::from_millis(200));
        let a = insert("a");
        let (reply, sealed) = oneshot::channel();
        c.send(WriterMsg::Seal { reply }).unwrap();
        let b = insert("b");
        drop(held);
        for rx in [x, a, b] {
            rx.blocking_recv().unwrap().unwrap();
        }
        sealed.blocking_recv().unwrap().unwrap();
        assert_eq!(after_crash(dir.path()).0, ids(&["a", "b", "x"]));
    }

    #[test]
    fn a_logged_write_never_precedes_unlogged_source_writes() {
        let (rt, dir, c) = two_source_writes();
        // The delete is logged only after the insert it deletes is sealed: otherwise a
        // restart replays the delete and then reads the insert again from the source.
        rt.block_on(c.delete(vec!["x1".into()])).unwrap();
        assert_eq!(after_crash(dir.path()), (ids(&["x2"]), Some("2".into())));
        // Until the next seal, source writes are logged too.
        source_write(&c, &rt, &[json!({"_id": "x3"})], "3");
        assert_eq!(durable_position(&c), Some("3".into()));
        assert_eq!(
            after_crash(dir.path()),
            (ids(&["x2", "x3"]), Some("3".into()))
        );
        // After it, they are not.
        rt.block_on(c.seal()).unwrap();
        source_write(&c, &rt, &[json!({"_id": "x4"})], "4");
        assert_eq!(durable_position(&c), Some("3".into()));
    }

    #[test]
    fn the_id_index_spreads_ids_over_its_shards_and_finds_each_where_it_put_it() {
        let mut index = IdIndex::with_capacity(0);
        let ids: Vec<String> = (0..64_000).map(|i| format!("id-{i}")).collect();
        for (row, id) in ids.iter().enumerate() {
            let loc = Loc {
                segment: 1,
                row: row as u32,
            };
            assert!(index.insert(id.clone(), loc).is_none(), "{id} is new");
        }
        let sizes: Vec<usize> = index.shards.iter().map(HashMap::len).collect();
        assert_eq!(sizes.iter().sum::<usize>(), ids.len());
        // 1,000 a shard on average: a shard holding twice that, or half, is a bad pick.
        assert!(
            sizes.iter().all(|n| (500..2_000).contains(n)),
            "shard sizes {sizes:?}"
        );
        let moved = Loc { segment: 2, row: 7 };
        assert_eq!(index.insert(ids[5].clone(), moved).map(|l| l.row), Some(5));
        assert_eq!(index.get(&ids[5]).map(|l| (l.segment, l.row)), Some((2, 7)));
        index.get_mut(&ids[6]).expect("indexed").segment = 3;
        assert_eq!(index.get(&ids[6]).map(|l| l.segment), Some(3));
        assert_eq!(index.remove(&ids[6]).map(|l| l.row), Some(6));
        assert!(index.get(&ids[6]).is_none());
        assert!(index.remove(&ids[6]).is_none());
        assert!(index.get("not-an-id").is_none());
    }

    #[test]
    fn sealing_persists_segments_and_truncates_log() {
        let dir = tempfile::tempdir().unwrap();
        let policy = SealPolicy {
            max_rows: 10,
            ..Default::default()
        };
        let c = open(dir.path(), policy);
        for i in 0..35 {
            c.insert_blocking(docs(&[json!({"_id": i.to_string(), "n": i})]), vec![])
                .unwrap();
        }
        c.insert_blocking(docs(&[json!({"_id": "3", "n": "replaced"})]), vec![])
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(c.delete(vec!["4".into()])).unwrap();
        rt.block_on(c.seal()).unwrap();
        let stats = c.stats();
        assert_eq!(stats.doc_count, 34);
        assert!(stats.sealed_segments >= 3, "{stats:?}");
        let wal_files = wal::list_generations(&dir.path().join("wal")).unwrap();
        assert_eq!(
            wal_files.len(),
            1,
            "old generations are deleted: {wal_files:?}"
        );
        let before = live_ids(&c);
        c.close();
        drop(c);
        let c = open(dir.path(), policy);
        assert_eq!(live_ids(&c), before);
        assert_eq!(c.stats().doc_count, 34);
    }

    #[test]
    fn queries_share_the_sealed_list_until_a_sealed_segment_changes() {
        let dir = tempfile::tempdir().unwrap();
        let c = open(dir.path(), SealPolicy::default());
        let values: Vec<Value> = (0..10)
            .map(|i| json!({"_id": format!("a{i}"), "n": i, "s": i.to_string()}))
            .collect();
        c.insert_blocking(docs(&values), vec![]).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(c.seal()).unwrap();
        let first = c.snapshot();
        assert_eq!(first.sealed.entries.len(), 1);
        assert!(first.runs.is_empty());
        assert_eq!(first.sealed.live_rows, vec![10]);
        let stats = first.sealed.column_stats("s");
        assert!(
            matches!(
                &stats[..],
                [Some(ColumnStats::Str {
                    int_min: Some(0),
                    int_max: Some(9),
                    ..
                })]
            ),
            "{stats:?}"
        );
        assert_eq!(first.sealed.column_stats("missing")[..], [None]);
        // A write adds a run: the sealed list is the same one.
        c.insert_blocking(docs(&[json!({"_id": "b", "n": 1})]), vec![])
            .unwrap();
        let second = c.snapshot();
        assert!(Arc::ptr_eq(&first.sealed, &second.sealed));
        assert_eq!(second.runs.len(), 1);
        assert_eq!(second.entries().count(), 2);
        // Replacing a sealed row changes the list; the earlier snapshot keeps its bitmap.
        c.insert_blocking(docs(&[json!({"_id": "a3", "n": 30})]), vec![])
            .unwrap();
        let third = c.snapshot();
        assert!(!Arc::ptr_eq(&second.sealed, &third.sealed));
        assert_eq!(third.sealed.live_rows, vec![9]);
        assert_eq!(second.sealed.live_rows, vec![10]);
        assert_eq!(
            third.entries().map(SegmentEntry::live_rows).sum::<u64>(),
            11
        );
    }

    #[test]
    fn sealing_keeps_full_runs_as_they_are_and_merges_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let c = open(dir.path(), SealPolicy::default());
        // A run of MERGED_RUN_ROWS, one of half that with a row replaced later (the two are
        // too large together to merge as runs), then small runs.
        let half = MERGED_RUN_ROWS / 2;
        for (batch, size) in [MERGED_RUN_ROWS, half].into_iter().enumerate() {
            let values: Vec<Value> = (0..size)
                .map(|i| json!({"_id": format!("{batch}-{i}"), "n": i}))
                .collect();
            c.insert_blocking(docs(&values), vec![]).unwrap();
        }
        for i in 0..5 {
            c.insert_blocking(docs(&[json!({"_id": format!("s{i}"), "n": i})]), vec![])
                .unwrap();
        }
        c.insert_blocking(docs(&[json!({"_id": "1-7", "n": "replaced"})]), vec![])
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(c.seal()).unwrap();
        let want = (MERGED_RUN_ROWS + half) as u64 + 5;
        let snap = c.snapshot();
        let rows: Vec<u64> = snap.entries().map(|e| e.segment.stats.rows).collect();
        assert!(snap.entries().all(|e| e.sealed), "{rows:?}");
        // Durable, so read from their files from now on.
        assert!(snap.entries().all(|e| e.segment.is_stored()));
        // The clean full run is kept; the run with a replaced row and the small runs merge.
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert!(rows.contains(&(MERGED_RUN_ROWS as u64)), "{rows:?}");
        assert_eq!(c.stats().doc_count, want);
        let before = live_ids(&c);
        assert_eq!(before.len() as u64, want);
        c.close();
        drop(c);
        let c = open(dir.path(), SealPolicy::default());
        assert_eq!(live_ids(&c), before);
        assert_eq!(c.stats().sealed_segments, 2);
        assert!(c.snapshot().entries().all(|e| e.segment.is_stored()));
    }

    #[test]
    fn many_small_writes_keep_few_runs() {
        let dir = tempfile::tempdir().unwrap();
        let c = open(dir.path(), SealPolicy::default());
        for i in 0..200 {
            c.insert_blocking(docs(&[json!({"i": i})]), vec![]).unwrap();
        }
        // Merges run beside the writes; they settle once the writes stop.
        let settled = Instant::now() + Duration::from_secs(10);
        while c.stats().segments > 10 && Instant::now() < settled {
            std::thread::sleep(Duration::from_millis(10));
        }
        let s = c.stats();
        assert_eq!(s.doc_count, 200);
        assert!(s.segments <= 10, "{s:?}");
    }

    /// Every live `_id` with the `n` of its row, read from the segments queries see.
    fn live_values(c: &Collection) -> BTreeMap<String, i64> {
        let snap = c.snapshot();
        let mut out = BTreeMap::new();
        for e in snap.entries() {
            let b = e.segment.read_all().unwrap();
            let ids = b.column_by_name(ID).unwrap().as_string::<i32>();
            let n = b
                .column_by_name("n")
                .unwrap()
                .as_primitive::<arrow::datatypes::Int64Type>();
            for r in 0..ids.len() {
                if !e.deleted.contains(r) {
                    let before = out.insert(ids.value(r).to_owned(), n.value(r));
                    assert!(before.is_none(), "{} is live twice", ids.value(r));
                }
            }
        }
        out
    }

    #[test]
    fn replaces_and_deletes_during_background_merges_are_kept() {
        // Writes replace and delete rows of runs that the merger may be merging at that
        // moment: a merge that would bring back an old row must be dropped, one that is
        // still current put in place, and the result must not depend on which happened.
        let dir = tempfile::tempdir().unwrap();
        let c = open(dir.path(), SealPolicy::default());
        let mut want: BTreeMap<String, i64> = BTreeMap::new();
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for round in 0..400i64 {
            let values: Vec<Value> = (0..rng.random_range(1..40))
                .map(|k| json!({"_id": format!("d{}", rng.random_range(0..500)), "n": round * 100 + k}))
                .collect();
            for v in &values {
                want.insert(
                    v["_id"].as_str().unwrap().to_owned(),
                    v["n"].as_i64().unwrap(),
                );
            }
            c.insert_blocking(docs(&values), vec![]).unwrap();
            if round % 7 == 0 {
                let id = format!("d{}", rng.random_range(0..500));
                if want.remove(&id).is_some() {
                    rt.block_on(c.delete(vec![id])).unwrap();
                }
            }
        }
        assert_eq!(live_values(&c), want);
        assert_eq!(c.stats().doc_count, want.len() as u64);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            live_values(&c),
            want,
            "after the last merges were put in place"
        );
        c.close();
        drop(c);
        let c = open(dir.path(), SealPolicy::default());
        assert_eq!(live_values(&c), want, "after replaying the log");
    }
}
