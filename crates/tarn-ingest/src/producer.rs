//! Writers into Kinesis streams and Kafka topics, for `tarn produce` and for tests: the same
//! clients the sources read with, used from plain threads.

use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::integrations::KinesisSettings;

/// Query parameters of a sink URL (`?endpoint=...&region=...`).
fn query_params(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (p.to_owned(), String::new()),
        })
        .collect()
}

/// Puts records into a Kinesis stream with random partition keys, as the tutorial's
/// producer does.
pub struct KinesisWriter {
    rt: tokio::runtime::Runtime,
    client: aws_sdk_kinesis::Client,
    stream: String,
}

impl KinesisWriter {
    /// `kinesis://STREAM?endpoint=URL&region=REGION&shards=N`. Credentials come from the
    /// standard AWS environment; with an endpoint and none set, placeholder keys are used
    /// (local emulators accept any). `shards=N` creates the stream when it does not exist.
    pub fn connect(url: &str) -> Result<KinesisWriter, String> {
        let rest = url
            .strip_prefix("kinesis://")
            .ok_or_else(|| format!("a Kinesis sink starts with kinesis://, not {url}"))?;
        let (stream, query) = rest.split_once('?').unwrap_or((rest, ""));
        if stream.is_empty() {
            return Err("the Kinesis sink needs a stream: kinesis://STREAM?endpoint=...".into());
        }
        let params = query_params(query);
        let get = |k: &str| {
            params
                .iter()
                .find(|(pk, _)| pk == k)
                .map(|(_, v)| v.clone())
        };
        let endpoint = get("endpoint");
        let has_env_keys = std::env::var("AWS_ACCESS_KEY_ID").is_ok();
        let (id, secret) = match (&endpoint, has_env_keys) {
            (Some(_), false) => (Some("tarn".to_owned()), Some("tarn".to_owned())),
            _ => (None, None),
        };
        let settings = KinesisSettings {
            access_key_id: id,
            secret_access_key: secret,
            role_arn: None,
            external_id: None,
            endpoint,
            region: get("region"),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        let client = rt.block_on(crate::kinesis::client(&settings, None));
        let w = KinesisWriter {
            rt,
            client,
            stream: stream.to_owned(),
        };
        if let Some(n) = get("shards") {
            let n: i32 = n
                .parse()
                .map_err(|_| format!("shards={n} is not a number of shards"))?;
            w.create_if_missing(n)?;
        }
        Ok(w)
    }

    fn create_if_missing(&self, shards: i32) -> Result<(), String> {
        self.rt.block_on(async {
            let exists = self
                .client
                .describe_stream_summary()
                .stream_name(&self.stream)
                .send()
                .await
                .is_ok();
            if !exists {
                self.client
                    .create_stream()
                    .stream_name(&self.stream)
                    .shard_count(shards)
                    .send()
                    .await
                    .map_err(|e| {
                        format!(
                            "cannot create stream '{}': {}",
                            self.stream,
                            aws_sdk_kinesis::error::DisplayErrorContext(&e)
                        )
                    })?;
            }
            for _ in 0..100 {
                let s = self
                    .client
                    .describe_stream_summary()
                    .stream_name(&self.stream)
                    .send()
                    .await;
                if let Ok(s) = s
                    && s.stream_description_summary()
                        .is_some_and(|d| d.stream_status().as_str() == "ACTIVE")
                {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(format!("stream '{}' did not become ACTIVE", self.stream))
        })
    }

    /// Puts every record, retrying the ones Kinesis refused (throttling) until all are in.
    pub fn send(&self, records: &[Vec<u8>]) -> Result<(), String> {
        self.rt.block_on(async {
            for chunk in records.chunks(500) {
                let mut pending: Vec<&Vec<u8>> = chunk.iter().collect();
                let mut attempt = 0;
                while !pending.is_empty() {
                    let entries = pending
                        .iter()
                        .map(|r| {
                            PutRecordsRequestEntry::builder()
                                .data(Blob::new(r.as_slice()))
                                .partition_key(format!("{}", rand_key()))
                                .build()
                                .expect("data and partition key are set")
                        })
                        .collect::<Vec<_>>();
                    let out = self
                        .client
                        .put_records()
                        .stream_name(&self.stream)
                        .set_records(Some(entries))
                        .send()
                        .await
                        .map_err(|e| {
                            format!(
                                "put_records into '{}' failed: {}",
                                self.stream,
                                aws_sdk_kinesis::error::DisplayErrorContext(&e)
                            )
                        })?;
                    if out.failed_record_count().unwrap_or(0) == 0 {
                        break;
                    }
                    pending = pending
                        .into_iter()
                        .zip(out.records())
                        .filter(|(_, r)| r.error_code().is_some())
                        .map(|(p, _)| p)
                        .collect();
                    attempt += 1;
                    if attempt > 20 {
                        return Err(format!(
                            "{} records were refused by '{}' 20 times",
                            pending.len(),
                            self.stream
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
            }
            Ok(())
        })
    }
}

/// A random partition key, as `str(random.randint(...))` in the tutorial's producer.
fn rand_key() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

/// Produces messages to a Kafka topic.
pub struct KafkaWriter {
    producer: BaseProducer,
    topic: String,
}

impl KafkaWriter {
    /// `kafka://BROKER[,BROKER...]/TOPIC`.
    pub fn connect(url: &str) -> Result<KafkaWriter, String> {
        let rest = url
            .strip_prefix("kafka://")
            .ok_or_else(|| format!("a Kafka sink starts with kafka://, not {url}"))?;
        let (brokers, topic) = rest
            .split_once('/')
            .filter(|(b, t)| !b.is_empty() && !t.is_empty())
            .ok_or_else(|| format!("the Kafka sink is kafka://BROKERS/TOPIC, not {url}"))?;
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "5");
        let producer: BaseProducer = config
            .create()
            .map_err(|e| format!("cannot create a Kafka producer for {brokers}: {e}"))?;
        Ok(KafkaWriter {
            producer,
            topic: topic.to_owned(),
        })
    }

    /// Sends every message and waits until the brokers acknowledged them.
    pub fn send(&self, records: &[Vec<u8>]) -> Result<(), String> {
        self.enqueue(records)?;
        self.flush()
    }

    /// Waits until every enqueued message is acknowledged.
    pub fn flush(&self) -> Result<(), String> {
        self.producer
            .flush(Duration::from_secs(30))
            .map_err(|e| format!("flushing to '{}' failed: {e}", self.topic))
    }

    /// Hands messages to the producer's queue without waiting for acknowledgements (they
    /// go out within `linger.ms`); [`KafkaWriter::flush`] waits for them.
    pub fn enqueue(&self, records: &[Vec<u8>]) -> Result<(), String> {
        self.enqueue_into(records, None)
    }

    /// [`KafkaWriter::enqueue`] into one partition, rather than where the partitioner puts
    /// each message.
    pub fn enqueue_to(&self, partition: i32, records: &[Vec<u8>]) -> Result<(), String> {
        self.enqueue_into(records, Some(partition))
    }

    fn enqueue_into(&self, records: &[Vec<u8>], partition: Option<i32>) -> Result<(), String> {
        for r in records {
            let mut record: BaseRecord<'_, (), [u8]> = BaseRecord::to(&self.topic).payload(r);
            if let Some(p) = partition {
                record = record.partition(p);
            }
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((e, back)) => {
                        if matches!(
                            e.rdkafka_error_code(),
                            Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                        ) {
                            self.producer.poll(Duration::from_millis(10));
                            record = back;
                        } else {
                            return Err(format!("producing to '{}' failed: {e}", self.topic));
                        }
                    }
                }
            }
        }
        self.producer.poll(Duration::ZERO);
        Ok(())
    }
}
