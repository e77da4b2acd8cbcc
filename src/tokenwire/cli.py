"""The command line: `tokenwire serve` and `tokenwire chat`."""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import multiprocessing
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import structlog
import uvicorn

from tokenwire import __version__
from tokenwire.logs import configure_logging
from tokenwire.security.access import is_loopback
from tokenwire.settings import PROVIDER_KINDS, ConfigError, Settings, load_settings
from tokenwire.workers import CONFIG_ERROR, Supervisor

if TYPE_CHECKING:
    from tokenwire.core.gateway import Gateway

# Kinds that cannot run without a model name, and what `--model` means for the others.
MODEL_REQUIRED = {"openai", "anthropic", "bedrock"}
BASE_URL_KINDS = {"openai", "anthropic", "bedrock"}
# What stops `tokenwire serve` gracefully: `kill` and a terminal's Ctrl-C.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class GracefulServer(uvicorn.Server):
    """On SIGTERM or Ctrl-C, end streams and close sockets our way (1001) before uvicorn's
    (1012), then exit with status 0."""

    def __init__(
        self,
        config: uvicorn.Config,
        gateway: Gateway,
        grace: float,
        on_started: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self._gateway = gateway
        self._grace = grace
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_started is not None:
            self._on_started()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # From the signal on, not from uvicorn's next tick: a load balancer that polls
        # /readyz in between would otherwise send new work to a server that is leaving.
        self._gateway.begin_shutdown()
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self._gateway.shutdown(self._grace)
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Ctrl-C (SIGINT) and SIGTERM both stop the server gracefully (`handle_exit`), after
        which the process exits with status 0. uvicorn's own version raises the signal again
        once the server has stopped: SIGTERM would then kill the process and SIGINT print a
        KeyboardInterrupt traceback. A second Ctrl-C still forces the exit (`handle_exit`).
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="tokenwire", description=__doc__)
    root.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = root.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve the streaming gateway",
        description="Serve the streaming gateway. Without --config: the packaged local model "
        "and the simulated provider, or with --provider KIND one provider named KIND.",
    )
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000; 0: any free)")
    serve.add_argument(
        "--provider",
        choices=PROVIDER_KINDS,
        help="serve only this provider kind, named after it "
        "(openai, anthropic and bedrock need --model)",
    )
    serve.add_argument(
        "--model",
        help="with --provider: the model to ask for (openai, anthropic: its name; bedrock: "
        "the modelId; local: a GGUF file to run instead of the packaged model)",
    )
    serve.add_argument(
        "--base-url",
        help="with --provider openai|anthropic|bedrock: the endpoint "
        "(e.g. http://localhost:8080/v1 for llama.cpp's or vLLM's server)",
    )
    serve.add_argument(
        "--api-key-env",
        metavar="VARIABLE",
        help="with --provider: the environment variable that holds the provider's key",
    )
    serve.add_argument("--config", type=Path, help="TOML configuration file")
    serve.add_argument(
        "--redis-url",
        metavar="URL",
        help="share logs, conversations, limits and cancels with every node on this Redis "
        "(redis://host:port/db, rediss://..., unix:///path); default: this process only",
    )
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="run N worker processes on the port under this one (above 1 needs --redis-url)",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help='allow [auth] mode = "none" on an address other than loopback '
        "(anyone who reaches the port can then spend on the providers)",
    )
    add_chat_command(commands)
    return root


def add_chat_command(commands: Any) -> None:
    chat = commands.add_parser(
        "chat",
        help="talk to a tokenwire server at the terminal",
        description="A conversation with a tokenwire server over its WebSocket. Ctrl-C stops "
        "an answer; Ctrl-D, or Ctrl-C at an empty prompt, leaves.",
    )
    chat.add_argument(
        "--url",
        default="ws://127.0.0.1:8000/ws/ai-stream",
        help="the server's full WebSocket URL (default ws://127.0.0.1:8000/ws/ai-stream; "
        "add ?user_id=NAME when the server runs without authentication)",
    )
    chat.add_argument(
        "--token",
        help="an API key or JWT, when the server asks for one (default: the TOKENWIRE_TOKEN "
        "environment variable)",
    )
    chat.add_argument("--provider", help="ask this provider by name (default: routing decides)")


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the flags give, or `ConfigError` for flags that cannot work together."""
    overrides: dict[str, Any] = {}
    given = (("host", args.host), ("port", args.port), ("workers", args.workers))
    server = {k: v for k, v in given if v is not None}
    if server:
        overrides["server"] = server
    if args.redis_url is not None:
        overrides["redis"] = {"url": args.redis_url}
    if args.provider:
        overrides["providers"] = [provider_from_flags(args)]
        overrides["routing"] = {"default_provider": args.provider}
    elif args.model or args.base_url or args.api_key_env:
        raise ConfigError("--model, --base-url and --api-key-env need --provider")
    return overrides


def provider_from_flags(args: argparse.Namespace) -> dict[str, Any]:
    kind: str = args.provider
    provider: dict[str, Any] = {"name": kind, "kind": kind}
    if kind in MODEL_REQUIRED and not args.model:
        raise ConfigError(f"--provider {kind} needs --model (the model the endpoint serves)")
    if args.base_url:
        if kind not in BASE_URL_KINDS:
            raise ConfigError(f"--base-url does not apply to --provider {kind}")
        provider["base_url"] = args.base_url
    if args.model and kind == "local":
        provider["options"] = {"model_path": args.model}
    elif args.model:
        provider["model"] = args.model
    if args.api_key_env:
        provider["api_key_env"] = args.api_key_env
    return provider


class CannotListen(Exception):
    """The address cannot be bound; the message says why in one line."""


def listening_socket(host: str, port: int) -> socket.socket:
    """Bind before announcing anything, so that a busy port is one clear line, not a
    'serving' line followed by a failure."""
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        return socket.create_server(address, family=family)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            reason = "the address is already in use (another server on that port?)"
        else:
            reason = exc.strerror or str(exc)
        raise CannotListen(f"cannot listen on {host}:{port}: {reason}") from None


def check_exposure(settings: Settings, insecure: bool) -> None:
    """Authentication off is for loopback; elsewhere only when asked for, loudly."""
    if settings.auth.mode != "none" or is_loopback(settings.server.host):
        return
    if not insecure:
        raise ConfigError(
            f"auth.mode is 'none' and the server would listen on {settings.server.host}: "
            "anyone who reaches it could use every provider as any user. Set [auth] mode "
            "(docs/security.md), listen on 127.0.0.1, or pass --insecure to do it anyway"
        )
    structlog.get_logger("tokenwire").warning(
        "AUTHENTICATION IS OFF on a non-loopback address (--insecure): anyone who reaches "
        "this port can use every provider as any user",
        host=settings.server.host,
    )


def serve(settings: Settings, insecure: bool = False) -> int:
    configure_logging(settings.logging)
    try:
        check_exposure(settings, insecure)
    except ConfigError as exc:
        print(f"tokenwire: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        sock = listening_socket(settings.server.host, settings.server.port)
    except CannotListen as exc:
        print(f"tokenwire: {exc}", file=sys.stderr)
        return 1
    if settings.server.workers > 1:
        return supervise(settings, sock)
    host, port = sock.getsockname()[:2]
    try:
        server = graceful_server(settings, sock, lambda node_id: announce(settings, host, port))
    except ConfigError as exc:
        sock.close()
        print(f"tokenwire: configuration error: {exc}", file=sys.stderr)
        return 2
    tune_garbage_collector()
    server.run(sockets=[sock])
    return 0 if server.started else 1


def graceful_server(
    settings: Settings, sock: socket.socket, on_started: Callable[[str], None]
) -> GracefulServer:
    """The server of one process (or one worker) on `sock`: its own backends, gateway and
    app. Raises `ConfigError` before anything is served."""
    # Here, not at the top: `tokenwire chat` and `--version` need none of the server.
    from tokenwire.app import access_policy, backends_for, build_app, build_gateway, uvicorn_config

    backends = backends_for(settings)
    # Access first: a missing secret must not wait for a model to load.
    access = access_policy(settings, connections=backends.connections)
    gateway = build_gateway(settings, backends)
    app = build_app(settings, gateway, access=access, backends=backends)
    host, port = sock.getsockname()[:2]
    config = uvicorn_config(settings, app, host, port)
    grace = settings.server.shutdown_grace_seconds
    return GracefulServer(config, gateway, grace, lambda: on_started(backends.node_id))


def announce(settings: Settings, host: str, port: int, **more: Any) -> None:
    structlog.get_logger("tokenwire").info(
        "serving",
        url=f"http://{host}:{port}",
        providers=[p.name for p in settings.providers],
        default_provider=settings.default_provider,
        auth=settings.auth.mode,
        **more,
    )


def supervise(settings: Settings, sock: socket.socket) -> int:
    """`--workers N`: what would stop every worker is checked here first, once."""
    from tokenwire.app import access_policy
    from tokenwire.routing.classify import load_classifier

    try:
        access_policy(settings)
        load_classifier(settings.routing.classifier)
    except (ConfigError, ValueError) as exc:
        sock.close()
        print(f"tokenwire: configuration error: {exc}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    supervisor = Supervisor(
        settings,
        sock,
        serve_worker,
        lambda workers: announce(settings, host, port, workers=workers),
    )
    try:
        return supervisor.run()
    finally:
        sock.close()


def serve_worker(settings: Settings, sock: socket.socket, started: Connection) -> None:
    """One worker of `--workers N` (in a process of its own): serve until SIGTERM."""
    configure_logging(settings.logging)
    pid = os.getpid()

    def serving(node_id: str) -> None:
        started.send({"pid": pid, "node_id": node_id})
        started.close()

    try:
        server = graceful_server(settings, sock, serving)
    except ConfigError as exc:
        print(f"tokenwire: configuration error: {exc}", file=sys.stderr)
        sys.exit(CONFIG_ERROR)
    tune_garbage_collector()
    threading.Thread(target=stop_when_orphaned, args=(server,), daemon=True).start()
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])
    sys.exit(0 if server.started else 1)


def stop_when_orphaned(server: GracefulServer) -> None:
    """A worker whose supervisor died (`kill -9`) stops gracefully rather than serve on
    the port unsupervised."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        parent.join()
        server.handle_exit(signal.SIGTERM, None)


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
    if args.command == "chat":
        from tokenwire.clients.chat import TOKEN_ENV, run_chat

        return run_chat(args.url, args.token or os.environ.get(TOKEN_ENV) or None, args.provider)
    if args.command == "serve":
        try:
            settings = load_settings(args.config, flag_overrides(args))
        except ConfigError as exc:
            print(f"tokenwire: configuration error: {exc}", file=sys.stderr)
            return 2
        try:
            return serve(settings, insecure=args.insecure)
        except KeyboardInterrupt:
            # Ctrl-C before the server took the signals over (while the providers were
            # built): nothing was served, so nothing needs ending; no traceback either.
            return 130
    return 2
