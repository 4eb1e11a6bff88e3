//! The Kinesis source: every shard read in parallel with the official SDK, resharding
//! followed, and each batch stored with its shard's sequence number in the same write.
//!
//! Checkpoints are `kinesis/{stream}/{shard}` → the last stored sequence number, or
//! [`SHARD_END`] once a closed shard has been read to its end. A child shard is read only
//! after its parents reached [`SHARD_END`] (or were trimmed from the stream), so records of
//! one partition key stay in order across a split or a merge.
//!
//! LATEST is fixed once, durably: before its first read the source stores the time it
//! starts (`kinesis/{stream}/@start`, milliseconds since the epoch), and every shard
//! without a position is read from that time on (`AT_TIMESTAMP`). So a crash before a
//! shard's first record, or a restart, loses none of the records that arrived since the
//! collection began reading.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kinesis::error::{DisplayErrorContext, SdkError};
use aws_sdk_kinesis::types::{Shard, ShardIteratorType};
use serde_json::json;
use tokio::task::JoinSet;

use crate::integrations::KinesisSettings;
use crate::pipeline::{RawRecord, SourceSink};

/// The checkpoint value of a shard read to its end.
pub const SHARD_END: &str = "SHARD_END";
/// How often the shard list is read again to find children of split or merged shards.
const RELIST_EVERY: Duration = Duration::from_secs(5);
/// Pause after an empty read; AWS allows 5 reads per second per shard.
const EMPTY_READ_PAUSE: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const RECORDS_PER_READ: i32 = 10_000;

/// Where a new shard starts when no position is stored for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartPosition {
    Earliest,
    Latest,
}

/// What a Kinesis source reads.
#[derive(Clone, Debug)]
pub struct KinesisSpec {
    pub stream_name: String,
    pub region: Option<String>,
    pub start: StartPosition,
}

/// Builds a Kinesis client from an integration's settings. The endpoint is the
/// integration's `endpoint`, else `AWS_ENDPOINT_URL_KINESIS` or `AWS_ENDPOINT_URL` (read by
/// the SDK's own configuration loader), else AWS.
pub async fn client(settings: &KinesisSettings, region: Option<&str>) -> Client {
    let region = region
        .map(str::to_owned)
        .or_else(|| settings.region.clone())
        .or_else(|| std::env::var("AWS_REGION").ok())
        .unwrap_or_else(|| "us-west-2".to_owned());
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).region(Region::new(region));
    if let (Some(id), Some(secret)) = (&settings.access_key_id, &settings.secret_access_key) {
        loader = loader.credentials_provider(Credentials::new(
            id,
            secret,
            None,
            None,
            "tarn-integration",
        ));
    }
    if let Some(e) = &settings.endpoint {
        loader = loader.endpoint_url(e);
    }
    let mut config = loader.load().await;
    if let Some(arn) = &settings.role_arn {
        // The server's own credentials (environment, profile, instance role) assume the role.
        let mut b = aws_config::sts::AssumeRoleProvider::builder(arn).session_name("tarn");
        if let Some(id) = &settings.external_id {
            b = b.external_id(id);
        }
        let provider = b.configure(&config).build().await;
        config = config
            .into_builder()
            .credentials_provider(aws_sdk_kinesis::config::SharedCredentialsProvider::new(
                provider,
            ))
            .build();
    }
    Client::new(&config)
}

fn checkpoint_key(stream: &str, shard: &str) -> String {
    format!("kinesis/{stream}/{shard}")
}

/// When a LATEST source started reading: shards without a position start there.
fn start_key(stream: &str) -> String {
    format!("kinesis/{stream}/@start")
}

/// The stored start of a LATEST source, or now, stored before it is used.
async fn fix_latest_start(sink: &SourceSink, stream: &str) -> Result<i64, String> {
    if let Some(ms) = sink
        .collection
        .checkpoints()
        .get(&start_key(stream))
        .and_then(|v| v.parse().ok())
    {
        return Ok(ms);
    }
    let now_ms = chrono::Utc::now().timestamp_millis();
    sink.collection
        .insert(Vec::new(), vec![(start_key(stream), now_ms.to_string())])
        .await
        .map_err(|e| {
            format!(
                "cannot store where Kinesis stream '{stream}' starts: {}",
                e.message
            )
        })?;
    Ok(now_ms)
}

/// An SDK error as one line, with the service's own message.
fn describe<E: std::error::Error + 'static, R: std::fmt::Debug>(e: &SdkError<E, R>) -> String {
    format!("{}", DisplayErrorContext(e))
}

/// Runs the source until the task is aborted: lists shards, starts a reader per readable
/// shard, and lists again to follow resharding. Errors put the source in ERROR and are
/// retried.
pub async fn run(sink: Arc<SourceSink>, settings: KinesisSettings, spec: KinesisSpec) {
    let client = client(&settings, spec.region.as_deref()).await;
    let stream = spec.stream_name.clone();
    let mut backoff = Duration::from_millis(200);
    let latest_from = loop {
        if spec.start == StartPosition::Earliest {
            break None;
        }
        match fix_latest_start(&sink, &stream).await {
            Ok(ms) => break Some(ms),
            Err(message) => {
                sink.status.error(message);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    };
    let mut readers: JoinSet<(String, bool)> = JoinSet::new();
    let mut running: HashSet<String> = HashSet::new();
    loop {
        let shards = match list_shards(&client, &stream).await {
            Ok(s) => {
                backoff = Duration::from_millis(200);
                s
            }
            Err(message) => {
                sink.status.error(message);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if running.is_empty() && sink.status.state() != crate::pipeline::SourceState::Processing {
            sink.status.watching();
        }
        let checkpoints = sink.collection.checkpoints();
        let listed: HashSet<&str> = shards.iter().map(Shard::shard_id).collect();
        let done = |id: &str| {
            checkpoints
                .get(&checkpoint_key(&stream, id))
                .map(String::as_str)
                == Some(SHARD_END)
        };
        for shard in &shards {
            let id = shard.shard_id().to_owned();
            if running.contains(&id) || done(&id) {
                continue;
            }
            let parents: Vec<&str> = [shard.parent_shard_id(), shard.adjacent_parent_shard_id()]
                .into_iter()
                .flatten()
                .collect();
            // A parent still in the stream must be read to its end first.
            if parents.iter().any(|p| listed.contains(p) && !done(p)) {
                continue;
            }
            let has_parent = parents.iter().any(|p| listed.contains(p));
            let start = match checkpoints.get(&checkpoint_key(&stream, &id)) {
                Some(seq) => ShardStart::After(seq.clone()),
                // A child of a shard we read continues where the parent ended.
                None if has_parent => ShardStart::Earliest,
                None => match latest_from {
                    Some(ms) => ShardStart::AtMillis(ms),
                    None => ShardStart::Earliest,
                },
            };
            running.insert(id.clone());
            readers.spawn(read_shard(
                sink.clone(),
                client.clone(),
                stream.clone(),
                id,
                start,
            ));
        }
        // Wait for a reader to finish (its shard closed) or for the next listing.
        tokio::select! {
            Some(joined) = readers.join_next() => {
                if let Ok((id, _ended)) = joined {
                    running.remove(&id);
                    sink.status.remove_lag(&id);
                }
            }
            _ = tokio::time::sleep(RELIST_EVERY) => {}
        }
    }
}

async fn list_shards(client: &Client, stream: &str) -> Result<Vec<Shard>, String> {
    let mut shards = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let req = match &token {
            Some(t) => client.list_shards().next_token(t),
            None => client.list_shards().stream_name(stream),
        };
        match req.send().await {
            Ok(out) => {
                shards.extend(out.shards().iter().cloned());
                match out.next_token() {
                    Some(t) => token = Some(t.to_owned()),
                    None => return Ok(shards),
                }
            }
            Err(e) => {
                let not_found = e
                    .as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception());
                return Err(if not_found {
                    format!(
                        "Kinesis stream '{stream}' does not exist (or the integration's credentials cannot see it); retrying"
                    )
                } else {
                    format!(
                        "cannot list the shards of Kinesis stream '{stream}': {}",
                        describe(&e)
                    )
                });
            }
        }
    }
}

#[derive(Clone)]
enum ShardStart {
    Earliest,
    /// Records that arrived at or after this time (milliseconds since the epoch).
    AtMillis(i64),
    After(String),
}

async fn shard_iterator(
    client: &Client,
    stream: &str,
    shard: &str,
    start: &ShardStart,
) -> Result<String, String> {
    let req = client
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id(shard);
    let req = match start {
        ShardStart::Earliest => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
        ShardStart::AtMillis(ms) => req
            .shard_iterator_type(ShardIteratorType::AtTimestamp)
            .timestamp(aws_sdk_kinesis::primitives::DateTime::from_millis(*ms)),
        ShardStart::After(seq) => req
            .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
            .starting_sequence_number(seq),
    };
    let out = req.send().await.map_err(|e| {
        format!(
            "cannot open shard {shard} of Kinesis stream '{stream}': {}",
            describe(&e)
        )
    })?;
    out.shard_iterator()
        .map(str::to_owned)
        .ok_or_else(|| format!("Kinesis gave no iterator for shard {shard} of '{stream}'"))
}

/// Reads one shard to its end (returns `(shard, true)`), storing each non-empty read with
/// the sequence number of its last record.
async fn read_shard(
    sink: Arc<SourceSink>,
    client: Client,
    stream: String,
    shard: String,
    mut start: ShardStart,
) -> (String, bool) {
    let key = checkpoint_key(&stream, &shard);
    let mut iterator: Option<String> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        let it = match &iterator {
            Some(it) => it.clone(),
            None => match shard_iterator(&client, &stream, &shard, &start).await {
                Ok(it) => it,
                Err(message) => {
                    sink.status.error(message);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        let out = match client
            .get_records()
            .shard_iterator(&it)
            .limit(RECORDS_PER_READ)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let service = e.as_service_error();
                if service.is_some_and(|s| s.is_expired_iterator_exception()) {
                    // Iterators live five minutes: open a new one at the stored position.
                    iterator = None;
                    continue;
                }
                if service.is_some_and(|s| s.is_provisioned_throughput_exceeded_exception()) {
                    tracing::debug!(%stream, %shard, "read throttled; backing off");
                } else {
                    sink.status.error(format!(
                        "reading shard {shard} of Kinesis stream '{stream}' failed: {}",
                        describe(&e)
                    ));
                    iterator = None;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        if let Some(lag) = out.millis_behind_latest() {
            sink.status.set_lag(&shard, lag);
        }
        let records = out.records();
        let next = out.next_shard_iterator().map(str::to_owned);
        if let Some(last) = records.last() {
            let last_seq = last.sequence_number().to_owned();
            let raw: Vec<RawRecord> = records
                .iter()
                .map(|r| RawRecord {
                    data: r.data().as_ref().to_vec(),
                    position: format!("{shard}:{}", r.sequence_number()),
                    meta: json!({"source": "kinesis", "stream": stream, "shard_id": shard,
                        "sequence_number": r.sequence_number(), "partition_key": r.partition_key()}),
                })
                .collect();
            let mut cps = vec![(key.clone(), last_seq.clone())];
            if next.is_none() {
                cps = vec![(key.clone(), SHARD_END.to_owned())];
            }
            if let Err(e) = sink.write(raw, cps).await {
                // Nothing was stored: read the same records again after a pause.
                sink.status.error(format!(
                    "storing records of shard {shard} failed: {}",
                    e.message
                ));
                iterator = None;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            start = ShardStart::After(last_seq);
        } else if next.is_none()
            && let Err(e) = sink
                .collection
                .insert(Vec::new(), vec![(key.clone(), SHARD_END.to_owned())])
                .await
        {
            sink.status.error(format!(
                "recording the end of shard {shard} failed: {}",
                e.message
            ));
            tokio::time::sleep(backoff).await;
            continue;
        }
        match next {
            None => {
                tracing::info!(%stream, %shard, "shard closed and read to its end");
                return (shard, true);
            }
            Some(n) => iterator = Some(n),
        }
        if records.is_empty() {
            if out.millis_behind_latest().unwrap_or(0) == 0 {
                sink.status.idle();
            }
            tokio::time::sleep(EMPTY_READ_PAUSE).await;
        }
    }
}

/// The stored positions of a stream's shards, for status and tests.
pub fn positions(checkpoints: &BTreeMap<String, String>, stream: &str) -> BTreeMap<String, String> {
    let prefix = format!("kinesis/{stream}/");
    checkpoints
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|s| (s.to_owned(), v.clone())))
        .filter(|(shard, _)| !shard.starts_with('@'))
        .collect()
}
