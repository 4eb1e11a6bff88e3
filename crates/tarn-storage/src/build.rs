//! Builds an Arrow record batch from documents, one typed column per JSON path.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, ListArray, StringArray, StructArray,
    TimestampMicrosecondArray, new_null_array,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Fields, Schema};
use arrow::record_batch::RecordBatch;
use serde_json::{Map, Value};

use crate::document::Document;
use crate::types::{self, EVENT_TIME, ID, META, NULLS};

/// Builds one batch from documents. Its schema is the merge of the documents' own types.
pub fn documents_to_batch(docs: &[Document]) -> RecordBatch {
    documents_to_batch_refs(&docs.iter().collect::<Vec<_>>())
}

/// [`documents_to_batch`] over borrowed documents.
pub fn documents_to_batch_refs(docs: &[&Document]) -> RecordBatch {
    let mut body_type = DataType::Struct(Fields::empty());
    let mut meta_type = DataType::Null;
    for d in docs {
        types::widen_object(&mut body_type, &d.body);
        types::widen(&mut meta_type, &d.meta);
    }
    let DataType::Struct(body_fields) = body_type else {
        unreachable!("widening keeps a struct a struct")
    };
    let mut fields: Vec<Field> = vec![
        Field::new(ID, DataType::Utf8, false),
        Field::new(EVENT_TIME, types::event_time_type(), false),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            docs.iter().map(|d| d.id.as_str()),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(docs.iter().map(|d| d.event_time))
                .with_timezone("UTC"),
        ),
    ];
    if meta_type != DataType::Null {
        let metas: Vec<Option<&Value>> = docs.iter().map(|d| Some(&d.meta)).collect();
        columns.push(build_array(&metas, &meta_type));
        fields.push(Field::new(META, meta_type, true));
    }
    let bodies: Vec<Option<&Map<String, Value>>> = docs.iter().map(|d| Some(&d.body)).collect();
    for (f, values) in body_fields.iter().zip(gather_fields(&bodies, &body_fields)) {
        columns.push(build_array(&values, f.data_type()));
        fields.push(Field::new(f.name(), f.data_type().clone(), true));
    }
    let nulls: StringArray = docs.iter().map(|d| null_pointers(&d.body)).collect();
    columns.push(Arc::new(nulls));
    fields.push(Field::new(NULLS, DataType::Utf8, true));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .expect("columns built to match their schema")
}

/// Below this many documents a batch is built on one thread.
const MIN_PIECE: usize = 256;

/// Builds one batch from documents and their JSON texts: from the texts' tapes (see
/// [`crate::tape`]) where it can, from values parsed from the texts where it cannot. The
/// text is the authority for a document's body (a document from
/// [`crate::document::prepare_text`] has an empty `body`).
pub fn documents_to_batch_texts(docs: &[(&Document, &[u8])]) -> RecordBatch {
    crate::tape::documents_to_batch_from_texts(docs).unwrap_or_else(|| {
        let parsed: Vec<Document> = docs
            .iter()
            .map(|(d, text)| match serde_json::from_slice::<Value>(text) {
                Ok(Value::Object(mut body)) => {
                    for k in [ID, EVENT_TIME, META] {
                        body.shift_remove(k);
                    }
                    Document {
                        body,
                        ..(*d).clone()
                    }
                }
                // Texts come from parsed documents; should one not parse, its value stands.
                _ => (*d).clone(),
            })
            .collect();
        documents_to_batch(&parsed)
    })
}

/// Builds under way, on all threads, in [`documents_to_batch_parallel`].
static BUILDS_UNDER_WAY: AtomicUsize = AtomicUsize::new(0);
/// Threads parsing a batch of documents for storage, as [`Preparing`] counts them.
static PREPARING: AtomicUsize = AtomicUsize::new(0);

/// Counts one piece of ingest work under way in its counter, for as long as it lives.
struct UnderWay(&'static AtomicUsize);

impl UnderWay {
    /// Counts this one; returns how many others were under way.
    fn start(counter: &'static AtomicUsize) -> (UnderWay, usize) {
        (UnderWay(counter), counter.fetch_add(1, Ordering::Relaxed))
    }
}

impl Drop for UnderWay {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Held by a thread while it parses a batch of documents before inserting them (the HTTP
/// API, a stream source, a bulk load), so that builds leave its core to it.
pub struct Preparing {
    _counted: UnderWay,
}

impl Preparing {
    pub fn start() -> Preparing {
        Preparing {
            _counted: UnderWay::start(&PREPARING).0,
        }
    }
}

/// [`documents_to_batch_texts`] on the cores no other ingest work is using: the documents
/// are cut into one piece per such core, each piece built on its own thread, and the pieces
/// joined under their merged schema. Same rows in the same order as the one-thread build.
///
/// With every core building or parsing already (a bulk load, busy streams), cutting would
/// only add the join's copy of every row (5% of a bulk load's CPU), so the batch is built
/// whole.
pub fn documents_to_batch_parallel(docs: &[(&Document, &[u8])]) -> RecordBatch {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let (_counted, building) = UnderWay::start(&BUILDS_UNDER_WAY);
    let busy = building + PREPARING.load(Ordering::Relaxed);
    let pieces = (docs.len() / MIN_PIECE).clamp(1, cores.saturating_sub(busy).max(1));
    if pieces == 1 {
        return documents_to_batch_texts(docs);
    }
    let size = docs.len().div_ceil(pieces);
    let batches: Vec<RecordBatch> = std::thread::scope(|scope| {
        let mut chunks = docs.chunks(size);
        let first = chunks.next().unwrap_or_default();
        let others: Vec<_> = chunks
            .map(|c| scope.spawn(move || documents_to_batch_texts(c)))
            .collect();
        let mut out = vec![documents_to_batch_texts(first)];
        out.extend(
            others
                .into_iter()
                .map(|h| h.join().expect("building a batch piece panicked")),
        );
        out
    });
    let mut schema = batches[0].schema();
    for b in &batches[1..] {
        schema = types::merge_schemas(&schema, &b.schema());
    }
    let joined = batches
        .iter()
        .map(|b| crate::adapt::adapt_batch(b, &schema))
        .collect::<Result<Vec<_>, _>>()
        .and_then(|adapted| {
            arrow::compute::concat_batches(&schema, &adapted).map_err(crate::adapt::arrow_error)
        });
    match joined {
        Ok(b) => b,
        Err(e) => {
            // Merged types always adapt; should that ever fail, one thread builds it.
            tracing::warn!(error = %e.message, "joining batch pieces failed; building on one thread");
            documents_to_batch_texts(docs)
        }
    }
}

/// Builds an array of type `dt` from values (None is a missing value). The values must have
/// been inferred into `dt` (every value's own type merges into it).
pub fn build_array(values: &[Option<&Value>], dt: &DataType) -> ArrayRef {
    match dt {
        DataType::Null => new_null_array(dt, values.len()),
        DataType::Boolean => Arc::new(
            values
                .iter()
                .map(|v| v.and_then(Value::as_bool))
                .collect::<BooleanArray>(),
        ),
        DataType::Int64 => Arc::new(
            values
                .iter()
                .map(|v| v.and_then(Value::as_i64))
                .collect::<Int64Array>(),
        ),
        DataType::Float64 => Arc::new(
            values
                .iter()
                .map(|v| v.and_then(Value::as_f64))
                .collect::<Float64Array>(),
        ),
        DataType::Utf8 => Arc::new(
            values
                .iter()
                .map(|v| v.and_then(Value::as_str))
                .collect::<StringArray>(),
        ),
        dt if types::is_variant(dt) => {
            let text: StringArray = values.iter().map(|v| v.map(|v| v.to_string())).collect();
            variant_array(text)
        }
        DataType::Struct(fields) => {
            let validity = NullBuffer::from(
                values
                    .iter()
                    .map(|v| v.is_some_and(Value::is_object))
                    .collect::<Vec<_>>(),
            );
            if fields.is_empty() {
                return Arc::new(StructArray::new_empty_fields(values.len(), Some(validity)));
            }
            let objects: Vec<Option<&Map<String, Value>>> = values
                .iter()
                .map(|v| v.and_then(Value::as_object))
                .collect();
            let children = fields
                .iter()
                .zip(gather_fields(&objects, fields))
                .map(|(f, child)| build_array(&child, f.data_type()))
                .collect();
            Arc::new(StructArray::new(fields.clone(), children, Some(validity)))
        }
        DataType::List(item) => {
            let mut offsets = Vec::with_capacity(values.len() + 1);
            let mut elems: Vec<Option<&Value>> = Vec::new();
            offsets.push(0i32);
            for v in values {
                if let Some(Value::Array(a)) = v {
                    elems.extend(a.iter().map(Some));
                }
                offsets.push(elems.len() as i32);
            }
            let validity = NullBuffer::from(
                values
                    .iter()
                    .map(|v| v.is_some_and(Value::is_array))
                    .collect::<Vec<_>>(),
            );
            let child = build_array(&elems, item.data_type());
            Arc::new(ListArray::new(
                item.clone(),
                OffsetBuffer::new(offsets.into()),
                child,
                Some(validity),
            ))
        }
        other => unreachable!("JSON never infers {other}"),
    }
}

/// Splits objects into one value list per field of `fields` (None where an object lacks the
/// field or is itself missing), in one pass over each object's entries. Every key of every
/// object must be one of `fields`, as type inference guarantees.
fn gather_fields<'a>(
    objects: &[Option<&'a Map<String, Value>>],
    fields: &Fields,
) -> Vec<Vec<Option<&'a Value>>> {
    let mut columns: Vec<Vec<Option<&Value>>> = vec![vec![None; objects.len()]; fields.len()];
    // Objects of one stream usually list their keys in the same order, so the key at
    // position `pos` is tried against field `pos` before the name index is consulted.
    let mut by_name: Option<HashMap<&str, usize>> = None;
    for (row, obj) in objects.iter().enumerate() {
        let Some(obj) = obj else { continue };
        for (pos, (k, v)) in obj.iter().enumerate() {
            let Some(idx) = field_index(fields, &mut by_name, pos, k) else {
                continue;
            };
            columns[idx][row] = Some(v);
        }
    }
    columns
}

/// The index in `fields` of the key at position `pos` of an object: field `pos` when its
/// name matches (objects of one stream mostly list their keys in one order), else by name
/// through `by_name`, built on first need. `None` for a key not among `fields`.
pub(crate) fn field_index<'f>(
    fields: &'f Fields,
    by_name: &mut Option<HashMap<&'f str, usize>>,
    pos: usize,
    key: &str,
) -> Option<usize> {
    match fields.get(pos) {
        Some(f) if f.name() == key => Some(pos),
        _ => by_name
            .get_or_insert_with(|| {
                fields
                    .iter()
                    .enumerate()
                    .map(|(i, f)| (f.name().as_str(), i))
                    .collect()
            })
            .get(key)
            .copied(),
    }
}

/// Wraps JSON texts as a variant array.
pub fn variant_array(text: StringArray) -> ArrayRef {
    let validity = text.nulls().cloned();
    let DataType::Struct(fields) = types::variant_type() else {
        unreachable!()
    };
    Arc::new(StructArray::new(
        fields,
        vec![Arc::new(text) as ArrayRef],
        validity,
    ))
}

/// The JSON pointers of the explicit nulls in a document body, as a JSON array text, or None.
/// Nulls that are array elements are not listed: in an array, an Arrow null is always a JSON null.
pub fn null_pointers(body: &serde_json::Map<String, Value>) -> Option<String> {
    let mut out: Vec<String> = Vec::new();
    let mut path = String::new();
    collect_object_nulls(body, &mut path, &mut out);
    (!out.is_empty()).then(|| serde_json::to_string(&out).expect("strings serialize"))
}

fn collect_object_nulls(
    obj: &serde_json::Map<String, Value>,
    path: &mut String,
    out: &mut Vec<String>,
) {
    for (k, v) in obj {
        // Most values are scalars, which need no path at all.
        if !matches!(v, Value::Null | Value::Object(_) | Value::Array(_)) {
            continue;
        }
        let len = path.len();
        push_pointer_segment(path, k);
        match v {
            Value::Null => out.push(path.clone()),
            _ => collect_nulls(v, path, out),
        }
        path.truncate(len);
    }
}

fn collect_nulls(v: &Value, path: &mut String, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => collect_object_nulls(o, path, out),
        Value::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                if matches!(item, Value::Object(_) | Value::Array(_)) {
                    let len = path.len();
                    path.push('/');
                    path.push_str(&i.to_string());
                    collect_nulls(item, path, out);
                    path.truncate(len);
                }
            }
        }
        _ => {}
    }
}

/// Appends `/segment` with JSON-pointer escaping (`~` → `~0`, `/` → `~1`).
pub fn push_pointer_segment(path: &mut String, key: &str) {
    path.push('/');
    for c in key.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}

/// The batch of JSON objects `bodies`, the i-th with `_id` "i" and `_event_time` i: for
/// tests of what is built on batches.
#[cfg(test)]
pub(crate) fn batch_of(bodies: &[serde_json::Value]) -> RecordBatch {
    let docs: Vec<Document> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| Document {
            id: i.to_string(),
            event_time: i as i64,
            meta: serde_json::Value::Null,
            body: b.as_object().expect("an object").clone(),
            tape: None,
        })
        .collect();
    documents_to_batch(&docs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(id: &str, body: Value) -> Document {
        Document {
            id: id.into(),
            event_time: 1,
            meta: json!({"source": "api"}),
            body: body.as_object().unwrap().clone(),
            tape: None,
        }
    }

    #[test]
    fn builds_typed_columns_and_variants() {
        let b = documents_to_batch(&[
            doc("1", json!({"a": 1, "u": {"n": "x"}, "m": 1})),
            doc(
                "2",
                json!({"a": 2, "u": {"n": "y", "k": [1, 2]}, "m": "one"}),
            ),
        ]);
        let s = b.schema();
        assert_eq!(
            s.field_with_name("a").unwrap().data_type(),
            &DataType::Int64
        );
        assert!(types::is_variant(
            s.field_with_name("m").unwrap().data_type()
        ));
        assert!(
            matches!(s.field_with_name("u").unwrap().data_type(), DataType::Struct(f) if f.len() == 2)
        );
        assert_eq!(b.num_rows(), 2);
    }

    #[test]
    fn the_parallel_build_equals_the_one_thread_build() {
        // Types differ between the pieces: ints then strings at `m`, a field only late on.
        let docs: Vec<Document> = (0..1500)
            .map(|i| {
                let body = if i < 900 {
                    json!({"a": i, "m": i, "u": {"n": "x"}})
                } else {
                    json!({"a": i, "m": format!("s{i}"), "u": {"n": "y", "k": [i]}, "late": true})
                };
                doc(&i.to_string(), body)
            })
            .collect();
        let refs: Vec<&Document> = docs.iter().collect();
        let one = documents_to_batch_refs(&refs);
        let texts: Vec<Vec<u8>> = docs
            .iter()
            .map(|d| serde_json::to_vec(&d.body).unwrap())
            .collect();
        let pairs: Vec<(&Document, &[u8])> = docs
            .iter()
            .zip(&texts)
            .map(|(d, t)| (d, t.as_slice()))
            .collect();
        let many = documents_to_batch_parallel(&pairs);
        assert_eq!(many.num_rows(), 1500);
        // Same columns (order may differ) with the same values.
        for f in one.schema().fields() {
            let col = many
                .column_by_name(f.name())
                .unwrap_or_else(|| panic!("{} missing", f.name()));
            let want = one.column_by_name(f.name()).unwrap();
            assert_eq!(col.data_type(), want.data_type(), "{}", f.name());
            assert_eq!(&col.to_data(), &want.to_data(), "{}", f.name());
        }
        assert_eq!(one.num_columns(), many.num_columns());
    }

    #[test]
    fn records_explicit_nulls_only() {
        let body =
            json!({"a": null, "b": {"c": null, "d/e": null}, "l": [null, {"x": null}], "z": 1});
        let p = null_pointers(body.as_object().unwrap()).unwrap();
        let list: Vec<String> = serde_json::from_str(&p).unwrap();
        assert_eq!(list, vec!["/a", "/b/c", "/b/d~1e", "/l/1/x"]);
        assert_eq!(null_pointers(json!({"a": 1}).as_object().unwrap()), None);
    }
}
