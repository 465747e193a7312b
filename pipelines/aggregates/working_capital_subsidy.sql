-- 双百工业企业流动资金贷款利息补贴: interest subsidy on the working-capital
-- (short-term) loans of the twin-hundred enterprises, per quarter and
-- enterprise flagged key_enterprise or growth_enterprise in the registry
-- snapshot of the same quarter and owing at least one short-term loan at the
-- quarter's end (balance > 0). The quarter's interest is Σ balance × rate_pct
-- ÷ 100 ÷ 4, summed exactly and rounded to the fen; the subsidy is that
-- interest × [policy] dual_hundred_subsidy_share_pct ÷ 100, rounded to the
-- fen, capped at dual_hundred_subsidy_cap_yuan.
-- column: quarter | 季度 | | quarter of the loans' reporting date (YYYYQn)
-- column: uscc | 统一社会信用代码 | | borrower
-- column: name | 企业名称 | | from the registry snapshot of the quarter
-- column: district_code | 区县代码 | | from the registry snapshot of the quarter
-- column: division | 行业大类 | | first two digits of industry_code (GB/T 4754-2017)
-- column: key_enterprise | 双百重点企业 | | registry flag
-- column: growth_enterprise | 双百成长型企业 | | registry flag
-- column: loans | 流动资金贷款笔数 | | short-term loans with balance > 0
-- column: short_term_balance | 流动资金贷款余额 | CNY yuan | Σ balance of short-term loans
-- column: quarter_interest | 季度利息 | CNY yuan | Σ balance × rate_pct ÷ 100 ÷ 4, rounded to the fen
-- column: subsidy_share_pct | 补贴比例 | percent | [policy] dual_hundred_subsidy_share_pct
-- column: subsidy | 利息补贴 | CNY yuan | least(quarter_interest × subsidy_share_pct ÷ 100 rounded to the fen, [policy] dual_hundred_subsidy_cap_yuan)
-- column: capped | 是否封顶 | | whether the cap applied
-- ironlake: partition_by = quarter
-- ironlake: lags = 0
SELECT
  quarter, uscc, name, district_code, division, key_enterprise, growth_enterprise, loans,
  short_term_balance, quarter_interest,
  CAST({{dual_hundred_subsidy_share_pct}} AS DECIMAL(5, 2)) AS subsidy_share_pct,
  CASE WHEN uncapped > CAST({{dual_hundred_subsidy_cap_yuan}} AS DECIMAL(18, 2))
       THEN CAST({{dual_hundred_subsidy_cap_yuan}} AS DECIMAL(18, 2)) ELSE uncapped END AS subsidy,
  uncapped > CAST({{dual_hundred_subsidy_cap_yuan}} AS DECIMAL(18, 2)) AS capped
FROM (
  SELECT
    base.*,
    CAST(quarter_interest * CAST({{dual_hundred_subsidy_share_pct}} AS DECIMAL(5, 2)) / CAST(100 AS DECIMAL(5, 2)) AS DECIMAL(18, 2)) AS uncapped
  FROM (
    SELECT
      l.quarter,
      l.uscc,
      e.name,
      e.district_code,
      substr(e.industry_code, 1, 2) AS division,
      COALESCE(e.key_enterprise, false) AS key_enterprise,
      COALESCE(e.growth_enterprise, false) AS growth_enterprise,
      COUNT(*) AS loans,
      CAST(SUM(l.balance) AS DECIMAL(18, 2)) AS short_term_balance,
      CAST(SUM(l.balance * l.rate_pct) / CAST(400 AS DECIMAL(5, 0)) AS DECIMAL(18, 2)) AS quarter_interest
    FROM bank_loans l
    JOIN enterprises e ON e.uscc = l.uscc AND e.quarter = l.quarter
    WHERE l.term = 'short'
      AND l.balance > 0
      AND (COALESCE(e.key_enterprise, false) OR COALESCE(e.growth_enterprise, false))
    GROUP BY l.quarter, l.uscc, e.name, e.district_code, substr(e.industry_code, 1, 2),
             COALESCE(e.key_enterprise, false), COALESCE(e.growth_enterprise, false)
  ) base
) s
