#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/ and fuzz/regressions/manager_sequence/.

Run it again after changing the input layout of a target (for
manager_sequence: the order or fields of `Op` and the enums under it), since
its seeds are `arbitrary`-encoded bytes and change meaning with the layout.
Check a seed's meaning with `cargo fuzz fmt -s none manager_sequence FILE`.
The token_response regressions are raw inputs and are not written here.
"""

import base64
import json
import os
import struct

ROOT = os.path.dirname(os.path.abspath(__file__))


def write(folder, target, name, data):
    path = os.path.join(ROOT, folder, target)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, name), "wb") as f:
        f.write(data)


# --- token_response: first byte picks the status, the rest is the body. ----
# 0=200 1=201 2=400 3=401 4=429 5=500 6=302
def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def compact(value):
    return json.dumps(value, separators=(",", ":")).encode()


# A JWT access token shaped like panva's oidc-provider issues for client
# credentials with a resource indicator (the signature is filler).
JWT = ".".join(
    [
        b64url(compact({"alg": "RS256", "typ": "at+jwt", "kid": "kHq1jY3yGZQ8Kc0NiKj0F6ls4L3ZqbXc"})),
        b64url(
            compact(
                {
                    "jti": "tzOhIJ2y6b3V7n5GxQ2Rv",
                    "sub": "m2m",
                    "iat": 1767225600,
                    "exp": 1767226200,
                    "scope": "api:read",
                    "client_id": "m2m",
                    "iss": "http://127.0.0.1:3000",
                    "aud": "https://api.example.com",
                }
            )
        ),
        b64url(bytes(range(7, 7 + 64))),
    ]
)

TOKEN_RESPONSE = {
    "ok_oidc_provider_jwt": b"\x00"
    + compact({"access_token": JWT, "expires_in": 600, "token_type": "Bearer", "scope": "api:read"}),
    "ok_rfc6749_example": b"\x00"
    + b'{\n  "access_token":"2YotnFZFEjr1zCsicMWpAA",\n  "token_type":"example",\n'
    b'  "expires_in":3600,\n  "refresh_token":"tGzv3JOkF0XG5Qx2TlKWIA",\n'
    b'  "example_parameter":"example_value"\n}\n',
    "ok_dpop_string_expiry": b"\x01"
    + b'{"access_token":"Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU","token_type":"DPoP",'
    b'"expires_in":"2677","scope":"a b"}',
    "ok_azure_style": b"\x00"
    + b'{"token_type":"Bearer","expires_in":"3599","ext_expires_in":3599,'
    b'"access_token":"eyJ0eXAiOiJKV1Qi.eyJhdWQiOiJodHRwczov.c2lnbmF0dXJl\\/x"}',
    "err_invalid_client_401": b"\x03"
    + b'{"error":"invalid_client","error_description":"client authentication failed"}',
    "err_invalid_target_400": b"\x02"
    + b'{"error":"invalid_target","error_description":"resource indicator is missing, or unknown",'
    b'"error_uri":"https://auth.example.com/docs#invalid_target"}',
    "err_use_dpop_nonce_400": b"\x02"
    + b'{"error":"use_dpop_nonce","error_description":"Authorization server requires nonce in DPoP proof"}',
    "html_500": b"\x05"
    + b"<!DOCTYPE html>\r\n<html><head><title>500 Internal Server Error</title></head>\r\n"
    b"<body><h1>Oops</h1></body></html>\r\n",
    "html_400_proxy": b"\x02"
    + b"<html><body><h1>400 Bad Request</h1>Your browser sent an invalid request.</body></html>",
    "slow_down_429": b"\x04" + b'{"error":"slow_down"}',
    "redirect_302": b"\x06" + b'<a href="https://login.example.com/">Found</a>.',
}

# --- www_authenticate: one field per line (RFC 6750 §3, RFC 9110 §11.6.1, RFC 9449 §7.1). --
WWW_AUTHENTICATE = {
    "rfc6750_realm": b'Bearer realm="example"',
    "rfc6750_invalid_token": b'Bearer realm="example", error="invalid_token", '
    b'error_description="The access token expired"',
    "rfc6750_insufficient_scope": b'Bearer realm="example", error="insufficient_scope", '
    b'scope="openid profile email"',
    "rfc9110_newauth": b'Basic realm="simple", Newauth realm="apps", type=1, title="Login to \\"apps\\""',
    "rfc9449_use_dpop_nonce": b'DPoP error="use_dpop_nonce", '
    b'error_description="Resource server requires nonce in DPoP proof"',
    "rfc9449_bearer_and_dpop": b'Bearer realm="api", DPoP algs="ES256 PS256"\n'
    b'DPoP error="invalid_token", algs="ES256"',
    "token68_negotiate": b'Negotiate YIIBzgYGKwYBBQUCoIIBwjCCAb6gMDAuBgkqhkiC9xIBAgI=, Basic realm="x"',
}


# --- retry_after: 8 bytes of clock (i64 LE, Unix seconds), then the value. ----
def clock(secs):
    return struct.pack("<q", secs)


RFC9110_DATE = 784111777  # Sun, 06 Nov 1994 08:49:37 GMT
RETRY_AFTER = {
    "delta_seconds": clock(1445412480) + b"120",
    "imf_fixdate": clock(RFC9110_DATE - 30) + b"Sun, 06 Nov 1994 08:49:37 GMT",
    "rfc850_date": clock(RFC9110_DATE - 30) + b"Sunday, 06-Nov-94 08:49:37 GMT",
    "asctime_date": clock(RFC9110_DATE - 30) + b"Sun Nov  6 08:49:37 1994",
    "past_date": clock(2_000_000_000) + b"Wed, 21 Oct 2015 07:28:00 GMT",
    "huge_delta": clock(0) + b" 99999999999999999999999 ",
    "before_epoch": clock(-86400) + b"Thu, 01 Jan 1970 00:00:00 GMT",
}


# --- manager_sequence: `Vec<Op>` as `arbitrary` 1.x decodes it. ------------
# Each element is preceded by a byte whose low bit says "one more"; an enum
# variant is a u32 (LE) v with (v * variants) >> 32 == index; ints are LE.
def variant(index, count):
    lo = -(-(index << 32) // count)
    hi = ((index + 1) << 32) // count
    v = (lo + hi) // 2
    assert (v * count) >> 32 == index
    return struct.pack("<I", v)


def u8(x):
    return bytes([x])


def u16(x):
    return struct.pack("<H", x)


def u32(x):
    return struct.pack("<I", x)


OPS = 12  # Authorize .. Resource401, in declaration order


def authorize(key):
    return variant(0, OPS) + u8(key)


def respond(pick, reply):
    return variant(1, OPS) + u8(pick) + reply


def transport_error(pick):
    return variant(2, OPS) + u8(pick)


def advance(ms):
    return variant(3, OPS) + u32(ms)


def big_jump(jump):  # Minute, Hour, Day, Month, Century, EndOfTime
    return variant(4, OPS) + variant(jump, 6)


def backwards(ms):
    return variant(5, OPS) + u32(ms)


def jump_to_edge(key, edge):  # UsableEnd, JustBeforeUsableEnd, FreshUntil, BackoffEnd
    return variant(6, OPS) + u8(key) + variant(edge, 4)


def handle_timeout():
    return variant(7, OPS)


def sleep_until_timeout():
    return variant(8, OPS)


def force_refresh(key):
    return variant(9, OPS) + u8(key)


def invalidate(key):
    return variant(10, OPS) + u8(key)


def resource(key, status, carrying, challenge, retry):
    return variant(11, OPS) + u8(key) + status + carrying + challenge + u8(int(retry))


REPLIES = 7


def ok(expires_in, token_type=0, with_scope=True):  # Bearer, LowerBearer, DPoP, Mac
    return variant(0, REPLIES) + expires_in + variant(token_type, 4) + u8(int(with_scope))


def oauth_error(code):  # InvalidClient, InvalidScope, InvalidTarget, UseDpopNonce, UnauthorizedClient
    return variant(1, REPLIES) + variant(code, 5)


def server_error():
    return variant(2, REPLIES)


def garbage(body, status):
    return variant(3, REPLIES) + u8(body) + u8(status)


def huge():
    return variant(4, REPLIES)


def too_many_requests(retry_after):
    return variant(5, REPLIES) + retry_after


def echo(json_body):
    return variant(6, REPLIES) + u8(int(json_body))


EXPIRES = 9
E_ABSENT = variant(0, EXPIRES)
E_NULL = variant(1, EXPIRES)
E_ZERO = variant(3, EXPIRES)
E_MAX = variant(7, EXPIRES)


def e_secs(s):
    return variant(2, EXPIRES) + u16(s)


def e_negative(s):
    return variant(4, EXPIRES) + u16(s)


def e_text(s):
    return variant(5, EXPIRES) + u16(s)


def e_fraction(s):
    return variant(6, EXPIRES) + u16(s)


RETRY = 8  # Absent, Secs, ImfDate, Rfc850Date, AsctimeDate, PastDate, Garbage, Enormous


def ra(index, secs):
    return variant(index, RETRY) + u16(secs)


UNAUTHORIZED, FORBIDDEN = variant(0, 3), variant(1, 3)
CURRENT, FOREIGN = variant(0, 4), variant(2, 4)


def old(i):
    return variant(1, 4) + u8(i)


INVALID_TOKEN, INSUFFICIENT_SCOPE, DPOP_NONCE, MALFORMED = (variant(i, 5) for i in range(1, 5))

MANAGER_SEQUENCE = {
    "refresh_ahead": [
        authorize(0), respond(0, ok(e_secs(3600))), authorize(0), advance(2_900_000),
        authorize(0), respond(0, ok(e_text(3600))), authorize(0), big_jump(1), authorize(0),
    ],
    "edges": [
        advance(1234), authorize(1), respond(0, ok(e_secs(120))), jump_to_edge(1, 2),
        authorize(1), jump_to_edge(1, 1), authorize(1), jump_to_edge(1, 0), authorize(1),
        respond(0, server_error()), jump_to_edge(1, 3), authorize(1), jump_to_edge(1, 3),
        backwards(1), authorize(1), handle_timeout(), authorize(1),
    ],
    "backoff_and_retry_after": [
        authorize(1), respond(0, server_error()), authorize(1), sleep_until_timeout(),
        authorize(1), respond(0, too_many_requests(ra(2, 30))), authorize(1), advance(31_000),
        authorize(1), respond(0, ok(E_ABSENT, 1)), authorize(1), force_refresh(1),
        respond(0, too_many_requests(ra(3, 90))), authorize(1), sleep_until_timeout(),
        force_refresh(1), respond(0, too_many_requests(ra(4, 5))), sleep_until_timeout(),
        authorize(1), respond(0, too_many_requests(ra(1, 120))),
    ],
    "resource_401": [
        authorize(0), respond(0, ok(e_secs(600))), authorize(0),
        resource(0, UNAUTHORIZED, CURRENT, INVALID_TOKEN, False), authorize(0),
        respond(0, ok(e_fraction(600))), authorize(0),
        resource(0, UNAUTHORIZED, old(0), INVALID_TOKEN, True), authorize(0),
        resource(0, FORBIDDEN, CURRENT, INSUFFICIENT_SCOPE, False),
        resource(0, UNAUTHORIZED, CURRENT, INSUFFICIENT_SCOPE, False),
        resource(0, UNAUTHORIZED, FOREIGN, DPOP_NONCE, False),
        resource(0, UNAUTHORIZED, CURRENT, MALFORMED, True), authorize(0),
    ],
    "timeouts_and_clock": [
        authorize(2), authorize(2), advance(11_000), handle_timeout(),
        respond(255, ok(e_secs(60))), authorize(2), backwards(5_000), authorize(2),
        respond(0, ok(e_secs(5))), authorize(2), backwards(60_000), advance(3_000),
        authorize(2), sleep_until_timeout(), sleep_until_timeout(), authorize(2),
        big_jump(5), authorize(2), sleep_until_timeout(),
    ],
    "force_invalidate_transport": [
        authorize(0), authorize(1), respond(1, ok(E_NULL, 0, False)), respond(0, ok(E_MAX)),
        force_refresh(0), transport_error(0), authorize(0), invalidate(0), authorize(0),
        force_refresh(0), sleep_until_timeout(), authorize(0), respond(0, oauth_error(0)),
        authorize(0), sleep_until_timeout(), authorize(0), respond(0, garbage(1, 6)),
        sleep_until_timeout(), authorize(0), respond(0, huge()), sleep_until_timeout(),
        authorize(0), respond(0, ok(E_ZERO)), sleep_until_timeout(), authorize(0),
        respond(0, ok(e_negative(10), 2)),
    ],
}

MANAGER_REGRESSIONS = {
    # The token endpoint echoes the request (with client_secret) in error_description.
    "secret-echoed-in-oauth-error": [authorize(1), respond(1, echo(True))],
}


def ops(sequence):
    return b"".join(b"\x01" + op for op in sequence)


def main():
    for name, data in TOKEN_RESPONSE.items():
        write("corpus", "token_response", name, data)
    for name, data in WWW_AUTHENTICATE.items():
        write("corpus", "www_authenticate", name, data)
    for name, data in RETRY_AFTER.items():
        write("corpus", "retry_after", name, data)
    for name, sequence in MANAGER_SEQUENCE.items():
        write("corpus", "manager_sequence", name, ops(sequence))
    for name, sequence in MANAGER_REGRESSIONS.items():
        write("regressions", "manager_sequence", name, ops(sequence))


if __name__ == "__main__":
    main()
