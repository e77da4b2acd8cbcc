"""Credential verification: API keys, JSON Web Tokens, and no authentication."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tokenwire.protocol.errors import http_status
from tokenwire.security.auth import (
    ApiKeyAuthenticator,
    AuthenticationFailed,
    Identity,
    JwtAuthenticator,
    NoAuthenticator,
)

SECRET = "s" * 40
API_KEY = "sk-live-7f3a9c2e1b"


def claims(*without: str, **changes: Any) -> dict[str, Any]:
    """A valid payload for `alice`, five minutes from expiry, with changes."""
    payload: dict[str, Any] = {"sub": "alice", "exp": int(time.time()) + 300}
    payload.update(changes)
    return {name: value for name, value in payload.items() if name not in without}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value).encode())


def hs256(payload: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


def refusal(authenticator: JwtAuthenticator | ApiKeyAuthenticator, credential: str | None) -> str:
    with pytest.raises(AuthenticationFailed) as caught:
        authenticator.authenticate(credential)
    return caught.value.message


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture
def rsa_pem_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Path:
    path = tmp_path / "rsa.pem"
    path.write_bytes(public_pem(rsa_key))
    return path


@pytest.fixture
def ec_pem_file(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> Path:
    path = tmp_path / "ec.pem"
    path.write_bytes(public_pem(ec_key))
    return path


@pytest.fixture
def jwks_file(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> Path:
    rsa_jwk = RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True) | {"kid": "rsa-1"}
    ec_jwk = ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True) | {"kid": "ec-1"}
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [rsa_jwk, ec_jwk]}))
    return path


@pytest.fixture
def hs() -> JwtAuthenticator:
    return JwtAuthenticator(secret=SECRET)


# API keys


@pytest.fixture
def keys() -> ApiKeyAuthenticator:
    return ApiKeyAuthenticator({API_KEY: "alice", "sk-live-other-key": "bob"})


def test_an_api_key_names_its_user(keys: ApiKeyAuthenticator) -> None:
    assert keys.authenticate(API_KEY) == Identity(user_id="alice", credential="api_key")
    assert keys.authenticate("sk-live-other-key").user_id == "bob"


def test_a_wrong_api_key_is_an_invalid_credential(keys: ApiKeyAuthenticator) -> None:
    assert refusal(keys, API_KEY + "x") == "invalid credential"


def test_an_empty_api_key_is_a_missing_credential(keys: ApiKeyAuthenticator) -> None:
    assert refusal(keys, "") == "missing credential"
    assert refusal(keys, "   ") == "missing credential"


def test_no_api_key_is_a_missing_credential(keys: ApiKeyAuthenticator) -> None:
    assert refusal(keys, None) == "missing credential"


def test_a_refusal_is_an_authentication_failure_on_the_wire(keys: ApiKeyAuthenticator) -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        keys.authenticate("nope")
    assert caught.value.error_type == "authentication_failed"
    assert http_status(caught.value) == 401


def test_the_authenticator_holds_no_api_key(keys: ApiKeyAuthenticator) -> None:
    held = repr(vars(keys)) + repr(keys)
    assert API_KEY not in held
    assert API_KEY.encode() not in held.encode()
    digests = [
        digest for bucket in vars(keys)["_users_by_selector"].values() for digest, _ in bucket
    ]
    assert hashlib.sha256(API_KEY.encode()).digest() in digests
    assert all(len(digest) == 32 for digest in digests)


def counted_comparisons(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    compared: list[bytes] = []
    real_compare = hmac.compare_digest

    def counting_compare(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real_compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting_compare)
    return compared


def test_a_key_is_verified_by_comparing_its_whole_digest_in_constant_time(
    keys: ApiKeyAuthenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared = counted_comparisons(monkeypatch)
    assert keys.authenticate(API_KEY).user_id == "alice"
    assert compared == [hashlib.sha256(API_KEY.encode()).digest()]


def test_a_key_sharing_a_stored_digest_s_selector_is_still_refused(
    keys: ApiKeyAuthenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A forged bucket entry: same first bytes as the presented key's digest, another digest.
    presented = hashlib.sha256(b"not-a-key").digest()
    forged = presented[:8] + bytes(24)
    vars(keys)["_users_by_selector"][presented[:8]] = ((forged, "mallory"),)
    compared = counted_comparisons(monkeypatch)
    with pytest.raises(AuthenticationFailed, match="invalid credential"):
        keys.authenticate("not-a-key")
    assert compared == [forged]


def test_the_cost_of_a_check_does_not_grow_with_the_number_of_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    many = ApiKeyAuthenticator({f"key-{n:05d}-abcdef": f"user{n}" for n in range(10_000)})
    compared = counted_comparisons(monkeypatch)
    assert many.authenticate("key-04321-abcdef").user_id == "user4321"
    with pytest.raises(AuthenticationFailed):
        many.authenticate("key-99999-abcdef")
    assert len(compared) <= 1


def test_api_keys_are_read_from_a_json_variable() -> None:
    environ = {"KEYS": json.dumps({API_KEY: "alice", "k2-abcdef": "bob"})}
    keys = ApiKeyAuthenticator.from_environment("KEYS", environ)
    assert keys.authenticate(API_KEY).user_id == "alice"
    assert keys.authenticate("k2-abcdef").user_id == "bob"


def test_api_keys_are_read_from_a_listed_variable() -> None:
    environ = {"KEYS": f" {API_KEY}:alice,k2-abcdef:bob\n k3-ghijkl:carol "}
    keys = ApiKeyAuthenticator.from_environment("KEYS", environ)
    assert keys.authenticate(API_KEY).user_id == "alice"
    assert keys.authenticate("k2-abcdef").user_id == "bob"
    assert keys.authenticate("k3-ghijkl").user_id == "carol"


@pytest.mark.parametrize("environ", [{}, {"KEYS": "  "}])
def test_a_missing_key_variable_is_named(environ: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="KEYS"):
        ApiKeyAuthenticator.from_environment("KEYS", environ)


@pytest.mark.parametrize(
    "value",
    [
        f"{API_KEY}-alice",
        f'{{"{API_KEY}": ',
        f'{{"{API_KEY}": 7}}',
        f"{API_KEY}:",
        f"{API_KEY}:alice,{API_KEY}:bob",
    ],
)
def test_a_malformed_key_variable_names_the_variable_never_the_key(value: str) -> None:
    with pytest.raises(ValueError, match="KEYS") as caught:
        ApiKeyAuthenticator.from_environment("KEYS", {"KEYS": value})
    assert API_KEY not in str(caught.value)


@pytest.mark.parametrize(
    ("keys", "complaint"),
    [
        ({}, "no API keys"),
        ({" ": "alice"}, "API key 1 is empty"),
        ({API_KEY: ""}, "user id of API key 1 is empty"),
        ({API_KEY: "  "}, "user id of API key 1 is empty"),
    ],
)
def test_empty_keys_or_user_ids_are_refused_at_construction(
    keys: dict[str, str], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        ApiKeyAuthenticator(keys)


# JSON Web Tokens: lifetime


def test_an_hs256_token_names_its_subject_and_expiry(hs: JwtAuthenticator) -> None:
    payload = claims()
    identity = hs.authenticate(hs256(payload))
    assert identity == Identity(user_id="alice", expires_at=payload["exp"], credential="jwt")


def test_a_token_expired_beyond_the_leeway_is_refused(hs: JwtAuthenticator) -> None:
    token = hs256(claims(exp=int(time.time()) - 60))
    assert refusal(hs, token) == "expired credential"


def test_a_token_expired_within_the_leeway_is_accepted(hs: JwtAuthenticator) -> None:
    token = hs256(claims(exp=int(time.time()) - 10))
    assert hs.authenticate(token).user_id == "alice"


def test_a_token_without_expiry_is_refused(hs: JwtAuthenticator) -> None:
    assert refusal(hs, hs256(claims("exp"))) == "invalid credential"


def test_a_token_whose_expiry_is_not_a_number_is_refused(hs: JwtAuthenticator) -> None:
    token = hs256(claims(exp=str(int(time.time()) + 300)))
    assert refusal(hs, token) == "invalid credential"


def test_a_token_whose_expiry_is_beyond_any_date_is_refused(hs: JwtAuthenticator) -> None:
    assert refusal(hs, hs256(claims(exp=10**400))) == "invalid credential"


def test_a_token_not_valid_before_a_future_time_is_refused(hs: JwtAuthenticator) -> None:
    token = hs256(claims(nbf=int(time.time()) + 120))
    assert refusal(hs, token) == "credential not yet valid"


def test_a_token_issued_in_the_future_is_refused(hs: JwtAuthenticator) -> None:
    token = hs256(claims(iat=int(time.time()) + 120))
    assert refusal(hs, token) == "credential not yet valid"


# JSON Web Tokens: signatures and algorithms


def test_a_token_signed_with_another_secret_is_refused(hs: JwtAuthenticator) -> None:
    assert refusal(hs, hs256(claims(), secret="t" * 40)) == "invalid credential"


def test_a_token_with_a_tampered_payload_is_refused(hs: JwtAuthenticator) -> None:
    header, _, signature = hs256(claims()).split(".")
    forged = f"{header}.{segment(claims(sub='mallory'))}.{signature}"
    assert refusal(hs, forged) == "invalid credential"


@pytest.mark.parametrize("garbage", ["garbage", "a.b.c", "...", "eyJhbGciOi.x.y", "é.é.é"])
def test_garbage_is_refused(hs: JwtAuthenticator, garbage: str) -> None:
    assert refusal(hs, garbage) == "invalid credential"


def test_a_missing_token_is_a_missing_credential(hs: JwtAuthenticator) -> None:
    assert refusal(hs, None) == "missing credential"
    assert refusal(hs, "") == "missing credential"


def test_an_unsigned_alg_none_token_is_refused(hs: JwtAuthenticator, rsa_pem_file: Path) -> None:
    unsigned = f"{segment({'alg': 'none', 'typ': 'JWT'})}.{segment(claims())}."
    assert refusal(hs, unsigned) == "invalid credential"
    assert refusal(JwtAuthenticator(public_key_file=rsa_pem_file), unsigned)


def test_an_hs256_token_keyed_with_the_rsa_public_key_is_refused(
    rsa_key: rsa.RSAPrivateKey, rsa_pem_file: Path
) -> None:
    # PyJWT will not sign HS256 with a PEM key, so the forgery is made by hand.
    signing_input = f"{segment({'alg': 'HS256', 'typ': 'JWT'})}.{segment(claims())}"
    mac = hmac.new(public_pem(rsa_key), signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{b64url(mac)}"
    authenticator = JwtAuthenticator(public_key_file=rsa_pem_file)
    assert refusal(authenticator, forged) == "invalid credential"


def test_an_rs256_token_is_refused_when_configured_for_hs256(
    hs: JwtAuthenticator, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert refusal(hs, token) == "invalid credential"


def test_an_rs256_token_is_accepted_with_the_pem_public_key(
    rsa_key: rsa.RSAPrivateKey, rsa_pem_file: Path
) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    identity = JwtAuthenticator(public_key_file=rsa_pem_file).authenticate(token)
    assert identity.user_id == "alice"


def test_an_es256_token_is_accepted_with_the_pem_public_key(
    ec_key: ec.EllipticCurvePrivateKey, ec_pem_file: Path
) -> None:
    token = jwt.encode(claims(), ec_key, algorithm="ES256")
    identity = JwtAuthenticator(public_key_file=ec_pem_file).authenticate(token)
    assert identity.user_id == "alice"


def test_an_es256_token_is_refused_by_an_rsa_key(
    ec_key: ec.EllipticCurvePrivateKey, rsa_pem_file: Path
) -> None:
    token = jwt.encode(claims(), ec_key, algorithm="ES256")
    assert refusal(JwtAuthenticator(public_key_file=rsa_pem_file), token) == "invalid credential"


def test_a_jwks_picks_the_key_named_by_kid(
    jwks_file: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    authenticator = JwtAuthenticator(jwks_file=jwks_file)
    by_rsa = jwt.encode(claims(sub="r"), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    by_ec = jwt.encode(claims(sub="e"), ec_key, algorithm="ES256", headers={"kid": "ec-1"})
    assert authenticator.authenticate(by_rsa).user_id == "r"
    assert authenticator.authenticate(by_ec).user_id == "e"


def test_a_jwks_refuses_an_unknown_kid(jwks_file: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-2"})
    assert refusal(JwtAuthenticator(jwks_file=jwks_file), token) == "invalid credential"


def test_a_jwks_refuses_a_token_without_kid(jwks_file: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert refusal(JwtAuthenticator(jwks_file=jwks_file), token) == "invalid credential"


def test_a_jwks_refuses_a_token_signed_by_another_key_under_a_known_kid(
    jwks_file: Path, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    token = jwt.encode(claims(), other_rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    assert refusal(JwtAuthenticator(jwks_file=jwks_file), token) == "invalid credential"


def test_a_jwks_refuses_an_algorithm_other_than_its_keys(
    jwks_file: Path, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    token = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "rsa-1"})
    assert refusal(JwtAuthenticator(jwks_file=jwks_file), token) == "invalid credential"


# JSON Web Tokens: claims


def test_the_right_audience_and_issuer_are_accepted() -> None:
    authenticator = JwtAuthenticator(secret=SECRET, audience="tokenwire", issuer="https://idp")
    token = hs256(claims(aud="tokenwire", iss="https://idp"))
    assert authenticator.authenticate(token).user_id == "alice"


def test_a_wrong_audience_is_refused() -> None:
    authenticator = JwtAuthenticator(secret=SECRET, audience="tokenwire")
    assert refusal(authenticator, hs256(claims(aud="elsewhere"))) == "invalid credential"


def test_a_missing_audience_is_refused_when_one_is_configured() -> None:
    authenticator = JwtAuthenticator(secret=SECRET, audience="tokenwire")
    assert refusal(authenticator, hs256(claims())) == "invalid credential"


def test_an_audience_is_refused_when_none_is_configured(hs: JwtAuthenticator) -> None:
    assert refusal(hs, hs256(claims(aud="elsewhere"))) == "invalid credential"


def test_a_wrong_issuer_is_refused() -> None:
    authenticator = JwtAuthenticator(secret=SECRET, issuer="https://idp")
    assert refusal(authenticator, hs256(claims(iss="https://evil"))) == "invalid credential"


def test_a_missing_issuer_is_refused_when_one_is_configured() -> None:
    authenticator = JwtAuthenticator(secret=SECRET, issuer="https://idp")
    assert refusal(authenticator, hs256(claims())) == "invalid credential"


def test_a_token_without_subject_is_refused(hs: JwtAuthenticator) -> None:
    assert refusal(hs, hs256(claims("sub"))) == "invalid credential"


@pytest.mark.parametrize("subject", ["", "   ", "x" * 257])
def test_an_empty_or_overlong_subject_is_refused(hs: JwtAuthenticator, subject: str) -> None:
    assert refusal(hs, hs256(claims(sub=subject))) == "invalid credential"


def test_a_token_over_8_kib_is_refused(hs: JwtAuthenticator) -> None:
    token = hs256(claims(padding="p" * 6800))
    assert 8 * 1024 < len(token) <= 9 * 1024
    assert refusal(hs, token) == "invalid credential"


def test_a_refusal_never_quotes_the_token(hs: JwtAuthenticator) -> None:
    tokens = [hs256(claims(exp=1)), hs256(claims(), secret="t" * 40), "not-a-token"]
    for token in tokens:
        with pytest.raises(AuthenticationFailed) as caught:
            hs.authenticate(token)
        assert token not in str(caught.value)
        assert token.split(".")[0] not in caught.value.message


# JSON Web Tokens: construction


def settings(**given: str | None) -> dict[str, Any]:
    sources: dict[str, Any] = {"secret_env": None, "public_key_file": None, "jwks_file": None}
    return sources | {"audience": None, "issuer": None, "environ": {"JWT_SECRET": SECRET}} | given


def test_settings_with_a_secret_variable_build_an_hs256_authenticator() -> None:
    authenticator = JwtAuthenticator.from_settings(**settings(secret_env="JWT_SECRET"))
    assert authenticator.authenticate(hs256(claims())).user_id == "alice"


def test_no_key_source_names_the_three_settings() -> None:
    with pytest.raises(ValueError, match="exactly one") as caught:
        JwtAuthenticator.from_settings(**settings())
    for name in ("auth.jwt_secret_env", "auth.jwt_public_key_file", "auth.jwks_file"):
        assert name in str(caught.value)


def test_two_key_sources_are_named(rsa_pem_file: Path) -> None:
    given = settings(secret_env="JWT_SECRET", public_key_file=str(rsa_pem_file))
    with pytest.raises(ValueError, match=r"auth\.jwt_secret_env and auth\.jwt_public_key_file"):
        JwtAuthenticator.from_settings(**given)


def test_a_short_hs256_secret_names_the_setting() -> None:
    given = settings(secret_env="JWT_SECRET", environ={"JWT_SECRET": "s" * 31})
    with pytest.raises(ValueError, match=r"auth\.jwt_secret_env: .*32 bytes") as caught:
        JwtAuthenticator.from_settings(**given)
    assert "s" * 31 not in str(caught.value)


def test_an_unset_secret_variable_is_named() -> None:
    given = settings(secret_env="JWT_SECRET", environ={})
    with pytest.raises(ValueError, match=r"auth\.jwt_secret_env: .*JWT_SECRET"):
        JwtAuthenticator.from_settings(**given)


@pytest.mark.parametrize(
    ("argument", "setting"),
    [("public_key_file", "auth.jwt_public_key_file"), ("jwks_file", "auth.jwks_file")],
)
def test_an_unreadable_key_file_names_the_setting_and_the_file(
    tmp_path: Path, argument: str, setting: str
) -> None:
    missing = str(tmp_path / "absent.pem")
    with pytest.raises(ValueError, match=re.escape(f"{setting}: cannot read {missing}")):
        JwtAuthenticator.from_settings(**settings(**{argument: missing}))


def test_a_file_that_is_not_a_public_key_is_named(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    private = tmp_path / "private.pem"
    private.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ValueError, match=r"auth\.jwt_public_key_file: .*private\.pem"):
        JwtAuthenticator.from_settings(**settings(public_key_file=str(private)))


def test_an_ec_key_on_another_curve_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p384.pem"
    path.write_bytes(public_pem(ec.generate_private_key(ec.SECP384R1())))
    with pytest.raises(ValueError, match=r"p384\.pem"):
        JwtAuthenticator(public_key_file=path)


def test_a_jwks_with_a_private_key_is_refused(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = tmp_path / "jwks.json"
    private = RSAAlgorithm.to_jwk(rsa_key, as_dict=True) | {"kid": "rsa-1"}
    path.write_text(json.dumps({"keys": [private]}))
    with pytest.raises(ValueError, match="private key") as caught:
        JwtAuthenticator(jwks_file=path)
    assert private["d"] not in str(caught.value)


def test_a_jwks_with_a_short_rsa_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    path.write_text(json.dumps({"keys": [RSAAlgorithm.to_jwk(short, as_dict=True) | {"kid": "k"}]}))
    with pytest.raises(ValueError, match="2048 bits"):
        JwtAuthenticator(jwks_file=path)


@pytest.mark.parametrize(
    "document",
    [
        "not json",
        '{"keys": []}',
        '{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}',
        '{"keys": [{"kty": "RSA", "alg": "none", "kid": "n"}]}',
        '{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}',
        '{"keys": [{"kty": "RSA", "kid": "r"}]}',
        '[{"kty": "RSA", "kid": "r"}]',
    ],
)
def test_an_invalid_jwks_file_is_named(tmp_path: Path, document: str) -> None:
    path = tmp_path / "keys.json"
    path.write_text(document)
    with pytest.raises(ValueError, match=r"auth\.jwks_file: .*keys\.json"):
        JwtAuthenticator.from_settings(**settings(jwks_file=str(path)))


# No authentication


def test_no_authentication_takes_the_user_id_given() -> None:
    assert NoAuthenticator().authenticate("carol") == Identity(user_id="carol", credential="none")


def test_no_authentication_without_a_user_id_is_anonymous() -> None:
    assert NoAuthenticator().authenticate(None).user_id == "anonymous"
    assert NoAuthenticator().authenticate("").user_id == "anonymous"
