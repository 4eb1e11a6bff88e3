//! The tutorial's six dashboard queries over generated tweets, checked against counts computed
//! here from the same tweets.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::support::TestServer;

fn hashtags(t: &Value, path: &[&str]) -> Vec<String> {
    let mut v = t;
    for p in path {
        v = &v[*p];
    }
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|h| h["text"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Checks a "top N by count" answer: every row's count is right, and the counts are the N
/// largest (ties may be broken either way).
fn check_top(rows: &[Value], key: &str, count: &str, expected: &HashMap<String, i64>, n: usize) {
    let mut want: Vec<i64> = expected.values().copied().collect();
    want.sort_unstable_by(|a, b| b.cmp(a));
    want.truncate(n);
    let got: Vec<i64> = rows.iter().map(|r| r[count].as_i64().unwrap()).collect();
    assert_eq!(got, want, "{rows:?}");
    for r in rows {
        assert_eq!(
            Some(&r[count].as_i64().unwrap()),
            expected.get(r[key].as_str().unwrap()),
            "{r}"
        );
    }
}

/// Tweets from `tarn produce tweets -`, made just now.
pub fn generated_tweets(count: u64, seed: u64) -> Vec<Value> {
    let (count, seed) = (count.to_string(), seed.to_string());
    crate::support::run_tarn(&[
        "produce", "tweets", "-", "--rate", "100000", "--count", &count, "--seed", &seed,
    ])
    .lines()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect()
}

#[test]
fn six_dashboard_queries_over_generated_tweets() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &["--seal-rows", "250"]);
    s.create_collection(
        "commons",
        json!({"name": "twitter-kinesis-demo", "event_time_info": {"field": "timestamp_ms", "format": "milliseconds_since_epoch"}}),
    );
    let tweets = generated_tweets(600, 11);
    for chunk in tweets.chunks(100) {
        assert!(
            s.add_docs("commons", "twitter-kinesis-demo", chunk)
                .iter()
                .all(|d| d["status"] == "ADDED")
        );
    }
    check_six_queries(&s, &tweets);
}

/// The six queries of the tutorial over `twitter-kinesis-demo`, which holds exactly
/// `tweets` (at least 100 of them, all made within the last minute).
pub fn check_six_queries(s: &TestServer, tweets: &[Value]) {
    let n = tweets.len() as i64;
    // Live Tweets: all were made just now, so the newest 100, newest first.
    let rows = s.query(
        "SELECT t.timestamp_ms, t.created_at AS created_at, t.text AS text, t.user.screen_name AS screen_name \
         FROM \"twitter-kinesis-demo\" t WHERE CAST(timestamp_ms AS INT) > UNIX_MILLIS(current_timestamp() - minutes(1)) \
         ORDER BY timestamp_ms DESC LIMIT 100;",
    );
    assert_eq!(rows.len(), 100);
    let ts: Vec<&str> = rows
        .iter()
        .map(|r| r["timestamp_ms"].as_str().unwrap())
        .collect();
    assert!(ts.windows(2).all(|w| w[0] >= w[1]));
    assert!(
        rows.iter()
            .all(|r| r["screen_name"].is_string() && r["created_at"].is_string())
    );

    // Top Hashtags (typo fixed): lower-cased hashtags of extended tweets in the last hour.
    let mut top: HashMap<String, i64> = HashMap::new();
    for t in tweets {
        for h in hashtags(t, &["extended_tweet", "entities", "hashtags"]) {
            *top.entry(h.to_lowercase()).or_default() += 1;
        }
    }
    let top_sql = "WITH lastest_hashtags AS (SELECT lower(ht.text) AS hashtag FROM \"twitter-kinesis-demo\" t, \
         unnest(t.extended_tweet.entities.hashtags) ht WHERE CAST(t.timestamp_ms AS INT) > UNIX_MILLIS(current_timestamp() - hours(1))) \
         SELECT count(hashtag) AS tweet_count, hashtag FROM latest_hashtags GROUP BY hashtag ORDER BY tweet_count DESC LIMIT 10;";
    let (st, body) = s.post("/v1/orgs/self/queries", &json!({"sql": {"query": top_sql}}));
    assert_eq!(st, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("a CTE named 'lastest_hashtags'"),
        "{body}"
    );
    let rows = s.query(&top_sql.replace("lastest_hashtags", "latest_hashtags"));
    check_top(&rows, "hashtag", "tweet_count", &top, 10);

    // Incoming Tweets: a count over the last two seconds (its value depends on timing).
    let rows = s.query(
        "SELECT count(*) FROM \"twitter-kinesis-demo\" WHERE cast(timestamp_ms AS INT) > unix_millis(current_timestamp() - seconds(2));",
    );
    assert!(rows[0]["?count"].as_i64().unwrap() <= n);

    // Influencers: users tweeting #music, by followers.
    let with_music: Vec<&Value> = tweets
        .iter()
        .filter(|t| {
            hashtags(t, &["entities", "hashtags"])
                .iter()
                .any(|h| h == "music")
        })
        .collect();
    let mut users: Vec<(String, i64)> = with_music
        .iter()
        .map(|t| {
            (
                t["user"]["screen_name"].as_str().unwrap().to_owned(),
                t["user"]["followers_count"].as_i64().unwrap(),
            )
        })
        .collect();
    users.sort_by_key(|u| std::cmp::Reverse(u.1));
    users.dedup();
    let rows = s.query(
        "SELECT t.user.screen_name, t.user.followers_count AS fc FROM \"twitter-kinesis-demo\" t \
         WHERE 'music' IN (SELECT hashtags.text FROM unnest(t.entities.hashtags) hashtags) \
         GROUP BY (t.user.screen_name, t.user.followers_count) ORDER BY t.user.followers_count DESC LIMIT 5;",
    );
    let got: Vec<i64> = rows.iter().map(|r| r["fc"].as_i64().unwrap()).collect();
    let want: Vec<i64> = users.iter().take(5).map(|u| u.1).collect();
    assert_eq!(got, want);
    assert!(rows.iter().all(|r| r["screen_name"].is_string()));

    // Related Hashtags: as printed (t.entites) nothing, with a warning; fixed, the co-occurring tags.
    let related_sql = "SELECT hashtags.text as hashtag, count(*) AS occurence_count FROM \"twitter-kinesis-demo\" t, \
         unnest(t.entites.hashtags) hashtags WHERE 'music' IN (SELECT ht.text FROM unnest(t.entities.hashtags) ht) \
         AND hashtags.text != 'music' GROUP BY hashtags.text ORDER BY occurence_count DESC LIMIT 10;";
    let (st, body) = s.post(
        "/v1/orgs/self/queries",
        &json!({"sql": {"query": related_sql}}),
    );
    assert_eq!(st, 200);
    assert_eq!(body["results"], json!([]));
    assert!(
        body["warnings"][0]
            .as_str()
            .unwrap()
            .contains("did you mean t.entities.hashtags?"),
        "{body}"
    );
    let mut related: HashMap<String, i64> = HashMap::new();
    for t in &with_music {
        for h in hashtags(t, &["entities", "hashtags"])
            .into_iter()
            .filter(|h| h != "music")
        {
            *related.entry(h).or_default() += 1;
        }
    }
    let rows = s.query(&related_sql.replace("entites", "entities"));
    check_top(&rows, "hashtag", "occurence_count", &related, 10);

    // Live Tweets for a hashtag, the hashtag view's third panel, with a parameter.
    let (st, body) = s.post(
        "/v1/orgs/self/queries",
        &json!({"sql": {"query": "SELECT count(*) AS n FROM \"twitter-kinesis-demo\" t WHERE :tag IN (SELECT ht.text FROM unnest(t.entities.hashtags) ht) AND CAST(timestamp_ms AS INT) > UNIX_MILLIS(current_timestamp() - minutes(1))",
            "parameters": [{"name": "tag", "type": "string", "value": "music"}]}}),
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        body["results"][0]["n"].as_i64().unwrap(),
        with_music.len() as i64
    );
}
