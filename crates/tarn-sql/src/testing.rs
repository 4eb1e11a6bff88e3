//! Test helpers shared by the crate's unit tests.

use std::sync::Arc;

use serde_json::{Value, json};
use tarn_storage::document::{IngestContext, prepare};
use tarn_storage::{CollectionOptions, SealPolicy, Storage};

use crate::QueryEngine;

/// A fresh storage with collection `c` in `commons` holding `doc`, and an engine over it;
/// the directory lives as long as the returned guard.
pub(crate) async fn engine_over(doc: Value) -> (tempfile::TempDir, Arc<Storage>, QueryEngine) {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), SealPolicy::default()).unwrap();
    let (_, c) = storage
        .create_collection(
            "commons",
            "c",
            "",
            CollectionOptions::default(),
            Default::default(),
        )
        .unwrap();
    let meta = json!(null);
    let ctx = IngestContext {
        event_time_info: None,
        now_micros: 0,
        meta: &meta,
    };
    let text = doc.to_string().into_bytes();
    c.insert(vec![(prepare(doc, &ctx).unwrap(), text)], Vec::new())
        .await
        .unwrap();
    let engine = QueryEngine::new(storage.clone());
    (dir, storage, engine)
}
