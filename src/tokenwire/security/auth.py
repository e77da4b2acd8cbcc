"""Credential verification: API keys, JSON Web Tokens, or none at all.

A transport extracts the credential string from its request and hands it to an
`Authenticator`, which returns the caller's `Identity` or raises
`AuthenticationFailed`. Key material is read once, at construction; `authenticate`
does no I/O, so it is safe to call on the event loop.

`AuthenticationFailed` (from the error hierarchy, where its status and close code
are mapped) carries one of a few generic messages and never quotes the credential:
"missing credential", "invalid credential", "expired credential", "credential not
yet valid".
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from tokenwire.protocol.errors import AuthenticationFailed

__all__ = [
    "ApiKeyAuthenticator",
    "AuthenticationFailed",
    "Authenticator",
    "Identity",
    "JwtAuthenticator",
    "NoAuthenticator",
]

MAX_TOKEN_BYTES = 8 * 1024
MAX_SUBJECT_CHARS = 256
MIN_SECRET_BYTES = 32
MIN_RSA_KEY_BITS = 2048
# 9999-12-31T23:59:59Z: a later exp is nonsense, and may not even fit a float.
LAST_EPOCH_SECOND = 253_402_300_799
# A key set is published, so it may only hold keys for asymmetric algorithms.
JWKS_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a credential says the caller is, and until when."""

    user_id: str
    # Epoch seconds when the credential stops being valid (a JWT's exp); None: never.
    expires_at: float | None = None
    # How it was established ("api_key", "jwt", "none"), for audit lines; never the secret.
    credential: str = ""


class Authenticator(Protocol):
    """The seam every transport authenticates through, whatever the configured mode."""

    mode: str

    def authenticate(self, credential: str | None) -> Identity:
        """The identity `credential` establishes; raises `AuthenticationFailed`."""
        ...


class ApiKeyAuthenticator:
    """Static API keys, each naming its user.

    Only SHA-256 digests of the keys are held, so a repr, a debugger or a memory dump
    shows no usable key. A presented key's digest is looked up by its first bytes (a
    selector: the time the lookup takes depends on a hash the caller cannot steer
    towards a stored one) and then compared whole in constant time, so that an
    attempt costs the same with three keys or a hundred thousand.
    """

    mode = "api_key"

    def __init__(self, keys: Mapping[str, str]) -> None:
        if not keys:
            raise ValueError("no API keys given")
        buckets: dict[bytes, list[tuple[bytes, str]]] = {}
        for number, (key, user_id) in enumerate(keys.items(), 1):
            if not key.strip():
                raise ValueError(f"API key {number} is empty")
            if not user_id.strip():
                raise ValueError(f"the user id of API key {number} is empty")
            digest = _digest(key)
            buckets.setdefault(digest[:_SELECTOR_BYTES], []).append((digest, user_id))
        self._users_by_selector = {selector: tuple(b) for selector, b in buckets.items()}
        self._count = len(keys)

    @classmethod
    def from_environment(cls, variable: str, environ: Mapping[str, str]) -> ApiKeyAuthenticator:
        """Keys from `environ[variable]`: JSON `{"key": "user"}` or `key1:user1,key2:user2`.

        Errors name the variable and an entry's position, never a key.
        """
        text = environ.get(variable, "").strip()
        if not text:
            raise ValueError(f"{variable} is not set or empty: it must hold the API keys")
        pairs = (
            _json_pairs(variable, text) if text.startswith("{") else _listed_pairs(variable, text)
        )
        try:
            return cls(_unique_keys(pairs))
        except ValueError as error:
            raise ValueError(f"{variable}: {error}") from None

    def authenticate(self, credential: str | None) -> Identity:
        if not credential or not credential.strip():
            raise AuthenticationFailed("missing credential")
        presented = _digest(credential)
        user_id = None
        for digest, owner in self._users_by_selector.get(presented[:_SELECTOR_BYTES], ()):
            if hmac.compare_digest(presented, digest):
                user_id = owner
        if user_id is None:
            raise AuthenticationFailed("invalid credential")
        return Identity(user_id=user_id, credential="api_key")

    def __repr__(self) -> str:
        return f"ApiKeyAuthenticator({self._count} keys)"


@dataclass(frozen=True, slots=True)
class _VerificationKey:
    """A key together with the only algorithms it may verify."""

    key: jwt.PyJWK | rsa.RSAPublicKey | ec.EllipticCurvePublicKey | bytes
    algorithms: tuple[str, ...]


class JwtAuthenticator:
    """JSON Web Tokens checked against an HS256 secret, a PEM public key or a JWKS file.

    The algorithms accepted follow from the configured key alone, never from the
    token's header: that is what refuses `alg: none`, and the confusion in which a
    public key is used as an HMAC secret.
    """

    mode = "jwt"

    def __init__(
        self,
        *,
        secret: str | bytes | None = None,
        public_key_file: str | Path | None = None,
        jwks_file: str | Path | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway_seconds: float = 30.0,
    ) -> None:
        if [secret, public_key_file, jwks_file].count(None) != 2:
            raise ValueError("exactly one of secret, public_key_file and jwks_file is needed")
        if leeway_seconds < 0:
            raise ValueError("leeway_seconds must not be negative")
        self._key: _VerificationKey | None = None
        self._keys_by_id: dict[str, _VerificationKey] = {}
        if secret is not None:
            self._key = _secret_key(secret)
        elif public_key_file is not None:
            self._key = _pem_key(Path(public_key_file))
        elif jwks_file is not None:
            self._keys_by_id = _jwks_keys(Path(jwks_file))
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway_seconds
        self._required = ["exp", "sub"]
        self._required += ["aud"] if audience is not None else []
        self._required += ["iss"] if issuer is not None else []

    @classmethod
    def from_settings(
        cls,
        *,
        secret_env: str | None,
        public_key_file: str | None,
        jwks_file: str | None,
        audience: str | None,
        issuer: str | None,
        environ: Mapping[str, str],
    ) -> JwtAuthenticator:
        """Built from the `auth` settings; errors name the setting at fault."""
        sources = {
            "auth.jwt_secret_env": secret_env,
            "auth.jwt_public_key_file": public_key_file,
            "auth.jwks_file": jwks_file,
        }
        chosen = [name for name, value in sources.items() if value]
        if len(chosen) != 1:
            given = f" ({' and '.join(chosen)} are set)" if chosen else ""
            raise ValueError(f"JWT authentication needs exactly one of {', '.join(sources)}{given}")
        try:
            if secret_env:
                secret = environ.get(secret_env, "")
                if not secret:
                    raise ValueError(f"the variable {secret_env} is not set or empty")
                return cls(secret=secret, audience=audience, issuer=issuer)
            return cls(
                public_key_file=public_key_file or None,
                jwks_file=jwks_file or None,
                audience=audience,
                issuer=issuer,
            )
        except ValueError as error:
            raise ValueError(f"{chosen[0]}: {error}") from None

    def authenticate(self, credential: str | None) -> Identity:
        if not credential or not credential.strip():
            raise AuthenticationFailed("missing credential")
        # Refused before any parsing, so an oversized token costs no decoding.
        if len(credential) > MAX_TOKEN_BYTES or not credential.isascii():
            raise AuthenticationFailed("invalid credential")
        try:
            verification = self._key_for(credential)
            claims = jwt.decode(
                credential,
                key=verification.key,
                algorithms=list(verification.algorithms),
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": self._required},
            )
        except jwt.ExpiredSignatureError as error:
            raise AuthenticationFailed("expired credential") from error
        except jwt.ImmatureSignatureError as error:
            raise AuthenticationFailed("credential not yet valid") from error
        except jwt.PyJWTError as error:
            raise AuthenticationFailed("invalid credential") from error
        return _identity_of(claims)

    def _key_for(self, token: str) -> _VerificationKey:
        if self._key is not None:
            return self._key
        # The unverified header only picks among keys held here; the key then fixes
        # the algorithm, and the signature check decides.
        kid = jwt.get_unverified_header(token).get("kid")
        key = self._keys_by_id.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise AuthenticationFailed("invalid credential")
        return key

    def __repr__(self) -> str:
        return f"JwtAuthenticator(audience={self._audience!r}, issuer={self._issuer!r})"


class NoAuthenticator:
    """No authentication: the caller is whoever it says (its `user_id` parameter)."""

    mode = "none"

    def authenticate(self, credential: str | None) -> Identity:
        return Identity(user_id=credential or "anonymous", credential="none")


# Eight bytes of a SHA-256 digest: collisions among a server's keys are left to the
# whole-digest comparison, and are too rare to cost anything.
_SELECTOR_BYTES = 8


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def _json_pairs(variable: str, text: str) -> list[tuple[str, object]]:
    try:
        # Pairs rather than a dict, so that a repeated key is noticed, not overwritten.
        pairs: list[tuple[str, object]] = json.loads(text, object_pairs_hook=list)
    except (ValueError, RecursionError):
        raise ValueError(f"{variable} is not valid JSON") from None
    return pairs


def _listed_pairs(variable: str, text: str) -> list[tuple[str, object]]:
    pairs: list[tuple[str, object]] = []
    entries = [entry for entry in re.split(r"[,\s]+", text) if entry]
    for number, entry in enumerate(entries, 1):
        key, colon, user_id = entry.partition(":")
        if not colon:
            raise ValueError(f"{variable}: entry {number} is not of the form key:user")
        pairs.append((key, user_id))
    return pairs


def _unique_keys(pairs: Iterable[tuple[str, object]]) -> dict[str, str]:
    keys: dict[str, str] = {}
    for number, (key, user_id) in enumerate(pairs, 1):
        if not isinstance(user_id, str):
            raise ValueError(f"the user id of entry {number} is not a string")
        if key in keys:
            raise ValueError(f"entry {number} repeats an earlier key")
        keys[key] = user_id
    return keys


def _secret_key(secret: str | bytes) -> _VerificationKey:
    key = secret.encode() if isinstance(secret, str) else secret
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"an HS256 secret needs at least {MIN_SECRET_BYTES} bytes")
    return _VerificationKey(key, ("HS256",))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror or error}") from None


def _pem_key(path: Path) -> _VerificationKey:
    data = _read(path)
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(f"{path} is not a PEM public key") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_KEY_BITS:
            raise ValueError(f"{path}: an RSA key needs at least {MIN_RSA_KEY_BITS} bits")
        return _VerificationKey(key, ("RS256",))
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return _VerificationKey(key, ("ES256",))
    raise ValueError(f"{path} holds neither an RSA nor an EC P-256 public key")


def _jwks_keys(path: Path) -> dict[str, _VerificationKey]:
    data = _read(path)
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise ValueError(f"{path} is not JSON") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f'{path} is not a JSON Web Key Set (no "keys" list)')
    keys: dict[str, _VerificationKey] = {}
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: key {number} is not an object")
        if entry.get("use", "sig") != "sig":
            continue  # an encryption key never verifies a signature
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid:
            raise ValueError(f"{path}: key {number} has no kid")
        if kid in keys:
            raise ValueError(f"{path}: key {number} repeats the kid of an earlier key")
        keys[kid] = _jwk_key(path, number, entry)
    if not keys:
        raise ValueError(f"{path} holds no signing keys")
    return keys


def _jwk_key(path: Path, number: int, entry: dict[str, Any]) -> _VerificationKey:
    if "d" in entry:
        raise ValueError(f"{path}: key {number} is a private key; publish only public keys")
    if "alg" in entry and entry["alg"] not in JWKS_ALGORITHMS:
        raise ValueError(f"{path}: key {number} names an algorithm that is not allowed")
    try:
        jwk = jwt.PyJWK(entry)
    except jwt.PyJWTError:
        # PyJWT's message quotes the whole key; the position is enough.
        raise ValueError(f"{path}: key {number} is not a usable key") from None
    if jwk.algorithm_name not in JWKS_ALGORITHMS:
        raise ValueError(f"{path}: key {number} is not for an asymmetric algorithm")
    if isinstance(jwk.key, rsa.RSAPublicKey) and jwk.key.key_size < MIN_RSA_KEY_BITS:
        raise ValueError(f"{path}: key {number} is an RSA key under {MIN_RSA_KEY_BITS} bits")
    return _VerificationKey(jwk, (jwk.algorithm_name,))


def _identity_of(claims: dict[str, Any]) -> Identity:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject.strip() or len(subject) > MAX_SUBJECT_CHARS:
        raise AuthenticationFailed("invalid credential")
    expires_at = claims["exp"]
    # PyJWT accepts any exp that int() takes, a string or a 400-digit number included.
    if isinstance(expires_at, bool) or not isinstance(expires_at, int | float):
        raise AuthenticationFailed("invalid credential")
    if not 0 < expires_at <= LAST_EPOCH_SECOND:
        raise AuthenticationFailed("invalid credential")
    return Identity(user_id=subject, expires_at=float(expires_at), credential="jwt")
