-- 贴息: interest subsidy on new loans (drawn in the quarter) to enterprises in
-- the strategic divisions named in ironlake.toml [policy]. Per quarter and
-- enterprise: first-year interest = Σ disbursed × rate_pct ÷ 100, rounded to
-- the fen; subsidy = that interest × interest_subsidy_share_pct ÷ 100,
-- rounded to the fen, capped at interest_subsidy_cap_yuan.
-- Placeholders in double braces are filled from [policy] before planning.
-- column: quarter | 季度 | | quarter the loans were drawn in (YYYYQn)
-- column: uscc | 统一社会信用代码 | | borrower
-- column: name | 企业名称 | | from the registry snapshot of the quarter
-- column: district_code | 区县代码 | | from the registry snapshot of the quarter
-- column: division | 行业大类 | | one of [policy] strategic_divisions
-- column: new_loans | 新发放贷款 | CNY yuan | Σ disbursed in the quarter
-- column: first_year_interest | 首年利息 | CNY yuan | Σ disbursed × rate_pct ÷ 100, rounded to the fen
-- column: subsidy_share_pct | 贴息比例 | percent | [policy] interest_subsidy_share_pct
-- column: subsidy | 贴息金额 | CNY yuan | least(first_year_interest × subsidy_share_pct ÷ 100 rounded to the fen, [policy] interest_subsidy_cap_yuan)
-- column: capped | 是否封顶 | | whether the cap applied
-- ironlake: partition_by = quarter
-- ironlake: lags = 0
SELECT
  quarter, uscc, name, district_code, division, new_loans, first_year_interest,
  CAST({{interest_subsidy_share_pct}} AS DECIMAL(5, 2)) AS subsidy_share_pct,
  CASE WHEN uncapped > CAST({{interest_subsidy_cap_yuan}} AS DECIMAL(18, 2))
       THEN CAST({{interest_subsidy_cap_yuan}} AS DECIMAL(18, 2)) ELSE uncapped END AS subsidy,
  uncapped > CAST({{interest_subsidy_cap_yuan}} AS DECIMAL(18, 2)) AS capped
FROM (
  SELECT
    quarter, uscc, name, district_code, division, new_loans, first_year_interest,
    CAST(first_year_interest * CAST({{interest_subsidy_share_pct}} AS DECIMAL(5, 2)) / CAST(100 AS DECIMAL(5, 2)) AS DECIMAL(18, 2)) AS uncapped
  FROM (
    SELECT
      l.quarter,
      l.uscc,
      e.name,
      e.district_code,
      substr(e.industry_code, 1, 2) AS division,
      CAST(SUM(l.disbursed) AS DECIMAL(18, 2)) AS new_loans,
      CAST(SUM(l.disbursed * l.rate_pct) / CAST(100 AS DECIMAL(5, 2)) AS DECIMAL(18, 2)) AS first_year_interest
    FROM bank_loans l
    JOIN enterprises e ON e.uscc = l.uscc AND e.quarter = l.quarter
    WHERE l.disbursed > 0
      AND substr(e.industry_code, 1, 2) IN ({{strategic_divisions}})
    GROUP BY l.quarter, l.uscc, e.name, e.district_code, substr(e.industry_code, 1, 2)
  ) base
) s
