//! `tarn bench --kafka`: sustained ingest from a Kafka topic (librdkafka's mock cluster, in
//! this process) through the real Kafka source: freshness from produce to counted by a
//! query at given rates, and the highest rate the source drains a backlog at.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::mocking::MockCluster;
use serde_json::json;
use tarn_ingest::producer::KafkaWriter;
use tarn_sql::QueryRequest;
use tarn_storage::{DEFAULT_WORKSPACE, SealPolicy, Storage};

use crate::bench::{BenchArgs, cpu_seconds, percentile};
use crate::tweets::TweetGenerator;
use tarn_common::time::{machine_steal_seconds, process_system_cpu_seconds as system_cpu_seconds};

/// Creates a collection reading `topic` through the real source manager.
fn kafka_collection(
    state: &tarn_server::AppState,
    name: &str,
    topic: &str,
) -> anyhow::Result<Arc<tarn_storage::Collection>> {
    let mut extra = serde_json::Map::new();
    extra.insert(
        "sources".into(),
        json!([{"integration_name": "bench-kafka", "kafka": {"kafka_topic_name": topic, "offset_reset_policy": "EARLIEST"}}]),
    );
    state.sources.validate(&extra)?;
    let (info, c) =
        state
            .storage
            .create_collection(DEFAULT_WORKSPACE, name, "", Default::default(), extra)?;
    state.sources.start(&info, &c)?;
    Ok(c)
}

async fn count(state: &tarn_server::AppState, name: &str) -> anyhow::Result<u64> {
    let out = state
        .engine
        .query(&QueryRequest {
            sql: format!("SELECT COUNT(*) AS n FROM {name}"),
            ..Default::default()
        })
        .await?;
    Ok(out.results[0]["n"].as_u64().unwrap_or(0))
}

/// The id of the calling thread (`/proc/thread-self` links to `/proc/PID/task/TID`).
fn own_thread_id() -> Option<u32> {
    std::fs::read_link("/proc/thread-self")
        .ok()?
        .file_name()?
        .to_str()?
        .parse()
        .ok()
}

/// How much of `cpu` seconds the kernel took, and what the hypervisor stole meanwhile:
/// on a virtual machine whose host takes back freed memory, fresh pages cost the kernel
/// (and the host) several times more, and runs with much of either measured the host.
fn kernel_and_host(system_cpu: f64, cpu: f64, steal: f64) -> String {
    format!(
        "{:.0}% of the process's CPU in the kernel, {steal:.1} s stolen by the hypervisor",
        100.0 * system_cpu / cpu.max(1e-9)
    )
}

/// CPU time of the mock broker's own thread (librdkafka names it `rdk:mock`): in this
/// process here, on other machines in a deployment.
fn broker_cpu_seconds() -> f64 {
    tarn_common::time::threads_cpu_seconds("rdk:mock")
}

/// What librdkafka's mock broker keeps of a partition (`rdkafka_mock.c`: 5 MiB); it deletes
/// older records. Topics get enough partitions that a whole round fits, so a consumer that
/// falls behind is measured as late, not as records the broker threw away.
const MOCK_PARTITION_BYTES: usize = 5 << 20;

/// The backlog goes into the partitions in turn, this many messages at a time: each run is
/// one message set, as a producer's batch is (librdkafka's sticky partitioner puts 10 ms of
/// messages into one partition). Messages spread one by one made message sets of one or
/// two messages, and the mock broker, which finds the set holding an offset by walking the
/// partition's list of them from its start, spent 9% of the drain's CPU doing so (a real
/// broker looks offsets up in an index). Runs of 32 tweets (about 100 KB) fill every
/// partition evenly, so none goes past what the mock keeps.
const BACKLOG_RUN: usize = 32;

/// Partitions for `bytes` of messages: at least 4, each filled to half of what the mock
/// keeps on average (room for the uneven spread of sticky partitioning).
fn partitions_for(bytes: usize) -> i32 {
    (bytes / (MOCK_PARTITION_BYTES / 2) + 1).clamp(4, 512) as i32
}

/// Fails when `messages` of `bytes` in all, put into `partitions` in turn `run` at a time,
/// would not fit what the mock broker keeps of a partition (`option` makes them fewer).
fn ensure_partitions_hold(
    bytes: usize,
    messages: usize,
    partitions: i32,
    run: usize,
    option: &str,
) -> anyhow::Result<()> {
    // What a partition holds, plus a run of slack for the uneven split.
    let per_partition = bytes / partitions as usize + bytes / messages.max(1) * run;
    anyhow::ensure!(
        per_partition < MOCK_PARTITION_BYTES,
        "{messages} tweets ({} MB) do not fit the mock broker's {partitions} partitions \
         of {} MB: give {option} less",
        bytes / 1_000_000,
        MOCK_PARTITION_BYTES / 1_000_000
    );
    Ok(())
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let (dir, rates, secs, backlog) = (
        args.dir.as_path(),
        &args.kafka_rates,
        args.kafka_secs,
        args.kafka_backlog,
    );
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let cluster = MockCluster::new(1).context("starting librdkafka's mock cluster")?;
    let bootstrap = cluster.bootstrap_servers();
    let storage = Storage::open(&dir.join("data"), SealPolicy::default())?;
    let state = tarn_server::AppState::new(storage.clone())?;
    let mut body = serde_json::Map::new();
    body.insert("name".into(), json!("bench-kafka"));
    body.insert(
        "kafka".into(),
        json!({"bootstrap_servers": bootstrap, "kafka_data_format": "JSON"}),
    );
    state.sources.integrations().create(body)?;
    let mut generator =
        TweetGenerator::new(7, vec!["music".into(), "facebook".into(), "apple".into()]);

    for (round, &rate) in rates.iter().enumerate() {
        let total = (rate * secs) as usize;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let tweets: Vec<Vec<u8>> = (0..total)
            .map(|_| serde_json::to_vec(&generator.tweet(now_ms)).expect("JSON"))
            .collect();
        let bytes: usize = tweets.iter().map(Vec::len).sum();
        let topic = format!("steady-{round}");
        let partitions = partitions_for(bytes);
        let per_tick = (rate as usize / 100).max(1);
        ensure_partitions_hold(bytes, total, partitions, per_tick, "--kafka-secs")?;
        cluster.create_topic(&topic, partitions, 1)?;
        let name = format!("steady{round}");
        let c = kafka_collection(&state, &name, &topic)?;
        // Warm up: the consumer group forms (librdkafka's mock waits 3 s for members) before
        // anything is timed.
        let warm = KafkaWriter::connect(&format!("kafka://{bootstrap}/{topic}"))
            .map_err(anyhow::Error::msg)?;
        warm.send(&[br#"{"warm_up": true}"#.to_vec()])
            .map_err(anyhow::Error::msg)?;
        drop(warm);
        while count(&state, &name).await? < 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Send time of each message, in microseconds since `epoch`.
        let epoch = Instant::now();
        let (cpu_at_start, broker_cpu_at_start) = (cpu_seconds(), broker_cpu_seconds());
        let (system_at_start, steal_at_start) = (system_cpu_seconds(), machine_steal_seconds());
        let sent_us: Arc<Vec<AtomicU64>> =
            Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
        let url = format!("kafka://{bootstrap}/{topic}");
        let sent = sent_us.clone();
        let producer = std::thread::Builder::new()
            .name("bench-producer".into())
            .spawn(move || -> anyhow::Result<f64> {
                // This thread and the client threads `connect` starts: the producer's CPU,
                // which a deployment spends on other machines.
                let before = tarn_common::time::thread_ids();
                let w = KafkaWriter::connect(&url).map_err(anyhow::Error::msg)?;
                let mut producer_threads: Vec<u32> = tarn_common::time::thread_ids()
                    .difference(&before)
                    .copied()
                    .collect();
                producer_threads.extend(own_thread_id());
                // 100 sends a second at the target rate, each into the next partition in
                // turn: what librdkafka's sticky partitioner does (10 ms of messages into one
                // partition), with every partition filled alike, so none outgrows what the
                // mock broker keeps (it deletes the oldest records, and the consumer skips
                // them: they would count as lost).
                let mut next = Instant::now();
                for (k, chunk) in tweets.chunks(per_tick).enumerate() {
                    let t = epoch.elapsed().as_micros() as u64;
                    for i in 0..chunk.len() {
                        sent[k * per_tick + i].store(t, Ordering::Relaxed);
                    }
                    w.enqueue_to(k as i32 % partitions, chunk)
                        .map_err(anyhow::Error::msg)?;
                    next += Duration::from_millis(10);
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                w.flush().map_err(anyhow::Error::msg)?;
                Ok(tarn_common::time::thread_ids_cpu_seconds(&producer_threads))
            })?;
        // Poll the count; a message counts as fresh when the count first covers it.
        let mut fresh_ms = Vec::new();
        let mut seen = 0usize;
        let deadline = Instant::now() + Duration::from_secs(secs * 4 + 30);
        while seen < total && Instant::now() < deadline {
            // The warm-up document is not one of the timed messages.
            let n = (count(&state, &name).await? as usize).saturating_sub(1);
            let now_us = epoch.elapsed().as_micros() as u64;
            for i in seen..n.min(total) {
                let s = sent_us[i].load(Ordering::Relaxed);
                if s > 0 && i % 10 == 0 {
                    fresh_ms.push((now_us.saturating_sub(s)) as f64 / 1e3);
                }
            }
            seen = seen.max(n);
            // Every 5 ms: finer polling measured its own queries (a sixth of the CPU at
            // 2 ms) more than the source.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (cpu, broker_cpu) = (
            cpu_seconds() - cpu_at_start,
            broker_cpu_seconds() - broker_cpu_at_start,
        );
        let (system, steal) = (
            system_cpu_seconds() - system_at_start,
            machine_steal_seconds() - steal_at_start,
        );
        let elapsed = epoch.elapsed().as_secs_f64();
        let producer_cpu = producer
            .join()
            .map_err(|_| anyhow::anyhow!("producer panicked"))??;
        let mb_s = bytes as f64 / 1e6 / (secs as f64);
        if fresh_ms.is_empty() {
            println!("kafka {rate}/s: nothing arrived");
            continue;
        }
        // Cores busy over the round, split: when they add up to all of them, the producer
        // and broker in this process took what tarn needed to keep up.
        let busy = |cpu_s: f64| cpu_s / elapsed;
        println!(
            "kafka at {rate} tweets/s ({mb_s:.1} MB/s offered, {partitions} partitions): {seen} of {total} stored in {elapsed:.1} s; \
             freshness (produced → counted by a query) p50 {:.1} ms, p99 {:.1} ms; \
             cores busy of {cores}: tarn {:.2}, the in-process broker {:.2}, the producer {:.2}; {}",
            percentile(&mut fresh_ms, 0.5),
            percentile(&mut fresh_ms, 0.99),
            busy(cpu - broker_cpu - producer_cpu),
            busy(broker_cpu),
            busy(producer_cpu),
            kernel_and_host(system, cpu, steal),
        );
        drop(c);
    }

    // The highest rate: a backlog already in the topic, drained by a new collection.
    let now_ms = chrono::Utc::now().timestamp_millis();
    let tweets: Vec<Vec<u8>> = (0..backlog)
        .map(|_| serde_json::to_vec(&generator.tweet(now_ms)).expect("JSON"))
        .collect();
    let bytes: usize = tweets.iter().map(Vec::len).sum();
    let partitions = partitions_for(bytes);
    ensure_partitions_hold(bytes, backlog, partitions, BACKLOG_RUN, "--kafka-backlog")?;
    cluster.create_topic("backlog", partitions, 1)?;
    let w = KafkaWriter::connect(&format!("kafka://{bootstrap}/backlog"))
        .map_err(anyhow::Error::msg)?;
    for (run, chunk) in tweets.chunks(BACKLOG_RUN).enumerate() {
        w.enqueue_to(run as i32 % partitions, chunk)
            .map_err(anyhow::Error::msg)?;
    }
    w.flush().map_err(anyhow::Error::msg)?;
    drop(w);
    let started = Instant::now();
    let backlog_collection = kafka_collection(&state, "backlog", "backlog")?;
    // Stops with what it saw when the count stands still for 30 s (records lost, or the
    // source stuck), rather than waiting out a long deadline.
    let (mut last, mut moved) = (0usize, Instant::now());
    // The consumer group's join (the broker waits 3 s for more members before it assigns
    // partitions) is latency, not throughput: the rate is timed from the first record on.
    let mut first: Option<DrainMark> = None;
    // Half way: the rate from here on is the sustained one. The first half also pays for
    // the memory ingest grows into once (the mutable segment, the one being sealed, the
    // batches in flight), faulted in fresh from the kernel.
    let mut half: Option<DrainMark> = None;
    loop {
        // The collection's document count (what its stats report), not a SQL COUNT(*):
        // a query every 20 ms would take a few percent of the two cores being measured.
        let n = backlog_collection.stats().doc_count as usize;
        if n > 0 && first.is_none() {
            first = Some(DrainMark::now(n));
        }
        if n >= backlog / 2 && half.is_none() {
            half = Some(DrainMark::now(n));
        }
        if n >= backlog {
            break;
        }
        if n != last {
            (last, moved) = (n, Instant::now());
        }
        anyhow::ensure!(
            moved.elapsed() < Duration::from_secs(30),
            "the backlog stopped draining at {n} of {backlog} stored ({:.0} s in)",
            started.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs_taken = started.elapsed().as_secs_f64();
    let end = DrainMark::now(backlog);
    let first = first.expect("the loop ends with records stored");
    let half = half.expect("the loop ends with records stored");
    let tweet_mb = bytes as f64 / 1e6 / backlog as f64;
    let whole = first.rate_until(&end, tweet_mb);
    let second_half = half.rate_until(&end, tweet_mb);
    println!(
        "kafka backlog of {backlog} tweets ({:.0} MB, {partitions} partitions) stored in {secs_taken:.1} s, \
         the first after {:.1} s (the consumer group's join); from then on {:.0} tweets/s, {}; \
         over the second half (sustained, the memory grown into): {}",
        bytes as f64 / 1e6,
        secs_taken - whole.secs,
        whole.tweets / whole.secs,
        whole.describe(cores),
        second_half.describe(cores),
    );
    state.sources.stop_all();
    storage.close();
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// The state of the process at a point of the drain.
struct DrainMark {
    at: Instant,
    cpu: f64,
    broker_cpu: f64,
    system_cpu: f64,
    steal: f64,
    faults: u64,
    stored: usize,
}

impl DrainMark {
    fn now(stored: usize) -> DrainMark {
        DrainMark {
            at: Instant::now(),
            cpu: cpu_seconds(),
            broker_cpu: broker_cpu_seconds(),
            system_cpu: system_cpu_seconds(),
            steal: machine_steal_seconds(),
            faults: tarn_common::time::process_minor_faults(),
            stored,
        }
    }

    fn rate_until(&self, end: &DrainMark, tweet_mb: f64) -> DrainRate {
        let tweets = end.stored.saturating_sub(self.stored) as f64;
        DrainRate {
            secs: (end.at - self.at).as_secs_f64().max(1e-9),
            tweets,
            mb: tweets * tweet_mb,
            cpu: (end.cpu - self.cpu).max(1e-9),
            broker_cpu: end.broker_cpu - self.broker_cpu,
            system_cpu: end.system_cpu - self.system_cpu,
            steal: end.steal - self.steal,
            faults: end.faults.saturating_sub(self.faults),
        }
    }
}

/// What the drain did between two marks.
struct DrainRate {
    secs: f64,
    tweets: f64,
    mb: f64,
    cpu: f64,
    broker_cpu: f64,
    system_cpu: f64,
    steal: f64,
    faults: u64,
}

impl DrainRate {
    fn describe(&self, cores: f64) -> String {
        let mbps = self.mb / self.secs;
        // Page faults are fresh memory the kernel had to map and zero: memory returned to
        // the system and faulted in again costs CPU that the figures include.
        format!(
            "{mbps:.1} MB/s ({:.1} MB/s per core over {cores} cores, the in-process broker sharing them); \
             {:.1} MB per CPU-second of the process, {:.1} of tarn without the broker's thread \
             ({:.0}% of the CPU used); {:.0} page faults per MB; {}",
            mbps / cores,
            self.mb / self.cpu,
            self.mb / (self.cpu - self.broker_cpu).max(1e-9),
            100.0 * self.broker_cpu / self.cpu,
            self.faults as f64 / self.mb.max(1e-9),
            kernel_and_host(self.system_cpu, self.cpu, self.steal),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_hold_a_whole_round_in_the_mock_broker() {
        assert_eq!(partitions_for(0), 4);
        let bytes = 600_000_000;
        let p = partitions_for(bytes) as usize;
        assert!(p * MOCK_PARTITION_BYTES >= bytes * 2, "{p} partitions");
    }

    #[test]
    fn a_round_that_outgrows_the_mock_brokers_partitions_is_refused() {
        // 20,000 tweets/s of 3 KB for 10 s, 200 a tick, each tick into the next partition.
        let (bytes, messages) = (603_000_000, 200_000);
        let p = partitions_for(bytes);
        assert!(ensure_partitions_hold(bytes, messages, p, 200, "--kafka-secs").is_ok());
        // The most partitions there are (512) cannot hold 100 s of it.
        let err = ensure_partitions_hold(bytes * 10, messages * 10, 512, 200, "--kafka-secs")
            .expect_err("6 GB do not fit 512 partitions of 5 MiB");
        assert!(err.to_string().contains("give --kafka-secs less"), "{err}");
    }
}
