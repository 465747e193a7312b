-- Bond and equity financing raised by industrial enterprises (divisions
-- 06–46, from the registry snapshot of the issue's quarter), per quarter:
-- the base of direct_financing_growth.
-- column: quarter | 季度 | | quarter of the issue date (YYYYQn)
-- column: bond_amount | 债券融资额 | CNY yuan | Σ amount of enterprise_bond, corporate_bond, mtn, cp and abs issues by industrial enterprises
-- column: equity_amount | 股权融资额 | CNY yuan | Σ amount of ipo, follow_on, neeq and regional_equity issues by industrial enterprises
-- column: bond_issuers | 发债企业数 | | distinct industrial issuers of bonds
-- column: equity_issuers | 股权融资企业数 | | distinct industrial issuers of equity
-- ironlake: partition_by = quarter
-- ironlake: lags = 0
SELECT
  d.quarter,
  CAST(COALESCE(SUM(CASE WHEN d.instrument IN ('enterprise_bond', 'corporate_bond', 'mtn', 'cp', 'abs') THEN d.amount END), 0) AS DECIMAL(20, 2)) AS bond_amount,
  CAST(COALESCE(SUM(CASE WHEN d.instrument IN ('ipo', 'follow_on', 'neeq', 'regional_equity') THEN d.amount END), 0) AS DECIMAL(20, 2)) AS equity_amount,
  COUNT(DISTINCT CASE WHEN d.instrument IN ('enterprise_bond', 'corporate_bond', 'mtn', 'cp', 'abs') THEN d.uscc END) AS bond_issuers,
  COUNT(DISTINCT CASE WHEN d.instrument IN ('ipo', 'follow_on', 'neeq', 'regional_equity') THEN d.uscc END) AS equity_issuers
FROM direct_financing d
JOIN enterprises e ON e.uscc = d.uscc AND e.quarter = d.quarter
WHERE CAST(substr(e.industry_code, 1, 2) AS INT) BETWEEN 6 AND 46
GROUP BY d.quarter
