//! The schema of a collection as the console shows it: every field path with its type and
//! how many live documents have a value there.

use std::collections::BTreeMap;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::buffer::NullBuffer;
use arrow::datatypes::DataType;
use serde::Serialize;

use tarn_common::TarnResult;

use crate::collection::Snapshot;
use crate::types::{self, NULLS};

/// One field path of a collection.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FieldSummary {
    /// Dotted path (`user.screen_name`).
    pub path: String,
    /// Rockset's type name of the collection-level type (`variant` when it is mixed).
    #[serde(rename = "type")]
    pub type_: String,
    /// Documents with a non-null value at the path (deleted rows are counted while their
    /// segment has them; the count is exact for live rows otherwise).
    pub count: u64,
}

fn walk(
    prefix: &str,
    col: &ArrayRef,
    parent: Option<&NullBuffer>,
    counts: &mut BTreeMap<String, u64>,
) {
    let valid = NullBuffer::union(parent, col.logical_nulls().as_ref());
    let present = col.len() - valid.as_ref().map_or(0, |n| n.null_count());
    *counts.entry(prefix.to_owned()).or_default() += present as u64;
    if let DataType::Struct(fields) = col.data_type()
        && !types::is_variant(col.data_type())
    {
        let s = col.as_struct();
        for (f, child) in fields.iter().zip(s.columns()) {
            walk(
                &format!("{prefix}.{}", f.name()),
                child,
                valid.as_ref(),
                counts,
            );
        }
    }
}

/// Every path of the snapshot's schema with its type and count of values.
pub fn field_summary(snapshot: &Snapshot) -> TarnResult<Vec<FieldSummary>> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for e in snapshot.entries() {
        let batch = e.segment.read_all()?;
        for (f, col) in batch.schema().fields().iter().zip(batch.columns()) {
            if f.name() != NULLS {
                walk(f.name(), col, None, &mut counts);
            }
        }
    }
    let mut out = Vec::new();
    fn types_of(prefix: &str, dt: &DataType, out: &mut Vec<(String, String)>) {
        out.push((prefix.to_owned(), types::rockset_type_name(dt).to_owned()));
        if let DataType::Struct(fields) = dt
            && !types::is_variant(dt)
        {
            for f in fields.iter() {
                types_of(&format!("{prefix}.{}", f.name()), f.data_type(), out);
            }
        }
    }
    let mut paths = Vec::new();
    for f in snapshot
        .schema
        .fields()
        .iter()
        .filter(|f| f.name() != NULLS)
    {
        types_of(f.name(), f.data_type(), &mut paths);
    }
    for (path, type_) in paths {
        let count = counts.get(&path).copied().unwrap_or(0);
        out.push(FieldSummary { path, type_, count });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::documents_to_batch;
    use crate::collection::SegmentEntry;
    use crate::document::{IngestContext, prepare};
    use crate::segment::{DeleteBitmap, Segment};
    use serde_json::json;
    use std::sync::Arc;

    #[test]
    fn counts_values_per_path() {
        let meta = json!(null);
        let ctx = IngestContext {
            event_time_info: None,
            now_micros: 1,
            meta: &meta,
        };
        let docs: Vec<_> = [
            json!({"a": 1, "u": {"n": "x"}}),
            json!({"a": "two", "u": null}),
            json!({"b": true}),
        ]
        .into_iter()
        .map(|v| prepare(v, &ctx).unwrap())
        .collect();
        let batch = documents_to_batch(&docs);
        let snapshot = Snapshot {
            schema: batch.schema(),
            sealed: Arc::default(),
            runs: vec![SegmentEntry {
                segment: Segment::new(1, batch),
                deleted: Arc::new(DeleteBitmap::default()),
                sealed: false,
            }],
            retention_cutoff: None,
        };
        let s = field_summary(&snapshot).unwrap();
        let get = |p: &str| s.iter().find(|f| f.path == p).unwrap().clone();
        assert_eq!(get("a").count, 2);
        assert_eq!(get("a").type_, "variant");
        assert_eq!(get("u.n").count, 1);
        assert_eq!(get("u.n").type_, "string");
        assert_eq!(get("b").count, 1);
        assert_eq!(get("_id").count, 3);
    }
}
