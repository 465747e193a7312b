-- Loan balances to industry (工业, GB/T 4754 divisions 06–46) and to
-- manufacturing (制造业, 13–43) at each quarter end: the base of loan_growth.
-- A borrower's division comes from the registry snapshot of the same
-- quarter; loans to borrowers missing from that snapshot count in neither.
-- column: quarter | 季度 | | quarter of the loans' reporting date (YYYYQn)
-- column: industry_balance | 工业贷款余额 | CNY yuan | Σ balance of loans to industrial borrowers (divisions 06–46)
-- column: manufacturing_balance | 制造业贷款余额 | CNY yuan | Σ balance of loans to manufacturing borrowers (divisions 13–43)
-- column: loans | 贷款笔数 | | loans whose borrower is in the quarter's registry snapshot
-- ironlake: partition_by = quarter
-- ironlake: lags = 0
SELECT
  l.quarter,
  CAST(SUM(CASE WHEN CAST(substr(e.industry_code, 1, 2) AS INT) BETWEEN 6 AND 46 THEN l.balance ELSE 0 END) AS DECIMAL(20, 2)) AS industry_balance,
  CAST(SUM(CASE WHEN CAST(substr(e.industry_code, 1, 2) AS INT) BETWEEN 13 AND 43 THEN l.balance ELSE 0 END) AS DECIMAL(20, 2)) AS manufacturing_balance,
  COUNT(*) AS loans
FROM bank_loans l
JOIN enterprises e ON e.uscc = l.uscc AND e.quarter = l.quarter
GROUP BY l.quarter
