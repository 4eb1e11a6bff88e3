//! The Kafka source: a consumer group over all partitions of a topic with `rdkafka`, each
//! batch stored with the next offset of every partition it read, in the same write.
//!
//! Checkpoints are `kafka/{topic}/{partition}` → the next offset to read. The positions
//! tarn stored, not the group's committed offsets, decide where reading resumes: on every
//! assignment the partitions start at the stored offsets (a partition without one at its
//! beginning), and a message below a stored offset is skipped. Offsets are committed to Kafka too, after they are durable in tarn,
//! so the group's lag shows in Kafka's own tools.
//!
//! LATEST is fixed once, durably, before the first message is read: the source stores the
//! high watermark of every partition as its position, with a `kafka/{topic}/started` marker,
//! in one log record. From then on a partition without a stored position (one added to the
//! topic later) is read from its beginning. So a crash before the first message, or a
//! restart after a quiet spell, loses none of the messages produced since the collection
//! began reading: LATEST means "from when the source started", not "from each restart".

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use serde_json::json;

use crate::integrations::KafkaSettings;
use crate::kinesis::StartPosition;
use crate::pipeline::{PreparedBatch, RawRecord, SourceSink};

const MAX_BATCH: usize = 5_000;
/// Batches being prepared or prepared and waiting to be stored, at most.
const PREPARED_AHEAD: usize = 2;
/// A source with nothing to read for this long shows as idle.
const IDLE_AFTER: Duration = Duration::from_millis(500);
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

/// Present once a LATEST source has stored where it starts.
fn started_key(topic: &str) -> String {
    format!("kafka/{topic}/started")
}

/// Stores, in one log record, the high watermark of every partition of the topic as its
/// position, and the marker that the start is fixed. A topic that does not exist yet gets
/// only the marker: its partitions will be read from their beginning.
async fn fix_latest_start(
    sink: &Arc<SourceSink>,
    config: &ClientConfig,
    topic: &str,
) -> Result<(), String> {
    let probe: BaseConsumer = config
        .create()
        .map_err(|e| format!("cannot create a Kafka client to find the latest offsets: {e}"))?;
    let t = topic.to_owned();
    let highs = tokio::task::spawn_blocking(move || -> Result<Vec<(i32, i64)>, String> {
        let metadata = probe
            .fetch_metadata(Some(&t), Duration::from_secs(10))
            .map_err(|e| format!("cannot read the partitions of Kafka topic '{t}': {e}"))?;
        let mut highs = Vec::new();
        for m in metadata.topics().iter().filter(|m| m.name() == t) {
            if m.error().is_some() {
                // Not created yet: every message it will hold comes after this start.
                continue;
            }
            for p in m.partitions() {
                let (_, high) = probe
                    .fetch_watermarks(&t, p.id(), Duration::from_secs(10))
                    .map_err(|e| {
                        format!(
                            "cannot read the latest offset of partition {} of Kafka topic '{t}': {e}",
                            p.id()
                        )
                    })?;
                highs.push((p.id(), high));
            }
        }
        Ok(highs)
    })
    .await
    .map_err(|e| format!("finding the latest offsets failed: {e}"))??;
    // Positions stored before the marker existed (an older tarn) stay where they are.
    let stored = stored_positions(&sink.collection.checkpoints(), topic);
    let highs: Vec<(i32, i64)> = highs
        .into_iter()
        .filter(|(p, _)| !stored.contains_key(p))
        .collect();
    let mut checkpoints: Vec<(String, String)> = highs
        .iter()
        .map(|(p, high)| (checkpoint_key(topic, *p), high.to_string()))
        .collect();
    checkpoints.push((started_key(topic), "LATEST".to_owned()));
    sink.collection
        .insert(Vec::new(), checkpoints)
        .await
        .map_err(|e| {
            format!(
                "cannot store where Kafka topic '{topic}' starts: {}",
                e.message
            )
        })?;
    tracing::info!(%topic, partitions = ?highs, "LATEST source starts at these offsets");
    Ok(())
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
                    // Without a stored position the partition is new to this source: all
                    // of it is read, whatever offset the group committed (another member
                    // of the group may have read it, into somewhere else).
                    let start = positions
                        .get(partition)
                        .map_or(Offset::Beginning, |next| Offset::Offset(*next));
                    if *topic == self.topic
                        && let Err(e) = tpl.set_partition_offset(topic, *partition, start)
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
        // When the local queue is full, librdkafka stops fetching for this long (default
        // 1000 ms): a backlog read faster than it is stored then idled the source for 0.6 s
        // of every second once the queue had drained. 10 ms resumes fetching as soon as
        // there is room.
        .set("fetch.queue.backoff.ms", "10")
        // A partition without a stored position is new to this source (LATEST stored every
        // partition it started with), so all of it is read.
        .set("auto.offset.reset", "earliest");
    for (k, v) in &settings.client_config {
        config.set(k, v);
    }
    if spec.start == StartPosition::Latest
        && !sink
            .collection
            .checkpoints()
            .contains_key(&started_key(&topic))
    {
        fix_latest_start(sink, &config, &topic).await?;
    }
    let positions = Arc::new(Mutex::new(stored_positions(
        &sink.collection.checkpoints(),
        &topic,
    )));
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
    // Reading the watermarks takes a broker round trip per partition: done beside the
    // consuming loop, which it held up for 100 ms every time when it ran inside it.
    let stop_lag = Arc::new(AtomicBool::new(false));
    let _lag = AbortOnDrop(
        tokio::spawn({
            let (sink, consumer, topic, positions, stop) = (
                sink.clone(),
                consumer.clone(),
                topic.clone(),
                positions.clone(),
                stop_lag.clone(),
            );
            async move {
                loop {
                    tokio::time::sleep(LAG_EVERY).await;
                    update_lag(&sink, &consumer, &topic, &positions, &stop).await;
                }
            }
        }),
        stop_lag,
    );
    // Batches flow through two stages: prepared (parsed and built, on every core), then
    // stored (applied by the writer's thread). Batches n+1 and n+2 are prepared while
    // batch n is stored, so the cores are not idle while the writer works nor at the
    // points where one batch's parallel pieces join. The next batch gathers
    // while the stages are busy: a slow stream is stored message by message (low latency)
    // and a fast one in large batches (few runs to merge), with no fixed window to wait out.
    // Batches leave preparation in the order read and are stored one at a time in that
    // order, so positions are stored in order, and a failure ends this consumer before
    // anything after it is stored.
    let mut batch: Vec<(i32, i64, Option<Vec<u8>>)> = Vec::new();
    // The next offset of each partition after every batch handed to the stages.
    let mut handed = positions.lock().clone();
    // The offsets last committed to the group.
    let committed = Mutex::new(BTreeMap::new());
    let mut preparing: FuturesOrdered<StageFuture<'_, Prepared>> = FuturesOrdered::new();
    let mut ready: VecDeque<Prepared> = VecDeque::new();
    let mut storing: Option<StageFuture<'_, (usize, Instant)>> = None;
    loop {
        let event = tokio::select! {
            done = async { storing.as_mut().expect("guarded by the condition").await },
                if storing.is_some() => Event::Stored(done),
            Some(done) = preparing.next(), if !preparing.is_empty() => Event::Prepared(done),
            m = consumer.recv(), if batch.len() < MAX_BATCH => match m {
                Ok(m) => {
                    batch.push(held(&m));
                    Event::Received
                }
                Err(e) => Event::Failed(e),
            },
            _ = tokio::time::sleep(IDLE_AFTER),
                if storing.is_none() && preparing.is_empty() && ready.is_empty() && batch.is_empty() => Event::Idle,
        };
        match event {
            Event::Stored(done) => {
                storing = None;
                let (records, started) = done?;
                tracing::debug!(%topic, records, store_ms = started.elapsed().as_secs_f64() * 1e3, "batch stored");
            }
            Event::Prepared(done) => {
                match done {
                    Ok(prepared) => ready.push_back(prepared),
                    Err(e) => {
                        // What is being stored was read before the failed batch: let it
                        // finish, so the next consumer starts from positions that no write
                        // in flight is still changing.
                        if let Some(store) = storing.take() {
                            store.await?;
                        }
                        return Err(e);
                    }
                }
            }
            Event::Received => {
                // The messages the client already holds join the batch at once, without a
                // turn of the select (which polls the stages too) for each.
                while batch.len() < MAX_BATCH {
                    match consumer.recv().now_or_never() {
                        Some(Ok(m)) => batch.push(held(&m)),
                        Some(Err(e)) => {
                            sink.status.error(format!("Kafka topic '{topic}': {e}"));
                            break;
                        }
                        None => break,
                    }
                }
            }
            Event::Failed(e) => {
                // Broker errors are often transient; librdkafka reconnects by itself.
                sink.status.error(format!("Kafka topic '{topic}': {e}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Event::Idle => sink.status.idle(),
        }
        if storing.is_none()
            && let Some(prepared) = ready.pop_front()
        {
            let (sink, consumer, topic, positions, committed) =
                (sink, &consumer, &topic, &positions, &committed);
            storing = Some(Box::pin(async move {
                let (records, started) = (prepared.batch.records(), Instant::now());
                store_prepared(sink, consumer, topic, positions, committed, prepared).await?;
                Ok((records, started))
            }));
        }
        if preparing.len() + ready.len() < PREPARED_AHEAD && !batch.is_empty() {
            let (records, next) =
                new_records(topic.as_str(), &mut handed, std::mem::take(&mut batch));
            if !next.is_empty() {
                let checkpoints = next
                    .iter()
                    .map(|(p, o)| (checkpoint_key(&topic, *p), o.to_string()))
                    .collect();
                let (sink, topic) = (sink, &topic);
                preparing.push_back(Box::pin(async move {
                    let batch = sink.prepare(records, checkpoints).await.map_err(|e| {
                        format!(
                            "preparing messages of Kafka topic '{topic}' failed: {}",
                            e.message
                        )
                    })?;
                    Ok(Prepared { batch, next })
                }));
            }
        }
    }
}

/// A message as the batch holds it: partition, offset and payload.
fn held(m: &impl Message) -> (i32, i64, Option<Vec<u8>>) {
    (m.partition(), m.offset(), m.payload().map(<[u8]>::to_vec))
}

/// A stage's work on a batch; an error ends the consumer.
type StageFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// A batch prepared and waiting to be stored, with the next offset of each partition in it.
struct Prepared {
    batch: PreparedBatch,
    next: BTreeMap<i32, i64>,
}

/// What woke the consuming loop.
enum Event {
    Stored(Result<(usize, Instant), String>),
    Prepared(Result<Prepared, String>),
    Received,
    Failed(rdkafka::error::KafkaError),
    Idle,
}

/// The records of `batch` not handed on before, and the next offset of each partition in
/// them; `handed` moves past them.
fn new_records(
    topic: &str,
    handed: &mut BTreeMap<i32, i64>,
    batch: Vec<(i32, i64, Option<Vec<u8>>)>,
) -> (Vec<RawRecord>, BTreeMap<i32, i64>) {
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut records = Vec::with_capacity(batch.len());
    for (partition, offset, payload) in batch {
        // Already stored, already on its way, or already in this batch: a rebalance
        // restarts a partition at its stored offset, and librdkafka delivers those
        // messages again, possibly into this same batch.
        if handed.get(&partition).is_some_and(|n| offset < *n) {
            continue;
        }
        handed.insert(partition, offset + 1);
        next.insert(partition, offset + 1);
        records.push(RawRecord {
            data: payload.unwrap_or_default(),
            position: format!("{topic}/{partition}@{offset}"),
            meta: json!({"source": "kafka", "topic": topic, "partition": partition, "offset": offset}),
        });
    }
    (records, next)
}

/// Stores a prepared batch with its positions, then tells Kafka the offsets that became
/// durable (tarn's own positions are what count; the group's committed offsets show its
/// lag in Kafka's tools). They move at the first batch stored after a seal made the
/// source's writes durable.
async fn store_prepared(
    sink: &Arc<SourceSink>,
    consumer: &Arc<StreamConsumer<SourceContext>>,
    topic: &str,
    positions: &Arc<Mutex<BTreeMap<i32, i64>>>,
    committed: &Mutex<BTreeMap<i32, i64>>,
    prepared: Prepared,
) -> Result<(), String> {
    sink.store(prepared.batch).await.map_err(|e| {
        // Nothing was stored; a new consumer starts again from the stored offsets.
        format!(
            "storing messages of Kafka topic '{topic}' failed: {}",
            e.message
        )
    })?;
    positions
        .lock()
        .extend(prepared.next.iter().map(|(p, o)| (*p, *o)));
    let durable = stored_positions(&sink.collection.durable_checkpoints(), topic);
    let mut tpl = TopicPartitionList::new();
    {
        let mut committed = committed.lock();
        for (p, o) in durable {
            if committed.insert(p, o) != Some(o) {
                let _ = tpl.add_partition_offset(topic, p, Offset::Offset(o));
            }
        }
    }
    if tpl.count() > 0
        && let Err(e) = consumer.commit(&tpl, CommitMode::Async)
    {
        tracing::debug!(%topic, error = %e, "committing offsets to Kafka failed (tarn's own positions are durable)");
    }
    Ok(())
}

/// Stops a task, and the blocking work it started, when its owner is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>, Arc<AtomicBool>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.1.store(true, Ordering::Relaxed);
        self.0.abort();
    }
}

/// Messages behind per assigned partition: high watermark minus the next offset.
async fn update_lag(
    sink: &Arc<SourceSink>,
    consumer: &Arc<StreamConsumer<SourceContext>>,
    topic: &str,
    positions: &Arc<Mutex<BTreeMap<i32, i64>>>,
    stop: &Arc<AtomicBool>,
) {
    let (consumer, stop) = (consumer.clone(), stop.clone());
    let topic = topic.to_owned();
    let positions = positions.lock().clone();
    let lags = tokio::task::spawn_blocking(move || {
        let assigned = consumer.assignment().ok()?;
        let mut lags = Vec::new();
        for e in assigned.elements() {
            // A round trip per partition, up to a second each when the broker is away:
            // a stopped source must not hold its consumer (and the process's exit) for
            // minutes until every partition has been asked.
            if stop.load(Ordering::Relaxed) {
                return None;
            }
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
