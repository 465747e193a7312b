"""Computes each published indicator with independently written DuckDB SQL
over the warehouse's table files and compares it with what ironlake
published, value by value (decimals compared exactly, as decimals).
Usage: crosscheck.py WAREHOUSE POLICY_JSON (the [policy] values as SQL literals)"""
import json
import sys

import duckdb


def connect(root):
    """A DuckDB connection with views over the warehouse's table files."""
    con = duckdb.connect()
    for t in ["enterprises", "operations", "bank_loans", "financing_demands", "direct_financing"]:
        con.sql(f"create view {t} as select * from read_parquet('{root}/tables/{t}/*/*.parquet', hive_partitioning=true)")
    # Industry by the registry snapshot at the quarter's last day (joined on dates, not on the quarter label).
    con.sql("create view ind as select uscc, as_of, district_code, industry_code, name, cast(industry_code[1:2] as integer) as division from enterprises")
    return con


qend = "(date_trunc('quarter', {d}) + interval 3 month - interval 1 day)::date"
prev_q = "(cast(substr({q}, 1, 4) as integer) - 1)::varchar || substr({q}, 5)"
bonds = "('enterprise_bond','corporate_bond','mtn','cp','abs')"
equity = "('ipo','follow_on','neeq','regional_equity')"


def expected_sql(policy):
  """The indicators as independently written DuckDB SQL: name -> (key columns, SQL)."""
  div_list = policy["strategic_divisions"]
  share, cap = policy["interest_subsidy_share_pct"], policy["interest_subsidy_cap_yuan"]
  fee_ceiling, fee_pp = policy["guarantee_fee_ceiling_pct"], policy["guarantee_fee_subsidy_pp"]
  dual_share, dual_cap = policy["dual_hundred_subsidy_share_pct"], policy["dual_hundred_subsidy_cap_yuan"]
  within, ratio = policy["screening_report_within_quarters"], policy["screening_max_amount_to_revenue"]
  lookback = policy["recommendation_lookback_quarters"]
  quarter_of = "strftime({d}, '%Y') || 'Q' || quarter({d})"
  qnum = "(year({d}) * 4 + quarter({d}))"
  return {
    "loan_growth": (["quarter"], f"""
        with b as (
          select l.period_end, strftime(l.period_end, '%Y') || 'Q' || quarter(l.period_end) as quarter,
                 coalesce(sum(l.balance) filter (where e.division between 6 and 46), 0) as ind,
                 coalesce(sum(l.balance) filter (where e.division between 13 and 43), 0) as mfg
          from bank_loans l join ind e on e.uscc = l.uscc and e.as_of = l.period_end
          group by all)
        select c.quarter,
               c.ind::decimal(20,2) as industry_balance,
               c.mfg::decimal(20,2) as manufacturing_balance,
               round((c.ind::double / nullif(p.ind, 0)::double - 1) * 100, 2)::decimal(10,2) as industry_yoy_pct,
               round((c.mfg::double / nullif(p.mfg, 0)::double - 1) * 100, 2)::decimal(10,2) as manufacturing_yoy_pct,
               (round((c.mfg::double / nullif(p.mfg, 0)::double - 1) * 100, 2)::decimal(10,2)
                 - round((c.ind::double / nullif(p.ind, 0)::double - 1) * 100, 2)::decimal(10,2))::decimal(10,2) as gap_pp
        from b c left join b p on p.period_end = (c.period_end - interval 1 year + interval 1 day - interval 1 day)
             and p.quarter = {prev_q.format(q='c.quarter')}
    """),
    "direct_financing_growth": (["quarter"], f"""
        with b as (
          select strftime(d.issued_on, '%Y') || 'Q' || quarter(d.issued_on) as quarter,
                 coalesce(sum(d.amount) filter (where d.instrument in {bonds}), 0) as bond,
                 coalesce(sum(d.amount) filter (where d.instrument in {equity}), 0) as eq,
                 count(distinct d.uscc) filter (where d.instrument in {bonds}) as bi,
                 count(distinct d.uscc) filter (where d.instrument in {equity}) as ei
          from direct_financing d join ind e on e.uscc = d.uscc and e.as_of = {qend.format(d='d.issued_on')}
          where e.division between 6 and 46
          group by all)
        select c.quarter, c.bond::decimal(20,2) as bond_amount, c.eq::decimal(20,2) as equity_amount,
               round((c.bond::double / nullif(p.bond, 0)::double - 1) * 100, 2)::decimal(10,2) as bond_yoy_pct,
               round((c.eq::double / nullif(p.eq, 0)::double - 1) * 100, 2)::decimal(10,2) as equity_yoy_pct,
               c.bi as bond_issuers, c.ei as equity_issuers
        from b c left join b p on p.quarter = {prev_q.format(q='c.quarter')}
    """),
    "financing_cost": (["quarter", "district_code"], f"""
        with e as (select uscc, as_of, district_code from ind where division between 6 and 46),
        o as (
          select o.quarter, coalesce(e.district_code, 'ALL') as d, sum(o.financial_expenses) as fin, sum(o.main_business_cost) as cost
          from operations o join e on e.uscc = o.uscc and e.as_of = o.period_end
          group by grouping sets ((o.quarter, e.district_code), (o.quarter))),
        l as (
          select l.quarter, coalesce(e.district_code, 'ALL') as d, sum(l.balance) as w,
                 sum(l.balance * l.rate_pct) as wr, sum(l.balance * (l.rate_pct + coalesce(l.guarantee_fee_pct, 0))) as wc
          from bank_loans l join e on e.uscc = l.uscc and e.as_of = l.period_end
          where l.balance > 0
          group by grouping sets ((l.quarter, e.district_code), (l.quarter)))
        select coalesce(o.quarter, l.quarter) as quarter, coalesce(o.d, l.d) as district_code,
               round(o.fin::double / nullif(o.cost, 0)::double * 100, 2)::decimal(10,2) as fin_expense_ratio_pct,
               round(l.wr::double / nullif(l.w, 0)::double, 4)::decimal(10,4) as avg_loan_rate_pct,
               round(l.wc::double / nullif(l.w, 0)::double, 4)::decimal(10,4) as avg_comprehensive_cost_pct
        from o full join l on o.quarter = l.quarter and o.d = l.d
    """),
    "demand_funnel": (["quarter", "district_code", "project_category"], f"""
        select d.quarter, coalesce(e.district_code, 'unknown') as district_code, d.project_category,
               count(*) as demands, sum(d.amount)::decimal(20,2) as amount,
               count(*) filter (where status = 'submitted') as n_submitted,
               count(*) filter (where status = 'screened') as n_screened,
               count(*) filter (where status = 'recommended') as n_recommended,
               count(*) filter (where status = 'accepted') as n_accepted,
               count(*) filter (where status = 'credit_granted') as n_credit_granted,
               count(*) filter (where status = 'funded') as n_funded,
               count(*) filter (where status = 'rejected') as n_rejected,
               count(*) filter (where status = 'withdrawn') as n_withdrawn,
               coalesce(sum(amount) filter (where status in ('submitted','screened','recommended')), 0)::decimal(20,2) as amount_open,
               coalesce(sum(amount) filter (where status in ('accepted','credit_granted')), 0)::decimal(20,2) as amount_in_progress,
               coalesce(sum(amount) filter (where status = 'funded'), 0)::decimal(20,2) as amount_funded_requested,
               coalesce(sum(amount) filter (where status in ('rejected','withdrawn')), 0)::decimal(20,2) as amount_closed,
               coalesce(sum(funded_amount) filter (where status = 'funded'), 0)::decimal(20,2) as funded_amount,
               round((count(*) filter (where status = 'funded'))::double * 100 / count(*)::double, 2)::decimal(10,2) as match_rate_pct,
               round(quantile_cont(date_diff('day', submitted_on, status_on)::double, 0.5) filter (where status = 'funded'), 1)::decimal(8,1) as median_days_to_funding
        from financing_demands d left join ind e on e.uscc = d.uscc and e.as_of = {qend.format(d='d.submitted_on')}
        group by all
    """),
    "matching_list": (["demand_id"], f"""
        with latest as (select * from enterprises qualify row_number() over (partition by uscc order by as_of desc) = 1),
        o as (
          select d.*, e.name, e.district_code, e.industry_code, e.size_class,
                 coalesce(e.key_enterprise, false) as k, coalesce(e.growth_enterprise, false) as g,
                 coalesce(e.specialized_sme, false) as s, coalesce(e.listing_reserve, false) as lr,
                 3 * k::int + 2 * g::int + 2 * s::int + lr::int
                   + (case when d.project_category != 'none' then 2 else 0 end)
                   + (case when d.status = 'recommended' then 1 else 0 end) as priority
          from financing_demands d left join latest e using (uscc)
          where d.status in ('submitted', 'screened', 'recommended'))
        select quarter, row_number() over (order by priority desc, submitted_on, demand_id) as rank, priority, demand_id, uscc, name,
               district_code, industry_code, size_class, k as key_enterprise, g as growth_enterprise, s as specialized_sme,
               lr as listing_reserve, project_category, purpose, instrument, amount, term_months, status, status_on, submitted_on, bank_code,
               date_diff('day', submitted_on, (select max(status_on) from financing_demands)) as days_open
        from o
    """),
    "interest_subsidy": (["quarter", "uscc"], f"""
        with b as (
          select l.quarter, l.uscc, e.name, e.district_code, e.industry_code[1:2] as division,
                 sum(l.disbursed)::decimal(18,2) as new_loans,
                 (sum(l.disbursed * l.rate_pct) * 0.01)::decimal(18,2) as first_year_interest
          from bank_loans l join ind e on e.uscc = l.uscc and e.as_of = l.period_end
          where l.disbursed > 0 and e.industry_code[1:2] in ({div_list})
          group by all)
        select *, {share}::decimal(5,2) as subsidy_share_pct,
               least({cap}::decimal(18,2), (first_year_interest * {share} * 0.01)::decimal(18,2)) as subsidy,
               (first_year_interest * {share} * 0.01)::decimal(18,2) > {cap}::decimal(18,2) as capped
        from b
    """),
    "bank_lending": (["quarter", "bank_code"], f"""
        with l as (
          select l.*, {quarter_of.format(d='l.period_end')} as q, e.division between 13 and 43 as mfg
          from bank_loans l join ind e on e.uscc = l.uscc and e.as_of = l.period_end
          where e.division between 6 and 46),
        b as (
          select q, coalesce(bank_code, 'ALL') as bank_code, sum(balance) as ib,
                 coalesce(sum(balance) filter (where mfg), 0) as mb, sum(disbursed) as nd,
                 coalesce(sum(balance) filter (where guarantee = 'credit'), 0) as cb,
                 coalesce(sum(balance) filter (where term = 'medium_long'), 0) as mlb,
                 sum(balance * rate_pct) filter (where balance > 0) as wr,
                 sum(balance) filter (where balance > 0) as w, count(*) as n
          from l group by grouping sets ((q, bank_code), (q)))
        select c.q as quarter, c.bank_code, c.ib::decimal(20,2) as industry_balance, c.mb::decimal(20,2) as manufacturing_balance,
               round((c.ib::double / nullif(p.ib, 0)::double - 1) * 100, 2)::decimal(10,2) as industry_yoy_pct,
               c.nd::decimal(20,2) as new_industry_loans,
               round(c.cb::double / nullif(c.ib, 0)::double * 100, 2)::decimal(10,2) as credit_share_pct,
               round(c.mlb::double / nullif(c.ib, 0)::double * 100, 2)::decimal(10,2) as medium_long_share_pct,
               round(c.wr::double / nullif(c.w, 0)::double, 4)::decimal(10,4) as avg_rate_pct,
               c.n as loans
        from b c left join b p on p.bank_code = c.bank_code and p.q = {prev_q.format(q='c.q')}
    """),
    "guarantee_fee_subsidy": (["quarter", "uscc"], f"""
        select {quarter_of.format(d='l.period_end')} as quarter, l.uscc, e.name, e.district_code, e.industry_code[1:2] as division,
               e.size_class, count(*) as loans, sum(l.disbursed)::decimal(18,2) as guaranteed_new_loans,
               (sum(l.disbursed * l.guarantee_fee_pct) * 0.01)::decimal(18,2) as guarantee_fee,
               {fee_ceiling}::decimal(9,4) as fee_ceiling_pct, {fee_pp}::decimal(9,4) as subsidy_pp,
               (sum(l.disbursed * least(l.guarantee_fee_pct, {fee_pp}::decimal(9,4))) * 0.01)::decimal(18,2) as subsidy
        from bank_loans l join enterprises e on e.uscc = l.uscc and e.as_of = l.period_end
        where l.guarantee = 'guaranteed' and l.guarantee_fee_pct is not null
          and l.guarantee_fee_pct <= {fee_ceiling}::decimal(9,4) and l.disbursed > 0
          and e.size_class in ('medium', 'small', 'micro')
        group by all
    """),
    "working_capital_subsidy": (["quarter", "uscc"], f"""
        with b as (
          select {quarter_of.format(d='l.period_end')} as quarter, l.uscc, e.name, e.district_code, e.industry_code[1:2] as division,
                 coalesce(e.key_enterprise, false) as key_enterprise, coalesce(e.growth_enterprise, false) as growth_enterprise,
                 count(*) as loans, sum(l.balance)::decimal(18,2) as short_term_balance,
                 (sum(l.balance * l.rate_pct) * 0.0025)::decimal(18,2) as quarter_interest
          from bank_loans l join enterprises e on e.uscc = l.uscc and e.as_of = l.period_end
          where l.term = 'short' and l.balance > 0 and (e.key_enterprise or e.growth_enterprise)
          group by all)
        select *, {dual_share}::decimal(5,2) as subsidy_share_pct,
               least({dual_cap}::decimal(18,2), (quarter_interest * {dual_share} * 0.01)::decimal(18,2)) as subsidy,
               (quarter_interest * {dual_share} * 0.01)::decimal(18,2) > {dual_cap}::decimal(18,2) as capped
        from b
    """),
    "energy_water_intensity": (["quarter", "district_code", "division"], f"""
        with x as (
          select {quarter_of.format(d='o.period_end')} as q, e.district_code as d, e.industry_code[1:2] as dv, o.*
          from operations o join ind e on e.uscc = o.uscc and e.as_of = o.period_end
          where e.division between 6 and 46),
        b as (
          select q, coalesce(d, 'ALL') as d, coalesce(dv, 'ALL') as dv, count(*) as n,
                 sum(energy_tce) as en, sum(water_m3) as wa, sum(output_value) as ou
          from x group by grouping sets ((q, d, dv), (q, d), (q, dv), (q))),
        r as (select *, en::double / (nullif(ou, 0)::double / 10000) as ei, wa::double / (nullif(ou, 0)::double / 10000) as wi from b)
        select c.q as quarter, c.d as district_code, c.dv as division, c.n as enterprises,
               c.en::decimal(20,2) as energy_tce, c.wa::decimal(20,2) as water_m3, c.ou::decimal(20,2) as output_value,
               round(c.ei, 4)::decimal(14,4) as energy_per_10k_yuan, round(c.wi, 4)::decimal(14,4) as water_per_10k_yuan,
               round((c.ei / nullif(p.ei, 0) - 1) * 100, 2)::decimal(10,2) as energy_intensity_yoy_pct,
               round((c.wi / nullif(p.wi, 0) - 1) * 100, 2)::decimal(10,2) as water_intensity_yoy_pct
        from r c left join r p on p.d = c.d and p.dv = c.dv and p.q = {prev_q.format(q='c.q')}
    """),
    # Trailing four quarters by dates here (the report's date within a year up to the snapshot), by quarter numbers in ironlake.
    "enterprise_profile": (["quarter", "uscc"], f"""
        with t as (
          select e.uscc, e.as_of, count(*) as n, sum(o.revenue) as rev, sum(o.total_profit) as pr,
                 sum(o.financial_expenses) as fin, sum(o.main_business_cost) as cost
          from enterprises e join operations o
            on o.uscc = e.uscc and o.period_end > e.as_of - interval 1 year and o.period_end <= e.as_of
          group by all),
        l as (
          select uscc, period_end, sum(balance) as bal, count(distinct bank_code) filter (where balance > 0) as banks
          from bank_loans group by all),
        d as (
          select e.uscc, e.as_of, count(*) as n, sum(d.amount) as amt
          from enterprises e join financing_demands d
            on d.uscc = e.uscc and d.submitted_on > e.as_of - interval 1 year and d.submitted_on <= e.as_of
          where d.status in ('submitted', 'screened', 'recommended')
          group by all),
        f as (
          select e.uscc, e.as_of,
                 coalesce(sum(f.amount) filter (where f.instrument in {bonds}), 0) as b,
                 coalesce(sum(f.amount) filter (where f.instrument in {equity}), 0) as eq
          from enterprises e join direct_financing f
            on f.uscc = e.uscc and f.issued_on > e.as_of - interval 1 year and f.issued_on <= e.as_of
          group by all)
        select {quarter_of.format(d='e.as_of')} as quarter, e.uscc, e.name, e.district_code, e.industry_code[1:2] as division,
               e.size_class, coalesce(e.key_enterprise, false) as key_enterprise,
               coalesce(e.growth_enterprise, false) as growth_enterprise,
               coalesce(e.specialized_sme, false) as specialized_sme, coalesce(e.listing_reserve, false) as listing_reserve,
               coalesce(t.n, 0) as reported_quarters, t.rev::decimal(20,2) as revenue_ttm, t.pr::decimal(20,2) as total_profit_ttm,
               round(t.fin::double / nullif(t.cost, 0)::double * 100, 2)::decimal(10,2) as fin_expense_ratio_pct,
               round(o.total_liabilities::double / nullif(o.total_assets, 0)::double * 100, 2)::decimal(10,2) as debt_ratio_pct,
               coalesce(l.bal, 0)::decimal(20,2) as loan_balance, coalesce(l.banks, 0) as lending_banks,
               coalesce(d.n, 0) as open_demands, coalesce(d.amt, 0)::decimal(20,2) as open_demand_amount,
               coalesce(f.b, 0)::decimal(20,2) as bond_raised_ttm, coalesce(f.eq, 0)::decimal(20,2) as equity_raised_ttm,
               round(o.energy_tce::double / (nullif(o.output_value, 0)::double / 10000), 4)::decimal(14,4) as energy_per_10k_yuan,
               round(o.water_m3::double / (nullif(o.output_value, 0)::double / 10000), 4)::decimal(14,4) as water_per_10k_yuan
        from enterprises e
        left join t on t.uscc = e.uscc and t.as_of = e.as_of
        left join operations o on o.uscc = e.uscc and o.period_end = e.as_of
        left join l on l.uscc = e.uscc and l.period_end = e.as_of
        left join d on d.uscc = e.uscc and d.as_of = e.as_of
        left join f on f.uscc = e.uscc and f.as_of = e.as_of
    """),
    # Quarter arithmetic on dates here (year × 4 + quarter), on quarter labels in ironlake.
    "demand_screening": (["demand_id"], f"""
        with latest as (select * from enterprises qualify row_number() over (partition by uscc order by as_of desc) = 1),
        d as (select *, {qnum.format(d='submitted_on')} as qn, {quarter_of.format(d='submitted_on')} as q
              from financing_demands where status in ('submitted', 'screened', 'recommended')),
        ro as (select d.demand_id, {quarter_of.format(d='o.period_end')} as q, {qnum.format(d='o.period_end')} as qn, o.revenue,
                      row_number() over (partition by d.demand_id order by o.period_end desc) as k
               from d join operations o on o.uscc = d.uscc and {qnum.format(d='o.period_end')} <= d.qn),
        r as (select demand_id, max(q) as latest, max(qn) as latest_qn, sum(revenue) as rev from ro where k <= 4 group by demand_id),
        s as (
          select d.q as quarter, d.demand_id, d.uscc, e.name, e.district_code, e.industry_code[1:2] as division,
                 d.amount, d.instrument, d.project_category,
                 coalesce(e.industry_code[1:2] in ({div_list}), false) as strategic_industry,
                 coalesce(e.specialized_sme, false) as specialized_sme,
                 coalesce(e.key_enterprise, false) or coalesce(e.growth_enterprise, false) as dual_hundred,
                 d.project_category != 'none' as five_projects,
                 r.latest as latest_report_quarter,
                 coalesce(r.latest_qn >= d.qn - {within}, false) as data_current,
                 r.rev::decimal(20,2) as revenue_4q,
                 coalesce(r.rev > 0 and d.amount <= r.rev * {ratio}::decimal(9,2), false) as amount_plausible
          from d left join latest e on e.uscc = d.uscc left join r on r.demand_id = d.demand_id)
        select *, strategic_industry or specialized_sme or dual_hundred as three_kinds,
               case when not data_current or not amount_plausible then 'review'
                    when strategic_industry or specialized_sme or dual_hundred or five_projects then 'priority'
                    else 'eligible' end as result,
               concat_ws('；',
                 case when strategic_industry then '三类企业: 战略性产业 ' || division end,
                 case when specialized_sme then '三类企业: 专精特新' end,
                 case when dual_hundred then '三类企业: 双百企业' end,
                 case when five_projects then '五类项目: ' || project_category end,
                 case when latest_report_quarter is null then '无经营报表 (no operating report)'
                      when not data_current then '数据未更新: 最近报表 ' || latest_report_quarter end,
                 case when revenue_4q is null or revenue_4q <= 0 then '无营业收入 (no revenue reported)'
                      when not amount_plausible then '金额超过近四期营业收入的 {ratio} 倍' end) as reasons
        from s
    """),
    "demand_recommendations": (["demand_id", "rank"], f"""
        with latest as (select uscc, district_code, industry_code[1:2] as division from enterprises
                        qualify row_number() over (partition by uscc order by as_of desc) = 1),
        d as (select {quarter_of.format(d='f.submitted_on')} as quarter, f.demand_id, f.uscc, f.instrument, e.division, e.district_code
              from financing_demands f join latest e on e.uscc = f.uscc
              where f.status in ('submitted', 'screened', 'recommended')
                and f.instrument in ('loan', 'syndicated', 'receivables_pledge', 'ip_pledge')),
        lq as (select max({qnum.format(d='period_end')}) as qn from bank_loans),
        g as (select l.bank_code, l.disbursed, l.guarantee, l.product, b.industry_code[1:2] as division, b.district_code
              from bank_loans l join enterprises b on b.uscc = l.uscc and b.as_of = l.period_end, lq
              where l.disbursed > 0 and {qnum.format(d='l.period_end')} > lq.qn - {lookback}),
        c as (select d.quarter, d.demand_id, d.uscc, d.instrument, d.division, d.district_code, g.bank_code,
                     count(*) as matched_loans, sum(g.disbursed) as matched_amount,
                     count(*) filter (where g.district_code = d.district_code) as local_loans,
                     coalesce(sum(g.disbursed) filter (where g.district_code = d.district_code), 0) as local_amount
              from d join g on g.division = d.division
              where d.instrument = 'loan'
                 or (d.instrument = 'syndicated' and g.product = 'syndicated')
                 or (d.instrument = 'receivables_pledge' and (g.guarantee = 'pledge_receivables' or g.product = 'supply_chain'))
                 or (d.instrument = 'ip_pledge' and g.guarantee = 'pledge_ip')
              group by all),
        r as (select *, row_number() over (partition by demand_id order by local_amount desc, matched_amount desc, bank_code) as rank from c)
        select quarter, demand_id, uscc, instrument, division, district_code, rank, bank_code, matched_loans,
               matched_amount::decimal(20,2) as matched_amount, local_loans, local_amount::decimal(20,2) as local_amount,
               '近' || {lookback} || '个季度向' || division || '行业企业发放匹配贷款 ' || matched_loans || ' 笔 '
                 || matched_amount::decimal(20,2)::varchar || ' 元，其中同区县 ' || local_loans || ' 笔' as reason
        from r where rank <= 3
    """),
  }


def norm(v):
    if v is None:
        return None
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)


def main(root, policy):
  con = connect(root)
  out = {}
  for name, (key, sql) in expected_sql(policy).items():
      expected = con.sql(sql)
      cols = expected.columns
      exp_rows = {tuple(norm(r[cols.index(k)]) for k in key): r for r in expected.fetchall()}
      pub = con.sql(f"select * from read_parquet('{root}/published/{name}/*/*.parquet', hive_partitioning=true)")
      pcols = pub.columns
      pub_rows = {tuple(norm(r[pcols.index(k)]) for k in key): r for r in pub.fetchall()}
      mismatches = []
      for k in sorted(set(exp_rows) | set(pub_rows), key=str):
          e, p = exp_rows.get(k), pub_rows.get(k)
          if e is None or p is None:
              mismatches.append({"key": k, "duckdb": e is not None, "ironlake": p is not None})
              continue
          for c in cols:
              if c not in pcols:
                  mismatches.append({"key": k, "missing_column": c})
                  continue
              ev, pv = norm(e[cols.index(c)]), norm(p[pcols.index(c)])
              if ev != pv:
                  mismatches.append({"key": k, "column": c, "duckdb": ev, "ironlake": pv})
          if len(mismatches) > 20:
              break
      out[name] = {"rows": len(exp_rows), "mismatches": mismatches[:20]}
  json.dump(out, sys.stdout, default=str)


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
