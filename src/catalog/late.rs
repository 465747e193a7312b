//! Rows filtered before the columns they do not test are decoded.
//!
//! `SELECT bank_code, count(*), sum(balance) FROM bank_loans WHERE
//! rate_pct > 6 …` needs `rate_pct` only to choose rows. Without the filter in the
//! Parquet reader, every row's `bank_code` and `balance` are decoded and
//! most of them thrown away by the filter above the scan. [`LateColumns`]
//! hands such a filter to the reader (DataFusion's `pushdown_filters`, for
//! this one scan): it decodes the tested columns, then only the chosen rows
//! of the others.
//!
//! It does so only when the operator above the filter (a projection or an
//! aggregate) uses none of the tested columns. When it does (`sum(disbursed)
//! … WHERE disbursed > 0`), the reader would decode the tested column
//! twice, once to filter and once to return it (the benchmark's Q7 took
//! longer that way, with pushdown on for every scan): the session keeps `pushdown_filters` off for
//! every other scan. The rule runs before DataFusion's own, whose filter
//! pushdown then moves the filter into the scan.

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::datasource::physical_plan::{FileScanConfig, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use std::collections::HashSet;
use std::sync::Arc;

/// The physical optimizer rule; see the module documentation.
#[derive(Debug, Default)]
pub struct LateColumns;

impl PhysicalOptimizerRule for LateColumns {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(used) = used_input_columns(node.as_ref()) else {
                return Ok(Transformed::no(node));
            };
            let Some(filter) = node.children()[0].downcast_ref::<FilterExec>() else {
                return Ok(Transformed::no(node));
            };
            let Some(scan) = late_scan(filter, &used) else {
                return Ok(Transformed::no(node));
            };
            let filter = replace_children_if_necessary(Arc::clone(node.children()[0]), vec![scan])?;
            Ok(Transformed::yes(replace_children_if_necessary(
                node,
                vec![filter],
            )?))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "ironlake_late_columns"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The columns of its (only) input that a projection or a partial
/// aggregate uses; `None` for any other operator.
fn used_input_columns(node: &dyn ExecutionPlan) -> Option<HashSet<usize>> {
    let exprs: Vec<Arc<dyn PhysicalExpr>> = if let Some(p) = node.downcast_ref::<ProjectionExec>() {
        p.expr().iter().map(|e| Arc::clone(&e.expr)).collect()
    } else if let Some(a) = node.downcast_ref::<AggregateExec>() {
        if !matches!(
            a.mode(),
            AggregateMode::Partial | AggregateMode::Single | AggregateMode::SinglePartitioned
        ) {
            return None;
        }
        let group = a.group_expr();
        let mut exprs: Vec<Arc<dyn PhysicalExpr>> = group
            .expr()
            .iter()
            .chain(group.null_expr())
            .map(|(e, _)| Arc::clone(e))
            .collect();
        for f in a.aggr_expr() {
            exprs.extend(f.expressions());
            exprs.extend(f.order_bys().iter().map(|s| Arc::clone(&s.expr)));
        }
        exprs.extend(a.filter_expr().iter().flatten().cloned());
        exprs
    } else {
        return None;
    };
    Some(
        exprs
            .iter()
            .flat_map(collect_columns)
            .map(|c| c.index())
            .collect(),
    )
}

/// `filter`'s Parquet scan reading with the filter, when the columns the
/// filter tests are not among `used` (the columns wanted above it) and
/// some other column is.
fn late_scan(filter: &FilterExec, used: &HashSet<usize>) -> Option<Arc<dyn ExecutionPlan>> {
    if filter.projection().is_some() || used.is_empty() {
        return None;
    }
    let tested: HashSet<usize> = collect_columns(filter.predicate())
        .iter()
        .map(|c| c.index())
        .collect();
    if tested.is_empty() || !tested.is_disjoint(used) {
        return None;
    }
    let scan = filter.input().downcast_ref::<DataSourceExec>()?;
    let (config, parquet): (&FileScanConfig, &ParquetSource) =
        scan.downcast_to_file_source::<ParquetSource>()?;
    if parquet.table_parquet_options().global.pushdown_filters {
        return None;
    }
    let mut config = config.clone();
    config.file_source = Arc::new(parquet.clone().with_pushdown_filters(true));
    Some(Arc::new(DataSourceExec::new(Arc::new(config))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::execution::SessionStateBuilder;
    use datafusion::physical_optimizer::optimizer::PhysicalOptimizer;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};

    /// A session reading `t` (bank, amount, rate over 10,000 rows in
    /// several row groups), with the rule before DataFusion's or without it.
    async fn session(dir: &std::path::Path, with_rule: bool) -> SessionContext {
        let path = dir.join("t.parquet");
        if !path.exists() {
            let schema = Arc::new(Schema::new(vec![
                Field::new("bank", DataType::Utf8, false),
                Field::new("amount", DataType::Int64, true),
                Field::new("rate", DataType::Int64, false),
            ]));
            let n = 10_000i64;
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from_iter_values(
                        (0..n).map(|i| format!("B{}", i % 7)),
                    )),
                    Arc::new(Int64Array::from_iter(
                        (0..n).map(|i| (i % 11 != 0).then_some(i * 3)),
                    )),
                    Arc::new(Int64Array::from_iter_values((0..n).map(|i| i * 37 % 10))),
                ],
            )
            .unwrap();
            let props = parquet::file::properties::WriterProperties::builder()
                .set_max_row_group_row_count(Some(3_000))
                .build();
            let f = std::fs::File::create(&path).unwrap();
            let mut w = parquet::arrow::ArrowWriter::try_new(f, schema, Some(props)).unwrap();
            w.write(&batch).unwrap();
            w.close().unwrap();
        }
        let mut rules = PhysicalOptimizer::new().rules;
        if with_rule {
            rules.insert(0, Arc::new(LateColumns));
        }
        let state = SessionStateBuilder::new()
            .with_config(SessionConfig::new().with_target_partitions(2))
            .with_default_features()
            .with_physical_optimizer_rules(rules)
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.register_parquet("t", path.to_str().unwrap(), ParquetReadOptions::default())
            .await
            .unwrap();
        ctx
    }

    /// The physical plan and the result, as text.
    async fn run(ctx: &SessionContext, sql: &str) -> (String, String) {
        let df = ctx.sql(sql).await.unwrap();
        let plan = df.clone().create_physical_plan().await.unwrap();
        let plan = displayable(plan.as_ref()).indent(true).to_string();
        let rows = arrow::util::pretty::pretty_format_batches(&df.collect().await.unwrap())
            .unwrap()
            .to_string();
        (plan, rows)
    }

    #[tokio::test]
    async fn a_filter_on_columns_used_nowhere_else_moves_into_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let late = session(dir.path(), true).await;
        let plain = session(dir.path(), false).await;
        let sql = "SELECT bank, count(*) AS n, sum(amount) AS amount FROM t \
                   WHERE rate > 6 GROUP BY bank ORDER BY bank";
        let (plan, rows) = run(&late, sql).await;
        assert!(!plan.contains("FilterExec"), "{plan}");
        assert!(plan.contains("predicate=rate@"), "{plan}");
        let (plain_plan, plain_rows) = run(&plain, sql).await;
        assert!(plain_plan.contains("FilterExec"), "{plain_plan}");
        assert_eq!(rows, plain_rows);
        // 3 of every 10 rows have a rate above 6, 3,000 in all.
        assert!(rows.contains("| B0   | 429 |"), "{rows}");

        // A projection above the filter, no aggregate.
        let sql = "SELECT bank, amount * 2 AS twice FROM t WHERE rate > 8 AND amount > 29000 \
                   ORDER BY twice";
        let (plan, rows) = run(&late, sql).await;
        let (_, plain_rows) = run(&plain, sql).await;
        assert_eq!(rows, plain_rows);
        // `amount` is tested and used: the filter stays above the scan.
        assert!(plan.contains("FilterExec"), "{plan}");
        let sql = "SELECT bank FROM t WHERE rate > 8 AND amount > 29000 ORDER BY bank";
        let (plan, rows) = run(&late, sql).await;
        assert!(!plan.contains("FilterExec"), "{plan}");
        assert_eq!(rows, run(&plain, sql).await.1);
    }

    #[tokio::test]
    async fn a_filter_on_a_column_also_returned_stays_above_the_scan() {
        let dir = tempfile::tempdir().unwrap();
        let late = session(dir.path(), true).await;
        let plain = session(dir.path(), false).await;
        let sql =
            "SELECT bank, sum(rate) AS rate FROM t WHERE rate > 6 GROUP BY bank ORDER BY bank";
        let (plan, rows) = run(&late, sql).await;
        assert!(plan.contains("FilterExec"), "{plan}");
        assert_eq!(rows, run(&plain, sql).await.1);
    }
}
