//! A generator of tweets shaped like Twitter's v1.1 streaming API, with Zipf-distributed hashtags.

use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Value, json};

const WORDS: &[&str] = &[
    "the",
    "new",
    "song",
    "album",
    "today",
    "live",
    "love",
    "this",
    "great",
    "show",
    "tonight",
    "phone",
    "update",
    "check",
    "out",
    "my",
    "video",
    "best",
    "ever",
    "release",
    "tour",
    "concert",
    "app",
    "watch",
    "news",
    "big",
    "day",
    "with",
    "friends",
    "just",
    "got",
    "playlist",
    "listening",
    "amazing",
    "stream",
    "launch",
    "store",
    "event",
    "week",
    "free",
];
const TAGS: &[&str] = &[
    "music",
    "nowplaying",
    "apple",
    "facebook",
    "iphone",
    "spotify",
    "hiphop",
    "pop",
    "rock",
    "jazz",
    "kpop",
    "news",
    "tech",
    "android",
    "ios",
    "mac",
    "ipad",
    "instagram",
    "love",
    "art",
    "photography",
    "travel",
    "food",
    "fashion",
    "fitness",
    "sports",
    "football",
    "nba",
    "gaming",
    "crypto",
    "bitcoin",
    "ai",
    "startup",
    "marketing",
    "design",
    "covid19",
    "vote",
    "netflix",
    "movies",
    "tv",
    "books",
    "health",
    "nature",
    "weekend",
    "monday",
    "friday",
    "sale",
    "giveaway",
    "edm",
    "country",
    "rnb",
    "indie",
    "metal",
    "classical",
    "dj",
    "remix",
    "newmusic",
    "soundcloud",
];
const LANGS: &[&str] = &["en", "en", "en", "en", "es", "pt", "ja", "fr", "de", "und"];
const PLACES: &[&str] = &[
    "Los Angeles, CA",
    "London",
    "New York",
    "Tokyo",
    "São Paulo",
    "Berlin",
    "",
    "Lagos",
    "Mumbai",
];

/// Makes tweets. Hashtag popularity follows a Zipf law over a vocabulary; tracked terms are
/// made common, as `statuses/filter?track=` would.
pub struct TweetGenerator {
    rng: StdRng,
    vocabulary: Vec<String>,
    zipf_cdf: Vec<f64>,
    track: Vec<String>,
    next_id: i64,
}

impl TweetGenerator {
    pub fn new(seed: u64, track: Vec<String>) -> TweetGenerator {
        let mut vocabulary: Vec<String> = TAGS.iter().map(|s| s.to_string()).collect();
        for i in 0..940 {
            vocabulary.push(format!("{}{}", TAGS[i % TAGS.len()], i / TAGS.len() + 2));
        }
        let weights: Vec<f64> = (1..=vocabulary.len())
            .map(|k| 1.0 / (k as f64).powf(1.1))
            .collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let zipf_cdf = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        let rng: StdRng = rand::SeedableRng::seed_from_u64(seed);
        TweetGenerator {
            rng,
            vocabulary,
            zipf_cdf,
            track,
            next_id: 1_335_000_000_000_000_000 + (seed as i64 % 1_000_000) * 1_000_000,
        }
    }

    fn hashtag(&mut self) -> String {
        if !self.track.is_empty() && self.rng.random_bool(0.3) {
            return self.track[self.rng.random_range(0..self.track.len())].clone();
        }
        let x: f64 = self.rng.random();
        let i = self
            .zipf_cdf
            .partition_point(|c| *c < x)
            .min(self.vocabulary.len() - 1);
        self.vocabulary[i].clone()
    }

    fn words(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| WORDS[self.rng.random_range(0..WORDS.len())])
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn user(&mut self) -> Value {
        let uid: i64 = self.rng.random_range(10_000..2_000_000_000);
        let screen = format!(
            "{}_{}{}",
            WORDS[(uid % 40) as usize],
            TAGS[(uid % 58) as usize],
            uid % 1000
        );
        let followers = (10f64.powf(self.rng.random_range(0.0..7.0))) as i64;
        json!({
            "id": uid, "id_str": uid.to_string(), "name": format!("User {uid}"), "screen_name": screen,
            "location": PLACES[self.rng.random_range(0..PLACES.len())], "url": null,
            "description": self.words(12), "translator_type": "none", "protected": false,
            "verified": followers > 1_000_000 && self.rng.random_bool(0.5),
            "followers_count": followers, "friends_count": self.rng.random_range(0..5000),
            "listed_count": self.rng.random_range(0..500), "favourites_count": self.rng.random_range(0..100_000),
            "statuses_count": self.rng.random_range(1..200_000), "created_at": "Tue Mar 03 22:02:05 +0000 2009",
            "utc_offset": null, "time_zone": null, "geo_enabled": self.rng.random_bool(0.3), "lang": null,
            "contributors_enabled": false, "is_translator": false,
            "profile_background_color": "C0DEED", "profile_background_image_url": "http://abs.twimg.com/images/themes/theme1/bg.png",
            "profile_background_image_url_https": "https://abs.twimg.com/images/themes/theme1/bg.png",
            "profile_background_tile": false, "profile_link_color": "1DA1F2", "profile_sidebar_border_color": "C0DEED",
            "profile_sidebar_fill_color": "DDEEF6", "profile_text_color": "333333", "profile_use_background_image": true,
            "profile_image_url": format!("http://pbs.twimg.com/profile_images/{uid}/photo_normal.jpg"),
            "profile_image_url_https": format!("https://pbs.twimg.com/profile_images/{uid}/photo_normal.jpg"),
            "profile_banner_url": format!("https://pbs.twimg.com/profile_banners/{uid}/1500000000"),
            "default_profile": self.rng.random_bool(0.5), "default_profile_image": false,
            "following": null, "follow_request_sent": null, "notifications": null
        })
    }

    fn entities(&mut self, tags: &[String], text: &str) -> Value {
        let hashtags: Vec<Value> = tags
            .iter()
            .map(|t| {
                let pos = text.find(&format!("#{t}")).unwrap_or(0);
                json!({"text": t, "indices": [pos, pos + t.len() + 1]})
            })
            .collect();
        let mention_id: i64 = self.rng.random_range(10_000..2_000_000_000);
        let mentions = if self.rng.random_bool(0.3) {
            json!([{"screen_name": format!("friend{}", mention_id % 10_000), "name": "Friend", "id": mention_id, "id_str": mention_id.to_string(), "indices": [0, 10]}])
        } else {
            json!([])
        };
        let urls = if self.rng.random_bool(0.4) {
            json!([{"url": "https://t.co/AbCdEfGh", "expanded_url": "https://example.com/story", "display_url": "example.com/story", "indices": [100, 123]}])
        } else {
            json!([])
        };
        json!({"hashtags": hashtags, "urls": urls, "user_mentions": mentions, "symbols": []})
    }

    fn status(&mut self, now_ms: i64, depth: u8) -> Value {
        self.next_id += self.rng.random_range(1..1_000_000);
        let id = self.next_id;
        let ntags = [0, 0, 1, 1, 1, 2, 2, 3][self.rng.random_range(0..8)];
        let tags: Vec<String> = (0..ntags).map(|_| self.hashtag()).collect();
        let n = self.rng.random_range(5..14);
        let mut text = self.words(n);
        if let Some(t) = self
            .track
            .first()
            .cloned()
            .filter(|_| self.rng.random_bool(0.5))
        {
            text = format!("{text} {t}");
        }
        for t in &tags {
            text.push_str(&format!(" #{t}"));
        }
        let long = self.rng.random_bool(0.35);
        let full_text = if long {
            format!("{text} {}", self.words(25))
        } else {
            text.clone()
        };
        let created = chrono::DateTime::from_timestamp_millis(now_ms)
            .unwrap_or_default()
            .format("%a %b %d %H:%M:%S +0000 %Y")
            .to_string();
        let entities = self.entities(&tags, &text);
        let mut tweet = json!({
            "created_at": created, "id": id, "id_str": id.to_string(),
            "text": if long { format!("{}…", &text.chars().take(120).collect::<String>()) } else { text.clone() },
            "source": "<a href=\"http://twitter.com/download/iphone\" rel=\"nofollow\">Twitter for iPhone</a>",
            "truncated": long, "in_reply_to_status_id": null, "in_reply_to_status_id_str": null,
            "in_reply_to_user_id": null, "in_reply_to_user_id_str": null, "in_reply_to_screen_name": null,
            "user": self.user(), "geo": null, "coordinates": null, "place": null, "contributors": null,
            "is_quote_status": false, "quote_count": self.rng.random_range(0..50), "reply_count": self.rng.random_range(0..100),
            "retweet_count": self.rng.random_range(0..1000), "favorite_count": self.rng.random_range(0..5000),
            "entities": entities, "favorited": false, "retweeted": false, "filter_level": "low",
            "lang": LANGS[self.rng.random_range(0..LANGS.len())],
        });
        if long {
            let ext_entities = self.entities(&tags, &full_text);
            tweet["extended_tweet"] = json!({"full_text": full_text, "display_text_range": [0, full_text.chars().count()], "entities": ext_entities});
        }
        if depth == 0 && self.rng.random_bool(0.25) {
            let age = self.rng.random_range(0..86_400_000);
            let inner = self.status(now_ms - age, 1);
            if self.rng.random_bool(0.7) {
                tweet["retweeted_status"] = inner;
            } else {
                tweet["is_quote_status"] = json!(true);
                tweet["quoted_status_id"] = inner["id"].clone();
                tweet["quoted_status_id_str"] = inner["id_str"].clone();
                tweet["quoted_status"] = inner;
            }
        }
        if depth == 0 {
            tweet["timestamp_ms"] = json!(now_ms.to_string());
        }
        tweet
    }

    /// One tweet created at `now_ms` (milliseconds since the epoch).
    pub fn tweet(&mut self, now_ms: i64) -> Value {
        self.status(now_ms, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tweets_have_the_streaming_shape_and_size() {
        let mut g = TweetGenerator::new(7, vec!["music".into()]);
        let tweets: Vec<Value> = (0..500).map(|i| g.tweet(1_607_000_000_000 + i)).collect();
        let sizes: Vec<usize> = tweets.iter().map(|t| t.to_string().len()).collect();
        let avg = sizes.iter().sum::<usize>() / sizes.len();
        assert!((2500..=5500).contains(&avg), "average size {avg}");
        let t = &tweets[0];
        for k in [
            "created_at",
            "id",
            "id_str",
            "text",
            "truncated",
            "user",
            "entities",
            "timestamp_ms",
            "lang",
        ] {
            assert!(t.get(k).is_some(), "missing {k}");
        }
        assert!(t["timestamp_ms"].is_string());
        let music = tweets
            .iter()
            .filter(|t| {
                t["entities"]["hashtags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|h| h["text"] == "music")
            })
            .count();
        assert!(music > 50, "tracked term is common: {music}");
        assert!(tweets.iter().any(|t| t.get("extended_tweet").is_some()));
        assert!(tweets.iter().any(|t| t.get("retweeted_status").is_some()));
    }
}
