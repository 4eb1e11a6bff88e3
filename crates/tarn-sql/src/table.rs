//! The DataFusion table of a collection: a snapshot of its segments, adapted to one schema.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use datafusion::arrow::array::{
    Array, AsArray, BooleanArray, RecordBatch, RecordBatchOptions, UInt32Array,
};
use datafusion::arrow::compute::{and, prep_null_mask_filter};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::ScalarValue;
use datafusion::common::Statistics;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, DataFusionError, Result};
use datafusion::config::ConfigOptions;
use datafusion::datasource::TableType;
use datafusion::execution::TaskContext;
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::expr_rewriter::unnormalize_col;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::create_physical_expr;
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_expr::utils::{collect_columns, reassign_expr_columns};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalSortExpr};
use datafusion::physical_expr_common::physical_expr::snapshot_physical_expr;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::filter_pushdown::{
    ChildPushdownResult, FilterPushdownPhase, FilterPushdownPropagation, PushedDown,
};
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PhysicalExpr, PlanProperties,
    SendableRecordBatchStream, SortOrderPushdownResult,
};
use tarn_storage::adapt::adapt_batch;
use tarn_storage::layout::Subfields;
use tarn_storage::narrow;
use tarn_storage::segment::SegmentStats;
use tarn_storage::{SegmentEntry, Snapshot};

use crate::prune::{Keep, LatePruner, Pruner};

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
    /// Set when the plan may be kept and run again ([`rebind_scans`]): the collection
    /// schema it was planned for (the whole one, where `snapshot.schema` may hold only
    /// the columns the query names).
    reusable_for: Option<SchemaRef>,
}

impl CollectionTable {
    pub fn new(workspace: String, name: String, snapshot: Snapshot) -> Self {
        CollectionTable {
            workspace,
            name,
            snapshot,
            subfields: Arc::default(),
            reusable_for: None,
        }
    }

    /// The same table, scanned so that the plan can be run again later over another
    /// snapshot of a collection whose schema is still `collection_schema`: its scans keep
    /// what they need to be bound again, split into a fixed number of partitions, and
    /// report row counts as estimates, so that no operator is planned on a count that
    /// holds only now.
    pub fn reusable(self, collection_schema: SchemaRef) -> Self {
        CollectionTable {
            reusable_for: Some(collection_schema),
            ..self
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
            reusable_for: self.reusable_for.clone(),
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
        let mut spec = ScanSpec {
            workspace: self.workspace.clone(),
            name: self.name.clone(),
            planned_schema: self.reusable_for.clone(),
            schema: self.snapshot.schema.clone(),
            subfields: self.subfields.clone(),
            projection: projection.cloned(),
            filters: filters.to_vec(),
            partitions: state.config().target_partitions().max(1),
            timeless: OnceLock::new(),
        };
        let now = state
            .execution_props()
            .query_execution_start_time
            .unwrap_or_else(Utc::now);
        let (reader, chosen) = spec.choose(&self.snapshot, now)?;
        if rows_of(&chosen) <= ONE_PARTITION_ROWS {
            spec.partitions = 1;
        }
        Ok(Arc::new(Arc::new(spec).deal(reader, chosen)))
    }
}

/// Rows a scan reads in one partition at most. A few segments (a dashboard's time window)
/// take one core well under a millisecond: a second partition only adds a merge above it
/// and a task on another thread to wake (a fifth of Live Tweets' time), and for a top-n
/// it reads the second newest segment before the newest has set a threshold that would
/// rule it out ([`LatePruner`]).
const ONE_PARTITION_ROWS: u64 = 65_536;

/// Rows past which a kept plan of a one-partition scan is planned again, with more
/// partitions: well above [`ONE_PARTITION_ROWS`], so that a window hovering around it does
/// not have its plan made again and again.
const REPLAN_ONE_PARTITION_ROWS: u64 = 4 * ONE_PARTITION_ROWS;

/// The segments a scan reads, each with whether every row passes its exact filters.
type Chosen = Vec<(SegmentEntry, bool)>;

/// Rows in the segments chosen for a scan, before its filters.
fn rows_of(chosen: &Chosen) -> u64 {
    chosen.iter().map(|(e, _)| e.live_rows()).sum()
}

/// A scan as the query planned it, before it is bound to a snapshot and a time.
#[derive(Debug)]
struct ScanSpec {
    workspace: String,
    name: String,
    /// For a reusable scan, the collection schema it was planned for.
    planned_schema: Option<SchemaRef>,
    /// The table's schema (only the columns the query names, when it was narrowed).
    schema: SchemaRef,
    subfields: Arc<HashMap<String, Subfields>>,
    projection: Option<Vec<usize>>,
    /// As DataFusion pushed them in: they may read the query's time (`now()`).
    filters: Vec<Expr>,
    /// The session's; a reusable scan always has this many, a one-off one no more than
    /// it has segments.
    partitions: usize,
    /// The filters planned, when none reads the query's time: the same on every run.
    timeless: OnceLock<BoundFilters>,
}

/// A scan's filters planned for evaluating and pruning, at one time.
#[derive(Debug)]
struct BoundFilters {
    /// The exact filters (those `supports_filters_pushdown` called exact) as one.
    row_filter: Option<Arc<RowFilter>>,
    /// All the filters: they rule segments out.
    pruner: Pruner,
    /// The exact ones, which are all the scan evaluates: they decide that a segment needs
    /// no evaluating (the others are DataFusion's to apply after the scan either way).
    /// `None` when all are exact.
    exact_pruner: Option<Pruner>,
}

impl BoundFilters {
    fn new(filters: Vec<Expr>, schema: &SchemaRef) -> Result<BoundFilters> {
        // Every filter `supports_filters_pushdown` called exact is applied here.
        let exact: Vec<Expr> = filters
            .iter()
            .filter(|f| RowFilter::applies_to(schema, f))
            .cloned()
            .collect();
        Ok(BoundFilters {
            row_filter: RowFilter::new(schema, &exact)?.map(Arc::new),
            pruner: Pruner::new(&filters, schema),
            exact_pruner: (exact.len() < filters.len()).then(|| Pruner::new(&exact, schema)),
        })
    }
}

impl ScanSpec {
    /// The reader of `snapshot`'s segments (its schema aside: the spec's is the one
    /// planned), with the filters' `now()` at `now`, and the segments it reads: each that
    /// may hold rows that pass, and whether every row passes the exact filters.
    fn choose(&self, snapshot: &Snapshot, now: DateTime<Utc>) -> Result<(SegmentReader, Chosen)> {
        let schema = self.schema.clone();
        let projected: SchemaRef = match &self.projection {
            Some(p) => Arc::new(schema.project(p)?),
            None => schema.clone(),
        };
        // Filters that do not read the query's time are planned once, for every run.
        let fresh;
        let bound = if self.filters.iter().any(reads_query_time) {
            fresh = BoundFilters::new(bind_time(&self.filters, now)?, &schema)?;
            &fresh
        } else {
            match self.timeless.get() {
                Some(b) => b,
                None => {
                    let b = BoundFilters::new(self.filters.clone(), &schema)?;
                    self.timeless.get_or_init(|| b)
                }
            }
        };
        let BoundFilters {
            row_filter,
            pruner,
            exact_pruner,
        } = bound;
        let row_filter = row_filter.clone();
        let cutoff = snapshot.retention_cutoff;
        let decide = |keep: Keep, exact_keep: Option<Keep>| match (keep, exact_keep) {
            (Keep::None, _) => None,
            (_, Some(Keep::All)) | (Keep::All, None) => Some(true),
            _ => Some(false),
        };
        let sealed = &snapshot.sealed;
        let sealed_keep = pruner.keep_each(sealed);
        let sealed_exact_keep = exact_pruner.as_ref().map(|p| p.keep_each(sealed));
        // Each segment that may hold rows that pass, and whether every row passes the
        // exact filters.
        let mut chosen: Chosen = Vec::new();
        for (i, entry) in sealed.entries.iter().enumerate() {
            if sealed.live_rows[i] > 0
                && cutoff.is_none_or(|c| sealed.event_times[i].1 >= c)
                && let Some(whole) =
                    decide(sealed_keep[i], sealed_exact_keep.as_ref().map(|k| k[i]))
            {
                chosen.push((entry.clone(), whole));
            }
        }
        for entry in &snapshot.runs {
            let stats = &entry.segment.stats;
            if entry.live_rows() > 0
                && cutoff.is_none_or(|c| stats.max_event_time >= c)
                && let Some(whole) = decide(
                    pruner.keep(stats),
                    exact_pruner.as_ref().map(|p| p.keep(stats)),
                )
            {
                chosen.push((entry.clone(), whole));
            }
        }
        let reader = SegmentReader {
            projected,
            subfields: self.subfields.clone(),
            row_filter,
            retention_cutoff: cutoff,
        };
        Ok((reader, chosen))
    }

    /// The scan of the `chosen` segments with `reader`, dealt out among its partitions.
    fn deal(self: &Arc<Self>, reader: SegmentReader, chosen: Chosen) -> SegmentsExec {
        // Newest segments first (runs of the mutable segment, then sealed ones from the
        // last): dashboards ask for the latest rows (`ORDER BY timestamp DESC LIMIT n`), and
        // DataFusion's top-n then fills its heap from the newest segment and turns older
        // rows away with one comparison instead of inserting every row of the window.
        let n = match self.planned_schema {
            Some(_) => self.partitions,
            None => self.partitions.min(chosen.len().max(1)),
        };
        let mut partitions: Vec<Vec<(SegmentEntry, bool)>> = vec![Vec::new(); n];
        for (i, task) in chosen.into_iter().rev().enumerate() {
            partitions[i % n].push(task);
        }
        SegmentsExec::new(Arc::new(reader), partitions, self.clone())
    }
}

/// `filters` with the query's time functions (`now()`, `current_date()`...) evaluated at
/// `now`, and what that makes constant folded, so that they prune segments. A plan kept to
/// run again holds them unevaluated ([`crate::engine`] plans such queries without a start
/// time), and each run binds them to its own time.
fn bind_time(filters: &[Expr], now: DateTime<Utc>) -> Result<Vec<Expr>> {
    filters
        .iter()
        .map(|f| {
            if !reads_query_time(f) {
                return Ok(f.clone());
            }
            let context = SimplifyContext::builder()
                .with_query_execution_start_time(Some(now))
                .build();
            ExprSimplifier::new(context).simplify(f.clone())
        })
        .collect()
}

/// Whether `expr` calls a function whose value is the query's time.
pub(crate) fn reads_query_time(expr: &Expr) -> bool {
    expr.exists(|e| {
        Ok(matches!(e, Expr::ScalarFunction(f)
            if matches!(f.func.name(), "now" | "current_date" | "current_time")))
    })
    .unwrap_or(true)
}

/// The collection each reusable scan of `plan` reads, with the schema it was planned for.
pub fn scan_schemas(plan: &Arc<dyn ExecutionPlan>) -> Vec<(String, String, SchemaRef)> {
    let mut out = Vec::new();
    let _ = plan.apply(|node| {
        if let Some(scan) = node.downcast_ref::<SegmentsExec>()
            && let Some(planned) = &scan.spec.planned_schema
        {
            out.push((
                scan.spec.workspace.clone(),
                scan.spec.name.clone(),
                planned.clone(),
            ));
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

/// A kept plan made ready to run again: each scan bound to its collection's present
/// snapshot and to `now`, every other operator reset (a top-n's threshold, a repartition's
/// channels), as on its first run. `None` when a scan's collection is gone or its schema
/// changed, a scan planned as one partition now reads far more rows
/// ([`REPLAN_ONE_PARTITION_ROWS`]), or the plan holds a scan not planned as reusable: it
/// must be planned again.
pub fn rebind_scans(
    plan: Arc<dyn ExecutionPlan>,
    storage: &tarn_storage::Storage,
    now: DateTime<Utc>,
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let mut stale = false;
    let plan = plan
        .transform_up(|node| {
            let Some(scan) = node.downcast_ref::<SegmentsExec>() else {
                return Ok(Transformed::yes(node.reset_state()?));
            };
            let spec = &scan.spec;
            let snapshot = storage
                .get_collection(&spec.workspace, &spec.name)
                .ok()
                .map(|(_, c)| c.snapshot())
                .filter(|s| {
                    spec.planned_schema
                        .as_ref()
                        .is_some_and(|planned| Arc::ptr_eq(planned, &s.schema))
                });
            let Some(snapshot) = snapshot else {
                stale = true;
                return Ok(Transformed::no(node));
            };
            let (reader, chosen) = spec.choose(&snapshot, now)?;
            if spec.partitions == 1 && rows_of(&chosen) > REPLAN_ONE_PARTITION_ROWS {
                stale = true;
                return Ok(Transformed::no(node));
            }
            let mut fresh = spec.deal(reader, chosen);
            fresh.newest_rows_first = scan.newest_rows_first;
            // A reusable scan's schema and partitions do not change between runs: sharing
            // the first run's properties lets every operator above keep its own instead of
            // computing them again (a projection's took a fifth of a rebind).
            if fresh.partitions.len() == scan.partitions.len() {
                debug_assert_eq!(fresh.reader.projected, scan.reader.projected);
                fresh.properties = scan.properties.clone();
            }
            Ok(Transformed::yes(Arc::new(fresh) as Arc<dyn ExecutionPlan>))
        })?
        .data;
    Ok((!stale).then_some(plan))
}

/// What a scan does to each segment it reads: the rows its filters keep, copied with only
/// the fields the query reads, adapted to the collection's schema.
#[derive(Debug)]
struct SegmentReader {
    projected: SchemaRef,
    /// Struct columns of which the query reads only some fields.
    subfields: Arc<HashMap<String, Subfields>>,
    row_filter: Option<Arc<RowFilter>>,
    retention_cutoff: Option<i64>,
}

impl SegmentReader {
    /// The rows of `entry` the query sees (`None` when there are none), decoded and in the
    /// order they are handed over; `whole` when its statistics show every row passes the
    /// filters, which are then not evaluated.
    fn read(
        &self,
        entry: &SegmentEntry,
        whole: bool,
        newest_first: bool,
    ) -> Result<Option<SegmentRows>> {
        let stats = &entry.segment.stats;
        let cutoff = self.retention_cutoff;
        let row_filter = self.row_filter.as_ref().filter(|_| !whole);
        let nulls_needed = self.nulls_needed(&entry.segment.schema());
        // Only the columns this scan touches: a sealed segment decodes just those.
        let segment = &entry
            .segment
            .read_fields(
                |name| {
                    (nulls_needed && name == tarn_storage::types::NULLS)
                        || (cutoff.is_some() && name == tarn_storage::types::EVENT_TIME)
                        || self.projected.column_with_name(name).is_some()
                        || row_filter.is_some_and(|f| f.columns.column_with_name(name).is_some())
                },
                &self.subfields,
            )
            .map_err(internal)?;
        let mut mask: Option<BooleanArray> =
            (!entry.deleted.is_empty()).then(|| entry.deleted.keep_mask(stats.rows as usize));
        if let Some(c) = cutoff.filter(|c| stats.min_event_time < *c) {
            let et = segment
                .column_by_name(tarn_storage::types::EVENT_TIME)
                .ok_or_else(|| DataFusionError::Internal("segment without _event_time".into()))?;
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
        // Rows are dropped before the projected columns are adapted, so a narrow time
        // window copies and adapts its few rows, not its segments' thousands; and they are
        // copied with only the fields the query reads.
        let kept = match mask {
            Some(m) if m.true_count() == 0 => return Ok(None),
            Some(m) if m.true_count() < m.len() => Some(m),
            _ => None,
        };
        Ok(Some(SegmentRows {
            order: row_order(segment.num_rows(), kept.as_ref(), newest_first),
            segment: segment.clone(),
            nulls_needed,
            next: 0,
        }))
    }

    /// The next batch of `rows` to hand over, `None` once all are. Without late filters
    /// that is all of them at once; with them, the rows go in chunks, each chunk first
    /// checked against the late filters on the columns they read, and only the rows that
    /// pass are copied in every projected column.
    fn next_batch(
        &self,
        rows: &mut SegmentRows,
        late: Option<&LateFilters>,
    ) -> Result<Option<RecordBatch>> {
        let total = rows
            .order
            .as_ref()
            .map_or(rows.segment.num_rows(), |o| o.len());
        while rows.next < total {
            let from = rows.next;
            // The filters' present form: until an operator tightens one (a top-n once its
            // heap is full), it is `true`, and the rows after the first chunk go at once.
            let checked = match late {
                Some(late) if from == 0 => Some((late, late.filters.clone())),
                Some(late) => late.active()?.map(|filters| (late, filters)),
                None => None,
            };
            let (indices, to) = match checked {
                None if from == 0 => (rows.order.clone(), total),
                None => (Some(rows.range(from, total)), total),
                Some((late, filters)) => {
                    let to = total.min(from + (from * 4).clamp(FIRST_CHUNK, CHUNK));
                    let chunk = rows.range(from, to);
                    (Some(late.keep(self, &filters, &rows.segment, chunk)?), to)
                }
            };
            rows.next = to;
            if indices.as_ref().is_some_and(|i| i.is_empty()) {
                continue;
            }
            let taken = self.rows_read(&rows.segment, indices.as_ref(), rows.nulls_needed)?;
            let batch = adapt_batch(&taken, &self.projected).map_err(internal)?;
            if batch.num_rows() > 0 {
                return Ok(Some(batch));
            }
        }
        Ok(None)
    }

    /// Whether adapting a segment of `schema` to the projection needs the null-paths column
    /// (long strings: a tweet's explicit nulls): only when a column turns into a variant,
    /// which keeps explicit nulls. Otherwise it is neither decoded nor copied, unless the
    /// query returns it.
    fn nulls_needed(&self, schema: &Schema) -> bool {
        // The projection's few columns, not the segment's many: most hold no variant.
        self.projected.fields().iter().any(|to| {
            holds_variant(to.data_type())
                && schema
                    .field_with_name(to.name())
                    .is_ok_and(|f| f.data_type() != to.data_type())
        })
    }

    /// The rows `indices` of `segment` (all of them without it), in the projected columns
    /// (and the null-paths column if `nulls_needed`), with only the fields of struct
    /// columns and of lists of structs that the query reads.
    fn rows_read(
        &self,
        segment: &RecordBatch,
        indices: Option<&UInt32Array>,
        nulls_needed: bool,
    ) -> Result<RecordBatch> {
        let schema = segment.schema_ref();
        let mut fields = Vec::new();
        let mut columns = Vec::new();
        for (field, column) in schema.fields().iter().zip(segment.columns()) {
            let name = field.name();
            let wanted = self.projected.column_with_name(name).is_some()
                || (nulls_needed && name == tarn_storage::types::NULLS);
            if !wanted {
                continue;
            }
            let sub = self.subfields.get(name);
            columns.push(
                match indices {
                    Some(rows) => narrow::take_fields(column, rows, sub),
                    None => narrow::narrow(column, sub),
                }
                .map_err(internal)?,
            );
            fields.push(field.clone());
        }
        let rows = indices.as_ref().map_or(segment.num_rows(), |i| i.len());
        Ok(RecordBatch::try_new_with_options(
            Arc::new(Schema::new_with_metadata(
                fields,
                segment.schema_ref().metadata().clone(),
            )),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?)
    }
}

/// The rows of a segment `kept` keeps (all of them without it), last to first if
/// `newest_first`; `None` for all rows in their order.
fn row_order(rows: usize, kept: Option<&BooleanArray>, newest_first: bool) -> Option<UInt32Array> {
    let indices = kept.map(|m| {
        let m = if m.null_count() > 0 {
            prep_null_mask_filter(m)
        } else {
            m.clone()
        };
        UInt32Array::from_iter_values(m.values().set_indices().map(|i| i as u32))
    });
    if !newest_first {
        return indices;
    }
    Some(match &indices {
        Some(i) => i.values().iter().rev().copied().collect(),
        None => (0..rows as u32).rev().collect(),
    })
}

/// A segment's rows that a query reads, decoded, in the order they are handed over, and
/// how many have been.
struct SegmentRows {
    segment: RecordBatch,
    /// `None`: every row, in order.
    order: Option<UInt32Array>,
    nulls_needed: bool,
    next: usize,
}

impl SegmentRows {
    /// The segment's row numbers at positions `from..to` of the hand-over order.
    fn range(&self, from: usize, to: usize) -> UInt32Array {
        match &self.order {
            Some(order) => order.slice(from, to - from),
            None => UInt32Array::from_iter_values(from as u32..to as u32),
        }
    }
}

/// Rows handed over in the first chunk of a segment when there are late filters: enough
/// for a dashboard's top-n (`LIMIT 100`) to fill its heap and tighten its filter before
/// the rest are looked at. Each later chunk is four times the rows handed over so far, so
/// a filter that stays loose costs few extra chunks.
const FIRST_CHUNK: usize = 128;
/// Rows in a chunk at most (DataFusion's batch size).
const CHUNK: usize = 8_192;

/// Filters that operators above the scan push into it while the query runs (a top-n's
/// threshold, DataFusion's dynamic filters), checked on the few columns they read before
/// the rows are copied in every projected column. They are a help, not a promise: the
/// operators that made them still apply them, so a row they would drop may pass.
#[derive(Debug, Clone)]
struct LateFilters {
    /// The projected fields the filters read, in the filters' column numbering.
    schema: SchemaRef,
    filters: Vec<Arc<dyn PhysicalExpr>>,
}

impl LateFilters {
    /// Over the scan's `projected` schema; `None` when no filter can be checked this way
    /// (a column the scan does not return, or a variant, whose nulls need more columns).
    fn new(projected: &Schema, filters: &[Arc<dyn PhysicalExpr>]) -> Option<LateFilters> {
        let mut names: Vec<String> = filters
            .iter()
            .flat_map(|f| collect_columns(f).into_iter().map(|c| c.name().to_owned()))
            .collect();
        names.sort();
        names.dedup();
        let fields = names
            .iter()
            .map(|n| projected.field_with_name(n).ok().cloned())
            .collect::<Option<Vec<_>>>()?;
        if filters.is_empty() || fields.iter().any(|f| holds_variant(f.data_type())) {
            return None;
        }
        let schema = Arc::new(Schema::new(fields));
        let filters = filters
            .iter()
            .map(|f| reassign_expr_columns(f.clone(), &schema).ok())
            .collect::<Option<Vec<_>>>()?;
        Some(LateFilters { schema, filters })
    }

    /// The filters as they stand now, without those that pass every row; `None` when
    /// none is left (a top-n whose heap is not full yet, or a filter never tightened).
    fn active(&self) -> Result<Option<Vec<Arc<dyn PhysicalExpr>>>> {
        let mut active = Vec::new();
        for f in &self.filters {
            let now = snapshot_physical_expr(f.clone())?;
            let passes_all = now
                .downcast_ref::<Literal>()
                .is_some_and(|l| l.value() == &ScalarValue::Boolean(Some(true)));
            if !passes_all {
                active.push(now);
            }
        }
        Ok((!active.is_empty()).then_some(active))
    }

    /// Whether, as the filters stand now, no row of a segment with `stats` can pass them.
    fn rule_out(&self, pruner: &mut LatePruner, stats: &SegmentStats) -> Result<bool> {
        Ok(match self.active()? {
            Some(active) => pruner.rules_out(&active, stats),
            None => false,
        })
    }

    /// The rows of `chunk` (indices into `segment`) that pass every one of `filters` (these
    /// filters, or their present form), in order.
    fn keep(
        &self,
        reader: &SegmentReader,
        filters: &[Arc<dyn PhysicalExpr>],
        segment: &RecordBatch,
        chunk: UInt32Array,
    ) -> Result<UInt32Array> {
        rows_passing(segment, &self.schema, &reader.subfields, chunk, |raw| {
            let batch = adapt_batch(raw, &self.schema).map_err(internal)?;
            let mut mask: Option<BooleanArray> = None;
            for filter in filters {
                let passed = filter.evaluate(&batch)?.into_array(batch.num_rows())?;
                let passed = passed.as_boolean_opt().cloned().ok_or_else(|| {
                    DataFusionError::Internal(format!(
                        "a filter pushed into the scan gave {}, not booleans",
                        passed.data_type()
                    ))
                })?;
                mask = both(mask, passed)?;
            }
            Ok(mask.unwrap_or_else(|| BooleanArray::from(vec![true; batch.num_rows()])))
        })
    }
}

/// The rows of `chunk` (indices into `segment`) that `test` passes (a null is not a
/// pass), in order. `test` is given the segment's columns named in `columns` at those
/// rows: a slice of the segment from the chunk's lowest row to its highest when they lie
/// close together, as they do when rows are handed over in order or in reverse (no copy),
/// else copies of the chunk's rows with only the fields of structs the query reads.
fn rows_passing(
    segment: &RecordBatch,
    columns: &Schema,
    subfields: &HashMap<String, Subfields>,
    chunk: UInt32Array,
    test: impl FnOnce(&RecordBatch) -> Result<BooleanArray>,
) -> Result<UInt32Array> {
    let (Some(low), Some(high)) = (
        datafusion::arrow::compute::min(&chunk),
        datafusion::arrow::compute::max(&chunk),
    ) else {
        return Ok(chunk);
    };
    let span = (high - low) as usize + 1;
    let sliced = span <= 4 * chunk.len();
    let mut arrays = Vec::with_capacity(columns.fields().len());
    let mut fields = Vec::with_capacity(arrays.capacity());
    for field in columns.fields() {
        if let Some((i, f)) = segment.schema_ref().column_with_name(field.name()) {
            let sub = subfields.get(field.name());
            let column = segment.column(i);
            arrays.push(if sliced {
                column.slice(low as usize, span)
            } else {
                narrow::take_fields(column, &chunk, sub).map_err(internal)?
            });
            fields.push(f.clone());
        }
    }
    let rows = if sliced { span } else { chunk.len() };
    let raw = RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        arrays,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )?;
    let passed = test(&raw)?;
    let passed = if passed.null_count() > 0 {
        prep_null_mask_filter(&passed)
    } else {
        passed
    };
    // Once a top-n's heap is full, most chunks of a segment pass no row, or all of them
    // (every row of a slice passing, every row of the chunk in it does).
    match passed.true_count() {
        0 => return Ok(UInt32Array::from(Vec::<u32>::new())),
        n if n == passed.len() => return Ok(chunk),
        _ => {}
    }
    let passed = passed.values();
    Ok(chunk
        .values()
        .iter()
        .enumerate()
        .filter(|&(position, &row)| {
            passed.value(if sliced {
                (row - low) as usize
            } else {
                position
            })
        })
        .map(|(_, &row)| row)
        .collect())
}

/// Whether a column of this type is or holds a variant.
fn holds_variant(data_type: &DataType) -> bool {
    match data_type {
        t if tarn_storage::types::is_variant(t) => true,
        DataType::Struct(fields) => fields.iter().any(|f| holds_variant(f.data_type())),
        DataType::List(item) => holds_variant(item.data_type()),
        _ => false,
    }
}

/// The scan's plan: its chosen segments dealt out among partitions, each read (filtered,
/// copied, adapted) only when its partition's stream reaches it, so that the partitions
/// share the work among the cores and the operators above start on the first segment.
/// Row counts are exact where no row of a segment needs evaluating (no filter left, no
/// deletion, no retention cut), so `count(*)` over whole segments is answered from them.
#[derive(Debug, Clone)]
struct SegmentsExec {
    reader: Arc<SegmentReader>,
    partitions: Vec<Vec<(SegmentEntry, bool)>>,
    /// Each segment's rows last to first: set when the query sorts descending.
    newest_rows_first: bool,
    /// Filters pushed in from above while planning, checked before rows are copied.
    late: Option<Arc<LateFilters>>,
    /// How the scan was planned, to bind it again ([`rebind_scans`]).
    spec: Arc<ScanSpec>,
    properties: Arc<PlanProperties>,
    /// Per partition, then for all of them.
    partition_stats: Vec<Arc<Statistics>>,
    total: Arc<Statistics>,
    /// Segments read and segments the late filters ruled out, per partition.
    metrics: ExecutionPlanMetricsSet,
}

impl SegmentsExec {
    fn new(
        reader: Arc<SegmentReader>,
        partitions: Vec<Vec<(SegmentEntry, bool)>>,
        spec: Arc<ScanSpec>,
    ) -> Self {
        let reusable = spec.planned_schema.is_some();
        let schema = reader.projected.clone();
        let counted = |rows: Precision<usize>| {
            let mut s = Statistics::new_unknown(&schema);
            s.num_rows = rows;
            Arc::new(s)
        };
        let rows_of = |(entry, whole): &(SegmentEntry, bool)| {
            let rows = entry.live_rows() as usize;
            let cut = reader
                .retention_cutoff
                .is_some_and(|c| entry.segment.stats.min_event_time < c);
            let filtered = !whole && reader.row_filter.is_some();
            if filtered || cut || reusable {
                Precision::Inexact(rows)
            } else {
                Precision::Exact(rows)
            }
        };
        let sum = |counts: &mut dyn Iterator<Item = Precision<usize>>| {
            counts.fold(Precision::Exact(0), |a, b| a.add(&b))
        };
        let per_partition: Vec<Precision<usize>> = partitions
            .iter()
            .map(|tasks| sum(&mut tasks.iter().map(rows_of)))
            .map(|rows| if reusable { rows.to_inexact() } else { rows })
            .collect();
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(partitions.len()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        let mut total = sum(&mut per_partition.iter().cloned());
        if reusable {
            // Even none at all: a count of no rows would be planned as a constant.
            total = total.to_inexact();
        }
        SegmentsExec {
            total: counted(total),
            partition_stats: per_partition.into_iter().map(counted).collect(),
            reader,
            partitions,
            newest_rows_first: false,
            late: None,
            spec,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl SegmentsExec {
    /// The late filters, when the scan hands rows over in the order a top-n above asks
    /// for (newest first): its threshold then tightens after the first chunk and turns
    /// the rest away. In other orders they tightened late or never (a top-n over an
    /// aggregate sees no row until the scan is done), and checking chunks only cost time
    /// (Influencers over 10 M tweets: 11% slower).
    fn late_filters_used(&self) -> Option<Arc<LateFilters>> {
        self.late.clone().filter(|_| self.newest_rows_first)
    }
}

impl DisplayAs for SegmentsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let segments: usize = self.partitions.iter().map(Vec::len).sum();
        write!(
            f,
            "SegmentsExec: segments={segments}, partitions={}, rows={:?}{}{}",
            self.partitions.len(),
            self.total.num_rows,
            if self.newest_rows_first {
                ", newest_rows_first"
            } else {
                ""
            },
            if self.late_filters_used().is_some() {
                ", late_filters"
            } else {
                ""
            }
        )
    }
}

impl ExecutionPlan for SegmentsExec {
    fn name(&self) -> &str {
        "SegmentsExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    /// The one expression the scan evaluates: its filters on the segments' rows.
    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        match &self.reader.row_filter {
            Some(filter) => f(&filter.expr),
            None => Ok(TreeNodeRecursion::Continue),
        }
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
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let tasks = self.partitions.get(partition).cloned().ok_or_else(|| {
            DataFusionError::Internal(format!("SegmentsExec has no partition {partition}"))
        })?;
        let batches = SegmentBatches {
            reader: self.reader.clone(),
            late: self.late_filters_used(),
            newest_first: self.newest_rows_first,
            tasks: tasks.into_iter(),
            current: None,
            pruner: LatePruner::default(),
            read: MetricBuilder::new(&self.metrics).counter("segments_read", partition),
            ruled_out: MetricBuilder::new(&self.metrics).counter("segments_ruled_out", partition),
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.reader.projected.clone(),
            futures::stream::iter(batches),
        )))
    }

    /// Filters from above (a top-n's threshold) are kept to check each chunk of rows
    /// before it is copied; they are reported as not applied, so their operators still
    /// apply them. Only in the phase after the plan is settled, where DataFusion pushes
    /// its dynamic filters: earlier ones are static filters, already pushed into the scan
    /// through the table, or a `FilterExec`'s, which it evaluates anyway.
    fn handle_child_pushdown_result(
        &self,
        phase: FilterPushdownPhase,
        child_pushdown_result: ChildPushdownResult,
        _config: &ConfigOptions,
    ) -> Result<FilterPushdownPropagation<Arc<dyn ExecutionPlan>>> {
        let filters: Vec<Arc<dyn PhysicalExpr>> = child_pushdown_result
            .parent_filters
            .iter()
            .map(|f| f.filter.clone())
            .collect();
        let not_applied = vec![PushedDown::No; filters.len()];
        let mut propagation = FilterPushdownPropagation::with_parent_pushdown_result(not_applied);
        if phase == FilterPushdownPhase::Post
            && self.late.is_none()
            && let Some(late) = LateFilters::new(&self.reader.projected, &filters)
        {
            let scan = SegmentsExec {
                late: Some(Arc::new(late)),
                ..self.clone()
            };
            propagation = propagation.with_updated_node(Arc::new(scan) as Arc<dyn ExecutionPlan>);
        }
        Ok(propagation)
    }

    /// A descending sort (`ORDER BY timestamp_ms DESC LIMIT 100`): the scan hands each
    /// segment's rows over last to first. Rows are appended as they arrive, so for the
    /// time-like keys dashboards sort by, DataFusion's top-n then meets the newest rows
    /// first and turns the rest away with one comparison each; in arrival order every row
    /// of a window beat the heap's worst and was inserted (a third of Live Tweets' time).
    /// The order is a help, not a promise (`Inexact`): the sort stays.
    fn try_pushdown_sort(
        &self,
        order: &[PhysicalSortExpr],
    ) -> Result<SortOrderPushdownResult<Arc<dyn ExecutionPlan>>> {
        Ok(match order.first() {
            Some(first) if first.options.descending && !self.newest_rows_first => {
                let scan = SegmentsExec {
                    newest_rows_first: true,
                    ..self.clone()
                };
                SortOrderPushdownResult::Inexact {
                    inner: Arc::new(scan),
                }
            }
            _ => SortOrderPushdownResult::Unsupported,
        })
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn partition_statistics(&self, partition: Option<usize>) -> Result<Arc<Statistics>> {
        Ok(match partition {
            Some(p) => self
                .partition_stats
                .get(p)
                .cloned()
                .unwrap_or_else(|| Arc::new(Statistics::new_unknown(&self.reader.projected))),
            None => self.total.clone(),
        })
    }
}

/// One partition's batches: its segments read one at a time as the stream reaches them,
/// each handed over in one batch, or in chunks when there are late filters, which may
/// also rule a segment out before it is read.
struct SegmentBatches {
    reader: Arc<SegmentReader>,
    late: Option<Arc<LateFilters>>,
    newest_first: bool,
    tasks: std::vec::IntoIter<(SegmentEntry, bool)>,
    current: Option<SegmentRows>,
    pruner: LatePruner,
    read: Count,
    ruled_out: Count,
}

impl Iterator for SegmentBatches {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(rows) = self.current.as_mut() {
                match self.reader.next_batch(rows, self.late.as_deref()) {
                    Ok(Some(batch)) => return Some(Ok(batch)),
                    Ok(None) => self.current = None,
                    Err(e) => {
                        self.current = None;
                        return Some(Err(e));
                    }
                }
            }
            let (entry, whole) = self.tasks.next()?;
            if let Some(late) = &self.late {
                match late.rule_out(&mut self.pruner, &entry.segment.stats) {
                    Ok(true) => {
                        self.ruled_out.add(1);
                        continue;
                    }
                    Ok(false) => {}
                    Err(e) => return Some(Err(e)),
                }
            }
            self.read.add(1);
            match self.reader.read(&entry, whole, self.newest_first) {
                Ok(rows) => self.current = rows,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Rows both masks keep; `keep` alone when there is no mask yet.
fn both(mask: Option<BooleanArray>, keep: BooleanArray) -> Result<Option<BooleanArray>> {
    Ok(Some(match mask {
        Some(m) => and(&m, &keep)?,
        None => keep,
    }))
}

/// The pushed-down filters the scan evaluates on each segment's own rows, so that it drops
/// what they reject before it adapts and copies the wide columns (a tweet's `user` and
/// `entities` structs), and copies the rest with only the fields the query reads. The scan
/// tells DataFusion these filters are exact: it does not apply them again.
///
/// A filter may read fields of struct columns: [`crate::subfields::NarrowStructScans`]
/// counts the scan's filters among the query's uses, so the fields they read are decoded.
#[derive(Debug)]
struct RowFilter {
    expr: Arc<dyn PhysicalExpr>,
    /// The columns `expr` reads, as the collection schema types them.
    columns: SchemaRef,
}

impl RowFilter {
    /// Whether the scan applies `filter` itself: deterministic, over the collection's
    /// columns, and plannable as a physical expression.
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
        if expr.is_volatile() {
            return Err(DataFusionError::Plan("a volatile filter".into()));
        }
        let mut names: Vec<String> = expr.column_refs().iter().map(|c| c.name.clone()).collect();
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
    async fn deterministic_filters_are_applied_by_the_scan_alone() {
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
        for sql in [
            "SELECT u FROM c WHERE k > 3 AND CAST(ts AS INT) < 200 AND _id <> 'x'",
            "SELECT k FROM c WHERE u.name = 'a'",
        ] {
            let exact = plan(sql).await;
            assert!(!exact.contains("Filter:"), "{sql}: {exact}");
            assert!(exact.contains("full_filters="), "{sql}: {exact}");
        }
        // A volatile function: DataFusion filters after the scan.
        let p = plan("SELECT k FROM c WHERE k > random()").await;
        assert!(p.contains("Filter:"), "{p}");
        storage.close();
    }

    /// The rows `sql` returns.
    async fn query_rows(
        engine: &crate::QueryEngine,
        sql: String,
    ) -> Vec<serde_json::Map<String, serde_json::Value>> {
        engine
            .query(&crate::QueryRequest {
                sql,
                ..Default::default()
            })
            .await
            .unwrap()
            .results
    }

    /// What an `EXPLAIN` (or `EXPLAIN ANALYZE`) query returns, as one text.
    async fn plan_text(engine: &crate::QueryEngine, sql: String) -> String {
        serde_json::to_string(&query_rows(engine, sql).await).unwrap()
    }

    /// Writes `rounds` writes of `per_round` documents (`doc(i)` for i = 1, 2, ...), sealed
    /// in between: rows of several sealed segments and of the mutable one.
    async fn write_sealed_rounds(
        c: &tarn_storage::Collection,
        rounds: u64,
        per_round: u64,
        doc: impl Fn(u64) -> serde_json::Value,
    ) {
        use tarn_storage::document::{IngestContext, prepare};
        let meta = json!(null);
        let ctx = IngestContext {
            event_time_info: None,
            now_micros: 0,
            meta: &meta,
        };
        for round in 0..rounds {
            let docs = (1..=per_round)
                .map(|n| {
                    let d = doc(round * per_round + n);
                    let text = d.to_string().into_bytes();
                    (prepare(d, &ctx).unwrap(), text)
                })
                .collect();
            c.insert(docs, Vec::new()).await.unwrap();
            if round + 1 < rounds {
                c.seal().await.unwrap();
            }
        }
    }

    /// A descending sort asks the scan for each segment's rows last to first; the sort
    /// stays, so the answer is the same whatever order the rows come in.
    #[tokio::test]
    async fn a_descending_sort_reads_segments_newest_rows_first() {
        let (_dir, storage, engine) = crate::testing::engine_over(json!({"k": 0})).await;
        let (_, c) = storage.get_collection("commons", "c").unwrap();
        write_sealed_rounds(&c, 3, 50, |k| json!({"k": k, "odd": k % 2 == 1})).await;
        let ks = |sql: &'static str| {
            let engine = engine.clone();
            async move {
                let out = engine
                    .query(&crate::QueryRequest {
                        sql: sql.into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                out.results
                    .iter()
                    .map(|r| r["k"].as_i64().unwrap())
                    .collect::<Vec<_>>()
            }
        };
        let explain = |sql: &'static str| {
            let engine = engine.clone();
            async move {
                let out = engine
                    .query(&crate::QueryRequest {
                        sql: format!("EXPLAIN {sql}"),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                serde_json::to_string(&out.results).unwrap()
            }
        };
        let desc = "SELECT k FROM c ORDER BY k DESC LIMIT 4";
        assert_eq!(ks(desc).await, vec![150, 149, 148, 147]);
        assert!(explain(desc).await.contains("newest_rows_first"));
        let filtered = "SELECT k FROM c WHERE odd AND k < 120 ORDER BY k DESC LIMIT 3";
        assert_eq!(ks(filtered).await, vec![119, 117, 115]);
        assert!(explain(filtered).await.contains("newest_rows_first"));
        let asc = "SELECT k FROM c WHERE k > 48 ORDER BY k LIMIT 3";
        assert_eq!(ks(asc).await, vec![49, 50, 51]);
        assert!(!explain(asc).await.contains("newest_rows_first"));
        storage.close();
    }

    /// A top-n's threshold pushed into the scan (late filters) turns rows away before they
    /// are copied; the rows returned are those of a full sort, with keys out of arrival
    /// order, missing keys (nulls sort first when descending), and segments of several
    /// chunks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_top_n_threshold_pushed_into_the_scan_keeps_the_rows_of_a_full_sort() {
        let (_dir, storage, engine) = crate::testing::engine_over(json!({"k": 0})).await;
        let (_, c) = storage.get_collection("commons", "c").unwrap();
        write_sealed_rounds(&c, 3, 3_000, |i| {
            if i.is_multiple_of(500) {
                json!({"pad": format!("row {i}"), "odd": true})
            } else {
                json!({"k": (i * 7_919) % 9_001, "pad": format!("row {i}"), "odd": i % 2 == 1})
            }
        })
        .await;
        let keys = |rows: &[serde_json::Map<String, serde_json::Value>]| {
            rows.iter().map(|r| r["k"].as_i64()).collect::<Vec<_>>()
        };
        for (top, n) in [
            ("SELECT k, pad FROM c ORDER BY k DESC", 7),
            ("SELECT k, pad FROM c ORDER BY k DESC", 40),
            ("SELECT k FROM c WHERE odd ORDER BY k DESC", 5),
            ("SELECT k FROM c ORDER BY k DESC NULLS LAST", 5),
        ] {
            let full = keys(&query_rows(&engine, top.to_owned()).await);
            // The collection's first document ({"k": 0}) and 9,000 more; of those, 4,500
            // odd rows and the 18 without k, which are marked odd.
            let rows = if top.contains("odd") { 4_518 } else { 9_001 };
            assert_eq!(full.len(), rows, "{top}");
            // Nulls sort first when descending, unless told otherwise.
            let nulls_first = !top.contains("NULLS LAST");
            assert_eq!(full[..n].iter().any(|k| k.is_none()), nulls_first, "{top}");
            let limited = format!("{top} LIMIT {n}");
            let plan = plan_text(&engine, format!("EXPLAIN {limited}")).await;
            assert!(plan.contains("late_filters"), "{limited}: {plan}");
            assert_eq!(
                keys(&query_rows(&engine, limited.clone()).await),
                full[..n].to_vec(),
                "{limited}"
            );
        }
        storage.close();
    }

    /// A top-n over a small scan reads its segments newest first in one partition, and the
    /// threshold the newest sets rules the older ones out by their statistics, unread; on
    /// the kept plan's runs too. Keys missing in an older segment (nulls sort first when
    /// descending) keep it in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_top_n_threshold_rules_out_older_segments_before_they_are_read() {
        let (_dir, storage, engine) = crate::testing::engine_over(json!({"k": 0})).await;
        let (_, c) = storage.get_collection("commons", "c").unwrap();
        // The oldest segment holds one document without k.
        write_sealed_rounds(&c, 3, 1_000, |i| {
            if i == 7 {
                json!({"other": i})
            } else {
                json!({"k": i})
            }
        })
        .await;
        let keys = |rows: &[serde_json::Map<String, serde_json::Value>]| {
            rows.iter()
                .map(|r| r.get("k").and_then(|k| k.as_i64()))
                .collect::<Vec<_>>()
        };
        // Twice: planned, then the kept plan bound again.
        for _ in 0..2 {
            let top = "SELECT k FROM c ORDER BY k DESC NULLS LAST LIMIT 5";
            let expected: Vec<_> = (2996..=3000).rev().map(Some).collect();
            assert_eq!(keys(&query_rows(&engine, top.into()).await), expected);
            let analyzed = plan_text(&engine, format!("EXPLAIN ANALYZE {top}")).await;
            // The mutable segment's rows are read; the two sealed segments are not.
            assert!(analyzed.contains("segments_read=1,"), "{analyzed}");
            assert!(analyzed.contains("segments_ruled_out=2"), "{analyzed}");

            // Nulls first: the oldest segment's missing key beats any threshold.
            let top = "SELECT k FROM c ORDER BY k DESC LIMIT 5";
            let mut expected: Vec<_> = (2997..=3000).rev().map(Some).collect();
            expected.insert(0, None);
            assert_eq!(keys(&query_rows(&engine, top.into()).await), expected);
            let analyzed = plan_text(&engine, format!("EXPLAIN ANALYZE {top}")).await;
            assert!(analyzed.contains("segments_read=2,"), "{analyzed}");
            assert!(analyzed.contains("segments_ruled_out=1"), "{analyzed}");
        }
        storage.close();
    }

    /// The null-paths column is read for a segment only when one of its columns the query
    /// returns becomes a variant there (which keeps its explicit nulls).
    #[test]
    fn the_null_paths_are_read_only_to_adapt_a_column_into_a_variant() {
        use super::*;
        use datafusion::arrow::datatypes::Field;
        let variant = tarn_storage::types::variant_type();
        let reader = |projected: Vec<Field>| SegmentReader {
            projected: Arc::new(Schema::new(projected)),
            subfields: Default::default(),
            row_filter: None,
            retention_cutoff: None,
        };
        let segment = Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new(
                "u",
                DataType::Struct(vec![Field::new("n", DataType::Int64, true)].into()),
                true,
            ),
        ]);
        let same = reader(vec![Field::new("k", DataType::Int64, true)]);
        assert!(!same.nulls_needed(&segment));
        let to_variant = reader(vec![Field::new("k", variant.clone(), true)]);
        assert!(to_variant.nulls_needed(&segment));
        let nested = reader(vec![Field::new(
            "u",
            DataType::Struct(vec![Field::new("n", variant.clone(), true)].into()),
            true,
        )]);
        assert!(nested.nulls_needed(&segment));
        // A column the segment lacks is all NULL: no explicit nulls to keep.
        let absent = reader(vec![Field::new("m", variant, true)]);
        assert!(!absent.nulls_needed(&segment));
    }

    #[test]
    fn rows_passing_reads_near_rows_as_a_slice_and_far_ones_as_copies() {
        use super::*;
        use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
        use datafusion::arrow::datatypes::Field;
        let segment = RecordBatch::try_from_iter([
            (
                "k",
                Arc::new(Int64Array::from_iter(
                    (0..100).map(|k| (k % 7 != 0).then_some(k)),
                )) as ArrayRef,
            ),
            (
                "s",
                Arc::new(StringArray::from_iter_values(
                    (0..100).map(|k| k.to_string()),
                )),
            ),
        ])
        .unwrap();
        let columns = Schema::new(vec![Field::new("k", DataType::Int64, true)]);
        let over_50 = |rows: &[u32]| -> (Vec<u32>, usize) {
            let mut seen = 0;
            let passed = rows_passing(
                &segment,
                &columns,
                &HashMap::new(),
                UInt32Array::from(rows.to_vec()),
                |raw| {
                    // Only the columns asked for, however the rows were gathered.
                    assert_eq!(raw.num_columns(), 1);
                    seen = raw.num_rows();
                    Ok(datafusion::arrow::compute::kernels::cmp::gt(
                        raw.column(0),
                        &Int64Array::new_scalar(50),
                    )?)
                },
            )
            .unwrap();
            (passed.values().to_vec(), seen)
        };
        // Newest first, as a descending scan hands rows over, some rows left out by
        // earlier filters: one slice of rows 40..=59, where rows 42, 49 and 56 are NULL,
        // which does not pass.
        let near: Vec<u32> = (40..60).rev().filter(|k| k % 3 != 0).collect();
        let expected: Vec<u32> = (51..60)
            .rev()
            .filter(|k| k % 7 != 0 && k % 3 != 0)
            .collect();
        assert_eq!(near.len(), 14);
        assert_eq!(over_50(&near), (expected, 20));
        // Four rows spread over the segment: copied, not sliced over 91 rows.
        assert_eq!(over_50(&[95, 3, 60, 49]), (vec![95, 60], 4));
        assert_eq!(over_50(&[]), (vec![], 0));
    }
}
