-- Ten analyst queries over the warehouse tables, each ending with a semicolon.
-- Q1 loan balance and count by quarter
SELECT quarter, count(*) AS loans, sum(balance) AS balance FROM bank_loans GROUP BY quarter ORDER BY quarter;
-- Q2 balance by bank at the end of 2019
SELECT bank_code, sum(balance) AS balance, count(*) AS loans FROM bank_loans WHERE quarter = '2019Q4' GROUP BY bank_code ORDER BY balance DESC;
-- Q3 balance-weighted rate by term and quarter
SELECT quarter, term, sum(balance * rate_pct) / sum(balance) AS avg_rate FROM bank_loans WHERE balance > 0 GROUP BY quarter, term ORDER BY quarter, term;
-- Q4 top 20 borrowers at the end of 2019, with their names and districts
SELECT l.uscc, e.name, e.district_code, sum(l.balance) AS balance FROM bank_loans l JOIN enterprises e ON e.uscc = l.uscc AND e.quarter = l.quarter WHERE l.quarter = '2019Q4' GROUP BY l.uscc, e.name, e.district_code ORDER BY balance DESC LIMIT 20;
-- Q5 balance by district and industry division, 2019Q4
SELECT e.district_code, substr(e.industry_code, 1, 2) AS division, sum(l.balance) AS balance FROM bank_loans l JOIN enterprises e ON e.uscc = l.uscc AND e.quarter = l.quarter WHERE l.quarter = '2019Q4' GROUP BY 1, 2 ORDER BY balance DESC LIMIT 50;
-- Q6 guarantee mix by quarter
SELECT quarter, guarantee, count(*) AS loans, sum(balance) AS balance FROM bank_loans GROUP BY quarter, guarantee ORDER BY quarter, guarantee;
-- Q7 new lending by product and quarter
SELECT quarter, product, count(*) AS loans, sum(disbursed) AS disbursed FROM bank_loans WHERE disbursed > 0 GROUP BY quarter, product ORDER BY quarter, product;
-- Q8 distinct borrowers per quarter
SELECT quarter, count(DISTINCT uscc) AS borrowers FROM bank_loans GROUP BY quarter ORDER BY quarter;
-- Q9 expensive loans (rate above 6%) by bank in 2019
SELECT bank_code, count(*) AS loans, sum(balance) AS balance FROM bank_loans WHERE quarter IN ('2019Q1', '2019Q2', '2019Q3', '2019Q4') AND rate_pct > 6 GROUP BY bank_code ORDER BY loans DESC;
-- Q10 small-firm lending share by district, 2019Q4
SELECT e.district_code, sum(CASE WHEN e.size_class IN ('small', 'micro') THEN l.balance ELSE 0 END) / sum(l.balance) AS small_share FROM bank_loans l JOIN enterprises e ON e.uscc = l.uscc AND e.quarter = l.quarter WHERE l.quarter = '2019Q4' GROUP BY e.district_code ORDER BY small_share DESC;
