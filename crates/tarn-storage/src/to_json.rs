//! Arrow values back to JSON: exact ints, floats, variants re-parsed, explicit nulls restored.

use std::collections::HashSet;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, Float16Type, Float32Type, Float64Type, Int8Type, Int16Type,
    Int32Type, Int64Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use serde_json::{Map, Number, Value};
use tarn_common::time::format_micros;

use crate::build::push_pointer_segment;
use crate::types::{self, NULLS};

/// The explicit-null pointers of one row (see [`crate::types::NULLS`]).
pub type NullPaths = HashSet<String>;

/// Parses a row's `__tarn_nulls` text.
pub fn parse_null_paths(text: Option<&str>) -> Option<NullPaths> {
    text.and_then(|t| serde_json::from_str::<Vec<String>>(t).ok())
        .map(|v| v.into_iter().collect())
}

/// Converts every row of a batch to a JSON object. When the batch has the hidden nulls column
/// (a `SELECT *`), missing fields are omitted and explicit nulls restored, giving back the
/// documents as they were written; otherwise every column appears, null when it has no value.
pub fn batch_to_json_rows(batch: &RecordBatch) -> Vec<Map<String, Value>> {
    let schema = batch.schema();
    let nulls_col = schema
        .index_of(NULLS)
        .ok()
        .map(|i| batch.column(i).as_string::<i32>().clone());
    let mut rows = Vec::with_capacity(batch.num_rows());
    let mut path = String::new();
    for row in 0..batch.num_rows() {
        let null_paths = nulls_col
            .as_ref()
            .map(|c| parse_null_paths(c.is_valid(row).then(|| c.value(row))).unwrap_or_default());
        let mut obj = Map::with_capacity(schema.fields().len());
        for (field, col) in schema.fields().iter().zip(batch.columns()) {
            if field.name() == NULLS {
                continue;
            }
            // The pointer is only looked up in the document's explicit nulls.
            if null_paths.is_some() {
                path.clear();
                push_pointer_segment(&mut path, field.name());
            }
            match value_at(col, row, &mut path, null_paths.as_ref()) {
                Some(v) => {
                    obj.insert(field.name().clone(), v);
                }
                None if null_paths.is_none() => {
                    obj.insert(field.name().clone(), Value::Null);
                }
                None if null_paths.as_ref().is_some_and(|p| p.contains(&path)) => {
                    obj.insert(field.name().clone(), Value::Null);
                }
                None => {}
            }
        }
        rows.push(obj);
    }
    rows
}

/// The JSON value at `row`, or None when it is null. `path` is the JSON pointer of the value
/// inside its document, used to restore explicit nulls in nested objects (kept only when
/// there are `nulls`).
pub fn value_at(
    arr: &ArrayRef,
    row: usize,
    path: &mut String,
    nulls: Option<&NullPaths>,
) -> Option<Value> {
    if arr.is_null(row) {
        return None;
    }
    let v = match arr.data_type() {
        DataType::Null => return None,
        DataType::Boolean => Value::Bool(arr.as_boolean().value(row)),
        DataType::Int8 => arr.as_primitive::<Int8Type>().value(row).into(),
        DataType::Int16 => arr.as_primitive::<Int16Type>().value(row).into(),
        DataType::Int32 => arr.as_primitive::<Int32Type>().value(row).into(),
        DataType::Int64 => arr.as_primitive::<Int64Type>().value(row).into(),
        DataType::UInt8 => arr.as_primitive::<UInt8Type>().value(row).into(),
        DataType::UInt16 => arr.as_primitive::<UInt16Type>().value(row).into(),
        DataType::UInt32 => arr.as_primitive::<UInt32Type>().value(row).into(),
        DataType::UInt64 => arr.as_primitive::<UInt64Type>().value(row).into(),
        DataType::Float16 => float(arr.as_primitive::<Float16Type>().value(row).to_f64()),
        DataType::Float32 => float(arr.as_primitive::<Float32Type>().value(row) as f64),
        DataType::Float64 => float(arr.as_primitive::<Float64Type>().value(row)),
        DataType::Utf8 => Value::String(arr.as_string::<i32>().value(row).to_owned()),
        DataType::LargeUtf8 => Value::String(arr.as_string::<i64>().value(row).to_owned()),
        DataType::Utf8View => Value::String(arr.as_string_view().value(row).to_owned()),
        DataType::Timestamp(unit, _) => {
            let us = match unit {
                TimeUnit::Second => arr
                    .as_primitive::<TimestampSecondType>()
                    .value(row)
                    .saturating_mul(1_000_000),
                TimeUnit::Millisecond => arr
                    .as_primitive::<TimestampMillisecondType>()
                    .value(row)
                    .saturating_mul(1_000),
                TimeUnit::Microsecond => arr.as_primitive::<TimestampMicrosecondType>().value(row),
                TimeUnit::Nanosecond => {
                    arr.as_primitive::<TimestampNanosecondType>().value(row) / 1_000
                }
            };
            Value::String(format_micros(us))
        }
        DataType::Date32 => {
            date_value(arr.as_primitive::<Date32Type>().value(row) as i64 * 86_400_000)
        }
        DataType::Date64 => date_value(arr.as_primitive::<Date64Type>().value(row)),
        dt if types::is_variant(dt) => {
            let text = arr.as_struct().column(0).as_string::<i32>().value(row);
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
        }
        DataType::Struct(fields) => {
            let s = arr.as_struct();
            let mut obj = Map::with_capacity(fields.len());
            for (f, child) in fields.iter().zip(s.columns()) {
                let len = path.len();
                if nulls.is_some() {
                    push_pointer_segment(path, f.name());
                }
                match value_at(child, row, path, nulls) {
                    Some(v) => {
                        obj.insert(f.name().clone(), v);
                    }
                    None if nulls.is_some_and(|n| n.contains(path.as_str())) => {
                        obj.insert(f.name().clone(), Value::Null);
                    }
                    None => {}
                }
                path.truncate(len);
            }
            Value::Object(obj)
        }
        DataType::List(_) => {
            let l = arr.as_list::<i32>();
            let range = l.value_offsets()[row] as usize..l.value_offsets()[row + 1] as usize;
            list_values(l.values(), range, path, nulls)
        }
        DataType::LargeList(_) => {
            let l = arr.as_list::<i64>();
            let range = l.value_offsets()[row] as usize..l.value_offsets()[row + 1] as usize;
            list_values(l.values(), range, path, nulls)
        }
        DataType::FixedSizeList(_, n) => {
            let l = arr.as_fixed_size_list();
            let n = *n as usize;
            list_values(l.values(), row * n..(row + 1) * n, path, nulls)
        }
        DataType::Map(..) => {
            let m = arr.as_map();
            let range = m.value_offsets()[row] as usize..m.value_offsets()[row + 1] as usize;
            let mut obj = Map::new();
            for i in range {
                let key = match value_at(m.keys(), i, path, None) {
                    Some(Value::String(s)) => s,
                    Some(other) => other.to_string(),
                    None => continue,
                };
                obj.insert(
                    key,
                    value_at(m.values(), i, path, None).unwrap_or(Value::Null),
                );
            }
            Value::Object(obj)
        }
        DataType::Dictionary(..) => {
            let d = arr.as_any_dictionary();
            let key = d.normalized_keys()[row];
            return value_at(d.values(), key, path, nulls);
        }
        _ => match arrow::compute::cast(&arr.slice(row, 1), &DataType::Utf8) {
            Ok(s) => {
                let text = s.as_string::<i32>().value(0);
                // Decimals are numbers; intervals and the like stay text.
                match text.parse::<Number>() {
                    Ok(n)
                        if matches!(
                            arr.data_type(),
                            DataType::Decimal128(..) | DataType::Decimal256(..)
                        ) =>
                    {
                        Value::Number(n)
                    }
                    _ => Value::String(text.to_owned()),
                }
            }
            Err(_) => Value::String(format!("<{}>", arr.data_type())),
        },
    };
    Some(v)
}

fn list_values(
    values: &ArrayRef,
    range: std::ops::Range<usize>,
    path: &mut String,
    nulls: Option<&NullPaths>,
) -> Value {
    let start = range.start;
    let mut out = Vec::with_capacity(range.len());
    for i in range {
        let len = path.len();
        if nulls.is_some() {
            path.push('/');
            path.push_str(&(i - start).to_string());
        }
        out.push(value_at(values, i, path, nulls).unwrap_or(Value::Null));
        path.truncate(len);
    }
    Value::Array(out)
}

fn float(f: f64) -> Value {
    Number::from_f64(f)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

fn date_value(ms: i64) -> Value {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => Value::String(t.format("%Y-%m-%d").to_string()),
        None => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::documents_to_batch;
    use crate::document::Document;
    use serde_json::json;

    #[test]
    fn round_trips_documents() {
        let bodies = vec![
            json!({"a": 9007199254740993i64, "f": 1.0, "s": "é😀", "n": null, "o": {"x": null, "y": [1, null]}}),
            json!({"a": "text", "l": [{"k": 1}, {"k": null, "j": true}], "o": {}, "e": []}),
            json!({"a": {"deep": [[1], [2, 3]]}, "f": -0.5, "big": u64::MAX}),
        ];
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
        let batch = documents_to_batch(&docs);
        let rows = batch_to_json_rows(&batch);
        for (row, body) in rows.iter().zip(&bodies) {
            let mut row = row.clone();
            row.remove("_id");
            row.remove("_event_time");
            assert_eq!(Value::Object(row), *body);
        }
    }
}
