"""schemathesis hooks of tests/python/test_rest_schema.py (loaded through
SCHEMATHESIS_HOOKS=st_hooks): a bearer token for the operations that need
one, from a real log-in.

The token is fetched by POST /v1/sessions for the account named by
CHATD_ST_USER / CHATD_ST_PASSWORD on CHATD_ST_BASE, cached, and fetched
again when a call answers 401: schemathesis itself calls DELETE
/v1/sessions/current and the revoke operations, which end the session the
token belongs to.
"""

import json
import os
import urllib.request

import schemathesis


@schemathesis.auth(refresh_interval=600, retry_on=[401])
class ChatdBearer:
    def get(self, case, ctx):
        body = json.dumps({
            "username": os.environ["CHATD_ST_USER"],
            "password": os.environ["CHATD_ST_PASSWORD"],
            "deviceName": "schemathesis",
        }).encode()
        req = urllib.request.Request(
            os.environ["CHATD_ST_BASE"] + "/v1/sessions", data=body,
            headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.load(resp)["accessToken"]

    def set(self, case, data, ctx):
        # Only where the document asks for the token: the public operations
        # (security: []) are exercised without one.
        if case.operation.definition.raw.get("security") == []:
            return
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"
