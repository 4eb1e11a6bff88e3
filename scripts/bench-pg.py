"""Benchmark: 50 concurrent Postgres connections running the tutorial's panel queries
against a running `tarn demo` (which ingests while they run), then the same queries over
HTTP with 50 concurrent clients. Reports queries/s and p50/p99 latency for each.

Usage: .venv-test/bin/python scripts/bench-pg.py [--http http://127.0.0.1:3000]
       [--pg 127.0.0.1:5433] [--clients 50] [--secs 20]
(scripts/test-deps makes .venv-test with psycopg; start `tarn demo --rate 5000` first.)
"""
import argparse
import json
import statistics
import threading
import time
import urllib.request

import psycopg

QUERIES = [
    # Live Tweets, Top Hashtags, Incoming Tweets, Influencers, Related Hashtags, #music.
    'SELECT t.timestamp_ms, t.created_at AS created_at, t.text AS text, t.user.screen_name AS screen_name '
    'FROM "twitter-kinesis-demo" t WHERE CAST(timestamp_ms AS INT) > UNIX_MILLIS(current_timestamp() - minutes(1)) '
    'ORDER BY timestamp_ms DESC LIMIT 100',
    'WITH latest_hashtags AS (SELECT lower(ht.text) AS hashtag FROM "twitter-kinesis-demo" t, '
    'unnest(t.extended_tweet.entities.hashtags) ht WHERE CAST(t.timestamp_ms AS INT) > '
    'UNIX_MILLIS(current_timestamp() - hours(1))) SELECT count(hashtag) AS tweet_count, hashtag '
    'FROM latest_hashtags GROUP BY hashtag ORDER BY tweet_count DESC LIMIT 10',
    'SELECT count(*) FROM "twitter-kinesis-demo" WHERE cast(timestamp_ms AS INT) > '
    'unix_millis(current_timestamp() - seconds(2))',
    "SELECT t.user.screen_name, t.user.followers_count AS fc FROM \"twitter-kinesis-demo\" t "
    "WHERE 'music' IN (SELECT hashtags.text FROM unnest(t.entities.hashtags) hashtags) "
    "GROUP BY (t.user.screen_name, t.user.followers_count) ORDER BY t.user.followers_count DESC LIMIT 5",
    "SELECT hashtags.text as hashtag, count(*) AS occurence_count FROM \"twitter-kinesis-demo\" t, "
    "unnest(t.entities.hashtags) hashtags WHERE 'music' IN (SELECT ht.text FROM unnest(t.entities.hashtags) ht) "
    "AND hashtags.text != 'music' GROUP BY hashtags.text ORDER BY occurence_count DESC LIMIT 10",
    "SELECT t.timestamp_ms, t.text AS text, t.user.screen_name AS screen_name FROM \"twitter-kinesis-demo\" t "
    "WHERE 'music' IN (SELECT ht.text FROM unnest(t.entities.hashtags) ht) AND CAST(timestamp_ms AS INT) > "
    "UNIX_MILLIS(current_timestamp() - minutes(1)) ORDER BY timestamp_ms DESC LIMIT 100",
]


def run(kind, args):
    latencies = []
    lock = threading.Lock()
    deadline = time.time() + args.secs

    def worker(i):
        mine = []
        if kind == "pg":
            host, port = args.pg.rsplit(":", 1)
            conn = psycopg.connect(f"host={host} port={port} user=tarn dbname=tarn password={args.key}",
                                   autocommit=True)
            run_one = lambda q: conn.execute(q).fetchall()  # noqa: E731
        else:
            def run_one(q):
                req = urllib.request.Request(args.http + "/v1/orgs/self/queries",
                                             data=json.dumps({"sql": {"query": q}}).encode(),
                                             headers={"Content-Type": "application/json",
                                                      "Authorization": "ApiKey " + args.key})
                return json.load(urllib.request.urlopen(req))["results"]
        k = i
        while time.time() < deadline:
            q = QUERIES[k % len(QUERIES)]
            k += 1
            t = time.perf_counter()
            run_one(q)
            mine.append((time.perf_counter() - t) * 1e3)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.clients)]
    started = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.time() - started
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1] if latencies else float("nan")
    print(f"{kind}: {args.clients} clients, {len(latencies) / elapsed:.1f} queries/s, "
          f"p50 {statistics.median(latencies):.1f} ms, p99 {p99:.1f} ms")
    return len(latencies) / elapsed


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--http", default="http://127.0.0.1:3000")
    ap.add_argument("--pg", default="127.0.0.1:5433")
    ap.add_argument("--key", default="")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--secs", type=int, default=20)
    a = ap.parse_args()
    pg = run("pg", a)
    http = run("http", a)
    print(f"pg/http throughput ratio: {pg / http:.2f}")
