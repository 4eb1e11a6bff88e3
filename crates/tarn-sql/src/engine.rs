//! Runs a query: plan through DataFusion over a catalog of live collections, then JSON results.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::DataFusionError;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::LogicalPlan;
use datafusion::logical_expr::{Expr, Volatility};
use datafusion::physical_expr::expressions::DynamicFilterPhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_optimizer::filter_pushdown::FilterPushdown;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DFStatement;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Map, Value};
use tarn_common::{TarnError, TarnResult};
use tarn_storage::types::rockset_type_name;
use tarn_storage::{DEFAULT_WORKSPACE, Storage};

use crate::catalog::TarnCatalog;
use crate::dialect::RocksetDialect;
use crate::rewrite::QueryParameter;

/// The catalog name tarn registers in DataFusion.
pub const CATALOG: &str = "tarn";

/// A query as the REST API receives it.
#[derive(Debug, Clone, Default)]
pub struct QueryRequest {
    pub sql: String,
    pub parameters: Vec<QueryParameter>,
    pub default_row_limit: Option<usize>,
}

/// One entry of `column_fields`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ColumnField {
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
}

/// A finished query.
#[derive(Debug, Clone)]
pub struct QueryOutput {
    pub query_id: String,
    pub results: Vec<Map<String, Value>>,
    pub column_fields: Vec<ColumnField>,
    pub collections: Vec<String>,
    pub elapsed_ms: u64,
    pub warnings: Vec<String>,
}

/// The runtime queries execute on, apart from the one that serves connections and
/// ingests. DataFusion's operators are polled without preemption, and one poll of a heavy
/// operator can take seconds; on a runtime of their own, such queries leave the server's
/// threads free to accept connections, answer health checks, ingest and take cancel
/// requests (the OS shares the cores between the two runtimes' threads). One per process,
/// with a worker per core, started on first use and kept until the process ends.
pub fn query_runtime() -> &'static tokio::runtime::Handle {
    static HANDLE: OnceLock<tokio::runtime::Handle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("tarn-query")
            .enable_all()
            .build()
            .expect("the query runtime starts (threads can be created)");
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("tarn-query-rt".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .expect("the query runtime's thread starts");
        handle
    })
}

/// A task on another runtime, aborted when its awaiting future is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<TarnResult<T>>);

impl<T> Future for AbortOnDrop<T> {
    type Output = TarnResult<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TarnResult<T>> {
        Pin::new(&mut self.0).poll(cx).map(|joined| {
            joined.unwrap_or_else(|e| Err(TarnError::internal(format!("the query stopped: {e}"))))
        })
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Plans and runs SQL over the collections of a [`Storage`]. Cloning is cheap: clones
/// share the session and the storage.
#[derive(Clone)]
pub struct QueryEngine {
    ctx: SessionContext,
    storage: Arc<Storage>,
    kept: Arc<KeptPlans>,
}

/// Physical plans kept to run again, by query text and parameters: a dashboard sends the
/// same few queries every second or two, and planning one through DataFusion took most of
/// the time of a query over a one-minute window (about 1.2 of 1.5 ms for Live Tweets).
///
/// Invariant: a kept plan gives the answer planning the query afresh would give. It
/// holds no value of the moment it was planned: its scans are bound again to each run's
/// snapshot and time ([`crate::table::rebind_scans`]), nothing outside them reads the
/// query's time, no operator was planned on an exact row count, and every operator in it
/// resets to its first-run state. A collection's schema change, drop or re-creation
/// makes its plans stale; they are planned again on their next run.
#[derive(Default)]
struct KeptPlans {
    plans: Mutex<std::collections::HashMap<(String, String), Arc<KeptPlan>>>,
}

/// Kept plans at most; a full map is emptied and fills again with the queries still sent.
const MAX_KEPT_PLANS: usize = 512;

/// What a run of a kept query needs besides its plan's operators.
#[derive(Clone)]
struct KeptPlan {
    plan: Arc<dyn ExecutionPlan>,
    task: Arc<TaskContext>,
    schema: SchemaRef,
    collections: Vec<String>,
    warnings: Vec<String>,
}

impl KeptPlans {
    fn key(req: &QueryRequest) -> (String, String) {
        let params = serde_json::to_string(&req.parameters).unwrap_or_default();
        (req.sql.clone(), params)
    }

    fn get(&self, key: &(String, String)) -> Option<Arc<KeptPlan>> {
        self.plans.lock().get(key).cloned()
    }

    fn insert(&self, key: (String, String), plan: Arc<KeptPlan>) {
        let mut plans = self.plans.lock();
        if plans.len() >= MAX_KEPT_PLANS {
            plans.clear();
        }
        plans.insert(key, plan);
    }

    fn remove(&self, key: &(String, String)) {
        self.plans.lock().remove(key);
    }
}

#[cfg(test)]
impl QueryEngine {
    /// Whether the plan of `sql` (without parameters) is kept to run again.
    fn plan_kept(&self, sql: &str) -> bool {
        let key = KeptPlans::key(&QueryRequest {
            sql: sql.to_owned(),
            ..Default::default()
        });
        self.kept.get(&key).is_some()
    }

    /// The kept plan of `sql` (without parameters), as EXPLAIN shows it.
    fn kept_plan_text(&self, sql: &str) -> Option<String> {
        let key = KeptPlans::key(&QueryRequest {
            sql: sql.to_owned(),
            ..Default::default()
        });
        let kept = self.kept.get(&key)?;
        Some(
            datafusion::physical_plan::displayable(kept.plan.as_ref())
                .indent(false)
                .to_string(),
        )
    }
}

/// What the dialect layer makes of a query: the statement, the warnings, the CTE names and
/// the collection schemas it judged paths by (workspace, name, schema).
pub type Dialected = (
    datafusion::sql::parser::Statement,
    Vec<String>,
    Vec<String>,
    Vec<(String, String, SchemaRef)>,
);

/// A physical plan ready to run, with what the response needs.
struct Ready {
    plan: Arc<dyn ExecutionPlan>,
    task: Arc<TaskContext>,
    schema: SchemaRef,
    collections: Vec<String>,
    warnings: Vec<String>,
}

/// Operators known to hold no state of a run that `reset_state` does not reset, nor any
/// value of the moment they were planned. One that makes a dynamic filter is one only if
/// it makes a new one when reset (a top-n does; an aggregate keeps its own).
fn keepable(plan: &Arc<dyn ExecutionPlan>) -> bool {
    const KEEPABLE: [&str; 15] = [
        "SegmentsExec",
        "ProjectionExec",
        "FilterExec",
        "SortPreservingMergeExec",
        "CoalescePartitionsExec",
        "CoalesceBatchesExec",
        "RepartitionExec",
        "GlobalLimitExec",
        "LocalLimitExec",
        "CooperativeExec",
        "UnnestExec",
        "AggregateExec",
        "UnionExec",
        "BoundedWindowAggExec",
        "WindowAggExec",
    ];
    // A top-n makes a new threshold when reset; an aggregate keeps its own.
    let is_sort = plan
        .downcast_ref::<datafusion::physical_plan::sorts::sort::SortExec>()
        .is_some();
    let node_ok = is_sort
        || (KEEPABLE.contains(&plan.name()) && plan.dynamic_expressions_produced().is_empty());
    // A dynamic filter another operator took in (a sort without a limit puts its parent
    // top-n's in a filter of its own) would keep the threshold of the run it was made in.
    let holds_dynamic_filter = !is_sort && {
        let mut found = false;
        let _ = plan.apply_expressions(&mut |e| {
            found |= e
                .exists(|x| Ok(x.downcast_ref::<DynamicFilterPhysicalExpr>().is_some()))
                .unwrap_or(true);
            Ok(TreeNodeRecursion::Continue)
        });
        found
    };
    let leaf_ok = !plan.children().is_empty() || plan.name() == "SegmentsExec";
    node_ok && leaf_ok && !holds_dynamic_filter && plan.children().into_iter().all(keepable)
}

/// Whether the plan calls a function DataFusion evaluates once while planning from what
/// holds at that moment (a `Stable` one: a collection's size, a name's OID) other than the
/// query's time, which the scans bind on each run. Checked before optimizing, which folds
/// them into constants.
fn reads_the_moment(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|node| {
        for e in node.expressions() {
            found |= e
                .exists(|x| {
                    Ok(matches!(x, Expr::ScalarFunction(f)
                        if f.func.signature().volatility == Volatility::Stable
                            && !crate::table::reads_query_time(x)))
                })
                .unwrap_or(true);
        }
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

/// Whether the query's time (`now()`) is read anywhere but in the filters of collection
/// scans, which bind it on each run.
fn reads_time_outside_scans(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|node| {
        let in_scan = matches!(node, LogicalPlan::TableScan(scan)
        if datafusion::datasource::source_as_provider(&scan.source).is_ok_and(|p| {
            p.downcast_ref::<crate::table::CollectionTable>().is_some()
        }));
        if !in_scan {
            found |= node
                .expressions()
                .iter()
                .any(crate::table::reads_query_time);
        }
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

impl QueryEngine {
    pub fn new(storage: Arc<Storage>) -> QueryEngine {
        let mut config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG, DEFAULT_WORKSPACE)
            .with_create_default_catalog_and_schema(false)
            // information_schema.tables and .columns: workspaces as schemas, collections
            // as tables (for Postgres tools and `SHOW TABLES`).
            .with_information_schema(true)
            .with_target_partitions(std::thread::available_parallelism().map_or(2, |n| n.get()));
        // Field names are case-sensitive in JSON, so identifiers are too.
        config.options_mut().sql_parser.enable_ident_normalization = false;
        // A scan's row count is an estimate (its segments' rows before the filters, an
        // upper bound); with it, a scan of a few thousand rows is not split among the
        // cores through a round-robin repartition, whose task and channels cost more than
        // the work they share (Incoming Tweets: 0.16 -> 0.19 ms once such scans were
        // planned in one partition).
        config
            .options_mut()
            .execution
            .use_row_number_estimates_to_optimize_partitioning = true;
        let ctx = SessionContext::new_with_config(config);
        ctx.register_catalog(
            CATALOG,
            Arc::new(TarnCatalog {
                storage: storage.clone(),
            }),
        );
        crate::functions::register(&ctx);
        crate::pgcatalog::register_with_storage(&ctx, &storage);
        ctx.add_optimizer_rule(Arc::new(crate::subfields::NarrowStructScans));
        QueryEngine {
            ctx,
            storage,
            kept: Arc::default(),
        }
    }

    /// Runs one query on the query runtime ([`query_runtime`]). Dropping the returned
    /// future (a client that went away, a Postgres cancel request) stops the query: its
    /// task is aborted, and DataFusion's own tasks with it.
    pub async fn query(&self, req: &QueryRequest) -> TarnResult<QueryOutput> {
        let engine = self.clone();
        let req = req.clone();
        AbortOnDrop(query_runtime().spawn(async move { engine.query_here(&req).await })).await
    }

    /// Runs one query on the caller's runtime.
    async fn query_here(&self, req: &QueryRequest) -> TarnResult<QueryOutput> {
        let started = Instant::now();
        let query_id = uuid::Uuid::new_v4().to_string();
        let Ready {
            plan,
            task,
            schema,
            collections,
            warnings,
        } = self.prepare(req).await?;
        let batches = datafusion::physical_plan::collect(plan, task)
            .await
            .map_err(|e| query_error(e, &req.sql, &Known::default()))?;
        let names = output_names(&schema);
        let mut results = Vec::new();
        for b in &batches {
            for row in tarn_storage::to_json::batch_to_json_rows(b) {
                results.push(rename_row(row, &schema, &names));
            }
        }
        if let Some(limit) = req.default_row_limit {
            results.truncate(limit);
        }
        let column_fields = schema
            .fields()
            .iter()
            .zip(&names)
            .filter(|(f, _)| f.name() != tarn_storage::types::NULLS)
            .map(|(f, n)| ColumnField {
                name: n.clone(),
                type_: rockset_type_name(f.data_type()).to_owned(),
            })
            .collect();
        Ok(QueryOutput {
            query_id,
            results,
            column_fields,
            collections,
            elapsed_ms: started.elapsed().as_millis() as u64,
            warnings,
        })
    }
}

impl QueryEngine {
    /// The dialect layer alone: parses under the Rockset dialect, replaces undefined paths
    /// and applies the rewrites. Returns the statement, the warnings, the CTE names and the
    /// collection schemas it judged paths by (workspace, name, schema).
    pub fn dialect(&self, sql: &str, params: &[QueryParameter]) -> TarnResult<Dialected> {
        let resolved: Mutex<Vec<(String, String, SchemaRef)>> = Mutex::default();
        let resolve = |ws: Option<&str>, name: &str| {
            let ws = ws.unwrap_or(DEFAULT_WORKSPACE);
            let schema = self
                .storage
                .get_collection(ws, name)
                .ok()
                .map(|(_, c)| c.schema())?;
            resolved
                .lock()
                .push((ws.to_owned(), name.to_owned(), schema.clone()));
            Some(schema)
        };
        let (statement, warnings, ctes) = dialect_layer(sql, params, &resolve)?;
        Ok((statement, warnings, ctes, resolved.into_inner()))
    }

    /// The physical plan of a query, ready to run: its kept plan bound again when there is
    /// one ([`KeptPlans`]), else planned (and kept when it can be).
    async fn prepare(&self, req: &QueryRequest) -> TarnResult<Ready> {
        let now = chrono::Utc::now();
        let key = KeptPlans::key(req);
        if let Some(kept) = self.kept.get(&key) {
            let rerun = crate::table::rebind_scans(kept.plan.clone(), &self.storage, now).and_then(
                |bound| {
                    bound
                        .map(|p| {
                            // The top-n's new threshold, pushed into the new scans.
                            FilterPushdown::new_post_optimization()
                                .optimize(p, kept.task.session_config().options())
                        })
                        .transpose()
                },
            );
            match rerun {
                Ok(Some(plan)) => {
                    let ready = Ready {
                        plan,
                        task: kept.task.clone(),
                        schema: kept.schema.clone(),
                        collections: kept.collections.clone(),
                        warnings: kept.warnings.clone(),
                    };
                    // The plan kept from now on holds this run's segments, not the first
                    // run's, which compaction and retention may since have let go.
                    self.kept.insert(
                        key,
                        Arc::new(KeptPlan {
                            plan: ready.plan.clone(),
                            ..kept.as_ref().clone()
                        }),
                    );
                    return Ok(ready);
                }
                // A stale plan, or one that cannot be bound again: planned afresh, which
                // reports any error in the query's own terms.
                Ok(None) | Err(_) => self.kept.remove(&key),
            }
        }
        // The collection schemas the dialect layer judged paths by: a plan is kept only if
        // it was planned over the same ones (a write between the two may have grown one).
        let (statement, warnings, ctes, resolved) = self.dialect(&req.sql, &req.parameters)?;
        let named = match &statement {
            DFStatement::Statement(s) => crate::paths::query_columns(s),
            _ => None,
        };
        if let Some(named) = named
            && let Some((ready, keep)) = self.plan_to_keep(&statement, named, now, &warnings).await
        {
            let same_schemas =
                crate::table::scan_schemas(&ready.plan)
                    .into_iter()
                    .all(|(ws, name, planned)| {
                        resolved
                            .iter()
                            .filter(|(w, n, _)| *w == ws && *n == name)
                            .all(|(_, _, judged)| Arc::ptr_eq(judged, &planned))
                    });
            if keep && same_schemas {
                self.kept.insert(
                    key,
                    Arc::new(KeptPlan {
                        plan: ready.plan.clone(),
                        task: ready.task.clone(),
                        schema: ready.schema.clone(),
                        collections: ready.collections.clone(),
                        warnings: ready.warnings.clone(),
                    }),
                );
            }
            return Ok(ready);
        }
        let (df, warnings) = self.plan(&req.sql, statement, warnings, ctes).await?;
        let collections = scanned_collections(df.logical_plan());
        let schema = Arc::new(df.schema().as_arrow().clone());
        let task = Arc::new(df.task_ctx());
        let plan = df
            .create_physical_plan()
            .await
            .map_err(|e| query_error(e, &req.sql, &Known::default()))?;
        Ok(Ready {
            plan,
            task,
            schema,
            collections,
            warnings,
        })
    }

    /// Plans a query that names its columns ([`crate::paths::query_columns`]) with only
    /// those columns of its collections and, as far as planning can, without the query's
    /// time, so that the plan may be kept; true with it when it can be kept. `None` when
    /// planning this way fails for any reason: the query is then planned as any other,
    /// which reports the error (or replaces an unknown bare field).
    async fn plan_to_keep(
        &self,
        statement: &DFStatement,
        named: std::collections::HashSet<String>,
        now: chrono::DateTime<chrono::Utc>,
        warnings: &[String],
    ) -> Option<(Ready, bool)> {
        let mut state = self.ctx.state();
        // Without a start time DataFusion leaves `now()` unevaluated, for the scans to
        // bind on each run.
        state.execution_props_mut().query_execution_start_time = None;
        let plan = crate::catalog::with_query_columns(
            Arc::new(named),
            state.statement_to_plan(statement.clone()),
        )
        .await
        .ok()?;
        let schema = Arc::new(plan.schema().as_arrow().clone());
        let of_the_moment = reads_the_moment(&plan);
        let mut optimized = state.optimize(&plan).ok()?;
        state.execution_props_mut().query_execution_start_time = Some(now);
        let time_outside = reads_time_outside_scans(&optimized);
        if time_outside {
            // Evaluated once, for this run only.
            optimized = state.optimize(&optimized).ok()?;
        }
        let physical = state
            .query_planner()
            .create_physical_plan(&optimized, &state)
            .await
            .ok()?;
        let keep = !time_outside && !of_the_moment && keepable(&physical);
        Some((
            Ready {
                plan: physical,
                task: Arc::new(TaskContext::from(&state)),
                schema,
                collections: scanned_collections(&optimized),
                warnings: warnings.to_vec(),
            },
            keep,
        ))
    }

    /// The optimized logical plan of `sql`, as it would run.
    pub async fn optimized_plan(&self, sql: &str) -> TarnResult<LogicalPlan> {
        let (statement, warnings, ctes, _) = self.dialect(sql, &[])?;
        let (df, _) = self.plan(sql, statement, warnings, ctes).await?;
        df.into_optimized_plan()
            .map_err(|e| query_error(e, sql, &Known::default()))
    }

    /// Runs the dialect layer, then plans through DataFusion.
    async fn plan(
        &self,
        sql: &str,
        mut statement: DFStatement,
        mut warnings: Vec<String>,
        ctes: Vec<String>,
    ) -> TarnResult<(datafusion::dataframe::DataFrame, Vec<String>)> {
        // The names to suggest are gathered only when planning fails.
        let err = |e| {
            let known = Known {
                ctes: ctes.clone(),
                collections: self
                    .storage
                    .list_collections(None)
                    .into_iter()
                    .map(|(i, _)| i.name)
                    .collect(),
            };
            query_error(e, sql, &known)
        };
        let state = self.ctx.state();
        // A bare field no document has (`SELECT m FROM t`) is undefined, as in Rockset:
        // DataFusion names it, it becomes NULL and the response warns. Qualified paths
        // (`t.m`) were already handled by the dialect layer.
        let mut attempts = 0;
        let plan = loop {
            match state.statement_to_plan(statement.clone()).await {
                Ok(plan) => break plan,
                Err(e) => match crate::paths::unknown_bare_field(&e) {
                    Some((field, valid)) if attempts < 16 => {
                        attempts += 1;
                        if !crate::paths::replace_bare_identifier(&mut statement, &field) {
                            return Err(err(e));
                        }
                        let mut w =
                            format!("{field} does not occur in the collections the query reads");
                        if let Some(s) = crate::paths::nearest(&field, &valid) {
                            w.push_str(&format!("; did you mean {s}?"));
                        }
                        warnings.push(w);
                    }
                    _ => return Err(err(e)),
                },
            }
        };
        let df = self.ctx.execute_logical_plan(plan).await.map_err(err)?;
        Ok((df, warnings))
    }
}

/// The dialect layer over any tables: `resolve` gives the schema of a table by workspace
/// and name (None when it is not known). Returns the statement, the warnings and the CTE
/// names.
pub fn dialect_layer(
    sql: &str,
    params: &[QueryParameter],
    resolve: crate::paths::Resolver,
) -> TarnResult<(datafusion::sql::parser::Statement, Vec<String>, Vec<String>)> {
    let preprocessed = crate::rewrite::preprocess(sql);
    let mut statements =
        datafusion::sql::parser::DFParser::parse_sql_with_dialect(&preprocessed, &RocksetDialect)
            .map_err(|e| query_error(e, sql, &Known::default()))?;
    let mut statement = match (statements.pop_front(), statements.is_empty()) {
        (Some(s), true) => s,
        (None, _) => return Err(TarnError::query("the query is empty")),
        (Some(_), false) => return Err(TarnError::query("send one statement per query")),
    };
    let mut warnings = Vec::new();
    let mut ctes = Vec::new();
    let inner = match &mut statement {
        datafusion::sql::parser::Statement::Statement(s) => Some(s.as_mut()),
        datafusion::sql::parser::Statement::Explain(e) => match e.statement.as_mut() {
            datafusion::sql::parser::Statement::Statement(s) => Some(s.as_mut()),
            _ => None,
        },
        _ => None,
    };
    if let Some(s) = inner {
        ctes = crate::rewrite::cte_names(s);
        warnings = crate::paths::replace_undefined_paths(s, resolve);
        crate::rewrite::rewrite(s, params)?;
        // Postgres tools' catalog queries (`::regclass`, correlated catalog subqueries...).
        crate::pgcatalog::rewrite(s, resolve)?;
    }
    Ok((statement, warnings, ctes))
}

/// Rockset names an unaliased path by its last component and an unaliased aggregate `?fn`.
/// Two columns never share a name: a repeated name gets a number (`?count`, `?count1`).
pub(crate) fn output_names(schema: &datafusion::arrow::datatypes::Schema) -> Vec<String> {
    let mut names: Vec<String> = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let base = rockset_name(f.name(), f.data_type());
        let mut name = base.clone();
        let mut n = 1;
        while names.contains(&name) {
            name = format!("{base}{n}");
            n += 1;
        }
        names.push(name);
    }
    names
}

fn rockset_name(name: &str, _dt: &DataType) -> String {
    if let Some(open) = name.find('(') {
        let func = &name[..open];
        if !func.is_empty() && func.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return format!("?{}", func.to_ascii_lowercase());
        }
    }
    if let Some(stripped) = name.strip_suffix(']')
        && let Some(open) = stripped.rfind('[')
    {
        return stripped[open + 1..].to_owned();
    }
    name.to_owned()
}

pub(crate) fn rename_row(
    row: Map<String, Value>,
    schema: &datafusion::arrow::datatypes::Schema,
    names: &[String],
) -> Map<String, Value> {
    if schema
        .fields()
        .iter()
        .zip(names)
        .all(|(f, n)| f.name() == n)
    {
        return row;
    }
    let mut out = Map::with_capacity(row.len());
    let mut row = row;
    for (f, n) in schema.fields().iter().zip(names) {
        if let Some(v) = row.remove(f.name()) {
            out.insert(n.clone(), v);
        }
    }
    out
}

/// The collections a plan reads, as `workspace.collection`.
fn scanned_collections(plan: &LogicalPlan) -> Vec<String> {
    let mut out = Vec::new();
    let _ = plan.apply_with_subqueries(|p| {
        if let LogicalPlan::TableScan(scan) = p {
            let t = &scan.table_name;
            let name = format!("{}.{}", t.schema().unwrap_or(DEFAULT_WORKSPACE), t.table());
            if !out.contains(&name) {
                out.push(name);
            }
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    out
}

/// Converts a DataFusion error into a query error with line and column when the parser gave
/// them, and with collection names in Rockset's words.
/// Names a query error can suggest: the statement's CTEs and the workspace's collections.
#[derive(Debug, Default)]
pub struct Known {
    pub ctes: Vec<String>,
    pub collections: Vec<String>,
}

/// The 1-based line and column of the first whole-word occurrence of `word` in `sql`.
fn locate(sql: &str, word: &str) -> Option<(u64, u64)> {
    if word.is_empty() {
        return None;
    }
    let bytes = sql.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut from = 0;
    while let Some(off) = sql[from..].find(word) {
        let at = from + off;
        let end = at + word.len();
        let before_ok = at == 0 || !is_ident(bytes[at - 1]);
        let after_ok = end >= bytes.len() || !is_ident(bytes[end]);
        if before_ok && after_ok {
            let line = sql[..at].matches('\n').count() as u64 + 1;
            let column = sql[..at]
                .rsplit('\n')
                .next()
                .map_or(0, |l| l.chars().count()) as u64
                + 1;
            return Some((line, column));
        }
        from = end;
    }
    None
}

pub fn query_error(e: DataFusionError, sql: &str, known: &Known) -> TarnError {
    let text = e.to_string();
    let message = text
        .trim_start_matches("SQL error: ")
        .trim_start_matches("Error during planning: ")
        .trim_start_matches("ParserError(\"")
        .trim_end_matches("\")")
        .to_owned();
    let mut err = TarnError::query(message.clone());
    if let Some(pos) = message.find("Line: ") {
        let rest = &message[pos + 6..];
        let line: Option<u64> = rest
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|s| s.parse().ok());
        let column: Option<u64> = rest
            .find("Column: ")
            .and_then(|c| rest[c + 8..].split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|s| s.parse().ok());
        if let (Some(l), Some(c)) = (line, column) {
            err = err.at(l, c);
        }
    } else if message.contains("found: EOF") {
        // The parser gives no position for an unexpected end: point just past the text.
        let text = sql.trim_end();
        let line = text.lines().count().max(1) as u64;
        let column = text.lines().last().map_or(0, |l| l.chars().count()) as u64 + 1;
        err = err.at(line, column);
    }
    if let Some(rest) = message.strip_prefix("table '")
        && let Some(end) = rest.find("' not found")
    {
        let full = &rest[..end];
        let parts: Vec<&str> = full.split('.').collect();
        let (ws, name) = match parts.as_slice() {
            [_, ws, name] | [ws, name] => (*ws, *name),
            _ => (DEFAULT_WORKSPACE, full),
        };
        err.message = format!("collection '{name}' not found in workspace '{ws}'");
        if let Some(cte) = crate::paths::nearest(name, &known.ctes) {
            err.message
                .push_str(&format!(" (a CTE named '{cte}' is defined)"));
        } else if let Some(c) = crate::paths::nearest(name, &known.collections) {
            err.message.push_str(&format!("; did you mean '{c}'?"));
        }
        if err.line.is_none()
            && let Some((l, c)) = locate(sql, name)
        {
            err = err.at(l, c);
        }
    }
    // Planning errors carry no position: point at the first name the message quotes.
    if err.line.is_none() {
        let quoted = message.split('\'').nth(1).map(str::to_owned);
        let field = message.split("No field named ").nth(1).map(|r| {
            let r = r.trim_end_matches(|c: char| c == '.' || c.is_whitespace());
            let r = r.split(['.', ' ']).next_back().unwrap_or(r);
            r.trim_matches('"').to_owned()
        });
        if let Some((l, c)) = field
            .or(quoted)
            .and_then(|w| locate(sql, w.rsplit('.').next().unwrap_or(&w)))
        {
            err = err.at(l, c);
        }
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_follow_rockset() {
        assert_eq!(rockset_name("count(*)", &DataType::Int64), "?count");
        assert_eq!(
            rockset_name("max(CAST(t.timestamp_ms AS Int64))", &DataType::Int64),
            "?max"
        );
        assert_eq!(
            rockset_name("t.user[screen_name]", &DataType::Utf8),
            "screen_name"
        );
        assert_eq!(rockset_name("screen_name", &DataType::Utf8), "screen_name");
    }

    async fn run(engine: &QueryEngine, sql: &str) -> QueryOutput {
        engine
            .query(&QueryRequest {
                sql: sql.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    async fn write(c: &tarn_storage::Collection, docs: Vec<serde_json::Value>) {
        use tarn_storage::document::{IngestContext, prepare};
        let meta = serde_json::json!(null);
        let ctx = IngestContext {
            event_time_info: None,
            now_micros: 0,
            meta: &meta,
        };
        let docs = docs
            .into_iter()
            .map(|d| {
                let text = d.to_string().into_bytes();
                (prepare(d, &ctx).unwrap(), text)
            })
            .collect();
        c.insert(docs, Vec::new()).await.unwrap();
    }

    #[tokio::test]
    async fn a_kept_plan_answers_as_planning_afresh_would_after_writes() {
        let (_dir, storage, engine) = crate::testing::engine_over(json!({"k": 0})).await;
        let (_, c) = storage.get_collection("commons", "c").unwrap();
        let queries = [
            ("SELECT k, pad FROM c ORDER BY k DESC LIMIT 5", true),
            ("SELECT count(*) AS n FROM c WHERE k > 10", true),
            (
                "SELECT odd, count(*) AS n FROM c GROUP BY odd ORDER BY odd",
                true,
            ),
            (
                "SELECT t.k FROM c t WHERE t.odd ORDER BY t.k DESC LIMIT 3",
                true,
            ),
            ("SELECT max(k) AS m, min(pad) AS p FROM c", true),
            // A sort under a top-n puts the top-n's threshold in a filter of its own,
            // which a reset keeps: planned each time.
            (
                "SELECT odd, array_agg(k ORDER BY k DESC) AS ks FROM c GROUP BY odd ORDER BY odd LIMIT 1",
                false,
            ),
            // A time outside the scan's filters.
            (
                "SELECT k, CURRENT_TIMESTAMP() > TIMESTAMP '2000-01-01' AS later FROM c ORDER BY k LIMIT 2",
                false,
            ),
            // A wildcard reaches columns it does not name.
            ("SELECT * FROM c ORDER BY k DESC LIMIT 2", false),
        ];
        for round in 0..4u64 {
            for (sql, _) in queries {
                // An engine of its own plans every query afresh.
                let fresh = QueryEngine::new(storage.clone());
                let expected = run(&fresh, sql).await.results;
                assert_eq!(
                    run(&engine, sql).await.results,
                    expected,
                    "{sql}, round {round}"
                );
            }
            // Newer and larger keys each round, sealed and unsealed ones.
            let docs = (0..2_000)
                .map(|i| {
                    let k = round * 10_000 + (i * 7_919) % 5_000;
                    json!({"k": k, "pad": format!("{round}/{i}"), "odd": k % 2 == 1})
                })
                .collect();
            write(&c, docs).await;
            if round % 2 == 0 {
                c.seal().await.unwrap();
            }
        }
        for (sql, kept) in queries {
            let expected = run(&QueryEngine::new(storage.clone()), sql).await.results;
            assert_eq!(run(&engine, sql).await.results, expected, "{sql}");
            let expected_rows = if sql.contains("LIMIT") {
                "limited"
            } else {
                "all"
            };
            assert!(!expected.is_empty(), "{sql}: {expected_rows} rows");
            let plan = run(&engine, &format!("EXPLAIN {sql}")).await.results;
            assert_eq!(engine.plan_kept(sql), kept, "{sql}: {plan:?}");
        }
        // Runs of one kept plan at once each get operators of their own.
        let sql = queries[0].0;
        let expected = run(&engine, sql).await.results;
        let runs: Vec<_> = (0..8)
            .map(|_| {
                let engine = engine.clone();
                tokio::spawn(async move { run(&engine, sql).await.results })
            })
            .collect();
        for r in runs {
            assert_eq!(r.await.unwrap(), expected);
        }
        storage.close();
    }

    #[tokio::test]
    async fn a_kept_plan_reads_the_time_of_each_run() {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let (_dir, storage, engine) =
            crate::testing::engine_over(json!({"ts": now_ms - 60_000})).await;
        let (_, c) = storage.get_collection("commons", "c").unwrap();
        write(&c, vec![json!({"ts": now_ms})]).await;
        let window =
            "SELECT count(*) AS n FROM c WHERE ts > UNIX_MILLIS(CURRENT_TIMESTAMP() - SECONDS(3))";
        let clock = "SELECT UNIX_MILLIS(CURRENT_TIMESTAMP()) AS at, count(*) AS n FROM c";
        assert_eq!(run(&engine, window).await.results[0]["n"], json!(1));
        let first = run(&engine, clock).await.results[0]["at"].as_i64().unwrap();
        // The window's time is bound by its scan on each run; a time elsewhere in the plan
        // keeps it from being kept.
        assert!(engine.plan_kept(window));
        assert!(!engine.plan_kept(clock));
        tokio::time::sleep(std::time::Duration::from_millis(3_500)).await;
        assert_eq!(run(&engine, window).await.results[0]["n"], json!(0));
        let later = run(&engine, clock).await.results[0]["at"].as_i64().unwrap();
        assert!(later >= first + 3_500, "{first} then {later}");
        storage.close();
    }

    #[tokio::test]
    async fn a_kept_plan_is_planned_again_when_the_schema_grows() {
        let (_dir, storage, engine) = crate::testing::engine_over(json!({"k": 1})).await;
        let (_, c) = storage.get_collection("commons", "c").unwrap();
        let sql = "SELECT t.k, t.extra AS extra FROM c t ORDER BY t.k";
        let before = run(&engine, sql).await;
        assert_eq!(
            before.results,
            vec![json!({"k": 1, "extra": null}).as_object().unwrap().clone()]
        );
        assert_eq!(before.warnings.len(), 1, "{:?}", before.warnings);
        assert_eq!(run(&engine, sql).await.warnings.len(), 1);
        write(&c, vec![json!({"k": 2, "extra": "x"})]).await;
        let after = run(&engine, sql).await;
        assert_eq!(
            after.results[1],
            json!({"k": 2, "extra": "x"}).as_object().unwrap().clone()
        );
        assert!(after.warnings.is_empty(), "{:?}", after.warnings);
        assert!(engine.plan_kept(sql));
        storage.close();
    }

    /// A scan of a few segments runs in one partition; its kept plan is planned again, in
    /// more, once its segments hold far more rows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kept_one_partition_scan_is_planned_again_when_its_rows_grow() {
        let (_dir, storage, engine) = crate::testing::engine_over(json!({"k": 0})).await;
        let (_, c) = storage.get_collection("commons", "c").unwrap();
        let sql = "SELECT count(*) AS n FROM c WHERE k >= 0";
        assert_eq!(run(&engine, sql).await.results[0]["n"], json!(1));
        assert_eq!(run(&engine, sql).await.results[0]["n"], json!(1));
        let plan = engine.kept_plan_text(sql).expect("the plan is kept");
        assert!(plan.contains("partitions=1,"), "{plan}");
        let grown = 4 * 65_536 + 1_000;
        for start in (0..grown).step_by(50_000) {
            let end = (start + 50_000).min(grown);
            write(&c, (start..end).map(|k| json!({"k": k + 1})).collect()).await;
        }
        assert_eq!(run(&engine, sql).await.results[0]["n"], json!(grown + 1));
        assert_eq!(run(&engine, sql).await.results[0]["n"], json!(grown + 1));
        let plan = engine.kept_plan_text(sql).expect("the plan is kept");
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(plan.contains("partitions=1,"), cores == 1, "{plan}");
        storage.close();
    }
}
