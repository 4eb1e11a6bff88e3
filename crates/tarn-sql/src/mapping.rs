//! Ingest transformations: a collection's `field_mapping_query` (`SELECT ... FROM _input
//! [WHERE ...]`) run over each incoming batch before it is stored.
//!
//! `_input` holds the batch's documents with `_id` and `_event_time` already resolved (the
//! collection's `event_time_info` applied), so the query can read and replace them. The
//! rows it returns are the documents stored; rows it filters out are dropped.

use std::sync::Arc;

use datafusion::arrow::array::new_null_array;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::{DataFusionError, SchemaError};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast::{
    ExceptSelectItem, Ident, SelectItem, SetExpr, Statement, visit_relations,
};
use serde_json::{Map, Value};
use tarn_common::{TarnError, TarnResult};
use tarn_storage::build::documents_to_batch;
use tarn_storage::document::{IngestContext, prepare};
use tarn_storage::{Document, EventTimeInfo};

use crate::engine::{dialect_layer, output_names, query_error, rename_row};

/// The table name a field mapping reads.
pub const INPUT: &str = "_input";

/// A checked `field_mapping_query`.
pub struct FieldMapping {
    sql: String,
    event_time_info: Option<EventTimeInfo>,
}

/// Checks that the statement is one query reading only `_input`.
fn check(statement: &datafusion::sql::parser::Statement, sql: &str) -> TarnResult<()> {
    let datafusion::sql::parser::Statement::Statement(s) = statement else {
        return Err(TarnError::invalid(format!(
            "field_mapping_query must be SELECT ... FROM _input, not: {sql}"
        )));
    };
    let Statement::Query(q) = s.as_ref() else {
        return Err(TarnError::invalid(format!(
            "field_mapping_query must be SELECT ... FROM _input, not: {sql}"
        )));
    };
    if !matches!(q.body.as_ref(), SetExpr::Select(_)) {
        return Err(TarnError::invalid(
            "field_mapping_query must be a single SELECT ... FROM _input",
        ));
    }
    let mut other: Option<String> = None;
    let mut reads_input = false;
    let _ = visit_relations(s.as_ref(), |r| {
        let name = r.0.last().map(|p| p.to_string()).unwrap_or_default();
        if name.trim_matches('"') == INPUT {
            reads_input = true;
        } else if other.is_none() {
            other = Some(r.to_string());
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    if let Some(o) = other {
        return Err(TarnError::invalid(format!(
            "field_mapping_query reads only _input, the incoming documents; it names {o}"
        )));
    }
    if !reads_input {
        return Err(TarnError::invalid(
            "field_mapping_query must read FROM _input",
        ));
    }
    Ok(())
}

impl FieldMapping {
    /// Checks the SQL; the error says what is wrong and where.
    pub fn compile(sql: &str, event_time_info: Option<EventTimeInfo>) -> TarnResult<FieldMapping> {
        let (statement, _, _) = dialect_layer(sql, &[], &|_, _| None).map_err(|e| TarnError {
            kind: tarn_common::ErrorKind::InvalidInput,
            ..e
        })?;
        check(&statement, sql)?;
        Ok(FieldMapping {
            sql: sql.to_owned(),
            event_time_info,
        })
    }

    /// Runs the mapping over documents. Returns the output documents and, for input
    /// documents that could not enter the mapping (a bad `_id` or `_event_time`), their
    /// errors.
    pub async fn apply(
        &self,
        docs: Vec<Map<String, Value>>,
    ) -> TarnResult<(Vec<Map<String, Value>>, Vec<String>)> {
        let meta = Value::Null;
        let ctx = IngestContext {
            event_time_info: self.event_time_info.as_ref(),
            now_micros: tarn_common::time::now_micros(),
            meta: &meta,
        };
        let mut input: Vec<Document> = Vec::with_capacity(docs.len());
        let mut errors = Vec::new();
        for d in docs {
            match prepare(Value::Object(d), &ctx) {
                Ok(doc) => input.push(doc),
                Err(e) => errors.push(e),
            }
        }
        if input.is_empty() {
            return Ok((Vec::new(), errors));
        }
        let mut batch = documents_to_batch(&input);
        // A field no document of this batch has is undefined, as in a query: it is added
        // as a null column and the query planned again.
        let mut attempts = 0;
        let df = loop {
            let schema = batch.schema();
            let resolve = |_: Option<&str>, name: &str| (name == INPUT).then(|| schema.clone());
            let (mut statement, _, _) = dialect_layer(&self.sql, &[], &resolve)?;
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            let_aliases_replace_wildcard_fields(&mut statement, &names);
            let mut config = SessionConfig::new().with_target_partitions(1);
            config.options_mut().sql_parser.enable_ident_normalization = false;
            let session = SessionContext::new_with_config(config);
            crate::functions::register(&session);
            session
                .register_batch(INPUT, batch.clone())
                .map_err(|e| TarnError::internal(format!("cannot register _input: {e}")))?;
            let known = crate::engine::Known::default();
            let planned = session.state().statement_to_plan(statement).await;
            match planned {
                Ok(plan) => {
                    break session
                        .execute_logical_plan(plan)
                        .await
                        .map_err(|e| field_mapping_error(query_error(e, &self.sql, &known)))?;
                }
                Err(e) => match missing_field(&e) {
                    Some(name) if attempts < 64 && schema.index_of(&name).is_err() => {
                        attempts += 1;
                        batch = with_null_column(&batch, &name)?;
                    }
                    _ => return Err(field_mapping_error(query_error(e, &self.sql, &known))),
                },
            }
        };
        let known = crate::engine::Known::default();
        let out_schema = df.schema().as_arrow().clone();
        let names = output_names(&out_schema);
        let batches = df
            .collect()
            .await
            .map_err(|e| field_mapping_error(query_error(e, &self.sql, &known)))?;
        let mut out = Vec::new();
        for b in &batches {
            for row in tarn_storage::to_json::batch_to_json_rows(b) {
                out.push(rename_row(row, &out_schema, &names));
            }
        }
        Ok((out, errors))
    }
}

/// The unqualified (or `_input.`) field a planning error says does not exist.
fn missing_field(e: &DataFusionError) -> Option<String> {
    match e.find_root() {
        DataFusionError::SchemaError(err, _) => match err.as_ref() {
            SchemaError::FieldNotFound { field, .. }
                if field.relation.as_ref().is_none_or(|r| r.table() == INPUT) =>
            {
                Some(field.name.clone())
            }
            _ => None,
        },
        _ => None,
    }
}

fn with_null_column(batch: &RecordBatch, name: &str) -> TarnResult<RecordBatch> {
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(name, DataType::Null, true));
    let mut columns = batch.columns().to_vec();
    columns.push(new_null_array(&DataType::Null, batch.num_rows()));
    RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), columns)
        .map_err(|e| TarnError::internal(format!("cannot extend _input: {e}")))
}

/// `SELECT *, expr AS f` replaces `_input.f` (Rockset's rule; in plain SQL both would be
/// output and the name ambiguous): each alias naming an input field joins the wildcard's
/// EXCEPT list.
fn let_aliases_replace_wildcard_fields(
    statement: &mut datafusion::sql::parser::Statement,
    input_fields: &[&str],
) {
    let datafusion::sql::parser::Statement::Statement(s) = statement else {
        return;
    };
    let Statement::Query(q) = s.as_mut() else {
        return;
    };
    let SetExpr::Select(select) = q.body.as_mut() else {
        return;
    };
    let aliases: Vec<Ident> = select
        .projection
        .iter()
        .filter_map(|item| match item {
            SelectItem::ExprWithAlias { alias, .. }
                if input_fields.contains(&alias.value.as_str()) =>
            {
                Some(alias.clone())
            }
            _ => None,
        })
        .collect();
    if aliases.is_empty() {
        return;
    }
    for item in &mut select.projection {
        let opts = match item {
            SelectItem::Wildcard(o) | SelectItem::QualifiedWildcard(_, o) => o,
            _ => continue,
        };
        for alias in &aliases {
            match &mut opts.opt_except {
                None => {
                    opts.opt_except = Some(ExceptSelectItem {
                        first_element: alias.clone(),
                        additional_elements: Vec::new(),
                    })
                }
                Some(e) => {
                    if e.first_element.value != alias.value
                        && !e.additional_elements.iter().any(|i| i.value == alias.value)
                    {
                        e.additional_elements.push(alias.clone());
                    }
                }
            }
        }
    }
}

fn field_mapping_error(e: TarnError) -> TarnError {
    TarnError {
        message: format!("field_mapping_query failed: {}", e.message),
        ..e
    }
}

/// Compiles mappings for the ingest layer.
pub fn compile_shared(
    sql: &str,
    event_time_info: Option<&EventTimeInfo>,
) -> TarnResult<Arc<FieldMapping>> {
    FieldMapping::compile(sql, event_time_info.cloned()).map(Arc::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn docs(v: Value) -> Vec<Map<String, Value>> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_object().unwrap().clone())
            .collect()
    }

    #[tokio::test]
    async fn except_filter_and_event_time() {
        let m = FieldMapping::compile(
            "SELECT * EXCEPT (secret), LOWER(name) AS name_lower, \
             PARSE_TIMESTAMP_ISO8601(ts) AS _event_time FROM _input WHERE keep",
            None,
        )
        .unwrap();
        let (out, errors) = m
            .apply(docs(json!([
                {"_id": "a", "name": "Ann", "secret": 1, "keep": true, "ts": "2020-12-03T12:53:20Z"},
                {"_id": "b", "name": "Bob", "secret": 2, "keep": false, "ts": "2020-12-03T12:53:20Z"}
            ])))
            .await
            .unwrap();
        assert!(errors.is_empty());
        assert_eq!(out.len(), 1, "{out:?}");
        let d = &out[0];
        assert_eq!(d["_id"], json!("a"));
        assert_eq!(d["name_lower"], json!("ann"));
        assert!(!d.contains_key("secret"), "{d:?}");
        assert_eq!(d["_event_time"], json!("2020-12-03T12:53:20.000000Z"));
    }

    #[tokio::test]
    async fn a_field_no_document_has_is_null() {
        let m = FieldMapping::compile("SELECT a, missing FROM _input", None).unwrap();
        let (out, _) = m.apply(docs(json!([{"a": 1}]))).await.unwrap();
        assert_eq!(out[0]["a"], json!(1));
        assert_eq!(out[0].get("missing"), Some(&Value::Null));
    }

    #[test]
    fn refuses_what_is_not_a_mapping() {
        let e = FieldMapping::compile("SELECT * FROM other", None)
            .err()
            .unwrap();
        assert!(e.message.contains("other"), "{}", e.message);
        let e = FieldMapping::compile("SELEC * FROM _input", None)
            .err()
            .unwrap();
        assert_eq!(e.kind, tarn_common::ErrorKind::InvalidInput);
        assert!(FieldMapping::compile("SELECT 1", None).is_err());
    }
}
