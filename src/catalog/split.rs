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
//!
//! The split is applied once the optimizer is done, by [`SplitPlanner`]
//! before physical planning: as an optimizer rule, its sixteen branches
//! went through every rule of the next two passes, about 3 ms of the 12 ms
//! that planning `GROUP BY quarter` over 16 quarters took. The branches
//! come out in their optimized form (the quarter filter in the scan, the
//! emptiness check only where rows can be filtered out), and two rules
//! tidy them: constants folded, the quarter dropped from their scans.

use arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema, JoinType, NullEquality, ScalarValue, TableReference};
use datafusion::config::ConfigOptions;
use datafusion::error::Result;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    Aggregate, EmptyRelation, Expr, Filter, LogicalPlan, Operator, Projection,
    TableProviderFilterPushDown, Union, col, lit,
};
use datafusion::optimizer::optimize_projections::OptimizeProjections;
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::simplify_expressions::SimplifyExpressions;
use datafusion::optimizer::{Optimizer, OptimizerConfig, OptimizerContext, OptimizerRule};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::count::counts_rows;
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
    /// Whether a filter of the chain tests anything but literal quarters
    /// (then a quarter's rows may all be filtered out).
    narrowed: bool,
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
            match literal_quarters(p, column) {
                Some(qs) => self.narrow(qs),
                None => self.narrowed = true,
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

/// The rewrite; see the module documentation.
#[derive(Debug)]
pub struct SplitByQuarter {
    /// Quarters of each table, by its name as a scan names it (`bank_loans`).
    quarters: HashMap<String, Vec<String>>,
}

impl SplitByQuarter {
    /// A rewrite for tables with these quarters (table name → partition
    /// values), each of which holds at least one row: an aggregate without
    /// other keys over a quarter's unfiltered rows then answers that
    /// quarter's row without a check that it has any.
    pub fn new(quarters: HashMap<String, Vec<String>>) -> SplitByQuarter {
        SplitByQuarter { quarters }
    }

    /// `plan`, an optimized plan, with every aggregate this rewrite handles
    /// split (outermost first), then its expressions simplified and the
    /// columns no longer used dropped from its scans.
    pub fn apply(&self, plan: LogicalPlan, options: &ConfigOptions) -> Result<LogicalPlan> {
        let split = plan.transform_down(|node| {
            let LogicalPlan::Aggregate(agg) = &node else {
                return Ok(Transformed::no(node));
            };
            Ok(match self.split(agg) {
                Some(p) => Transformed::yes(p),
                None => Transformed::no(node),
            })
        })?;
        if !split.transformed {
            return Ok(split.data);
        }
        let tidy = Optimizer::with_rules(vec![
            Arc::new(SimplifyExpressions::new()),
            Arc::new(OptimizeProjections::new()),
        ]);
        let config =
            OptimizerContext::new_with_config_options(Arc::new(options.clone())).with_max_passes(1);
        tidy.optimize(split.data, &config, |_, _| {})
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
        // Whether a quarter's rows may not all reach the aggregate.
        let narrowed = chain.table.is_none() || chain.narrowed;
        if quarters.is_empty() {
            // Grouped by the quarter of rows of no quarter the table holds.
            return Some(LogicalPlan::EmptyRelation(EmptyRelation {
                produce_one_row: false,
                schema: agg.schema.clone(),
            }));
        }
        if quarters.len() > MAX_BRANCHES {
            return None;
        }
        let branches = quarters
            .into_iter()
            .map(|q| branch(agg, quarter_col, qualifier, q, filter, narrowed).map(Arc::new))
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
/// With `narrowed` (the quarter's rows may all be filtered out), an
/// aggregate without other keys answers a row only when it counted any.
fn branch(
    agg: &Aggregate,
    quarter_col: &Column,
    qualifier: Option<&TableReference>,
    q: &str,
    filter: bool,
    narrowed: bool,
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
    // quarter; the original answers none for it. The row count is the
    // query's own `count(*)` when it has one.
    let check = (group.is_empty() && narrowed).then(|| {
        match agg
            .aggr_expr
            .iter()
            .position(|e| counts_rows(e, agg.input.schema()))
        {
            Some(j) => col(Column::from_name(name(agg.group_expr.len() + j))),
            None => {
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
                col(ROWS)
            }
        }
    });
    let input = if filter {
        with_quarter_filter(&agg.input, q)?
    } else {
        agg.input.as_ref().clone()
    };
    let mut plan = LogicalPlan::Aggregate(Aggregate::try_new(Arc::new(input), group, aggr)?);
    if let Some(rows) = check {
        plan = LogicalPlan::Filter(Filter::try_new(rows.gt(lit(0i64)), Arc::new(plan))?);
    }
    Ok(LogicalPlan::Projection(Projection::try_new(
        outputs,
        Arc::new(plan),
    )?))
}

/// `plan` (a chain [`follow_quarter`] followed to one table scan) with the
/// filter `quarter = 'q'` where the optimizer would have put it: in the
/// scan (which then lists only that partition) when the table applies it
/// there exactly, else also (or only) right above it.
fn with_quarter_filter(plan: &LogicalPlan, q: &str) -> Result<LogicalPlan> {
    let out = plan.clone().transform_up(|node| match node {
        LogicalPlan::TableScan(mut s) => {
            let column = Column::new(Some(s.table_name.clone()), PARTITION_COLUMN);
            let predicate = Expr::Column(column).eq(lit(q));
            let pushed = s.source.supports_filters_pushdown(&[&predicate])?;
            let exact = matches!(pushed.first(), Some(TableProviderFilterPushDown::Exact));
            if exact || matches!(pushed.first(), Some(TableProviderFilterPushDown::Inexact)) {
                s.filters.push(predicate.clone());
            }
            let scan = LogicalPlan::TableScan(s);
            Ok(Transformed::yes(if exact {
                scan
            } else {
                LogicalPlan::Filter(Filter::try_new(predicate, Arc::new(scan))?)
            }))
        }
        other => Ok(Transformed::no(other)),
    })?;
    Ok(out.data)
}

/// The physical planner of warehouse sessions: DataFusion's, after
/// [`SplitByQuarter::apply`] (see the module documentation).
#[derive(Debug)]
pub struct SplitPlanner {
    split: SplitByQuarter,
}

impl SplitPlanner {
    /// A planner splitting aggregates with `split`.
    pub fn new(split: SplitByQuarter) -> SplitPlanner {
        SplitPlanner { split }
    }
}

#[async_trait::async_trait]
impl QueryPlanner for SplitPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn datafusion::catalog::Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = self
            .split
            .apply(logical_plan.clone(), session.config_options())?;
        DefaultPhysicalPlanner::default()
            .create_physical_plan(&plan, session)
            .await
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
    use datafusion::execution::SessionStateBuilder;
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
        let mut state = SessionStateBuilder::new().with_default_features();
        if split {
            state = state.with_query_planner(Arc::new(SplitPlanner::new(rule())));
        }
        let ctx = SessionContext::new_with_state(state.build());
        ctx.register_table("loans", Arc::new(table)).unwrap();
        ctx
    }

    /// The split of the test table's quarters (each has rows).
    fn rule() -> SplitByQuarter {
        let quarters = ["2019Q1", "2019Q2", "2019Q3"].map(String::from);
        SplitByQuarter::new(HashMap::from([("loans".to_string(), quarters.to_vec())]))
    }

    async fn run(ctx: &SessionContext, sql: &str) -> String {
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string()
    }

    /// The plan of `sql` as the physical planner gets it (`split`: after
    /// the split, as a session with [`SplitPlanner`] plans it).
    async fn plan(ctx: &SessionContext, sql: &str, split: bool) -> String {
        let df = ctx.sql(sql).await.unwrap();
        let mut plan = df.into_optimized_plan().unwrap();
        if split {
            plan = rule().apply(plan, ctx.state().config_options()).unwrap();
        }
        format!("{}", plan.display_indent())
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
        let p = plan(&split, q1, true).await;
        assert!(p.contains("Union"), "not split:\n{p}");
        assert!(!plan(&plain, q1, false).await.contains("Union"));
        // Every quarter's rows reach its aggregate: no check that it counted any.
        assert!(!p.contains("> Int64(0)"), "{p}");
        // The session plans with the split.
        let physical = split
            .sql(q1)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let physical = datafusion::physical_plan::displayable(physical.as_ref()).indent(false);
        assert!(physical.to_string().contains("UnionExec"), "{physical}");
        // Rows filtered out: a quarter left without any (2019Q3) answers
        // no row, checked by the query's own count or by one of its own.
        let filtered = [
            "SELECT quarter, count(*) AS n, max(balance) FROM loans WHERE balance > 0.5 GROUP BY quarter ORDER BY 1",
            "SELECT quarter, sum(balance) FROM loans WHERE balance > 0.5 GROUP BY quarter ORDER BY 1",
        ];
        for (sql, rows) in filtered.into_iter().zip([false, true]) {
            let out = run(&split, sql).await;
            assert_eq!(out, run(&plain, sql).await, "{sql}");
            assert!(out.contains("2019Q2") && !out.contains("2019Q3"), "{out}");
            let p = plan(&split, sql, true).await;
            assert!(p.contains("> Int64(0)"), "{p}");
            assert_eq!(p.contains(ROWS), rows, "{p}");
        }
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
        let narrowed = plan(&split, "SELECT quarter, count(*) FROM loans WHERE quarter IN ('2019Q1', '2019Q2') GROUP BY quarter", true)
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
            let p = plan(&split, sql, true).await;
            let keys: Vec<&str> = p
                .lines()
                .filter_map(|l| l.trim().strip_prefix("Aggregate: groupBy=["))
                .collect();
            assert!(!keys.is_empty(), "{p}");
            assert!(keys.iter().all(|k| !k.contains("quarter")), "{sql}:\n{p}");
            let k = plan(&plain, sql, false).await;
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
        let p = plan(&split, pinned, true).await;
        assert!(!keys(p.clone()).contains("quarter"), "{p}");
        // Both sides' scans read the quarter alone.
        assert_eq!(
            p.matches("Filter: loans.quarter = Utf8(\"2019Q2\")")
                .count(),
            2,
            "{p}"
        );
        let p = keys(plan(&split, kept, true).await);
        assert!(p.contains("a.quarter = b.quarter"), "{p}");
        // Semi and anti joins (correlated subqueries): the subquery's side
        // is filtered to the outer side's quarter and the key dropped.
        let semi = "SELECT guarantee, balance FROM loans a WHERE quarter = '2019Q2' AND EXISTS (SELECT 1 FROM loans b WHERE b.quarter = a.quarter AND b.guarantee = a.guarantee AND b.balance IS DISTINCT FROM a.balance) ORDER BY 1, 2";
        let anti = "SELECT guarantee, balance FROM loans a WHERE quarter = '2019Q2' AND NOT EXISTS (SELECT 1 FROM loans b WHERE b.quarter = a.quarter AND b.guarantee = a.guarantee AND b.balance IS DISTINCT FROM a.balance) ORDER BY 1, 2";
        for sql in [semi, anti] {
            assert_eq!(run(&split, sql).await, run(&plain, sql).await, "{sql}");
            let p = plan(&split, sql, true).await;
            assert!(!keys(p.clone()).contains("quarter"), "{sql}:\n{p}");
        }
        // Another loan of the same kind in the same quarter: the two
        // credit loans of 2019Q2 have one, its one mortgage has none.
        assert_eq!(run(&split, semi).await.matches("credit").count(), 2);
        assert!(!run(&split, semi).await.contains("mortgage"));
        assert!(run(&split, anti).await.contains("mortgage"));
        assert!(!run(&split, anti).await.contains("credit"));
        let p = keys(plan(&split, one, true).await);
        assert!(
            p.contains("a.guarantee = b.guarantee") && !p.contains("quarter"),
            "{p}"
        );
        let p = keys(plan(&split, two, true).await);
        assert!(p.contains("a.quarter = b.quarter"), "{p}");
        let p = keys(plan(&split, left, true).await);
        assert!(!p.contains("quarter"), "{p}");
    }
}
