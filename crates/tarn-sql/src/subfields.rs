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

use datafusion::arrow::datatypes::DataType;
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
    fn whole(&mut self, name: &str) {
        self.0.insert(name.to_owned(), None);
    }

    fn path(&mut self, name: &str, path: &[String]) {
        let need = path.iter().rev().fold(None, |inner, field| {
            Some(Subfields(BTreeMap::from([(field.clone(), inner)])))
        });
        let merged = match self.0.remove(name) {
            Some(before) => Subfields::union(before, need),
            None => need,
        };
        self.0.insert(name.to_owned(), merged);
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
        .map(|a| match a {
            Expr::Literal(
                ScalarValue::Utf8(Some(s))
                | ScalarValue::Utf8View(Some(s))
                | ScalarValue::LargeUtf8(Some(s)),
                _,
            ) => Some(s.clone()),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    match &f.args[0] {
        Expr::Column(c) | Expr::OuterReferenceColumn(_, c) => Some((c.name.clone(), names)),
        inner => {
            let (name, mut path) = field_path(inner)?;
            path.extend(names);
            Some((name, path))
        }
    }
}

fn visit(e: &Expr, uses: &mut Uses) -> Result<()> {
    e.apply(|node| {
        if let Some((name, path)) = field_path(node) {
            uses.path(&name, &path);
            return Ok(TreeNodeRecursion::Jump);
        }
        match node {
            Expr::Column(c) | Expr::OuterReferenceColumn(_, c) => uses.whole(&c.name),
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(())
}

/// What the whole plan reads of each column name, or `None` for a plan the rule does not
/// follow (one with nodes that pass columns on by position or that it does not know).
fn uses_of(plan: &LogicalPlan) -> Result<Option<Uses>> {
    let mut uses = Uses::default();
    // What the query returns is read whole.
    for f in plan.schema().fields() {
        uses.whole(f.name());
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
            // A union's inputs become its columns by position, under other names.
            LogicalPlan::Union(u) => {
                for input in &u.inputs {
                    for f in input.schema().fields() {
                        uses.whole(f.name());
                    }
                }
            }
            // A column passed on under its own name is not a use: what reads it above
            // reads it by that name.
            LogicalPlan::Projection(p) => {
                for e in &p.expr {
                    let passed_on = match e {
                        Expr::Column(_) => true,
                        Expr::Alias(a) => {
                            matches!(a.expr.as_ref(), Expr::Column(c) if c.name == a.name)
                        }
                        _ => false,
                    };
                    if !passed_on {
                        visit(e, &mut uses)?;
                    }
                }
                return Ok(TreeNodeRecursion::Continue);
            }
            _ => {}
        }
        node.apply_expressions(|e| {
            visit(e, &mut uses)?;
            Ok(TreeNodeRecursion::Continue)
        })?;
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(followed.then_some(uses))
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
            let columns: Vec<usize> = scan
                .projection
                .clone()
                .unwrap_or_else(|| (0..schema.fields().len()).collect());
            let mut subfields = HashMap::new();
            for i in columns {
                let f = schema.field(i);
                if !matches!(f.data_type(), DataType::Struct(_))
                    || tarn_storage::types::is_variant(f.data_type())
                {
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
                vec!["entities{hashtags} u{k,name}"],
            ),
            (
                "SELECT h.text, count(*) FROM c t, unnest(t.entities.hashtags) h \
                 WHERE 'x' IN (SELECT g.text FROM unnest(t.entities.hashtags) g) GROUP BY h.text",
                vec!["entities{hashtags}"],
            ),
            (
                "SELECT a.u.name FROM c a JOIN c b ON a.w.p = b.u.k",
                vec!["u{k,name} w{p}", "u{k,name}"],
            ),
        ];
        for (sql, want) in cases {
            assert_eq!(narrowed(&engine, sql).await, want, "{sql}");
        }
        storage.close();
    }
}
