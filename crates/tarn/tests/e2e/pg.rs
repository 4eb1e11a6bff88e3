//! The Postgres endpoint against real clients: psql (queries, `\dt`, `\d TABLE`), psycopg 3
//! and SQLAlchemy 2's reflection, with the API key as the password.

use std::process::Command;

use serde_json::{Value, json};

use crate::peers::repo_root;
use crate::rockset_clients::create_key;
use crate::support::TestServer;

/// The Postgres address the server printed.
fn pg_port(s: &TestServer) -> String {
    s.pg.clone()
        .expect("tarn printed its Postgres address")
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn psql_and_psycopg_query_through_the_postgres_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let key = create_key(dir.path(), "pg");
    let s = TestServer::start(dir.path(), &[]);
    let agent = crate::support::agent();
    let auth = format!("ApiKey {key}");
    for (path, body) in [
        (
            "/v1/orgs/self/ws/commons/collections",
            json!({"name": "events"}),
        ),
        (
            "/v1/orgs/self/ws/commons/collections",
            json!({"name": "twitter-kinesis-demo"}),
        ),
        (
            "/v1/orgs/self/ws/commons/collections/twitter-kinesis-demo/docs",
            json!({"data": [
                {"id": 7, "text": "hello", "user": {"screen_name": "ada"}, "retweeted": false, "created_at": "2026-11-25T10:00:00Z"},
                {"id": "8", "text": "again", "user": {"screen_name": "bob"}, "retweeted": true, "created_at": "2026-11-25T10:01:00Z"}]}),
        ),
        (
            "/v1/orgs/self/ws/commons/collections/events/docs",
            json!({"data": [
                {"a": 1, "s": "one", "f": 1.5, "b": false, "o": {"k": [1]}, "_event_time": "2026-11-25T10:00:00Z"},
                {"a": 2, "s": "two", "f": 2.5, "b": true, "o": {"k": [1, 2]}, "_event_time": "2026-11-25T10:01:30Z"},
                {"a": 3, "s": "three", "f": 3.5, "b": true, "o": {"k": []}, "_event_time": "2026-11-25T10:02:00Z"}]}),
        ),
    ] {
        let r = agent
            .post(s.url(path))
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let port = pg_port(&s);
    let conninfo = format!("host=127.0.0.1 port={port} user=tarn dbname=tarn password={key}");
    let out = Command::new("psql")
        .arg(&conninfo)
        .args(["-At", "-c", "SELECT count(*), max(a) FROM events"])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3|3");
    // psql's \dt reads pg_catalog: collections are tables of their workspace's schema.
    let out = Command::new("psql")
        .arg(&conninfo)
        .args(["-At", "-c", "\\dt"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql \\dt: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "commons|events|table|tarn\ncommons|twitter-kinesis-demo|table|tarn"
    );
    // psql's \d TABLE: the collection's top-level fields with the types the endpoint sends
    // (a field holding an int and a string is jsonb); every document has _id and _event_time.
    let events = [
        "_id|text||not null|",
        "_event_time|timestamp with time zone||not null|",
        "_meta|jsonb|||",
        "a|bigint|||",
        "s|text|||",
        "f|double precision|||",
        "b|boolean|||",
        "o|jsonb|||",
    ];
    let tweets = [
        "_id|text||not null|",
        "_event_time|timestamp with time zone||not null|",
        "_meta|jsonb|||",
        "id|jsonb|||",
        "text|text|||",
        "user|jsonb|||",
        "retweeted|boolean|||",
        "created_at|text|||",
    ];
    for (table, expected) in [
        ("events", &events[..]),
        ("commons.events", &events[..]),
        ("\"twitter-kinesis-demo\"", &tweets[..]),
        ("commons.\"twitter-kinesis-demo\"", &tweets[..]),
    ] {
        let out = Command::new("psql")
            .arg(&conninfo)
            .args([
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                &format!("\\d {table}"),
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "psql \\d {table}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.lines().collect::<Vec<_>>(), expected, "\\d {table}");
    }
    // \d+ adds storage and the access method.
    let out = Command::new("psql")
        .arg(&conninfo)
        .args(["-c", "\\d+ events"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("Access method: heap"),
        "psql \\d+: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("double precision"),
        "psql \\d+ lists the columns: {stdout}"
    );
    let bad = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={port} user=tarn dbname=tarn password=wrong"
        ))
        .args(["-c", "SELECT 1"])
        .output()
        .unwrap();
    assert!(!bad.status.success(), "a wrong key is refused");

    let py = repo_root().join(".venv-test/bin/python");
    assert!(py.exists(), "run scripts/test-deps");
    let out = Command::new(py)
        .arg(repo_root().join("crates/tarn/tests/e2e/py/pg_clients.py"))
        .args(["127.0.0.1", &port, &key, &s.base])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pg_clients.py:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert!(v["checks"].as_i64().unwrap() >= 43, "{v}");
}
