"""The command line: `tokenwire serve`."""

from __future__ import annotations

import argparse
import gc
import signal
import socket
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import structlog
import uvicorn

from tokenwire.app import build_app, build_gateway, uvicorn_config
from tokenwire.core.gateway import Gateway
from tokenwire.logs import configure_logging
from tokenwire.settings import PROVIDER_KINDS, ConfigError, Settings, load_settings


class GracefulServer(uvicorn.Server):
    """On SIGTERM, end streams and close sockets our way (1001) before uvicorn's (1012)."""

    def __init__(self, config: uvicorn.Config, gateway: Gateway, grace: float) -> None:
        super().__init__(config)
        self._gateway = gateway
        self._grace = grace

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self._gateway.shutdown(self._grace)
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # uvicorn re-raises captured signals after shutting down, so the process would
        # die by SIGTERM; a drained, graceful stop should exit with status 0 instead.
        if sig == signal.SIGTERM and sig in self._captured_signals:
            self._captured_signals.remove(sig)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="tokenwire", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the streaming gateway")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000)")
    serve.add_argument(
        "--provider",
        choices=PROVIDER_KINDS,
        help="serve only this provider kind, named after it",
    )
    serve.add_argument("--config", type=Path, help="TOML configuration file")
    return root


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    server = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if server:
        overrides["server"] = server
    if args.provider:
        overrides["providers"] = [{"name": args.provider, "kind": args.provider}]
        overrides["routing"] = {"default_provider": args.provider}
    return overrides


def serve(settings: Settings) -> int:
    configure_logging(settings.logging)
    log = structlog.get_logger("tokenwire")
    try:
        gateway = build_gateway(settings)
    except ConfigError as exc:
        print(f"tokenwire: configuration error: {exc}", file=sys.stderr)
        return 2
    config = uvicorn_config(
        settings, build_app(settings, gateway), settings.server.host, settings.server.port
    )
    log.info(
        "serving",
        url=f"http://{settings.server.host}:{settings.server.port}",
        providers=[p.name for p in settings.providers],
        default_provider=settings.default_provider,
    )
    tune_garbage_collector()
    GracefulServer(config, gateway, settings.server.shutdown_grace_seconds).run()
    return 0


def tune_garbage_collector() -> None:
    """Keep collector pauses out of the token stream.

    What start-up built (modules, SDK clients, settings) lives as long as the process;
    frozen, it is left out of every collection. With the default thresholds, the
    per-token allocations of 1,000 streams set off young collections many times a
    second and full ones that stall every stream for 100-170 ms (measured; see
    docs/benchmarks.md); a larger first threshold makes them rare.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "serve":
        try:
            settings = load_settings(args.config, flag_overrides(args))
        except ConfigError as exc:
            print(f"tokenwire: configuration error: {exc}", file=sys.stderr)
            return 2
        return serve(settings)
    return 2
