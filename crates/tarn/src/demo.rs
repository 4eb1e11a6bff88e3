//! `tarn demo`: the server, the collection `twitter-kinesis-demo` fed by generated tweets
//! through an in-process Kafka stream, and the live dashboard.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use serde_json::json;
use tarn_ingest::producer::KafkaWriter;
use tarn_storage::{CollectionOptions, DEFAULT_WORKSPACE, EventTimeInfo};

use crate::tweets::TweetGenerator;
use crate::{DemoArgs, serve};

pub const DEMO_COLLECTION: &str = "twitter-kinesis-demo";
const DEMO_INTEGRATION: &str = "demo-stream";

/// The tutorial's dashboard queries, with its two typos fixed.
pub const TUTORIAL_QUERIES: [(&str, &str); 6] = [
    (
        "Live Tweets",
        "SELECT t.timestamp_ms, t.created_at AS created_at, t.text AS text, t.user.screen_name AS screen_name \
         FROM \"twitter-kinesis-demo\" t WHERE CAST(timestamp_ms AS INT) > UNIX_MILLIS(current_timestamp() - minutes(1)) \
         ORDER BY timestamp_ms DESC LIMIT 100",
    ),
    (
        "Top Hashtags",
        "WITH latest_hashtags AS (SELECT lower(ht.text) AS hashtag FROM \"twitter-kinesis-demo\" t, \
         unnest(t.extended_tweet.entities.hashtags) ht \
         WHERE CAST(t.timestamp_ms AS INT) > UNIX_MILLIS(current_timestamp() - hours(1))) \
         SELECT count(hashtag) AS tweet_count, hashtag FROM latest_hashtags GROUP BY hashtag ORDER BY tweet_count DESC LIMIT 10",
    ),
    (
        "Incoming Tweets",
        "SELECT count(*) FROM \"twitter-kinesis-demo\" WHERE cast(timestamp_ms AS INT) > unix_millis(current_timestamp() - seconds(2))",
    ),
    (
        "Influencers",
        "SELECT t.user.screen_name, t.user.followers_count AS fc FROM \"twitter-kinesis-demo\" t \
         WHERE 'music' IN (SELECT hashtags.text FROM unnest(t.entities.hashtags) hashtags) \
         GROUP BY (t.user.screen_name, t.user.followers_count) ORDER BY t.user.followers_count DESC LIMIT 5",
    ),
    (
        "Related Hashtags",
        "SELECT hashtags.text as hashtag, count(*) AS occurence_count FROM \"twitter-kinesis-demo\" t, \
         unnest(t.entities.hashtags) hashtags WHERE 'music' IN (SELECT ht.text FROM unnest(t.entities.hashtags) ht) \
         AND hashtags.text != 'music' GROUP BY hashtags.text ORDER BY occurence_count DESC LIMIT 10",
    ),
    (
        "Live Tweets for #music",
        "SELECT t.timestamp_ms, t.text AS text, t.user.screen_name AS screen_name FROM \"twitter-kinesis-demo\" t \
         WHERE 'music' IN (SELECT ht.text FROM unnest(t.entities.hashtags) ht) \
         AND CAST(timestamp_ms AS INT) > UNIX_MILLIS(current_timestamp() - minutes(1)) ORDER BY timestamp_ms DESC LIMIT 100",
    ),
];

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let rate = args.rate.max(1);
    serve(
        args.serve,
        Some(Box::new(move |state: tarn_server::AppState, addr| {
            if let Err(e) = start(&state, rate, Arc::default()) {
                tracing::error!(error = %e, "the demo could not start its stream");
                return;
            }
            println!("tarn demo: collection '{DEMO_COLLECTION}' reads {rate} tweets/s from an in-process Kafka stream");
            println!("dashboard: http://{addr}/ui/#/d/tweets");
            println!("console:   http://{addr}/ui/#/console");
            println!(
                "or query:  curl -s http://{addr}/v1/orgs/self/queries -H 'Content-Type: application/json' \\\n    -d '{{\"sql\":{{\"query\":\"SELECT count(*) FROM \\\"{DEMO_COLLECTION}\\\"\"}}}}'"
            );
        })),
    )
    .await
}

/// The demo's stream: librdkafka's mock cluster in this process, fed by the tweet
/// generator, read by the collection through the real Kafka source (the same code that
/// reads a real broker). The collection is created afresh on each run: the stream is new.
/// The stream's thread produces until `stop` is set, then stops the cluster and ends.
pub(crate) fn start(
    state: &tarn_server::AppState,
    rate: u64,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let (tx, rx) = std::sync::mpsc::channel::<anyhow::Result<String>>();
    let stream = std::thread::Builder::new()
        .name("tarn-demo-stream".into())
        .spawn(move || {
            let cluster = match MockCluster::new(1).and_then(|c| {
                c.create_topic("tweets", 4, 1)?;
                Ok(c)
            }) {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(anyhow::anyhow!("cannot start the demo stream: {e}")));
                    return;
                }
            };
            let bootstrap = cluster.bootstrap_servers();
            let _ = tx.send(Ok(bootstrap.clone()));
            if let Err(e) = produce(&bootstrap, rate, &stop) {
                tracing::error!(error = %e, "the demo producer stopped");
            }
            drop(cluster);
        })?;
    let bootstrap = rx.recv()??;
    let integrations = state.sources.integrations();
    let _ = integrations.delete(DEMO_INTEGRATION);
    let mut body = serde_json::Map::new();
    body.insert("name".into(), json!(DEMO_INTEGRATION));
    body.insert(
        "description".into(),
        json!("the demo's in-process Kafka stream"),
    );
    body.insert(
        "kafka".into(),
        json!({"bootstrap_servers": bootstrap, "kafka_topic_names": ["tweets"], "kafka_data_format": "JSON"}),
    );
    integrations.create(body)?;
    if let Ok((info, _)) = state
        .storage
        .get_collection(DEFAULT_WORKSPACE, DEMO_COLLECTION)
    {
        state.sources.stop(&info.uuid);
        state
            .storage
            .delete_collection(DEFAULT_WORKSPACE, DEMO_COLLECTION)?;
    }
    let mut extra = serde_json::Map::new();
    extra.insert(
        "sources".into(),
        json!([{"integration_name": DEMO_INTEGRATION, "kafka": {"kafka_topic_name": "tweets", "offset_reset_policy": "EARLIEST"}}]),
    );
    state.sources.validate(&extra)?;
    let options = CollectionOptions {
        event_time_info: Some(EventTimeInfo {
            field: "timestamp_ms".into(),
            format: Some("milliseconds_since_epoch".into()),
            time_zone: None,
        }),
        retention_secs: Some(3_600),
    };
    let (info, c) = state.storage.create_collection(
        DEFAULT_WORKSPACE,
        DEMO_COLLECTION,
        "tweets from the built-in producer, through an in-process Kafka stream",
        options,
        extra,
    )?;
    state.sources.start(&info, &c)?;
    Ok(stream)
}

/// Writes generated tweets into the demo topic at `rate` per second until `stop` is set.
fn produce(bootstrap: &str, rate: u64, stop: &AtomicBool) -> anyhow::Result<()> {
    let writer =
        KafkaWriter::connect(&format!("kafka://{bootstrap}/tweets")).map_err(anyhow::Error::msg)?;
    let mut generator = TweetGenerator::new(
        rand::random(),
        vec!["music".into(), "facebook".into(), "apple".into()],
    );
    let tick = Duration::from_millis(100);
    let per_tick = (rate / 10).max(1) as usize;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let batch: Vec<Vec<u8>> = (0..per_tick)
            .map(|_| serde_json::to_vec(&generator.tweet(now_ms)).expect("JSON values serialize"))
            .collect();
        // Queued, not flushed: waiting for the broker's acknowledgements on every tick
        // would cap the rate below what is asked (librdkafka sends within its linger time).
        writer.enqueue(&batch).map_err(anyhow::Error::msg)?;
        next += tick;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    writer.flush().map_err(anyhow::Error::msg)
}
