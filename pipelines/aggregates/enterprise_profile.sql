-- 企业画像: one row per enterprise in each quarter's registry snapshot, for
-- the banks at the matching meetings. Registry attributes and tags are those
-- of the quarter's snapshot. "Trailing four quarters" (近四个季度) are the
-- quarter and the three before it: flows (revenue, profit, the expense ratio,
-- bonds and equity raised, open demands submitted) are summed over them;
-- positions (debt ratio, loans, energy and water per output) are the
-- quarter's own. Ratios are computed in double precision and rounded half
-- away from zero to 2 places (4 for the intensities); a ratio is null when
-- its denominator is missing or zero.
-- column: quarter | 季度 | | quarter of the registry snapshot (YYYYQn)
-- column: uscc | 统一社会信用代码 | | enterprise
-- column: name | 企业名称 | | registered name
-- column: district_code | 区县代码 | | district of registration
-- column: division | 行业大类 | | first two digits of industry_code (GB/T 4754-2017)
-- column: size_class | 企业规模 | | large, medium, small or micro
-- column: key_enterprise | 双百重点企业 | | registry flag
-- column: growth_enterprise | 双百成长型企业 | | registry flag
-- column: specialized_sme | 专精特新 | | registry flag
-- column: listing_reserve | 上市后备 | | registry flag
-- column: reported_quarters | 近四季度报表数 | | operating reports in the trailing four quarters (0–4)
-- column: revenue_ttm | 近四季度主营业务收入 | CNY yuan | Σ revenue over the trailing four quarters
-- column: total_profit_ttm | 近四季度利润总额 | CNY yuan | Σ total_profit over the trailing four quarters
-- column: fin_expense_ratio_pct | 财务费用占主营业务成本比 | percent | Σ financial_expenses ÷ Σ main_business_cost × 100 over the trailing four quarters
-- column: debt_ratio_pct | 资产负债率 | percent | total_liabilities ÷ total_assets × 100 in the quarter's report
-- column: loan_balance | 贷款余额 | CNY yuan | Σ balance of the enterprise's loans at the quarter's end
-- column: lending_banks | 贷款银行数 | | distinct banks with a balance > 0 at the quarter's end
-- column: open_demands | 未结融资需求数 | | demands submitted in the trailing four quarters whose status is submitted, screened or recommended
-- column: open_demand_amount | 未结融资需求金额 | CNY yuan | Σ amount of those demands
-- column: bond_raised_ttm | 近四季度债券融资 | CNY yuan | Σ amount of bonds (enterprise_bond, corporate_bond, mtn, cp, abs) issued in the trailing four quarters
-- column: equity_raised_ttm | 近四季度股权融资 | CNY yuan | Σ amount of equity (ipo, follow_on, neeq, regional_equity) issued in the trailing four quarters
-- column: energy_per_10k_yuan | 万元产值能耗 | t standard coal per 10,000 yuan | energy_tce ÷ (output_value ÷ 10,000) in the quarter's report
-- column: water_per_10k_yuan | 万元产值水耗 | m³ per 10,000 yuan | water_m3 ÷ (output_value ÷ 10,000) in the quarter's report
-- ironlake: partition_by = quarter
-- ironlake: lags = 0, 1, 2, 3
-- ironlake: lags(enterprises) = 0
-- ironlake: lags(bank_loans) = 0
WITH ent AS (
  SELECT
    e.quarter, e.uscc, e.name, e.district_code, substr(e.industry_code, 1, 2) AS division, e.size_class,
    COALESCE(e.key_enterprise, false) AS key_enterprise,
    COALESCE(e.growth_enterprise, false) AS growth_enterprise,
    COALESCE(e.specialized_sme, false) AS specialized_sme,
    COALESCE(e.listing_reserve, false) AS listing_reserve,
    CAST(substr(e.quarter, 1, 4) AS INT) * 4 + CAST(substr(e.quarter, 6, 1) AS INT) AS qn
  FROM enterprises e
),
ops AS (
  SELECT o.*, CAST(substr(o.quarter, 1, 4) AS INT) * 4 + CAST(substr(o.quarter, 6, 1) AS INT) AS qn
  FROM operations o
),
-- The trailing window: each report, demand or issue counts towards its own
-- quarter and the three after it (qn + lag), so every window is one
-- equi-join on (uscc, qn) instead of pairing each enterprise's quarters
-- with all of its reports.
lags AS (
  SELECT column1 AS lag FROM (VALUES (0), (1), (2), (3))
),
-- Only the windows of the quarters the registry has (the output quarters
-- when a refresh narrows the inputs) are summed: each wanted quarter with
-- the four report quarters of its window, joined to the reports, so no
-- report is paired with a window nobody asked for.
windows AS (
  SELECT w.qn - l.lag AS report_qn, w.qn
  FROM (SELECT DISTINCT qn FROM ent) w CROSS JOIN lags l
),
ttm AS (
  SELECT
    o.uscc, w.qn,
    COUNT(*) AS reports,
    SUM(o.revenue) AS revenue,
    SUM(o.total_profit) AS profit,
    SUM(o.financial_expenses) AS fin,
    SUM(o.main_business_cost) AS cost
  FROM windows w
  JOIN ops o ON o.qn = w.report_qn
  GROUP BY o.uscc, w.qn
),
-- Distinct banks with a balance > 0: one row per (quarter, uscc, bank) first,
-- for the borrowers in the quarter's registry only (a quarter's loans name
-- about 490K borrowers, its registry 300K enterprises: the others' loans
-- never reach a profile, and grouping them cost more than the semi-join).
loan_banks AS (
  SELECT quarter, uscc, bank_code, SUM(balance) AS balance, MAX(CASE WHEN balance > 0 THEN 1 ELSE 0 END) AS lending
  FROM bank_loans l
  WHERE EXISTS (SELECT 1 FROM enterprises r WHERE r.uscc = l.uscc AND r.quarter = l.quarter)
  GROUP BY quarter, uscc, bank_code
),
loans AS (
  SELECT quarter, uscc, SUM(balance) AS balance, SUM(lending) AS banks
  FROM loan_banks
  GROUP BY quarter, uscc
),
demands AS (
  SELECT d.uscc, CAST(substr(d.quarter, 1, 4) AS INT) * 4 + CAST(substr(d.quarter, 6, 1) AS INT) + l.lag AS qn,
    COUNT(*) AS n, SUM(d.amount) AS amount
  FROM financing_demands d CROSS JOIN lags l
  WHERE d.status IN ('submitted', 'screened', 'recommended')
  GROUP BY 1, 2
),
direct AS (
  SELECT
    f.uscc, CAST(substr(f.quarter, 1, 4) AS INT) * 4 + CAST(substr(f.quarter, 6, 1) AS INT) + l.lag AS qn,
    SUM(CASE WHEN f.instrument IN ('enterprise_bond', 'corporate_bond', 'mtn', 'cp', 'abs') THEN f.amount ELSE 0 END) AS bonds,
    SUM(CASE WHEN f.instrument IN ('ipo', 'follow_on', 'neeq', 'regional_equity') THEN f.amount ELSE 0 END) AS equity
  FROM direct_financing f CROSS JOIN lags l
  GROUP BY 1, 2
)
SELECT
  e.quarter,
  e.uscc,
  e.name,
  e.district_code,
  e.division,
  e.size_class,
  e.key_enterprise,
  e.growth_enterprise,
  e.specialized_sme,
  e.listing_reserve,
  COALESCE(t.reports, 0) AS reported_quarters,
  CAST(t.revenue AS DECIMAL(20, 2)) AS revenue_ttm,
  CAST(t.profit AS DECIMAL(20, 2)) AS total_profit_ttm,
  CAST(ROUND(CAST(t.fin AS DOUBLE) / CAST(NULLIF(t.cost, 0) AS DOUBLE) * 100, 2) AS DECIMAL(10, 2)) AS fin_expense_ratio_pct,
  CAST(ROUND(CAST(c.total_liabilities AS DOUBLE) / CAST(NULLIF(c.total_assets, 0) AS DOUBLE) * 100, 2) AS DECIMAL(10, 2)) AS debt_ratio_pct,
  CAST(COALESCE(l.balance, 0) AS DECIMAL(20, 2)) AS loan_balance,
  COALESCE(l.banks, 0) AS lending_banks,
  COALESCE(d.n, 0) AS open_demands,
  CAST(COALESCE(d.amount, 0) AS DECIMAL(20, 2)) AS open_demand_amount,
  CAST(COALESCE(f.bonds, 0) AS DECIMAL(20, 2)) AS bond_raised_ttm,
  CAST(COALESCE(f.equity, 0) AS DECIMAL(20, 2)) AS equity_raised_ttm,
  CAST(ROUND(CAST(c.energy_tce AS DOUBLE) / (CAST(NULLIF(c.output_value, 0) AS DOUBLE) / 10000), 4) AS DECIMAL(14, 4)) AS energy_per_10k_yuan,
  CAST(ROUND(CAST(c.water_m3 AS DOUBLE) / (CAST(NULLIF(c.output_value, 0) AS DOUBLE) / 10000), 4) AS DECIMAL(14, 4)) AS water_per_10k_yuan
-- The loans are joined from their side (the same rows as the registry LEFT
-- JOIN loans): their hash table is then the small one (uscc and two
-- numbers), and the registry's rows, wide and in uscc order, stream past it.
-- Joined the other way, every loan row picked its registry row out of an
-- 83 MB table in random order: 320 ms of the 1.0 s a quarter took.
FROM loans l
RIGHT JOIN (
  ent e
  LEFT JOIN ttm t ON t.qn = e.qn AND t.uscc = e.uscc
  LEFT JOIN ops c ON c.quarter = e.quarter AND c.uscc = e.uscc
) ON l.quarter = e.quarter AND l.uscc = e.uscc
LEFT JOIN demands d ON d.qn = e.qn AND d.uscc = e.uscc
LEFT JOIN direct f ON f.qn = e.qn AND f.uscc = e.uscc
