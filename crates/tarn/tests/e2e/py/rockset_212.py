"""Rockset's Python client 2.1.2 against tarn: integrations, Kinesis and Kafka collections,
queries (Queries.query and rs.sql with params), documents (add, delete, patch), query
lambdas (create, execute by version and tag, tags, update, list), workspaces and errors.
Results are checked against tarn's own SQL endpoint over plain HTTP.

Usage: rockset_212.py TARN_URL API_KEY KINESIS_ENDPOINT KAFKA_BOOTSTRAP
(the Kinesis stream `twitter-stream` and the Kafka topic `tweets` already hold tweets)
"""
import json
import sys
import urllib.request
from enum import Enum

from rockset import RocksetClient, exceptions, models
from tarnref import Checks, tarn_sql_for, wait

server, api_key, kinesis_endpoint, kafka_bootstrap = sys.argv[1:5]


# 2.x rewrites a host string to https://; an Enum member (as its own Regions are) is used
# as given, so a plain-HTTP tarn on localhost is reached this way.
class Tarn(Enum):
    local = server


rs = RocksetClient(host=Tarn.local, api_key=api_key)






tarn_sql = tarn_sql_for(server, api_key)
checks = Checks()
check = checks.check


# integrations
rs.Integrations.create_kinesis_integration(
    name="kinesis-2x",
    kinesis=models.KinesisIntegration(
        aws_access_key=models.AwsAccessKey(aws_access_key_id="tarn", aws_secret_access_key="s3cret-2x")))
# tarn reads a Kinesis-compatible endpoint from the integration's settings: the model has no
# field for it, so the endpoint comes from the server's AWS_ENDPOINT_URL_KINESIS.
rs.Integrations.create_kafka_integration(
    name="kafka-2x",
    kafka=models.KafkaIntegration(bootstrap_servers=kafka_bootstrap, kafka_data_format="JSON",
                                  kafka_topic_names=["tweets"]))
got = rs.Integrations.get(integration="kinesis-2x")
check("s3cret-2x" not in str(got), "the secret is never returned")
names = [i.name for i in rs.Integrations.list().data]
check({"kinesis-2x", "kafka-2x"} <= set(names), "integrations: %s" % names)

# collections from streams
rs.Collections.create_kinesis_collection(
    name="from-kinesis",
    sources=[models.KinesisSourceWrapper(
        integration_name="kinesis-2x", stream_name="twitter-stream", aws_region="us-west-2",
        offset_reset_policy="EARLIEST")])
rs.Collections.create_kafka_collection(
    name="from-kafka",
    sources=[models.KafkaSourceWrapper(
        integration_name="kafka-2x", kafka_topic_name="tweets", offset_reset_policy="EARLIEST")])
for c in ["from-kinesis", "from-kafka"]:
    wait(lambda: tarn_sql('SELECT count(*) AS n FROM "%s"' % c)[0]["n"] >= 200, c + " to fill")
coll = rs.Collections.get(collection="from-kafka").data
check(coll.sources[0].integration_name == "kafka-2x", "collection sources: %s" % coll.sources)
check(coll.stats.doc_count >= 200, "stats: %s" % coll.stats)

# queries
n = tarn_sql('SELECT count(*) AS n FROM "from-kinesis"')[0]["n"]
r = rs.Queries.query(sql=models.QueryRequestSql(query='SELECT count(*) AS n FROM "from-kinesis"'))
check(r.results == [{"n": n}], "Queries.query: %s" % r.results)
check(isinstance(r.stats.elapsed_time_ms, int), "stats.elapsed_time_ms")
r = rs.sql('SELECT t.user.screen_name AS who FROM "from-kinesis" t WHERE t.user.followers_count > :f '
           'ORDER BY t.user.followers_count DESC LIMIT 3', params={"f": 1000})
ref = tarn_sql('SELECT t.user.screen_name AS who FROM "from-kinesis" t WHERE t.user.followers_count > 1000 '
               'ORDER BY t.user.followers_count DESC LIMIT 3')
check(r.results == ref, "rs.sql with params: %s vs %s" % (r.results, ref))
check([f.name for f in r.column_fields] == ["who"], "column_fields")

# documents (into a collection made through tarn's API)
req = urllib.request.Request(server + "/v1/orgs/self/ws/commons/collections",
                             data=json.dumps({"name": "docs2x"}).encode(),
                             headers={"Content-Type": "application/json", "Authorization": "ApiKey " + api_key})
urllib.request.urlopen(req).read()
added = rs.Documents.add_documents(collection="docs2x", data=[{"_id": "a", "n": 1}, {"_id": "b", "n": 2}, {"_id": "c", "n": 3}])
check([d.status for d in added.data] == ["ADDED"] * 3, "add_documents: %s" % added)
patched = rs.Documents.patch_documents(collection="docs2x", data=[models.PatchDocument(
    # (2.x types a patch value as an object)
    id="a", patch=[models.PatchOperation(op="ADD", path="/m", value={"k": "x"}),
                   models.PatchOperation(op="INCREMENT", path="/n", value=None)])])
check(patched.data[0].status == "ERROR", "an increment by null is refused: %s" % patched)
check(tarn_sql("SELECT n, m FROM docs2x WHERE _id = 'a'") == [{"n": 1, "m": None}], "refused patch changed nothing")
patched = rs.Documents.patch_documents(collection="docs2x", data=[models.PatchDocument(
    id="a", patch=[models.PatchOperation(op="ADD", path="/m", value={"k": "x"}),
                   models.PatchOperation(op="REMOVE", path="/n")])])
check(patched.data[0].status == "PATCHED", "patch: %s" % patched)
check(tarn_sql("SELECT n, m FROM docs2x WHERE _id = 'a'") == [{"n": None, "m": {"k": "x"}}], "patched doc")
deleted = rs.Documents.delete_documents(collection="docs2x", data=[models.DeleteDocumentsRequestData(id="b")])
check(deleted.data[0].status == "DELETED", "delete: %s" % deleted)
check(tarn_sql("SELECT count(*) AS n FROM docs2x")[0]["n"] == 2, "after delete")

# query lambdas
v1 = rs.QueryLambdas.create_query_lambda(
    name="big_n", workspace="commons",
    sql=models.QueryLambdaSql(query="SELECT _id FROM docs2x WHERE n >= :lo ORDER BY _id",
                              default_parameters=[models.QueryParameter(name="lo", type="int", value="3")])).data
check(v1.collections == ["commons.docs2x"], "lambda collections: %s" % v1.collections)
r = rs.QueryLambdas.execute_query_lambda(query_lambda="big_n", version=v1.version, workspace="commons")
check(r.results == tarn_sql("SELECT _id FROM docs2x WHERE n >= 3 ORDER BY _id"), "execute by version: %s" % r.results)
r = rs.QueryLambdas.execute_query_lambda(
    query_lambda="big_n", version=v1.version, workspace="commons",
    parameters=[models.QueryParameter(name="lo", type="int", value="11")])
check(r.results == [], "a parameter overrides the default: %s" % r.results)
v2 = rs.QueryLambdas.update_query_lambda(
    query_lambda="big_n", workspace="commons",
    sql=models.QueryLambdaSql(query="SELECT count(*) AS c FROM docs2x")).data
check(v2.version != v1.version, "update makes a version")
rs.QueryLambdas.create_query_lambda_tag(query_lambda="big_n", tag_name="stable", version=v1.version, workspace="commons")
r = rs.QueryLambdas.execute_query_lambda_by_tag(query_lambda="big_n", tag="stable", workspace="commons")
check(r.results == tarn_sql("SELECT _id FROM docs2x WHERE n >= 3 ORDER BY _id"), "execute by tag")
r = rs.QueryLambdas.execute_query_lambda_by_tag(query_lambda="big_n", tag="latest", workspace="commons")
check(r.results == [{"c": 2}], "latest tag: %s" % r.results)
tags = sorted(t.tag_name for t in rs.QueryLambdas.list_query_lambda_tags(query_lambda="big_n", workspace="commons").data)
check(tags == ["latest", "stable"], "tags: %s" % tags)
versions = rs.QueryLambdas.list_query_lambda_versions(query_lambda="big_n", workspace="commons").data
check(len(versions) == 2, "versions: %s" % versions)
t = rs.QueryLambdas.get_query_lambda_tag_version(query_lambda="big_n", tag="stable", workspace="commons").data
check(t.version.version == v1.version, "tag version")
listed = [l.name for l in rs.QueryLambdas.list_all_query_lambdas().data]
check("big_n" in listed, "list: %s" % listed)
# deleting: a version a tag names is refused (naming the tag), then the tag, the version
# and the whole lambda go
try:
    rs.QueryLambdas.delete_query_lambda_version(query_lambda="big_n", version=v1.version, workspace="commons")
    check(False, "a tagged version was deleted")
except exceptions.BadRequestException as e:
    check("'stable'" in str(e.body), "the refusal names the tag: %s" % e.body)
t = rs.QueryLambdas.delete_query_lambda_tag(query_lambda="big_n", tag="stable", workspace="commons").data
check(t.tag_name == "stable" and t.version.version == v1.version, "deleted tag: %s" % t)
tags = [t.tag_name for t in rs.QueryLambdas.list_query_lambda_tags(query_lambda="big_n", workspace="commons").data]
check(tags == ["latest"], "tags after delete: %s" % tags)
try:
    rs.QueryLambdas.get_query_lambda_tag_version(query_lambda="big_n", tag="stable", workspace="commons")
    check(False, "a deleted tag was found")
except exceptions.NotFoundException:
    checks.passed()
try:
    rs.QueryLambdas.delete_query_lambda_tag(query_lambda="big_n", tag="latest", workspace="commons")
    check(False, "the latest tag was deleted")
except exceptions.BadRequestException as e:
    check("latest" in str(e.body), "latest stays: %s" % e.body)
d = rs.QueryLambdas.delete_query_lambda_version(query_lambda="big_n", version=v1.version, workspace="commons").data
check(d.version == v1.version and d.sql.query.startswith("SELECT _id FROM docs2x"), "deleted version: %s" % d)
versions = [v.version for v in rs.QueryLambdas.list_query_lambda_versions(query_lambda="big_n", workspace="commons").data]
check(versions == [v2.version], "versions after delete: %s" % versions)
try:
    rs.QueryLambdas.execute_query_lambda(query_lambda="big_n", version=v1.version, workspace="commons")
    check(False, "a deleted version ran")
except exceptions.NotFoundException:
    checks.passed()
r = rs.QueryLambdas.execute_query_lambda_by_tag(query_lambda="big_n", tag="latest", workspace="commons")
check(r.results == [{"c": 2}], "the remaining version runs: %s" % r.results)
gone = rs.QueryLambdas.delete_query_lambda(query_lambda="big_n", workspace="commons").data
check(gone.name == "big_n", "deleted lambda: %s" % gone)
listed = [l.name for l in rs.QueryLambdas.list_all_query_lambdas().data]
check("big_n" not in listed, "list after delete: %s" % listed)

# workspaces
rs.Workspaces.create(name="ws2x", description="from 2.1.2")
check("ws2x" in [w.name for w in rs.Workspaces.list().data], "workspaces")
check(rs.Workspaces.get(workspace="ws2x").data.name == "ws2x", "get workspace")

# errors: the client's own exception types
try:
    rs.sql("SELEC nope")
    check(False, "no error")
except exceptions.BadRequestException as e:
    check("SELEC" in str(e.body) or "line" in str(e.body), "query error body: %s" % e.body)
try:
    rs.Collections.get(collection="no-such-collection")
    check(False, "no error")
except exceptions.NotFoundException:
    checks.passed()
try:
    RocksetClient(host=Tarn.local, api_key="tarn_wrong").Workspaces.list()
    check(False, "no error")
except exceptions.UnauthorizedException:
    checks.passed()

print(json.dumps({"checks": checks.count}))
