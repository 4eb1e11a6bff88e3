//! The optimizer rule that tells each collection scan which fields of its struct columns a
//! query reads, so sealed segments decode `user.screen_name` and not all of `user`.
//!
//! DataFusion 55 pushes only whole top-level columns into a scan. This rule looks at the
//! whole optimized plan: a struct column that the query only ever reaches through
//! `get_field` (how `t.user.screen_name` is planned) needs only those fields; any other use
//! (the column passed to a function, compared, grouped on, or returned) needs all of it.
//! The scan then returns the other fields as nulls; the table's schema is unchanged, so
//! nothing above the scan can tell, as long as nothing above reads them, which is what the
//! rule establishes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Result, ScalarValue};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use tarn_storage::layout::Subfields;

use crate::table::CollectionTable;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct NarrowStructScans;

/// What the plan reads of each column name: absent when nothing, `None` when all of it.
#[derive(Debug, Default)]
struct Uses(HashMap<String, Option<Subfields>>);

impl Uses {
    /// Records that the plan reads `need` of the field at `path` under column `name` (the
    /// column itself when `path` is empty; all of it when `need` is `None`).
    fn add(&mut self, name: &str, path: &[String], need: Option<Subfields>) {
        let need = path.iter().rev().fold(need, |inner, field| {
            Some(Subfields(BTreeMap::from([(field.clone(), inner)])))
        });
        let merged = match self.0.remove(name) {
            Some(before) => Subfields::union(before, need),
            None => need,
        };
        self.0.insert(name.to_owned(), merged);
    }
}

/// How a column that the plan names is made from another, so that a use of it is a use of
/// that other column: `get_field(c, 'a') AS x` (x is c's field a), `c AS x`, and an unnest
/// of a list (each output row is an element of the list: for a list of structs, a use of
/// the element's fields is a use of those fields of the list, which is how [`Subfields`]
/// reads a list of structs).
#[derive(Debug, Clone, PartialEq)]
enum Made {
    Field { from: String, path: Vec<String> },
    Element { of: String },
}

/// What a walk of the plan finds: the uses as written, and how names are made.
#[derive(Debug, Default)]
struct Found {
    uses: Uses,
    made: HashMap<String, Vec<Made>>,
}

impl Found {
    fn made(&mut self, name: &str, how: Made) {
        let ways = self.made.entry(name.to_owned()).or_default();
        if !ways.contains(&how) {
            ways.push(how);
        }
    }

    /// The uses of the collections' own columns: each use of a name made from another is
    /// carried down to that one, and kept as a use of the name itself too (a collection may
    /// have a column of that name). `None` when names are made from each other in a cycle.
    fn resolve(self) -> Option<Uses> {
        let mut out = Uses::default();
        let mut pending: Vec<(String, Option<Subfields>, usize)> = self
            .uses
            .0
            .into_iter()
            .map(|(name, need)| (name, need, 0))
            .collect();
        while let Some((name, need, depth)) = pending.pop() {
            // Deeper than any chain of aliases a query makes: a cycle.
            if depth > 256 {
                return None;
            }
            for how in self.made.get(&name).into_iter().flatten() {
                match how {
                    Made::Field { from, path } => {
                        let mut wrapped = Uses::default();
                        wrapped.add(from, path, need.clone());
                        let need = wrapped.0.remove(from).expect("just added");
                        pending.push((from.clone(), need, depth + 1));
                    }
                    Made::Element { of } => pending.push((of.clone(), need.clone(), depth + 1)),
                }
            }
            out.add(&name, &[], need);
        }
        Some(out)
    }
}

/// `get_field(get_field(col, 'a'), 'b', ...)` as the column's name and the field path.
fn field_path(e: &Expr) -> Option<(String, Vec<String>)> {
    let Expr::ScalarFunction(f) = e else {
        return None;
    };
    if f.func.name() != "get_field" || f.args.len() < 2 {
        return None;
    }
    let names = f.args[1..]
        .iter()
        .map(literal_string)
        .collect::<Option<Vec<_>>>()?;
    let (name, mut path) = column_path(&f.args[0])?;
    path.extend(names);
    Some((name, path))
}

/// A column, or a field path of one, as the column's name and the path.
fn column_path(e: &Expr) -> Option<(String, Vec<String>)> {
    match e {
        Expr::Column(c) | Expr::OuterReferenceColumn(_, c) => Some((c.name.clone(), Vec::new())),
        // DataFusion leaves a name on an unnest's output inside the expression reading it.
        Expr::Alias(a) => column_path(&a.expr),
        other => field_path(other),
    }
}

fn literal_string(e: &Expr) -> Option<String> {
    match e {
        Expr::Literal(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::Utf8View(Some(s))
            | ScalarValue::LargeUtf8(Some(s)),
            _,
        ) => Some(s.clone()),
        _ => None,
    }
}

fn visit(e: &Expr, uses: &mut Uses) -> Result<()> {
    e.apply(|node| {
        if let Some((name, path)) = field_path(node) {
            uses.add(&name, &path, None);
            return Ok(TreeNodeRecursion::Jump);
        }
        match node {
            Expr::Column(c) | Expr::OuterReferenceColumn(_, c) => uses.add(&c.name, &[], None),
            // `array_field_has(list, 'f', x)` reads only field f of the list's elements.
            Expr::ScalarFunction(f) if f.func.name() == crate::functions::ARRAY_FIELD_HAS => {
                if let [list, field, probe] = f.args.as_slice()
                    && let (Some((name, mut path)), Some(field)) =
                        (column_path(list), literal_string(field))
                    && !field.is_empty()
                {
                    path.push(field);
                    uses.add(&name, &path, None);
                    visit(probe, uses)?;
                    return Ok(TreeNodeRecursion::Jump);
                }
            }
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(())
}

/// What the whole plan reads of each column name, or `None` for a plan the rule does not
/// follow (one with nodes that pass columns on by position or that it does not know).
fn uses_of(plan: &LogicalPlan) -> Result<Option<Uses>> {
    let mut found = Found::default();
    // What the query returns is read whole.
    for f in plan.schema().fields() {
        found.uses.add(f.name(), &[], None);
    }
    let mut followed = true;
    plan.apply_with_subqueries(|node| {
        match node {
            LogicalPlan::Extension(_)
            | LogicalPlan::RecursiveQuery(_)
            | LogicalPlan::Dml(_)
            | LogicalPlan::Ddl(_)
            | LogicalPlan::Copy(_)
            | LogicalPlan::Statement(_) => {
                followed = false;
                return Ok(TreeNodeRecursion::Stop);
            }
            // Rows compared whole: all of each column is read.
            LogicalPlan::Distinct(datafusion::logical_expr::Distinct::All(input)) => {
                for f in input.schema().fields() {
                    found.uses.add(f.name(), &[], None);
                }
            }
            // What a subquery returns is read whole by the expression around it.
            LogicalPlan::Subquery(sub) => {
                for f in sub.subquery.schema().fields() {
                    found.uses.add(f.name(), &[], None);
                }
            }
            // A union's inputs become its columns by position, under other names.
            LogicalPlan::Union(u) => {
                for input in &u.inputs {
                    for f in input.schema().fields() {
                        found.uses.add(f.name(), &[], None);
                    }
                }
            }
            // A column passed on under its own name is not a use: what reads it above
            // reads it by that name. A column or a field of one renamed is read as much
            // as its new name is.
            LogicalPlan::Projection(p) => {
                for e in &p.expr {
                    match e {
                        Expr::Column(_) => {}
                        Expr::Alias(a) => match column_path(&a.expr) {
                            Some((from, path)) if path.is_empty() && from == a.name => {}
                            Some((from, path)) => found.made(&a.name, Made::Field { from, path }),
                            None => visit(e, &mut found.uses)?,
                        },
                        _ => visit(e, &mut found.uses)?,
                    }
                }
                return Ok(TreeNodeRecursion::Continue);
            }
            // Each row out of a list's unnest is one of its elements; other unnests (of
            // structs, or of lists in lists) read their column whole.
            LogicalPlan::Unnest(u) => {
                let input = u.input.schema();
                for (i, list) in &u.list_type_columns {
                    let of = input.field(*i).name().clone();
                    if list.depth == 1 {
                        found.made(&list.output_column.name, Made::Element { of });
                    } else {
                        found.uses.add(&of, &[], None);
                    }
                }
                for i in &u.struct_type_columns {
                    found.uses.add(input.field(*i).name(), &[], None);
                }
                return Ok(TreeNodeRecursion::Continue);
            }
            _ => {}
        }
        node.apply_expressions(|e| {
            visit(e, &mut found.uses)?;
            Ok(TreeNodeRecursion::Continue)
        })?;
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(if followed { found.resolve() } else { None })
}

impl OptimizerRule for NarrowStructScans {
    fn name(&self) -> &str {
        "tarn_narrow_struct_scans"
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let Some(uses) = uses_of(&plan)? else {
            return Ok(Transformed::no(plan));
        };
        plan.transform_up_with_subqueries(|node| {
            let LogicalPlan::TableScan(scan) = &node else {
                return Ok(Transformed::no(node));
            };
            let Ok(provider) = source_as_provider(&scan.source) else {
                return Ok(Transformed::no(node));
            };
            let Some(table) = provider.downcast_ref::<CollectionTable>() else {
                return Ok(Transformed::no(node));
            };
            let schema = provider.schema();
            // The scan reads the columns it returns and those its exact filters read.
            let mut columns: Vec<usize> = scan
                .projection
                .clone()
                .unwrap_or_else(|| (0..schema.fields().len()).collect());
            for filter in &scan.filters {
                for c in filter.column_refs() {
                    if let Ok(i) = schema.index_of(&c.name) {
                        columns.push(i);
                    }
                }
            }
            columns.sort_unstable();
            columns.dedup();
            let mut subfields = HashMap::new();
            for i in columns {
                let f = schema.field(i);
                if !tarn_storage::narrow::narrowable(f.data_type()) {
                    continue;
                }
                // A projected column with no use found is read whole.
                if let Some(Some(need)) = uses.0.get(f.name()) {
                    subfields.insert(f.name().clone(), need.clone());
                }
            }
            if &subfields == table.subfields() {
                return Ok(Transformed::no(node));
            }
            let mut scan = scan.clone();
            scan.source = provider_as_source(Arc::new(table.with_subfields(subfields)));
            Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::QueryEngine;
    use serde_json::json;

    fn describe(s: &Subfields) -> String {
        s.0.iter()
            .map(|(name, inner)| match inner {
                None => name.clone(),
                Some(i) => format!("{name}{{{}}}", describe(i)),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// For each scan of a collection in the optimized plan: the columns it reads in part.
    async fn narrowed(engine: &QueryEngine, sql: &str) -> Vec<String> {
        let plan = engine.optimized_plan(sql).await.unwrap();
        let mut out = Vec::new();
        plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node
                && let Ok(p) = source_as_provider(&scan.source)
                && let Some(t) = p.downcast_ref::<CollectionTable>()
            {
                let mut cols: Vec<String> = t
                    .subfields()
                    .iter()
                    .map(|(c, s)| format!("{c}{{{}}}", describe(s)))
                    .collect();
                cols.sort();
                out.push(cols.join(" "));
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
        out
    }

    #[tokio::test]
    async fn scans_read_only_the_fields_the_query_reaches() {
        let (_dir, storage, engine) = crate::testing::engine_over(json!({
            "u": {"name": "a", "k": 1, "deep": {"a": 1, "b": 2}}, "w": {"p": 1},
            "entities": {"hashtags": [{"text": "x"}], "urls": []}, "n": 1
        }))
        .await;
        let cases = [
            ("SELECT t.u.name FROM c t", vec!["u{name}"]),
            (
                "SELECT t.u.deep.a FROM c t WHERE t.u.k > 1",
                vec!["u{deep{a},k}"],
            ),
            ("SELECT t.u.name, t.u FROM c t", vec![""]),
            ("SELECT t.u.name FROM c t WHERE t.u IS NOT NULL", vec![""]),
            ("SELECT x.u.name FROM (SELECT * FROM c) x", vec!["u{name}"]),
            ("SELECT * FROM c", vec![""]),
            (
                "SELECT json_format(t.w), t.u.name FROM c t",
                vec!["u{name}"],
            ),
            // DataFusion moves the field access into each branch of the union.
            (
                "SELECT v.name FROM (SELECT t.u AS v FROM c t UNION ALL SELECT t.u AS v FROM c t) z",
                vec!["u{name}", "u{name}"],
            ),
            (
                "SELECT z.v FROM (SELECT t.u AS v FROM c t UNION ALL SELECT t.u AS v FROM c t) z",
                vec!["", ""],
            ),
            (
                "SELECT t.u.name, t.u.k AS fc FROM c t \
                 WHERE 'x' IN (SELECT h.text FROM unnest(t.entities.hashtags) h) \
                 GROUP BY (t.u.name, t.u.k) ORDER BY t.u.k DESC LIMIT 5",
                vec!["entities{hashtags{text}} u{k,name}"],
            ),
            (
                "SELECT h.text, count(*) FROM c t, unnest(t.entities.hashtags) h \
                 WHERE 'x' IN (SELECT g.text FROM unnest(t.entities.hashtags) g) GROUP BY h.text",
                vec!["entities{hashtags{text}}"],
            ),
            // An element read whole, or a list passed to a function: the list whole.
            (
                "SELECT h FROM c t, unnest(t.entities.hashtags) h",
                vec!["entities{hashtags}"],
            ),
            (
                "SELECT cardinality(t.entities.hashtags) FROM c t",
                vec!["entities{hashtags}"],
            ),
            // A filter the scan applies alone still counts.
            (
                "SELECT t.u.name FROM c t WHERE t.w.p = 1",
                vec!["u{name} w{p}"],
            ),
            (
                "SELECT d.u.name FROM (SELECT DISTINCT u FROM c) d",
                vec![""],
            ),
            (
                "SELECT a.u.name FROM c a JOIN c b ON a.w.p = b.u.k",
                vec!["u{k,name} w{p}", "u{k,name}"],
            ),
        ];
        for (sql, want) in cases {
            assert_eq!(
                narrowed(&engine, sql).await,
                want,
                "{sql}\n{}",
                engine.optimized_plan(sql).await.unwrap().display_indent()
            );
        }
        storage.close();
    }
}
