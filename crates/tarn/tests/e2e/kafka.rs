//! Kafka collections against librdkafka's mock cluster (the real protocol over TCP): the
//! 2,000 recorded tweets, whole and exactly once across `kill -9` while consuming.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use serde_json::{Value, json};
use tarn_ingest::producer::KafkaWriter;

use crate::support::{TestServer, shared_data};

#[test]
fn kafka_topic_feeds_a_collection_exactly_once_across_kill_9() {
    let cluster = MockCluster::new(3).expect("the mock cluster starts");
    cluster
        .create_topic("tweets", 4, 1)
        .expect("the topic is created");
    let bootstrap = cluster.bootstrap_servers();
    let text = std::fs::read(shared_data("real-tweets.ndjson")).unwrap();
    let lines: Vec<Vec<u8>> = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    // What the file holds, computed here: each id as its exact decimal text.
    let mut want_ids: BTreeMap<String, usize> = BTreeMap::new();
    for l in &lines {
        let v: Value = serde_json::from_slice(l).unwrap();
        *want_ids.entry(v["id"].to_string()).or_default() += 1;
    }

    let dir = tempfile::tempdir().unwrap();
    let args = ["--seal-rows", "700"];
    let mut s = TestServer::start(dir.path(), &args);
    let (st, body) = s.post(
        "/v1/orgs/self/integrations",
        &json!({"name": "kafka-integration", "kafka": {
            "bootstrap_servers": bootstrap, "kafka_topic_names": ["tweets"],
            "kafka_data_format": "JSON",
            "client_config": {"session.timeout.ms": "1000", "heartbeat.interval.ms": "100"}}}),
    );
    assert_eq!(st, 200, "{body}");
    s.create_collection(
        "commons",
        json!({"name": "tweets", "sources": [{"integration_name": "kafka-integration",
               "kafka": {"kafka_topic_name": "tweets", "offset_reset_policy": "EARLIEST"}}]}),
    );
    let url = format!("kafka://{bootstrap}/tweets");
    let producer = std::thread::spawn(move || {
        let w = KafkaWriter::connect(&url).unwrap();
        for chunk in lines.chunks(50) {
            w.send(chunk).unwrap();
            std::thread::sleep(Duration::from_millis(40));
        }
    });
    for delay_ms in [600, 900, 1200] {
        std::thread::sleep(Duration::from_millis(delay_ms));
        s.kill9();
        s = TestServer::start(dir.path(), &args);
    }
    producer.join().unwrap();
    let total = want_ids.values().sum::<usize>() as i64;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let n = s.query("SELECT COUNT(*) AS n FROM tweets")[0]["n"]
            .as_i64()
            .unwrap();
        if n == total {
            break;
        }
        assert!(n < total, "more documents than messages: {n} > {total}");
        assert!(
            std::time::Instant::now() < deadline,
            "{n} of {total} messages arrived"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Exactly once, and whole: every id exact (beyond 2^53), as often as produced.
    let mut got_ids: BTreeMap<String, usize> = BTreeMap::new();
    for r in s.query("SELECT id FROM tweets") {
        *got_ids.entry(r["id"].to_string()).or_default() += 1;
    }
    assert_eq!(got_ids, want_ids);
    let (_, coll) = s.get("/v1/orgs/self/ws/commons/collections/tweets");
    let status = &coll["data"]["sources"][0]["status"];
    assert!(
        ["WATCHING", "PROCESSING"].contains(&status["state"].as_str().unwrap()),
        "{status}"
    );
    let rows = s.query("SELECT COUNT(DISTINCT _meta.partition) AS p FROM tweets");
    assert_eq!(rows[0]["p"], 4, "all partitions were read");
}
