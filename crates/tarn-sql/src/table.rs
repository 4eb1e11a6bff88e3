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
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::expr_rewriter::unnormalize_col;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::create_physical_expr;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PhysicalExpr, PlanProperties,
    SendableRecordBatchStream,
};
use tarn_storage::adapt::adapt_batch;
use tarn_storage::layout::Subfields;
use tarn_storage::{SegmentEntry, Snapshot};

use crate::prune::{Keep, Pruner};

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
        // The filters the scan can evaluate on each segment's own rows it applies exactly,
        // so that DataFusion does not evaluate them again (parsing `timestamp_ms` twice for
        // every row of an hour was a third of Top Hashtags); the others only prune
        // segments, and DataFusion applies them to the rows.
        let schema = self.snapshot.schema.as_ref();
        Ok(filters
            .iter()
            .map(|f| {
                if RowFilter::applies_to(schema, f) {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Inexact
                }
            })
            .collect())
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
        // Every filter `supports_filters_pushdown` called exact is applied here.
        let exact: Vec<Expr> = filters
            .iter()
            .filter(|f| RowFilter::applies_to(&schema, f))
            .cloned()
            .collect();
        let row_filter = RowFilter::new(&schema, &exact)?;
        // All the filters rule segments out; only the exact ones, which are all the scan
        // evaluates, decide that a segment needs no evaluating (the others are
        // DataFusion's to apply after the scan either way).
        let pruner = Pruner::new(filters, &schema);
        let exact_pruner = (exact.len() < filters.len()).then(|| Pruner::new(&exact, &schema));
        let decide = |keep: Keep, exact_keep: Option<Keep>| match (keep, exact_keep) {
            (Keep::None, _) => None,
            (_, Some(Keep::All)) | (Keep::All, None) => Some(true),
            _ => Some(false),
        };
        let sealed = &self.snapshot.sealed;
        let sealed_keep = pruner.keep_each(sealed);
        let sealed_exact_keep = exact_pruner.as_ref().map(|p| p.keep_each(sealed));
        // Each segment that may hold rows that pass, and whether every row passes the
        // exact filters.
        let mut chosen: Vec<(&SegmentEntry, bool)> = Vec::new();
        for (i, entry) in sealed.entries.iter().enumerate() {
            if sealed.live_rows[i] > 0
                && cutoff.is_none_or(|c| sealed.event_times[i].1 >= c)
                && let Some(whole) =
                    decide(sealed_keep[i], sealed_exact_keep.as_ref().map(|k| k[i]))
            {
                chosen.push((entry, whole));
            }
        }
        for entry in &self.snapshot.runs {
            let stats = &entry.segment.stats;
            if entry.live_rows() > 0
                && cutoff.is_none_or(|c| stats.max_event_time >= c)
                && let Some(whole) = decide(
                    pruner.keep(stats),
                    exact_pruner.as_ref().map(|p| p.keep(stats)),
                )
            {
                chosen.push((entry, whole));
            }
        }
        let mut batches: Vec<RecordBatch> = Vec::new();
        for (entry, whole) in chosen {
            let stats = &entry.segment.stats;
            // Where the statistics show every row passes, the filters are not evaluated.
            let row_filter = row_filter.as_ref().filter(|_| !whole);
            // Only the columns this scan touches: a sealed segment decodes just those.
            let segment = &entry
                .segment
                .read_fields(
                    |name| {
                        name == tarn_storage::types::NULLS
                            || (cutoff.is_some() && name == tarn_storage::types::EVENT_TIME)
                            || projected.column_with_name(name).is_some()
                            || row_filter
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
            if let Some(f) = row_filter {
                mask = both(mask, f.keep(segment)?)?;
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
/// the wide columns (a tweet's `user` and `entities` structs). The scan tells DataFusion
/// these filters are exact: it does not apply them again.
struct RowFilter {
    expr: Arc<dyn PhysicalExpr>,
    /// The columns `expr` reads, as the collection schema types them.
    columns: SchemaRef,
}

impl RowFilter {
    /// Whether the scan applies `filter` itself: deterministic, over top-level scalar
    /// columns only, and plannable as a physical expression.
    fn applies_to(schema: &Schema, filter: &Expr) -> bool {
        Self::plan(schema, filter.clone()).is_ok()
    }

    /// The filters of `filters`, all of which [`RowFilter::applies_to`] accepts, as one.
    fn new(schema: &SchemaRef, filters: &[Expr]) -> Result<Option<Self>> {
        match conjunction(filters.to_vec()) {
            None => Ok(None),
            Some(expr) => Self::plan(schema, expr).map(Some),
        }
    }

    fn plan(schema: &Schema, expr: Expr) -> Result<Self> {
        // `supports_filters_pushdown` sees columns qualified by the table, `scan` does not.
        let expr = unnormalize_col(expr);
        let scalar = |name: &str| {
            schema.field_with_name(name).is_ok_and(|f| {
                !matches!(
                    f.data_type(),
                    DataType::Struct(_) | DataType::List(_) | DataType::Map(_, _)
                )
            })
        };
        if expr.is_volatile() {
            return Err(DataFusionError::Plan("a volatile filter".into()));
        }
        let mut names: Vec<String> = Vec::new();
        for c in expr.column_refs() {
            if !scalar(&c.name) {
                return Err(DataFusionError::Plan(format!(
                    "{} is not a top-level scalar column",
                    c.name
                )));
            }
            names.push(c.name.clone());
        }
        names.sort();
        names.dedup();
        let fields: Vec<_> = names
            .iter()
            .map(|n| schema.field_with_name(n).cloned())
            .collect::<std::result::Result<_, _>>()?;
        let columns: SchemaRef = Arc::new(Schema::new(fields));
        let df_schema = DFSchema::try_from(columns.as_ref().clone())?;
        let expr = create_physical_expr(
            &expr,
            &df_schema,
            &ExecutionProps::new(),
            &PhysicalPlanningContext::default(),
        )?;
        Ok(RowFilter { expr, columns })
    }

    /// Which rows of `segment` pass.
    fn keep(&self, segment: &RecordBatch) -> Result<BooleanArray> {
        let input = adapt_batch(segment, &self.columns).map_err(internal)?;
        let array = self.expr.evaluate(&input)?.into_array(input.num_rows())?;
        let keep = array
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| {
                DataFusionError::Plan(format!(
                    "a filter must be a boolean, not {}",
                    array.data_type()
                ))
            })?;
        // A row the filter makes NULL does not pass it either.
        Ok(if keep.null_count() > 0 {
            prep_null_mask_filter(keep)
        } else {
            keep.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[tokio::test]
    async fn filters_over_top_level_scalars_are_applied_by_the_scan_alone() {
        let (_dir, storage, engine) =
            crate::testing::engine_over(json!({"k": 4, "ts": "100", "u": {"name": "a"}})).await;
        let plan = |sql: &'static str| {
            let engine = engine.clone();
            async move {
                engine
                    .optimized_plan(sql)
                    .await
                    .unwrap()
                    .display_indent()
                    .to_string()
            }
        };
        let exact =
            plan("SELECT u FROM c WHERE k > 3 AND CAST(ts AS INT) < 200 AND _id <> 'x'").await;
        assert!(!exact.contains("Filter:"), "{exact}");
        assert!(exact.contains("full_filters="), "{exact}");
        // A struct's field, a volatile function: DataFusion filters after the scan.
        for sql in [
            "SELECT k FROM c WHERE u.name = 'a'",
            "SELECT k FROM c WHERE k > random()",
        ] {
            let p = plan(sql).await;
            assert!(p.contains("Filter:"), "{sql}: {p}");
        }
        storage.close();
    }
}
