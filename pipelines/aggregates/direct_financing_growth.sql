-- 直接融资增长: bond and equity financing of industrial enterprises per
-- quarter, year-on-year growth (rounded half away from zero to 2 places,
-- null without a prior year or when it was zero), and distinct issuers.
-- column: quarter | 季度 | | quarter of the issue date (YYYYQn)
-- column: bond_amount | 债券融资额 | CNY yuan | Σ amount of bond issues by industrial enterprises
-- column: equity_amount | 股权融资额 | CNY yuan | Σ amount of equity issues by industrial enterprises
-- column: bond_yoy_pct | 债券融资同比 | percent | (bond_amount ÷ the same quarter a year earlier − 1) × 100
-- column: equity_yoy_pct | 股权融资同比 | percent | (equity_amount ÷ the same quarter a year earlier − 1) × 100
-- column: bond_issuers | 发债企业数 | | distinct industrial issuers of bonds
-- column: equity_issuers | 股权融资企业数 | | distinct industrial issuers of equity
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
