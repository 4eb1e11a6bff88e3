//! Kafka collections against librdkafka's mock cluster (the real protocol over TCP): the
//! 2,000 recorded tweets, whole and exactly once across `kill -9` while consuming, across a
//! second member joining and leaving the consumer group, and with LATEST across a crash
//! before the first message.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::{ClientConfig, Message};
use serde_json::{Value, json};
use tarn_ingest::producer::KafkaWriter;

use crate::support::{TestServer, shared_data, wait_for_count, wait_for_state};

/// The recorded tweets, one message each.
fn recorded_tweets() -> Vec<Vec<u8>> {
    let text = std::fs::read(shared_data("real-tweets.ndjson")).unwrap();
    text.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// Each tweet's id as its exact decimal text, with how often it occurs.
fn id_counts<'a>(lines: impl IntoIterator<Item = &'a Vec<u8>>) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for l in lines {
        let v: Value = serde_json::from_slice(l).unwrap();
        *ids.entry(v["id"].to_string()).or_default() += 1;
    }
    ids
}

fn stored_id_counts(s: &TestServer, collection: &str) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for r in s.query(&format!("SELECT id FROM {collection}")) {
        *ids.entry(r["id"].to_string()).or_default() += 1;
    }
    ids
}

/// librdkafka's mock cluster (three brokers, in this process) with one topic, and its
/// bootstrap servers. The cluster stops when the first value is dropped.
fn cluster_with_topic(
    topic: &str,
    partitions: i32,
) -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    String,
) {
    let cluster = MockCluster::new(3).expect("the mock cluster starts");
    cluster
        .create_topic(topic, partitions, 1)
        .expect("the topic is created");
    let bootstrap = cluster.bootstrap_servers();
    (cluster, bootstrap)
}

/// A consumer in `group` that commits what it reads every 100 ms, as other members of a
/// group tarn consumes in would.
fn group_member(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("session.timeout.ms", "4000")
        .set("heartbeat.interval.ms", "300")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "100")
        .create()
        .unwrap()
}

/// A Kafka integration whose group drops a killed member within seconds. The session
/// outlasts the mock's 3 s wait for a new group's first members: with a 1 s session the
/// first member of a new group was dropped while it waited, and its join never returned.
fn create_integration(s: &TestServer, bootstrap: &str) {
    const SESSION_MS: &str = "4000";
    let (st, body) = s.post(
        "/v1/orgs/self/integrations",
        &json!({"name": "kafka-integration", "kafka": {
            "bootstrap_servers": bootstrap, "kafka_data_format": "JSON",
            "client_config": {"session.timeout.ms": SESSION_MS, "heartbeat.interval.ms": "300"}}}),
    );
    assert_eq!(st, 200, "{body}");
}

#[test]
fn kafka_topic_feeds_a_collection_exactly_once_across_kill_9() {
    let (_cluster, bootstrap) = cluster_with_topic("tweets", 4);
    let lines = recorded_tweets();
    let want_ids = id_counts(&lines);

    let dir = tempfile::tempdir().unwrap();
    let args = ["--seal-rows", "700"];
    let mut s = TestServer::start(dir.path(), &args);
    create_integration(&s, &bootstrap);
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
    assert_eq!(stored_id_counts(&s, "tweets"), want_ids);
    let (_, coll) = s.get("/v1/orgs/self/ws/commons/collections/tweets");
    let status = &coll["data"]["sources"][0]["status"];
    assert!(
        ["WATCHING", "PROCESSING"].contains(&status["state"].as_str().unwrap()),
        "{status}"
    );
    let rows = s.query("SELECT COUNT(DISTINCT _meta.partition) AS p FROM tweets");
    assert_eq!(rows[0]["p"], 4, "all partitions were read");
}

/// The group `shared-group` (the collection's `consumer_group_id`) already committed offsets
/// before tarn joined it; later another member joins, takes some partitions (reading and
/// committing), and leaves. tarn's own positions decide where it reads (a partition it has
/// none for from its beginning), so every message is in the collection exactly once: none
/// skipped because another member committed past it, none stored twice because a
/// rebalance delivered it again while a batch was being gathered.
#[test]
fn a_second_group_member_takes_partitions_and_gives_them_back_without_loss() {
    let (_cluster, bootstrap) = cluster_with_topic("shared", 6);
    let lines_all = recorded_tweets();
    let want_ids = id_counts(&lines_all);
    let lines = lines_all[1000..].to_vec();
    KafkaWriter::connect(&format!("kafka://{bootstrap}/shared"))
        .unwrap()
        .send(&lines_all[..1000])
        .unwrap();
    let early: BaseConsumer = group_member(&bootstrap, "shared-group");
    early.subscribe(&["shared"]).unwrap();
    let (mut n, deadline) = (0, Instant::now() + Duration::from_secs(30));
    while n < 300 && Instant::now() < deadline {
        if let Some(Ok(_)) = early.poll(Duration::from_millis(100)) {
            n += 1;
        }
    }
    assert_eq!(n, 300, "the group committed offsets before tarn joined");
    early
        .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
        .unwrap();
    drop(early);
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &[]);
    create_integration(&s, &bootstrap);
    s.create_collection(
        "commons",
        json!({"name": "shared", "sources": [{"integration_name": "kafka-integration",
               "kafka": {"kafka_topic_name": "shared", "offset_reset_policy": "EARLIEST",
                         "consumer_group_id": "shared-group"}}]}),
    );
    let (_, coll) = s.get("/v1/orgs/self/ws/commons/collections/shared");
    assert_eq!(
        coll["data"]["sources"][0]["kafka"]["consumer_group_id"], "shared-group",
        "the source names its consumer group: {coll}"
    );
    let url = format!("kafka://{bootstrap}/shared");
    let producer = std::thread::spawn(move || {
        let w = KafkaWriter::connect(&url).unwrap();
        for chunk in lines.chunks(20) {
            w.send(chunk).unwrap();
            std::thread::sleep(Duration::from_millis(80));
        }
    });
    wait_for_state(&s, "shared", "PROCESSING");

    let other: BaseConsumer = group_member(&bootstrap, "shared-group");
    other.subscribe(&["shared"]).unwrap();
    let mut taken = 0;
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while taken < 50 && Instant::now() < deadline {
        if let Some(Ok(m)) = other.poll(Duration::from_millis(100)) {
            assert!(m.payload().is_some());
            taken += 1;
        }
        let assignment = other.assignment().unwrap();
        if assignment.count() > 0 {
            held = assignment
                .elements()
                .iter()
                .map(|e| e.partition())
                .collect();
        }
    }
    assert!(
        taken > 0 && !held.is_empty() && held.len() < 6,
        "the second member shared the partitions with tarn (it held {held:?} and read {taken} messages)"
    );
    other
        .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
        .unwrap();
    drop(other);

    producer.join().unwrap();
    let total = want_ids.values().sum::<usize>() as i64;
    wait_for_count(&s, "SELECT COUNT(*) FROM shared", total, 90);
    assert_eq!(stored_id_counts(&s, "shared"), want_ids);
    let rows = s.query("SELECT COUNT(DISTINCT _meta.partition) AS p FROM shared");
    assert_eq!(rows[0]["p"], 6, "all partitions were read");
}

/// LATEST starts when the source starts, once: a crash before the first message, and
/// messages produced while tarn is down, lose nothing; messages from before it began are
/// not read.
#[test]
fn latest_keeps_its_start_across_kill_9_before_the_first_message() {
    let (_cluster, bootstrap) = cluster_with_topic("late", 3);
    let lines = recorded_tweets();
    let (before, after) = lines[..600].split_at(200);
    let w = KafkaWriter::connect(&format!("kafka://{bootstrap}/late")).unwrap();
    w.send(before).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path(), &[]);
    create_integration(&s, &bootstrap);
    s.create_collection(
        "commons",
        json!({"name": "late", "sources": [{"integration_name": "kafka-integration",
               "kafka": {"kafka_topic_name": "late", "offset_reset_policy": "LATEST"}}]}),
    );
    wait_for_state(&s, "late", "WATCHING");
    s.kill9();
    w.send(after).unwrap();

    let s = TestServer::start(dir.path(), &[]);
    wait_for_count(&s, "SELECT COUNT(*) FROM late", after.len() as i64, 60);
    assert_eq!(stored_id_counts(&s, "late"), id_counts(after));
}
