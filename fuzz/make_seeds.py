#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/ and fuzz/regressions/manager_sequence/.

The jwk_input seeds include the TEST KEYS of keys/src/lib.rs, read
from that file.

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


# --- dpop_nonce: first byte picks the URI (bits 0-1) and lifetime (bits 2-3), ----
# --- the rest is DPoP-Nonce field values separated by "\n". -------------------
DPOP_NONCE = {
    # RFC 9449 §8 example nonce.
    "rfc9449_example": b"\x00eyJ7S_zG.eyJH0-Z.HX4w-7v",
    # What panva's oidc-provider sends: 43 base64url characters.
    "oidc_provider": b"\x01" + b64url(bytes(range(32))).encode(),
    "padded_with_spaces": b"\x02  8c1a4f0e-6b2d-4b1c-9f1e-3c2a7d5e9b10\t ",
    "quote_refused": b"\x03abc\"def",
    "backslash_refused": b"\x04abc\\def",
    "too_long_513": b"\x05" + b"n" * 513,
    "longest_512": b"\x06" + b"n" * 512,
    "second_field_ignored": b"\x07\nsecond-nonce",
    "two_fields": b"\x08first-nonce\nsecond-nonce",
    "zero_lifetime": b"\x09short-lived",
    "max_lifetime": b"\x0ceternal",
    "obs_text": b"\x03caf\xc3\xa9",
}

# --- discovery_document: first byte = status (bits 0-3, 0-3 are 200), issuer ----
# --- (bit 6: 0 https://auth.example.com, 1 https://login.example.com/tenant/a), --
# --- fallback after a 404 (bit 7); the rest is the body. ----------------------
def discovery(issuer, **extra):
    doc = {
        "authorization_endpoint": issuer + "/auth",
        "claims_parameter_supported": False,
        "claims_supported": ["sub", "sid", "auth_time", "iss"],
        "code_challenge_methods_supported": ["S256"],
        "end_session_endpoint": issuer + "/session/end",
        "grant_types_supported": ["implicit", "authorization_code", "refresh_token", "client_credentials"],
        "issuer": issuer,
        "jwks_uri": issuer + "/jwks",
        "authorization_response_iss_parameter_supported": True,
        "response_modes_supported": ["form_post", "fragment", "query"],
        "response_types_supported": ["code id_token", "code", "id_token", "none"],
        "scopes_supported": ["openid", "offline_access", "api:read"],
        "subject_types_supported": ["public"],
        "token_endpoint_auth_methods_supported": [
            "client_secret_basic", "client_secret_jwt", "client_secret_post", "private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["HS256", "RS256", "PS256", "ES256", "EdDSA"],
        "token_endpoint": issuer + "/token",
        "id_token_signing_alg_values_supported": ["RS256"],
        "pushed_authorization_request_endpoint": issuer + "/request",
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "claim_types_supported": ["normal"],
        "dpop_signing_alg_values_supported": ["ES256", "EdDSA", "PS256", "RS256"],
    }
    doc.update(extra)
    return json.dumps(doc, indent=2).encode()


AUTH = "https://auth.example.com"
TENANT = "https://login.example.com/tenant/a"
DISCOVERY_DOCUMENT = {
    # panva's oidc-provider openid-configuration (its default routes).
    "oidc_provider": b"\x00" + discovery(AUTH),
    "oidc_provider_tenant": b"\x40" + discovery(TENANT),
    # RFC 8414 §3.2 style, served at the fallback location after a 404.
    "rfc8414_fallback": b"\x80" + compact({
        "issuer": AUTH, "token_endpoint": AUTH + "/token",
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "ES256"],
        "scopes_supported": ["openid", "profile", "email"], "response_types_supported": ["code", "code token"],
        "service_documentation": "http://server.example.com/service_documentation.html",
        "ui_locales_supported": ["en-US", "en-GB", "en-CA", "fr-FR", "fr-CA"]}),
    "loopback_http_endpoint": b"\x01" + compact({"issuer": AUTH, "token_endpoint": "http://127.0.0.1:3000/token"}),
    "localhost_ipv6_endpoint": b"\x02" + compact({"issuer": AUTH, "token_endpoint": "http://[::1]:3000/token"}),
    "insecure_endpoint": b"\x03" + compact({"issuer": AUTH, "token_endpoint": "http://auth.example.com/token"}),
    "issuer_trailing_slash": b"\x00" + compact({"issuer": AUTH + "/", "token_endpoint": AUTH + "/token"}),
    "issuer_other": b"\x00" + compact({"issuer": "https://evil.example\r\nX: " + "A" * 300, "token_endpoint": AUTH + "/token"}),
    "endpoint_not_string": b"\x00" + compact({"issuer": AUTH, "token_endpoint": ["https://a/token"]}),
    "duplicate_issuer": b"\x00" + b'{"issuer":"https://evil.example","issuer":"https://auth.example.com","token_endpoint":"https://auth.example.com/token"}',
    "not_found_then_fallback_404": b"\x88",
    "html_500": b"\x0c<html><body><h1>502 Bad Gateway</h1></body></html>",
    "created_201": b"\x04" + compact({"issuer": AUTH, "token_endpoint": AUTH + "/token", "dpop_signing_alg_values_supported": "ES256"}),
}

# --- jwk_input: the bytes are a JWK (JSON) or PEM text. ------------------------
# RFC 7517 appendix A.1/A.2/A.3 and RFC 8037 appendix A.1/A.2 examples, the
# RFC 7638 example, and the TEST KEYS of keys/src/lib.rs (read from
# there, so they stay the same keys).
def keys_fixture(name):
    source = open(os.path.join(ROOT, "..", "adapters", "common", "src", "keys.rs")).read()
    start = source.index("const %s: &str = " % name)
    rest = source[start:].split("= ", 1)[1]
    if rest.startswith('r#"'):
        return rest[3:rest.index('"#')].encode()
    return rest[1:rest.index('";')].encode()


RFC7517_EC = {"kty": "EC", "crv": "P-256", "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
              "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM", "use": "enc", "kid": "1"}
RFC8037_ED = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
JWK_INPUT = {
    "rfc7517_a1_ec_public": compact(RFC7517_EC),
    "rfc7517_a2_ec_private_enc": compact(dict(RFC7517_EC, d="870MB6gfuTJ4HtUnUvYMyJpr5eUZNP4Bk43bVdj3eAE")),
    "rfc7517_a2_ec_private_sig": compact(dict(RFC7517_EC, use="sig", d="870MB6gfuTJ4HtUnUvYMyJpr5eUZNP4Bk43bVdj3eAE")),
    "rfc7517_a3_oct": compact({"kty": "oct", "alg": "A128KW", "k": "GawgguFyGrWKav7AX4VKUg"}),
    "rfc8037_a2_ed25519_public": compact(RFC8037_ED),
    "rfc8037_a1_ed25519_private": compact(dict(RFC8037_ED, d="nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")),
    "rfc7638_rsa_public": json.dumps({
        "kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}).encode(),
    "jwk_set": compact({"keys": [RFC7517_EC]}),
    "test_ec_jwk_es256": keys_fixture("EC_JWK").replace(b'"kty"', b'"alg": "ES256", "kty"'),
    "test_ed_jwk": keys_fixture("ED_JWK"),
    "test_rsa_jwk_ps256": keys_fixture("RSA_JWK").replace(b'"kty"', b'"alg": "PS256", "use": "sig", "kty"'),
    "test_ec_pem": keys_fixture("EC_PEM"),
    "test_ed_pem_bag_attributes": b"Bag Attributes\n    friendlyName: key\n" + keys_fixture("ED_PEM"),
    "test_rsa_pem": keys_fixture("RSA_PEM"),
    "test_ec_sec1_pem": keys_fixture("EC_SEC1_PEM"),
    "test_p384_pem": keys_fixture("P384_PEM"),
}


def main():
    for name, data in TOKEN_RESPONSE.items():
        write("corpus", "token_response", name, data)
    for name, data in WWW_AUTHENTICATE.items():
        write("corpus", "www_authenticate", name, data)
    for name, data in RETRY_AFTER.items():
        write("corpus", "retry_after", name, data)
    for name, sequence in MANAGER_SEQUENCE.items():
        write("corpus", "manager_sequence", name, ops(sequence))
    for name, data in DPOP_NONCE.items():
        write("corpus", "dpop_nonce", name, data)
    for name, data in DISCOVERY_DOCUMENT.items():
        write("corpus", "discovery_document", name, data)
    for name, data in JWK_INPUT.items():
        write("corpus", "jwk_input", name, data)
    for name, sequence in MANAGER_REGRESSIONS.items():
        write("regressions", "manager_sequence", name, ops(sequence))


if __name__ == "__main__":
    main()
