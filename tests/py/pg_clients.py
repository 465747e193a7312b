"""Real PostgreSQL clients against a running `ironlake run`.

Usage: pg_clients.py HOST PORT ANALYST_TOKEN VIEWER_TOKEN

psycopg 3 (parameters, exact decimals, dates, NULLs, Chinese text, a
server-side cursor streaming 1M rows, refusals that leave the session
usable), SQLAlchemy's inspector, pandas.read_sql, and the introspection
queries Grafana's and Metabase's PostgreSQL connectors send. Each check
prints `ok <name>`; any failure raises (non-zero exit).
"""

import datetime
import decimal
import sys

import pandas
import psycopg
import sqlalchemy

HOST, PORT, ANALYST, VIEWER = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]


def connect(user, password, **kw):
    return psycopg.connect(
        host=HOST, port=PORT, user=user, password=password, dbname="ironlake", **kw
    )


def ok(name):
    print(f"ok {name}", flush=True)


def expect_error(conn, sql, sqlstate, words, params=None):
    try:
        conn.execute(sql, params)
    except psycopg.Error as e:
        assert e.sqlstate == sqlstate, (sql, e.sqlstate, str(e))
        assert words in str(e), (sql, str(e))
        return str(e)
    raise AssertionError(f"{sql!r} was not refused")


# SCRAM-SHA-256 without TLS: libpq refuses any weaker method.
conn = connect("analyst", ANALYST, autocommit=True, sslmode="disable", require_auth="scram-sha-256")

# Versions the drivers parse.
(v,) = conn.execute("SELECT version()").fetchone()
assert v.startswith("PostgreSQL 16"), v
assert conn.info.server_version >= 160000, conn.info.server_version
ok("version")

# Parameters over the extended protocol; decimals exact, dates as dates.
quarters = [r[0] for r in conn.execute("SELECT DISTINCT quarter FROM bank_loans ORDER BY 1")]
assert len(quarters) >= 4, quarters
q = quarters[-1]
rows = conn.execute(
    "SELECT loan_id, balance, rate_pct, period_end, guarantee_fee_pct FROM bank_loans "
    "WHERE quarter = %s ORDER BY loan_id LIMIT 50",
    (q,),
).fetchall()
assert rows, q
for loan_id, balance, rate, period_end, fee in rows:
    assert isinstance(balance, decimal.Decimal) and balance.as_tuple().exponent == -2, balance
    assert isinstance(rate, decimal.Decimal) and rate.as_tuple().exponent == -4, rate
    assert isinstance(period_end, datetime.date), period_end
    assert fee is None or isinstance(fee, decimal.Decimal), fee
assert any(r[0] is None for r in conn.execute("SELECT guarantee_fee_pct FROM bank_loans")), "NULLs"
# The same sum two ways: exact to the fen.
(total,) = conn.execute("SELECT sum(balance) FROM bank_loans WHERE quarter = %s", (q,)).fetchone()
assert total == sum(
    r[0] for r in conn.execute("SELECT balance FROM bank_loans WHERE quarter = %s", (q,))
), total
(big,) = conn.execute("SELECT CAST('1234567890123456.78' AS DECIMAL(18,2))").fetchone()
assert big == decimal.Decimal("1234567890123456.78"), big
ok("parameters, decimals, dates, nulls")

# Chinese text round-trips, also as a parameter.
(name,) = conn.execute("SELECT name FROM enterprises WHERE name LIKE %s LIMIT 1", ("重庆%",)).fetchone()
assert name.startswith("重庆"), name
(echo,) = conn.execute("SELECT %s::text", ("产融合作 ✓",)).fetchone()
assert echo == "产融合作 ✓", echo
ok("chinese text")

# A prepared statement run many times (psycopg prepares after 5 runs).
for i in range(8):
    (n,) = conn.execute(
        "SELECT count(*) FROM bank_loans WHERE quarter = %s", (quarters[i % len(quarters)],), prepare=True
    ).fetchone()
    assert n > 0
ok("prepared statements")

# Refusals: clear errors with a SQLSTATE, and the session goes on.
expect_error(conn, "INSERT INTO bank_loans (loan_id) VALUES ('x')", "25006", "read-only")
expect_error(conn, "DROP TABLE bank_loans", "25006", "read-only")
expect_error(conn, "CREATE TABLE t (a int)", "25006", "read-only")
expect_error(conn, "COPY bank_loans TO '/tmp/x.csv'", "25006", "read-only")
expect_error(conn, "SET datafusion.execution.batch_size = 1", "25006", "operator")
expect_error(conn, "SELECT * FROM '/etc/passwd'", "42P01", "")
expect_error(conn, "SELECT * FROM bank_loan", "42P01", "did you mean bank_loans")
expect_error(conn, "SELEC 1", "42601", "syntax")
deep = "SELECT " + "(" * 300 + "1" + ")" * 300
expect_error(conn, deep, "54001", "nest")
assert conn.execute("SELECT 1").fetchone() == (1,)
conn.execute("SET application_name = 'pg_clients'")
conn.execute("SET extra_float_digits = 3")
conn.execute("DISCARD ALL")
ok("refusals keep the session usable")

# A server-side cursor streaming a million rows: exact decimals all the way.
n_loans, loans_total = conn.execute("SELECT count(*), sum(balance) FROM bank_loans").fetchone()
reps = -(-1_000_000 // n_loans)
with connect("analyst", ANALYST) as tx:
    with tx.cursor(name="big") as cur:
        cur.itersize = 20_000
        cur.execute(
            "SELECT l.loan_id, l.balance, g.value AS rep FROM bank_loans l "
            f"CROSS JOIN generate_series(1, {int(reps)}) g WHERE l.quarter >= %s LIMIT 1000000",
            (quarters[0],),
        )
        assert [d.name for d in cur.description] == ["loan_id", "balance", "rep"], cur.description
        count, total = 0, decimal.Decimal(0)
        for _loan, balance, _rep in cur:
            count += 1
            total += balance
assert count == 1_000_000, count
assert total.as_tuple().exponent == -2
ok(f"server-side cursor streamed {count} rows")

# The row limit applies to plain results and says how to get around it.
expect_error(
    conn,
    "SELECT g.value FROM generate_series(1, 200000000) g",
    "54000",
    "sql_max_rows",
)
ok("row limit")

# The time limit: the session's statement_timeout may shorten [api] sql_timeout_secs.
conn.execute("SET statement_timeout = 100")
expect_error(
    conn,
    "SELECT count(*) FROM generate_series(1, 3000000000) g WHERE g.value % 7 = 3",
    "57014",
    "statement timeout",
)
conn.execute("SET statement_timeout = 0")
assert conn.execute("SELECT 2").fetchone() == (2,)
ok("time limit")

# Viewers read published.* only.
viewer = connect("viewer", VIEWER, autocommit=True)
(n,) = viewer.execute("SELECT count(*) FROM published.loan_growth").fetchone()
assert n > 0
expect_error(viewer, "SELECT * FROM bank_loans", "42501", "viewer")
expect_error(viewer, "SELECT * FROM published.loan_growth JOIN enterprises ON true", "42501", "viewer")
ok("viewer reads published only")

# Wrong token and unknown role: refused (28P01) without saying which.
for user, password in [("analyst", "wrong-token"), ("nobody", ANALYST)]:
    try:
        connect(user, password)
    except psycopg.OperationalError as e:
        assert "password authentication failed" in str(e).lower(), str(e)
    else:
        raise AssertionError(f"{user} logged in with a bad token")
ok("bad logins refused")

# SQLAlchemy's inspector: schemas, tables, columns with their types.
engine = sqlalchemy.create_engine(
    f"postgresql+psycopg://analyst:{ANALYST}@{HOST}:{PORT}/ironlake"
)
insp = sqlalchemy.inspect(engine)
schemas = set(insp.get_schema_names())
assert {"public", "published", "quarantine", "system"} <= schemas, schemas
tables = set(insp.get_table_names())
assert {"bank_loans", "enterprises", "operations", "direct_financing", "financing_demands"} <= tables, tables
published = set(insp.get_table_names(schema="published"))
assert {"loan_growth", "bank_lending", "matching_list"} <= published, published
cols = {c["name"]: c["type"] for c in insp.get_columns("bank_loans")}
assert isinstance(cols["balance"], sqlalchemy.Numeric), cols["balance"]
assert (cols["balance"].precision, cols["balance"].scale) == (18, 2), cols["balance"]
assert (cols["rate_pct"].precision, cols["rate_pct"].scale) == (9, 4), cols["rate_pct"]
assert isinstance(cols["period_end"], sqlalchemy.Date), cols["period_end"]
assert isinstance(cols["loan_id"], sqlalchemy.Text), cols["loan_id"]
ok("sqlalchemy inspect")

# pandas.read_sql through SQLAlchemy.
df = pandas.read_sql(
    sqlalchemy.text("SELECT quarter, industry_balance FROM published.loan_growth ORDER BY quarter"),
    engine,
    coerce_float=False,
)
assert len(df) > 0 and list(df.columns) == ["quarter", "industry_balance"], df
assert isinstance(df["industry_balance"][0], decimal.Decimal), type(df["industry_balance"][0])
ok("pandas read_sql")

# What BI connectors send when they connect and browse.
introspection = {
    "select version": "SELECT version()",
    "show server_version": "SHOW server_version",
    "current_schema": "SELECT current_schema()",
    "current_database": "SELECT current_database()",
    # Grafana's PostgreSQL data source: the table picker and column picker.
    "grafana tables": (
        "SELECT quote_ident(table_name) AS table_name FROM information_schema.tables "
        "WHERE table_schema IN ('public', 'published') ORDER BY table_name"
    ),
    "grafana columns": (
        "SELECT quote_ident(column_name) AS column_name, data_type AS type "
        "FROM information_schema.columns WHERE table_name = 'loan_growth' ORDER BY column_name"
    ),
    "grafana search_path": "SELECT current_schemas(false)",
    # Metabase's PostgreSQL driver: schemas, tables, columns via pg_catalog.
    "metabase schemas": (
        "SELECT nspname FROM pg_catalog.pg_namespace "
        "WHERE nspname NOT IN ('information_schema', 'pg_catalog') ORDER BY nspname"
    ),
    "metabase tables": (
        "SELECT n.nspname AS schema, c.relname AS name, c.relkind AS type, "
        "obj_description(c.oid) AS description "
        "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p', 'v', 'f', 'm') AND n.nspname = 'published'"
    ),
    "metabase columns": (
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull "
        "FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON a.attrelid = c.oid "
        "WHERE c.relname = 'bank_loans' AND a.attnum > 0 ORDER BY a.attnum"
    ),
    "pg_settings": "SELECT name, setting FROM pg_catalog.pg_settings LIMIT 5",
    "pg_type": "SELECT oid, typname FROM pg_catalog.pg_type WHERE typname = 'numeric'",
}
for name, sql in introspection.items():
    rows = conn.execute(sql).fetchall()
    if name in ("grafana tables", "metabase schemas", "metabase tables", "metabase columns", "grafana columns"):
        assert rows, name
    if name == "metabase columns":
        types = dict((r[0], r[1]) for r in rows)
        assert types["balance"] == "numeric(18,2)", types
        assert types["period_end"] == "date", types
    if name == "current_database":
        assert rows[0][0] == "ironlake", rows
ok("bi introspection")
print("all ok")
