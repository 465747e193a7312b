-- 工业和制造业贷款增长: industrial and manufacturing loan balances and their
-- year-on-year growth. The plan's goal: the two growth rates roughly equal
-- (gap_pp near zero). yoy = (balance ÷ same quarter a year earlier − 1) × 100,
-- computed in double precision and rounded half away from zero to 2 places;
-- null without a prior year.
-- column: quarter | 季度 | | quarter of the loans' reporting date (YYYYQn)
-- column: industry_balance | 工业贷款余额 | CNY yuan | Σ balance of loans to industrial borrowers (divisions 06–46)
-- column: manufacturing_balance | 制造业贷款余额 | CNY yuan | Σ balance of loans to manufacturing borrowers (divisions 13–43)
-- column: industry_yoy_pct | 工业贷款同比增速 | percent | (industry_balance ÷ the same quarter a year earlier − 1) × 100
-- column: manufacturing_yoy_pct | 制造业贷款同比增速 | percent | (manufacturing_balance ÷ the same quarter a year earlier − 1) × 100
-- column: gap_pp | 增速差 | percentage points | manufacturing_yoy_pct − industry_yoy_pct (the plan wants it near zero)
-- ironlake: partition_by = quarter
-- ironlake: lags = 0, 4
SELECT
  quarter,
  industry_balance,
  manufacturing_balance,
  industry_yoy_pct,
  manufacturing_yoy_pct,
  CAST(manufacturing_yoy_pct - industry_yoy_pct AS DECIMAL(10, 2)) AS gap_pp
FROM (
  SELECT
    c.quarter,
    c.industry_balance,
    c.manufacturing_balance,
    CAST(ROUND((CAST(c.industry_balance AS DOUBLE) / CAST(NULLIF(p.industry_balance, 0) AS DOUBLE) - 1) * 100, 2) AS DECIMAL(10, 2)) AS industry_yoy_pct,
    CAST(ROUND((CAST(c.manufacturing_balance AS DOUBLE) / CAST(NULLIF(p.manufacturing_balance, 0) AS DOUBLE) - 1) * 100, 2) AS DECIMAL(10, 2)) AS manufacturing_yoy_pct
  FROM published.loan_balances c
  LEFT JOIN published.loan_balances p
    ON p.quarter = CAST(CAST(substr(c.quarter, 1, 4) AS INT) - 1 AS VARCHAR) || substr(c.quarter, 5, 2)
) t
