//! Text read as string views, compacted as it leaves the Parquet scan.
//!
//! Text columns of few distinct values are read as `Utf8View`
//! ([`crate::config::schema::TableSchema::read_schema`]). The Parquet
//! reader makes each batch's views point into the column chunk's dictionary
//! page and attaches that page to the batch, even when every value is short
//! enough (12 bytes or less) to sit inside its view. A join that collects
//! its build side concatenates those batches, and the result carries one
//! such buffer per batch read: thousands of them on a large table, cloned
//! again by every `take` from it and every metrics poll. `enterprise_profile`'s
//! chain of joins over 4.7M registry rows ran 12 s → 90 s that way (measured
//! while the refresh still read views; it now reads stored types).
//!
//! [`CompactViews`] puts a projection on every scan that yields views,
//! which drops the buffers of each batch whose view columns hold all their
//! values inline ([`Compacted`]), as district codes, industry classes and
//! size classes do. A batch with longer values keeps the dictionary page
//! it points into: copying those values out (`gc`) on every batch cost the
//! analysts' guarantee and product queries 8–12%. The rule runs after
//! DataFusion's own, so filters, limits and join filters are already in
//! the scan.

use arrow::array::MAX_INLINE_VIEW_LEN;
use arrow::array::{Array, AsArray, RecordBatch, StringViewArray};
use arrow::datatypes::{DataType, Schema};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::ProjectionExec;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// The physical optimizer rule; see the module documentation.
#[derive(Debug, Default)]
pub struct CompactViews;

impl PhysicalOptimizerRule for CompactViews {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if node.downcast_ref::<DataSourceExec>().is_none() {
                return Ok(Transformed::no(node));
            }
            let schema = node.schema();
            if !schema
                .fields()
                .iter()
                .any(|f| f.data_type() == &DataType::Utf8View)
            {
                return Ok(Transformed::no(node));
            }
            let exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = schema
                .fields()
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let column: Arc<dyn PhysicalExpr> = Arc::new(Column::new(f.name(), i));
                    let expr = if f.data_type() == &DataType::Utf8View {
                        Arc::new(Compacted(column))
                    } else {
                        column
                    };
                    (expr, f.name().clone())
                })
                .collect();
            let projection = ProjectionExec::try_new(exprs, node)?;
            Ok(Transformed::yes(
                Arc::new(projection) as Arc<dyn ExecutionPlan>
            ))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "ironlake_compact_views"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A `Utf8View` expression whose arrays keep no buffer when every value is
/// inline (see the module documentation).
#[derive(Debug, Eq)]
pub struct Compacted(Arc<dyn PhysicalExpr>);

impl PartialEq for Compacted {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq(&other.0)
    }
}

impl Hash for Compacted {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl std::fmt::Display for Compacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl PhysicalExpr for Compacted {
    fn data_type(&self, input_schema: &Schema) -> Result<DataType> {
        self.0.data_type(input_schema)
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        self.0.nullable(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let value = self.0.evaluate(batch)?;
        let ColumnarValue::Array(a) = &value else {
            return Ok(value);
        };
        let Some(views) = a.as_string_view_opt() else {
            return Ok(value);
        };
        // Most batches come with their dictionary page; only then are the
        // views looked at.
        if views.data_buffers().is_empty()
            || !views
                .views()
                .iter()
                .all(|v| (*v as u32) as usize <= MAX_INLINE_VIEW_LEN as usize)
        {
            return Ok(value);
        }
        // SAFETY: every view (null or not) holds its bytes inline (length
        // ≤ 12, checked above), so none refers to a buffer; views and nulls
        // are those of a valid array.
        let bare = unsafe {
            StringViewArray::new_unchecked(
                views.views().clone(),
                Vec::new(),
                views.nulls().cloned(),
            )
        };
        Ok(ColumnarValue::Array(Arc::new(bare)))
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.0]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        Ok(Arc::new(Compacted(Arc::clone(&children[0]))))
    }

    fn fmt_sql(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt_sql(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringViewArray;
    use arrow::datatypes::Field;

    fn batch(values: &[Option<&str>]) -> RecordBatch {
        // As the Parquet reader builds them: views into a shared buffer that
        // holds every value, long or short.
        let mut b = arrow::array::StringViewBuilder::new();
        let bytes: Vec<u8> = values.iter().flatten().flat_map(|s| s.bytes()).collect();
        let block = b.append_block(arrow::buffer::Buffer::from(bytes));
        let mut offset = 0u32;
        for v in values {
            match v {
                Some(s) => {
                    b.try_append_view(block, offset, s.len() as u32).unwrap();
                    offset += s.len() as u32;
                }
                None => b.append_null(),
            }
        }
        let schema = Schema::new(vec![Field::new("c", DataType::Utf8View, true)]);
        RecordBatch::try_new(Arc::new(schema), vec![Arc::new(b.finish())]).unwrap()
    }

    fn compacted(b: &RecordBatch) -> StringViewArray {
        let e = Compacted(Arc::new(Column::new("c", 0)));
        let ColumnarValue::Array(a) = e.evaluate(b).unwrap() else {
            panic!("an array in, an array out")
        };
        a.as_string_view().clone()
    }

    #[test]
    fn short_values_keep_no_buffer_and_long_ones_keep_theirs() {
        let short: &[Option<&str>] = &[Some("credit"), None, Some("500101"), Some("")];
        let b = batch(short);
        assert_eq!(b.column(0).as_string_view().data_buffers().len(), 1);
        let out = compacted(&b);
        assert!(out.data_buffers().is_empty());
        assert_eq!(out.iter().collect::<Vec<_>>(), short.to_vec());

        let mixed: &[Option<&str>] = &[Some("pledge_receivables"), Some("credit"), None];
        let out = compacted(&batch(mixed));
        assert_eq!(out.data_buffers().len(), 1);
        assert_eq!(out.iter().collect::<Vec<_>>(), mixed.to_vec());
    }
}
