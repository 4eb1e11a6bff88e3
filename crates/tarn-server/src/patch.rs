//! Document patches: JSON-Patch operations (add, replace, remove, copy, move, test, and
//! Rockset's increment), in either case, applied to a stored document, which is then stored
//! again under the same `_id` and `_event_time`.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};
use tarn_common::TarnError;
use tarn_storage::document::{IngestContext, prepare};

use crate::AppState;
use crate::error::ApiResult;
use crate::routes::{parse_json, read_body};

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

fn get<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(doc, |v, t| match v {
        Value::Object(m) => m.get(t),
        Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

fn parent<'a>(doc: &'a mut Value, path: &[String], full: &str) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for t in &path[..path.len() - 1] {
        cur = match cur {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| format!("path '{full}' does not exist"))?;
    }
    Ok(cur)
}

fn add(doc: &mut Value, path: &[String], value: Value, full: &str) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let last = &path[path.len() - 1];
    match parent(doc, path, full)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .ok()
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

fn remove(doc: &mut Value, path: &[String], full: &str) -> Result<Value, String> {
    if path.is_empty() {
        return Err("the whole document cannot be removed".into());
    }
    let last = &path[path.len() - 1];
    match parent(doc, path, full)? {
        Value::Object(m) => m
            .shift_remove(last)
            .ok_or_else(|| format!("path '{full}' does not exist")),
        Value::Array(a) => {
            let i = last
                .parse::<usize>()
                .ok()
                .filter(|i| *i < a.len())
                .ok_or_else(|| format!("index '{last}' of '{full}' is out of range"))?;
            Ok(a.remove(i))
        }
        _ => Err(format!("path '{full}' does not exist")),
    }
}

/// Applies operations in order; on an error the document is left as it was.
pub fn apply_patch(doc: &Value, ops: &[Value]) -> Result<Value, String> {
    let mut out = doc.clone();
    for (i, op) in ops.iter().enumerate() {
        let name = op["op"]
            .as_str()
            .ok_or_else(|| format!("operation {i} has no \"op\""))?
            .to_ascii_lowercase();
        let path_text = op["path"]
            .as_str()
            .ok_or_else(|| format!("operation {i} ({name}) has no \"path\""))?;
        let path = tokens(path_text)?;
        if path.first().is_some_and(|t| t == "_id") {
            return Err("_id cannot be patched".into());
        }
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| format!("operation {i} ({name}) needs a \"value\""))
        };
        let from = || -> Result<Vec<String>, String> {
            tokens(
                op["from"]
                    .as_str()
                    .ok_or_else(|| format!("operation {i} ({name}) needs \"from\""))?,
            )
        };
        match name.as_str() {
            "add" => add(&mut out, &path, value()?, path_text)?,
            "remove" => {
                remove(&mut out, &path, path_text)?;
            }
            "replace" => {
                remove(&mut out, &path, path_text)?;
                add(&mut out, &path, value()?, path_text)?;
            }
            "move" => {
                let from_path = from()?;
                let v = remove(
                    &mut out,
                    &from_path,
                    op["from"].as_str().unwrap_or_default(),
                )?;
                add(&mut out, &path, v, path_text)?;
            }
            "copy" => {
                let v = get(&out, &from()?)
                    .cloned()
                    .ok_or_else(|| format!("operation {i}: \"from\" does not exist"))?;
                add(&mut out, &path, v, path_text)?;
            }
            "test" => {
                if get(&out, &path) != Some(&value()?) {
                    return Err(format!("test failed: '{path_text}' is not {}", value()?));
                }
            }
            "increment" => {
                let by = value()?;
                let current = get(&out, &path).cloned().unwrap_or(json!(0));
                let sum = match (&current, &by) {
                    (Value::Number(a), Value::Number(b)) => match (a.as_i64(), b.as_i64()) {
                        (Some(x), Some(y)) => x
                            .checked_add(y)
                            .map(Value::from)
                            .ok_or_else(|| format!("increment of '{path_text}' overflows"))?,
                        _ => json!(a.as_f64().unwrap_or(0.0) + b.as_f64().unwrap_or(0.0)),
                    },
                    _ => {
                        return Err(format!(
                            "increment needs numbers: '{path_text}' is {current}, value is {by}"
                        ));
                    }
                };
                if get(&out, &path).is_some() {
                    remove(&mut out, &path, path_text)?;
                }
                add(&mut out, &path, sum, path_text)?;
            }
            other => {
                return Err(format!(
                    "operation {i}: '{other}' is not add, remove, replace, move, copy, test or increment"
                ));
            }
        }
    }
    Ok(out)
}

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

/// `PATCH .../docs`: each document gets PATCHED or an ERROR with the reason.
pub async fn patch_documents(
    State(st): State<AppState>,
    Path((ws, name)): Path<(String, String)>,
    body: Body,
) -> ApiResult<impl IntoResponse> {
    let (info, c) = st.storage.get_collection(&ws, &name)?;
    let req: PatchBody = parse_json(&read_body(body).await?)?;
    let mut data = Vec::with_capacity(req.data.len());
    for d in req.data {
        let status = patch_one(&st, &info, &c, &ws, &name, &d).await;
        data.push(match status {
            Ok(()) => json!({"_collection": name, "_id": d.id, "status": "PATCHED", "patch_id": uuid::Uuid::new_v4().to_string()}),
            Err(msg) => json!({"_collection": name, "_id": d.id, "status": "ERROR",
                               "error": {"message": msg, "type": "INVALIDINPUT"}}),
        });
    }
    Ok(Json(json!({"data": data})))
}

async fn patch_one(
    st: &AppState,
    info: &tarn_storage::CollectionInfo,
    c: &tarn_storage::Collection,
    ws: &str,
    name: &str,
    d: &PatchDoc,
) -> Result<(), String> {
    let q = tarn_sql::QueryRequest {
        sql: format!(
            "SELECT * FROM \"{}\".\"{}\" WHERE _id = :id",
            ws.replace('"', "\"\""),
            name.replace('"', "\"\"")
        ),
        parameters: vec![tarn_sql::QueryParameter {
            name: "id".into(),
            type_: Some("string".into()),
            value: json!(d.id),
        }],
        default_row_limit: None,
    };
    let out = st.engine.query(&q).await.map_err(|e| e.message)?;
    let Some(row) = out.results.into_iter().next() else {
        return Err(format!("no document with _id '{}'", d.id));
    };
    let patched = apply_patch(&Value::Object(row), &d.patch)?;
    let meta = json!({"source": "api"});
    let ctx = IngestContext {
        event_time_info: info.options.event_time_info.as_ref(),
        now_micros: tarn_common::time::now_micros(),
        meta: &meta,
    };
    let text = serde_json::to_vec(&patched).map_err(|e| e.to_string())?;
    let doc = prepare(patched, &ctx)?;
    c.insert(vec![(doc, text)], Vec::new())
        .await
        .map_err(|e: TarnError| e.message)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_in_either_case() {
        let doc = json!({"a": 1, "list": [1, 2], "o": {"x": "y"}, "n": 5});
        let out = apply_patch(
            &doc,
            &[
                json!({"op": "ADD", "path": "/b", "value": true}),
                json!({"op": "replace", "path": "/a", "value": "one"}),
                json!({"op": "remove", "path": "/list/0"}),
                json!({"op": "add", "path": "/list/-", "value": 3}),
                json!({"op": "COPY", "from": "/o/x", "path": "/copied"}),
                json!({"op": "move", "from": "/o", "path": "/moved"}),
                json!({"op": "test", "path": "/b", "value": true}),
                json!({"op": "INCREMENT", "path": "/n", "value": 2}),
                json!({"op": "increment", "path": "/new", "value": 1}),
            ],
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"a": "one", "list": [2, 3], "n": 7, "b": true, "copied": "y", "moved": {"x": "y"}, "new": 1})
        );
    }

    #[test]
    fn failures_leave_the_document_alone() {
        let doc = json!({"a": 1});
        for ops in [
            vec![json!({"op": "test", "path": "/a", "value": 2})],
            vec![json!({"op": "remove", "path": "/nope"})],
            vec![json!({"op": "replace", "path": "/_id", "value": "x"})],
            vec![json!({"op": "increment", "path": "/a", "value": "x"})],
            vec![json!({"op": "frobnicate", "path": "/a"})],
        ] {
            assert!(apply_patch(&doc, &ops).is_err(), "{ops:?}");
        }
    }
}
