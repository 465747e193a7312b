//! Aggregates grouped by `quarter`, computed one partition at a time.
//!
//! `quarter` is a partition column: every row of a file has the same value,
//! but DataFusion builds it for each row and hashes it into the groups.
//! `SELECT quarter, count(*) … GROUP BY quarter` over 10M loans spends most
//! of its time there. [`SplitByQuarter`] rewrites such an aggregate over one
//! warehouse table into a `UNION ALL` of the same aggregate over each
//! quarter the table holds (each scan reading only that partition), with
//! the quarter a constant and no longer a grouping key. The groups of
//! different quarters are disjoint, so the union is the same rows; the
//! columns keep their names and types. An aggregate over rows that all
//! have one quarter already (an aggregate over one quarter's aggregate, as
//! in a refresh of one output quarter) drops the key the same way:
//! DataFusion takes a constant key for a sort order and then emits its
//! groups a batch at a time, several times slower than hashing the others.

use arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema, JoinType, NullEquality, ScalarValue, TableReference};
use datafusion::error::Result;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    Aggregate, Expr, Filter, LogicalPlan, Operator, Projection, Union, col, lit,
};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::config::schema::PARTITION_COLUMN;

/// Name of the hidden row count that keeps an emptied quarter out of the result.
const ROWS: &str = "__ironlake_quarter_rows";

/// More quarters than this are left to one aggregate (the union's plan
/// would cost more than hashing the column).
const MAX_BRANCHES: usize = 256;

/// Whether `e` is a `quarter` column.
fn is_quarter(e: &Expr) -> bool {
    matches!(e, Expr::Column(c) if c.name == PARTITION_COLUMN)
}

/// What the plan below a node says about one of its `quarter` columns.
#[derive(Default)]
struct QuarterChain {
    /// The warehouse table scanned, when the chain reaches its partition
    /// column through filters, projections and aliases alone.
    table: Option<String>,
    /// The quarters the chain's filters on that column allow, when they
    /// name them as literals.
    allowed: Option<BTreeSet<String>>,
}

impl QuarterChain {
    fn narrow(&mut self, qs: BTreeSet<String>) {
        self.allowed = Some(match self.allowed.take() {
            Some(a) => a.intersection(&qs).cloned().collect(),
            None => qs,
        });
    }

    fn narrow_by<'a>(&mut self, preds: impl IntoIterator<Item = &'a Expr>, column: &Column) {
        for p in preds {
            if let Some(qs) = literal_quarters(p, column) {
                self.narrow(qs);
            }
        }
    }

    /// The single quarter every row has, if the filters pin it.
    fn pinned(&self) -> Option<&String> {
        let a = self.allowed.as_ref()?;
        (a.len() == 1).then(|| a.first()).flatten()
    }
}

/// The position of `column` in `schema`; `None` when it is not there, or
/// when it is unqualified and more than one field has its name.
fn position(schema: &DFSchema, column: &Column) -> Option<usize> {
    if column.relation.is_none()
        && schema
            .fields()
            .iter()
            .filter(|f| f.name() == &column.name)
            .count()
            > 1
    {
        return None;
    }
    schema.maybe_index_of_column(column)
}

/// Follows `column` of `plan`'s output down through filters, aliases,
/// projections that pass it on (or set it to a literal), aggregates grouped
/// by it and joins to the side it comes from when that side's rows all
/// reach the output (after an aggregate or a join no table is named: the
/// rows are no longer one table's), collecting the literal quarters the
/// filters on it allow.
fn follow_quarter(plan: &LogicalPlan, column: &Column) -> QuarterChain {
    let mut chain = QuarterChain::default();
    let mut column = column.clone();
    let mut one_table = true;
    let mut node = plan;
    loop {
        match node {
            LogicalPlan::Filter(f) => {
                chain.narrow_by(split_conjunction(&f.predicate), &column);
                node = &f.input;
            }
            LogicalPlan::SubqueryAlias(a) => {
                let Some(i) = position(&a.schema, &column) else {
                    return chain;
                };
                column = Column::from(a.input.schema().qualified_field(i));
                node = &a.input;
            }
            LogicalPlan::Projection(p) => {
                let Some(i) = position(&p.schema, &column) else {
                    return chain;
                };
                match p.expr[i].clone().unalias() {
                    Expr::Column(c) => column = c,
                    Expr::Literal(ScalarValue::Utf8(Some(q)), _) => {
                        chain.narrow(BTreeSet::from([q]));
                        return chain;
                    }
                    _ => return chain,
                }
                node = &p.input;
            }
            LogicalPlan::Aggregate(a) => {
                let key = position(&a.schema, &column).and_then(|i| a.group_expr.get(i));
                let Some(Expr::Column(c)) = key else {
                    return chain;
                };
                column = c.clone();
                one_table = false;
                node = &a.input;
            }
            LogicalPlan::Join(j) => {
                // Only a side none of whose output rows is null-extended.
                let (left, right) = match j.join_type {
                    JoinType::Inner => (true, true),
                    JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti => (true, false),
                    JoinType::Right | JoinType::RightSemi | JoinType::RightAnti => (false, true),
                    _ => return chain,
                };
                let side = if left && position(j.left.schema(), &column).is_some() {
                    &j.left
                } else if right && position(j.right.schema(), &column).is_some() {
                    &j.right
                } else {
                    return chain;
                };
                one_table = false;
                node = side;
            }
            LogicalPlan::TableScan(s) => {
                chain.narrow_by(s.filters.iter().flat_map(split_conjunction), &column);
                if one_table
                    && s.fetch.is_none()
                    && column.name == PARTITION_COLUMN
                    && position(&s.projected_schema, &column).is_some()
                {
                    chain.table = Some(s.table_name.to_string());
                }
                return chain;
            }
            _ => return chain,
        }
    }
}

/// The quarters `e` allows `column` when it is `column = 'q'`,
/// `column IN ('q', …)` or a disjunction of those (the optimizer turns
/// short `IN` lists into one).
fn literal_quarters(e: &Expr, column: &Column) -> Option<BTreeSet<String>> {
    let is_it = |e: &Expr| matches!(e, Expr::Column(c) if c == column);
    let text = |e: &Expr| match e {
        Expr::Literal(ScalarValue::Utf8(Some(s)), _) => Some(s.clone()),
        _ => None,
    };
    match e {
        Expr::BinaryExpr(b) if b.op == Operator::Or => {
            let mut l = literal_quarters(&b.left, column)?;
            l.extend(literal_quarters(&b.right, column)?);
            Some(l)
        }
        Expr::BinaryExpr(b) if b.op == Operator::Eq => {
            if is_it(&b.left) {
                text(&b.right).map(|s| BTreeSet::from([s]))
            } else if is_it(&b.right) {
                text(&b.left).map(|s| BTreeSet::from([s]))
            } else {
                None
            }
        }
        Expr::InList(l) if !l.negated && is_it(&l.expr) => {
            l.list.iter().map(text).collect::<Option<BTreeSet<_>>>()
        }
        _ => None,
    }
}

/// The optimizer rule; see the module documentation.
#[derive(Debug)]
pub struct SplitByQuarter {
    /// Quarters of each table, by its name as a scan names it (`bank_loans`).
    quarters: HashMap<String, Vec<String>>,
}

impl SplitByQuarter {
    /// A rule for tables with these quarters (table name → partition values).
    pub fn new(quarters: HashMap<String, Vec<String>>) -> SplitByQuarter {
        SplitByQuarter { quarters }
    }

    /// The split plan, or `None` when `agg` is not one this rule handles.
    fn split(&self, agg: &Aggregate) -> Option<LogicalPlan> {
        if agg
            .group_expr
            .iter()
            .any(|e| matches!(e, Expr::GroupingSet(_)))
        {
            return None;
        }
        // Grouping keys come first in the aggregate's schema.
        let key = agg.group_expr.iter().position(is_quarter)?;
        let Expr::Column(quarter_col) = &agg.group_expr[key] else {
            return None;
        };
        let (qualifier, _) = agg.schema.qualified_field(key);
        let chain = follow_quarter(&agg.input, quarter_col);
        // Over one table: a branch per quarter it holds (that the filters
        // allow), each reading that partition. Over anything else whose
        // rows all have one quarter (set to a literal, or pinned by the
        // filters: an aggregate over a quarter's aggregate), that quarter
        // alone, the input as it is.
        let quarters: Vec<&String> = match &chain.table {
            Some(table) => self
                .quarters
                .get(table)?
                .iter()
                .filter(|q| chain.allowed.as_ref().is_none_or(|l| l.contains(*q)))
                .collect(),
            None => vec![chain.pinned()?],
        };
        let filter = chain.table.is_some();
        if quarters.is_empty() || quarters.len() > MAX_BRANCHES {
            return None;
        }
        let branches = quarters
            .into_iter()
            .map(|q| branch(agg, quarter_col, qualifier, q, filter).map(Arc::new))
            .collect::<Result<Vec<_>>>()
            .inspect_err(|e| tracing::debug!(error = %e, "not splitting an aggregate by quarter"))
            .ok()?;
        let union = match <[_; 1]>::try_from(branches) {
            Ok([one]) => one,
            Err(branches) => Arc::new(LogicalPlan::Union(Union::try_new(branches).ok()?)),
        };
        // The union's columns, named as the aggregate named them.
        let exprs = union
            .schema()
            .columns()
            .into_iter()
            .zip(agg.schema.iter())
            .map(|(c, (qualifier, field))| {
                Expr::Column(c).alias_qualified(qualifier.cloned(), field.name())
            })
            .collect();
        let plan = LogicalPlan::Projection(Projection::try_new(exprs, union).ok()?);
        plan.schema()
            .has_equivalent_names_and_types(&agg.schema)
            .is_ok()
            .then_some(plan)
    }
}

/// The aggregate over quarter `q` alone: the quarter is a constant in every
/// expression, the columns come out in the aggregate's order (the quarter
/// itself as a literal), and with `filter` its scan reads that partition.
fn branch(
    agg: &Aggregate,
    quarter_col: &Column,
    qualifier: Option<&TableReference>,
    q: &str,
    filter: bool,
) -> Result<LogicalPlan> {
    let constant = |e: &Expr, name: String| -> Result<Expr> {
        let e = e.clone().transform(|x| match x {
            Expr::Column(c) if &c == quarter_col => Ok(Transformed::yes(lit(q))),
            other => Ok(Transformed::no(other)),
        })?;
        Ok(e.data.alias(name))
    };
    let name = |i: usize| format!("__ironlake_c{i}");
    let mut group = Vec::new();
    let mut outputs = Vec::new();
    for (i, e) in agg.group_expr.iter().enumerate() {
        if matches!(e, Expr::Column(c) if c == quarter_col) {
            outputs.push(lit(q).alias_qualified(qualifier.cloned(), PARTITION_COLUMN));
        } else {
            group.push(constant(e, name(i))?);
            outputs.push(col(Column::from_name(name(i))));
        }
    }
    let mut aggr = Vec::new();
    for (j, e) in agg.aggr_expr.iter().enumerate() {
        let i = agg.group_expr.len() + j;
        aggr.push(constant(e, name(i))?);
        outputs.push(col(Column::from_name(name(i))));
    }
    // Without grouping keys an aggregate answers one row even for an empty
    // quarter; the original answers none for it.
    let ungrouped = group.is_empty();
    if ungrouped {
        aggr.push(
            Expr::AggregateFunction(AggregateFunction::new_udf(
                datafusion::functions_aggregate::count::count_udaf(),
                vec![lit(1i64)],
                false,
                None,
                vec![],
                None,
            ))
            .alias(ROWS),
        );
    }
    let input = if filter {
        with_quarter_filter(&agg.input, q)?
    } else {
        agg.input.as_ref().clone()
    };
    let mut plan = LogicalPlan::Aggregate(Aggregate::try_new(Arc::new(input), group, aggr)?);
    if ungrouped {
        plan = LogicalPlan::Filter(Filter::try_new(col(ROWS).gt(lit(0i64)), Arc::new(plan))?);
    }
    Ok(LogicalPlan::Projection(Projection::try_new(
        outputs,
        Arc::new(plan),
    )?))
}

/// `plan` (a chain [`follow_quarter`] followed to one table scan) with a
/// filter `quarter = 'q'` right above the scan (the next optimizer pass
/// pushes it into the scan, which then lists only that partition).
fn with_quarter_filter(plan: &LogicalPlan, q: &str) -> Result<LogicalPlan> {
    let out = plan.clone().transform_up(|node| match node {
        LogicalPlan::TableScan(s) => {
            let column = Column::new(Some(s.table_name.clone()), PARTITION_COLUMN);
            let predicate = Expr::Column(column).eq(lit(q));
            let scan = Arc::new(LogicalPlan::TableScan(s));
            Ok(Transformed::yes(LogicalPlan::Filter(Filter::try_new(
                predicate, scan,
            )?)))
        }
        other => Ok(Transformed::no(other)),
    })?;
    Ok(out.data)
}

impl OptimizerRule for SplitByQuarter {
    fn name(&self) -> &str {
        "ironlake_split_by_quarter"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Aggregate(agg) = &plan else {
            return Ok(Transformed::no(plan));
        };
        match self.split(agg) {
            Some(p) => Ok(Transformed::yes(p)),
            None => Ok(Transformed::no(plan)),
        }
    }
}

/// The optimizer rule that drops `a.quarter = b.quarter` from a join's keys
/// when both sides hold one and the same quarter (their filters name it):
/// the condition is then true for every pair of rows, and hashing the
/// partition column on both sides costs more than the rest of the join.
/// When only one side is pinned to a quarter, `other.quarter = 'q'` is
/// implied by the join's condition, and where DataFusion would push such an
/// ON-clause predicate into the other side ([`JoinType::on_lr_is_preserved`])
/// the other side is first filtered to that quarter: its other rows could
/// match nothing, and its scan then reads one partition.
#[derive(Debug, Default)]
pub struct SameQuarterJoin;

impl OptimizerRule for SameQuarterJoin {
    fn name(&self) -> &str {
        "ironlake_same_quarter_join"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Join(mut join) = plan else {
            return Ok(Transformed::no(plan));
        };
        if join.on.len() < 2 || join.null_equality != NullEquality::NullEqualsNothing {
            return Ok(Transformed::no(LogicalPlan::Join(join)));
        }
        // Which side may be filtered to the other's quarter.
        let (filter_left, filter_right) = join.join_type.on_lr_is_preserved();
        for (i, (l, r)) in join.on.iter().enumerate() {
            let (Expr::Column(l), Expr::Column(r)) = (l, r) else {
                continue;
            };
            if l.name != PARTITION_COLUMN || r.name != PARTITION_COLUMN {
                continue;
            }
            let left = follow_quarter(&join.left, l);
            let right = follow_quarter(&join.right, r);
            let (side, column, q) = match (left.pinned(), right.pinned()) {
                (Some(a), Some(b)) if a == b => {
                    join.on.remove(i);
                    return Ok(Transformed::yes(LogicalPlan::Join(join)));
                }
                (Some(q), None) if filter_right => (&mut join.right, r, q),
                (None, Some(q)) if filter_left => (&mut join.left, l, q),
                _ => continue,
            };
            // The quarters compared are text literals: so must the column be.
            let text = side
                .schema()
                .qualified_field_from_column(column)
                .is_ok_and(|(_, f)| f.data_type() == &DataType::Utf8);
            if !text {
                continue;
            }
            let predicate = Expr::Column(column.clone()).eq(lit(q.clone()));
            *side = Arc::new(LogicalPlan::Filter(Filter::try_new(
                predicate,
                side.clone(),
            )?));
            join.on.remove(i);
            return Ok(Transformed::yes(LogicalPlan::Join(join)));
        }
        Ok(Transformed::no(LogicalPlan::Join(join)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Decimal128Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    /// Loans of three quarters, the quarters mixed within batches.
    fn session(split: bool) -> SessionContext {
        let schema = Arc::new(Schema::new(vec![
            Field::new("guarantee", DataType::Utf8, true),
            Field::new("balance", DataType::Decimal128(18, 2), true),
            Field::new(PARTITION_COLUMN, DataType::Utf8, false),
        ]));
        let batch = |q: &[&str], g: &[Option<&str>], b: &[Option<i128>]| {
            let cols: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from(g.to_vec())),
                Arc::new(
                    Decimal128Array::from(b.to_vec())
                        .with_precision_and_scale(18, 2)
                        .unwrap(),
                ),
                Arc::new(StringArray::from(q.to_vec())),
            ];
            RecordBatch::try_new(schema.clone(), cols).unwrap()
        };
        let b1 = batch(
            &["2019Q1", "2019Q2", "2019Q1", "2019Q3"],
            &[Some("credit"), Some("credit"), Some("mortgage"), None],
            &[Some(100), Some(250), Some(-5), None],
        );
        let b2 = batch(
            &["2019Q2", "2019Q1", "2019Q2"],
            &[Some("mortgage"), Some("credit"), Some("credit")],
            &[Some(7), Some(1), None],
        );
        let table = MemTable::try_new(schema.clone(), vec![vec![b1], vec![b2]]).unwrap();
        let ctx = SessionContext::new();
        ctx.register_table("loans", Arc::new(table)).unwrap();
        if split {
            // 2019Q4 has no rows: its branch must add none.
            let quarters = ["2019Q1", "2019Q2", "2019Q3", "2019Q4"].map(String::from);
            ctx.add_optimizer_rule(Arc::new(SplitByQuarter::new(HashMap::from([(
                "loans".to_string(),
                quarters.to_vec(),
            )]))));
        }
        ctx
    }

    async fn run(ctx: &SessionContext, sql: &str) -> String {
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string()
    }

    async fn plan(ctx: &SessionContext, sql: &str) -> String {
        let df = ctx.sql(sql).await.unwrap();
        format!("{}", df.into_optimized_plan().unwrap().display_indent())
    }

    #[tokio::test]
    async fn grouping_by_quarter_runs_a_quarter_at_a_time_with_the_same_rows() {
        let split = session(true);
        let plain = session(false);
        let q1 = "SELECT quarter, count(*) AS loans, sum(balance) AS balance FROM loans GROUP BY quarter ORDER BY quarter";
        assert_eq!(
            run(&split, q1).await,
            [
                "+---------+-------+---------+",
                "| quarter | loans | balance |",
                "+---------+-------+---------+",
                "| 2019Q1  | 3     | 0.96    |",
                "| 2019Q2  | 3     | 2.57    |",
                "| 2019Q3  | 1     |         |",
                "+---------+-------+---------+",
            ]
            .join("\n")
        );
        let p = plan(&split, q1).await;
        assert!(p.contains("Union"), "not split:\n{p}");
        assert!(!plan(&plain, q1).await.contains("Union"));
        for sql in [
            q1,
            "SELECT quarter, guarantee, count(*), sum(balance) FROM loans GROUP BY quarter, guarantee ORDER BY 1, 2",
            "SELECT guarantee, l.quarter, max(balance) FROM loans l WHERE quarter IN ('2019Q2', '2019Q3', '2020Q1') GROUP BY l.quarter, guarantee ORDER BY 2, 1",
            "SELECT DISTINCT quarter FROM loans ORDER BY 1",
            "SELECT count(DISTINCT guarantee) AS kinds, quarter FROM loans GROUP BY quarter HAVING count(*) > 1 ORDER BY quarter",
            "SELECT quarter, substr(quarter, 1, 4) AS y, count(*) FROM loans GROUP BY quarter, substr(quarter, 1, 4) ORDER BY 1",
            "SELECT quarter, count(*) FROM loans WHERE quarter = '2019Q4' GROUP BY quarter",
            "SELECT quarter, guarantee, sum(balance) FROM loans GROUP BY GROUPING SETS ((quarter, guarantee), (quarter)) ORDER BY 1, 2",
        ] {
            assert_eq!(run(&split, sql).await, run(&plain, sql).await, "{sql}");
        }
        // Only literal quarters of the filters get a branch.
        let narrowed = plan(
            &split,
            "SELECT quarter, count(*) FROM loans WHERE quarter IN ('2019Q1', '2019Q2') GROUP BY quarter",
        )
        .await;
        assert!(
            narrowed.contains("2019Q2") && !narrowed.contains("2019Q3"),
            "{narrowed}"
        );
    }

    #[tokio::test]
    async fn a_quarter_every_row_has_is_no_grouping_key() {
        let split = session(true);
        let plain = session(false);
        // An aggregate over one quarter's aggregate, and over a literal quarter.
        let nested = "SELECT quarter, n, count(*) AS kinds FROM (SELECT quarter, guarantee, count(*) AS n FROM loans WHERE quarter = '2019Q2' GROUP BY quarter, guarantee) t GROUP BY quarter, n ORDER BY n";
        let literal = "SELECT quarter, count(*) AS loans FROM (SELECT '2019Q3' AS quarter, guarantee FROM loans) t GROUP BY quarter";
        let empty = "SELECT quarter, count(*) AS kinds FROM (SELECT quarter, guarantee FROM loans WHERE quarter = '2019Q4' GROUP BY quarter, guarantee) t GROUP BY quarter";
        assert_eq!(
            run(&split, nested).await,
            [
                "+---------+---+-------+",
                "| quarter | n | kinds |",
                "+---------+---+-------+",
                "| 2019Q2  | 1 | 1     |",
                "| 2019Q2  | 2 | 1     |",
                "+---------+---+-------+",
            ]
            .join("\n")
        );
        for sql in [nested, literal, empty] {
            assert_eq!(run(&split, sql).await, run(&plain, sql).await, "{sql}");
            // No aggregate groups by a quarter any more.
            let p = plan(&split, sql).await;
            let keys: Vec<&str> = p
                .lines()
                .filter_map(|l| l.trim().strip_prefix("Aggregate: groupBy=["))
                .collect();
            assert!(!keys.is_empty(), "{p}");
            assert!(keys.iter().all(|k| !k.contains("quarter")), "{sql}:\n{p}");
            let k = plan(&plain, sql).await;
            assert!(k.contains("groupBy=[[t.quarter"), "{k}");
        }
    }

    #[tokio::test]
    async fn joins_within_one_quarter_do_not_compare_the_quarter() {
        let split = session(true);
        split.add_optimizer_rule(Arc::new(SameQuarterJoin));
        let plain = session(false);
        let one = "SELECT a.guarantee, count(*), sum(b.balance) FROM loans a JOIN loans b ON a.guarantee = b.guarantee AND a.quarter = b.quarter WHERE a.quarter = '2019Q2' GROUP BY 1 ORDER BY 1";
        let two = "SELECT a.guarantee, count(*), sum(b.balance) FROM loans a JOIN loans b ON a.guarantee = b.guarantee AND a.quarter = b.quarter WHERE a.quarter IN ('2019Q1', '2019Q2') GROUP BY 1 ORDER BY 1";
        let left = "SELECT a.quarter, a.guarantee, b.n FROM loans a LEFT JOIN (SELECT quarter, guarantee, count(*) AS n FROM loans WHERE quarter = '2019Q1' GROUP BY quarter, guarantee) b ON b.quarter = a.quarter AND b.guarantee = a.guarantee WHERE a.quarter = '2019Q1' ORDER BY 1, 2, 3";
        assert_eq!(
            run(&split, one).await,
            [
                "+-----------+----------+----------------+",
                "| guarantee | count(*) | sum(b.balance) |",
                "+-----------+----------+----------------+",
                "| credit    | 4        | 5.00           |",
                "| mortgage  | 1        | 0.07           |",
                "+-----------+----------+----------------+",
            ]
            .join("\n")
        );
        let keys = |p: String| {
            p.lines()
                .filter(|l| l.contains("Join"))
                .map(str::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        };
        // One side pinned (through a join): the other is filtered to its
        // quarter, unless its rows appear without a match.
        let pinned = "SELECT a.quarter, a.guarantee, count(b.balance) FROM (SELECT x.* FROM loans x JOIN loans y ON y.balance = x.balance WHERE x.quarter = '2019Q2') a LEFT JOIN loans b ON b.quarter = a.quarter AND b.guarantee = a.guarantee GROUP BY 1, 2 ORDER BY 1, 2";
        let kept = "SELECT a.quarter, a.guarantee, count(b.balance) FROM loans a LEFT JOIN (SELECT * FROM loans WHERE quarter = '2019Q2') b ON b.quarter = a.quarter AND b.guarantee = a.guarantee GROUP BY 1, 2 ORDER BY 1, 2";
        for sql in [one, two, left, pinned, kept] {
            assert_eq!(run(&split, sql).await, run(&plain, sql).await, "{sql}");
        }
        assert_eq!(
            run(&split, pinned).await,
            [
                "+---------+-----------+------------------+",
                "| quarter | guarantee | count(b.balance) |",
                "+---------+-----------+------------------+",
                "| 2019Q2  | credit    | 1                |",
                "| 2019Q2  | mortgage  | 1                |",
                "+---------+-----------+------------------+",
            ]
            .join("\n")
        );
        let p = plan(&split, pinned).await;
        assert!(!keys(p.clone()).contains("quarter"), "{p}");
        // Both sides' scans read the quarter alone.
        assert_eq!(
            p.matches("Filter: loans.quarter = Utf8(\"2019Q2\")")
                .count(),
            2,
            "{p}"
        );
        let p = keys(plan(&split, kept).await);
        assert!(p.contains("a.quarter = b.quarter"), "{p}");
        // Semi and anti joins (correlated subqueries): the subquery's side
        // is filtered to the outer side's quarter and the key dropped.
        let semi = "SELECT guarantee, balance FROM loans a WHERE quarter = '2019Q2' AND EXISTS (SELECT 1 FROM loans b WHERE b.quarter = a.quarter AND b.guarantee = a.guarantee AND b.balance IS DISTINCT FROM a.balance) ORDER BY 1, 2";
        let anti = "SELECT guarantee, balance FROM loans a WHERE quarter = '2019Q2' AND NOT EXISTS (SELECT 1 FROM loans b WHERE b.quarter = a.quarter AND b.guarantee = a.guarantee AND b.balance IS DISTINCT FROM a.balance) ORDER BY 1, 2";
        for sql in [semi, anti] {
            assert_eq!(run(&split, sql).await, run(&plain, sql).await, "{sql}");
            let p = plan(&split, sql).await;
            assert!(!keys(p.clone()).contains("quarter"), "{sql}:\n{p}");
        }
        // Another loan of the same kind in the same quarter: the two
        // credit loans of 2019Q2 have one, its one mortgage has none.
        assert_eq!(run(&split, semi).await.matches("credit").count(), 2);
        assert!(!run(&split, semi).await.contains("mortgage"));
        assert!(run(&split, anti).await.contains("mortgage"));
        assert!(!run(&split, anti).await.contains("credit"));
        let p = keys(plan(&split, one).await);
        assert!(
            p.contains("a.guarantee = b.guarantee") && !p.contains("quarter"),
            "{p}"
        );
        let p = keys(plan(&split, two).await);
        assert!(p.contains("a.quarter = b.quarter"), "{p}");
        let p = keys(plan(&split, left).await);
        assert!(!p.contains("quarter"), "{p}");
    }
}
