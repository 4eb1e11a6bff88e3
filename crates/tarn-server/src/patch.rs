//! Document patches: JSON-Patch operations (add, replace, remove, copy, move, test, and
//! Rockset's increment), in either case, applied to stored documents, which are then stored
//! again under the same `_id` and `_event_time`.
//!
//! A patch is atomic the way Rockset's are. Each document's operations apply fully or not
//! at all: they run on a copy, and a failing `test`, a bad path or a result that is not a
//! valid document leaves that document as it was, with an `ERROR` status that says why.
//! The documents a request patched are written with one `Collection::insert`, so one log
//! record: after a crash either all of them are patched or none is. While a request reads,
//! patches and writes, it holds its collection's document lock exclusively; the API's other
//! document writes (`POST` and `DELETE .../docs`) take it shared, so no API write to the
//! collection lands between a patch's read and its write. (Stream sources write without
//! that lock.)

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Weak};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};
use tarn_common::TarnError;
use tarn_storage::Collection;
use tarn_storage::collection::DocStatus;
use tarn_storage::document::{Document, IngestContext, prepare};
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

use crate::AppState;
use crate::error::ApiResult;
use crate::routes::{parse_json, read_body};

// ---- the document lock -------------------------------------------------------------------

/// One lock per open collection (keyed by its directory, unique per collection), alive while
/// someone holds it.
static DOC_LOCKS: LazyLock<parking_lot::Mutex<HashMap<PathBuf, Weak<RwLock<()>>>>> =
    LazyLock::new(Default::default);

fn doc_lock(c: &Collection) -> Arc<RwLock<()>> {
    let mut locks = DOC_LOCKS.lock();
    if let Some(lock) = locks.get(c.dir()).and_then(Weak::upgrade) {
        return lock;
    }
    locks.retain(|_, w| w.strong_count() > 0);
    let lock = Arc::new(RwLock::new(()));
    locks.insert(c.dir().to_owned(), Arc::downgrade(&lock));
    lock
}

/// Taken (shared) by the API's document writes other than patches, around their write, so
/// they never fall between a patch's read and its write.
pub(crate) async fn api_write_guard(c: &Collection) -> OwnedRwLockReadGuard<()> {
    doc_lock(c).read_owned().await
}

/// Taken (exclusive) by a patch request from before its read until its write is durable.
async fn patch_guard(c: &Collection) -> OwnedRwLockWriteGuard<()> {
    doc_lock(c).write_owned().await
}

// ---- JSON-Patch ----------------------------------------------------------------------------

fn tokens(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let rest = pointer
        .strip_prefix('/')
        .ok_or_else(|| format!("path '{pointer}' must start with '/'"))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

/// An array index as JSON-Patch spells it: digits, no leading zero.
fn index(t: &str) -> Option<usize> {
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) || (t.len() > 1 && t.starts_with('0'))
    {
        return None;
    }
    t.parse().ok()
}

fn get<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(doc, |v, t| match v {
        Value::Object(m) => m.get(t),
        Value::Array(a) => index(t).and_then(|i| a.get(i)),
        _ => None,
    })
}

fn parent<'a>(doc: &'a mut Value, path: &[String], full: &str) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for t in &path[..path.len() - 1] {
        cur = match cur {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => index(t).and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| format!("path '{full}' does not exist"))?;
    }
    Ok(cur)
}

fn add(doc: &mut Value, path: &[String], value: Value, full: &str) -> Result<(), String> {
    let Some(last) = path.last() else {
        *doc = value;
        return Ok(());
    };
    match parent(doc, path, full)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                index(last)
                    .filter(|i| *i <= a.len())
                    .ok_or_else(|| format!("index '{last}' of '{full}' is out of range"))?
            };
            a.insert(i, value);
            Ok(())
        }
        _ => Err(format!(
            "'{full}' is inside a value that is not an object or array"
        )),
    }
}

/// Replaces an existing value in place (an object key keeps its position).
fn replace(doc: &mut Value, path: &[String], value: Value, full: &str) -> Result<(), String> {
    let Some(last) = path.last() else {
        *doc = value;
        return Ok(());
    };
    let slot = match parent(doc, path, full)? {
        Value::Object(m) => m.get_mut(last),
        Value::Array(a) => index(last).and_then(|i| a.get_mut(i)),
        _ => None,
    }
    .ok_or_else(|| format!("path '{full}' does not exist"))?;
    *slot = value;
    Ok(())
}

fn remove(doc: &mut Value, path: &[String], full: &str) -> Result<Value, String> {
    let Some(last) = path.last() else {
        return Err("the whole document cannot be removed".into());
    };
    match parent(doc, path, full)? {
        Value::Object(m) => m
            .shift_remove(last)
            .ok_or_else(|| format!("path '{full}' does not exist")),
        Value::Array(a) => {
            let i = index(last)
                .filter(|i| *i < a.len())
                .ok_or_else(|| format!("index '{last}' of '{full}' is out of range"))?;
            Ok(a.remove(i))
        }
        _ => Err(format!("path '{full}' does not exist")),
    }
}

/// JSON equality where numbers compare by value (`1` equals `1.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => match (x.as_u64(), y.as_u64()) {
                (Some(x), Some(y)) => x == y,
                _ => x.as_f64() == y.as_f64(),
            },
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn increment(current: &Value, by: &Value, full: &str) -> Result<Value, String> {
    match (current, by) {
        (Value::Number(a), Value::Number(b)) => match (a.as_i64(), b.as_i64()) {
            (Some(x), Some(y)) => x
                .checked_add(y)
                .map(Value::from)
                .ok_or_else(|| format!("increment of '{full}' overflows a 64-bit integer")),
            _ => {
                let sum = a.as_f64().unwrap_or(f64::NAN) + b.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(sum)
                    .map(Value::Number)
                    .ok_or_else(|| format!("increment of '{full}' is not a finite number"))
            }
        },
        _ => Err(format!(
            "increment needs numbers: '{full}' is {current}, the value is {by}"
        )),
    }
}

fn refuse_id(path: &[String], what: &str) -> Result<(), String> {
    if path.first().is_some_and(|t| t == "_id") {
        return Err(format!("_id cannot be patched ({what})"));
    }
    Ok(())
}

/// Applies operations in order to a copy of `doc`; on any error `doc` is untouched and the
/// error says which operation failed and why. The result keeps `doc`'s `_id`.
pub fn apply_patch(doc: &Value, ops: &[Value]) -> Result<Value, String> {
    let mut out = doc.clone();
    for (i, op) in ops.iter().enumerate() {
        apply_one(&mut out, op).map_err(|e| format!("operation {i}: {e}"))?;
    }
    let Value::Object(mut m) = out else {
        return Err("the patched document is not an object".into());
    };
    // Only a whole-document add or replace can drop `_id`: the stored one stays.
    if let Some(id) = doc.get("_id")
        && m.get("_id") != Some(id)
    {
        m.shift_insert(0, "_id".into(), id.clone());
    }
    Ok(Value::Object(m))
}

fn apply_one(out: &mut Value, op: &Value) -> Result<(), String> {
    let name = op
        .get("op")
        .and_then(Value::as_str)
        .ok_or("it has no \"op\"")?
        .to_ascii_lowercase();
    let path_text = op
        .get("path")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{name} has no \"path\""))?;
    let path = tokens(path_text)?;
    refuse_id(&path, &name)?;
    let value = || {
        op.get("value")
            .cloned()
            .ok_or_else(|| format!("{name} needs a \"value\""))
    };
    let from = || -> Result<(String, Vec<String>), String> {
        let text = op
            .get("from")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{name} needs \"from\""))?;
        Ok((text.to_owned(), tokens(text)?))
    };
    match name.as_str() {
        "add" => add(out, &path, value()?, path_text),
        "remove" => remove(out, &path, path_text).map(drop),
        "replace" => replace(out, &path, value()?, path_text),
        "move" => {
            let (from_text, from_path) = from()?;
            refuse_id(&from_path, "move")?;
            if path.len() > from_path.len() && path.starts_with(&from_path) {
                return Err(format!(
                    "'{from_text}' cannot be moved into itself ('{path_text}')"
                ));
            }
            let v = remove(out, &from_path, &from_text)?;
            add(out, &path, v, path_text)
        }
        "copy" => {
            let (from_text, from_path) = from()?;
            let v = get(out, &from_path)
                .cloned()
                .ok_or_else(|| format!("\"from\" '{from_text}' does not exist"))?;
            add(out, &path, v, path_text)
        }
        "test" => {
            let want = value()?;
            match get(out, &path) {
                Some(have) if same(have, &want) => Ok(()),
                Some(have) => Err(format!("test failed: '{path_text}' is {have}, not {want}")),
                None => Err(format!(
                    "test failed: '{path_text}' does not exist (expected {want})"
                )),
            }
        }
        "increment" => {
            let by = value()?;
            match get(out, &path) {
                Some(current) => {
                    let sum = increment(current, &by, path_text)?;
                    replace(out, &path, sum, path_text)
                }
                None => {
                    // A missing field starts from 0.
                    let sum = increment(&json!(0), &by, path_text)?;
                    add(out, &path, sum, path_text)
                }
            }
        }
        other => Err(format!(
            "'{other}' is not add, remove, replace, move, copy, test or increment"
        )),
    }
}

// ---- a request -----------------------------------------------------------------------------

#[derive(Deserialize)]
struct PatchBody {
    data: Vec<PatchDoc>,
}

#[derive(Deserialize)]
struct PatchDoc {
    #[serde(rename = "_id")]
    id: String,
    patch: Vec<Value>,
}

/// What a request does: each entry's outcome, and the documents to write (one per changed
/// `_id`, in the order they first changed), all in one insert.
struct Plan {
    outcomes: Vec<Result<(), String>>,
    writes: Vec<(String, Document, Vec<u8>)>,
}

/// Applies a request's patches to the stored documents. Entries for the same `_id` apply in
/// order, each to the result of the ones before; a failed entry changes nothing.
fn plan(mut current: HashMap<String, Value>, entries: &[PatchDoc], ctx: &IngestContext) -> Plan {
    let mut changed: Vec<String> = Vec::new();
    let mut prepared: HashMap<String, (Document, Vec<u8>)> = HashMap::new();
    let mut outcomes = Vec::with_capacity(entries.len());
    for e in entries {
        let Some(doc) = current.get(&e.id) else {
            outcomes.push(Err(format!("no document with _id '{}'", e.id)));
            continue;
        };
        let outcome = apply_patch(doc, &e.patch).and_then(|patched| {
            if same(&patched, doc) {
                return Ok(None);
            }
            let text = serde_json::to_vec(&patched).map_err(|err| err.to_string())?;
            let prepared_doc = prepare(patched.clone(), ctx)?;
            Ok(Some((patched, prepared_doc, text)))
        });
        match outcome {
            Ok(None) => outcomes.push(Ok(())),
            Ok(Some((patched, d, text))) => {
                if !prepared.contains_key(&e.id) {
                    changed.push(e.id.clone());
                }
                prepared.insert(e.id.clone(), (d, text));
                current.insert(e.id.clone(), patched);
                outcomes.push(Ok(()));
            }
            Err(msg) => outcomes.push(Err(msg)),
        }
    }
    let writes = changed
        .into_iter()
        .filter_map(|id| prepared.remove(&id).map(|(d, text)| (id, d, text)))
        .collect();
    Plan { outcomes, writes }
}

/// Ids per query when reading the documents to patch.
const READ_CHUNK: usize = 256;

/// The stored documents with these ids, as `SELECT *` returns them (as written, with
/// `_id`, `_event_time` and `_meta`).
async fn read_documents(
    st: &AppState,
    ws: &str,
    name: &str,
    ids: &[&str],
) -> Result<HashMap<String, Value>, TarnError> {
    let table = format!(
        "\"{}\".\"{}\"",
        ws.replace('"', "\"\""),
        name.replace('"', "\"\"")
    );
    let mut found = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(READ_CHUNK) {
        let names: Vec<String> = (0..chunk.len()).map(|i| format!(":id{i}")).collect();
        let q = tarn_sql::QueryRequest {
            sql: format!("SELECT * FROM {table} WHERE _id IN ({})", names.join(", ")),
            parameters: chunk
                .iter()
                .enumerate()
                .map(|(i, id)| tarn_sql::QueryParameter {
                    name: format!("id{i}"),
                    type_: Some("string".into()),
                    value: json!(id),
                })
                .collect(),
            default_row_limit: Some(chunk.len().max(1)),
        };
        for row in st.engine.query(&q).await?.results {
            if let Some(id) = row.get("_id").and_then(Value::as_str) {
                found.insert(id.to_owned(), Value::Object(row));
            }
        }
    }
    Ok(found)
}

/// `PATCH .../docs`: each entry gets PATCHED or an ERROR with the reason; the patched
/// documents are written together.
pub async fn patch_documents(
    State(st): State<AppState>,
    Path((ws, name)): Path<(String, String)>,
    body: Body,
) -> ApiResult<impl IntoResponse> {
    let (info, c) = st.storage.get_collection(&ws, &name)?;
    let req: PatchBody = parse_json(&read_body(body).await?)?;
    let _exclusive = patch_guard(&c).await;
    let mut ids: Vec<&str> = req.data.iter().map(|d| d.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let current = read_documents(&st, &ws, &name, &ids).await?;
    let meta = json!({"source": "api"});
    let ctx = IngestContext {
        event_time_info: info.options.event_time_info.as_ref(),
        now_micros: tarn_common::time::now_micros(),
        meta: &meta,
    };
    let Plan {
        mut outcomes,
        writes,
    } = plan(current, &req.data, &ctx);
    if !writes.is_empty() {
        let written: Vec<String> = writes.iter().map(|(id, _, _)| id.clone()).collect();
        let docs = writes.into_iter().map(|(_, d, text)| (d, text)).collect();
        // One insert: one log record for the whole request, durable before the answer.
        let statuses = c.insert(docs, Vec::new()).await?;
        for (id, status) in written.iter().zip(statuses) {
            if let DocStatus::Error(msg) = status {
                for (o, e) in outcomes.iter_mut().zip(&req.data) {
                    if &e.id == id && o.is_ok() {
                        *o = Err(msg.clone());
                    }
                }
            }
        }
    }
    let data: Vec<Value> = req
        .data
        .iter()
        .zip(outcomes)
        .map(|(d, outcome)| match outcome {
            Ok(()) => json!({"_collection": name, "_id": d.id, "status": "PATCHED",
                             "patch_id": uuid::Uuid::new_v4().to_string()}),
            Err(msg) => json!({"_collection": name, "_id": d.id, "status": "ERROR",
                               "error": {"message": msg, "type": "INVALIDINPUT"}}),
        })
        .collect();
    Ok(Json(json!({"data": data})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_in_either_case() {
        let doc = json!({"_id": "x", "a": 1, "list": [1, 2], "o": {"x": "y"}, "n": 5});
        let out = apply_patch(
            &doc,
            &[
                json!({"op": "ADD", "path": "/b", "value": true}),
                json!({"op": "replace", "path": "/a", "value": "one"}),
                json!({"op": "remove", "path": "/list/0"}),
                json!({"op": "add", "path": "/list/-", "value": 3}),
                json!({"op": "COPY", "from": "/o/x", "path": "/copied"}),
                json!({"op": "Move", "from": "/o", "path": "/moved"}),
                json!({"op": "test", "path": "/b", "value": true}),
                json!({"op": "INCREMENT", "path": "/n", "value": 2}),
                json!({"op": "increment", "path": "/new", "value": 1}),
                json!({"op": "TEST", "path": "/n", "value": 7.0}),
            ],
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"_id": "x", "a": "one", "list": [2, 3], "n": 7, "b": true, "copied": "y", "moved": {"x": "y"}, "new": 1})
        );
        // Replace and increment keep the field where it was.
        let keys: Vec<&String> = out.as_object().unwrap().keys().collect();
        assert_eq!(keys[..3], ["_id", "a", "list"]);
    }

    #[test]
    fn failures_leave_the_document_alone_and_say_why() {
        let doc = json!({"_id": "x", "a": 1, "l": [1], "f": 1.5e308});
        for (ops, why) in [
            (
                vec![
                    json!({"op": "add", "path": "/b", "value": 1}),
                    json!({"op": "test", "path": "/a", "value": 2}),
                ],
                "test failed: '/a' is 1, not 2",
            ),
            (
                vec![json!({"op": "test", "path": "/zz", "value": 2})],
                "'/zz' does not exist",
            ),
            (
                vec![json!({"op": "remove", "path": "/nope"})],
                "'/nope' does not exist",
            ),
            (
                vec![json!({"op": "replace", "path": "/nope", "value": 1})],
                "'/nope' does not exist",
            ),
            (
                vec![json!({"op": "add", "path": "/x/y", "value": 1})],
                "'/x/y' does not exist",
            ),
            (
                vec![json!({"op": "add", "path": "/l/01", "value": 1})],
                "out of range",
            ),
            (
                vec![json!({"op": "add", "path": "no-slash", "value": 1})],
                "must start with '/'",
            ),
            (
                vec![json!({"op": "replace", "path": "/_id", "value": "y"})],
                "_id cannot be patched",
            ),
            (
                vec![json!({"op": "move", "from": "/_id", "path": "/y"})],
                "_id cannot be patched",
            ),
            (
                vec![json!({"op": "move", "from": "/l", "path": "/l/0"})],
                "into itself",
            ),
            (
                vec![json!({"op": "increment", "path": "/a", "value": "x"})],
                "increment needs numbers",
            ),
            (
                vec![json!({"op": "increment", "path": "/f", "value": 1.5e308})],
                "not a finite number",
            ),
            (
                vec![json!({"op": "increment", "path": "/a", "value": i64::MAX})],
                "overflows",
            ),
            (
                vec![json!({"op": "add", "path": "/b"})],
                "needs a \"value\"",
            ),
            (
                vec![json!({"op": "copy", "from": "/nope", "path": "/b"})],
                "'/nope' does not exist",
            ),
            (
                vec![json!({"op": "frobnicate", "path": "/a"})],
                "'frobnicate' is not add",
            ),
            (vec![json!({"path": "/a"})], "no \"op\""),
            (
                vec![json!({"op": "replace", "path": "", "value": [1]})],
                "not an object",
            ),
            (
                vec![json!({"op": "remove", "path": ""})],
                "whole document cannot be removed",
            ),
        ] {
            let err = apply_patch(&doc, &ops).unwrap_err();
            assert!(err.contains(why), "{ops:?}: {err}");
        }
    }

    #[test]
    fn a_whole_document_replacement_keeps_the_id() {
        let doc = json!({"_id": "x", "a": 1});
        let out = apply_patch(
            &doc,
            &[json!({"op": "replace", "path": "", "value": {"b": 2, "_id": "other"}})],
        )
        .unwrap();
        assert_eq!(out, json!({"_id": "x", "b": 2}));
    }

    fn entry(id: &str, ops: Value) -> PatchDoc {
        PatchDoc {
            id: id.into(),
            patch: ops.as_array().unwrap().clone(),
        }
    }

    #[test]
    fn a_plan_writes_each_changed_document_once_and_failed_entries_not_at_all() {
        let stored: HashMap<String, Value> = [
            (
                "a",
                json!({"_id": "a", "_event_time": "2024-01-02T03:04:05.000006Z", "n": 1}),
            ),
            ("b", json!({"_id": "b", "n": 10})),
            ("c", json!({"_id": "c", "n": 100})),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let entries = [
            entry("a", json!([{"op": "increment", "path": "/n", "value": 1}])),
            // Fails half-way: b stays as it was.
            entry(
                "b",
                json!([{"op": "add", "path": "/x", "value": 1},
                       {"op": "test", "path": "/n", "value": 11}]),
            ),
            // A second entry for a applies on top of the first.
            entry("a", json!([{"op": "INCREMENT", "path": "/n", "value": 5}])),
            entry("zz", json!([{"op": "add", "path": "/x", "value": 1}])),
            // A test that passes and changes nothing writes nothing.
            entry("c", json!([{"op": "test", "path": "/n", "value": 100}])),
            // _event_time must stay a timestamp.
            entry(
                "c",
                json!([{"op": "add", "path": "/_event_time", "value": "soon"}]),
            ),
        ];
        let meta = json!({"source": "api"});
        let ctx = IngestContext {
            event_time_info: None,
            now_micros: 7,
            meta: &meta,
        };
        let p = plan(stored, &entries, &ctx);
        let ok: Vec<bool> = p.outcomes.iter().map(Result::is_ok).collect();
        assert_eq!(ok, [true, false, true, false, true, false]);
        assert!(
            p.outcomes[1].as_ref().unwrap_err().contains("test failed"),
            "{:?}",
            p.outcomes[1]
        );
        assert!(
            p.outcomes[3].as_ref().unwrap_err().contains("no document"),
            "{:?}",
            p.outcomes[3]
        );
        assert!(
            p.outcomes[5].as_ref().unwrap_err().contains("_event_time"),
            "{:?}",
            p.outcomes[5]
        );
        assert_eq!(p.writes.len(), 1, "only a changed");
        let (id, d, text) = &p.writes[0];
        assert_eq!((id.as_str(), d.id.as_str()), ("a", "a"));
        assert_eq!(Value::Object(d.body.clone()), json!({"n": 7}));
        // The stored _event_time is kept.
        assert_eq!(
            d.event_time,
            tarn_common::time::parse_iso8601_micros("2024-01-02T03:04:05.000006Z").unwrap()
        );
        let logged: Value = serde_json::from_slice(text).unwrap();
        assert_eq!(logged["n"], 7);
    }

    /// The real handler on a real collection: one request patching several documents adds
    /// exactly one record to the log, and a failed entry leaves its document as it was.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_request_is_one_log_record() {
        let dir = tempfile::tempdir().unwrap();
        let storage = tarn_storage::Storage::open(dir.path(), Default::default()).unwrap();
        let st = AppState::new(storage.clone()).unwrap();
        let (_, c) = storage
            .create_collection("commons", "p", "", Default::default(), Default::default())
            .unwrap();
        let meta = json!({"source": "api"});
        let ctx = IngestContext {
            event_time_info: None,
            now_micros: 1,
            meta: &meta,
        };
        let docs = (0..3)
            .map(|i| {
                let v = json!({"_id": format!("d{i}"), "n": i});
                let text = serde_json::to_vec(&v).unwrap();
                (prepare(v, &ctx).unwrap(), text)
            })
            .collect();
        c.insert(docs, Vec::new()).await.unwrap();
        let wal_dir = c.dir().join("wal");
        let records = || -> Vec<tarn_storage::wal::WalRecord> {
            tarn_storage::wal::list_generations(&wal_dir)
                .unwrap()
                .into_iter()
                .flat_map(|g| {
                    tarn_storage::wal::read_generation(&tarn_storage::wal::generation_path(
                        &wal_dir, g,
                    ))
                    .unwrap()
                })
                .collect()
        };
        let before = records().len();
        let body = json!({"data": [
            {"_id": "d0", "patch": [{"op": "add", "path": "/p", "value": true}]},
            {"_id": "d1", "patch": [{"op": "add", "path": "/p", "value": true},
                                    {"op": "test", "path": "/n", "value": 99}]},
            {"_id": "d2", "patch": [{"op": "INCREMENT", "path": "/n", "value": 40}]},
        ]});
        let resp = patch_documents(
            State(st.clone()),
            Path(("commons".into(), "p".into())),
            Body::from(body.to_string()),
        )
        .await
        .unwrap_or_else(|e| panic!("{}", e.0.message))
        .into_response();
        assert_eq!(resp.status(), 200);
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let out: Value = serde_json::from_slice(&bytes).unwrap();
        let statuses: Vec<&str> = out["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["status"].as_str().unwrap())
            .collect();
        assert_eq!(statuses, ["PATCHED", "ERROR", "PATCHED"], "{out}");
        let after = records();
        assert_eq!(after.len(), before + 1, "one log record for the request");
        match after.last().unwrap() {
            tarn_storage::wal::WalRecord::Insert { docs, .. } => {
                let ids: Vec<&str> = docs.iter().map(|d| d.id.as_str()).collect();
                assert_eq!(ids, ["d0", "d2"]);
            }
            other => panic!("not an insert: {other:?}"),
        }
        let rows = st
            .engine
            .query(&tarn_sql::QueryRequest {
                sql: "SELECT _id, n, p FROM commons.p ORDER BY _id".into(),
                parameters: Vec::new(),
                default_row_limit: None,
            })
            .await
            .unwrap()
            .results;
        let rows: Vec<Value> = rows.into_iter().map(Value::Object).collect();
        assert_eq!(
            rows,
            [
                json!({"_id": "d0", "n": 0, "p": true}),
                json!({"_id": "d1", "n": 1, "p": null}),
                json!({"_id": "d2", "n": 42, "p": null}),
            ]
        );
        storage.close();
    }
}
