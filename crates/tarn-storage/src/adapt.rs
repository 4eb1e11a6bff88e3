//! Adapts a segment's columns to the collection's (wider) schema without losing a value.
//!
//! The collection schema is the merge of the segments' schemas (see [`crate::types::merge`]),
//! so a segment's column either has the same type, is all null, gains struct fields, or turns
//! into a variant; each case is handled here. Nothing else can occur.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, ListArray, RecordBatch, StringArray, StructArray, new_null_array,
};
use arrow::datatypes::{DataType, SchemaRef};
use tarn_common::TarnError;

use crate::build::{push_pointer_segment, variant_array};
use crate::to_json::{parse_null_paths, value_at};
use crate::types::{self, NULLS};

/// Adapts one column to `to`. `row_nulls` is the batch's nulls column when `arr` is row-aligned
/// with the documents (it lets a struct turned variant keep its explicit nulls), `path` the
/// column's JSON pointer.
pub fn adapt_array(
    arr: &ArrayRef,
    to: &DataType,
    row_nulls: Option<&StringArray>,
    path: &str,
) -> Result<ArrayRef, TarnError> {
    let from = arr.data_type();
    if from == to {
        return Ok(arr.clone());
    }
    if from == &DataType::Null {
        return Ok(new_null_array(to, arr.len()));
    }
    if types::is_variant(to) {
        let mut p = String::with_capacity(path.len() + 16);
        let text: StringArray = (0..arr.len())
            .map(|row| {
                p.clear();
                p.push_str(path);
                let nulls =
                    row_nulls.and_then(|c| parse_null_paths(c.is_valid(row).then(|| c.value(row))));
                value_at(arr, row, &mut p, nulls.as_ref()).map(|v| v.to_string())
            })
            .collect();
        return Ok(variant_array(text));
    }
    match (from, to) {
        (DataType::Struct(_), DataType::Struct(to_fields)) => {
            let s = arr.as_struct();
            let mut children = Vec::with_capacity(to_fields.len());
            for f in to_fields.iter() {
                let child = match s.column_by_name(f.name()) {
                    Some(c) => {
                        let mut p = path.to_owned();
                        push_pointer_segment(&mut p, f.name());
                        adapt_array(c, f.data_type(), row_nulls, &p)?
                    }
                    None => new_null_array(f.data_type(), arr.len()),
                };
                children.push(child);
            }
            if to_fields.is_empty() {
                return Ok(Arc::new(StructArray::new_empty_fields(
                    arr.len(),
                    s.nulls().cloned(),
                )));
            }
            StructArray::try_new(to_fields.clone(), children, s.nulls().cloned())
                .map(|a| Arc::new(a) as ArrayRef)
                .map_err(arrow_error)
        }
        (DataType::List(_), DataType::List(to_item)) => {
            let l = arr.as_list::<i32>();
            // Element rows are not document rows: explicit nulls inside cannot be looked up.
            let values = adapt_array(l.values(), to_item.data_type(), None, path)?;
            ListArray::try_new(
                to_item.clone(),
                l.offsets().clone(),
                values,
                l.nulls().cloned(),
            )
            .map(|a| Arc::new(a) as ArrayRef)
            .map_err(arrow_error)
        }
        _ => Err(TarnError::internal(format!(
            "cannot adapt a column of type {from} to {to} at {path}"
        ))),
    }
}

/// Adapts a batch to `schema`: the named columns, in its order, missing ones all null.
pub fn adapt_batch(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, TarnError> {
    let row_nulls = batch
        .column_by_name(NULLS)
        .map(|c| c.as_string::<i32>().clone());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let col = match batch.column_by_name(f.name()) {
            Some(c) => {
                let mut p = String::new();
                push_pointer_segment(&mut p, f.name());
                adapt_array(c, f.data_type(), row_nulls.as_ref(), &p)?
            }
            None => new_null_array(f.data_type(), batch.num_rows()),
        };
        columns.push(col);
    }
    let options =
        arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(schema.clone(), columns, &options).map_err(arrow_error)
}

/// Converts an Arrow error (a bug in tarn when it happens here) into a tarn error.
pub fn arrow_error(e: arrow::error::ArrowError) -> TarnError {
    TarnError::internal(format!("Arrow error: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::documents_to_batch;
    use crate::document::Document;
    use crate::to_json::batch_to_json_rows;
    use serde_json::{Value, json};

    fn batch(bodies: &[Value]) -> RecordBatch {
        let docs: Vec<Document> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| Document {
                id: i.to_string(),
                event_time: 0,
                meta: Value::Null,
                body: b.as_object().unwrap().clone(),
                tape: None,
            })
            .collect();
        documents_to_batch(&docs)
    }

    #[test]
    fn adapting_to_a_wider_schema_keeps_every_value() {
        let a_bodies = [json!({"x": 1, "o": {"p": null, "q": 2}, "l": [{"k": 1}]})];
        let b_bodies = [json!({"x": "s", "o": 5, "l": [{"k": "z", "m": 1}], "new": true})];
        let a = batch(&a_bodies);
        let b = batch(&b_bodies);
        let union = types::merge_schemas(&a.schema(), &b.schema());
        assert!(types::is_variant(
            union.field_with_name("o").unwrap().data_type()
        ));
        for (batch, bodies) in [(a, &a_bodies), (b, &b_bodies)] {
            let adapted = adapt_batch(&batch, &union).unwrap();
            let rows = batch_to_json_rows(&adapted);
            let mut row = rows[0].clone();
            row.remove("_id");
            row.remove("_event_time");
            assert_eq!(Value::Object(row), bodies[0]);
        }
    }
}
