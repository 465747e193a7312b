-- 能耗水耗信息披露: energy and water use per 10,000 yuan of industrial output,
-- industrial enterprises only (divisions 06–46 in the registry snapshot of the
-- same quarter), per quarter, district (plus 'ALL') and industry division
-- (plus 'ALL'). Sums are exact; the intensities are computed in double
-- precision and rounded half away from zero to 4 places, their yoy to 2; a
-- yoy is null without the same district and division a year earlier or when
-- its intensity was zero or undefined (no output).
-- column: quarter | 季度 | | quarter of the operating reports (YYYYQn)
-- column: district_code | 区县代码 | | district of registration, or ALL for the whole city
-- column: division | 行业大类 | | GB/T 4754-2017 division (two digits), or ALL for all industry
-- column: enterprises | 企业数 | | operating reports summed
-- column: energy_tce | 综合能耗 | t standard coal | Σ energy_tce
-- column: water_m3 | 用水量 | m³ | Σ water_m3
-- column: output_value | 工业总产值 | CNY yuan | Σ output_value
-- column: energy_per_10k_yuan | 万元产值能耗 | t standard coal per 10,000 yuan | Σ energy_tce ÷ (Σ output_value ÷ 10,000)
-- column: water_per_10k_yuan | 万元产值水耗 | m³ per 10,000 yuan | Σ water_m3 ÷ (Σ output_value ÷ 10,000)
-- column: energy_intensity_yoy_pct | 万元产值能耗同比 | percent | (energy_per_10k_yuan ÷ the same a year earlier − 1) × 100, from unrounded values
-- column: water_intensity_yoy_pct | 万元产值水耗同比 | percent | (water_per_10k_yuan ÷ the same a year earlier − 1) × 100, from unrounded values
-- ironlake: partition_by = quarter
-- ironlake: lags = 0, 4
-- One pass: the join is computed once and grouped four ways (GROUPING
-- SETS); the year-earlier intensities come from a window over the quarter
-- number (RANGE 4 PRECEDING is exactly the same quarter a year before, and
-- null when that quarter has no row), not from a self-join that would
-- compute everything twice.
WITH j AS (
  SELECT o.quarter, e.district_code, substr(e.industry_code, 1, 2) AS division, o.energy_tce, o.water_m3, o.output_value
  FROM operations o
  JOIN enterprises e ON e.uscc = o.uscc AND e.quarter = o.quarter
  WHERE CAST(substr(e.industry_code, 1, 2) AS INT) BETWEEN 6 AND 46
),
grouped AS (
  SELECT
    quarter,
    CASE WHEN GROUPING(district_code) = 1 THEN 'ALL' ELSE district_code END AS district_code,
    CASE WHEN GROUPING(division) = 1 THEN 'ALL' ELSE division END AS division,
    COUNT(*) AS n,
    SUM(energy_tce) AS energy,
    SUM(water_m3) AS water,
    SUM(output_value) AS output
  FROM j
  GROUP BY GROUPING SETS ((quarter, district_code, division), (quarter, district_code), (quarter, division), (quarter))
),
r AS (
  SELECT
    quarter, district_code, division, n, energy, water, output,
    CAST(substr(quarter, 1, 4) AS INT) * 4 + CAST(substr(quarter, 6, 1) AS INT) AS qn,
    CAST(energy AS DOUBLE) / (CAST(NULLIF(output, 0) AS DOUBLE) / 10000) AS ei,
    CAST(water AS DOUBLE) / (CAST(NULLIF(output, 0) AS DOUBLE) / 10000) AS wi
  FROM grouped
),
c AS (
  SELECT
    r.*,
    FIRST_VALUE(ei) OVER (PARTITION BY district_code, division ORDER BY qn RANGE BETWEEN 4 PRECEDING AND 4 PRECEDING) AS prev_ei,
    FIRST_VALUE(wi) OVER (PARTITION BY district_code, division ORDER BY qn RANGE BETWEEN 4 PRECEDING AND 4 PRECEDING) AS prev_wi
  FROM r
)
SELECT
  c.quarter,
  c.district_code,
  c.division,
  c.n AS enterprises,
  CAST(c.energy AS DECIMAL(20, 2)) AS energy_tce,
  CAST(c.water AS DECIMAL(20, 2)) AS water_m3,
  CAST(c.output AS DECIMAL(20, 2)) AS output_value,
  CAST(ROUND(c.ei, 4) AS DECIMAL(14, 4)) AS energy_per_10k_yuan,
  CAST(ROUND(c.wi, 4) AS DECIMAL(14, 4)) AS water_per_10k_yuan,
  CAST(ROUND((c.ei / NULLIF(c.prev_ei, 0) - 1) * 100, 2) AS DECIMAL(10, 2)) AS energy_intensity_yoy_pct,
  CAST(ROUND((c.wi / NULLIF(c.prev_wi, 0) - 1) * 100, 2) AS DECIMAL(10, 2)) AS water_intensity_yoy_pct
FROM c
