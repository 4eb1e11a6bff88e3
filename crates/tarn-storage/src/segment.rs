//! Segments: immutable Arrow batches with statistics, deletion bitmaps, and their files.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimestampMicrosecondType};
use serde::{Deserialize, Serialize};
use tarn_common::TarnError;

use crate::adapt::arrow_error;
use crate::types::{EVENT_TIME, NULLS};

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

/// Statistics of a segment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SegmentStats {
    pub rows: u64,
    pub min_event_time: i64,
    pub max_event_time: i64,
    /// Scalar columns by dotted path (`user.followers_count`).
    pub columns: BTreeMap<String, ColumnStats>,
    /// Bytes of Arrow memory the segment holds.
    pub bytes: u64,
}

impl SegmentStats {
    /// Computes the statistics of a batch.
    pub fn compute(batch: &RecordBatch) -> SegmentStats {
        let mut stats = SegmentStats {
            rows: batch.num_rows() as u64,
            bytes: batch.get_array_memory_size() as u64,
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
            bytes: batch.get_array_memory_size() as u64,
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
            columns: BTreeMap::new(),
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
            for s in &inputs {
                // An input without a range for the column has it all null or absent.
                let Some(c) = s.columns.get(name) else {
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
            if let Some(a) = acc {
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

fn collect_column_stats(path: &str, col: &ArrayRef, out: &mut BTreeMap<String, ColumnStats>) {
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
#[derive(Debug)]
pub struct Segment {
    pub id: u64,
    pub batch: RecordBatch,
    pub stats: SegmentStats,
}

impl Segment {
    pub fn new(id: u64, batch: RecordBatch) -> Arc<Segment> {
        let stats = SegmentStats::compute(&batch);
        Arc::new(Segment { id, batch, stats })
    }
}

/// Encodes a batch as an Arrow IPC file.
pub fn encode_ipc(batch: &RecordBatch) -> Result<Vec<u8>, TarnError> {
    let mut buf = Vec::with_capacity(batch.get_array_memory_size());
    {
        let mut w = arrow::ipc::writer::FileWriter::try_new(&mut buf, batch.schema_ref())
            .map_err(arrow_error)?;
        w.write(batch).map_err(arrow_error)?;
        w.finish().map_err(arrow_error)?;
    }
    Ok(buf)
}

/// Decodes an Arrow IPC file written by [`encode_ipc`].
pub fn decode_ipc(bytes: bytes::Bytes) -> Result<RecordBatch, TarnError> {
    let reader =
        arrow::ipc::reader::FileReader::try_new(Cursor::new(bytes), None).map_err(arrow_error)?;
    let schema = reader.schema();
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().map_err(arrow_error)?;
    arrow::compute::concat_batches(&schema, &batches).map_err(arrow_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::documents_to_batch;
    use crate::document::Document;
    use serde_json::{Value, json};

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
        let round = decode_ipc(encode_ipc(&batch).unwrap().into()).unwrap();
        assert_eq!(round, batch);
    }

    #[test]
    fn merged_stats_are_bounds_and_drop_paths_that_became_variant() {
        let mk = |bodies: &[serde_json::Value]| {
            let docs: Vec<Document> = bodies
                .iter()
                .enumerate()
                .map(|(i, b)| Document {
                    id: i.to_string(),
                    event_time: i as i64,
                    meta: Value::Null,
                    body: b.as_object().unwrap().clone(),
                    tape: None,
                })
                .collect();
            documents_to_batch(&docs)
        };
        let a = mk(&[json!({"n": 1, "m": 5}), json!({"n": 4, "m": 6})]);
        let b = mk(&[json!({"n": 9, "m": "x"})]);
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
