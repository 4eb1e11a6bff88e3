"""psycopg 3 against tarn's Postgres endpoint: extended protocol with server-side
parameters, text and binary results with their types, what tools ask on connect,
information_schema and pg_catalog, a Grafana-style time-series query, SQLAlchemy 2's
reflection (tables, columns and their types, no keys or indexes), and a wrong password
refused.
Results are checked against tarn's own SQL over HTTP.

With --secure, on a server with a TLS certificate: TLS (ssl_in_use), SCRAM-SHA-256 with
and without channel binding (libpq's require_auth and channel_binding), wrong keys refused,
and cancel requests (cancel_safe from another thread) stopping a slow query on the extended
and the simple protocol, over TLS and without, the connection staying usable.

Usage: pg_clients.py HOST PORT API_KEY TARN_URL
       pg_clients.py --secure HOST PORT KEY_NAME API_KEY
"""
import datetime
import json
import os
import select
import sys
import threading
import time

import psycopg
from tarnref import Checks, tarn_sql_for

# A query that runs for minutes unless cancelled: an aggregate over 10^11 generated rows.
# (Not a nested-loop join: DataFusion 55 joins a whole probe batch against the build side
# in one poll, so an aborted join stops only seconds later.)
SLOW = "SELECT sum(value % 7) AS n FROM generate_series(1, 100000000000)"


def watchdog(secs):
    """Fails the script loudly if it hangs (a cancel that never arrives)."""
    def fire():
        sys.stderr.write("pg_clients.py: still running after %d s\n" % secs)
        sys.stderr.flush()
        os._exit(3)
    t = threading.Timer(secs, fire)
    t.daemon = True
    t.start()


def simple_query(pgconn, sql):
    """Runs `sql` on the simple query protocol without holding the GIL while waiting;
    returns the last result."""
    pgconn.send_query(sql.encode())
    while True:
        pgconn.consume_input()
        if not pgconn.is_busy():
            break
        select.select([pgconn.socket], [], [], 1.0)
    last = None
    while (r := pgconn.get_result()) is not None:
        last = r
    return last


def cancel_checks(conn, check, how):
    """Cancels SLOW after a second from another thread, on both protocols."""
    for protocol in ("extended", "simple"):
        timer = threading.Timer(1.0, conn.cancel_safe)
        start = time.monotonic()
        timer.start()
        try:
            if protocol == "extended":
                try:
                    conn.execute(SLOW)
                    check(False, "%s/%s: the slow query ended uncancelled" % (how, protocol))
                except psycopg.errors.QueryCanceled as e:
                    code, message = e.sqlstate, str(e)
            else:
                r = simple_query(conn.pgconn, SLOW)
                code = (r.error_field(psycopg.pq.DiagnosticField.SQLSTATE) or b"").decode()
                message = (r.error_message or b"").decode()
        finally:
            timer.cancel()
            timer.join()
        elapsed = time.monotonic() - start
        check(code == "57014", "%s/%s: SQLSTATE %r %s" % (how, protocol, code, message))
        check("canceling statement due to user request" in message,
              "%s/%s: message %r" % (how, protocol, message))
        check(1.0 <= elapsed < 6.0, "%s/%s: cancelled after %.1f s" % (how, protocol, elapsed))
        row = conn.execute("SELECT 6 * 7 AS n").fetchone()
        check(row == (42,), "%s/%s: usable after the cancel: %s" % (how, protocol, row))


def secure(host, port, user, key):
    checks = Checks()
    check = checks.check
    watchdog(240)
    base = dict(host=host, port=port, dbname="tarn", connect_timeout=20, autocommit=True)
    # TLS and SCRAM-SHA-256-PLUS: libpq accepts nothing less with these settings.
    with psycopg.connect(**base, user=user, password=key, sslmode="require",
                         require_auth="scram-sha-256", channel_binding="require") as conn:
        check(conn.info.pgconn.ssl_in_use, "TLS in use")
        check(conn.execute("SHOW ssl").fetchone()[0] == "on", "SHOW ssl")
        check(conn.execute("SELECT %s::bigint + 1 AS n", (41,)).fetchone()[0] == 42,
              "a parameterised query over TLS")
        cancel_checks(conn, check, "TLS")
    # SCRAM-SHA-256 in plain text.
    with psycopg.connect(**base, user=user, password=key, sslmode="disable",
                         require_auth="scram-sha-256") as conn:
        check(not conn.info.pgconn.ssl_in_use, "no TLS with sslmode=disable")
        cancel_checks(conn, check, "plain")
    # A user name that names no key: a cleartext password, over TLS here.
    with psycopg.connect(**base, user="tarn", password=key, sslmode="require",
                         require_auth="password") as conn:
        check(conn.info.pgconn.ssl_in_use, "cleartext password over TLS")
    for who, sslmode in ((user, "require"), (user, "disable"), ("tarn", "require")):
        try:
            psycopg.connect(**base, user=who, password="tarn_wrong", sslmode=sslmode)
            check(False, "a wrong key was accepted for %s (%s)" % (who, sslmode))
        except psycopg.OperationalError as e:
            check("password authentication failed" in str(e), "wrong key: %s" % e)
    print(json.dumps({"checks": checks.count}))


if sys.argv[1] == "--secure":
    secure(*sys.argv[2:6])
    sys.exit(0)

host, port, key, server = sys.argv[1:5]
dsn = f"host={host} port={port} user=tarn password={key} dbname=tarn"
tarn_sql = tarn_sql_for(server, key)
checks = Checks()
check = checks.check




with psycopg.connect(dsn) as conn:
    n = conn.execute("SELECT count(*) AS n FROM events").fetchone()[0]
    check(n == tarn_sql("SELECT count(*) AS n FROM events")[0]["n"] == 3, "count: %s" % n)
    rows = conn.execute("SELECT a FROM events WHERE a > %s ORDER BY a", (1,)).fetchall()
    check(rows == [(2,), (3,)], "server-side parameter: %s" % rows)
    rows = conn.execute("SELECT a FROM events WHERE s = %s", ("two",)).fetchall()
    check(rows == [(2,)], "string parameter: %s" % rows)
    for binary in (False, True):
        cur = conn.cursor(binary=binary)
        cur.execute("SELECT a, s, f, b, o, _event_time FROM events WHERE a = %s", (2,))
        a, s, f, b, o, t = cur.fetchone()
        check((a, s, f, b) == (2, "two", 2.5, True), "values (binary=%s): %s" % (binary, (a, s, f, b)))
        check(o == {"k": [1, 2]}, "jsonb (binary=%s): %r" % (binary, o))
        check(isinstance(t, datetime.datetime) and t.tzinfo is not None, "timestamptz: %r" % t)
        types = [d.type_code for d in cur.description]
        check(types == [20, 25, 701, 16, 3802, 1184], "type oids: %s" % types)
    check("tarn" in conn.execute("SELECT version()").fetchone()[0], "version()")
    check(conn.execute("SELECT current_schema()").fetchone()[0] == "commons", "current_schema()")
    check(conn.execute("SHOW server_version").fetchone()[0].startswith("16"), "SHOW")
    conn.execute("SET application_name = 'pytest'")
    tables = conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'commons' ORDER BY table_name").fetchall()
    check(("events",) in tables, "information_schema.tables: %s" % tables)
    cols = [r[0] for r in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'events'").fetchall()]
    check({"a", "s", "o", "_id", "_event_time"} <= set(cols), "information_schema.columns: %s" % cols)
    # Grafana's time series, its macros expanded.
    rows = conn.execute(
        "SELECT floor(extract(epoch from _event_time)/60)*60 AS time, count(*) AS n FROM events "
        "WHERE _event_time BETWEEN '2020-01-01T00:00:00Z' AND '2030-01-01T00:00:00Z' "
        "GROUP BY 1 ORDER BY 1").fetchall()
    check(sum(r[1] for r in rows) == 3, "grafana query: %s" % rows)
    nested = conn.execute("SELECT e.o.k FROM events e WHERE a = 2").fetchone()[0]
    check(nested == [1, 2], "nested path: %r" % (nested,))
    try:
        conn.execute("SELECT nope(")
        check(False, "a syntax error raised nothing")
    except psycopg.errors.SyntaxError:
        checks.passed()
        conn.rollback()

    # Catalog lookups as tools write them: reg* casts and oids that join up.
    row = conn.execute(
        "SELECT c.oid = 'events'::regclass, c.oid::regclass::text, format_type(a.atttypid, a.atttypmod) "
        "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid "
        "WHERE c.relname = %s AND a.attname = %s", ("twitter-kinesis-demo", "id")).fetchone()
    check(row == (False, '"twitter-kinesis-demo"', "jsonb"), "regclass and format_type: %s" % (row,))
    conn.rollback()

# SQLAlchemy 2's reflection (through pg_catalog).
import sqlalchemy  # noqa: E402
from sqlalchemy.dialects import postgresql  # noqa: E402

engine = sqlalchemy.create_engine(f"postgresql+psycopg://tarn:{key}@{host}:{port}/tarn")
inspector = sqlalchemy.inspect(engine)
names = inspector.get_table_names(schema="commons")
check(names == ["events", "twitter-kinesis-demo"], "SQLAlchemy get_table_names: %s" % names)
expected = {
    "events": [("_id", postgresql.TEXT, False), ("_event_time", postgresql.TIMESTAMP, False),
               ("_meta", postgresql.JSONB, True), ("a", postgresql.BIGINT, True),
               ("s", postgresql.TEXT, True), ("f", postgresql.DOUBLE_PRECISION, True),
               ("b", postgresql.BOOLEAN, True), ("o", postgresql.JSONB, True)],
    "twitter-kinesis-demo": [("_id", postgresql.TEXT, False),
                             ("_event_time", postgresql.TIMESTAMP, False),
                             ("_meta", postgresql.JSONB, True), ("id", postgresql.JSONB, True),
                             ("text", postgresql.TEXT, True), ("user", postgresql.JSONB, True),
                             ("retweeted", postgresql.BOOLEAN, True),
                             ("created_at", postgresql.TEXT, True)],
}
for table, want in expected.items():
    cols = inspector.get_columns(table, schema="commons")
    got = [(c["name"], type(c["type"]), c["nullable"]) for c in cols]
    check(got == want, "SQLAlchemy get_columns(%s): %s" % (table, got))
    check(all(c["default"] is None for c in cols), "no defaults: %s" % cols)
    ts = [c["type"] for c in cols if c["name"] == "_event_time"]
    check(ts and ts[0].timezone, "_event_time is timestamp with time zone: %s" % ts)
    pk = inspector.get_pk_constraint(table, schema="commons")
    check(pk["constrained_columns"] == [], "get_pk_constraint: %s" % pk)
    check(inspector.get_foreign_keys(table, schema="commons") == [], "get_foreign_keys")
    check(inspector.get_indexes(table, schema="commons") == [], "get_indexes")
    check(inspector.get_unique_constraints(table, schema="commons") == [], "get_unique_constraints")
    check(inspector.get_check_constraints(table, schema="commons") == [], "get_check_constraints")
    check(inspector.get_table_comment(table, schema="commons") == {"text": None}, "get_table_comment")
# get_columns without a schema reads the current one, commons.
check([c["name"] for c in inspector.get_columns("events")][:3] == ["_id", "_event_time", "_meta"],
      "get_columns in the default schema")
# A reflected Table queries like a declared one.
table = sqlalchemy.Table("events", sqlalchemy.MetaData(), autoload_with=engine, schema="commons")
with engine.connect() as c:
    rows = c.execute(sqlalchemy.select(table.c.a, table.c.s).where(table.c.a > 1).order_by(table.c.a)).all()
check([tuple(r) for r in rows] == [(2, "two"), (3, "three")], "reflected table query: %s" % rows)
metadata = sqlalchemy.MetaData()
metadata.reflect(engine, schema="commons")
check(sorted(metadata.tables) == ["commons.events", "commons.twitter-kinesis-demo"],
      "MetaData.reflect: %s" % sorted(metadata.tables))
engine.dispose()

try:
    psycopg.connect(f"host={host} port={port} user=tarn password=wrong dbname=tarn")
    check(False, "a wrong key was accepted")
except psycopg.OperationalError:
    checks.passed()

print(json.dumps({"checks": checks.count}))
