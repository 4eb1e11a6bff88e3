//! Stream sources (Kinesis, Kafka) that feed collections exactly once, and the integrations
//! that hold their credentials.
//!
//! Every source stores a batch of documents together with the stream positions it came
//! from in one write of the collection ([`tarn_storage::Collection::prepare_source_insert`]:
//! durable with them once sealed, or logged with them), and resumes from the stored
//! positions: so after a crash at any moment each record is in the collection exactly once. This crate does not link DataFusion; the SQL layer supplies the
//! `field_mapping_query` transformation through [`pipeline::TransformFactory`].

pub mod integrations;
pub mod kafka;
pub mod kinesis;
pub mod manager;
pub mod pipeline;
pub mod producer;

pub use integrations::{Integration, IntegrationStore};
pub use manager::SourceManager;
