//! Runs a query: plan through DataFusion over a catalog of live collections, then JSON results.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
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
        QueryEngine { ctx, storage }
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
        let (df, warnings) = self.plan(&req.sql, &req.parameters).await?;
        let collections = scanned_collections(df.logical_plan());
        let schema = df.schema().as_arrow().clone();
        let batches = df
            .collect()
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
    /// and applies the rewrites. Returns the statement, the warnings and the CTE names.
    pub fn dialect(
        &self,
        sql: &str,
        params: &[QueryParameter],
    ) -> TarnResult<(datafusion::sql::parser::Statement, Vec<String>, Vec<String>)> {
        let resolve = |ws: Option<&str>, name: &str| {
            self.storage
                .get_collection(ws.unwrap_or(DEFAULT_WORKSPACE), name)
                .ok()
                .map(|(_, c)| c.schema())
        };
        dialect_layer(sql, params, &resolve)
    }

    /// The optimized logical plan of `sql`, as it would run.
    pub async fn optimized_plan(&self, sql: &str) -> TarnResult<LogicalPlan> {
        let (df, _) = self.plan(sql, &[]).await?;
        df.into_optimized_plan()
            .map_err(|e| query_error(e, sql, &Known::default()))
    }

    /// Runs the dialect layer, then plans through DataFusion.
    async fn plan(
        &self,
        sql: &str,
        params: &[QueryParameter],
    ) -> TarnResult<(datafusion::dataframe::DataFrame, Vec<String>)> {
        let (mut statement, mut warnings, ctes) = self.dialect(sql, params)?;
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
}
