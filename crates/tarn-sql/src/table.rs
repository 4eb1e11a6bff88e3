//! The DataFusion table of a collection: a snapshot of its segments, adapted to one schema.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, BooleanArray, RecordBatch};
use datafusion::arrow::compute::{and, filter_record_batch, prep_null_mask_filter};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::Statistics;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, DataFusionError, Result};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PhysicalExpr, PlanProperties,
    SendableRecordBatchStream,
};
use tarn_storage::Snapshot;
use tarn_storage::adapt::adapt_batch;
use tarn_storage::layout::Subfields;

use crate::prune::Pruner;

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
    /// Struct columns of which the query reads only some fields (set by
    /// [`crate::subfields::NarrowStructScans`]); the scan returns the others as nulls.
    subfields: Arc<HashMap<String, Subfields>>,
}

impl CollectionTable {
    pub fn new(workspace: String, name: String, snapshot: Snapshot) -> Self {
        CollectionTable {
            workspace,
            name,
            snapshot,
            subfields: Arc::default(),
        }
    }

    pub fn subfields(&self) -> &HashMap<String, Subfields> {
        &self.subfields
    }

    /// The same snapshot, read with only these fields of these struct columns.
    pub fn with_subfields(&self, subfields: HashMap<String, Subfields>) -> Self {
        CollectionTable {
            workspace: self.workspace.clone(),
            name: self.name.clone(),
            snapshot: self.snapshot.clone(),
            subfields: Arc::new(subfields),
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
        // An optimization only: where the filter cannot be planned here, DataFusion's own
        // filter still applies after the scan.
        let row_filter = RowFilter::new(state, &schema, filters).unwrap_or_else(|e| {
            tracing::debug!(error = %e, "filters not applied in the scan");
            None
        });
        let pruner = Pruner::new(filters);
        let mut batches: Vec<RecordBatch> = Vec::new();
        for entry in &self.snapshot.segments {
            let stats = &entry.segment.stats;
            if entry.live_rows() == 0
                || cutoff.is_some_and(|c| stats.max_event_time < c)
                || !pruner.may_match(stats)
            {
                continue;
            }
            // Only the columns this scan touches: a sealed segment decodes just those.
            let segment = &entry
                .segment
                .read_fields(
                    |name| {
                        name == tarn_storage::types::NULLS
                            || (cutoff.is_some() && name == tarn_storage::types::EVENT_TIME)
                            || projected.column_with_name(name).is_some()
                            || row_filter
                                .as_ref()
                                .is_some_and(|f| f.columns.column_with_name(name).is_some())
                    },
                    &self.subfields,
                )
                .map_err(internal)?;
            let mut mask: Option<BooleanArray> =
                (!entry.deleted.is_empty()).then(|| entry.deleted.keep_mask(stats.rows as usize));
            if let Some(c) = cutoff.filter(|c| stats.min_event_time < *c) {
                let et = segment
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
                mask = both(mask, keep)?;
            }
            if let Some(keep) = row_filter.as_ref().and_then(|f| f.keep(segment)) {
                mask = both(mask, keep)?;
            }
            // Rows are dropped before the projected columns are adapted, so a narrow
            // time window copies and adapts its few rows, not its segments' thousands.
            let mut rows = segment.clone();
            if let Some(m) = mask {
                let kept = m.true_count();
                if kept == 0 {
                    continue;
                }
                if kept < m.len() {
                    let keep: Vec<usize> = (0..segment.num_columns())
                        .filter(|&i| {
                            let name = segment.schema_ref().field(i).name();
                            name == tarn_storage::types::NULLS
                                || projected.column_with_name(name).is_some()
                        })
                        .collect();
                    rows = filter_record_batch(&segment.project(&keep)?, &m)?;
                }
            }
            let batch = adapt_batch(&rows, &projected).map_err(internal)?;
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
        Ok(Arc::new(SegmentsExec::new(&partitions, projected)?))
    }
}

/// The scan's plan: DataFusion's in-memory source over the adapted segments, with its
/// statistics counted once, here. `MemorySourceConfig` computes them from its batches each
/// time an optimizer rule asks, walking every buffer of every column for byte sizes and
/// allocating for the null counts of all-null columns: over tweets' wide structs that was
/// a tenth of a narrow query's time (`perf` of `tarn serve`). Row counts stay exact, so
/// `count(*)` is still answered from them.
#[derive(Debug)]
struct SegmentsExec {
    inner: Arc<dyn ExecutionPlan>,
    /// Per partition, then for all of them.
    partitions: Vec<Arc<Statistics>>,
    total: Arc<Statistics>,
}

impl SegmentsExec {
    fn new(partitions: &[Vec<RecordBatch>], schema: SchemaRef) -> Result<Self> {
        let counted = |rows: usize| {
            let mut s = Statistics::new_unknown(&schema);
            s.num_rows = Precision::Exact(rows);
            Arc::new(s)
        };
        let rows: Vec<usize> = partitions
            .iter()
            .map(|p| p.iter().map(RecordBatch::num_rows).sum())
            .collect();
        Ok(SegmentsExec {
            total: counted(rows.iter().sum()),
            partitions: rows.into_iter().map(counted).collect(),
            inner: MemorySourceConfig::try_new_exec(partitions, schema.clone(), None)?,
        })
    }
}

impl DisplayAs for SegmentsExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "SegmentsExec: rows={:?}, ", self.total.num_rows)?;
        self.inner.fmt_as(t, f)
    }
}

impl ExecutionPlan for SegmentsExec {
    fn name(&self) -> &str {
        "SegmentsExec"
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.inner.apply_expressions(f)
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.inner.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal(
                "SegmentsExec is a leaf: it takes no children".into(),
            ))
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        self.inner.execute(partition, context)
    }

    fn partition_statistics(&self, partition: Option<usize>) -> Result<Arc<Statistics>> {
        Ok(match partition {
            Some(p) => self
                .partitions
                .get(p)
                .cloned()
                .unwrap_or_else(|| Arc::new(Statistics::new_unknown(&self.inner.schema()))),
            None => self.total.clone(),
        })
    }
}

/// Rows both masks keep; `keep` alone when there is no mask yet.
fn both(mask: Option<BooleanArray>, keep: BooleanArray) -> Result<Option<BooleanArray>> {
    Ok(Some(match mask {
        Some(m) => and(&m, &keep)?,
        None => keep,
    }))
}

/// The pushed-down filters that read only scalar top-level columns, evaluated on each
/// segment's own rows so that the scan drops what they reject before it adapts and copies
/// the wide columns (a tweet's `user` and `entities` structs). DataFusion still applies
/// every filter after the scan; this only saves it the rows that cannot pass.
struct RowFilter {
    expr: Arc<dyn PhysicalExpr>,
    /// The columns `expr` reads, as the collection schema types them.
    columns: SchemaRef,
}

impl RowFilter {
    fn new(state: &dyn Session, schema: &SchemaRef, filters: &[Expr]) -> Result<Option<Self>> {
        let scalar = |name: &str| {
            schema.field_with_name(name).is_ok_and(|f| {
                !matches!(
                    f.data_type(),
                    DataType::Struct(_) | DataType::List(_) | DataType::Map(_, _)
                )
            })
        };
        let usable: Vec<Expr> = filters
            .iter()
            .filter(|f| {
                !f.is_volatile()
                    && f.column_refs()
                        .iter()
                        .all(|c| c.relation.is_none() && scalar(&c.name))
            })
            .cloned()
            .collect();
        let Some(expr) = conjunction(usable) else {
            return Ok(None);
        };
        let mut names: Vec<String> = expr.column_refs().iter().map(|c| c.name.clone()).collect();
        names.sort();
        names.dedup();
        let fields: Vec<_> = names
            .iter()
            .map(|n| schema.field_with_name(n).cloned())
            .collect::<std::result::Result<_, _>>()?;
        let columns: SchemaRef = Arc::new(Schema::new(fields));
        let df_schema = DFSchema::try_from(columns.as_ref().clone())?;
        let expr = state.create_physical_expr(expr, &df_schema)?;
        Ok(Some(RowFilter { expr, columns }))
    }

    /// Which rows of `segment` may pass; `None` when that cannot be told here (the filter
    /// fails on these rows, say): then all of them go on to DataFusion, which decides.
    fn keep(&self, segment: &RecordBatch) -> Option<BooleanArray> {
        let input = adapt_batch(segment, &self.columns).ok()?;
        let value = self.expr.evaluate(&input).ok()?;
        let array = value.into_array(input.num_rows()).ok()?;
        let keep = array.as_any().downcast_ref::<BooleanArray>()?;
        // A row the filter makes NULL does not pass it either.
        Some(if keep.null_count() > 0 {
            prep_null_mask_filter(keep)
        } else {
            keep.clone()
        })
    }
}
