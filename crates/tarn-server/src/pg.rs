//! The Postgres endpoint (`tarn serve --pg ADDR`), on the `pgwire` crate: the simple and
//! extended query protocols over the same query engine as the REST API, with the API key as
//! the password, and the statements tools send when they connect (`SET`, `SHOW`,
//! `version()`, `information_schema`). TLS through rustls when a certificate is configured
//! (`tls.rs`), SCRAM-SHA-256 or a cleartext password (`startup.rs`), and cancel requests:
//! a running statement of a session is dropped (DataFusion stops with it) and the client
//! gets SQLSTATE 57014.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream;
use pgwire::api::auth::DefaultServerParameterProvider;
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    DataRowEncoder, DescribePortalResponse, DescribeResponse, DescribeStatementResponse,
    FieldFormat, FieldInfo, QueryResponse, Response, Tag,
};
use pgwire::api::stmt::{NoopQueryParser, StoredStatement};
use pgwire::api::{ClientInfo, ConnectionHandle, ConnectionManager, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use serde_json::Value;
use tarn_common::TarnError;
use tarn_sql::{QueryParameter, QueryRequest};

use crate::AppState;

mod startup;
mod tls;

use startup::Startup;
pub use tls::PgTls;

/// The Postgres version tarn reports (tools pick their SQL by it).
pub const SERVER_VERSION: &str = "16.0";

fn user_error(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_owned(),
        code.to_owned(),
        message.into(),
    )))
}

fn query_error(e: TarnError) -> PgWireError {
    let mut msg = e.message;
    if let (Some(l), Some(c)) = (e.line, e.column) {
        msg = format!("{msg} (line {l}, column {c})");
    }
    let code = match e.kind {
        tarn_common::ErrorKind::NotFound => "42P01",
        tarn_common::ErrorKind::Auth => "28000",
        _ => "42601",
    };
    user_error(code, msg)
}

/// The Postgres type of a Rockset type name (`column_fields[].type`).
fn pg_type(rockset: &str) -> Type {
    match rockset {
        "int" => Type::INT8,
        "float" => Type::FLOAT8,
        "bool" => Type::BOOL,
        "timestamp" => Type::TIMESTAMPTZ,
        "object" | "array" | "variant" => Type::JSONB,
        _ => Type::TEXT,
    }
}

/// Splits a simple-query string into statements at `;` outside quotes.
fn split_statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    for c in sql.chars() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                cur.push(c);
            }
            (Some(q), c) if c == q => {
                quote = None;
                cur.push(c);
            }
            (None, ';') => {
                if !cur.trim().is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                cur.clear();
            }
            _ => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

/// `$1` placeholders become tarn's `:p1` parameters (outside string literals).
fn dollar_params(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut in_str = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            in_str = !in_str;
        }
        if c == '$' && !in_str && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push_str(":p");
            continue;
        }
        out.push(c);
    }
    out
}

/// Postgres spellings in psql's catalog queries that tarn's SQL dialect does not parse,
/// replaced outside string literals: `OPERATOR(pg_catalog.~)` becomes the plain operator
/// `~`, and a cast to an array type (`prattrs::pg_catalog.int2[]`) is dropped: the catalog's
/// array columns already hold tarn's types. The rest of what these queries need
/// (`::regclass`, `::oid`, `COLLATE`, correlated catalog subqueries...) is rewritten on the
/// parsed statement by `tarn_sql::pgcatalog::rewrite`.
fn pg_syntax(sql: &str) -> String {
    const PREFIX: &str = "OPERATOR(pg_catalog.";
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    let mut in_str = false;
    while let Some(c) = rest.chars().next() {
        if !in_str {
            if rest.starts_with(PREFIX)
                && let Some(end) = rest[PREFIX.len()..].find(')')
            {
                out.push_str(&rest[PREFIX.len()..PREFIX.len() + end]);
                rest = &rest[PREFIX.len() + end + 1..];
                continue;
            }
            if let Some(after) = rest.strip_prefix("::") {
                let name_len = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                    .unwrap_or(after.len());
                if name_len > 0 && after[name_len..].starts_with("[]") {
                    rest = &after[name_len + 2..];
                    continue;
                }
            }
        }
        if c == '\'' {
            in_str = !in_str;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Answers for statements tools send that are about the session, not data. `tls`: whether
/// the endpoint has a certificate (`SHOW ssl`, as Postgres answers it).
fn session_statement(sql: &str, tls: bool) -> Option<Response> {
    let s = sql.trim().trim_end_matches(';').trim();
    let lower = s.to_ascii_lowercase();
    let first = lower.split_whitespace().next().unwrap_or_default();
    match first {
        "" => Some(Response::EmptyQuery),
        "set" | "reset" | "discard" | "deallocate" | "listen" | "unlisten" | "savepoint"
        | "release" => Some(Response::Execution(Tag::new(&first.to_ascii_uppercase()))),
        "begin" | "start" => Some(Response::TransactionStart(Tag::new("BEGIN"))),
        "commit" | "end" => Some(Response::TransactionEnd(Tag::new("COMMIT"))),
        // `ROLLBACK TO SAVEPOINT` stays inside the transaction.
        "rollback" if lower.contains(" to ") => Some(Response::Execution(Tag::new("ROLLBACK"))),
        "rollback" | "abort" => Some(Response::TransactionEnd(Tag::new("ROLLBACK"))),
        "show" => {
            let name = lower["show".len()..].trim().trim_matches('"').to_owned();
            let value = match name.as_str() {
                "server_version" => SERVER_VERSION,
                "server_encoding" | "client_encoding" => "UTF8",
                "transaction isolation level" | "default_transaction_isolation" => "read committed",
                "standard_conforming_strings" | "integer_datetimes" => "on",
                "search_path" => "commons",
                "timezone" => "UTC",
                "datestyle" => "ISO, MDY",
                "max_identifier_length" => "63",
                "transaction_read_only" | "default_transaction_read_only" => "off",
                "ssl" if tls => "on",
                "ssl" => "off",
                _ => "",
            };
            let field = FieldInfo::new(name, None, None, Type::TEXT, FieldFormat::Text);
            let schema = Arc::new(vec![field]);
            let mut enc = DataRowEncoder::new(schema.clone());
            let row = enc.encode_field(&value).map(|_| enc.take_row());
            Some(Response::Query(QueryResponse::new(
                schema,
                stream::iter(vec![row]),
            )))
        }
        _ => None,
    }
}

/// The tarn backend behind every Postgres connection.
pub struct PgBackend {
    state: AppState,
    parser: Arc<NoopQueryParser>,
    /// Whether the endpoint has a TLS certificate.
    tls: bool,
}

/// Runs `work` until it ends or a cancel request for this session arrives; a cancelled
/// `work` is dropped, which stops its DataFusion execution, and the client gets SQLSTATE
/// 57014. pgwire does this itself around Query and Execute; Describe runs statements too.
async fn cancellable<C, T>(
    client: &C,
    work: impl std::future::Future<Output = PgWireResult<T>>,
) -> PgWireResult<T>
where
    C: ClientInfo,
{
    let Some(handle) = client.session_extensions().get::<Arc<ConnectionHandle>>() else {
        return work.await;
    };
    let cancel = handle.start_query().await;
    tokio::select! {
        result = work => result,
        Ok(()) = cancel => Err(PgWireError::QueryCanceled),
    }
}

/// What identifies a bound portal's run: its name, statement, parameter values and
/// result formats.
#[derive(PartialEq)]
struct PortalKey {
    name: String,
    sql: String,
    parameters: Vec<Option<bytes::Bytes>>,
    formats: String,
}

impl PortalKey {
    fn of(portal: &Portal<String>) -> PortalKey {
        PortalKey {
            name: portal.name.clone(),
            sql: portal.statement.statement.clone(),
            parameters: portal.parameters.clone(),
            formats: format!("{:?}", portal.result_column_format),
        }
    }
}

/// The result a Describe of a portal computed, kept in the session for the Execute that
/// follows it (libpq sends Parse, Bind, Describe and Execute together), so that the
/// statement runs once, not twice.
#[derive(Default)]
struct DescribedPortal(parking_lot::Mutex<Option<(PortalKey, Response)>>);

impl PgBackend {
    async fn run(
        &self,
        sql: &str,
        parameters: Vec<QueryParameter>,
        format: &Format,
    ) -> PgWireResult<Response> {
        if let Some(r) = session_statement(sql, self.tls) {
            return Ok(r);
        }
        let req = QueryRequest {
            sql: dollar_params(&pg_syntax(sql)),
            parameters,
            default_row_limit: None,
        };
        let out = self.state.engine.query(&req).await.map_err(query_error)?;
        if let Format::Individual(codes) = format
            && codes.len() != out.column_fields.len()
        {
            return Err(user_error(
                "08P01",
                format!(
                    "bind message has {} result formats but query has {} columns",
                    codes.len(),
                    out.column_fields.len()
                ),
            ));
        }
        let types: Vec<Type> = out
            .column_fields
            .iter()
            .map(|f| pg_type(&f.type_))
            .collect();
        let fields: Vec<FieldInfo> = out
            .column_fields
            .iter()
            .zip(&types)
            .enumerate()
            .map(|(i, (f, t))| {
                FieldInfo::new(f.name.clone(), None, None, t.clone(), format.format_for(i))
            })
            .collect();
        let schema = Arc::new(fields);
        let mut rows = Vec::with_capacity(out.results.len());
        for r in &out.results {
            let mut enc = DataRowEncoder::new(schema.clone());
            for (f, t) in out.column_fields.iter().zip(&types) {
                encode(&mut enc, r.get(&f.name).unwrap_or(&Value::Null), t)?;
            }
            rows.push(Ok(enc.take_row()));
        }
        Ok(Response::Query(QueryResponse::new(
            schema,
            stream::iter(rows),
        )))
    }
}

fn encode(enc: &mut DataRowEncoder, v: &Value, t: &Type) -> PgWireResult<()> {
    if v.is_null() {
        return enc.encode_field(&None::<i64>);
    }
    match *t {
        Type::INT8 => enc.encode_field(&v.as_i64()),
        Type::FLOAT8 => enc.encode_field(&v.as_f64()),
        Type::BOOL => enc.encode_field(&v.as_bool()),
        Type::TIMESTAMPTZ => {
            let t = v
                .as_str()
                .and_then(tarn_common::time::parse_iso8601_micros)
                .and_then(chrono::DateTime::<chrono::Utc>::from_timestamp_micros);
            enc.encode_field(&t)
        }
        Type::JSONB => enc.encode_field(v),
        _ => match v {
            Value::String(s) => enc.encode_field(&s.as_str()),
            other => enc.encode_field(&other.to_string()),
        },
    }
}

#[async_trait]
impl SimpleQueryHandler for PgBackend {
    async fn do_query<C>(&self, _client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut out = Vec::new();
        for statement in split_statements(query) {
            out.push(
                self.run(&statement, Vec::new(), &Format::UnifiedText)
                    .await?,
            );
        }
        if out.is_empty() {
            out.push(Response::EmptyQuery);
        }
        Ok(out)
    }
}

/// The bound parameters of a portal as tarn query parameters `p1`, `p2`...
fn portal_parameters(portal: &Portal<String>) -> PgWireResult<Vec<QueryParameter>> {
    let mut out = Vec::with_capacity(portal.parameter_len());
    for i in 0..portal.parameter_len() {
        let t = portal
            .statement
            .parameter_types
            .get(i)
            .cloned()
            .flatten()
            .unwrap_or(Type::UNKNOWN);
        // Each value is decoded as the type the client declared (binary sizes differ).
        let (type_, value) = match t {
            Type::INT2 => ("int", portal.parameter::<i16>(i, &t)?.map(Value::from)),
            Type::INT4 => ("int", portal.parameter::<i32>(i, &t)?.map(Value::from)),
            Type::INT8 => ("int", portal.parameter::<i64>(i, &t)?.map(Value::from)),
            Type::FLOAT4 => (
                "float",
                portal
                    .parameter::<f32>(i, &t)?
                    .map(|f| Value::from(f as f64)),
            ),
            Type::FLOAT8 => ("float", portal.parameter::<f64>(i, &t)?.map(Value::from)),
            Type::BOOL => ("bool", portal.parameter::<bool>(i, &t)?.map(Value::from)),
            Type::TIMESTAMPTZ => (
                "timestamp",
                portal
                    .parameter::<chrono::DateTime<chrono::FixedOffset>>(i, &t)?
                    .map(|d| Value::from(d.to_rfc3339())),
            ),
            _ => (
                "string",
                portal.parameter::<String>(i, &Type::TEXT)?.map(Value::from),
            ),
        };
        out.push(QueryParameter {
            name: format!("p{}", i + 1),
            type_: value.as_ref().map(|_| type_.to_owned()),
            value: value.unwrap_or(Value::Null),
        });
    }
    Ok(out)
}

#[async_trait]
impl ExtendedQueryHandler for PgBackend {
    type Statement = String;
    type QueryParser = NoopQueryParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let described = client
            .session_extensions()
            .get::<DescribedPortal>()
            .and_then(|d| d.0.lock().take());
        if let Some((key, response)) = described
            && key == PortalKey::of(portal)
        {
            return Ok(response);
        }
        let params = portal_parameters(portal)?;
        self.run(
            &portal.statement.statement,
            params,
            &portal.result_column_format,
        )
        .await
    }

    async fn do_describe_statement<C>(
        &self,
        client: &mut C,
        stmt: &StoredStatement<Self::Statement>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        // Parameters without a declared type are text; the columns are learnt by running
        // the statement with NULL parameters.
        let n = count_params(&stmt.statement);
        let param_types: Vec<Type> = (0..n)
            .map(|i| {
                stmt.parameter_types
                    .get(i)
                    .cloned()
                    .flatten()
                    .filter(|t| *t != Type::UNKNOWN)
                    .unwrap_or(Type::TEXT)
            })
            .collect();
        let fields = cancellable(client, self.describe_fields(&stmt.statement, n)).await?;
        Ok(DescribeStatementResponse::new(param_types, fields))
    }

    async fn do_describe_portal<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let params = portal_parameters(portal)?;
        let run = self.run(
            &portal.statement.statement,
            params,
            &portal.result_column_format,
        );
        match cancellable(client, run).await? {
            Response::Query(q) => {
                let fields = q.row_schema().to_vec();
                *client
                    .session_extensions()
                    .get_or_insert_with(DescribedPortal::default)
                    .0
                    .lock() = Some((PortalKey::of(portal), Response::Query(q)));
                Ok(DescribePortalResponse::new(fields))
            }
            _ => Ok(DescribePortalResponse::no_data()),
        }
    }
}

impl PgBackend {
    /// The columns of a statement, learnt by running it with NULL parameters (none when
    /// that fails).
    async fn describe_fields(&self, sql: &str, n: usize) -> PgWireResult<Vec<FieldInfo>> {
        let params = (1..=n)
            .map(|i| QueryParameter {
                name: format!("p{i}"),
                type_: None,
                value: Value::Null,
            })
            .collect();
        Ok(match self.run(sql, params, &Format::UnifiedBinary).await {
            Ok(Response::Query(q)) => q.row_schema().to_vec(),
            _ => Vec::new(),
        })
    }
}

/// The highest `$n` in a statement.
fn count_params(sql: &str) -> usize {
    let mut max = 0;
    let bytes = sql.as_bytes();
    let mut in_str = false;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\'' {
            in_str = !in_str;
        } else if bytes[i] == b'$' && !in_str {
            let digits: String = sql[i + 1..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(n) = digits.parse::<usize>() {
                max = max.max(n);
            }
        }
        i += 1;
    }
    max
}

impl Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppState")
    }
}

/// Builds the handlers of each connection.
pub struct PgHandlers {
    backend: Arc<PgBackend>,
    startup: Arc<Startup>,
    cancel: Arc<DefaultCancelHandler>,
}

fn parameters() -> DefaultServerParameterProvider {
    let mut p = DefaultServerParameterProvider::default();
    p.server_version = SERVER_VERSION.to_owned();
    p.scram_iterations = crate::auth::SCRAM_ITERATIONS as usize;
    p
}

impl PgWireServerHandlers for PgHandlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.backend.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.backend.clone()
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        self.startup.clone()
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        self.cancel.clone()
    }
}

/// Serves the Postgres protocol on `listener` until the task is dropped; with `tls`,
/// clients that ask for TLS get it (others stay in plain text), without it an SSLRequest
/// is answered `N`. No password is asked while no key exists and both the HTTP API
/// (`state.open_without_keys`) and this listener are on loopback.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState, tls: Option<PgTls>) {
    let loopback = listener
        .local_addr()
        .map(|a| a.ip().is_loopback())
        .unwrap_or(false);
    let manager = Arc::new(ConnectionManager::new());
    let handlers = Arc::new(PgHandlers {
        backend: Arc::new(PgBackend {
            state: state.clone(),
            parser: Arc::new(NoopQueryParser::new()),
            tls: tls.is_some(),
        }),
        startup: Arc::new(Startup::new(
            state.clone(),
            state.open_without_keys && loopback,
            parameters(),
            manager.clone(),
            tls.as_ref().map(|t| &t.cert_pem[..]),
        )),
        cancel: Arc::new(DefaultCancelHandler::new(manager)),
    });
    let acceptor = tls.map(|t| t.acceptor);
    loop {
        let (socket, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "pg accept failed");
                continue;
            }
        };
        let h = handlers.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if let Err(e) = pgwire::tokio::process_socket(socket, acceptor, h).await {
                tracing::debug!(error = %e, "pg connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_statements() {
        assert_eq!(
            dollar_params("SELECT $1, '$2' WHERE a = $12"),
            "SELECT :p1, '$2' WHERE a = :p12"
        );
        assert_eq!(count_params("SELECT $1, '$9' WHERE a = $3"), 3);
        assert_eq!(
            split_statements("SELECT 1; SELECT ';'; ;"),
            vec!["SELECT 1".to_string(), " SELECT ';'".to_string()]
        );
        assert!(matches!(
            session_statement("SET datestyle = ISO", false),
            Some(Response::Execution(_))
        ));
        assert!(session_statement("SELECT 1", false).is_none());
        assert_eq!(
            pg_syntax(
                "WHERE c.relname OPERATOR(pg_catalog.~) '^(a)$' AND x = 'OPERATOR(pg_catalog.~)'"
            ),
            "WHERE c.relname ~ '^(a)$' AND x = 'OPERATOR(pg_catalog.~)'"
        );
        assert_eq!(
            pg_syntax("SELECT a::pg_catalog.int2[], b::text, 'c::int[]'"),
            "SELECT a, b::text, 'c::int[]'"
        );
    }
}
