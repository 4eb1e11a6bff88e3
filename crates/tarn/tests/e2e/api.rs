//! The REST API as Rockset's users call it: workspaces, collections, documents, queries.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::support::{TestServer, shared_data, strip_generated};

const V1: &str = "/v1/orgs/self";

#[test]
fn workspaces_and_collections_follow_rockset() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &[]);
    let (st, body) = s.post(
        &format!("{V1}/ws"),
        &json!({"name": "team", "description": "d"}),
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["data"]["name"], "team");
    let (st, body) = s.post(&format!("{V1}/ws"), &json!({"name": "team"}));
    assert_eq!((st, body["type"].as_str()), (409, Some("ALREADYEXISTS")));
    let (st, body) = s.post(&format!("{V1}/ws"), &json!({"name": "has space"}));
    assert_eq!((st, body["type"].as_str()), (400, Some("INVALIDINPUT")));
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("letters, digits"),
        "{body}"
    );
    let (st, body) = s.get(&format!("{V1}/ws/nope"));
    assert_eq!((st, body["type"].as_str()), (404, Some("NOTFOUND")));
    let (_, body) = s.get(&format!("{V1}/ws"));
    let names: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"commons") && names.contains(&"team"),
        "{names:?}"
    );

    for ws in ["commons", "team"] {
        s.create_collection(ws, json!({"name": "twitter-kinesis-demo"}));
        let (st, body) = s.post(
            &format!("{V1}/ws/{ws}/collections"),
            &json!({"name": "twitter-kinesis-demo"}),
        );
        assert_eq!(
            (st, body["type"].as_str()),
            (409, Some("ALREADYEXISTS")),
            "{body}"
        );
        let (st, body) = s.get(&format!("{V1}/ws/{ws}/collections/twitter-kinesis-demo"));
        assert_eq!(st, 200);
        assert_eq!(body["data"]["workspace"], ws);
        assert_eq!(body["data"]["stats"]["doc_count"], 0);
    }
    let (st, body) = s.post(
        &format!("{V1}/ws/commons/collections"),
        &json!({"name": "a.b"}),
    );
    assert_eq!(st, 400, "{body}");
    let (st, _) = s.post(&format!("{V1}/ws/nope/collections"), &json!({"name": "x"}));
    assert_eq!(st, 404);
    let (st, body) = s.get(&format!("{V1}/collections"));
    assert_eq!((st, body["data"].as_array().unwrap().len()), (200, 2));
    let (st, body) = s.delete(&format!("{V1}/ws/team"), None);
    assert_eq!(
        st, 400,
        "a workspace with collections is not deleted: {body}"
    );
    let (st, body) = s.delete(
        &format!("{V1}/ws/team/collections/twitter-kinesis-demo"),
        None,
    );
    assert_eq!(
        (st, body["data"]["status"].as_str()),
        (200, Some("DELETED"))
    );
    let (st, _) = s.get(&format!("{V1}/ws/team/collections/twitter-kinesis-demo"));
    assert_eq!(st, 404);
    let (st, _) = s.delete(&format!("{V1}/ws/team"), None);
    assert_eq!(st, 200);
}

#[test]
fn documents_get_a_status_each_and_bad_input_is_contained() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &[]);
    s.create_collection("commons", json!({"name": "c"}));
    let docs = format!(
        r#"{{"data": [{{"_id": "a", "v": 1}}, 7, {}, {{"_id": "a", "v": 2}}, {{"big": "{}"}}, {{"_id": 5}}]}}"#,
        "[".repeat(100) + &"]".repeat(100),
        "x".repeat(9 << 20)
    );
    let (st, body) = s.post_raw(
        &format!("{V1}/ws/commons/collections/c/docs"),
        docs.into_bytes(),
    );
    assert_eq!(st, 200, "{body}");
    let statuses: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["ADDED", "ERROR", "ERROR", "REPLACED", "ERROR", "ERROR"]
    );
    let errors: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["error"]["message"].as_str())
        .collect();
    assert!(errors[0].contains("JSON object"), "{errors:?}");
    assert!(errors[1].contains("levels deep"), "{errors:?}");
    assert!(errors[2].contains("bytes"), "{errors:?}");
    assert!(errors[3].contains("_id"), "{errors:?}");
    assert_eq!(s.query("SELECT v FROM c"), vec![json!({"v": 2})]);

    let (st, body) = s.post_raw(
        &format!("{V1}/ws/commons/collections/c/docs"),
        b"{\"data\": [\n {\"a\": 1,,}]}".to_vec(),
    );
    assert_eq!(st, 400);
    assert_eq!(
        (body["line"].as_u64(), body["column"].as_u64()),
        (Some(2), Some(10)),
        "{body}"
    );

    // A client announcing 65 MiB is answered 413 without sending it all.
    let status_line = {
        use std::io::{BufRead, Write};
        let addr = s.base.trim_start_matches("http://");
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        write!(
            conn,
            "POST {V1}/ws/commons/collections/c/docs HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{{\"data\": [",
            65 << 20
        )
        .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(conn).read_line(&mut line).unwrap();
        line
    };
    assert!(status_line.starts_with("HTTP/1.1 413"), "{status_line}");

    let (st, body) = s.delete(
        &format!("{V1}/ws/commons/collections/c/docs"),
        Some(&json!({"data": [{"_id": "a"}, {"_id": "zz"}]})),
    );
    assert_eq!(st, 200);
    assert_eq!(body["data"][0]["status"], "DELETED");
    assert_eq!(body["data"][1]["status"], "ERROR");
    assert_eq!(
        s.query("SELECT count(*) AS n FROM c"),
        vec![json!({"n": 0})]
    );
    let (st, _) = s.post(
        &format!("{V1}/ws/commons/collections/nope/docs"),
        &json!({"data": [{}]}),
    );
    assert_eq!(st, 404);
}

#[test]
fn queries_filter_group_order_and_use_event_time() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &[]);
    s.create_collection(
        "commons",
        json!({"name": "tweets", "event_time_info": {"field": "timestamp_ms", "format": "milliseconds_since_epoch"}}),
    );
    let base: i64 = 1_607_000_000_000;
    let docs: Vec<Value> = (0..60)
        .map(|i| {
            json!({
                "timestamp_ms": (base + i * 1000).to_string(),
                "user": {"screen_name": format!("u{}", i % 3), "followers_count": i},
                "lang": if i % 2 == 0 { "en" } else { "fr" },
            })
        })
        .collect();
    assert!(
        s.add_docs("commons", "tweets", &docs)
            .iter()
            .all(|d| d["status"] == "ADDED")
    );
    let rows = s.query(
        "SELECT t.user.screen_name AS name, count(*) AS n, max(t.user.followers_count) AS top FROM tweets t \
         GROUP BY t.user.screen_name ORDER BY name LIMIT 2",
    );
    assert_eq!(
        rows,
        vec![
            json!({"name": "u0", "n": 20, "top": 57}),
            json!({"name": "u1", "n": 20, "top": 58})
        ]
    );
    let rows = s.query(
        "SELECT count(*) AS n FROM tweets WHERE _event_time >= TIMESTAMP '2020-12-03T12:53:30Z' \
         AND _event_time < TIMESTAMP '2020-12-03T12:53:40Z'",
    );
    assert_eq!(rows, vec![json!({"n": 10})]);
    let rows = s.query("SELECT t.user.screen_name FROM tweets t WHERE lang = 'fr' ORDER BY t.user.followers_count DESC LIMIT 1");
    assert_eq!(rows, vec![json!({"screen_name": "u2"})]);
    let rows = s.query("SELECT _event_time FROM tweets ORDER BY _event_time LIMIT 1");
    assert_eq!(
        rows,
        vec![json!({"_event_time": "2020-12-03T12:53:20.000000Z"})]
    );
    let (st, body) = s.post(
        &format!("{V1}/queries"),
        &json!({"sql": {"query": "SELECT count(*) FROM \"tweets\""}}),
    );
    assert_eq!(st, 200);
    assert_eq!(
        body["column_fields"],
        json!([{"name": "?count", "type": "int"}])
    );
    assert_eq!(body["collections"], json!(["commons.tweets"]));
    assert!(body["stats"]["elapsed_time_ms"].is_u64() && body["query_id"].is_string());
    let (st, body) = s.post(
        &format!("{V1}/queries"),
        &json!({"sql": {"query": "SELECT *\nFROM tweets WHERE"}}),
    );
    assert_eq!(st, 400);
    assert_eq!(body["type"], "QUERY_ERROR");
    assert!(body["line"].is_u64(), "{body}");
    let (st, body) = s.post(
        &format!("{V1}/queries"),
        &json!({"sql": {"query": "SELECT *\nFROM nope"}}),
    );
    assert_eq!(st, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("'nope' not found in workspace 'commons'"),
        "{body}"
    );
    assert_eq!(
        (body["line"].as_u64(), body["column"].as_u64()),
        (Some(2), Some(6)),
        "{body}"
    );
    let (st, body) = s.post(
        &format!("{V1}/queries"),
        &json!({"sql": {"query": "SELECT lang,\n  nosuchfn(lang) FROM tweets"}}),
    );
    assert_eq!(st, 400);
    assert_eq!(
        (body["line"].as_u64(), body["column"].as_u64()),
        (Some(2), Some(3)),
        "{body}"
    );
}

#[test]
fn real_tweets_are_taken_whole() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &["--seal-rows", "700"]);
    s.create_collection("commons", json!({"name": "real"}));
    let text = std::fs::read_to_string(shared_data("real-tweets.ndjson")).unwrap();
    let tweets: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(tweets.len(), 2000);
    for chunk in tweets.chunks(250) {
        let statuses = s.add_docs("commons", "real", chunk);
        assert!(
            statuses.iter().all(|d| d["status"] == "ADDED"),
            "{:?}",
            statuses.iter().find(|d| d["status"] != "ADDED")
        );
    }
    let check = |s: &TestServer| {
        let rows = s.query("SELECT * FROM real");
        assert_eq!(rows.len(), 2000);
        let by_id: HashMap<String, Value> = rows
            .into_iter()
            .map(|r| (r["id_str"].as_str().unwrap().to_owned(), r))
            .collect();
        for t in &tweets {
            let mut got = strip_generated(by_id[t["id_str"].as_str().unwrap()].clone());
            got.as_object_mut().unwrap().remove("_id");
            assert_eq!(&got, t, "tweet {} differs", t["id_str"]);
        }
    };
    check(&s);
    let ids = s.query("SELECT id, id_str FROM real WHERE id > 9007199254740993 LIMIT 5");
    for r in ids {
        assert_eq!(
            r["id"].as_i64().unwrap().to_string(),
            r["id_str"].as_str().unwrap(),
            "ids beyond 2^53 are exact"
        );
    }
    drop(s);
    let s = TestServer::start(dir.path(), &["--seal-rows", "700"]);
    check(&s);
}

#[test]
fn sigterm_stops_cleanly_and_data_stays() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path(), &[]);
    s.create_collection("commons", json!({"name": "c", "retention_secs": 3600}));
    s.add_docs("commons", "c", &[json!({"_id": "x", "k": [1, 2]})]);
    let status = s.terminate();
    assert!(status.success(), "exit status {status:?}");
    let s = TestServer::start(dir.path(), &[]);
    assert_eq!(
        s.query("SELECT _id, k FROM c"),
        vec![json!({"_id": "x", "k": [1, 2]})]
    );
    let (_, body) = s.get(&format!("{V1}/ws/commons/collections/c"));
    assert_eq!(body["data"]["retention_secs"], 3600);
}

#[test]
fn retention_drops_old_documents() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &[]);
    s.create_collection("commons", json!({"name": "r", "retention_secs": 60}));
    let old = "2020-01-01T00:00:00Z";
    s.add_docs(
        "commons",
        "r",
        &[
            json!({"_id": "old", "_event_time": old}),
            json!({"_id": "new"}),
        ],
    );
    assert_eq!(s.query("SELECT _id FROM r"), vec![json!({"_id": "new"})]);
}

#[test]
fn undefined_paths_are_null_with_a_warning_and_parameters_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &[]);
    s.create_collection("commons", json!({"name": "twitter-kinesis-demo"}));
    s.add_docs(
        "commons",
        "twitter-kinesis-demo",
        &[json!({"entities": {"hashtags": [{"text": "music"}, {"text": "pop"}]}, "user": {"screen_name": "amy"}})],
    );
    let sql = "SELECT hashtags.text AS hashtag, count(*) AS n FROM \"twitter-kinesis-demo\" t, unnest(t.entites.hashtags) hashtags GROUP BY hashtags.text";
    let (st, body) = s.post(&format!("{V1}/queries"), &json!({"sql": {"query": sql}}));
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["results"], json!([]));
    assert_eq!(
        body["warnings"],
        json!([
            "t.entites.hashtags does not occur in twitter-kinesis-demo; did you mean t.entities.hashtags?"
        ])
    );
    let sql = "SELECT ht.text FROM \"twitter-kinesis-demo\" t, unnest(t.entities.hashtags) ht WHERE ht.text != :tag";
    let (st, body) = s.post(
        &format!("{V1}/queries"),
        &json!({"sql": {"query": sql, "parameters": [{"name": "tag", "type": "string", "value": "music"}]}}),
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["results"], json!([{"text": "pop"}]));
    assert!(
        body.get("warnings").is_none(),
        "no warnings key when there are none: {body}"
    );
}

#[test]
fn produce_tweets_to_stdout_and_into_a_collection() {
    let out = crate::support::run_tarn(&[
        "produce", "tweets", "-", "--count", "25", "--rate", "1000", "--seed", "3",
    ]);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 25);
    assert!(
        lines
            .iter()
            .all(|t| t["timestamp_ms"].is_string() && t["user"]["screen_name"].is_string())
    );

    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &[]);
    s.create_collection("commons", json!({"name": "tw"}));
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_tarn"))
        .args([
            "produce",
            "tweets",
            &format!("{}/tw", s.base),
            "--count",
            "40",
            "--rate",
            "2000",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        s.query("SELECT count(*) AS n FROM tw"),
        vec![json!({"n": 40})]
    );
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_tarn"))
        .args(["produce", "tweets", "ftp://x"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown sink"));
}
