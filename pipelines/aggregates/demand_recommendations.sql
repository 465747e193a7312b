-- 分类推荐: up to three banks recommended for each open demand (submitted,
-- screened, recommended) that banks can serve, ranked by their recent
-- lending to enterprises like the applicant with a loan that fits the
-- instrument sought. Recent = the last [policy]
-- recommendation_lookback_quarters quarters of bank loan reports in the
-- warehouse. Like = the same industry division (from the borrower's registry
-- snapshot of the loan's quarter; the applicant's from its latest entry).
-- Fits: loan — any loan; syndicated — product syndicated; receivables_pledge
-- — guarantee pledge_receivables or product supply_chain; ip_pledge —
-- guarantee pledge_ip (知识产权质押). Bonds, equity and leasing are not
-- recommended to banks. Banks rank by the amount disbursed to the same
-- division in the same district, then in the whole city, then bank_code.
-- column: quarter | 季度 | | quarter the demand was submitted in (YYYYQn)
-- column: demand_id | 需求编号 | | demand number
-- column: uscc | 统一社会信用代码 | | applicant
-- column: instrument | 融资方式 | | financing instrument sought
-- column: division | 行业大类 | | applicant's division
-- column: district_code | 区县代码 | | applicant's district
-- column: rank | 推荐顺序 | | 1 to 3
-- column: bank_code | 推荐银行 | | bank's institution code
-- column: matched_loans | 匹配贷款笔数 | | fitting loans drawn in the lookback to borrowers of the division
-- column: matched_amount | 匹配贷款金额 | CNY yuan | Σ disbursed of those loans
-- column: local_loans | 同区县笔数 | | of them, to borrowers in the applicant's district
-- column: local_amount | 同区县金额 | CNY yuan | Σ disbursed of the local ones
-- column: reason | 推荐理由 | | why this bank
-- ironlake: partition_by = quarter
-- ironlake: latest(bank_loans) = {{recommendation_lookback_quarters}}
-- Each enterprise's latest registry snapshot ((uscc, as_of) is the key),
-- taken in one aggregation rather than joining the registry to its maxima.
WITH ent AS (
  SELECT
    uscc,
    first_value(district_code ORDER BY as_of DESC) AS district_code,
    first_value(substr(industry_code, 1, 2) ORDER BY as_of DESC) AS division
  FROM enterprises
  GROUP BY uscc
),
demands AS (
  SELECT d.quarter, d.demand_id, d.uscc, d.instrument, e.division, e.district_code
  FROM financing_demands d
  JOIN ent e ON e.uscc = d.uscc
  WHERE d.status IN ('submitted', 'screened', 'recommended')
    AND d.instrument IN ('loan', 'syndicated', 'receivables_pledge', 'ip_pledge')
),
last_quarter AS (
  SELECT MAX(CAST(substr(quarter, 1, 4) AS INT) * 4 + CAST(substr(quarter, 6, 1) AS INT)) AS qn FROM bank_loans
),
-- Drawn loans of the lookback, with the instruments each fits.
lending AS (
  SELECT
    l.bank_code, l.disbursed,
    substr(b.industry_code, 1, 2) AS division, b.district_code,
    i.instrument
  FROM bank_loans l
  JOIN enterprises b ON b.uscc = l.uscc AND b.quarter = l.quarter
  CROSS JOIN last_quarter lq
  CROSS JOIN (VALUES ('loan'), ('syndicated'), ('receivables_pledge'), ('ip_pledge')) AS i(instrument)
  WHERE l.disbursed > 0
    AND CAST(substr(l.quarter, 1, 4) AS INT) * 4 + CAST(substr(l.quarter, 6, 1) AS INT)
        > lq.qn - {{recommendation_lookback_quarters}}
    -- the same on the registry side, so only the lookback's snapshots are joined
    AND CAST(substr(b.quarter, 1, 4) AS INT) * 4 + CAST(substr(b.quarter, 6, 1) AS INT)
        > lq.qn - {{recommendation_lookback_quarters}}
    AND (i.instrument = 'loan'
      OR (i.instrument = 'syndicated' AND l.product = 'syndicated')
      OR (i.instrument = 'receivables_pledge' AND (l.guarantee = 'pledge_receivables' OR l.product = 'supply_chain'))
      OR (i.instrument = 'ip_pledge' AND l.guarantee = 'pledge_ip'))
),
by_district AS (
  SELECT instrument, division, district_code, bank_code, COUNT(*) AS loans, SUM(disbursed) AS amount
  FROM lending
  GROUP BY instrument, division, district_code, bank_code
),
by_division AS (
  SELECT instrument, division, bank_code, SUM(loans) AS loans, SUM(amount) AS amount
  FROM by_district
  GROUP BY instrument, division, bank_code
),
-- Demands alike (instrument, division, district) get the same banks: rank once per kind.
kinds AS (
  SELECT DISTINCT instrument, division, district_code FROM demands
),
ranked AS (
  SELECT
    k.instrument, k.division, k.district_code, v.bank_code,
    v.loans AS matched_loans,
    v.amount AS matched_amount,
    COALESCE(t.loans, 0) AS local_loans,
    COALESCE(t.amount, 0) AS local_amount,
    ROW_NUMBER() OVER (
      PARTITION BY k.instrument, k.division, k.district_code
      ORDER BY COALESCE(t.amount, 0) DESC, v.amount DESC, v.bank_code
    ) AS rank
  FROM kinds k
  JOIN by_division v ON v.instrument = k.instrument AND v.division = k.division
  LEFT JOIN by_district t
    ON t.instrument = k.instrument AND t.division = k.division
   AND t.district_code = k.district_code AND t.bank_code = v.bank_code
)
SELECT
  dm.quarter, dm.demand_id, dm.uscc, dm.instrument, dm.division, dm.district_code, r.rank, r.bank_code,
  r.matched_loans,
  CAST(r.matched_amount AS DECIMAL(20, 2)) AS matched_amount,
  r.local_loans,
  CAST(r.local_amount AS DECIMAL(20, 2)) AS local_amount,
  '近' || CAST({{recommendation_lookback_quarters}} AS VARCHAR) || '个季度向' || dm.division || '行业企业发放匹配贷款 '
    || CAST(r.matched_loans AS VARCHAR) || ' 笔 ' || CAST(CAST(r.matched_amount AS DECIMAL(20, 2)) AS VARCHAR) || ' 元，其中同区县 '
    || CAST(r.local_loans AS VARCHAR) || ' 笔' AS reason
FROM demands dm
JOIN ranked r
  ON r.instrument = dm.instrument AND r.division = dm.division AND r.district_code = dm.district_code
WHERE r.rank <= 3
