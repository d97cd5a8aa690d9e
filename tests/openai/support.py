"""Helpers of the end-to-end tests: plain HTTP to a server, /metrics parsing, and
small builders. Imported by conftest.py and the test modules."""

import http.client
import json
import time
import urllib.parse

import pytest

# Most seconds a test waits for the server to reach a state (such as "no running
# requests"); reaching the limit fails the test, it asserts nothing about speed.
SETTLE_LIMIT_S = 120.0


class Response:
    """Status, headers (lower-case names) and body of one plain HTTP exchange."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = {k.lower(): v for k, v in headers}
        self.body = body

    def json(self):
        return json.loads(self.body)


class Http:
    """Plain HTTP to one server: what the openai client cannot send (malformed JSON,
    oversized bodies) or does not expose (native routes, /metrics)."""

    def __init__(self, base_url, api_key=None):
        parsed = urllib.parse.urlsplit(base_url)
        self.host, self.port = parsed.hostname, parsed.port
        self.api_key = api_key

    def request(self, method, path, body=None, headers=None, auth=True):
        all_headers = {"Content-Type": "application/json"}
        if auth and self.api_key:
            all_headers["Authorization"] = f"Bearer {self.api_key}"
        all_headers.update(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=300)
        try:
            conn.request(method, path, body=body, headers=all_headers)
            response = conn.getresponse()
            return Response(response.status, response.getheaders(), response.read())
        finally:
            conn.close()

    def post(self, path, body, **kwargs):
        return self.request("POST", path, body, **kwargs)

    def get(self, path, **kwargs):
        return self.request("GET", path, **kwargs)

    def metrics(self):
        """The `arbor:` samples of /metrics, by name (labels dropped, except that
        `request_success_total` is keyed by its `finished_reason`)."""
        text = self.get("/metrics", auth=False).body.decode()
        samples = {}
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name_labels, value = line.rsplit(" ", 1)
            name, _, labels = name_labels.partition("{")
            name = name.removeprefix("arbor:")
            if name == "request_success_total":
                reason = labels.split('finished_reason="')[1].split('"')[0]
                name = f"{name}:{reason}"
            samples.setdefault(name, float(value))
        return samples

    def wait_for_metrics(self, ready, what):
        """Polls /metrics until `ready(samples)`; fails naming `what` after
        SETTLE_LIMIT_S."""
        deadline = time.monotonic() + SETTLE_LIMIT_S
        while True:
            samples = self.metrics()
            if ready(samples):
                return samples
            if time.monotonic() > deadline:
                pytest.fail(f"server never reached: {what}; last metrics {samples}")
            time.sleep(0.05)


def idle(samples):
    """No sequence runs or waits."""
    return samples["num_requests_running"] == 0 and samples["num_requests_waiting"] == 0


def user(text):
    return [{"role": "user", "content": text}]
