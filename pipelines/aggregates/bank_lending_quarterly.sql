-- Each reporting bank's lending to industry (GB/T 4754 divisions 06–46;
-- manufacturing 13–43) per quarter, plus bank_code 'ALL' for all banks
-- together: the base of bank_lending, which adds the year-on-year growth.
-- A borrower's division comes from the registry snapshot of the same
-- quarter; loans to borrowers missing from it count nowhere. Money sums are
-- exact; shares are computed in double precision and rounded half away from
-- zero to 2 places, the rate to 4.
-- column: quarter | 季度 | | quarter of the loans' reporting date (YYYYQn)
-- column: bank_code | 金融机构代码 | | reporting bank's institution code, or ALL for all banks
-- column: industry_balance | 工业贷款余额 | CNY yuan | Σ balance of loans to industrial borrowers (divisions 06–46)
-- column: manufacturing_balance | 制造业贷款余额 | CNY yuan | Σ balance of loans to manufacturing borrowers (divisions 13–43)
-- column: new_industry_loans | 新发放工业贷款 | CNY yuan | Σ disbursed (drawn in the quarter) on loans to industrial borrowers
-- column: credit_share_pct | 信用贷款占比 | percent | balance of industrial loans with guarantee = credit ÷ industry_balance × 100
-- column: medium_long_share_pct | 中长期贷款占比 | percent | balance of industrial loans with term = medium_long ÷ industry_balance × 100
-- column: avg_rate_pct | 工业贷款加权平均利率 | percent per year | Σ (balance × rate_pct) ÷ Σ balance over industrial loans with balance > 0
-- column: loans | 贷款笔数 | | industrial loans reported in the quarter
-- ironlake: partition_by = quarter
-- ironlake: lags = 0
-- A quarter's rows depend on that quarter's loans and registry alone (the
-- year-on-year growth, which does not, is bank_lending's), so another
-- delivery of one quarter recomputes one quarter here.
WITH ind AS (
  SELECT
    l.quarter, l.bank_code, l.balance, l.disbursed, l.rate_pct, l.term, l.guarantee,
    CAST(substr(e.industry_code, 1, 2) AS INT) BETWEEN 13 AND 43 AS manufacturing
  FROM bank_loans l
  JOIN enterprises e ON e.uscc = l.uscc AND e.quarter = l.quarter
  WHERE CAST(substr(e.industry_code, 1, 2) AS INT) BETWEEN 6 AND 46
),
-- One aggregation for the banks and for 'ALL', so the join above runs once.
b AS (
  SELECT
    quarter,
    CASE WHEN GROUPING(bank_code) = 1 THEN 'ALL' ELSE bank_code END AS bank_code,
    SUM(balance) AS ib,
    SUM(CASE WHEN manufacturing THEN balance ELSE 0 END) AS mb,
    SUM(disbursed) AS nd,
    SUM(CASE WHEN guarantee = 'credit' THEN balance ELSE 0 END) AS cb,
    SUM(CASE WHEN term = 'medium_long' THEN balance ELSE 0 END) AS mlb,
    SUM(CASE WHEN balance > 0 THEN balance * rate_pct END) AS wr,
    SUM(CASE WHEN balance > 0 THEN balance END) AS w,
    COUNT(*) AS n
  FROM ind
  GROUP BY GROUPING SETS ((quarter, bank_code), (quarter))
)
SELECT
  b.quarter,
  b.bank_code,
  CAST(b.ib AS DECIMAL(20, 2)) AS industry_balance,
  CAST(b.mb AS DECIMAL(20, 2)) AS manufacturing_balance,
  CAST(b.nd AS DECIMAL(20, 2)) AS new_industry_loans,
  CAST(ROUND(CAST(b.cb AS DOUBLE) / CAST(NULLIF(b.ib, 0) AS DOUBLE) * 100, 2) AS DECIMAL(10, 2)) AS credit_share_pct,
  CAST(ROUND(CAST(b.mlb AS DOUBLE) / CAST(NULLIF(b.ib, 0) AS DOUBLE) * 100, 2) AS DECIMAL(10, 2)) AS medium_long_share_pct,
  CAST(ROUND(CAST(b.wr AS DOUBLE) / CAST(NULLIF(b.w, 0) AS DOUBLE), 4) AS DECIMAL(10, 4)) AS avg_rate_pct,
  b.n AS loans
FROM b
