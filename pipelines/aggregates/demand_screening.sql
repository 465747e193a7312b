-- 甄别筛选: every open financing demand (submitted, screened, recommended)
-- screened against the plan. The applicant's attributes come from its latest
-- registry entry (as in the matching list).
--   三类企业 (three_kinds): an industry division named in [policy]
--     strategic_divisions, or 专精特新, or a 双百 key or growth enterprise;
--   五类项目 (five_projects): a project category other than none;
--   data_current: an operating report in the submission quarter or the
--     [policy] screening_report_within_quarters quarters before it;
--   amount_plausible: the amount is at most [policy]
--     screening_max_amount_to_revenue times the revenue of the enterprise's
--     last four reported quarters up to the submission quarter.
-- result: review when the data is not current or the amount not plausible;
-- else priority for 三类企业 or 五类项目; else eligible. reasons lists each finding.
-- column: quarter | 季度 | | quarter the demand was submitted in (YYYYQn)
-- column: demand_id | 需求编号 | | demand number
-- column: uscc | 统一社会信用代码 | | applicant
-- column: name | 企业名称 | | from the latest registry entry
-- column: district_code | 区县代码 | | from the latest registry entry
-- column: division | 行业大类 | | first two digits of industry_code (GB/T 4754-2017)
-- column: amount | 需求金额 | CNY yuan | amount requested
-- column: instrument | 融资方式 | | financing instrument sought
-- column: project_category | 五类项目 | | project category of the demand
-- column: strategic_industry | 战略性产业 | | division is one of [policy] strategic_divisions
-- column: specialized_sme | 专精特新 | | registry flag
-- column: dual_hundred | 双百企业 | | key_enterprise or growth_enterprise
-- column: three_kinds | 三类企业 | | strategic_industry or specialized_sme or dual_hundred
-- column: five_projects | 五类项目 | | project_category <> none
-- column: latest_report_quarter | 最近报表季度 | | latest quarter with an operating report, up to the submission quarter
-- column: data_current | 数据及时 | | latest_report_quarter within [policy] screening_report_within_quarters of the submission quarter
-- column: revenue_4q | 近四期营业收入 | CNY yuan | Σ revenue of the last four reported quarters up to the submission quarter
-- column: amount_plausible | 金额合理 | | revenue_4q > 0 and amount ≤ revenue_4q × [policy] screening_max_amount_to_revenue
-- column: result | 甄别结果 | | review, priority or eligible
-- column: reasons | 甄别理由 | | the findings, separated by ；
-- ironlake: partition_by = quarter
WITH latest AS (
  SELECT uscc, MAX(as_of) AS as_of FROM enterprises GROUP BY uscc
),
ent AS (
  SELECT e.* FROM enterprises e JOIN latest l ON e.uscc = l.uscc AND e.as_of = l.as_of
),
demands AS (
  SELECT
    d.quarter, d.demand_id, d.uscc, d.amount, d.instrument, d.project_category,
    CAST(substr(d.quarter, 1, 4) AS INT) * 4 + CAST(substr(d.quarter, 6, 1) AS INT) AS qn
  FROM financing_demands d
  WHERE d.status IN ('submitted', 'screened', 'recommended')
),
reports AS (
  SELECT
    dm.demand_id,
    o.quarter,
    o.revenue,
    ROW_NUMBER() OVER (PARTITION BY dm.demand_id ORDER BY o.quarter DESC) AS recency
  FROM demands dm
  JOIN operations o
    ON o.uscc = dm.uscc
   AND CAST(substr(o.quarter, 1, 4) AS INT) * 4 + CAST(substr(o.quarter, 6, 1) AS INT) <= dm.qn
),
reported AS (
  SELECT
    demand_id,
    MAX(quarter) AS latest_report_quarter,
    SUM(revenue) AS revenue_4q
  FROM reports
  WHERE recency <= 4
  GROUP BY demand_id
),
screened AS (
  SELECT
    dm.quarter, dm.demand_id, dm.uscc, e.name, e.district_code,
    substr(e.industry_code, 1, 2) AS division,
    dm.amount, dm.instrument, dm.project_category,
    COALESCE(substr(e.industry_code, 1, 2) IN ({{strategic_divisions}}), false) AS strategic_industry,
    COALESCE(e.specialized_sme, false) AS specialized_sme,
    COALESCE(e.key_enterprise, false) OR COALESCE(e.growth_enterprise, false) AS dual_hundred,
    dm.project_category <> 'none' AS five_projects,
    r.latest_report_quarter,
    COALESCE(
      CAST(substr(r.latest_report_quarter, 1, 4) AS INT) * 4 + CAST(substr(r.latest_report_quarter, 6, 1) AS INT)
        >= dm.qn - {{screening_report_within_quarters}},
      false) AS data_current,
    CAST(r.revenue_4q AS DECIMAL(20, 2)) AS revenue_4q,
    COALESCE(r.revenue_4q > 0 AND dm.amount <= r.revenue_4q * CAST({{screening_max_amount_to_revenue}} AS DECIMAL(9, 2)), false) AS amount_plausible
  FROM demands dm
  LEFT JOIN ent e ON e.uscc = dm.uscc
  LEFT JOIN reported r ON r.demand_id = dm.demand_id
)
SELECT
  quarter, demand_id, uscc, name, district_code, division, amount, instrument, project_category,
  strategic_industry, specialized_sme, dual_hundred,
  strategic_industry OR specialized_sme OR dual_hundred AS three_kinds,
  five_projects, latest_report_quarter, data_current, revenue_4q, amount_plausible,
  CASE
    WHEN NOT data_current OR NOT amount_plausible THEN 'review'
    WHEN strategic_industry OR specialized_sme OR dual_hundred OR five_projects THEN 'priority'
    ELSE 'eligible'
  END AS result,
  concat_ws('；',
    CASE WHEN strategic_industry THEN '三类企业: 战略性产业 ' || division END,
    CASE WHEN specialized_sme THEN '三类企业: 专精特新' END,
    CASE WHEN dual_hundred THEN '三类企业: 双百企业' END,
    CASE WHEN five_projects THEN '五类项目: ' || project_category END,
    CASE WHEN latest_report_quarter IS NULL THEN '无经营报表 (no operating report)'
         WHEN NOT data_current THEN '数据未更新: 最近报表 ' || latest_report_quarter END,
    CASE WHEN revenue_4q IS NULL OR revenue_4q <= 0 THEN '无营业收入 (no revenue reported)'
         WHEN NOT amount_plausible THEN '金额超过近四期营业收入的 {{screening_max_amount_to_revenue}} 倍' END
  ) AS reasons
FROM screened
