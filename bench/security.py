"""What authentication and limits add to each request, in microseconds.

    .venv/bin/python bench/security.py [--calls 20000] [--http-calls 3000]

Times, call by call (median and p99 of `--calls` calls after a warm-up):

- `AccessPolicy.verify` (what every handshake and HTTP call runs) for each mode:
  none, API keys (3 and 1,000 keys: every digest is compared, in constant time),
  JWT HS256, RS256 (2048-bit) and ES256, with a valid credential;
- `Quotas.admit` + `release` (every request), with the defaults (metering off) and
  with every metering limit on (requests and tokens per minute, a daily budget);
- one whole HTTP call through the app (`GET /v1/models` over httpx's ASGI
  transport, middleware, routing and JSON included) with auth off, API keys, JWT
  HS256 and RS256: the difference to "none" is what authentication costs a call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tokenwire.app import access_policy, build_app, build_gateway
from tokenwire.core.provider import Message, Usage
from tokenwire.core.spec import RequestSpec
from tokenwire.core.stats import StreamOutcome
from tokenwire.protocol.events import StreamStatus
from tokenwire.security.access import AccessPolicy
from tokenwire.security.limits import LimitPolicy, Quotas
from tokenwire.settings import Settings, load_settings

SECRET = "bench-secret-long-enough-for-hs256-0123456789"
SIMULATED = [{"name": "simulated", "kind": "simulated"}]


def settings_for(auth: dict[str, Any]) -> Settings:
    return load_settings(None, {"providers": SIMULATED, "auth": auth})


def quantiles(samples_ns: list[int]) -> tuple[float, float]:
    ordered = sorted(samples_ns)
    return statistics.median(ordered) / 1e3, ordered[int(len(ordered) * 0.99)] / 1e3


def timed(call: Callable[[], object], calls: int) -> tuple[float, float]:
    for _ in range(min(calls, 1000)):
        call()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(calls):
        started = clock()
        call()
        samples.append(clock() - started)
    return quantiles(samples)


async def timed_async(call: Callable[[], Awaitable[object]], calls: int) -> tuple[float, float]:
    for _ in range(min(calls, 200)):
        await call()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(calls):
        started = clock()
        await call()
        samples.append(clock() - started)
    return quantiles(samples)


def row(label: str, figures: tuple[float, float], base: float | None = None) -> None:
    median, p99 = figures
    extra = "" if base is None else f"  (+{median - base:8.1f} us over none)"
    print(f"  {label:<34} median {median:8.1f} us   p99 {p99:8.1f} us{extra}")


class Modes:
    """One settings table and one valid credential per authentication mode."""

    def __init__(self, folder: Path) -> None:
        now = time.time()
        claims = {"sub": "ada", "exp": now + 3600, "iat": now}
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ec_key = ec.generate_private_key(ec.SECP256R1())
        for name, key in (("rsa.pem", rsa_key), ("ec.pem", ec_key)):
            public = key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            (folder / name).write_bytes(public)
        many = {f"tw-key-{n:04d}-0123456789abcdef": f"user{n}" for n in range(999)}
        self.environ = {
            "BENCH_JWT_SECRET": SECRET,
            "BENCH_KEYS_3": json.dumps(
                {"tw-key-ada-0123456789abcdef": "ada", "k2": "b", "k3": "c"}
            ),
            "BENCH_KEYS_1000": json.dumps({**many, "tw-key-ada-0123456789abcdef": "ada"}),
        }
        api_key = "tw-key-ada-0123456789abcdef"
        self.modes: dict[str, tuple[dict[str, Any], str | None]] = {
            "none": ({"mode": "none"}, None),
            "api_key, 3 keys": ({"mode": "api_key", "api_keys_env": "BENCH_KEYS_3"}, api_key),
            "api_key, 1000 keys": (
                {"mode": "api_key", "api_keys_env": "BENCH_KEYS_1000"},
                api_key,
            ),
            "jwt HS256": (
                {"mode": "jwt", "jwt_secret_env": "BENCH_JWT_SECRET"},
                jwt.encode(claims, SECRET, algorithm="HS256"),
            ),
            "jwt RS256 (2048)": (
                {"mode": "jwt", "jwt_public_key_file": str(folder / "rsa.pem")},
                jwt.encode(claims, rsa_key, algorithm="RS256"),
            ),
            "jwt ES256": (
                {"mode": "jwt", "jwt_public_key_file": str(folder / "ec.pem")},
                jwt.encode(claims, ec_key, algorithm="ES256"),
            ),
        }

    def policy(self, mode: str) -> tuple[AccessPolicy, str | None]:
        auth, credential = self.modes[mode]
        return access_policy(settings_for(auth), self.environ), credential


def bench_verify(modes: Modes, calls: int) -> None:
    print("AccessPolicy.verify, one valid credential per call:")
    base = None
    for mode in modes.modes:
        policy, credential = modes.policy(mode)
        # No client address: per-address throttling is measured with the HTTP calls.
        figures = timed(lambda p=policy, c=credential: p.verify(c, None), calls)
        row(mode, figures, base)
        base = figures[0] if base is None else base


def bench_quotas(calls: int) -> None:
    print("Quotas.admit + release, one request per call:")
    spec = RequestSpec(user_id="ada", request_id="r", messages=(Message("user", "x" * 200),))
    outcome = StreamOutcome(
        provider="simulated",
        status=StreamStatus.COMPLETED,
        duration=0.1,
        ttft=0.01,
        chunks=10,
        text_bytes=40,
        usage=Usage(prompt_tokens=50, completion_tokens=10),
        cost_usd=1e-6,
    )
    metering = LimitPolicy(
        requests_per_minute_per_user=10**9,
        tokens_per_minute_per_user=10**12,
        budget_usd_per_user_per_day=10**9,
    )
    loop = asyncio.new_event_loop()
    try:
        for label, policy in (
            ("defaults (metering off)", LimitPolicy()),
            ("metering on", metering),
        ):
            quotas = Quotas(policy)

            def once(q: Quotas = quotas) -> None:
                admitted = loop.run_until_complete(q.admit(spec))
                q.release(admitted, outcome)

            # run_until_complete's own cost, measured alone, is taken off.
            async def nothing() -> None:
                return None

            overhead = timed(lambda: loop.run_until_complete(nothing()), calls)[0]
            median, p99 = timed(once, calls)
            row(label, (median - overhead, p99 - overhead))
    finally:
        loop.close()


async def bench_http(modes: Modes, calls: int) -> None:
    print("GET /v1/models through the whole app (httpx ASGI transport):")
    base = None
    for mode in ("none", "api_key, 3 keys", "jwt HS256", "jwt RS256 (2048)"):
        auth, credential = modes.modes[mode]
        settings = settings_for(auth)
        app = build_app(settings, build_gateway(settings), modes.environ)
        headers = {} if credential is None else {"authorization": f"Bearer {credential}"}
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:

            async def call(h: httpx.AsyncClient = http, sent: dict[str, str] = headers) -> None:
                response = await h.get("/v1/models", headers=sent)
                assert response.status_code == 200, response.text

            figures = await timed_async(call, calls)
        row(mode, figures, base)
        base = figures[0] if base is None else base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--http-calls", type=int, default=3_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        modes = Modes(Path(folder))
        bench_verify(modes, args.calls)
        bench_quotas(args.calls)
        asyncio.run(bench_http(modes, args.http_calls))


if __name__ == "__main__":
    main()
