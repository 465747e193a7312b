//! `count(*)` counted on a column the aggregate reads anyway.
//!
//! DataFusion plans `count(*)` as `count(1)`, and an aggregate evaluates
//! the `1` into an array as long as each batch, then counts its values: in
//! `SELECT quarter, count(*), sum(balance) … GROUP BY quarter` over 10M
//! loans that array is about 5% of the work. The count of a column that
//! holds no nulls is the same number, taken from the array's length, so
//! [`CountOnColumn`] counts such a column instead when another aggregate
//! or a grouping key reads it already (`balance` here: warehouse columns
//! are not nullable unless their schema says so), other than `quarter`.
//! The output keeps its name.

use crate::config::schema::PARTITION_COLUMN;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, DFSchema};
use datafusion::error::Result;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

/// Whether `e` is `count(*)` (as the planner writes it, `count(1)`): not
/// distinct, unfiltered, of a non-null literal, or of a column of `input`
/// that holds no nulls (as this rule writes it).
pub fn counts_rows(e: &Expr, input: &DFSchema) -> bool {
    let Expr::AggregateFunction(f) = e.clone().unalias() else {
        return false;
    };
    f.func.name() == "count"
        && !f.params.distinct
        && f.params.filter.is_none()
        && match f.params.args.as_slice() {
            [Expr::Literal(v, _)] => !v.is_null(),
            [Expr::Column(c)] => not_null(input, c),
            _ => false,
        }
}

fn not_null(schema: &DFSchema, c: &Column) -> bool {
    schema
        .qualified_field_from_column(c)
        .is_ok_and(|(_, f)| !f.is_nullable())
}

/// The optimizer rule; see the module documentation.
#[derive(Debug, Default)]
pub struct CountOnColumn;

impl OptimizerRule for CountOnColumn {
    fn name(&self) -> &str {
        "ironlake_count_on_column"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Aggregate(agg) = &plan else {
            return Ok(Transformed::no(plan));
        };
        let input = agg.input.schema();
        // A column without nulls that another aggregate or a key reads;
        // not `quarter`, which a scan builds for each row only when asked
        // (and which a split by quarter turns into a literal).
        let read = agg
            .aggr_expr
            .iter()
            .chain(&agg.group_expr)
            .flat_map(|e| e.column_refs())
            .find(|c| c.name != PARTITION_COLUMN && not_null(input, c))
            .cloned();
        let Some(column) = read else {
            return Ok(Transformed::no(plan));
        };
        let mut changed = false;
        let mut aggr_expr = Vec::with_capacity(agg.aggr_expr.len());
        for e in &agg.aggr_expr {
            let f = match e.clone().unalias() {
                Expr::AggregateFunction(f)
                    if matches!(f.params.args.as_slice(), [Expr::Literal(..)])
                        && counts_rows(e, input) =>
                {
                    f
                }
                _ => {
                    aggr_expr.push(e.clone());
                    continue;
                }
            };
            let count = Expr::AggregateFunction(AggregateFunction::new_udf(
                f.func,
                vec![Expr::Column(column.clone())],
                false,
                None,
                vec![],
                f.params.null_treatment,
            ));
            let (qualifier, name) = e.qualified_name();
            aggr_expr.push(count.alias_qualified(qualifier, name));
            changed = true;
        }
        if !changed {
            return Ok(Transformed::no(plan));
        }
        let rewritten = Aggregate::try_new(agg.input.clone(), agg.group_expr.clone(), aggr_expr)?;
        // The schema must not change (names and types of every output).
        if rewritten
            .schema
            .has_equivalent_names_and_types(&agg.schema)
            .is_err()
        {
            return Ok(Transformed::no(plan));
        }
        Ok(Transformed::yes(LogicalPlan::Aggregate(rewritten)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;
    use std::sync::Arc;

    /// `t(k, v NOT NULL, n, quarter NOT NULL)` with the rule or without.
    fn session(rule: bool) -> SessionContext {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Int64, false),
            Field::new("n", DataType::Int64, true),
            Field::new(PARTITION_COLUMN, DataType::Utf8, false),
        ]));
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![
                Some("a"),
                Some("b"),
                Some("a"),
                None,
            ])),
            Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
            Arc::new(Int64Array::from(vec![Some(1), None, None, Some(7)])),
            Arc::new(StringArray::from(vec![
                "2019Q1", "2019Q1", "2019Q2", "2019Q2",
            ])),
        ];
        let batch = RecordBatch::try_new(schema.clone(), cols).unwrap();
        let ctx = SessionContext::new();
        let table = MemTable::try_new(schema, vec![vec![batch]]).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        if rule {
            ctx.add_optimizer_rule(Arc::new(CountOnColumn));
        }
        ctx
    }

    async fn run(ctx: &SessionContext, sql: &str) -> (String, String) {
        let df = ctx.sql(sql).await.unwrap();
        let plan = df.clone().into_optimized_plan().unwrap();
        let out = arrow::util::pretty::pretty_format_batches(&df.collect().await.unwrap())
            .unwrap()
            .to_string();
        (out, plan.display_indent().to_string())
    }

    #[tokio::test]
    async fn counts_rows_on_a_column_without_nulls_that_is_read_anyway() {
        let with = session(true);
        let without = session(false);
        let counted = "SELECT k, count(*), sum(v) AS s FROM t GROUP BY k ORDER BY k";
        let (out, plan) = run(&with, counted).await;
        assert_eq!(out, run(&without, counted).await.0);
        assert!(out.contains("| count(*) |"), "{out}");
        assert!(plan.contains("count(t.v) AS count(Int64(1))"), "{plan}");
        // A nullable column is not counted instead, nor a column read for
        // nothing else, nor a distinct or filtered count.
        for sql in [
            "SELECT k, count(*) AS c, sum(n) FROM t GROUP BY k ORDER BY k",
            "SELECT count(*) FROM t",
            "SELECT quarter, count(*) FROM t GROUP BY quarter ORDER BY 1",
            "SELECT k, count(*) FILTER (WHERE v > 1), max(v) FROM t GROUP BY k ORDER BY k",
        ] {
            let (out, plan) = run(&with, sql).await;
            assert_eq!(out, run(&without, sql).await.0, "{sql}");
            assert!(plan.contains("count(Int64(1))"), "{sql}:\n{plan}");
        }
        // Counted on the key when the key holds no nulls.
        let keyed = "SELECT v, count(*) FROM t GROUP BY v ORDER BY v";
        let (out, plan) = run(&with, keyed).await;
        assert_eq!(out, run(&without, keyed).await.0);
        assert!(plan.contains("count(t.v) AS count(Int64(1))"), "{plan}");
    }
}
