//! Kinesis collections against kinesalite: the tutorial's own boto3 producer feeding the
//! dashboard's queries, bad records, and exactly-once ingest across `kill -9` and a shard
//! split.

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::json;
use tarn_ingest::producer::KinesisWriter;

use crate::peers::{Kinesalite, run_python};
use crate::support::{TestServer, wait_for_count, wait_for_state};
use crate::tutorial::{check_six_queries, generated_tweets};

fn create_integration(s: &TestServer, endpoint: &str) {
    let (st, body) = s.post(
        "/v1/orgs/self/integrations",
        &json!({"name": "aws-integration", "kinesis": {
            "aws_access_key": {"aws_access_key_id": "tarn", "aws_secret_access_key": "tarn-secret-key"},
            "endpoint": endpoint}}),
    );
    assert_eq!(st, 200, "{body}");
    assert!(!body.to_string().contains("tarn-secret-key"), "{body}");
}

#[test]
fn tutorial_producer_feeds_the_dashboard_through_kinesis() {
    let kinesis = Kinesalite::start();
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &[]);
    create_integration(&s, &kinesis.endpoint);
    // The collection as the tutorial's 0.8.10 client creates it; the stream does not exist
    // yet, so the source says so and retries.
    s.create_collection(
        "commons",
        json!({"name": "twitter-kinesis-demo",
               "sources": [{"integration_name": "aws-integration",
                            "kinesis": {"stream_name": "twitter-stream", "aws_region": "us-west-2"}}],
               "field_mappings": [], "clustering_key": []}),
    );
    let status = wait_for_state(&s, "twitter-kinesis-demo", "ERROR");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("'twitter-stream' does not exist"),
        "{status}"
    );
    let (st, body) = s.delete("/v1/orgs/self/integrations/aws-integration", None);
    assert_eq!(st, 400, "an integration in use is kept: {body}");

    let tweets = generated_tweets(400, 21);
    let mut file = tempfile::NamedTempFile::new().unwrap();
    for t in &tweets {
        writeln!(file, "{t}").unwrap();
    }
    file.flush().unwrap();
    let sent = run_python(
        "tutorial_producer.py",
        &[
            &kinesis.endpoint,
            "twitter-stream",
            file.path().to_str().unwrap(),
            "--create",
            "5",
        ],
    );
    assert_eq!(sent.trim(), "400");
    wait_for_count(&s, "SELECT COUNT(*) FROM \"twitter-kinesis-demo\"", 400, 60);
    check_six_queries(&s, &tweets);

    // Bad records are counted and listed with their position; the good one is stored.
    let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
    let writer = KinesisWriter::connect(&format!(
        "kinesis://twitter-stream?endpoint={}",
        kinesis.endpoint
    ))
    .unwrap();
    writer
        .send(&[
            b"not json".to_vec(),
            b"[1, 2]".to_vec(),
            format!("{{\"deep\": {deep}}}").into_bytes(),
            br#"{"_id": "fine", "text": "ok"}"#.to_vec(),
        ])
        .unwrap();
    wait_for_count(
        &s,
        "SELECT COUNT(*) FROM \"twitter-kinesis-demo\" WHERE _id = 'fine'",
        1,
        30,
    );
    // The four records went to random shards: wait until each shard's reader got there.
    let deadline = Instant::now() + Duration::from_secs(30);
    let errors = loop {
        let (st, errors) =
            s.get("/v1/orgs/self/ws/commons/collections/twitter-kinesis-demo/ingest-errors");
        assert_eq!(st, 200);
        if errors["count"] == 3 || Instant::now() > deadline {
            break errors;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(errors["count"], 3, "{errors}");
    let messages: Vec<&str> = errors["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert!(
        messages.iter().any(|m| m.contains("not valid JSON")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("JSON object")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("levels deep")),
        "{messages:?}"
    );
    assert!(
        errors["data"][0]["position"]
            .as_str()
            .unwrap()
            .starts_with("shardId-"),
        "{errors}"
    );
    let (_, coll) = s.get("/v1/orgs/self/ws/commons/collections/twitter-kinesis-demo");
    assert_eq!(coll["data"]["stats"]["ingest_error_count"], 3, "{coll}");
    let status = &coll["data"]["sources"][0]["status"];
    assert_eq!(status["records_processed"], 404, "{status}");
    assert_eq!(status["bad_records"], 3, "{status}");
    assert_eq!(status["lag"].as_array().unwrap().len(), 5, "{status}");
    assert!(
        ["WATCHING", "PROCESSING"].contains(&status["state"].as_str().unwrap()),
        "{status}"
    );
}

#[test]
fn kinesis_ingest_is_exactly_once_across_kill_9_and_a_shard_split() {
    let kinesis = Kinesalite::start();
    let dir = tempfile::tempdir().unwrap();
    let total = 3000;
    let producer = std::process::Command::new(env!("CARGO_BIN_EXE_tarn"))
        .args(["produce", "tweets"])
        .arg(format!(
            "kinesis://crash-stream?endpoint={}&shards=2",
            kinesis.endpoint
        ))
        .args([
            "--count",
            &total.to_string(),
            "--rate",
            "400",
            "--seed",
            "5",
        ])
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let mut producer = scopeguard(producer);
    {
        let s = TestServer::start(dir.path(), &["--seal-rows", "500"]);
        create_integration(&s, &kinesis.endpoint);
        s.create_collection(
            "commons",
            json!({"name": "crash", "sources": [{"integration_name": "aws-integration",
                   "kinesis": {"stream_name": "crash-stream", "offset_reset_policy": "EARLIEST"}}]}),
        );
        std::thread::sleep(Duration::from_millis(700));
        // The split happens while tarn is reading, and before it is killed.
        run_python("reshard.py", &[&kinesis.endpoint, "crash-stream"]);
        std::thread::sleep(Duration::from_millis(500));
        let mut s = s;
        s.kill9();
    }
    for delay_ms in [400, 900, 1300] {
        let mut s = TestServer::start(dir.path(), &["--seal-rows", "500"]);
        std::thread::sleep(Duration::from_millis(delay_ms));
        s.kill9();
    }
    let status = producer.0.wait().unwrap();
    assert!(status.success(), "the producer failed");
    let s = TestServer::start(dir.path(), &["--seal-rows", "500"]);
    wait_for_count(&s, "SELECT COUNT(*) FROM crash", total, 90);
    let rows = s.query("SELECT COUNT(DISTINCT id_str) AS n, COUNT(*) AS c FROM crash");
    assert_eq!(rows[0]["n"], total, "every record exactly once: {rows:?}");
    assert_eq!(rows[0]["c"], total);
    // The parent shard was read to its end, then its children.
    let rows = s.query("SELECT COUNT(DISTINCT _meta.shard_id) AS shards FROM crash");
    assert!(rows[0]["shards"].as_i64().unwrap() >= 3, "{rows:?}");
}

/// Kills the producer if the test fails before it finishes.
struct Guard(std::process::Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
fn scopeguard(c: std::process::Child) -> Guard {
    Guard(c)
}

/// Runs `tarn produce tweets` into a kinesalite stream and waits for it to finish.
fn produce_tweets(endpoint: &str, stream: &str, count: usize, seed: u64) {
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_tarn"))
        .args(["produce", "tweets"])
        .arg(format!("kinesis://{stream}?endpoint={endpoint}&shards=2"))
        .args(["--count", &count.to_string(), "--seed", &seed.to_string()])
        .args(["--rate", "1000"])
        .status()
        .unwrap();
    assert!(status.success(), "the producer failed");
}

/// LATEST starts when the source starts, once: a crash before a shard's first record, and
/// records put while tarn is down, lose nothing; records from before it began are not read.
#[test]
fn kinesis_latest_keeps_its_start_across_kill_9_before_the_first_record() {
    let kinesis = Kinesalite::start();
    produce_tweets(&kinesis.endpoint, "late-stream", 40, 11);
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path(), &[]);
    create_integration(&s, &kinesis.endpoint);
    s.create_collection(
        "commons",
        json!({"name": "late", "sources": [{"integration_name": "aws-integration",
               "kinesis": {"stream_name": "late-stream", "offset_reset_policy": "LATEST"}}]}),
    );
    wait_for_state(&s, "late", "WATCHING");
    s.kill9();
    // Kinesis arrival times have millisecond resolution: the next records are later.
    std::thread::sleep(Duration::from_millis(20));
    produce_tweets(&kinesis.endpoint, "late-stream", 120, 12);

    let s = TestServer::start(dir.path(), &[]);
    wait_for_count(&s, "SELECT COUNT(*) FROM late", 120, 60);
    // And no more arrive: the 40 from before the start are not read.
    std::thread::sleep(Duration::from_secs(1));
    let rows = s.query("SELECT COUNT(*) AS c, COUNT(DISTINCT id_str) AS n FROM late");
    assert_eq!(
        (&rows[0]["c"], &rows[0]["n"]),
        (&json!(120), &json!(120)),
        "{rows:?}"
    );
}
