//! The Kafka source: a consumer group over all partitions of a topic with `rdkafka`, each
//! batch stored with the next offset of every partition it read, in the same log record.
//!
//! Checkpoints are `kafka/{topic}/{partition}` → the next offset to read. The positions
//! tarn stored, not the group's committed offsets, decide where reading resumes: on every
//! assignment the partitions start at the stored offsets, and a message below a stored
//! offset is skipped. Offsets are committed to Kafka too, after they are durable in tarn,
//! so the group's lag shows in Kafka's own tools.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use serde_json::json;

use crate::integrations::KafkaSettings;
use crate::kinesis::StartPosition;
use crate::pipeline::{RawRecord, SourceSink};

const MAX_BATCH: usize = 5_000;
/// How long a batch waits for more messages after its first: bounds the added latency.
const BATCH_WINDOW: Duration = Duration::from_millis(15);
const LAG_EVERY: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What a Kafka source reads.
#[derive(Clone, Debug)]
pub struct KafkaSpec {
    pub topic: String,
    pub start: StartPosition,
    /// The consumer group: one per collection and topic.
    pub group_id: String,
}

fn checkpoint_key(topic: &str, partition: i32) -> String {
    format!("kafka/{topic}/{partition}")
}

/// Next offsets per partition of `topic`, as stored in the collection.
fn stored_positions(checkpoints: &BTreeMap<String, String>, topic: &str) -> BTreeMap<i32, i64> {
    let prefix = format!("kafka/{topic}/");
    checkpoints
        .iter()
        .filter_map(|(k, v)| {
            let p = k.strip_prefix(&prefix)?.parse().ok()?;
            Some((p, v.parse().ok()?))
        })
        .collect()
}

/// Starts assigned partitions at tarn's stored offsets.
struct SourceContext {
    topic: String,
    positions: Arc<Mutex<BTreeMap<i32, i64>>>,
}

impl ClientContext for SourceContext {}

impl ConsumerContext for SourceContext {
    fn rebalance(
        &self,
        base_consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let positions = self.positions.lock().clone();
                let assigned: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                for (topic, partition) in &assigned {
                    if *topic == self.topic
                        && let Some(next) = positions.get(partition)
                        && let Err(e) =
                            tpl.set_partition_offset(topic, *partition, Offset::Offset(*next))
                    {
                        tracing::error!(%topic, partition, error = %e, "cannot start the partition at its stored offset");
                    }
                }
                tracing::info!(topic = %self.topic, partitions = ?assigned.iter().map(|a| a.1).collect::<Vec<_>>(), "partitions assigned");
                if let Err(e) = base_consumer.assign(tpl) {
                    tracing::error!(topic = %self.topic, error = %e, "assigning partitions failed");
                }
            }
            other => {
                if other != RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                    tracing::warn!(topic = %self.topic, error = ?other, "rebalance error; partitions released");
                }
                if let Err(e) = base_consumer.unassign() {
                    tracing::error!(topic = %self.topic, error = %e, "releasing partitions failed");
                }
            }
        }
    }
}

/// Runs the source until the task is aborted; errors put it in ERROR and are retried.
pub async fn run(sink: Arc<SourceSink>, settings: KafkaSettings, spec: KafkaSpec) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let started = Instant::now();
        if let Err(message) = consume(&sink, &settings, &spec).await {
            sink.status.error(message);
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(200);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One consumer's life: returns an error when it must be recreated.
async fn consume(
    sink: &Arc<SourceSink>,
    settings: &KafkaSettings,
    spec: &KafkaSpec,
) -> Result<(), String> {
    let bootstrap = settings.bootstrap_servers.as_deref().ok_or_else(|| {
        "the Kafka integration has no bootstrap_servers: set \"bootstrap_servers\": \"host:9092\" in its kafka settings".to_owned()
    })?;
    let topic = spec.topic.clone();
    let positions = Arc::new(Mutex::new(stored_positions(
        &sink.collection.checkpoints(),
        &topic,
    )));
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", &spec.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // A fetch with nothing to return waits at most this long at the broker: this bounds
        // how stale an idle partition's next record can be (librdkafka's default is 500).
        .set("fetch.wait.max.ms", "10")
        .set(
            "auto.offset.reset",
            match spec.start {
                StartPosition::Earliest => "earliest",
                StartPosition::Latest => "latest",
            },
        );
    for (k, v) in &settings.client_config {
        config.set(k, v);
    }
    let consumer: StreamConsumer<SourceContext> = config
        .create_with_context(SourceContext {
            topic: topic.clone(),
            positions: positions.clone(),
        })
        .map_err(|e| format!("cannot create a Kafka consumer for {bootstrap}: {e}"))?;
    consumer
        .subscribe(&[&topic])
        .map_err(|e| format!("cannot subscribe to Kafka topic '{topic}': {e}"))?;
    let consumer = Arc::new(consumer);
    sink.status.watching();
    let mut last_lag = Instant::now();
    loop {
        let first = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await;
        let mut batch: Vec<(i32, i64, Option<Vec<u8>>)> = Vec::new();
        match first {
            Err(_) => sink.status.idle(),
            Ok(Err(e)) => {
                // Broker errors are often transient; librdkafka reconnects by itself.
                sink.status.error(format!("Kafka topic '{topic}': {e}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(Ok(m)) => {
                batch.push((m.partition(), m.offset(), m.payload().map(<[u8]>::to_vec)));
                let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
                while batch.len() < MAX_BATCH {
                    match tokio::time::timeout_at(deadline, consumer.recv()).await {
                        Ok(Ok(m)) => {
                            batch.push((m.partition(), m.offset(), m.payload().map(<[u8]>::to_vec)))
                        }
                        _ => break,
                    }
                }
            }
        }
        if !batch.is_empty() {
            store_batch(sink, &consumer, &topic, &positions, batch).await?;
        }
        if last_lag.elapsed() >= LAG_EVERY {
            last_lag = Instant::now();
            update_lag(sink, &consumer, &topic, &positions).await;
        }
    }
}

async fn store_batch(
    sink: &Arc<SourceSink>,
    consumer: &Arc<StreamConsumer<SourceContext>>,
    topic: &str,
    positions: &Arc<Mutex<BTreeMap<i32, i64>>>,
    batch: Vec<(i32, i64, Option<Vec<u8>>)>,
) -> Result<(), String> {
    let known = positions.lock().clone();
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut records = Vec::with_capacity(batch.len());
    for (partition, offset, payload) in batch {
        // Already stored (delivered again after a rebalance or a restart): skip.
        if known.get(&partition).is_some_and(|n| offset < *n) {
            continue;
        }
        next.insert(partition, offset + 1);
        records.push(RawRecord {
            data: payload.unwrap_or_default(),
            position: format!("{topic}/{partition}@{offset}"),
            meta: json!({"source": "kafka", "topic": topic, "partition": partition, "offset": offset}),
        });
    }
    if next.is_empty() {
        return Ok(());
    }
    let checkpoints = next
        .iter()
        .map(|(p, o)| (checkpoint_key(topic, *p), o.to_string()))
        .collect();
    sink.write(records, checkpoints).await.map_err(|e| {
        // Nothing was stored; a new consumer starts again from the stored offsets.
        format!(
            "storing messages of Kafka topic '{topic}' failed: {}",
            e.message
        )
    })?;
    positions.lock().extend(next.iter().map(|(p, o)| (*p, *o)));
    let mut tpl = TopicPartitionList::new();
    for (p, o) in &next {
        let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(*o));
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        tracing::debug!(%topic, error = %e, "committing offsets to Kafka failed (tarn's own positions are durable)");
    }
    Ok(())
}

/// Messages behind per assigned partition: high watermark minus the next offset.
async fn update_lag(
    sink: &Arc<SourceSink>,
    consumer: &Arc<StreamConsumer<SourceContext>>,
    topic: &str,
    positions: &Arc<Mutex<BTreeMap<i32, i64>>>,
) {
    let consumer = consumer.clone();
    let topic = topic.to_owned();
    let positions = positions.lock().clone();
    let lags = tokio::task::spawn_blocking(move || {
        let assigned = consumer.assignment().ok()?;
        let mut lags = Vec::new();
        for e in assigned.elements() {
            if let Ok((low, high)) =
                consumer.fetch_watermarks(&topic, e.partition(), Duration::from_secs(1))
            {
                let next = positions.get(&e.partition()).copied().unwrap_or(low);
                lags.push((e.partition(), (high - next).max(0)));
            }
        }
        Some(lags)
    })
    .await
    .ok()
    .flatten();
    for (p, lag) in lags.unwrap_or_default() {
        sink.status.set_lag(&p.to_string(), lag);
    }
}
