//! SQL over tarn collections: DataFusion planning over live snapshots, pruning, JSON results.

pub mod catalog;
pub mod dialect;
pub mod engine;
pub mod functions;
pub mod mapping;
pub mod paths;
pub mod pgcatalog;
pub mod prune;
pub mod rewrite;
pub mod subfields;
pub mod table;
#[cfg(test)]
mod testing;

pub use engine::{ColumnField, QueryEngine, QueryOutput, QueryRequest};
pub use rewrite::QueryParameter;
