-- 银企对接清单: the bank–enterprise matching list. Open demands (submitted,
-- screened, recommended) with the applicant's latest registry entry, ranked
-- for banks: priority = 3·双百重点 + 2·双百成长 + 2·专精特新 + 1·上市后备
-- + 2·(a 五类项目 category) + 1·(already recommended); ties go to the older
-- demand, then the demand id. days_open counts to the latest status date in
-- the feed (the data's "today"). quarter is the submission quarter. Each
-- demand carries its screening (甄别筛选) and recommended banks (分类推荐).
-- column: quarter | 季度 | | quarter the demand was submitted in (YYYYQn)
-- column: rank | 排名 | | position in the list: priority descending, then the older demand, then demand_id
-- column: priority | 优先级 | | 3·双百重点 + 2·双百成长 + 2·专精特新 + 1·上市后备 + 2·(a 五类项目 category) + 1·(already recommended)
-- column: demand_id | 需求编号 | | demand number on the financing platform
-- column: uscc | 统一社会信用代码 | | applicant
-- column: name | 企业名称 | | from the applicant's latest registry entry
-- column: district_code | 区县代码 | | from the applicant's latest registry entry
-- column: industry_code | 行业代码 | | GB/T 4754-2017 class, from the latest registry entry
-- column: size_class | 企业规模 | | from the latest registry entry
-- column: key_enterprise | 双百重点企业 | | registry flag
-- column: growth_enterprise | 双百成长型企业 | | registry flag
-- column: specialized_sme | 专精特新 | | registry flag
-- column: listing_reserve | 上市后备 | | registry flag
-- column: project_category | 五类项目 | | project category of the demand
-- column: purpose | 资金用途 | | use of funds
-- column: instrument | 融资方式 | | financing instrument sought
-- column: amount | 需求金额 | CNY yuan | amount requested
-- column: term_months | 融资期限 | months | requested term
-- column: status | 对接状态 | | submitted, screened or recommended
-- column: status_on | 状态日期 | | date of the current status
-- column: submitted_on | 提交日期 | | date the demand was submitted
-- column: bank_code | 对接银行代码 | | bank the demand was recommended to, if any
-- column: days_open | 已等待天数 | days | latest status date in the feed − submitted_on
-- column: screening | 甄别结果 | | result in published.demand_screening: priority, eligible or review
-- column: screening_reasons | 甄别理由 | | the screening's findings
-- column: recommended_banks | 推荐银行 | | up to three banks from published.demand_recommendations, best first, comma-separated
-- column: recommendation_reason | 推荐理由 | | why the first of them
-- ironlake: partition_by = quarter
WITH latest AS (
  SELECT uscc, MAX(as_of) AS as_of FROM enterprises GROUP BY uscc
),
ent AS (
  SELECT e.* FROM enterprises e JOIN latest l ON e.uscc = l.uscc AND e.as_of = l.as_of
),
data_date AS (
  SELECT MAX(status_on) AS today FROM financing_demands
),
open_demands AS (
  SELECT
    d.*,
    e.name, e.district_code, e.industry_code, e.size_class,
    COALESCE(e.key_enterprise, false) AS key_enterprise,
    COALESCE(e.growth_enterprise, false) AS growth_enterprise,
    COALESCE(e.specialized_sme, false) AS specialized_sme,
    COALESCE(e.listing_reserve, false) AS listing_reserve,
    3 * CAST(COALESCE(e.key_enterprise, false) AS INT)
      + 2 * CAST(COALESCE(e.growth_enterprise, false) AS INT)
      + 2 * CAST(COALESCE(e.specialized_sme, false) AS INT)
      + CAST(COALESCE(e.listing_reserve, false) AS INT)
      + CASE WHEN d.project_category <> 'none' THEN 2 ELSE 0 END
      + CASE WHEN d.status = 'recommended' THEN 1 ELSE 0 END AS priority
  FROM financing_demands d
  LEFT JOIN ent e ON e.uscc = d.uscc
  WHERE d.status IN ('submitted', 'screened', 'recommended')
)
SELECT
  o.quarter,
  ROW_NUMBER() OVER (ORDER BY o.priority DESC, o.submitted_on, o.demand_id) AS rank,
  o.priority,
  o.demand_id,
  o.uscc,
  o.name,
  o.district_code,
  o.industry_code,
  o.size_class,
  o.key_enterprise,
  o.growth_enterprise,
  o.specialized_sme,
  o.listing_reserve,
  o.project_category,
  o.purpose,
  o.instrument,
  o.amount,
  o.term_months,
  o.status,
  o.status_on,
  o.submitted_on,
  o.bank_code,
  CAST(dd.today AS INT) - CAST(o.submitted_on AS INT) AS days_open,
  s.result AS screening,
  s.reasons AS screening_reasons,
  r.banks AS recommended_banks,
  r.top_reason AS recommendation_reason
FROM open_demands o
CROSS JOIN data_date dd
LEFT JOIN published.demand_screening s ON s.demand_id = o.demand_id
LEFT JOIN (
  SELECT
    demand_id,
    concat_ws(',',
      MAX(CASE WHEN rank = 1 THEN bank_code END),
      MAX(CASE WHEN rank = 2 THEN bank_code END),
      MAX(CASE WHEN rank = 3 THEN bank_code END)) AS banks,
    MAX(CASE WHEN rank = 1 THEN reason END) AS top_reason
  FROM published.demand_recommendations
  GROUP BY demand_id
) r ON r.demand_id = o.demand_id
