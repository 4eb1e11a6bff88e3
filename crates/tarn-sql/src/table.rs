//! The DataFusion table of a collection: a snapshot of its segments, adapted to one schema.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use tarn_storage::Snapshot;
use tarn_storage::adapt::adapt_batch;

use crate::prune::may_match;

/// A collection as DataFusion sees it during one query.
///
/// Contract: the schema is the collection schema at the moment the query looked the table up,
/// and every batch the scan returns has exactly that schema (projected). Rows deleted,
/// replaced or past retention at that moment are never returned; documents that arrive
/// later are not seen by this query.
#[derive(Debug)]
pub struct CollectionTable {
    pub workspace: String,
    pub name: String,
    snapshot: Snapshot,
}

impl CollectionTable {
    pub fn new(workspace: String, name: String, snapshot: Snapshot) -> Self {
        CollectionTable {
            workspace,
            name,
            snapshot,
        }
    }
}

fn internal(e: tarn_common::TarnError) -> DataFusionError {
    DataFusionError::Internal(e.to_string())
}

#[async_trait]
impl datafusion::catalog::TableProvider for CollectionTable {
    fn schema(&self) -> SchemaRef {
        self.snapshot.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Filters only prune whole segments; DataFusion still applies them to the rows.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = self.snapshot.schema.clone();
        let projected: SchemaRef = match projection {
            Some(p) => Arc::new(schema.project(p)?),
            None => schema.clone(),
        };
        let cutoff = self.snapshot.retention_cutoff;
        let mut batches: Vec<RecordBatch> = Vec::new();
        for entry in &self.snapshot.segments {
            let stats = &entry.segment.stats;
            if entry.live_rows() == 0
                || cutoff.is_some_and(|c| stats.max_event_time < c)
                || !filters.iter().all(|f| may_match(stats, f))
            {
                continue;
            }
            let mut mask: Option<datafusion::arrow::array::BooleanArray> =
                (!entry.deleted.is_empty()).then(|| entry.deleted.keep_mask(stats.rows as usize));
            if let Some(c) = cutoff.filter(|c| stats.min_event_time < *c) {
                let et = entry
                    .segment
                    .batch
                    .column_by_name(tarn_storage::types::EVENT_TIME)
                    .ok_or_else(|| {
                        DataFusionError::Internal("segment without _event_time".into())
                    })?;
                let keep = datafusion::arrow::compute::kernels::cmp::gt_eq(
                    et,
                    &datafusion::arrow::array::Scalar::new(
                        datafusion::arrow::array::TimestampMicrosecondArray::from(vec![c])
                            .with_timezone("UTC"),
                    ),
                )?;
                mask = Some(match mask {
                    Some(m) => datafusion::arrow::compute::and(&m, &keep)?,
                    None => keep,
                });
            }
            let mut batch = adapt_batch(&entry.segment.batch, &projected).map_err(internal)?;
            if let Some(m) = mask {
                batch = datafusion::arrow::compute::filter_record_batch(&batch, &m)?;
            }
            if batch.num_rows() > 0 {
                batches.push(batch);
            }
        }
        let n = state
            .config()
            .target_partitions()
            .max(1)
            .min(batches.len().max(1));
        let mut partitions: Vec<Vec<RecordBatch>> = vec![Vec::new(); n];
        for (i, b) in batches.into_iter().enumerate() {
            partitions[i % n].push(b);
        }
        Ok(MemorySourceConfig::try_new_exec(
            &partitions,
            projected,
            None,
        )?)
    }
}
