"""An independent check of one Web Push request chatd sent (RFC 8291, RFC 8292).

Reads a JSON object on stdin:
  body           base64url of the request body (aes128gcm)
  private_key    base64url of the receiver's P-256 private scalar (32 bytes)
  auth           base64url of the subscription's auth secret (16 bytes)
  authorization  the request's Authorization header ("vapid t=<JWT>, k=<key>")
  endpoint       the subscription endpoint the request was sent to

Decrypts the body with the PyPI package http-ece (not webpush-go), checks
the VAPID JWT (ES256 signature with the key k, aud = the endpoint's origin,
exp in the future and at most 24 hours away, sub a mailto: or https: URI)
and prints {"plaintext": ..., "claims": ..., "record_size": ...}. Any failed
check exits 1 with the reason on stderr.
"""
import base64
import json
import sys
import time
from urllib.parse import urlsplit

import http_ece
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


def b64(s):
    s = s.rstrip("=")
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


def main():
    req = json.load(sys.stdin)
    body = b64(req["body"])
    priv = ec.derive_private_key(int.from_bytes(b64(req["private_key"]), "big"), ec.SECP256R1())
    plaintext = http_ece.decrypt(body, private_key=priv, auth_secret=b64(req["auth"]), version="aes128gcm")
    record_size = int.from_bytes(body[16:20], "big")

    scheme, _, params = req["authorization"].partition(" ")
    if scheme != "vapid":
        fail("Authorization scheme %r, want vapid (RFC 8292 section 3)" % scheme)
    fields = dict(p.strip().split("=", 1) for p in params.split(","))
    token, key = fields["t"], b64(fields["k"])
    head, payload, sig = token.split(".")
    header = json.loads(b64(head))
    if header.get("alg") != "ES256":
        fail("JWT alg %r, want ES256" % header.get("alg"))
    pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key)
    raw = b64(sig)
    if len(raw) != 64:
        fail("JWT signature is %d bytes, want 64 (r||s)" % len(raw))
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    try:
        pub.verify(der, (head + "." + payload).encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        fail("VAPID JWT signature does not verify with k")
    claims = json.loads(b64(payload))
    u = urlsplit(req["endpoint"])
    origin = "%s://%s" % (u.scheme, u.netloc)
    if claims.get("aud") != origin:
        fail("aud %r, want the endpoint's origin %r" % (claims.get("aud"), origin))
    now = time.time()
    exp = claims.get("exp", 0)
    if not (now < exp <= now + 24 * 3600 + 60):
        fail("exp %r is not within the next 24 hours (now %d)" % (exp, now))
    sub = claims.get("sub", "")
    if not (sub.startswith("mailto:") or sub.startswith("https:")):
        fail("sub %r is not a mailto: or https: URI" % sub)
    json.dump({"plaintext": plaintext.decode("utf-8"), "claims": claims, "record_size": record_size}, sys.stdout)


if __name__ == "__main__":
    main()
