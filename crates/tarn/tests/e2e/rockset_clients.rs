//! Rockset's own Python clients (0.8.10, the tutorial's, and 2.1.2) against the real binary
//! with an API key: their calls succeed, their results equal tarn's own SQL, and their
//! errors are their own exception types.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

use crate::peers::{Kinesalite, repo_root};
use crate::support::TestServer;

/// `tarn apikey create NAME` on a data dir; returns the key.
pub fn create_key(dir: &std::path::Path, name: &str) -> String {
    let dir = dir.to_str().expect("a UTF-8 path");
    crate::support::run_tarn(&["apikey", "create", name, "--data-dir", dir])
        .trim()
        .to_owned()
}

fn venv_python(venv: &str) -> PathBuf {
    let p = repo_root().join(venv).join("bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/test-deps",
        p.display()
    );
    p
}

fn run_client(venv: &str, script: &str, args: &[&str]) -> Value {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(venv_python(venv))
        .arg(repo_root().join("crates/tarn/tests/e2e/py").join(script))
        .args(args)
        .env("HOME", home.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

fn with_key(
    s: &TestServer,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let agent = crate::support::agent();
    let url = s.url(path);
    let auth = format!("ApiKey {key}");
    let resp = match (method, body) {
        ("POST", Some(b)) => agent
            .post(&url)
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .send(b.to_string()),
        _ => agent.get(&url).header("Authorization", &auth).call(),
    }
    .unwrap();
    let status = resp.status().as_u16();
    let v: Value = resp.into_body().read_json().unwrap_or(Value::Null);
    (status, v)
}

#[test]
fn rockset_client_0_8_10_runs_the_tutorial_code() {
    let kinesis = Kinesalite::start();
    let dir = tempfile::tempdir().unwrap();
    let key = create_key(dir.path(), "tutorial");
    let s = TestServer::start(dir.path(), &[]);
    // Without the key: 401 AUTHEXCEPTION, even on loopback, once a key exists.
    let (st, body) = s.get("/v1/orgs/self/ws");
    assert_eq!(st, 401, "{body}");
    assert_eq!(body["type"], "AUTHEXCEPTION");
    let (st, body) = with_key(
        &s,
        &key,
        "POST",
        "/v1/orgs/self/integrations",
        Some(json!({"name": "aws-integration", "kinesis": {
            "aws_access_key": {"aws_access_key_id": "tarn", "aws_secret_access_key": "secret"},
            "endpoint": kinesis.endpoint}})),
    );
    assert_eq!(st, 200, "{body}");
    let sink = format!(
        "kinesis://twitter-stream?endpoint={}&shards=5",
        kinesis.endpoint
    );
    crate::support::run_tarn(&[
        "produce", "tweets", &sink, "--count", "400", "--rate", "100000", "--seed", "3",
    ]);
    let report = run_client(
        ".venv-rockset08",
        "rockset_0810.py",
        &[&s.base, &key, &kinesis.endpoint],
    );
    println!("rockset 0.8.10: {report}");
    assert!(report["checks"].as_i64().unwrap() >= 20, "{report}");
}

#[test]
fn rockset_client_2_1_2_covers_streams_queries_documents_and_lambdas() {
    let kinesis = Kinesalite::start();
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("the mock cluster starts");
    cluster.create_topic("tweets", 2, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let key = create_key(dir.path(), "two");
    // The 2.x integration model has no endpoint field: the server's standard AWS variable
    // points the SDK at kinesalite, as it would at any Kinesis-compatible service.
    let s = TestServer::start_with_env(
        "serve",
        dir.path(),
        &[],
        &[("AWS_ENDPOINT_URL_KINESIS", &kinesis.endpoint)],
    );
    for sink in [
        format!(
            "kinesis://twitter-stream?endpoint={}&shards=2",
            kinesis.endpoint
        ),
        format!("kafka://{bootstrap}/tweets"),
    ] {
        crate::support::run_tarn(&[
            "produce", "tweets", &sink, "--count", "200", "--rate", "100000", "--seed", "9",
        ]);
    }
    let report = run_client(
        ".venv-rockset2",
        "rockset_212.py",
        &[&s.base, &key, &kinesis.endpoint, &bootstrap],
    );
    println!("rockset 2.1.2: {report}");
    assert!(report["checks"].as_i64().unwrap() >= 25, "{report}");
}

#[test]
fn a_page_on_another_origin_queries_with_an_api_key() {
    let pw = repo_root().join(".deps/node_modules/playwright-core");
    assert!(pw.join("package.json").exists(), "run scripts/test-deps");
    let dir = tempfile::tempdir().unwrap();
    let key = create_key(dir.path(), "browser");
    let s = TestServer::start(dir.path(), &[]);
    let (st, _) = with_key(
        &s,
        &key,
        "POST",
        "/v1/orgs/self/ws/commons/collections",
        Some(json!({"name": "events"})),
    );
    assert_eq!(st, 200);
    let (st, _) = with_key(
        &s,
        &key,
        "POST",
        "/v1/orgs/self/ws/commons/collections/events/docs",
        Some(json!({"data": [{"a": 1}, {"a": 2}, {"a": 3}]})),
    );
    assert_eq!(st, 200);
    let out = Command::new("node")
        .arg(repo_root().join("crates/tarn/tests/e2e/js/cors.js"))
        .arg(&s.base)
        .arg(&key)
        .arg(&pw)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(v["n"], "3", "the page read the results: {v}");
    assert!(v["ms"].as_str().unwrap().parse::<u64>().is_ok(), "{v}");
}
