"""Helpers the client test scripts share: tarn's own SQL endpoint as the reference, waiting
for a condition, and counting checks."""
import json
import time
import urllib.request


def tarn_sql_for(server, key):
    """A function running SQL through tarn's REST endpoint (plain HTTP), for reference."""
    def tarn_sql(sql):
        req = urllib.request.Request(server + "/v1/orgs/self/queries",
                                     data=json.dumps({"sql": {"query": sql}}).encode(),
                                     headers={"Content-Type": "application/json",
                                              "Authorization": "ApiKey " + key})
        return json.load(urllib.request.urlopen(req))["results"]
    return tarn_sql


def wait(pred, what, secs=60):
    deadline = time.time() + secs
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError("timed out waiting for " + what)


class Checks:
    """Counts passed checks; a failed one raises with its message."""

    def __init__(self):
        self.count = 0

    def check(self, cond, msg):
        if not cond:
            raise AssertionError(msg)
        self.count += 1

    def passed(self):
        self.count += 1
