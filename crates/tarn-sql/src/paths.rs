//! Undefined paths: a path no document has is NULL in Rockset, not an error; tarn also warns.
//!
//! Before planning, every path qualified by a collection's alias (`t.entites.hashtags`) is
//! checked against that collection's schema. A path that leaves the schema is replaced by
//! `NULL`, and a warning names it and suggests the nearest known path. Paths that go through
//! an array or a variant cannot be checked and are left alone.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::sql::sqlparser::ast::{
    Expr, ObjectNamePart, Query, SetExpr, Statement, TableFactor, Value, VisitMut, VisitorMut,
    visit_expressions_mut,
};
use tarn_storage::types::{NULLS, is_variant};

/// Looks up a collection's schema by optional workspace and name.
pub type Resolver<'a> = &'a dyn Fn(Option<&str>, &str) -> Option<SchemaRef>;

struct Table {
    name: String,
    schema: SchemaRef,
}

struct Checker<'a> {
    resolve: Resolver<'a>,
    warnings: Vec<String>,
}

/// Whether `parts` (after the alias) stay inside the schema; `None` when it cannot be told.
fn path_defined(schema: &SchemaRef, parts: &[String]) -> Option<bool> {
    let Some((first, rest)) = parts.split_first() else {
        return Some(true);
    };
    let Ok(field) = schema.field_with_name(first) else {
        return Some(false);
    };
    let mut dt = field.data_type().clone();
    for p in rest {
        match &dt {
            DataType::Struct(fields) if !is_variant(&dt) => match fields.find(p) {
                Some((_, f)) => dt = f.data_type().clone(),
                None => return Some(false),
            },
            DataType::Null => return Some(false),
            _ => return None,
        }
    }
    Some(true)
}

/// Every dotted path of a schema, for suggestions.
fn known_paths(schema: &SchemaRef) -> Vec<String> {
    fn walk(prefix: &str, dt: &DataType, out: &mut Vec<String>) {
        if let DataType::Struct(fields) = dt
            && !is_variant(dt)
        {
            for f in fields.iter() {
                let p = format!("{prefix}.{}", f.name());
                out.push(p.clone());
                walk(&p, f.data_type(), out);
            }
        }
    }
    let mut out = Vec::new();
    for f in schema.fields().iter().filter(|f| f.name() != NULLS) {
        out.push(f.name().clone());
        walk(f.name(), f.data_type(), &mut out);
    }
    out
}

/// Levenshtein distance, for "did you mean".
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + (ca != *cb) as usize).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The nearest candidate within a small distance.
pub fn nearest<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c String>,
) -> Option<&'c String> {
    let limit = (word.len() / 3).max(2);
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

impl Checker<'_> {
    fn tables_of(&self, query: &Query) -> HashMap<String, Table> {
        let mut out = HashMap::new();
        let SetExpr::Select(select) = query.body.as_ref() else {
            return out;
        };
        let ctes: Vec<String> = query
            .with
            .iter()
            .flat_map(|w| w.cte_tables.iter().map(|c| c.alias.name.value.clone()))
            .collect();
        for twj in &select.from {
            let factors =
                std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation));
            for f in factors {
                let TableFactor::Table {
                    name,
                    alias,
                    args: None,
                    ..
                } = f
                else {
                    continue;
                };
                let parts: Vec<String> = name
                    .0
                    .iter()
                    .filter_map(ObjectNamePart::as_ident)
                    .map(|i| i.value.clone())
                    .collect();
                let (ws, coll) = match parts.as_slice() {
                    [c] if !ctes.contains(c) => (None, c.clone()),
                    [w, c] => (Some(w.clone()), c.clone()),
                    _ => continue,
                };
                let Some(schema) = (self.resolve)(ws.as_deref(), &coll) else {
                    continue;
                };
                let key = alias
                    .as_ref()
                    .map_or_else(|| coll.clone(), |a| a.name.value.clone());
                out.insert(key, Table { name: coll, schema });
            }
        }
        out
    }
}

impl VisitorMut for Checker<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        let tables = self.tables_of(query);
        if tables.is_empty() {
            return ControlFlow::Continue(());
        }
        let SetExpr::Select(select) = query.body.as_mut() else {
            return ControlFlow::Continue(());
        };
        let mut warnings = Vec::new();
        let _ = visit_expressions_mut(select.as_mut(), |e: &mut Expr| {
            if let Expr::CompoundIdentifier(idents) = e
                && let Some(table) = tables.get(&idents[0].value)
            {
                let parts: Vec<String> = idents[1..].iter().map(|i| i.value.clone()).collect();
                if path_defined(&table.schema, &parts) == Some(false) {
                    let alias = &idents[0].value;
                    let written = format!("{alias}.{}", parts.join("."));
                    let known: Vec<String> = known_paths(&table.schema)
                        .into_iter()
                        .map(|p| format!("{alias}.{p}"))
                        .collect();
                    let mut w = format!("{written} does not occur in {}", table.name);
                    if let Some(s) = nearest(&written, &known) {
                        w.push_str(&format!("; did you mean {s}?"));
                    }
                    if !warnings.contains(&w) {
                        warnings.push(w);
                    }
                    *e = Expr::value(Value::Null);
                }
            }
            ControlFlow::<()>::Continue(())
        });
        self.warnings.extend(warnings);
        ControlFlow::Continue(())
    }
}

/// The unqualified field a planning error says no table has, with the valid field names.
pub fn unknown_bare_field(
    e: &datafusion::common::DataFusionError,
) -> Option<(String, Vec<String>)> {
    use datafusion::common::{DataFusionError, SchemaError};
    match e.find_root() {
        DataFusionError::SchemaError(err, _) => match err.as_ref() {
            SchemaError::FieldNotFound {
                field,
                valid_fields,
            } if field.relation.is_none() => Some((
                field.name.clone(),
                valid_fields.iter().map(|c| c.name.clone()).collect(),
            )),
            _ => None,
        },
        _ => None,
    }
}

/// Replaces every bare identifier `name` by NULL; false when there was none.
pub fn replace_bare_identifier(
    statement: &mut datafusion::sql::parser::Statement,
    name: &str,
) -> bool {
    let datafusion::sql::parser::Statement::Statement(s) = statement else {
        return false;
    };
    let mut replaced = false;
    // In a projection the column keeps its name: `m` becomes `NULL AS m`.
    let _ = datafusion::sql::sqlparser::ast::visit_statements_mut(s.as_mut(), |st| {
        if let Statement::Query(q) = st {
            name_null_projections(q, name, &mut replaced);
        }
        ControlFlow::<()>::Continue(())
    });
    let _ = visit_expressions_mut(s.as_mut(), |e: &mut Expr| {
        if let Expr::Identifier(i) = e
            && i.value == name
        {
            *e = Expr::value(Value::Null);
            replaced = true;
        }
        ControlFlow::<()>::Continue(())
    });
    replaced
}

fn name_null_projections(q: &mut Query, name: &str, replaced: &mut bool) {
    if let SetExpr::Select(select) = q.body.as_mut() {
        for item in select.projection.iter_mut() {
            if let datafusion::sql::sqlparser::ast::SelectItem::UnnamedExpr(Expr::Identifier(i)) =
                item
                && i.value == name
            {
                *item = datafusion::sql::sqlparser::ast::SelectItem::ExprWithAlias {
                    expr: Expr::value(Value::Null),
                    alias: i.clone(),
                };
                *replaced = true;
            }
        }
    }
}

/// Replaces undefined collection paths by NULL; returns the warnings to show the user.
pub fn replace_undefined_paths(statement: &mut Statement, resolve: Resolver) -> Vec<String> {
    let mut c = Checker {
        resolve,
        warnings: Vec::new(),
    };
    let _ = statement.visit(&mut c);
    c.warnings
}

/// Every name a query statement could resolve to a column: each word of its text, quoted
/// or not. `None` when the statement could reach columns it does not name: a wildcard
/// (`SELECT *`, `t.*`, `f(*)` other than `count(*)`), a natural join, or a statement other
/// than a query (`DESCRIBE`, `SHOW COLUMNS`). See [`crate::catalog::with_query_columns`].
pub fn query_columns(statement: &Statement) -> Option<HashSet<String>> {
    use datafusion::sql::sqlparser::keywords::Keyword;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let query = match statement {
        Statement::Query(q) => q,
        Statement::Explain { statement, .. } => match statement.as_ref() {
            Statement::Query(q) => q,
            _ => return None,
        },
        _ => return None,
    };
    let text = query.to_string();
    let tokens = Tokenizer::new(&crate::dialect::RocksetDialect, &text)
        .tokenize()
        .ok()?;
    let significant: Vec<&Token> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    let mut names = HashSet::new();
    for (i, token) in significant.iter().enumerate() {
        match token {
            Token::Word(w) if w.keyword == Keyword::NATURAL && w.quote_style.is_none() => {
                return None;
            }
            Token::Word(w) => {
                names.insert(w.value.clone());
            }
            Token::Mul => {
                let before = i.checked_sub(1).map(|j| significant[j]);
                let multiplies = match before {
                    // `a * 2`, `2 * a`, `'x' * a`: an operand before it.
                    Some(Token::Word(w)) => {
                        w.quote_style.is_some()
                            || !matches!(
                                w.keyword,
                                Keyword::SELECT | Keyword::DISTINCT | Keyword::ALL
                            )
                    }
                    Some(Token::Number(..) | Token::SingleQuotedString(_)) => true,
                    // `count(*)` counts rows; `f(*)` of any other function is a wildcard.
                    Some(Token::LParen) => {
                        i >= 2
                            && matches!(significant[i - 2], Token::Word(w) if w.value.eq_ignore_ascii_case("count"))
                    }
                    _ => false,
                };
                if !multiplies {
                    return None;
                }
            }
            _ => {}
        }
    }
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::RocksetDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    use std::sync::Arc;

    #[test]
    fn misspelt_paths_become_null_with_a_suggestion() {
        let schema: SchemaRef = Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
            datafusion::arrow::datatypes::Field::new(
                "entities",
                DataType::Struct(
                    vec![datafusion::arrow::datatypes::Field::new(
                        "hashtags",
                        DataType::Utf8,
                        true,
                    )]
                    .into(),
                ),
                true,
            ),
        ]));
        let resolve = move |_: Option<&str>, n: &str| (n == "tw").then(|| schema.clone());
        let mut stmt = Parser::parse_sql(
            &RocksetDialect,
            "SELECT t.entites.hashtags, t.entities.hashtags FROM tw t",
        )
        .unwrap()
        .remove(0);
        let w = replace_undefined_paths(&mut stmt, &resolve);
        assert_eq!(
            w,
            vec!["t.entites.hashtags does not occur in tw; did you mean t.entities.hashtags?"]
        );
        assert_eq!(
            stmt.to_string(),
            "SELECT NULL, t.entities.hashtags FROM tw t"
        );
    }

    #[test]
    fn distance() {
        assert_eq!(edit_distance("lastest_hashtags", "latest_hashtags"), 1);
        assert_eq!(
            nearest("latest", &["lastest".to_string(), "other".to_string()]).map(String::as_str),
            Some("lastest")
        );
    }

    fn columns(sql: &str) -> Option<Vec<String>> {
        let statement = Parser::parse_sql(&RocksetDialect, sql).unwrap().remove(0);
        query_columns(&statement).map(|c| {
            let mut c: Vec<String> = c.into_iter().collect();
            c.sort();
            c
        })
    }

    #[test]
    fn a_query_names_its_columns_unless_it_reaches_others() {
        let named = columns(
            "SELECT t.user.screen_name, count(*) AS n, 2 * \"fc\" FROM \"my-coll\" t \
             WHERE t.a * t.b > 1 GROUP BY 1",
        )
        .unwrap();
        for name in ["screen_name", "user", "fc", "my-coll", "a", "b", "t"] {
            assert!(named.contains(&name.to_owned()), "{name} in {named:?}");
        }
        for sql in [
            "SELECT * FROM t",
            "SELECT t.* FROM t",
            "SELECT a, * FROM t",
            "SELECT DISTINCT * FROM t",
            "SELECT DISTINCT ON (a) * FROM t",
            "SELECT * EXCEPT (a) FROM t",
            "SELECT x FROM (SELECT * FROM t) s",
            "SELECT a FROM t NATURAL JOIN u",
            "SELECT array_agg(*) FROM t",
        ] {
            assert_eq!(columns(sql), None, "{sql}");
        }
        assert_eq!(columns("DESCRIBE t"), None);
        assert_eq!(columns("SHOW COLUMNS FROM t"), None);
    }
}
