"""Splits the first open shard of a Kinesis stream at the middle of its hash key range.

Usage: reshard.py ENDPOINT STREAM
"""
import sys
import time

import boto3

endpoint, stream = sys.argv[1], sys.argv[2]
kinesis = boto3.client(
    "kinesis",
    endpoint_url=endpoint,
    region_name="us-west-2",
    aws_access_key_id="tarn",
    aws_secret_access_key="tarn",
)
shards = kinesis.list_shards(StreamName=stream)["Shards"]
open_shards = [s for s in shards if "EndingSequenceNumber" not in s["SequenceNumberRange"]]
shard = open_shards[0]
lo = int(shard["HashKeyRange"]["StartingHashKey"])
hi = int(shard["HashKeyRange"]["EndingHashKey"])
kinesis.split_shard(
    StreamName=stream,
    ShardToSplit=shard["ShardId"],
    NewStartingHashKey=str((lo + hi) // 2),
)
for _ in range(200):
    if kinesis.describe_stream(StreamName=stream)["StreamDescription"]["StreamStatus"] == "ACTIVE":
        break
    time.sleep(0.05)
print(shard["ShardId"])
