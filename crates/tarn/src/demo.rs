//! `tarn demo`: the server plus the collection `twitter-kinesis-demo` fed by generated tweets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tarn_storage::document::{IngestContext, prepare};
use tarn_storage::{CollectionOptions, DEFAULT_WORKSPACE, EventTimeInfo, Storage};

use crate::tweets::TweetGenerator;
use crate::{DemoArgs, serve};

pub const DEMO_COLLECTION: &str = "twitter-kinesis-demo";

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
        Some(Box::new(move |storage: Arc<Storage>, addr| {
            std::thread::Builder::new()
                .name("tarn-demo-producer".into())
                .spawn(move || {
                    if let Err(e) = produce(storage, rate) {
                        tracing::error!(error = %e, "the demo producer stopped");
                    }
                })
                .expect("spawning the demo producer");
            println!("tarn demo: collection '{DEMO_COLLECTION}' receives {rate} tweets/s");
            println!("query it:");
            println!(
                "  curl -s http://{addr}/v1/orgs/self/queries -H 'Content-Type: application/json' \\\n    -d '{{\"sql\":{{\"query\":\"SELECT count(*) FROM \\\"{DEMO_COLLECTION}\\\"\"}}}}'"
            );
        })),
    )
    .await
}

/// Feeds the demo collection through the same ingest path as the documents API.
fn produce(storage: Arc<Storage>, rate: u64) -> anyhow::Result<()> {
    let collection = match storage.get_collection(DEFAULT_WORKSPACE, DEMO_COLLECTION) {
        Ok((_, c)) => c,
        Err(_) => {
            let options = CollectionOptions {
                event_time_info: Some(EventTimeInfo {
                    field: "timestamp_ms".into(),
                    format: Some("milliseconds_since_epoch".into()),
                    time_zone: None,
                }),
                retention_secs: Some(3_600),
            };
            storage
                .create_collection(
                    DEFAULT_WORKSPACE,
                    DEMO_COLLECTION,
                    "tweets from the built-in producer",
                    options,
                    Default::default(),
                )?
                .1
        }
    };
    let info = collection.options().event_time_info.clone();
    let meta = json!({"source": "demo-producer"});
    let mut generator = TweetGenerator::new(
        rand::random(),
        vec!["music".into(), "facebook".into(), "apple".into()],
    );
    let tick = Duration::from_millis(100);
    let per_tick = (rate / 10).max(1) as usize;
    let mut next = Instant::now();
    loop {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let ctx = IngestContext {
            event_time_info: info.as_ref(),
            now_micros: now_ms * 1000,
            meta: &meta,
        };
        let mut docs = Vec::with_capacity(per_tick);
        for _ in 0..per_tick {
            let tweet = generator.tweet(now_ms);
            let text = serde_json::to_vec(&tweet)?;
            docs.push((prepare(tweet, &ctx).map_err(anyhow::Error::msg)?, text));
        }
        collection.insert_blocking(docs, Vec::new())?;
        next += tick;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}
