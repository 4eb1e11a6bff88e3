//! AST rewrites from Rockset SQL to SQL DataFusion plans the same way.
//!
//! Each rewrite keeps Rockset's meaning:
//! - `CAST(x AS INT)`: Rockset's INT is 64-bit, so INT and INTEGER become BIGINT.
//! - `GROUP BY (a, b)` groups by `a` and `b`, not by one struct.
//! - `:name` parameters become typed literals from the request (never spliced as text).
//! - `'x' IN (SELECT h.f FROM UNNEST(t.arr) h [WHERE c])`, a subquery over the row's own
//!   array, becomes `array_any_match(t.arr, h -> h.f = 'x' [AND c])`.
//! - `FROM t, UNNEST(t.arr) x`, a lateral unnest, becomes
//!   `FROM (SELECT t.*, unnest(t.arr) AS x FROM t) AS t` with `x` read as `t.x`; rows whose
//!   array is missing or empty yield nothing, as in Rockset.

use std::collections::HashMap;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    DataType, Expr, GroupByExpr, Ident, ObjectNamePart, Query, Select, SelectItem, SetExpr,
    Statement, TableFactor, TableWithJoins, Value, VisitMut, VisitorMut, visit_expressions_mut,
};
use datafusion::sql::sqlparser::parser::Parser;
use serde::Deserialize;
use tarn_common::TarnError;

use crate::dialect::RocksetDialect;

/// A query parameter as the REST API receives it.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
pub struct QueryParameter {
    pub name: String,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    pub value: serde_json::Value,
}

fn parse_expr(text: &str) -> Result<Expr, TarnError> {
    Parser::new(&RocksetDialect)
        .try_with_sql(text)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| TarnError::internal(format!("rewriting produced invalid SQL `{text}`: {e}")))
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The literal for one parameter, typed by its `type` (string, int, float, bool, timestamp,
/// date, ...), or by its JSON value when no type is given.
fn parameter_literal(p: &QueryParameter) -> Result<Expr, TarnError> {
    let text = match &p.value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let bad = |what: &str| {
        TarnError::invalid(format!(
            "parameter '{}' has type {what} but its value is {}",
            p.name, p.value
        ))
    };
    let sql = match p.type_.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("string") => quote(&text),
        Some("int" | "integer" | "bigint") => text
            .trim()
            .parse::<i64>()
            .map_err(|_| bad("int"))?
            .to_string(),
        Some("float" | "double") => {
            let f = text.trim().parse::<f64>().map_err(|_| bad("float"))?;
            if f.is_finite() {
                format!("{f:?}")
            } else {
                return Err(bad("float"));
            }
        }
        Some("bool" | "boolean") => match text.trim().to_ascii_lowercase().as_str() {
            "true" => "TRUE".into(),
            "false" => "FALSE".into(),
            _ => return Err(bad("bool")),
        },
        Some("timestamp" | "datetime") => format!("CAST({} AS TIMESTAMP)", quote(&text)),
        Some("date") => format!("CAST({} AS DATE)", quote(&text)),
        Some("time") => format!("CAST({} AS TIME)", quote(&text)),
        Some(other) => {
            return Err(TarnError::invalid(format!(
                "parameter '{}' has unknown type '{other}': use string, int, float, bool, timestamp, date or time",
                p.name
            )));
        }
        None => match &p.value {
            serde_json::Value::String(s) => quote(s),
            serde_json::Value::Bool(b) => b.to_string().to_uppercase(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Null => "NULL".into(),
            _ => return Err(bad("(none)")),
        },
    };
    parse_expr(&sql)
}

struct Rewriter {
    params: HashMap<String, Expr>,
    error: Option<TarnError>,
}

impl Rewriter {
    fn fail(&mut self, e: TarnError) -> ControlFlow<()> {
        self.error = Some(e);
        ControlFlow::Break(())
    }
}

/// What [`preprocess`] puts in place of `UNDEFINED` in `IS [NOT] UNDEFINED`.
const UNDEFINED_MARKER: &str = "__tarn_undefined";

/// `x IS UNDEFINED`: x is NULL and was not an explicit null in its document (the hidden
/// nulls column lists the JSON pointers of explicit nulls). Only paths can be undefined.
fn is_undefined(x: &Expr) -> Result<Expr, TarnError> {
    let (qualifier, parts): (Option<&Ident>, &[Ident]) = match x {
        Expr::Value(v) if v.value == Value::Null => return parse_expr("TRUE"),
        Expr::Identifier(id) => (None, std::slice::from_ref(id)),
        Expr::CompoundIdentifier(ids) if ids.len() >= 2 => (Some(&ids[0]), &ids[1..]),
        _ => return parse_expr(&format!("({x}) IS NULL AND FALSE")),
    };
    let mut pointer = String::new();
    for p in parts {
        tarn_storage::build::push_pointer_segment(&mut pointer, &p.value);
    }
    let needle = serde_json::to_string(&pointer).expect("strings serialize");
    let nulls = match qualifier {
        Some(q) => format!("{q}.{}", tarn_storage::types::NULLS),
        None => tarn_storage::types::NULLS.to_owned(),
    };
    parse_expr(&format!(
        "(({x}) IS NULL AND ({nulls} IS NULL OR strpos({nulls}, {}) = 0))",
        quote(&needle)
    ))
}

/// The name [`preprocess`] gives `UNNEST(arr AS v [WITH ORDINALITY AS i])`.
const UNNEST_AS: &str = "__unnest_as";

/// An unnest in a FROM clause.
struct Unnest {
    array: Expr,
    alias: Option<Ident>,
    /// Rockset's `AS v`: the element is read as `alias.v`.
    value: Option<String>,
    /// Rockset's `WITH ORDINALITY AS i`: the 1-based position is `alias.i`.
    ordinality: Option<String>,
}

fn string_arg(a: &datafusion::sql::sqlparser::ast::FunctionArg) -> Option<String> {
    match a {
        datafusion::sql::sqlparser::ast::FunctionArg::Unnamed(
            datafusion::sql::sqlparser::ast::FunctionArgExpr::Expr(Expr::Value(v)),
        ) => match &v.value {
            Value::SingleQuotedString(s) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// `unnest(<expr>) [alias]` as a table factor, whichever way sqlparser parsed it.
fn as_unnest(f: &TableFactor) -> Option<Unnest> {
    match f {
        TableFactor::UNNEST {
            alias,
            array_exprs,
            with_offset: false,
            with_ordinality: false,
            ..
        } if array_exprs.len() == 1 => Some(Unnest {
            array: array_exprs[0].clone(),
            alias: alias.as_ref().map(|a| a.name.clone()),
            value: None,
            ordinality: None,
        }),
        TableFactor::Table {
            name,
            alias,
            args: Some(args),
            ..
        } if name.0.len() == 1 => {
            let fname = name.0[0].as_ident()?.value.to_ascii_lowercase();
            let array = match args.args.first()? {
                datafusion::sql::sqlparser::ast::FunctionArg::Unnamed(
                    datafusion::sql::sqlparser::ast::FunctionArgExpr::Expr(e),
                ) => e.clone(),
                _ => return None,
            };
            let alias = alias.as_ref().map(|a| a.name.clone());
            match (fname.as_str(), args.args.len()) {
                ("unnest", 1) => Some(Unnest {
                    array,
                    alias,
                    value: None,
                    ordinality: None,
                }),
                (UNNEST_AS, 2 | 3) => Some(Unnest {
                    array,
                    alias,
                    value: Some(string_arg(&args.args[1])?),
                    ordinality: args.args.get(2).and_then(string_arg),
                }),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Rewrites Rockset's `UNNEST(arr AS v [WITH ORDINALITY AS i])`, which sqlparser cannot
/// parse, into `__unnest_as(arr, 'v'[, 'i'])` on the token stream, before parsing.
pub fn preprocess(sql: &str) -> String {
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let Ok(tokens) = Tokenizer::new(&RocksetDialect, sql).tokenize() else {
        return sql.to_owned();
    };
    let is_word = |t: &Token, w: &str| matches!(t, Token::Word(word) if word.quote_style.is_none() && word.value.eq_ignore_ascii_case(w));
    let significant = |i: usize| !matches!(tokens[i], Token::Whitespace(_));
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    while i < tokens.len() {
        // `x IS [NOT] UNDEFINED` → `x IS [NOT] DISTINCT FROM __tarn_undefined`, resolved later.
        if is_word(&tokens[i], "is") {
            let next: Vec<usize> = (i + 1..tokens.len())
                .filter(|&j| significant(j))
                .take(2)
                .collect();
            if let Some(&n0) = next.first() {
                if is_word(&tokens[n0], "undefined") {
                    out.push_str(&format!("IS NOT DISTINCT FROM {UNDEFINED_MARKER}"));
                    i = n0 + 1;
                    continue;
                }
                if let Some(&n1) = next.get(1)
                    && is_word(&tokens[n0], "not")
                    && is_word(&tokens[n1], "undefined")
                {
                    out.push_str(&format!("IS DISTINCT FROM {UNDEFINED_MARKER}"));
                    i = n1 + 1;
                    continue;
                }
            }
        }
        if is_word(&tokens[i], "unnest") {
            // Find the opening parenthesis and its match.
            let open = (i + 1..tokens.len()).find(|&j| significant(j));
            if let Some(open) = open.filter(|&o| tokens[o] == Token::LParen) {
                let mut depth = 0;
                let mut close = None;
                for (j, t) in tokens.iter().enumerate().skip(open) {
                    match t {
                        Token::LParen => depth += 1,
                        Token::RParen => {
                            depth -= 1;
                            if depth == 0 {
                                close = Some(j);
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                if let Some(close) = close {
                    let inner: Vec<usize> = (open + 1..close).filter(|&j| significant(j)).collect();
                    let n = inner.len();
                    let word = |k: usize| match &tokens[inner[k]] {
                        Token::Word(w) => Some(w.value.clone()),
                        _ => None,
                    };
                    // ... AS v WITH ORDINALITY AS i   or   ... AS v
                    let (cut, value, ordinality) = if n >= 7
                        && is_word(&tokens[inner[n - 6]], "as")
                        && is_word(&tokens[inner[n - 4]], "with")
                        && is_word(&tokens[inner[n - 3]], "ordinality")
                        && is_word(&tokens[inner[n - 2]], "as")
                    {
                        (inner[n - 6], word(n - 5), word(n - 1))
                    } else if n >= 3 && is_word(&tokens[inner[n - 2]], "as") {
                        (inner[n - 2], word(n - 1), None)
                    } else {
                        (0, None, None)
                    };
                    if let Some(value) = value.filter(|_| cut > 0) {
                        out.push_str(UNNEST_AS);
                        out.push('(');
                        let array: String = tokens[open + 1..cut]
                            .iter()
                            .map(|t| t.to_string())
                            .collect();
                        out.push_str(array.trim());
                        out.push_str(&format!(", {}", quote(&value)));
                        if let Some(o) = ordinality {
                            out.push_str(&format!(", {}", quote(&o)));
                        }
                        out.push(')');
                        i = close + 1;
                        continue;
                    }
                }
            }
        }
        out.push_str(&tokens[i].to_string());
        i += 1;
    }
    out
}

fn is_null(e: &Expr) -> bool {
    matches!(e, Expr::Value(v) if v.value == Value::Null)
}

/// The name by which a FROM item's columns are qualified.
fn factor_name(f: &TableFactor) -> Option<Ident> {
    match f {
        TableFactor::Table {
            name,
            alias,
            args: None,
            ..
        } => match alias {
            Some(a) => Some(a.name.clone()),
            None => name.0.last().and_then(ObjectNamePart::as_ident).cloned(),
        },
        TableFactor::Derived { alias: Some(a), .. } => Some(a.name.clone()),
        _ => None,
    }
}

impl Rewriter {
    /// `'x' IN (SELECT a.f FROM UNNEST(arr) a [WHERE c])` → `array_any_match(arr, a -> ...)`.
    fn in_unnest_subquery(&self, expr: &Expr) -> Option<Result<Expr, TarnError>> {
        let Expr::InSubquery {
            expr: needle,
            subquery,
            negated,
        } = expr
        else {
            return None;
        };
        let SetExpr::Select(select) = subquery.body.as_ref() else {
            return None;
        };
        if select.from.len() != 1
            || !select.from[0].joins.is_empty()
            || select.projection.len() != 1
            || subquery.with.is_some()
        {
            return None;
        }
        let Unnest {
            array,
            alias,
            value,
            ..
        } = as_unnest(&select.from[0].relation)?;
        let alias = alias?;
        if is_null(&array) {
            // An undefined array has no elements: nothing is in it.
            return Some(parse_expr(if *negated { "TRUE" } else { "FALSE" }));
        }
        let (SelectItem::UnnamedExpr(item) | SelectItem::ExprWithAlias { expr: item, .. }) =
            &select.projection[0]
        else {
            return None;
        };
        // Without a condition, `alias.field` (or the element itself) needs no lambda.
        if select.selection.is_none() {
            let field = match item {
                Expr::Identifier(id) if id.value == alias.value => Some(String::new()),
                Expr::CompoundIdentifier(p) if p.len() == 2 && p[0].value == alias.value => {
                    Some(if value.as_deref() == Some(p[1].value.as_str()) {
                        String::new()
                    } else {
                        p[1].value.clone()
                    })
                }
                _ => None,
            };
            // `array_field_has` is never NULL: a missing list or element is no match.
            if let Some(field) = field {
                let call = format!(
                    "{}array_field_has({array}, {}, {needle})",
                    if *negated { "NOT " } else { "" },
                    quote(&field)
                );
                return Some(parse_expr(&call));
            }
        }
        // Inside a lambda, `alias.field` must be spelled as field access on the variable.
        let as_field_access = |e: &Expr| -> String {
            let mut e = e.clone();
            let _ = visit_expressions_mut(&mut e, |e: &mut Expr| {
                if let Expr::CompoundIdentifier(parts) = e
                    && parts.len() > 1
                    && parts[0].value == alias.value
                {
                    let mut text = parts[0].to_string();
                    // With `AS v`, `alias.v` is the element itself.
                    let skip = usize::from(value.as_deref() == Some(parts[1].value.as_str()));
                    for p in &parts[1 + skip..] {
                        text = format!("get_field({text}, {})", quote(&p.value));
                    }
                    if let Ok(new) = parse_expr(&text) {
                        *e = new;
                    }
                }
                ControlFlow::<()>::Continue(())
            });
            e.to_string()
        };
        let mut body = format!("({}) = ({needle})", as_field_access(item));
        if let Some(cond) = &select.selection {
            body = format!("{body} AND ({})", as_field_access(cond));
        }
        let call = format!(
            "{}coalesce(array_any_match({array}, {alias} -> {body}), FALSE)",
            if *negated { "NOT " } else { "" }
        );
        Some(parse_expr(&call))
    }

    /// Rewrites lateral unnests in the FROM clause of `select` (see the module docs).
    fn lateral_unnest(
        &self,
        select: &mut Select,
        order_by_exprs: &mut Vec<&mut Expr>,
    ) -> Result<(), TarnError> {
        while select.from.len() >= 2 && select.from[1].joins.is_empty() {
            let Some(Unnest {
                array,
                alias: Some(alias),
                value,
                ordinality,
            }) = as_unnest(&select.from[1].relation)
            else {
                break;
            };
            let left = &select.from[0];
            let Some(left_name) = factor_name(&left.relation) else {
                break;
            };
            if !left.joins.is_empty() {
                break;
            }
            let undefined = is_null(&array);
            // The element's column: the alias itself, or `alias__v` with Rockset's `AS v`.
            let element = match &value {
                Some(v) => Ident::new(format!("{}__{v}", alias.value)),
                None => alias.clone(),
            };
            let derived = if undefined {
                // Rockset: unnesting an undefined path gives no rows.
                format!(
                    "SELECT * FROM (SELECT {left_name}.* FROM {} WHERE FALSE) AS {left_name}",
                    left.relation
                )
            } else {
                let position = match &ordinality {
                    Some(i) => format!(
                        ", unnest(generate_series(1, cardinality({array}))) AS {}",
                        Ident::new(format!("{}__{i}", alias.value))
                    ),
                    None => String::new(),
                };
                format!(
                    "SELECT * FROM (SELECT {left_name}.*, unnest({array}) AS {element}{position} FROM {}) AS {left_name}",
                    left.relation
                )
            };
            let stmt = Parser::parse_sql(&RocksetDialect, &derived).map_err(|e| {
                TarnError::internal(format!("rewriting UNNEST produced `{derived}`: {e}"))
            })?;
            let Some(Statement::Query(q)) = stmt.into_iter().next() else {
                break;
            };
            let SetExpr::Select(s) = *q.body else { break };
            let Some(new_from) = s.from.into_iter().next() else {
                break;
            };
            select.from.splice(
                0..2,
                [TableWithJoins {
                    relation: new_from.relation,
                    joins: Vec::new(),
                }],
            );
            let qualify = |e: &mut Expr| {
                let _ = visit_expressions_mut(e, |e: &mut Expr| {
                    match e {
                        Expr::Identifier(id) if id.value == alias.value => {
                            *e = if undefined {
                                Expr::value(Value::Null)
                            } else {
                                Expr::CompoundIdentifier(vec![left_name.clone(), element.clone()])
                            };
                        }
                        Expr::CompoundIdentifier(parts)
                            if parts.first().is_some_and(|p| p.value == alias.value) =>
                        {
                            if undefined {
                                *e = Expr::value(Value::Null);
                            } else if value.is_some() || ordinality.is_some() {
                                // `u.v...` is the element, `u.i` its position.
                                let head = if ordinality.as_deref() == Some(parts[1].value.as_str())
                                {
                                    Ident::new(format!("{}__{}", alias.value, parts[1].value))
                                } else {
                                    element.clone()
                                };
                                let mut new = vec![left_name.clone(), head];
                                new.extend(parts.drain(..).skip(2));
                                *parts = new;
                            } else {
                                parts.insert(0, left_name.clone());
                            }
                        }
                        _ => {}
                    }
                    ControlFlow::<()>::Continue(())
                });
            };
            for item in select.projection.iter_mut() {
                match item {
                    SelectItem::UnnamedExpr(e) => {
                        // Keep Rockset's name for the unaliased element path.
                        let name = match e {
                            Expr::CompoundIdentifier(parts)
                                if parts.first().is_some_and(|p| p.value == alias.value) =>
                            {
                                parts.last().cloned()
                            }
                            Expr::Identifier(id) if id.value == alias.value => Some(id.clone()),
                            _ => None,
                        };
                        let mut expr = e.clone();
                        qualify(&mut expr);
                        *item = match name {
                            Some(n) => SelectItem::ExprWithAlias { expr, alias: n },
                            None => SelectItem::UnnamedExpr(expr),
                        };
                    }
                    SelectItem::ExprWithAlias { expr, .. } => qualify(expr),
                    _ => {}
                }
            }
            if let Some(w) = select.selection.as_mut() {
                qualify(w);
            }
            if let Some(h) = select.having.as_mut() {
                qualify(h);
            }
            if let GroupByExpr::Expressions(exprs, _) = &mut select.group_by {
                exprs.iter_mut().for_each(qualify);
            }
            for e in order_by_exprs.iter_mut() {
                qualify(e);
            }
        }
        Ok(())
    }
}

impl VisitorMut for Rewriter {
    type Break = ();

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        match expr {
            Expr::Cast { data_type, .. } => {
                if matches!(
                    data_type,
                    DataType::Int(_) | DataType::Integer(_) | DataType::Int4(_)
                ) {
                    *data_type = DataType::BigInt(None);
                }
            }
            Expr::Value(v) => {
                if let Value::Placeholder(p) = &v.value
                    && let Some(name) = p.strip_prefix(':')
                {
                    match self.params.get(name) {
                        Some(lit) => *expr = lit.clone(),
                        None => {
                            return self.fail(TarnError::query(format!(
                                "the query uses parameter :{name} but the request gives no parameter named '{name}'"
                            )));
                        }
                    }
                }
            }
            Expr::IsNotDistinctFrom(x, marker) | Expr::IsDistinctFrom(x, marker) if matches!(marker.as_ref(), Expr::Identifier(m) if m.value == UNDEFINED_MARKER) =>
            {
                let replacement = is_undefined(x);
                let negated = matches!(expr, Expr::IsDistinctFrom(..));
                match replacement {
                    Ok(e) if negated => {
                        *expr = Expr::UnaryOp {
                            op: datafusion::sql::sqlparser::ast::UnaryOperator::Not,
                            expr: Box::new(Expr::Nested(Box::new(e))),
                        }
                    }
                    Ok(e) => *expr = e,
                    Err(e) => return self.fail(e),
                }
            }
            Expr::Function(_) => match rename_function(expr) {
                Some(Ok(e)) => *expr = e,
                Some(Err(e)) => return self.fail(e),
                None => {}
            },
            Expr::InSubquery { .. } => match self.in_unnest_subquery(expr) {
                Some(Ok(e)) => *expr = e,
                Some(Err(e)) => return self.fail(e),
                None => {}
            },
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        let SetExpr::Select(select) = query.body.as_mut() else {
            return ControlFlow::Continue(());
        };
        if let Some(w) = select.selection.as_mut() {
            numeric_condition(w);
        }
        if let GroupByExpr::Expressions(exprs, _) = &mut select.group_by
            && exprs.iter().any(|e| matches!(e, Expr::Tuple(_)))
        {
            *exprs = std::mem::take(exprs)
                .into_iter()
                .flat_map(|e| match e {
                    Expr::Tuple(items) => items,
                    other => vec![other],
                })
                .collect();
        }
        let mut order_by: Vec<&mut Expr> = match query.order_by.as_mut() {
            Some(o) => match &mut o.kind {
                datafusion::sql::sqlparser::ast::OrderByKind::Expressions(items) => {
                    items.iter_mut().map(|i| &mut i.expr).collect()
                }
                _ => Vec::new(),
            },
            None => Vec::new(),
        };
        if let Err(e) = self.lateral_unnest(select, &mut order_by) {
            return self.fail(e);
        }
        ControlFlow::Continue(())
    }
}

/// The names of the statement's CTEs (for "did you mean" in errors).
pub fn cte_names(statement: &mut Statement) -> Vec<String> {
    struct Ctes(Vec<String>);
    impl VisitorMut for Ctes {
        type Break = ();
        fn pre_visit_query(&mut self, q: &mut Query) -> ControlFlow<()> {
            if let Some(w) = &q.with {
                self.0
                    .extend(w.cte_tables.iter().map(|c| c.alias.name.value.clone()));
            }
            ControlFlow::Continue(())
        }
    }
    let mut c = Ctes(Vec::new());
    let _ = statement.visit(&mut c);
    c.0
}

/// Rockset functions that are DataFusion functions under another name or form.
fn rename_function(expr: &mut Expr) -> Option<Result<Expr, TarnError>> {
    let Expr::Function(f) = expr else { return None };
    // Postgres tools qualify catalog functions (`pg_catalog.pg_get_userbyid(...)`).
    if f.name.0.len() == 2
        && f.name.0[0]
            .as_ident()
            .is_some_and(|i| i.value.eq_ignore_ascii_case("pg_catalog"))
    {
        f.name.0.remove(0);
    }
    let name = f.name.to_string().to_ascii_lowercase();
    let datafusion::sql::sqlparser::ast::FunctionArguments::List(list) = &f.args else {
        return None;
    };
    let args: Vec<String> = list.args.iter().map(|a| a.to_string()).collect();
    let sql = match (name.as_str(), args.as_slice()) {
        ("timestamp_millis", [a]) => format!("to_timestamp_millis({a})"),
        ("timestamp_micros", [a]) => format!("to_timestamp_micros({a})"),
        ("timestamp_seconds", [a]) => format!("to_timestamp_seconds({a})"),
        ("parse_timestamp_iso8601", [a]) => format!("to_timestamp({a})"),
        ("format_iso8601", [a]) => format!("to_char({a}, '%Y-%m-%dT%H:%M:%S%.6fZ')"),
        ("array_contains", [a, b]) => format!("array_has({a}, {b})"),
        ("regexp_extract", [s, p]) => format!("regexp_match({s}, {p})[1]"),
        _ => return None,
    };
    Some(parse_expr(&sql))
}

/// Rockset accepts a number as a condition (`WHERE CAST(x AS INT)`): true when non-zero.
fn numeric_condition(e: &mut Expr) {
    match e {
        Expr::BinaryOp {
            op: datafusion::sql::sqlparser::ast::BinaryOperator::And,
            left,
            right,
        } => {
            numeric_condition(left);
            numeric_condition(right);
        }
        Expr::Cast {
            data_type:
                DataType::BigInt(_)
                | DataType::Int(_)
                | DataType::Integer(_)
                | DataType::Double(_)
                | DataType::Float(_),
            ..
        } => {
            if let Ok(new) = parse_expr(&format!("({e}) <> 0")) {
                *e = new;
            }
        }
        _ => {}
    }
}

/// Applies every rewrite to a statement.
pub fn rewrite(statement: &mut Statement, params: &[QueryParameter]) -> Result<(), TarnError> {
    let mut map = HashMap::new();
    for p in params {
        map.insert(p.name.clone(), parameter_literal(p)?);
    }
    let mut r = Rewriter {
        params: map,
        error: None,
    };
    let _ = statement.visit(&mut r);
    match r.error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(sql: &str, params: &[QueryParameter]) -> String {
        let mut stmt = Parser::parse_sql(&RocksetDialect, sql).unwrap().remove(0);
        rewrite(&mut stmt, params).unwrap();
        stmt.to_string()
    }

    #[test]
    fn unnest_value_aliases_are_preprocessed_outside_strings() {
        assert_eq!(
            preprocess(
                "SELECT 'UNNEST(a AS b)' FROM t, UNNEST(t.arr AS v WITH ORDINALITY AS i) AS u"
            ),
            "SELECT 'UNNEST(a AS b)' FROM t, __unnest_as(t.arr, 'v', 'i') AS u"
        );
        assert_eq!(
            preprocess("SELECT * FROM t, unnest(f(t.a, t.b) AS x) u"),
            "SELECT * FROM t, __unnest_as(f(t.a, t.b), 'x') u"
        );
        assert_eq!(
            preprocess("SELECT * FROM t, unnest(t.a) u"),
            "SELECT * FROM t, unnest(t.a) u"
        );
    }

    #[test]
    fn int_is_64_bit_and_group_by_tuples_expand() {
        assert_eq!(
            rewritten("SELECT CAST(a AS INT) FROM t GROUP BY (a, b)", &[]),
            "SELECT CAST(a AS BIGINT) FROM t GROUP BY a, b"
        );
    }

    #[test]
    fn parameters_become_typed_literals() {
        let p = |n: &str, t: &str, v: serde_json::Value| QueryParameter {
            name: n.into(),
            type_: Some(t.into()),
            value: v,
        };
        let out = rewritten(
            "SELECT * FROM t WHERE h = :tag AND n > :n AND ok = :b",
            &[
                p("tag", "string", "it's".into()),
                p("n", "int", "5".into()),
                p("b", "bool", true.into()),
            ],
        );
        assert_eq!(
            out,
            "SELECT * FROM t WHERE h = 'it''s' AND n > 5 AND ok = true"
        );
        let mut stmt = Parser::parse_sql(&RocksetDialect, "SELECT :missing")
            .unwrap()
            .remove(0);
        assert!(
            rewrite(&mut stmt, &[])
                .unwrap_err()
                .message
                .contains(":missing")
        );
        assert!(rewrite(&mut stmt, &[p("x", "int", "five".into())]).is_err());
    }

    #[test]
    fn unnest_subquery_becomes_any_match() {
        let out = rewritten(
            "SELECT 1 FROM t WHERE 'music' IN (SELECT h.text FROM unnest(t.entities.hashtags) h)",
            &[],
        );
        assert_eq!(
            out,
            "SELECT 1 FROM t WHERE array_field_has(t.entities.hashtags, 'text', 'music')"
        );
    }

    #[test]
    fn lateral_unnest_becomes_a_derived_table() {
        let out = rewritten(
            "SELECT ht.text, count(*) FROM \"c-1\" t, unnest(t.tags) ht WHERE ht.text != 'x' GROUP BY ht.text ORDER BY ht.text",
            &[],
        );
        assert_eq!(
            out,
            "SELECT t.ht.text AS text, count(*) FROM (SELECT t.*, unnest(t.tags) AS ht FROM \"c-1\" t) AS t \
             WHERE t.ht.text <> 'x' GROUP BY t.ht.text ORDER BY t.ht.text"
        );
    }
}
