"""The tutorial's Kinesis producer, changed only in where the stream is.

Usage: tutorial_producer.py ENDPOINT STREAM NDJSON_FILE [--create SHARDS]

boto3 reads its endpoint from the arguments here (the tutorial used AWS's); the rest is
the tutorial's code: create_stream(ShardCount=5), then put_records of one record with a
random partition key for each tweet that arrives (here, each line of the file).
"""
import random
import string
import sys
import time

import boto3

endpoint, stream_name, path = sys.argv[1], sys.argv[2], sys.argv[3]
chars = string.ascii_letters + string.digits
size = 8

kinesis = boto3.client(
    "kinesis",
    endpoint_url=endpoint,
    region_name="us-west-2",
    aws_access_key_id="tarn",
    aws_secret_access_key="tarn",
)

if "--create" in sys.argv:
    shards = int(sys.argv[sys.argv.index("--create") + 1])
    kinesis.create_stream(StreamName=stream_name, ShardCount=shards)
    for _ in range(200):
        status = kinesis.describe_stream(StreamName=stream_name)["StreamDescription"]["StreamStatus"]
        if status == "ACTIVE":
            break
        time.sleep(0.05)
    else:
        sys.exit(f"stream {stream_name} did not become ACTIVE")


class TweetListener:
    def __init__(self, stream_name):
        self.kinesis = kinesis
        self.stream_name = stream_name

    def on_data(self, data):
        record = {}
        record["Data"] = data
        record["PartitionKey"] = "".join(random.choice(chars) for _ in range(size))
        self.kinesis.put_records(Records=[record], StreamName=self.stream_name)


listener = TweetListener(stream_name)
sent = 0
with open(path, "rb") as f:
    for line in f:
        line = line.strip()
        if line:
            listener.on_data(line)
            sent += 1
print(sent)
