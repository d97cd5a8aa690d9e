"""Shared fixtures of the end-to-end tests: the real `openai` Python client and plain
HTTP (stdlib `http.client`) against a running `arbor serve`.

`scripts/test-openai.sh` starts two servers and exports where they listen:

- ARBOR_OPENAI_URL, ARBOR_OPENAI_API_KEY: the main server, with an API key, a small KV
  cache and a small body limit (ARBOR_OPENAI_MAX_BODY_BYTES).
- ARBOR_OPENAI_QUEUE_URL: a server without an API key that runs one sequence at a time
  and lets one wait (--max-running-requests 1 --max-waiting-requests 1), for the
  queue-full test.

Without ARBOR_OPENAI_URL every test is skipped with a message.
"""

import os

import openai
import pytest

from support import Http


def _env(name):
    value = os.environ.get(name, "")
    if not value:
        pytest.skip(f"{name} is not set; run scripts/test-openai.sh", allow_module_level=True)
    return value


@pytest.fixture(scope="session")
def base_url():
    return _env("ARBOR_OPENAI_URL").rstrip("/")


@pytest.fixture(scope="session")
def api_key():
    return _env("ARBOR_OPENAI_API_KEY")


@pytest.fixture(scope="session")
def queue_url():
    return _env("ARBOR_OPENAI_QUEUE_URL").rstrip("/")


@pytest.fixture(scope="session")
def max_body_bytes():
    return int(_env("ARBOR_OPENAI_MAX_BODY_BYTES"))


@pytest.fixture(scope="session")
def client(base_url, api_key):
    # No retries: the tests check the first answer, and 503s must not be retried.
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0, timeout=300)


@pytest.fixture(scope="session")
def async_client(base_url, api_key):
    return openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0, timeout=300)


@pytest.fixture(scope="session")
def model(client):
    return client.models.list().data[0].id


@pytest.fixture(scope="session")
def http(base_url, api_key):
    return Http(base_url, api_key)
