//! Segment pruning: decides from a segment's statistics that no row can pass a filter.
//!
//! Filters are DataFusion expressions pushed into the scan. Each conjunct of the form
//! `path op literal` (or `literal op path`, `path BETWEEN a AND b`) is checked against the
//! segment's min/max for that path: `_event_time`, scalar columns at any depth, and
//! `CAST(str AS BIGINT)` over string columns whose values are all integers (the tutorial's
//! `CAST(timestamp_ms AS INT) > ...`). Anything else is assumed to match.
//!
//! The statistics can also show that every row of a segment passes (a segment wholly
//! inside a time window): the scan then keeps its rows without evaluating the filters.
//!
//! Filters that operators push into a running scan (a top-n's threshold) are physical
//! expressions that tighten as the query runs: [`LatePruner`] checks each segment against
//! them just before it is read.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use datafusion::physical_expr::PhysicalExpr;
use tarn_storage::SegmentList;
use tarn_storage::segment::{ColumnStats, SegmentStats};
use tarn_storage::types::EVENT_TIME;

/// A path operand: a dotted column path, possibly under an integer cast.
#[derive(Debug, PartialEq)]
struct Operand {
    path: String,
    int_cast: bool,
    /// Under a cast to 32 bits, where a value in range may still not convert.
    narrow: bool,
}

fn operand(e: &Expr) -> Option<Operand> {
    match e {
        Expr::Column(c) => Some(Operand {
            path: c.name.clone(),
            int_cast: false,
            narrow: false,
        }),
        Expr::Cast(c) if matches!(c.field.data_type(), DataType::Int64 | DataType::Int32) => {
            let inner = operand(&c.expr)?;
            (!inner.int_cast).then_some(Operand {
                path: inner.path,
                int_cast: true,
                narrow: c.field.data_type() == &DataType::Int32,
            })
        }
        Expr::ScalarFunction(f) if f.func.name() == "get_field" && f.args.len() == 2 => {
            let base = operand(&f.args[0])?;
            match &f.args[1] {
                Expr::Literal(
                    ScalarValue::Utf8(Some(name)) | ScalarValue::Utf8View(Some(name)),
                    _,
                ) if !base.int_cast => Some(Operand {
                    path: format!("{}.{name}", base.path),
                    int_cast: false,
                    narrow: false,
                }),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A literal bound as a comparable value.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
enum Bound {
    Int(i64),
    Float(f64),
    Str(String),
}

fn literal(e: &Expr) -> Option<Bound> {
    match e {
        Expr::Literal(v, _) => scalar_bound(v),
        Expr::Cast(c) => literal(&c.expr),
        _ => None,
    }
}

/// A scalar as a comparable bound.
fn scalar_bound(v: &ScalarValue) -> Option<Bound> {
    match v {
        ScalarValue::Int64(Some(n)) => Some(Bound::Int(*n)),
        ScalarValue::Int32(Some(n)) => Some(Bound::Int(*n as i64)),
        ScalarValue::Float64(Some(f)) => Some(Bound::Float(*f)),
        ScalarValue::Utf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => Some(Bound::Str(s.clone())),
        ScalarValue::TimestampMicrosecond(Some(t), _) => Some(Bound::Int(*t)),
        ScalarValue::TimestampMillisecond(Some(t), _) => Some(Bound::Int(t.saturating_mul(1_000))),
        ScalarValue::TimestampSecond(Some(t), _) => Some(Bound::Int(t.saturating_mul(1_000_000))),
        ScalarValue::TimestampNanosecond(Some(t), _) => Some(Bound::Int(t / 1_000)),
        _ => None,
    }
}

/// What a segment's statistics tell of the rows a scan's filters keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// No row can pass: the segment is skipped.
    None,
    /// Some rows may pass: the filters decide row by row.
    Some,
    /// Every row passes: the filters need not be evaluated.
    All,
}

impl Keep {
    fn and(self, other: Keep) -> Keep {
        match (self, other) {
            (Keep::None, _) | (_, Keep::None) => Keep::None,
            (Keep::All, Keep::All) => Keep::All,
            _ => Keep::Some,
        }
    }

    fn or(self, other: Keep) -> Keep {
        match (self, other) {
            (Keep::All, _) | (_, Keep::All) => Keep::All,
            (Keep::None, Keep::None) => Keep::None,
            _ => Keep::Some,
        }
    }
}

/// The filters of one scan, compiled once: checking a segment then allocates nothing and
/// parses no expression. Over a day of tweets (600 to 1,700 segments) checking each
/// segment against the expressions themselves was a quarter of a windowed query's time.
#[derive(Debug)]
pub struct Pruner {
    conditions: Vec<Condition>,
    /// The operands the conditions compare, each once.
    operands: Vec<Operand>,
    /// Some filter can never be told from statistics, so no segment is [`Keep::All`].
    unknown: bool,
}

#[derive(Debug)]
enum Condition {
    And(Box<Condition>, Box<Condition>),
    Or(Box<Condition>, Box<Condition>),
    Compare {
        /// Index into [`Pruner::operands`].
        operand: usize,
        op: Operator,
        bound: Bound,
        /// Whether statistics can show that every row passes: the operand is a top-level
        /// column of the type its statistics describe, compared as that type.
        whole: bool,
    },
    /// `operand IS NULL`, or `IS NOT NULL` when `negated`.
    IsNull {
        operand: usize,
        negated: bool,
    },
    /// Cannot be told from statistics.
    Unknown,
}

/// An operand's statistics in one segment: its range and how many rows lack a value.
#[derive(Clone, Copy)]
struct Known<'a> {
    range: Range<'a>,
    nulls: u64,
}

impl Pruner {
    /// Compiles `filters`, the conjuncts a scan of a table of `schema` was given.
    pub fn new(filters: &[Expr], schema: &Schema) -> Pruner {
        let mut pruner = Pruner {
            conditions: Vec::new(),
            operands: Vec::new(),
            unknown: false,
        };
        for f in filters {
            let c = pruner.compile(f, schema);
            if matches!(c, Condition::Unknown) {
                pruner.unknown = true;
            } else {
                pruner.conditions.push(c);
            }
        }
        pruner
    }

    /// Compiles filters that operators push into a running scan (a top-n's threshold, in
    /// its present form): comparisons of a column with a literal, `IS [NOT] NULL`, `AND`,
    /// `OR`. They only rule segments out: no segment is [`Keep::All`] by them.
    pub fn from_physical(filters: &[Arc<dyn PhysicalExpr>]) -> Pruner {
        let mut pruner = Pruner {
            conditions: Vec::new(),
            operands: Vec::new(),
            unknown: true,
        };
        for f in filters {
            let c = pruner.compile_physical(f.as_ref());
            if !matches!(c, Condition::Unknown) {
                pruner.conditions.push(c);
            }
        }
        pruner
    }

    fn compile_physical(&mut self, filter: &dyn PhysicalExpr) -> Condition {
        use datafusion::physical_expr::expressions as px;
        let column = |e: &Arc<dyn PhysicalExpr>| {
            e.downcast_ref::<px::Column>().map(|c| Operand {
                path: c.name().to_owned(),
                int_cast: false,
                narrow: false,
            })
        };
        let bound = |e: &Arc<dyn PhysicalExpr>| {
            e.downcast_ref::<px::Literal>()
                .and_then(|l| scalar_bound(l.value()))
        };
        if let Some(b) = filter.downcast_ref::<px::BinaryExpr>() {
            let (left, op, right) = (b.left(), *b.op(), b.right());
            return match op {
                Operator::And => Condition::And(
                    Box::new(self.compile_physical(left.as_ref())),
                    Box::new(self.compile_physical(right.as_ref())),
                ),
                Operator::Or => Condition::Or(
                    Box::new(self.compile_physical(left.as_ref())),
                    Box::new(self.compile_physical(right.as_ref())),
                ),
                _ => {
                    let (operand, op, bound) = match (column(left), bound(right)) {
                        (Some(o), Some(b)) => (o, op, b),
                        _ => match (bound(left), column(right), flip(op)) {
                            (Some(b), Some(o), Some(op)) => (o, op, b),
                            _ => return Condition::Unknown,
                        },
                    };
                    Condition::Compare {
                        operand: self.operand_index(operand),
                        op,
                        bound,
                        whole: false,
                    }
                }
            };
        }
        let null_test = match (
            filter.downcast_ref::<px::IsNullExpr>(),
            filter.downcast_ref::<px::IsNotNullExpr>(),
        ) {
            (Some(e), _) => Some((e.arg(), false)),
            (_, Some(e)) => Some((e.arg(), true)),
            _ => None,
        };
        match null_test.and_then(|(arg, negated)| Some((column(arg)?, negated))) {
            Some((operand, negated)) => Condition::IsNull {
                operand: self.operand_index(operand),
                negated,
            },
            None => Condition::Unknown,
        }
    }

    /// Whether any row of a segment with these statistics may pass every filter.
    pub fn may_match(&self, stats: &SegmentStats) -> bool {
        self.keep(stats) != Keep::None
    }

    /// What the statistics of one segment tell.
    pub fn keep(&self, stats: &SegmentStats) -> Keep {
        self.decide(|i| known(stats, &self.operands[i]))
    }

    /// What the statistics tell of each segment of `list`, in order. Reads each operand's
    /// statistics from the list's side-by-side copy, not from the segments, one condition
    /// at a time over all segments: a comparison with an integer (a time window) over the
    /// list's flat integer ranges.
    pub fn keep_each(&self, list: &SegmentList) -> Vec<Keep> {
        let columns: Vec<Option<Arc<[Option<ColumnStats>]>>> = self
            .operands
            .iter()
            .map(|o| (!is_event_time(o)).then(|| list.column_stats(&o.path)))
            .collect();
        let mut keep = vec![Keep::All; list.entries.len()];
        for c in &self.conditions {
            let each = self.condition_each(c, list, &columns);
            for (k, e) in keep.iter_mut().zip(each) {
                *k = k.and(e);
            }
        }
        if self.unknown {
            for k in keep.iter_mut().filter(|k| **k == Keep::All) {
                *k = Keep::Some;
            }
        }
        keep
    }

    fn condition_each(
        &self,
        c: &Condition,
        list: &SegmentList,
        columns: &[Option<Arc<[Option<ColumnStats>]>>],
    ) -> Vec<Keep> {
        let zip = |a: Vec<Keep>, b: Vec<Keep>, f: fn(Keep, Keep) -> Keep| {
            a.into_iter().zip(b).map(|(a, b)| f(a, b)).collect()
        };
        match c {
            Condition::And(a, b) => zip(
                self.condition_each(a, list, columns),
                self.condition_each(b, list, columns),
                Keep::and,
            ),
            Condition::Or(a, b) => zip(
                self.condition_each(a, list, columns),
                self.condition_each(b, list, columns),
                Keep::or,
            ),
            Condition::Compare {
                operand,
                op,
                bound: bound @ Bound::Int(_),
                whole,
            } => {
                let int = |min, max, nulls| {
                    compare(
                        Known {
                            range: Range::Int(min, max),
                            nulls,
                        },
                        *op,
                        bound,
                        *whole,
                    )
                };
                let o = &self.operands[*operand];
                if is_event_time(o) {
                    list.event_times
                        .iter()
                        .map(|&(min, max)| int(min, max, 0))
                        .collect()
                } else {
                    // A segment without an integer range (no statistics, floats, strings
                    // that are not all integers) does not compare with an integer.
                    list.int_ranges(&o.path, o.int_cast)
                        .iter()
                        .map(|r| r.map_or(Keep::Some, |r| int(r.min, r.max, r.nulls)))
                        .collect()
                }
            }
            _ => (0..list.entries.len())
                .map(|segment| {
                    c.keep(&|i| {
                        let op = &self.operands[i];
                        match &columns[i] {
                            None => {
                                let (min, max) = list.event_times[segment];
                                Some(Known {
                                    range: Range::Int(min, max),
                                    nulls: 0,
                                })
                            }
                            Some(stats) => column_known(stats[segment].as_ref()?, op),
                        }
                    })
                })
                .collect(),
        }
    }

    fn decide<'a>(&self, known: impl Fn(usize) -> Option<Known<'a>>) -> Keep {
        let all = self
            .conditions
            .iter()
            .fold(Keep::All, |acc, c| acc.and(c.keep(&known)));
        if all == Keep::All && self.unknown {
            Keep::Some
        } else {
            all
        }
    }

    fn operand_index(&mut self, operand: Operand) -> usize {
        match self.operands.iter().position(|o| *o == operand) {
            Some(i) => i,
            None => {
                self.operands.push(operand);
                self.operands.len() - 1
            }
        }
    }

    fn compare(
        &mut self,
        operand: Operand,
        op: Operator,
        bound: Bound,
        schema: &Schema,
    ) -> Condition {
        let whole = may_keep_whole(&operand, &bound, schema);
        Condition::Compare {
            operand: self.operand_index(operand),
            op,
            bound,
            whole,
        }
    }

    fn compile(&mut self, filter: &Expr, schema: &Schema) -> Condition {
        match filter {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::And,
                right,
            }) => Condition::And(
                Box::new(self.compile(left, schema)),
                Box::new(self.compile(right, schema)),
            ),
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Or,
                right,
            }) => Condition::Or(
                Box::new(self.compile(left, schema)),
                Box::new(self.compile(right, schema)),
            ),
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                if let (Some(operand), Some(bound)) = (operand(left), literal(right)) {
                    return self.compare(operand, *op, bound, schema);
                }
                if let (Some(bound), Some(operand), Some(op)) =
                    (literal(left), operand(right), flip(*op))
                {
                    return self.compare(operand, op, bound, schema);
                }
                Condition::Unknown
            }
            Expr::Between(b) if !b.negated => {
                match (operand(&b.expr), literal(&b.low), literal(&b.high)) {
                    (Some(o), Some(lo), Some(hi)) => {
                        let copy = Operand {
                            path: o.path.clone(),
                            int_cast: o.int_cast,
                            narrow: o.narrow,
                        };
                        Condition::And(
                            Box::new(self.compare(copy, Operator::GtEq, lo, schema)),
                            Box::new(self.compare(o, Operator::LtEq, hi, schema)),
                        )
                    }
                    _ => Condition::Unknown,
                }
            }
            _ => Condition::Unknown,
        }
    }
}

/// Whether a comparison of `operand` with `bound` may be found true for every row of a
/// segment from its statistics. Only where the scan's own evaluation would compare exactly
/// the values the statistics describe: `_event_time`; a top-level 64-bit integer or string
/// column against a literal of its kind; `CAST(str AS BIGINT)` against an integer (the
/// statistics' integer range exists only when every value parses). Floats never (NaN).
fn may_keep_whole(operand: &Operand, bound: &Bound, schema: &Schema) -> bool {
    if is_event_time(operand) {
        return matches!(bound, Bound::Int(_));
    }
    if operand.path.contains('.') || operand.narrow {
        return false;
    }
    let Ok(field) = schema.field_with_name(&operand.path) else {
        return false;
    };
    matches!(
        (field.data_type(), operand.int_cast, bound),
        (DataType::Int64, _, Bound::Int(_))
            | (DataType::Utf8, true, Bound::Int(_))
            | (DataType::Utf8, false, Bound::Str(_))
    )
}

impl Condition {
    fn keep<'a>(&self, known: &impl Fn(usize) -> Option<Known<'a>>) -> Keep {
        match self {
            Condition::And(a, b) => a.keep(known).and(b.keep(known)),
            Condition::Or(a, b) => a.keep(known).or(b.keep(known)),
            Condition::Compare {
                operand,
                op,
                bound,
                whole,
            } => match known(*operand) {
                Some(k) => compare(k, *op, bound, *whole),
                None => Keep::Some,
            },
            // A count of 0 rules a segment out; one with values for the column has a
            // row that is not null.
            Condition::IsNull { operand, negated } => match known(*operand) {
                Some(k) if !negated && k.nulls == 0 => Keep::None,
                _ => Keep::Some,
            },
            Condition::Unknown => Keep::Some,
        }
    }
}

/// A segment's [min, max] of an operand, borrowed from its statistics.
#[derive(Clone, Copy)]
enum Range<'a> {
    Int(i64, i64),
    Float(f64, f64),
    Str(&'a str, &'a str),
}

fn is_event_time(op: &Operand) -> bool {
    op.path == EVENT_TIME && !op.int_cast
}

fn known<'a>(stats: &'a SegmentStats, op: &Operand) -> Option<Known<'a>> {
    if is_event_time(op) {
        return Some(Known {
            range: Range::Int(stats.min_event_time, stats.max_event_time),
            nulls: 0,
        });
    }
    let mut k = column_known(stats.columns.get(&op.path)?, op)?;
    k.nulls = stats.trusted_nulls(k.nulls);
    Some(k)
}

fn column_known<'a>(stats: &'a ColumnStats, op: &Operand) -> Option<Known<'a>> {
    let (range, nulls) = match (stats, op.int_cast) {
        (ColumnStats::Int { min, max, nulls }, _) => (Range::Int(*min, *max), *nulls),
        (ColumnStats::Float { min, max, nulls }, false) => (Range::Float(*min, *max), *nulls),
        (
            ColumnStats::Str {
                min, max, nulls, ..
            },
            false,
        ) => (Range::Str(min, max), *nulls),
        (
            ColumnStats::Str {
                int_min: Some(lo),
                int_max: Some(hi),
                nulls,
                ..
            },
            true,
        ) => (Range::Int(*lo, *hi), *nulls),
        _ => return None,
    };
    Some(Known { range, nulls })
}

/// False only when no value in [min, max] can satisfy `value op bound`.
fn cmp_range<T: PartialOrd + ?Sized>(min: &T, max: &T, op: Operator, bound: &T) -> bool {
    match op {
        Operator::Eq => bound >= min && bound <= max,
        Operator::Gt => max > bound,
        Operator::GtEq => max >= bound,
        Operator::Lt => min < bound,
        Operator::LtEq => min <= bound,
        _ => true,
    }
}

/// True only when every value in [min, max] satisfies `value op bound`.
fn all_in_range<T: PartialOrd + ?Sized>(min: &T, max: &T, op: Operator, bound: &T) -> bool {
    match op {
        Operator::Eq => min == bound && max == bound,
        Operator::NotEq => max < bound || min > bound,
        Operator::Gt => min > bound,
        Operator::GtEq => min >= bound,
        Operator::Lt => max < bound,
        Operator::LtEq => max <= bound,
        _ => false,
    }
}

fn compare(k: Known<'_>, op: Operator, bound: &Bound, whole: bool) -> Keep {
    let (may, all) = match (k.range, bound) {
        (Range::Int(min, max), Bound::Int(b)) => (
            cmp_range(&min, &max, op, b),
            all_in_range(&min, &max, op, b),
        ),
        (Range::Float(min, max), Bound::Float(b)) => (cmp_range(&min, &max, op, b), false),
        (Range::Str(min, max), Bound::Str(b)) => (
            cmp_range(min, max, op, b.as_str()),
            all_in_range(min, max, op, b.as_str()),
        ),
        // Types that do not compare: may match.
        _ => (true, false),
    };
    if !may {
        Keep::None
    } else if all && whole && k.nulls == 0 {
        Keep::All
    } else {
        Keep::Some
    }
}

fn flip(op: Operator) -> Option<Operator> {
    Some(match op {
        Operator::Eq => Operator::Eq,
        Operator::Lt => Operator::Gt,
        Operator::LtEq => Operator::GtEq,
        Operator::Gt => Operator::Lt,
        Operator::GtEq => Operator::LtEq,
        _ => return None,
    })
}

/// Rules segments out by filters that tighten while a query runs: a top-n's threshold
/// pushed into the scan (`timestamp_ms > '1796256353957'` once its heap is full). A
/// dashboard's `ORDER BY timestamp_ms DESC LIMIT 100` then reads the newest segment, and
/// every older one whose newest value is below the threshold is not read at all.
///
/// The filters are compiled ([`Pruner::from_physical`]) again only when one changed; what
/// cannot be told from statistics rules nothing out: these filters are a help, and the
/// operators that made them still apply them.
#[derive(Default)]
pub struct LatePruner {
    compiled: Option<(Vec<Arc<dyn PhysicalExpr>>, Pruner)>,
}

impl LatePruner {
    /// Whether no row of a segment with `stats` can pass all of `filters` (their present
    /// form).
    pub fn rules_out(&mut self, filters: &[Arc<dyn PhysicalExpr>], stats: &SegmentStats) -> bool {
        let same = self.compiled.as_ref().is_some_and(|(was, _)| {
            was.len() == filters.len()
                && was
                    .iter()
                    .zip(filters)
                    .all(|(a, b)| a.as_ref() == b.as_ref())
        });
        if !same {
            self.compiled = Some((filters.to_vec(), Pruner::from_physical(filters)));
        }
        self.compiled
            .as_ref()
            .is_some_and(|(_, pruner)| pruner.keep(stats) == Keep::None)
    }
}

/// Whether any row of a segment with these statistics may satisfy `filter`.
#[cfg(test)]
fn may_match(stats: &SegmentStats, filter: &Expr) -> bool {
    Pruner::new(std::slice::from_ref(filter), &Schema::empty()).may_match(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{cast, col, lit};

    fn stats() -> SegmentStats {
        let mut s = SegmentStats {
            rows: 10,
            min_event_time: 100,
            max_event_time: 200,
            nulls_counted: true,
            ..Default::default()
        };
        s.columns.insert(
            "n".into(),
            ColumnStats::Int {
                min: 5,
                max: 9,
                nulls: 0,
            },
        );
        s.columns.insert(
            "ts".into(),
            ColumnStats::Str {
                min: "1000".into(),
                max: "2000".into(),
                int_min: Some(1000),
                int_max: Some(2000),
                nulls: 0,
            },
        );
        s
    }

    #[test]
    fn prunes_by_event_time_and_columns() {
        let s = stats();
        let et = |v: i64| {
            Expr::Literal(
                ScalarValue::TimestampMicrosecond(Some(v), Some("UTC".into())),
                None,
            )
        };
        assert!(!may_match(&s, &col("_event_time").gt(et(200))));
        assert!(may_match(&s, &col("_event_time").gt_eq(et(200))));
        assert!(!may_match(&s, &et(99).gt(col("_event_time"))));
        assert!(!may_match(&s, &col("n").eq(lit(10i64))));
        assert!(may_match(&s, &col("n").eq(lit(7i64))));
        assert!(!may_match(
            &s,
            &col("n").gt(lit(1i64)).and(col("n").lt(lit(5i64)))
        ));
        assert!(may_match(
            &s,
            &col("n").gt(lit(100i64)).or(col("n").lt(lit(6i64)))
        ));
        assert!(!may_match(
            &s,
            &cast(col("ts"), DataType::Int64).gt(lit(2000i64))
        ));
        assert!(may_match(
            &s,
            &cast(col("ts"), DataType::Int64).gt(lit(1999i64))
        ));
        assert!(may_match(&s, &col("unknown").gt(lit(1i64))));
        assert!(
            may_match(&s, &col("n").gt(lit("x"))),
            "incomparable types never prune"
        );
    }

    fn schema() -> Schema {
        use datafusion::arrow::datatypes::Field;
        Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("ts", DataType::Utf8, true),
        ])
    }

    #[test]
    fn keeps_a_whole_segment_only_when_statistics_show_every_row_passes() {
        let s = stats();
        let schema = schema();
        let keep = |f: Expr| Pruner::new(&[f], &schema).keep(&s);
        let et = |v: i64| {
            Expr::Literal(
                ScalarValue::TimestampMicrosecond(Some(v), Some("UTC".into())),
                None,
            )
        };
        assert_eq!(keep(col("n").gt(lit(4i64))), Keep::All);
        assert_eq!(keep(col("n").gt(lit(5i64))), Keep::Some);
        assert_eq!(keep(col("n").gt(lit(9i64))), Keep::None);
        assert_eq!(keep(col("n").not_eq(lit(10i64))), Keep::All);
        assert_eq!(keep(col("n").between(lit(5i64), lit(9i64))), Keep::All);
        assert_eq!(keep(col("n").between(lit(6i64), lit(9i64))), Keep::Some);
        assert_eq!(
            keep(cast(col("ts"), DataType::Int64).gt_eq(lit(1000i64))),
            Keep::All
        );
        assert_eq!(
            keep(cast(col("ts"), DataType::Int32).gt_eq(lit(1000i64))),
            Keep::Some,
            "a value in range may not fit 32 bits"
        );
        assert_eq!(keep(col("ts").gt(lit("0"))), Keep::All);
        assert_eq!(keep(col("_event_time").gt_eq(et(100))), Keep::All);
        assert_eq!(keep(col("_event_time").gt(et(100))), Keep::Some);
        assert_eq!(
            keep(col("n").gt(lit(100i64)).or(col("n").lt(lit(10i64)))),
            Keep::All
        );
        assert_eq!(
            keep(col("n").gt(lit(4i64)).and(col("n").lt(lit(7i64)))),
            Keep::Some
        );
        // A column outside the table's schema, or nested, or of another type: never all.
        assert_eq!(
            Pruner::new(&[col("n").gt(lit(4i64))], &Schema::empty()).keep(&s),
            Keep::Some
        );
        // A filter statistics cannot judge alongside one they can: some.
        let both = [col("n").gt(lit(4i64)), col("ts").like(lit("1%"))];
        assert_eq!(Pruner::new(&both, &schema).keep(&s), Keep::Some);
        // A row without a value fails every comparison.
        let mut with_null = stats();
        with_null.columns.insert(
            "n".into(),
            ColumnStats::Int {
                min: 5,
                max: 9,
                nulls: 1,
            },
        );
        assert_eq!(
            Pruner::new(&[col("n").gt(lit(4i64))], &schema).keep(&with_null),
            Keep::Some
        );
        // Null counts from before they were complete are not trusted.
        let mut old = stats();
        old.nulls_counted = false;
        assert_eq!(
            Pruner::new(&[col("n").gt(lit(4i64))], &schema).keep(&old),
            Keep::Some
        );
        assert_eq!(
            Pruner::new(&[col("n").gt(lit(9i64))], &schema).keep(&old),
            Keep::None
        );
    }

    #[test]
    fn a_list_of_segments_is_judged_as_each_segment_alone() {
        use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
        use std::sync::Arc;
        use tarn_storage::SegmentEntry;
        use tarn_storage::segment::{DeleteBitmap, Segment};
        let schema = Arc::new(schema());
        let segment = |id: u64, n: Vec<Option<i64>>, ts: Vec<&str>| SegmentEntry {
            segment: Segment::new(
                id,
                RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        Arc::new(Int64Array::from(n)),
                        Arc::new(StringArray::from(ts)),
                    ],
                )
                .unwrap(),
            ),
            deleted: Arc::new(DeleteBitmap::default()),
            sealed: true,
        };
        let list = SegmentList::new(vec![
            segment(1, vec![Some(1), Some(2)], vec!["10", "20"]),
            segment(2, vec![Some(5), None], vec!["30", "x"]),
            segment(3, vec![Some(7), Some(8)], vec!["50", "60"]),
        ]);
        let filters = [
            col("n").gt(lit(1i64)),
            cast(col("ts"), DataType::Int64).gt(lit(15i64)),
        ];
        let pruner = Pruner::new(&filters, &schema);
        let each = pruner.keep_each(&list);
        let alone: Vec<Keep> = list
            .entries
            .iter()
            .map(|e| pruner.keep(&e.segment.stats))
            .collect();
        assert_eq!(each, alone);
        // Segment 1 may hold n = 2 with ts = 20; 2 has a null n and a ts that is no
        // integer; every row of 3 passes.
        assert_eq!(each, vec![Keep::Some, Keep::Some, Keep::All]);
        let none = Pruner::new(&[col("n").gt(lit(7i64))], &schema);
        assert_eq!(
            none.keep_each(&list),
            vec![Keep::None, Keep::None, Keep::Some]
        );
        // Other shapes, judged the same way alone and over the list.
        let et = |v: i64| {
            Expr::Literal(
                ScalarValue::TimestampMicrosecond(Some(v), Some("UTC".into())),
                None,
            )
        };
        for filters in [
            vec![col("n").gt(lit(5i64)).or(col("ts").lt(lit("15")))],
            vec![col("n").between(lit(2i64), lit(6i64))],
            vec![cast(col("ts"), DataType::Int64).lt_eq(lit(30i64))],
            vec![col("ts").gt_eq(lit("30")), col("n").lt(lit(8i64))],
            vec![col("_event_time").gt(et(0))],
            vec![col("n").gt(lit(1.5f64))],
        ] {
            let pruner = Pruner::new(&filters, &schema);
            let alone: Vec<Keep> = list
                .entries
                .iter()
                .map(|e| pruner.keep(&e.segment.stats))
                .collect();
            assert_eq!(pruner.keep_each(&list), alone, "{filters:?}");
        }
    }

    #[test]
    fn a_top_n_threshold_rules_out_segments_whose_values_all_fall_below_it() {
        use datafusion::logical_expr::Operator;
        use datafusion::physical_expr::expressions::Column as ColumnExpr;
        use datafusion::physical_expr::expressions::{
            BinaryExpr, IsNotNullExpr, IsNullExpr, Literal,
        };
        let column =
            |name: &str, i: usize| Arc::new(ColumnExpr::new(name, i)) as Arc<dyn PhysicalExpr>;
        let above = |c: Arc<dyn PhysicalExpr>, v: ScalarValue| {
            Arc::new(BinaryExpr::new(c, Operator::Gt, Arc::new(Literal::new(v))))
                as Arc<dyn PhysicalExpr>
        };
        let ts_above = |v: &str| above(column("ts", 0), ScalarValue::Utf8(Some(v.into())));
        // A DESC NULLS FIRST top-n's form: nulls still beat the threshold.
        let nulls_or = |f: Arc<dyn PhysicalExpr>| {
            Arc::new(BinaryExpr::new(
                Arc::new(IsNullExpr::new(column("ts", 0))),
                Operator::Or,
                f,
            )) as Arc<dyn PhysicalExpr>
        };
        let mut pruner = LatePruner::default();
        let s = stats();
        // The segment's strings run from "1000" to "2000".
        assert!(pruner.rules_out(&[ts_above("2000")], &s));
        assert!(!pruner.rules_out(&[ts_above("1999")], &s));
        assert!(pruner.rules_out(&[nulls_or(ts_above("2000"))], &s));
        // Nulls pass that form: a segment with one is read.
        let mut with_null = stats();
        *with_null.columns.get_mut("ts").unwrap().nulls_mut() = 1;
        assert!(!pruner.rules_out(&[nulls_or(ts_above("2000"))], &with_null));
        // A count that may be short is not trusted to be 0.
        let short = SegmentStats {
            nulls_counted: false,
            ..stats()
        };
        assert!(!pruner.rules_out(&[nulls_or(ts_above("2000"))], &short));
        // Without statistics for the column nothing is ruled out.
        let mut none = stats();
        none.columns.remove("ts");
        assert!(!pruner.rules_out(&[ts_above("2000")], &none));
        // NULLS LAST's form, and a literal on the left.
        let not_null_and = |f: Arc<dyn PhysicalExpr>| {
            Arc::new(BinaryExpr::new(
                Arc::new(IsNotNullExpr::new(column("ts", 0))),
                Operator::And,
                f,
            )) as Arc<dyn PhysicalExpr>
        };
        assert!(pruner.rules_out(&[not_null_and(ts_above("2000"))], &with_null));
        let below = Arc::new(BinaryExpr::new(
            Arc::new(Literal::new(ScalarValue::Utf8(Some("1000".into())))),
            Operator::Gt,
            column("ts", 0),
        )) as Arc<dyn PhysicalExpr>;
        assert!(pruner.rules_out(&[below], &s));
        // _event_time from the segment's range; every filter must be able to pass.
        let et = |v: i64| ScalarValue::TimestampMicrosecond(Some(v), Some("UTC".into()));
        assert!(pruner.rules_out(&[above(column(EVENT_TIME, 1), et(200))], &s));
        assert!(!pruner.rules_out(&[above(column(EVENT_TIME, 1), et(199))], &s));
        assert!(pruner.rules_out(
            &[above(column(EVENT_TIME, 1), et(199)), ts_above("2000")],
            &s
        ));
    }
}
