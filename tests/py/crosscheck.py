"""Computes each published indicator with independently written DuckDB SQL
over the warehouse's table files and compares it with what ironlake
published, value by value (decimals compared exactly, as decimals).
Usage: crosscheck.py WAREHOUSE STRATEGIC_DIVISIONS SHARE_PCT CAP_YUAN"""
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


def expected_sql(divisions, share, cap):
  """The six indicators as independently written DuckDB SQL: name -> (key columns, SQL)."""
  div_list = ",".join(f"'{d}'" for d in divisions)
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
  }


def norm(v):
    if v is None:
        return None
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)


def main(root, divisions, share, cap):
  con = connect(root)
  out = {}
  for name, (key, sql) in expected_sql(divisions, share, cap).items():
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
    main(sys.argv[1], sys.argv[2].split(","), sys.argv[3], sys.argv[4])
