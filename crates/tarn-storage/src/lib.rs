//! tarn's storage engine: documents in, consistent columnar snapshots out, nothing lost.
//!
//! - [`jsonscan`] splits request bodies into documents without recursion.
//! - [`document`] resolves `_id`, `_event_time` and `_meta`.
//! - [`types`], [`build`], [`adapt`], [`to_json`]: the JSON ⇄ Arrow mapping.
//! - [`wal`]: the write-ahead log. [`segment`]: batches, statistics, deletion bitmaps, and
//!   the files sealed segments are read from ([`layout`]: struct fields as columns;
//!   [`narrow`]: copies with only the fields a query reads);
//!   [`cache`]: their decoded columns.
//! - [`collection`]: one collection's writer and sealer. [`catalog`]: all of them.

pub mod adapt;
pub mod build;
pub mod cache;
pub mod catalog;
pub mod collection;
pub mod direct;
pub mod document;
pub mod jsonscan;
pub mod layout;
pub mod narrow;
pub mod segment;
pub mod summary;
pub mod tape;
pub mod to_json;
pub mod types;
pub mod wal;

pub use catalog::{CollectionInfo, DEFAULT_WORKSPACE, Storage, WorkspaceInfo};
pub use collection::{
    Collection, CollectionOptions, CollectionStats, DocStatus, SealPolicy, SegmentEntry,
    SegmentList, Snapshot,
};
pub use document::{Document, EventTimeInfo, IngestContext};
