-- 担保费补贴: 担保费率不超过 [policy] guarantee_fee_ceiling_pct 的，市财政补贴
-- guarantee_fee_subsidy_pp 个百分点. Per quarter and enterprise: new loans
-- (drawn in the quarter, disbursed > 0) with guarantee = 'guaranteed' and a
-- guarantee fee at most the ceiling, to medium, small and micro enterprises
-- (中小微, size_class from the registry snapshot of the same quarter).
-- The fee and the subsidy are summed exactly and then rounded to the fen;
-- the subsidy never exceeds the fee. Enterprises without a qualifying loan
-- are absent.
-- column: quarter | 季度 | | quarter the loans were drawn in (YYYYQn)
-- column: uscc | 统一社会信用代码 | | borrower
-- column: name | 企业名称 | | from the registry snapshot of the quarter
-- column: district_code | 区县代码 | | from the registry snapshot of the quarter
-- column: division | 行业大类 | | first two digits of industry_code (GB/T 4754-2017)
-- column: size_class | 企业规模 | | medium, small or micro
-- column: loans | 贷款笔数 | | qualifying guaranteed loans
-- column: guaranteed_new_loans | 担保贷款新发放额 | CNY yuan | Σ disbursed of qualifying loans
-- column: guarantee_fee | 担保费 | CNY yuan | Σ disbursed × guarantee_fee_pct ÷ 100, rounded to the fen
-- column: fee_ceiling_pct | 担保费率上限 | percent per year | [policy] guarantee_fee_ceiling_pct
-- column: subsidy_pp | 补贴百分点 | percentage points | [policy] guarantee_fee_subsidy_pp
-- column: subsidy | 担保费补贴 | CNY yuan | Σ disbursed × least(guarantee_fee_pct, subsidy_pp) ÷ 100, rounded to the fen
-- ironlake: partition_by = quarter
-- ironlake: lags = 0
SELECT
  l.quarter,
  l.uscc,
  e.name,
  e.district_code,
  substr(e.industry_code, 1, 2) AS division,
  e.size_class,
  COUNT(*) AS loans,
  CAST(SUM(l.disbursed) AS DECIMAL(18, 2)) AS guaranteed_new_loans,
  CAST(SUM(l.disbursed * l.guarantee_fee_pct) / CAST(100 AS DECIMAL(5, 2)) AS DECIMAL(18, 2)) AS guarantee_fee,
  CAST({{guarantee_fee_ceiling_pct}} AS DECIMAL(9, 4)) AS fee_ceiling_pct,
  CAST({{guarantee_fee_subsidy_pp}} AS DECIMAL(9, 4)) AS subsidy_pp,
  CAST(SUM(l.disbursed * CASE WHEN l.guarantee_fee_pct < CAST({{guarantee_fee_subsidy_pp}} AS DECIMAL(9, 4))
                              THEN l.guarantee_fee_pct
                              ELSE CAST({{guarantee_fee_subsidy_pp}} AS DECIMAL(9, 4)) END)
       / CAST(100 AS DECIMAL(5, 2)) AS DECIMAL(18, 2)) AS subsidy
FROM bank_loans l
JOIN enterprises e ON e.uscc = l.uscc AND e.quarter = l.quarter
WHERE l.guarantee = 'guaranteed'
  AND l.guarantee_fee_pct IS NOT NULL
  AND l.guarantee_fee_pct <= CAST({{guarantee_fee_ceiling_pct}} AS DECIMAL(9, 4))
  AND l.disbursed > 0
  AND e.size_class IN ('medium', 'small', 'micro')
GROUP BY l.quarter, l.uscc, e.name, e.district_code, substr(e.industry_code, 1, 2), e.size_class
