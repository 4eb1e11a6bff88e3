"""Rockset's Python client 0.8.10 (the tutorial's) against tarn, through a credentials
profile: the tutorial's create-collection code, queries with parameters and paging,
documents, workspaces, query lambdas and errors. Every result is checked against what the
same data gives through tarn's own SQL endpoint (plain HTTP).

Usage: rockset_0810.py TARN_URL API_KEY KINESIS_ENDPOINT
(HOME must point at a scratch directory: the profile is written to ~/.rockset.)
"""
import json
import os
import sys

server, api_key, kinesis_endpoint = sys.argv[1], sys.argv[2], sys.argv[3]

# `rock configure` writes this file; Client() with no arguments reads the active profile.
os.makedirs(os.path.expanduser("~/.rockset"), exist_ok=True)
with open(os.path.expanduser("~/.rockset/credentials"), "w") as f:
    json.dump({"version": "v1", "active_profile": "tarn",
               "profiles": {"tarn": {"api_key": api_key, "api_server": server}}}, f)

from rockset import Client, F, P, Q  # noqa: E402
from rockset.exception import AuthError, InputError  # noqa: E402
from rockset.query import ParamDict  # noqa: E402
from tarnref import Checks, tarn_sql_for, wait  # noqa: E402






tarn_sql = tarn_sql_for(server, api_key)
checks = Checks()
check = checks.check


rs = Client()  # the active profile, as in the tutorial

# ---- the tutorial's create-collection code, unchanged ----------------------------------
aws_integration = rs.Integration.retrieve("aws-integration")
sources = [
    rs.Source.kinesis(
        stream_name="twitter-stream",
        integration=aws_integration)]
twitter_kinesis_demo = rs.Collection.create("twitter-kinesis-demo", sources=sources)
# ----------------------------------------------------------------------------------------

wait(lambda: tarn_sql('SELECT count(*) AS n FROM "twitter-kinesis-demo"')[0]["n"] >= 300,
     "the collection to fill from the stream")
n = tarn_sql('SELECT count(*) AS n FROM "twitter-kinesis-demo"')[0]["n"]
desc = rs.Collection.retrieve("twitter-kinesis-demo").describe()
check("twitter-stream" in str(desc), "describe shows the source: %s" % desc)

# rs.sql with a query object and with parameters
rows = rs.sql(Q('SELECT count(*) AS n FROM "twitter-kinesis-demo"')).results()
check(rows == [{"n": n}] or rows[0]["n"] >= n, "count through the client: %s vs %d" % (rows, n))
q = Q('SELECT count(*) AS n FROM "twitter-kinesis-demo" t '
      'WHERE :tag IN (SELECT ht.text FROM unnest(t.entities.hashtags) ht) '
      'AND CAST(t.timestamp_ms AS INT) < :until')
q.P["tag"] = "music"
q.P["until"] = 2 ** 62
rows = rs.sql(q).results()
ref = tarn_sql('SELECT count(*) AS n FROM "twitter-kinesis-demo" t '
               "WHERE 'music' IN (SELECT ht.text FROM unnest(t.entities.hashtags) ht)")
check(rows[0]["n"] >= ref[0]["n"] > 0 or rows == ref, "parameters through rs.sql: %s vs %s" % (rows, ref))

# documents: add, patch, remove
coll = rs.Collection.create("docs08", workspace="commons")
docs = [{"_id": "d%d" % i, "i": i, "tags": ["x", "y"][: i % 3], "big": 2 ** 60 + i} for i in range(250)]
res = coll.add_docs(docs)
check(all(r["status"] == "ADDED" for r in res), "add_docs: %s" % res[:3])
# cursor paging: 250 rows read 100 at a time through the client's wrapped queries
cursor = rs.sql(Q("SELECT _id, i, big FROM docs08 ORDER BY i"))
paged = list(cursor.iter(100))
check(len(paged) == 250, "paged %d rows" % len(paged))
check([r["i"] for r in paged] == list(range(250)), "paging order")
check(paged[7]["big"] == 2 ** 60 + 7, "64-bit ints exact: %s" % paged[7])
res = coll.patch_docs([{"_id": "d1", "patch": [{"op": "replace", "path": "/i", "value": 1001},
                                                {"op": "add", "path": "/new", "value": "n"}]}])
check(res[0]["status"] == "PATCHED", "patch_docs: %s" % res)
row = tarn_sql("SELECT i, new FROM docs08 WHERE _id = 'd1'")
check(row == [{"i": 1001, "new": "n"}], "patched document: %s" % row)
res = coll.remove_docs([{"_id": "d2"}, {"_id": "d3"}])
check([r["status"] for r in res] == ["DELETED", "DELETED"], "remove_docs: %s" % res)
check(tarn_sql("SELECT count(*) AS n FROM docs08")[0]["n"] == 248, "after remove")

# workspaces
ws = rs.Workspace.create("analytics", description="made by 0.8.10")
names = [w["name"] if isinstance(w, dict) else w.name for w in rs.Workspace.list()]
check("analytics" in names and "commons" in names, "workspaces: %s" % names)
rs.Collection.create("events", workspace="analytics")

# query lambdas: create, execute, update (a new version), tag, retrieve by tag and version
q = Q("SELECT count(*) AS n FROM docs08 WHERE i >= :lo")
q.P["lo"] = 100
ql = rs.QueryLambda.create("count_from", query=q, workspace="commons", description="v1")
v1 = ql.version
res = ql.execute().results
ref = tarn_sql("SELECT count(*) AS n FROM docs08 WHERE i >= 100")
check(res == ref, "lambda with its default: %s vs %s" % (res, ref))
p = ParamDict()
p["lo"] = 200
res = ql.execute(p).results
ref = tarn_sql("SELECT count(*) AS n FROM docs08 WHERE i >= 200")
check(res == ref, "lambda with a parameter: %s vs %s" % (res, ref))
q2 = Q("SELECT count(*) AS n FROM docs08 WHERE i < :lo")
q2.P["lo"] = 10
ql2 = ql.update(q2, tag="dev")
check(ql2.version != v1, "update makes a new version")
by_tag = rs.QueryLambda.retrieveByTag("count_from", tag="dev", workspace="commons")
check(by_tag.version == ql2.version, "retrieve by tag")
res = by_tag.execute().results
ref = tarn_sql("SELECT count(*) AS n FROM docs08 WHERE i < 10")
check(res == ref, "tagged version runs its own SQL: %s vs %s" % (res, ref))
old = rs.QueryLambda.retrieveByVersion("count_from", version=v1, workspace="commons")
check(old.execute().results == tarn_sql("SELECT count(*) AS n FROM docs08 WHERE i >= 100"),
      "old versions are immutable")
listed = rs.QueryLambda.list()
check(any(getattr(x, "name", None) == "count_from" for x in listed), "lambda list: %s" % listed)

# query lambdas: delete a tag, a version (refused while a tag names it), then the lambda,
# through the client's generated API (delete_0: a tag, delete_1: a version)
api = rs.QueryLambda._api
try:
    api.delete_1("commons", "count_from", ql2.version)
    check(False, "a tagged version was deleted")
except InputError as e:
    check(e.code == 400 and "'dev'" in e.message, "the refusal names the tag: %s" % e)
gone = api.delete_0("commons", "count_from", "dev").to_dict()["data"]
check(gone["tag_name"] == "dev" and gone["version"]["version"] == ql2.version, "deleted tag: %s" % gone)
try:
    rs.QueryLambda.retrieveByTag("count_from", tag="dev", workspace="commons")
    check(False, "a deleted tag was found")
except InputError as e:
    check(e.code == 404, "deleted tag: %s" % e)
gone = api.delete_1("commons", "count_from", ql2.version).to_dict()["data"]
check(gone["version"] == ql2.version and "i < :lo" in gone["sql"]["query"], "deleted version: %s" % gone)
latest = rs.QueryLambda.retrieveByTag("count_from", tag="latest", workspace="commons")
check(latest.version == v1, "latest moved back to the version left: %s" % latest.version)
check(latest.execute().results == tarn_sql("SELECT count(*) AS n FROM docs08 WHERE i >= 100"),
      "the version left runs its own SQL")
try:
    rs.QueryLambda.retrieveByVersion("count_from", version=ql2.version, workspace="commons")
    check(False, "a deleted version was found")
except InputError as e:
    check(e.code == 404, "deleted version: %s" % e)
latest.drop()
listed = rs.QueryLambda.list()
check(not any(getattr(x, "name", None) == "count_from" for x in listed), "after drop: %s" % listed)

# errors become the client's own exceptions
try:
    rs.sql(Q("SELEC nonsense")).results()
    check(False, "a bad query raised nothing")
except InputError as e:
    check("SELEC" in str(e) or "line" in str(e).lower(), "the error names the problem: %s" % e)
try:
    Client(api_key="tarn_wrong", api_server=server).sql(Q("SELECT 1")).results()
    check(False, "a wrong key raised nothing")
except AuthError:
    checks.passed()

# drop
coll.drop()
names = [c.name for c in rs.Collection.list()]
check("docs08" not in names and "twitter-kinesis-demo" in names, "after drop: %s" % names)
print(json.dumps({"checks": checks.count, "documents": n}))
