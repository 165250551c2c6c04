"""The REST surface checked against its own OpenAPI document by tools
nobody here wrote: openapi-spec-validator on the document chatd serves at
/openapi.json, then schemathesis against a live chatd (examples, coverage
and fuzzing phases, a bounded number of examples per operation, a real
bearer token from st_hooks.py). Every check schemathesis has must pass: no
5xx, status codes, content types, headers and bodies as documented, valid
requests accepted, invalid ones rejected, 405 with Allow for undeclared
methods. Plus the HTTP details schemathesis does not judge (RFC 6750
challenges, 413, 415, no gRPC headers), checked here directly.

Environment: ST_MAX_EXAMPLES (default 25) examples per operation and phase.
"""

import http.client
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import run_chatd

HERE = Path(__file__).resolve().parent
USER, PASSWORD = "schemathesis", "schemathesis-password"


@pytest.fixture(scope="module")
def rest_server(chatd_bin, tmp_root):
    """A chatd of its own (schemathesis creates and revokes a lot), with
    rate limits far above what one fuzzer on loopback sends."""
    yield from run_chatd(chatd_bin, tmp_root, "chatd-rest",
                         ["--unary-rate", "100000", "--unary-burst", "100000"])


def call(base, method, path, body=None, headers=None):
    """One HTTP request; returns (status, headers, body bytes)."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


@pytest.fixture(scope="module")
def base(rest_server):
    b = f"http://{rest_server.http_addr}"
    code, _, out = call(b, "POST", "/v1/accounts",
                        {"username": USER, "password": PASSWORD, "displayName": "Schemathesis"},
                        {"Content-Type": "application/json"})
    assert code == 200, out
    return b


def test_document_validates(base):
    from openapi_spec_validator import validate

    code, headers, raw = call(base, "GET", "/openapi.json")
    assert code == 200 and headers["Content-Type"] == "application/json"
    doc = json.loads(raw)
    validate(doc)  # raises on an invalid OpenAPI 2.0 document
    assert doc["info"]["title"] == "chatd REST API" and doc["info"]["version"] == "v1"
    assert doc["securityDefinitions"]["bearer"]["in"] == "header"
    assert doc["paths"]["/v1/accounts"]["post"]["security"] == []
    assert "security" not in doc["paths"]["/v1/channels"]["get"]  # the document's: bearer


def test_schemathesis(base, tmp_root):
    st = Path(sys.executable).parent / "st"
    assert st.exists(), "schemathesis is not installed in this venv"
    env = dict(os.environ,
               SCHEMATHESIS_HOOKS="st_hooks",
               PYTHONPATH=str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               CHATD_ST_BASE=base, CHATD_ST_USER=USER, CHATD_ST_PASSWORD=PASSWORD,
               NO_COLOR="1")
    report = tmp_root / "schemathesis"
    args = [str(st), "run", base + "/openapi.json",
            "--checks", "all",
            "--phases", "examples,coverage,fuzzing",
            "--max-examples", os.environ.get("ST_MAX_EXAMPLES", "25"),
            # One worker: hypothesis parses lambda sources with ast.parse,
            # which CPython 3.11 may fail with "SystemError: AST
            # constructor recursion depth mismatch" when two threads do it
            # at once (python/cpython#106905).
            "--workers", "1",
            "--seed", os.environ.get("ST_SEED", "1"),
            "--generation-database", "none",
            # ASCII strings: the server counts some lengths in bytes, JSON
            # Schema in characters; the two agree on ASCII. (Non-ASCII
            # input is the Go fuzzers' and test_client.py's.)
            "--generation-codec", "ascii",
            "--suppress-health-check", "all",
            "--max-failures", "50"]
    proc = subprocess.run(args, env=env, cwd=str(tmp_root), capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, "schemathesis found problems:\n" + out[-20000:]
    assert "passed" in out and " 0 passed" not in out, out[-3000:]


def test_http_details(base):
    tok = json.loads(call(base, "POST", "/v1/sessions",
                          {"username": USER, "password": PASSWORD, "deviceName": "details"},
                          {"Content-Type": "application/json"})[2])["accessToken"]
    auth = {"Authorization": "Bearer " + tok}

    # RFC 6750 challenges: none given, a bad one.
    code, h, _ = call(base, "GET", "/v1/users/me")
    assert code == 401 and h["WWW-Authenticate"] == 'Bearer realm="chatd"'
    code, h, _ = call(base, "GET", "/v1/users/me", headers={"Authorization": "Bearer nope"})
    assert code == 401 and h["WWW-Authenticate"].startswith('Bearer realm="chatd", error="invalid_token"')

    # No gRPC transport headers on REST answers.
    code, h, _ = call(base, "GET", "/v1/users/me", headers=auth)
    assert code == 200 and h.get("Grpc-Metadata-Content-Type") is None

    # 415 for a body that is not JSON, 413 for one over 256 KiB (262144
    # bytes, the server's gRPC message limit).
    code, _, out = call(base, "PUT", "/v1/users/me/read-receipts", b'{"hideReadReceipts":true}',
                        dict(auth, **{"Content-Type": "text/plain"}))
    assert code == 415, out
    # (Headers only: the server answers from Content-Length, then closes
    # the connection rather than read a body it refuses.)
    conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=10)
    conn.putrequest("PATCH", "/v1/users/me")
    for k, v in dict(auth, **{"Content-Type": "application/json", "Content-Length": str((256 << 10) + 1)}).items():
        conn.putheader(k, v)
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413, resp.read()
    conn.close()

    # A required body or property missing is 400, with the field named.
    jauth = dict(auth, **{"Content-Type": "application/json"})
    for body in (None, b"", b"{}", b'{"hideReadReceipts":null}'):
        code, _, out = call(base, "PUT", "/v1/users/me/read-receipts", body, jauth)
        assert code == 400, (body, out)
    for body in (b"{}", b'{"displayName":null}'):
        code, _, out = call(base, "PATCH", "/v1/users/me", body, jauth)
        assert code == 400, (body, out)
    st = json.loads(out)
    bad = [d for d in st["details"] if d["@type"].endswith("google.rpc.BadRequest")]
    assert bad and bad[0]["fieldViolations"][0]["field"] == "display_name", st
