//! Segments: immutable Arrow batches with statistics, deletion bitmaps, and their files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, RecordBatchOptions, StringArray};
use arrow::buffer::Buffer;
use arrow::datatypes::{DataType, Float64Type, Int64Type, SchemaRef, TimestampMicrosecondType};
use arrow::ipc::convert::fb_to_schema;
use arrow::ipc::reader::{FileDecoder, read_footer_length};
use arrow::ipc::writer::{FileWriter, IpcWriteOptions};
use arrow::ipc::{Block, CompressionType, MetadataVersion, root_as_footer};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tarn_common::{TarnError, TarnResult};

use crate::adapt::arrow_error;
use crate::cache::column_cache;
use crate::layout::{FlatColumn, Subfields, flatten, unflatten_schema};
use crate::types::{EVENT_TIME, ID, NULLS};

/// Minimum and maximum of one scalar column of a segment, for pruning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ColumnStats {
    Int {
        min: i64,
        max: i64,
        nulls: u64,
    },
    Float {
        min: f64,
        max: f64,
        nulls: u64,
    },
    /// For strings: the text range, and the integer range when every value parses as an
    /// integer (as Twitter's `timestamp_ms` does), so `CAST(x AS INT) > n` can prune.
    Str {
        min: String,
        max: String,
        int_min: Option<i64>,
        int_max: Option<i64>,
        nulls: u64,
    },
}

impl ColumnStats {
    /// Rows of the segment without a value in the column.
    pub fn nulls_mut(&mut self) -> &mut u64 {
        match self {
            ColumnStats::Int { nulls, .. }
            | ColumnStats::Float { nulls, .. }
            | ColumnStats::Str { nulls, .. } => nulls,
        }
    }
}

/// Column statistics by dotted path. A hash map, not a B-tree: a query checks one path in
/// each of a thousand segments, and a B-tree lookup compared the path with a dozen keys,
/// each a separate allocation, cold in cache (a quarter of a windowed query's time over a
/// day of tweets).
pub type ColumnStatsMap = HashMap<String, ColumnStats, foldhash::quality::RandomState>;

/// Statistics of a segment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SegmentStats {
    pub rows: u64,
    pub min_event_time: i64,
    pub max_event_time: i64,
    /// Scalar columns by dotted path (`user.followers_count`).
    pub columns: ColumnStatsMap,
    /// Bytes of the segment's Arrow data (`data_bytes`: not counting spare capacity).
    pub bytes: u64,
    /// Whether each column's `nulls` counts every row without a value. Statistics written
    /// by earlier versions left out the rows of merged inputs that lacked the column, so
    /// theirs may be short: a scan then never concludes that every row has a value.
    #[serde(default)]
    pub nulls_counted: bool,
}

impl SegmentStats {
    /// The statistics of column `path`, with `nulls` at least 1 where the count may be
    /// short (see [`SegmentStats::nulls_counted`]).
    pub fn column(&self, path: &str) -> Option<ColumnStats> {
        let mut c = self.columns.get(path)?.clone();
        let nulls = c.nulls_mut();
        *nulls = self.trusted_nulls(*nulls);
        Some(c)
    }

    /// A column's recorded null count as a scan may rely on it: at least 1 where the
    /// count may be short (see [`SegmentStats::nulls_counted`]).
    pub fn trusted_nulls(&self, recorded: u64) -> u64 {
        if self.nulls_counted {
            recorded
        } else {
            recorded.max(1)
        }
    }
}

/// The bytes of a batch's data: its rows' share of the buffers, not the buffers' capacity.
/// A batch built on one thread holds buffers with room to spare (a tweet's 2,000 rows: 8.7
/// MB of data in 51 MB of capacity), and counting that sealed the mutable segment at its
/// byte limit after 6,000 tweets instead of at its row limit.
pub fn data_bytes(batch: &RecordBatch) -> u64 {
    batch
        .columns()
        .iter()
        .map(|c| {
            c.to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| c.get_array_memory_size()) as u64
        })
        .sum()
}

impl SegmentStats {
    /// Computes the statistics of a batch.
    pub fn compute(batch: &RecordBatch) -> SegmentStats {
        let mut stats = SegmentStats {
            rows: batch.num_rows() as u64,
            bytes: data_bytes(batch),
            nulls_counted: true,
            ..Default::default()
        };
        if let Some(et) = batch.column_by_name(EVENT_TIME) {
            let et = et.as_primitive::<TimestampMicrosecondType>();
            stats.min_event_time = arrow::compute::min(et).unwrap_or(i64::MAX);
            stats.max_event_time = arrow::compute::max(et).unwrap_or(i64::MIN);
        }
        for (f, col) in batch.schema().fields().iter().zip(batch.columns()) {
            if f.name() != NULLS && f.name() != EVENT_TIME {
                collect_column_stats(f.name(), col, &mut stats.columns);
            }
        }
        stats
    }
}

impl SegmentStats {
    /// The statistics of a merge of segments, from theirs: row count and size from the merged
    /// batch, ranges as the union of the inputs' ranges (still bounds when rows were dropped).
    /// A column's range is kept only when every input that has the column has a range for it.
    pub fn merged<'a>(
        inputs: impl Iterator<Item = &'a SegmentStats>,
        batch: &RecordBatch,
    ) -> SegmentStats {
        let inputs: Vec<&SegmentStats> = inputs.collect();
        let mut out = SegmentStats {
            rows: batch.num_rows() as u64,
            bytes: data_bytes(batch),
            min_event_time: inputs
                .iter()
                .map(|s| s.min_event_time)
                .min()
                .unwrap_or(i64::MAX),
            max_event_time: inputs
                .iter()
                .map(|s| s.max_event_time)
                .max()
                .unwrap_or(i64::MIN),
            columns: ColumnStatsMap::default(),
            nulls_counted: inputs.iter().all(|s| s.nulls_counted),
        };
        let names: std::collections::BTreeSet<&String> =
            inputs.iter().flat_map(|s| s.columns.keys()).collect();
        let schema = batch.schema();
        'columns: for name in names {
            // Only a path that kept its scalar type in the merge keeps its range: one that
            // became a variant may hold values outside every input's range.
            if !scalar_path(&schema, name) {
                continue;
            }
            let mut acc: Option<ColumnStats> = None;
            // An input without a range for the column has it all null or absent.
            let mut missing = 0;
            for s in &inputs {
                let Some(c) = s.columns.get(name) else {
                    missing += s.rows;
                    continue;
                };
                acc = match acc {
                    None => Some(c.clone()),
                    Some(a) => match union(&a, c) {
                        Some(u) => Some(u),
                        None => continue 'columns,
                    },
                };
            }
            if let Some(mut a) = acc {
                *a.nulls_mut() += missing;
                out.columns.insert(name.clone(), a);
            }
        }
        out
    }
}

/// Whether a dotted path of the schema is an Int64, Float64 or Utf8 column.
fn scalar_path(schema: &arrow::datatypes::Schema, path: &str) -> bool {
    let mut parts = path.split('.');
    let Some(first) = parts.next() else {
        return false;
    };
    let Ok(field) = schema.field_with_name(first) else {
        return false;
    };
    let mut dt = field.data_type().clone();
    for p in parts {
        match &dt {
            DataType::Struct(fields) if !crate::types::is_variant(&dt) => match fields.find(p) {
                Some((_, f)) => dt = f.data_type().clone(),
                None => return false,
            },
            _ => return false,
        }
    }
    matches!(dt, DataType::Int64 | DataType::Float64 | DataType::Utf8)
}

fn union(a: &ColumnStats, b: &ColumnStats) -> Option<ColumnStats> {
    Some(match (a, b) {
        (
            ColumnStats::Int { min, max, nulls },
            ColumnStats::Int {
                min: m2,
                max: x2,
                nulls: n2,
            },
        ) => ColumnStats::Int {
            min: *min.min(m2),
            max: *max.max(x2),
            nulls: nulls + n2,
        },
        (
            ColumnStats::Float { min, max, nulls },
            ColumnStats::Float {
                min: m2,
                max: x2,
                nulls: n2,
            },
        ) => ColumnStats::Float {
            min: min.min(*m2),
            max: max.max(*x2),
            nulls: nulls + n2,
        },
        (
            ColumnStats::Str {
                min,
                max,
                int_min,
                int_max,
                nulls,
            },
            ColumnStats::Str {
                min: m2,
                max: x2,
                int_min: i2,
                int_max: j2,
                nulls: n2,
            },
        ) => ColumnStats::Str {
            min: min.clone().min(m2.clone()),
            max: max.clone().max(x2.clone()),
            int_min: int_min.zip(*i2).map(|(a, b)| a.min(b)),
            int_max: int_max.zip(*j2).map(|(a, b)| a.max(b)),
            nulls: nulls + n2,
        },
        _ => return None,
    })
}

fn collect_column_stats(path: &str, col: &ArrayRef, out: &mut ColumnStatsMap) {
    let nulls = col.null_count() as u64;
    if col.len() == col.null_count() {
        return;
    }
    match col.data_type() {
        DataType::Int64 => {
            let a = col.as_primitive::<Int64Type>();
            if let (Some(min), Some(max)) = (arrow::compute::min(a), arrow::compute::max(a)) {
                out.insert(path.to_owned(), ColumnStats::Int { min, max, nulls });
            }
        }
        DataType::Float64 => {
            let a = col.as_primitive::<Float64Type>();
            if let (Some(min), Some(max)) = (arrow::compute::min(a), arrow::compute::max(a)) {
                out.insert(path.to_owned(), ColumnStats::Float { min, max, nulls });
            }
        }
        DataType::Utf8 => {
            let a = col.as_string::<i32>();
            let (Some(min), Some(max)) =
                (arrow::compute::min_string(a), arrow::compute::max_string(a))
            else {
                return;
            };
            let mut int_range: Option<(i64, i64)> = None;
            let mut all_int = true;
            for v in a.iter().flatten() {
                match v.parse::<i64>() {
                    Ok(n) => {
                        int_range =
                            Some(int_range.map_or((n, n), |(lo, hi)| (lo.min(n), hi.max(n))))
                    }
                    Err(_) => {
                        all_int = false;
                        break;
                    }
                }
            }
            let (int_min, int_max) = match int_range.filter(|_| all_int) {
                Some((lo, hi)) => (Some(lo), Some(hi)),
                None => (None, None),
            };
            out.insert(
                path.to_owned(),
                ColumnStats::Str {
                    min: min.to_owned(),
                    max: max.to_owned(),
                    int_min,
                    int_max,
                    nulls,
                },
            );
        }
        DataType::Struct(fields) if !crate::types::is_variant(col.data_type()) => {
            let s = col.as_struct();
            for (f, child) in fields.iter().zip(s.columns()) {
                collect_column_stats(&format!("{path}.{}", f.name()), child, out);
            }
        }
        _ => {}
    }
}

/// Which rows of a segment are deleted (replaced or removed). Copied on write, so a query's
/// snapshot keeps the bitmap it started with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteBitmap {
    words: Vec<u64>,
    count: usize,
}

impl DeleteBitmap {
    pub fn contains(&self, row: usize) -> bool {
        self.words
            .get(row / 64)
            .is_some_and(|w| w & (1 << (row % 64)) != 0)
    }
    /// Marks a row deleted; returns whether it was live.
    pub fn insert(&mut self, row: usize) -> bool {
        if self.words.len() <= row / 64 {
            self.words.resize(row / 64 + 1, 0);
        }
        let bit = 1u64 << (row % 64);
        let was_live = self.words[row / 64] & bit == 0;
        self.words[row / 64] |= bit;
        self.count += was_live as usize;
        was_live
    }
    pub fn count(&self) -> usize {
        self.count
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// The live-rows filter for `rows` rows (true = keep).
    pub fn keep_mask(&self, rows: usize) -> arrow::array::BooleanArray {
        (0..rows).map(|r| Some(!self.contains(r))).collect()
    }
    pub fn to_bytes(&self) -> Vec<u8> {
        self.words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }
    pub fn from_bytes(b: &[u8]) -> DeleteBitmap {
        let words: Vec<u64> = b
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let count = words.iter().map(|w| w.count_ones() as usize).sum();
        DeleteBitmap { words, count }
    }
}

/// An immutable batch of documents: a run of the mutable segment or a sealed segment.
///
/// Its rows never change. Where its columns are does: a run, and a sealed segment until
/// the sealer has made its file durable, holds them in memory; after that
/// ([`Segment::store`]) they are read from the file on demand, through the column cache.
#[derive(Debug)]
pub struct Segment {
    pub id: u64,
    pub stats: SegmentStats,
    data: RwLock<SegmentData>,
}

#[derive(Debug, Clone)]
enum SegmentData {
    Resident(RecordBatch),
    Stored(Arc<SegmentFile>),
}

impl Segment {
    pub fn new(id: u64, batch: RecordBatch) -> Arc<Segment> {
        let stats = SegmentStats::compute(&batch);
        Segment::with_stats(id, batch, stats)
    }

    pub fn with_stats(id: u64, batch: RecordBatch, stats: SegmentStats) -> Arc<Segment> {
        Arc::new(Segment {
            id,
            stats,
            data: RwLock::new(SegmentData::Resident(batch)),
        })
    }

    /// A sealed segment whose columns stay in its file until a query reads them.
    pub fn open_stored(id: u64, path: &Path, stats: SegmentStats) -> TarnResult<Arc<Segment>> {
        let file = SegmentFile::open(path)?;
        if file.rows != stats.rows as usize {
            return Err(TarnError::internal(format!(
                "{} holds {} rows, its manifest says {}",
                path.display(),
                file.rows,
                stats.rows
            )));
        }
        Ok(Arc::new(Segment {
            id,
            stats,
            data: RwLock::new(SegmentData::Stored(file)),
        }))
    }

    pub fn schema(&self) -> SchemaRef {
        match &*self.data.read() {
            SegmentData::Resident(b) => b.schema(),
            SegmentData::Stored(f) => f.schema.clone(),
        }
    }

    /// The columns, if they are in memory (always so for runs of the mutable segment).
    pub fn resident(&self) -> Option<RecordBatch> {
        match &*self.data.read() {
            SegmentData::Resident(b) => Some(b.clone()),
            SegmentData::Stored(_) => None,
        }
    }

    /// The columns whose names `wanted` accepts, in the segment's order, decoded and kept in
    /// the column cache when they come from the file.
    pub fn read(&self, wanted: impl Fn(&str) -> bool) -> TarnResult<RecordBatch> {
        self.read_with(wanted, &HashMap::new(), true)
    }

    /// As [`Segment::read`], but of the struct columns named in `subfields` only those
    /// fields are decoded from a file; the others come back all null (in memory, the
    /// columns are whole, which costs nothing).
    pub fn read_fields(
        &self,
        wanted: impl Fn(&str) -> bool,
        subfields: &HashMap<String, Subfields>,
    ) -> TarnResult<RecordBatch> {
        self.read_with(wanted, subfields, true)
    }

    /// All columns; those read from the file are not kept in the cache.
    pub fn read_all(&self) -> TarnResult<RecordBatch> {
        self.read_with(|_| true, &HashMap::new(), false)
    }

    /// The `_id` column; read from the file without keeping it in the cache.
    pub fn ids(&self) -> TarnResult<StringArray> {
        let b = self.read_with(|n| n == ID, &HashMap::new(), false)?;
        b.column_by_name(ID)
            .and_then(|c| c.as_string_opt::<i32>())
            .cloned()
            .ok_or_else(|| TarnError::internal(format!("segment {} has no _id", self.id)))
    }

    fn read_with(
        &self,
        wanted: impl Fn(&str) -> bool,
        subfields: &HashMap<String, Subfields>,
        keep: bool,
    ) -> TarnResult<RecordBatch> {
        let data = self.data.read().clone();
        let schema = match &data {
            SegmentData::Resident(b) => b.schema(),
            SegmentData::Stored(f) => f.schema.clone(),
        };
        let columns: Vec<usize> = (0..schema.fields().len())
            .filter(|&i| wanted(schema.field(i).name()))
            .collect();
        match data {
            SegmentData::Resident(b) if columns.len() == b.num_columns() => Ok(b),
            SegmentData::Resident(b) => b.project(&columns).map_err(arrow_error),
            SegmentData::Stored(f) => f.read(&columns, subfields, keep),
        }
    }

    /// Moves the columns from memory to `file`, which holds the same rows. Those queries
    /// read lately ([`ColumnCache::read_lately`](crate::cache::ColumnCache::read_lately))
    /// go into the column cache as the file's, so the newest data stays warm; the others
    /// leave memory, and are decoded from the file if a query reads them.
    pub fn store(&self, file: Arc<SegmentFile>) {
        let mut data = self.data.write();
        if let SegmentData::Resident(b) = &*data {
            let columns = match &file.layout {
                Some(_) => flatten(b).map(|f| f.columns().to_vec()),
                None => Ok(b.columns().to_vec()),
            };
            let cache = column_cache();
            for (i, column) in columns.unwrap_or_default().into_iter().enumerate() {
                if cache.read_lately(&file.paths[i]) {
                    cache.insert((file.key, i), column);
                }
            }
        }
        *data = SegmentData::Stored(file);
    }

    pub fn is_stored(&self) -> bool {
        matches!(&*self.data.read(), SegmentData::Stored(_))
    }
}

/// A sealed segment's Arrow IPC file, mapped into memory: a column is decoded (and
/// decompressed) only when it is read, and only its pages of the file are touched.
///
/// The file is never changed once written (deletions go to a separate bitmap), which is
/// what makes mapping it sound; a segment dropped by retention is unlinked, and the
/// mapping keeps it readable for the queries still holding it.
pub struct SegmentFile {
    /// Unique in the process: the column cache's key for this file.
    key: u64,
    path: PathBuf,
    buffer: Buffer,
    /// The columns as the file holds them.
    file_schema: SchemaRef,
    /// The segment's columns; the same as `file_schema` for a file without `layout`.
    schema: SchemaRef,
    /// Where each of the segment's columns is in a file of [`crate::layout`]'s layout.
    layout: Option<Vec<FlatColumn>>,
    /// Each file column's path ([`crate::layout::column_paths`]).
    paths: Vec<String>,
    version: MetadataVersion,
    blocks: Vec<Block>,
    rows: usize,
}

impl std::fmt::Debug for SegmentFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SegmentFile({})", self.path.display())
    }
}

impl SegmentFile {
    pub fn open(path: &Path) -> TarnResult<Arc<SegmentFile>> {
        static NEXT_KEY: AtomicU64 = AtomicU64::new(1);
        let corrupt =
            |what: String| TarnError::internal(format!("segment file {} {what}", path.display()));
        let file =
            std::fs::File::open(path).map_err(|e| corrupt(format!("cannot be opened: {e}")))?;
        // Safety: segment files are written once, fsynced, and never modified afterwards.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| corrupt(format!("cannot be mapped: {e}")))?;
        let buffer = Buffer::from(bytes::Bytes::from_owner(map));
        if buffer.len() < 10 {
            return Err(corrupt("is too short".into()));
        }
        let trailer = buffer.len() - 10;
        let footer_len = read_footer_length(buffer[trailer..].try_into().expect("10 bytes"))
            .map_err(|e| corrupt(format!("has no IPC footer: {e}")))?;
        let footer = trailer
            .checked_sub(footer_len)
            .and_then(|start| root_as_footer(&buffer[start..trailer]).ok())
            .ok_or_else(|| corrupt("has a corrupt footer".into()))?;
        let schema = footer
            .schema()
            .map(fb_to_schema)
            .ok_or_else(|| corrupt("has no schema".into()))?;
        if footer.dictionaries().is_some_and(|d| !d.is_empty()) {
            return Err(corrupt("has dictionaries, which tarn never writes".into()));
        }
        let file_schema = Arc::new(schema);
        let (schema, layout) = match unflatten_schema(&file_schema)
            .map_err(|e| corrupt(format!("has a bad layout: {e}")))?
        {
            Some((schema, layout)) => (schema, Some(layout)),
            None => (file_schema.clone(), None),
        };
        let paths = crate::layout::column_paths(&file_schema);
        let blocks: Vec<Block> = footer
            .recordBatches()
            .map(|b| b.iter().copied().collect())
            .unwrap_or_default();
        let version = footer.version();
        let mut file = SegmentFile {
            key: NEXT_KEY.fetch_add(1, Ordering::Relaxed),
            path: path.to_owned(),
            buffer,
            file_schema,
            schema,
            layout,
            paths,
            version,
            blocks,
            rows: 0,
        };
        file.rows = file.decode(&[])?.num_rows();
        file.release_pages();
        Ok(Arc::new(file))
    }

    /// Unmaps the file's pages from the process; they stay in the kernel's page cache, and
    /// whatever reads them again maps them again. A decoded column is a copy (or, for a
    /// buffer stored uncompressed, a slice that maps its pages again when read), and the
    /// kernel maps the neighbours of every page read (64 KiB around it): without this the
    /// process held 80% of its files mapped after the dashboard's queries had decoded the
    /// few columns they read, as much memory again as the files' size.
    fn release_pages(&self) {
        #[cfg(unix)]
        // SAFETY: the range is this file's read-only shared mapping, which nothing writes;
        // MADV_DONTNEED on such a mapping only drops page table entries, and a later read
        // faults the same bytes in from the page cache or the file.
        unsafe {
            libc::madvise(
                self.buffer.as_ptr() as *mut libc::c_void,
                self.buffer.len(),
                libc::MADV_DONTNEED,
            );
        }
    }

    /// The segment's columns `columns` (ascending), each whole or, for those `subfields`
    /// names, only the fields it names.
    fn read(
        &self,
        columns: &[usize],
        subfields: &HashMap<String, Subfields>,
        keep: bool,
    ) -> TarnResult<RecordBatch> {
        let sub_of = |c: usize| subfields.get(self.schema.field(c).name());
        let mut needed = Vec::new();
        match &self.layout {
            None => needed.extend_from_slice(columns),
            Some(layout) => {
                for &c in columns {
                    layout[c].needed(sub_of(c), &mut needed);
                }
            }
        }
        needed.sort_unstable();
        needed.dedup();
        let fetched = self.fetch(&needed, keep)?;
        let get = |i: usize| -> TarnResult<ArrayRef> {
            fetched.get(&i).cloned().ok_or_else(|| {
                TarnError::internal(format!(
                    "column {i} of {} was not read",
                    self.path.display()
                ))
            })
        };
        let arrays = columns
            .iter()
            .map(|&c| match &self.layout {
                None => get(c),
                Some(layout) => layout[c].assemble(sub_of(c), self.rows, &get),
            })
            .collect::<TarnResult<Vec<_>>>()?;
        RecordBatch::try_new_with_options(
            Arc::new(self.schema.project(columns).map_err(arrow_error)?),
            arrays,
            &RecordBatchOptions::new().with_row_count(Some(self.rows)),
        )
        .map_err(arrow_error)
    }

    /// File columns `columns` (ascending), from the cache where it has them, the others
    /// decoded (and kept in the cache if `keep`).
    fn fetch(&self, columns: &[usize], keep: bool) -> TarnResult<HashMap<usize, ArrayRef>> {
        let cache = column_cache();
        if keep {
            cache.note_read(columns.iter().map(|&c| self.paths[c].as_str()));
        }
        let mut out = HashMap::with_capacity(columns.len());
        let mut missing = Vec::new();
        for &c in columns {
            match cache.get((self.key, c)) {
                Some(a) => {
                    out.insert(c, a);
                }
                None => missing.push(c),
            }
        }
        if !missing.is_empty() {
            let decoded = self.decode(&missing)?;
            self.release_pages();
            for (&c, array) in missing.iter().zip(decoded.columns()) {
                if keep {
                    cache.insert((self.key, c), array.clone());
                }
                out.insert(c, array.clone());
            }
        }
        Ok(out)
    }

    /// Decodes columns `columns` of every batch of the file into one batch.
    fn decode(&self, columns: &[usize]) -> TarnResult<RecordBatch> {
        let decoder = FileDecoder::new(self.file_schema.clone(), self.version)
            .with_projection(columns.to_vec());
        let mut batches = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let len = block.metaDataLength() as usize + block.bodyLength() as usize;
            let offset = block.offset() as usize;
            if offset
                .checked_add(len)
                .is_none_or(|end| end > self.buffer.len())
            {
                return Err(TarnError::internal(format!(
                    "segment file {} is truncated",
                    self.path.display()
                )));
            }
            let data = self.buffer.slice_with_length(offset, len);
            if let Some(b) = decoder
                .read_record_batch(block, &data)
                .map_err(arrow_error)?
            {
                batches.push(b);
            }
        }
        let schema = Arc::new(self.file_schema.project(columns).map_err(arrow_error)?);
        match batches.len() {
            1 => Ok(batches.pop().expect("one batch")),
            _ => arrow::compute::concat_batches(&schema, &batches).map_err(arrow_error),
        }
    }
}

impl Drop for SegmentFile {
    fn drop(&mut self) {
        column_cache().forget_file(self.key, self.file_schema.fields().len());
    }
}

/// The zstd level sealing compresses segment files with. Level 1: generated tweets shrink
/// 9.5x; zstd's fast levels encode 10-50% faster but shrink them only 6-7x
/// (`TARN_BENCH_CODECS=1 cargo bench -p tarn-storage --bench ingest` compares them).
pub const SEAL_ZSTD_LEVEL: i32 = 1;

/// Encodes a batch as an Arrow IPC file in [`crate::layout`]'s layout (each struct field a
/// column of its own), its buffers compressed with zstd at [`SEAL_ZSTD_LEVEL`].
pub fn encode_ipc(batch: &RecordBatch) -> Result<Vec<u8>, TarnError> {
    encode_ipc_with(batch, SEAL_ZSTD_LEVEL)
}

/// [`encode_ipc`] at another zstd level (negative levels are zstd's fast ones).
pub fn encode_ipc_with(batch: &RecordBatch, zstd_level: i32) -> Result<Vec<u8>, TarnError> {
    let options = IpcWriteOptions::default()
        .try_with_compression(Some(CompressionType::ZSTD))
        .and_then(|o| o.try_with_compression_level(Some(zstd_level)))
        .map_err(arrow_error)?;
    let mut buf = Vec::with_capacity(batch.get_array_memory_size() / 4);
    {
        let flat = flatten(batch)?;
        let mut w = FileWriter::try_new_with_options(&mut buf, flat.schema_ref(), options)
            .map_err(arrow_error)?;
        w.write(&flat).map_err(arrow_error)?;
        w.finish().map_err(arrow_error)?;
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::documents_to_batch;
    use crate::document::Document;
    use serde_json::{Value, json};

    #[test]
    fn a_segment_counts_the_bytes_of_its_data_not_spare_capacity() {
        use arrow::array::{Array, Int64Builder};
        let mut builder = Int64Builder::with_capacity(100_000);
        builder.append_slice(&[1, 2, 3]);
        let column: arrow::array::ArrayRef = Arc::new(builder.finish());
        let batch = RecordBatch::try_from_iter([("n", column.clone())]).unwrap();
        assert!(column.get_array_memory_size() >= 800_000);
        let stats = SegmentStats::compute(&batch);
        assert_eq!(stats.bytes, 24);
        assert_eq!(data_bytes(&batch.slice(1, 2)), 16);
    }

    #[test]
    fn stats_cover_nested_and_numeric_strings() {
        let docs: Vec<Document> = [
            json!({"t": "1607000000000", "u": {"f": 5}, "x": 1.5}),
            json!({"t": "1607000000999", "u": {"f": -2}}),
        ]
        .iter()
        .enumerate()
        .map(|(i, b)| Document {
            id: i.to_string(),
            event_time: i as i64 * 10,
            meta: Value::Null,
            body: b.as_object().unwrap().clone(),
            tape: None,
        })
        .collect();
        let batch = documents_to_batch(&docs);
        let s = SegmentStats::compute(&batch);
        assert_eq!((s.rows, s.min_event_time, s.max_event_time), (2, 0, 10));
        assert_eq!(
            s.columns["u.f"],
            ColumnStats::Int {
                min: -2,
                max: 5,
                nulls: 0
            }
        );
        assert!(matches!(
            &s.columns["t"],
            ColumnStats::Str {
                int_min: Some(1607000000000),
                int_max: Some(1607000000999),
                ..
            }
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.arrow");
        std::fs::write(&path, encode_ipc(&batch).unwrap()).unwrap();
        let round = Segment::open_stored(1, &path, s.clone()).unwrap();
        assert_eq!(round.read_all().unwrap(), batch);
    }

    #[test]
    fn merged_stats_are_bounds_and_drop_paths_that_became_variant() {
        let a = crate::build::batch_of(&[json!({"n": 1, "m": 5}), json!({"n": 4, "m": 6})]);
        let b = crate::build::batch_of(&[json!({"n": 9, "m": "x"})]);
        let schema = crate::types::merge_schemas(&a.schema(), &b.schema());
        let merged = arrow::compute::concat_batches(
            &schema,
            &[
                crate::adapt::adapt_batch(&a, &schema).unwrap(),
                crate::adapt::adapt_batch(&b, &schema).unwrap(),
            ],
        )
        .unwrap();
        let s = SegmentStats::merged(
            [SegmentStats::compute(&a), SegmentStats::compute(&b)].iter(),
            &merged,
        );
        assert_eq!(
            s.columns["n"],
            ColumnStats::Int {
                min: 1,
                max: 9,
                nulls: 0
            }
        );
        assert!(!s.columns.contains_key("m"), "m became a variant: {s:?}");
        assert_eq!((s.rows, s.min_event_time, s.max_event_time), (3, 0, 1));
        assert!(s.nulls_counted);
    }

    #[test]
    fn merged_stats_count_the_rows_of_inputs_without_the_column_as_nulls() {
        let a = crate::build::batch_of(&[json!({"n": 1}), json!({"n": 4})]);
        let b = crate::build::batch_of(&[json!({"o": 1}), json!({"o": 2}), json!({"n": 7})]);
        let c = crate::build::batch_of(&[json!({"o": 3})]);
        let schema = crate::types::merge_schemas(
            &crate::types::merge_schemas(&a.schema(), &b.schema()),
            &c.schema(),
        );
        let parts: Vec<RecordBatch> = [&a, &b, &c]
            .iter()
            .map(|x| crate::adapt::adapt_batch(x, &schema).unwrap())
            .collect();
        let merged = arrow::compute::concat_batches(&schema, &parts).unwrap();
        let inputs = [a, b, c].map(|x| SegmentStats::compute(&x));
        let s = SegmentStats::merged(inputs.iter(), &merged);
        // Two nulls in `b`, and `c` lacks the column: three rows of six have no `n`.
        assert_eq!(
            s.column("n"),
            Some(ColumnStats::Int {
                min: 1,
                max: 7,
                nulls: 3
            })
        );
        assert_eq!(merged.column_by_name("n").unwrap().null_count(), 3);
        // Statistics from before null counts were complete never claim there are none.
        let mut old = SegmentStats::compute(&inputs_a());
        old.nulls_counted = false;
        assert!(matches!(
            old.column("n"),
            Some(ColumnStats::Int { nulls: 1, .. })
        ));
        assert!(
            !SegmentStats::merged(
                [old, SegmentStats::compute(&inputs_a())].iter(),
                &inputs_a()
            )
            .nulls_counted
        );
    }

    fn inputs_a() -> RecordBatch {
        crate::build::batch_of(&[json!({"n": 1}), json!({"n": 4})])
    }

    #[test]
    fn a_stored_segment_reads_back_what_was_written_column_by_column() {
        let docs: Vec<Document> = (0..50)
            .map(|i| Document {
                id: format!("d{i}"),
                event_time: i,
                meta: Value::Null,
                body: json!({"n": i, "s": format!("text {i}"), "o": {"a": [i, i + 1]}})
                    .as_object()
                    .unwrap()
                    .clone(),
                tape: None,
            })
            .collect();
        let batch = documents_to_batch(&docs);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.arrow");
        let bytes = encode_ipc(&batch).unwrap();
        assert!(bytes.len() < batch.get_array_memory_size(), "compressed");
        std::fs::write(&path, &bytes).unwrap();
        let segment = Segment::new(7, batch.clone());
        let stats = segment.stats.clone();
        segment.store(SegmentFile::open(&path).unwrap());
        assert!(segment.is_stored() && segment.resident().is_none());
        // From the cache (put there by `store`) and, for a fresh open, decoded from the file.
        let fresh = Segment::open_stored(7, &path, stats.clone()).unwrap();
        for s in [&segment, &fresh] {
            assert_eq!(s.read_all().unwrap(), batch);
            let picked = s.read(|n| n == "s" || n == "o").unwrap();
            let want = batch
                .project(&[
                    batch.schema().index_of("o").unwrap(),
                    batch.schema().index_of("s").unwrap(),
                ])
                .unwrap();
            // In the segment's column order, whatever order was asked.
            let order: Vec<String> = picked
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            assert_eq!(picked.num_rows(), 50);
            for f in want.schema().fields() {
                assert_eq!(
                    picked.column_by_name(f.name()),
                    want.column_by_name(f.name())
                );
            }
            let segment_order: Vec<String> = batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .filter(|n| n == "s" || n == "o")
                .collect();
            assert_eq!(order, segment_order);
            assert_eq!(s.read(|_| false).unwrap().num_rows(), 50);
            assert_eq!(s.ids().unwrap().value(49), "d49");
        }
        let mut wrong = stats;
        wrong.rows = 51;
        let err = Segment::open_stored(7, &path, wrong).unwrap_err();
        assert!(err.to_string().contains("holds 50 rows"), "{err}");
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(SegmentFile::open(&path).is_err(), "a torn file is refused");
    }

    #[test]
    fn a_stored_segment_keeps_in_memory_only_the_columns_queries_read_lately() {
        // Names of their own: the cache and its record of names read are the process's.
        let batch = crate::build::batch_of(&[
            json!({"hot_in_store_test": 1, "cold_in_store_test": "a"}),
            json!({"hot_in_store_test": 2, "cold_in_store_test": "b"}),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.arrow");
        std::fs::write(&path, encode_ipc(&batch).unwrap()).unwrap();
        let cache = column_cache();
        cache.note_read(["hot_in_store_test"]);
        let segment = Segment::new(8, batch.clone());
        let file = SegmentFile::open(&path).unwrap();
        let index = |name: &str| file.paths.iter().position(|p| p == name).unwrap();
        let (hot, cold) = (index("hot_in_store_test"), index("cold_in_store_test"));
        segment.store(file.clone());
        assert!(cache.get((file.key, hot)).is_some(), "read lately: kept");
        assert!(
            cache.get((file.key, cold)).is_none(),
            "never read: left in the file"
        );
        // A query that reads it decodes it from the file, keeps it, and notes its name.
        let read = segment.read(|n| n == "cold_in_store_test").unwrap();
        assert_eq!(
            read.column(0),
            batch.column_by_name("cold_in_store_test").unwrap()
        );
        assert!(cache.get((file.key, cold)).is_some());
        assert!(cache.read_lately("cold_in_store_test"));
    }

    #[test]
    fn bitmap_counts_and_round_trips() {
        let mut b = DeleteBitmap::default();
        assert!(b.insert(3));
        assert!(!b.insert(3));
        assert!(b.insert(200));
        assert_eq!(b.count(), 2);
        let c = DeleteBitmap::from_bytes(&b.to_bytes());
        assert_eq!(c, b);
        assert!(c.contains(200) && !c.contains(199));
    }
}
