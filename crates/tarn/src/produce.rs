//! `tarn produce tweets`: generated tweets at a steady rate into a sink: stdout, a tarn
//! collection over HTTP, a Kinesis stream or a Kafka topic.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::tweets::TweetGenerator;

#[derive(clap::Args)]
pub struct ProduceArgs {
    /// What to produce (only `tweets` exists).
    pub what: String,
    /// Where to: `-` for NDJSON on stdout; `http://HOST:PORT/COLLECTION` (workspace
    /// `commons`) or `http://HOST:PORT/WORKSPACE/COLLECTION` for a tarn collection;
    /// `kinesis://STREAM?endpoint=URL&region=R&shards=N` for a Kinesis stream (random
    /// partition keys; `shards` creates the stream if missing); `kafka://BROKERS/TOPIC`.
    pub sink: String,
    /// Tweets per second.
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
    /// Terms that appear often as hashtags and in the text, as Twitter's `track` filter.
    #[arg(long, value_delimiter = ',', default_value = "music,facebook,apple")]
    pub track: Vec<String>,
    /// Stop after this many tweets (default: run until interrupted).
    #[arg(long)]
    pub count: Option<u64>,
    /// Seed of the generator, for reproducible streams.
    #[arg(long)]
    pub seed: Option<u64>,
}

enum Sink {
    Stdout(std::io::StdoutLock<'static>),
    Http { agent: ureq::Agent, url: String },
    Kinesis(tarn_ingest::producer::KinesisWriter),
    Kafka(tarn_ingest::producer::KafkaWriter),
}

impl Sink {
    fn parse(s: &str) -> anyhow::Result<Sink> {
        if s == "-" {
            return Ok(Sink::Stdout(std::io::stdout().lock()));
        }
        if let Some(rest) = s.strip_prefix("http://") {
            let (host, path) = rest
                .split_once('/')
                .context("the http sink needs a collection: http://HOST:PORT/COLLECTION")?;
            let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
            let (ws, coll) = match parts.as_slice() {
                [c] => ("commons", *c),
                [w, c] => (*w, *c),
                _ => bail!(
                    "the http sink is http://HOST:PORT/COLLECTION or http://HOST:PORT/WORKSPACE/COLLECTION, not {s}"
                ),
            };
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(30)))
                .build()
                .into();
            return Ok(Sink::Http {
                agent,
                url: format!("http://{host}/v1/orgs/self/ws/{ws}/collections/{coll}/docs"),
            });
        }
        if s.starts_with("kinesis://") {
            return tarn_ingest::producer::KinesisWriter::connect(s)
                .map(Sink::Kinesis)
                .map_err(anyhow::Error::msg);
        }
        if s.starts_with("kafka://") {
            return tarn_ingest::producer::KafkaWriter::connect(s)
                .map(Sink::Kafka)
                .map_err(anyhow::Error::msg);
        }
        bail!(
            "unknown sink '{s}': use '-' for stdout, http://HOST:PORT/COLLECTION, kinesis://STREAM?endpoint=URL or kafka://BROKERS/TOPIC"
        )
    }

    fn send(&mut self, tweets: &[Value]) -> anyhow::Result<()> {
        match self {
            Sink::Stdout(out) => {
                for t in tweets {
                    serde_json::to_writer(&mut *out, t)?;
                    out.write_all(b"\n")?;
                }
                out.flush()?;
            }
            Sink::Http { agent, url } => {
                // A few megabytes per request whatever the rate: one request per send at
                // 1,000,000 tweets/s was 300 MB, over the server's request limit (413).
                for chunk in tweets.chunks(HTTP_TWEETS_PER_REQUEST) {
                    let body = json!({"data": chunk}).to_string();
                    let mut resp = agent
                        .post(url.as_str())
                        .header("Content-Type", "application/json")
                        .send(body)
                        .with_context(|| format!("posting to {url}"))?;
                    let v: Value = resp.body_mut().read_json()?;
                    if let Some(bad) = v["data"]
                        .as_array()
                        .and_then(|d| d.iter().find(|s| s["status"] == "ERROR"))
                    {
                        bail!("tarn refused a tweet: {bad}");
                    }
                }
            }
            Sink::Kinesis(w) => w.send(&encode(tweets)).map_err(anyhow::Error::msg)?,
            Sink::Kafka(w) => w.send(&encode(tweets)).map_err(anyhow::Error::msg)?,
        }
        Ok(())
    }
}

fn encode(tweets: &[Value]) -> Vec<Vec<u8>> {
    tweets
        .iter()
        .map(|t| serde_json::to_vec(t).expect("JSON values serialize"))
        .collect()
}

/// Tweets per HTTP request: 3-5 MB, far below `MAX_REQUEST_BYTES` (64 MiB).
const HTTP_TWEETS_PER_REQUEST: usize = 1_000;

pub fn run(args: ProduceArgs) -> anyhow::Result<()> {
    if args.what != "tweets" {
        bail!("tarn can produce 'tweets', not '{}'", args.what);
    }
    let mut sink = Sink::parse(&args.sink)?;
    let mut generator =
        TweetGenerator::new(args.seed.unwrap_or_else(rand::random), args.track.clone());
    let rate = args.rate.max(1);
    // Ten sends a second, or one per tweet at low rates.
    let per_send = (rate / 10).max(1);
    let interval = Duration::from_secs_f64(per_send as f64 / rate as f64);
    let mut sent = 0u64;
    let mut next = Instant::now();
    loop {
        let n = match args.count {
            Some(c) if sent >= c => return Ok(()),
            Some(c) => per_send.min(c - sent),
            None => per_send,
        };
        let now_ms = chrono::Utc::now().timestamp_millis();
        let batch: Vec<Value> = (0..n).map(|_| generator.tweet(now_ms)).collect();
        sink.send(&batch)?;
        sent += n;
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}
