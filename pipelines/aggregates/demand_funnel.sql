-- 融资需求对接漏斗: online financing demands per submission quarter, district
-- (from the registry snapshot of that quarter) and project category (五类项目):
-- how many, how much, and where they stand now; match_rate_pct = funded ÷
-- submitted × 100 (by count); median days from submission to funding.
-- column: quarter | 季度 | | quarter the demands were submitted in (YYYYQn)
-- column: district_code | 区县代码 | | applicant's district in the registry snapshot of that quarter, or unknown
-- column: project_category | 五类项目 | | mic2025, two_integration, transformation, demo_base, going_global or none
-- column: demands | 需求数 | | demands submitted
-- column: amount | 需求金额 | CNY yuan | Σ amount requested
-- column: n_submitted | 已提交 | | demands whose current status is submitted
-- column: n_screened | 已筛选 | | … screened
-- column: n_recommended | 已推荐 | | … recommended
-- column: n_accepted | 已受理 | | … accepted
-- column: n_credit_granted | 已授信 | | … credit_granted
-- column: n_funded | 已放款 | | … funded
-- column: n_rejected | 已拒绝 | | … rejected
-- column: n_withdrawn | 已撤回 | | … withdrawn
-- column: amount_open | 待对接金额 | CNY yuan | Σ amount of submitted, screened and recommended demands
-- column: amount_in_progress | 对接中金额 | CNY yuan | Σ amount of accepted and credit_granted demands
-- column: amount_funded_requested | 已放款需求金额 | CNY yuan | Σ amount requested by funded demands
-- column: amount_closed | 已关闭金额 | CNY yuan | Σ amount of rejected and withdrawn demands
-- column: funded_amount | 实际放款金额 | CNY yuan | Σ funded_amount of funded demands
-- column: match_rate_pct | 对接成功率 | percent | funded ÷ submitted × 100, by count
-- column: median_days_to_funding | 放款周期中位数 | days | median of status_on − submitted_on over funded demands
-- ironlake: partition_by = quarter
-- ironlake: lags = 0
SELECT
  d.quarter,
  COALESCE(e.district_code, 'unknown') AS district_code,
  d.project_category,
  COUNT(*) AS demands,
  CAST(SUM(d.amount) AS DECIMAL(20, 2)) AS amount,
  COUNT(*) FILTER (WHERE d.status = 'submitted') AS n_submitted,
  COUNT(*) FILTER (WHERE d.status = 'screened') AS n_screened,
  COUNT(*) FILTER (WHERE d.status = 'recommended') AS n_recommended,
  COUNT(*) FILTER (WHERE d.status = 'accepted') AS n_accepted,
  COUNT(*) FILTER (WHERE d.status = 'credit_granted') AS n_credit_granted,
  COUNT(*) FILTER (WHERE d.status = 'funded') AS n_funded,
  COUNT(*) FILTER (WHERE d.status = 'rejected') AS n_rejected,
  COUNT(*) FILTER (WHERE d.status = 'withdrawn') AS n_withdrawn,
  CAST(COALESCE(SUM(d.amount) FILTER (WHERE d.status IN ('submitted', 'screened', 'recommended')), 0) AS DECIMAL(20, 2)) AS amount_open,
  CAST(COALESCE(SUM(d.amount) FILTER (WHERE d.status IN ('accepted', 'credit_granted')), 0) AS DECIMAL(20, 2)) AS amount_in_progress,
  CAST(COALESCE(SUM(d.amount) FILTER (WHERE d.status = 'funded'), 0) AS DECIMAL(20, 2)) AS amount_funded_requested,
  CAST(COALESCE(SUM(d.amount) FILTER (WHERE d.status IN ('rejected', 'withdrawn')), 0) AS DECIMAL(20, 2)) AS amount_closed,
  CAST(COALESCE(SUM(d.funded_amount) FILTER (WHERE d.status = 'funded'), 0) AS DECIMAL(20, 2)) AS funded_amount,
  CAST(ROUND(CAST(COUNT(*) FILTER (WHERE d.status = 'funded') AS DOUBLE) * 100 / CAST(COUNT(*) AS DOUBLE), 2) AS DECIMAL(10, 2)) AS match_rate_pct,
  CAST(ROUND(MEDIAN(CASE WHEN d.status = 'funded' THEN CAST(CAST(d.status_on AS INT) - CAST(d.submitted_on AS INT) AS DOUBLE) END), 1) AS DECIMAL(8, 1)) AS median_days_to_funding
FROM financing_demands d
LEFT JOIN enterprises e ON e.uscc = d.uscc AND e.quarter = d.quarter
GROUP BY d.quarter, COALESCE(e.district_code, 'unknown'), d.project_category
