-- 直接融资增长: bond and equity financing of industrial enterprises per
-- quarter, year-on-year growth (rounded half away from zero to 2 places,
-- null without a prior year or when it was zero), and distinct issuers.
-- ironlake: partition_by = quarter
-- ironlake: lags = 0, 4
SELECT
  c.quarter,
  c.bond_amount,
  c.equity_amount,
  CAST(ROUND((CAST(c.bond_amount AS DOUBLE) / CAST(NULLIF(p.bond_amount, 0) AS DOUBLE) - 1) * 100, 2) AS DECIMAL(10, 2)) AS bond_yoy_pct,
  CAST(ROUND((CAST(c.equity_amount AS DOUBLE) / CAST(NULLIF(p.equity_amount, 0) AS DOUBLE) - 1) * 100, 2) AS DECIMAL(10, 2)) AS equity_yoy_pct,
  c.bond_issuers,
  c.equity_issuers
FROM published.direct_financing_quarterly c
LEFT JOIN published.direct_financing_quarterly p
  ON p.quarter = CAST(CAST(substr(c.quarter, 1, 4) AS INT) - 1 AS VARCHAR) || substr(c.quarter, 5, 2)
