//! Document patches through the real binary: each document's operations apply fully or not
//! at all, one request's patches survive `kill -9` together, and concurrent patches of one
//! document lose no update.

use serde_json::{Value, json};

use crate::support::TestServer;

const DOCS: &str = "/v1/orgs/self/ws/commons/collections/p/docs";

/// `PATCH .../docs`; returns the status and the body.
fn patch(s: &TestServer, body: &Value) -> (u16, Value) {
    let mut resp = crate::support::agent()
        .patch(s.url(DOCS))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .expect("the request reached tarn");
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_json().unwrap_or(Value::Null))
}

fn rows(s: &TestServer) -> Vec<Value> {
    s.query("SELECT _id, n, tags, o, p FROM p ORDER BY _id")
}

#[test]
fn patches_are_atomic_per_document_and_durable_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path(), &[]);
    s.create_collection("commons", json!({"name": "p"}));
    s.add_docs(
        "commons",
        "p",
        &[
            json!({"_id": "a", "n": 1, "tags": ["x"], "o": {"k": "v"}}),
            json!({"_id": "b", "n": 10, "tags": [], "o": {"k": "w"}}),
            json!({"_id": "c", "n": 100, "tags": ["z"], "o": {}}),
        ],
    );
    let before = rows(&s);
    let (status, body) = patch(
        &s,
        &json!({"data": [
            // Every operation, in both cases of op name.
            {"_id": "a", "patch": [
                {"op": "INCREMENT", "path": "/n", "value": 41},
                {"op": "add", "path": "/tags/-", "value": "y"},
                {"op": "COPY", "from": "/o/k", "path": "/p"},
                {"op": "move", "from": "/o/k", "path": "/o/moved"},
                {"op": "Test", "path": "/n", "value": 42},
                {"op": "replace", "path": "/tags/0", "value": "x2"},
                {"op": "REMOVE", "path": "/o/moved"}]},
            // A failing test after a change: b stays as it was.
            {"_id": "b", "patch": [
                {"op": "add", "path": "/p", "value": "changed"},
                {"op": "test", "path": "/n", "value": 11}]},
            // A bad path after a change: c stays as it was.
            {"_id": "c", "patch": [
                {"op": "increment", "path": "/n", "value": 1},
                {"op": "remove", "path": "/o/nope"}]},
            {"_id": "nobody", "patch": [{"op": "add", "path": "/p", "value": 1}]},
        ]}),
    );
    assert_eq!(status, 200, "{body}");
    let data = body["data"].as_array().unwrap();
    let statuses: Vec<&str> = data.iter().map(|d| d["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["PATCHED", "ERROR", "ERROR", "ERROR"], "{body}");
    assert!(data[0]["patch_id"].is_string(), "{body}");
    let msg = |i: usize| data[i]["error"]["message"].as_str().unwrap().to_owned();
    assert!(msg(1).contains("test failed: '/n' is 10, not 11"), "{body}");
    assert!(msg(2).contains("'/o/nope' does not exist"), "{body}");
    assert!(msg(3).contains("no document with _id 'nobody'"), "{body}");
    assert_eq!(data[1]["error"]["type"], "INVALIDINPUT");
    let expected = vec![
        json!({"_id": "a", "n": 42, "tags": ["x2", "y"], "o": {}, "p": "v"}),
        before[1].clone(),
        before[2].clone(),
    ];
    assert_eq!(rows(&s), expected);
    // The whole request is durable: nothing more, nothing less after kill -9.
    s.kill9();
    let s = TestServer::start(dir.path(), &[]);
    assert_eq!(rows(&s), expected);
    // Patching keeps the _event_time; the special fields cannot be patched away.
    let t0 = s.query("SELECT _event_time FROM p WHERE _id = 'a'");
    let (status, body) = patch(
        &s,
        &json!({"data": [
            {"_id": "a", "patch": [{"op": "add", "path": "/q", "value": 1}]},
            {"_id": "a", "patch": [{"op": "replace", "path": "/_id", "value": "zz"}]},
        ]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][1]["status"], "ERROR", "{body}");
    assert_eq!(
        s.query("SELECT _event_time FROM p WHERE _id = 'a'"),
        t0,
        "same _event_time"
    );
    assert_eq!(s.query("SELECT count(*) AS n FROM p")[0]["n"], 3);
    // A body that is not a patch request is refused as a whole.
    let (status, body) = patch(&s, &json!({"data": [{"patch": []}]}));
    assert_eq!(status, 400, "{body}");
}

#[test]
fn concurrent_patches_of_one_document_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &[]);
    s.create_collection("commons", json!({"name": "p"}));
    s.add_docs("commons", "p", &[json!({"_id": "a", "n": 0})]);
    let (threads, each) = (6, 10);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let s = &s;
            scope.spawn(move || {
                for i in 0..each {
                    // Patches interleave with API writes of other documents.
                    s.add_docs("commons", "p", &[json!({"_id": format!("t{t}-{i}")})]);
                    let (status, body) = patch(
                        s,
                        &json!({"data": [{"_id": "a",
                            "patch": [{"op": "increment", "path": "/n", "value": 1}]}]}),
                    );
                    assert_eq!(status, 200, "{body}");
                    assert_eq!(body["data"][0]["status"], "PATCHED", "{body}");
                }
            });
        }
    });
    let n = s.query("SELECT n FROM p WHERE _id = 'a'");
    assert_eq!(n, [json!({"n": threads * each})]);
}
