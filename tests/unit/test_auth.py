"""Unit tests for portfolio_sync.sources.auth (bearer, header secret, Basic, Standard Webhooks)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portfolio_sync.errors import PayloadError
from portfolio_sync.sources.auth import sign, verify_request

SECRET = "s3cret-with-ümlaut"
BODY = b'{"type":"INSERT","table":"objects"}'
NOW = 1_763_633_100.0
MSG = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"
WHSEC = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def signed(secret: str = SECRET, *, ts: int = int(NOW), body: bytes = BODY) -> dict[str, str]:
    return {
        "webhook-id": MSG,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, MSG, ts, body),
    }


def verify(headers: dict[str, str], *, secret: str = SECRET, body: bytes = BODY) -> None:
    verify_request(secret=secret, headers=headers, body=body, now=NOW)


def rejected(headers: dict[str, str], *, secret: str = SECRET, body: bytes = BODY) -> str:
    with pytest.raises(PayloadError) as info:
        verify(headers, secret=secret, body=body)
    assert info.value.status == 401
    message = str(info.value)
    assert SECRET not in message and WHSEC not in message
    return message


# --- sign ----------------------------------------------------------------------------------


def test_sign_matches_the_standard_webhooks_reference_vector() -> None:
    got = sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert got == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_sign_plain_secret_uses_its_utf8_bytes() -> None:
    raw = base64.b64encode(SECRET.encode()).decode()
    assert sign(SECRET, MSG, 1, BODY) == sign("whsec_" + raw, MSG, 1, BODY)


def test_sign_rejects_invalid_whsec() -> None:
    with pytest.raises(ValueError, match="base64"):
        sign("whsec_not base64!", MSG, 1, BODY)


# --- bearer, header secret, basic ------------------------------------------------------------


@pytest.mark.parametrize("name", ["Authorization", "authorization", "AUTHORIZATION"])
@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_bearer_ok_any_case(name: str, scheme: str) -> None:
    verify({name: f"{scheme} {SECRET}"})


def test_bearer_tolerates_surrounding_whitespace() -> None:
    verify({"Authorization": f"  Bearer   {SECRET}  "})


@pytest.mark.parametrize(
    "value", [f"Bearer {SECRET}x", f"Bearer {SECRET[:-1]}", "Bearer ", "Bearer", "Bearer \ud800"]
)
def test_bearer_wrong(value: str) -> None:
    assert "wrong bearer token" in rejected({"Authorization": value})


def test_unknown_scheme_is_rejected() -> None:
    assert "unsupported Authorization scheme" in rejected({"Authorization": f"Token {SECRET}"})


@pytest.mark.parametrize("name", ["X-Webhook-Secret", "x-webhook-secret"])
def test_header_secret_ok(name: str) -> None:
    verify({name: SECRET})


def test_header_secret_wrong() -> None:
    assert "wrong x-webhook-secret" in rejected({"X-Webhook-Secret": "nope"})


def test_basic_auth_password_is_the_secret() -> None:
    token = base64.b64encode(f"sns:{SECRET}".encode()).decode()
    verify({"Authorization": f"Basic {token}"})


@pytest.mark.parametrize(
    "credential",
    [base64.b64encode(b"sns:wrong").decode(), base64.b64encode(SECRET.encode()).decode(), "%%%"],
)
def test_basic_auth_wrong(credential: str) -> None:
    assert "wrong basic-auth password" in rejected({"Authorization": f"Basic {credential}"})


def test_any_one_valid_credential_is_enough() -> None:
    verify({"Authorization": "Bearer wrong", "X-Webhook-Secret": SECRET})
    verify({"Authorization": f"Bearer {SECRET}", "webhook-signature": "v1,bogus"})


def test_no_credentials() -> None:
    assert "no credentials" in rejected({})
    assert "no credentials" in rejected({"Content-Type": "application/json"})


def test_empty_secret_fails_closed() -> None:
    with pytest.raises(PayloadError) as info:
        verify_request(secret="", headers={"Authorization": "Bearer "}, body=BODY)
    assert info.value.status == 401


# --- Standard Webhooks ---------------------------------------------------------------------


def test_standard_webhooks_ok() -> None:
    verify(signed())


def test_standard_webhooks_header_names_any_case() -> None:
    verify({k.title(): v for k, v in signed().items()})


def test_standard_webhooks_whsec_secret() -> None:
    verify(signed(WHSEC), secret=WHSEC)
    # the key is the decoded bytes, not the literal string
    assert "does not match" in rejected(signed(WHSEC.removeprefix("whsec_")), secret=WHSEC)


def test_standard_webhooks_invalid_whsec_secret_is_explained() -> None:
    headers = signed()
    message = rejected(headers, secret="whsec_***")
    assert "not valid base64" in message


def test_tampered_body() -> None:
    assert "does not match" in rejected(signed(), body=BODY + b" ")


def test_wrong_secret() -> None:
    assert "does not match" in rejected(signed("other"))


def test_tampered_id_or_timestamp() -> None:
    assert "does not match" in rejected({**signed(), "webhook-id": "msg_other"})
    assert "does not match" in rejected({**signed(), "webhook-timestamp": str(int(NOW) - 1)})


def test_replayed_old_timestamp() -> None:
    assert "old" in rejected(signed(ts=int(NOW) - 301))
    verify(signed(ts=int(NOW) - 300))


def test_future_timestamp() -> None:
    assert "future" in rejected(signed(ts=int(NOW) + 301))
    verify(signed(ts=int(NOW) + 300))


def test_custom_tolerance() -> None:
    headers = signed(ts=int(NOW) - 30)
    with pytest.raises(PayloadError):
        verify_request(secret=SECRET, headers=headers, body=BODY, now=NOW, tolerance=10)
    verify_request(secret=SECRET, headers=headers, body=BODY, now=NOW, tolerance=60)


def test_now_defaults_to_the_clock() -> None:
    import time

    ts = int(time.time())
    verify_request(secret=SECRET, headers=signed(ts=ts), body=BODY)
    with pytest.raises(PayloadError):
        verify_request(secret=SECRET, headers=signed(ts=ts - 3600), body=BODY)


@pytest.mark.parametrize("stamp", ["", "abc", "1.5", "-5", "+5", "1_000", "١٢٣", "9" * 16])
def test_timestamp_not_an_integer(stamp: str) -> None:
    message = rejected({**signed(), "webhook-timestamp": stamp})
    assert "webhook-timestamp" in message


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_standard_webhooks_header(missing: str) -> None:
    headers = signed()
    del headers[missing]
    assert f"missing {missing}" in rejected(headers)


def test_multiple_signatures_one_valid() -> None:
    good = signed()
    other = sign("rotated-away", MSG, int(NOW), BODY)
    for value in (
        f"{other} {good['webhook-signature']}",
        f"v1a,ed25519sig {good['webhook-signature']} v2,zzz",
        f"{good['webhook-signature']}  {other}",
    ):
        verify({**good, "webhook-signature": value})


def test_multiple_signatures_none_valid() -> None:
    bad = " ".join(sign(s, MSG, int(NOW), BODY) for s in ("a", "b", "c"))
    assert "does not match" in rejected({**signed(), "webhook-signature": bad})


def test_signature_with_wrong_version_is_ignored() -> None:
    value = signed()["webhook-signature"].replace("v1,", "v2,")
    assert "does not match" in rejected({**signed(), "webhook-signature": value})


def test_bad_signature_and_wrong_bearer_report_both() -> None:
    message = rejected({**signed("other"), "Authorization": "Bearer nope"})
    assert "wrong bearer token" in message and "does not match" in message


# --- fuzz ----------------------------------------------------------------------------------

header_names = st.sampled_from(
    ["Authorization", "x-webhook-secret", "webhook-id", "webhook-timestamp", "webhook-signature"]
) | st.text(max_size=10)


@settings(max_examples=500, deadline=None)
@given(
    headers=st.dictionaries(header_names, st.text(max_size=60), max_size=6),
    body=st.binary(max_size=64),
    secret=st.text(min_size=1, max_size=20) | st.just(WHSEC) | st.just("whsec_%%"),
)
def test_fuzz_only_payload_error(headers: dict[str, str], body: bytes, secret: str) -> None:
    try:
        verify_request(secret=secret, headers=headers, body=body, now=NOW)
    except PayloadError as exc:
        assert exc.status == 401
