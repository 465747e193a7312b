-- 银行业金融机构工业贷款情况监测: each reporting bank's lending to industry
-- (GB/T 4754 divisions 06–46; manufacturing 13–43), per quarter and bank,
-- plus bank_code 'ALL' for all banks together: bank_lending_quarterly's
-- rows with each bank's year-on-year growth, computed in double precision
-- and rounded half away from zero to 2 places; a yoy is null without the
-- bank's balance a year earlier or when it was zero.
-- column: quarter | 季度 | | quarter of the loans' reporting date (YYYYQn)
-- column: bank_code | 金融机构代码 | | reporting bank's institution code, or ALL for all banks
-- column: industry_balance | 工业贷款余额 | CNY yuan | Σ balance of loans to industrial borrowers (divisions 06–46)
-- column: manufacturing_balance | 制造业贷款余额 | CNY yuan | Σ balance of loans to manufacturing borrowers (divisions 13–43)
-- column: industry_yoy_pct | 工业贷款余额同比 | percent | (industry_balance ÷ the same bank's industry_balance a year earlier − 1) × 100
-- column: new_industry_loans | 新发放工业贷款 | CNY yuan | Σ disbursed (drawn in the quarter) on loans to industrial borrowers
-- column: credit_share_pct | 信用贷款占比 | percent | balance of industrial loans with guarantee = credit ÷ industry_balance × 100
-- column: medium_long_share_pct | 中长期贷款占比 | percent | balance of industrial loans with term = medium_long ÷ industry_balance × 100
-- column: avg_rate_pct | 工业贷款加权平均利率 | percent per year | Σ (balance × rate_pct) ÷ Σ balance over industrial loans with balance > 0
-- column: loans | 贷款笔数 | | industrial loans reported in the quarter
-- ironlake: partition_by = quarter
-- ironlake: lags = 0, 4
-- The loans are joined with the registry in bank_lending_quarterly, one
-- quarter at a time: another delivery of a quarter's loans recomputes that
-- quarter's join there, and here that quarter and the year after it from
-- the published rows of three quarters.
SELECT
  c.quarter,
  c.bank_code,
  c.industry_balance,
  c.manufacturing_balance,
  CAST(ROUND((CAST(c.industry_balance AS DOUBLE) / CAST(NULLIF(p.industry_balance, 0) AS DOUBLE) - 1) * 100, 2) AS DECIMAL(10, 2)) AS industry_yoy_pct,
  c.new_industry_loans,
  c.credit_share_pct,
  c.medium_long_share_pct,
  c.avg_rate_pct,
  c.loans
FROM published.bank_lending_quarterly c
LEFT JOIN published.bank_lending_quarterly p
  ON p.bank_code = c.bank_code
  AND p.quarter = CAST(CAST(substr(c.quarter, 1, 4) AS INT) - 1 AS VARCHAR) || substr(c.quarter, 5, 2)
