"""The one place tokenwire borrows llama-cpp-python's internals, and why.

`Llama()` has no argument for what the local provider needs of it:

- llama.cpp's extra CPU buffers (weight repacking, AMX) off where asked: on some
  virtual machines that advertise AMX, its kernels kill the process (SIGILL), so the
  local provider turns them off wherever a CPU advertises AMX (`cpus.py`). llama.cpp's
  `use_extra_bufts` is set on the library's default model parameters.
- the process's file descriptors left alone: with `verbose=False`, `Llama()`
  points descriptors 1 and 2 at /dev/null while it loads (`suppress_stdout_stderr`),
  for the whole process, so that whatever another thread writes meanwhile (the
  server's "serving" line, a warning, llama.cpp's own lines) is lost. Nothing
  needs silencing: llama.cpp's lines go through the log callback below, and
  `verbose=False` keeps the library's own prints off.
- llama.cpp's log lines in the structured log, instead of the library's callback,
  which prints them to stderr and breaks a JSON log stream.

`tests/providers/test_llama_library.py` fails when the library changes under any
of these.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import llama_cpp
import llama_cpp._internals
import llama_cpp.llama
import structlog

# The modules whose `Llama()` path enters `suppress_stdout_stderr`: `llama.py` for the
# backend's start, `_internals.py` for the model file's load.
SILENCING_MODULES: tuple[Any, ...] = (llama_cpp.llama, llama_cpp._internals)

# Borrowing is process-wide: one load at a time swaps the library's globals.
_LOADING = threading.Lock()


def open_model(path: Path, *, n_ctx: int, threads: int, extra_buffers: bool) -> Any:
    """A `llama_cpp.Llama` for this GGUF file, loaded without touching descriptors 1 and 2."""
    with _LOADING, _descriptors_left_alone(), default_model_params(extra_buffers):
        return llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )


class _LeaveDescriptorsAlone:
    """Stands in for `suppress_stdout_stderr(disable=...)`: silences nothing."""

    def __init__(self, disable: bool = True) -> None:
        pass

    def __enter__(self) -> _LeaveDescriptorsAlone:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None


@contextlib.contextmanager
def _descriptors_left_alone() -> Iterator[None]:
    originals = [module.suppress_stdout_stderr for module in SILENCING_MODULES]
    for module in SILENCING_MODULES:
        module.suppress_stdout_stderr = _LeaveDescriptorsAlone
    try:
        yield
    finally:
        for module, original in zip(SILENCING_MODULES, originals, strict=True):
            module.suppress_stdout_stderr = original


@contextlib.contextmanager
def default_model_params(extra_buffers: bool) -> Iterator[None]:
    """Models loaded meanwhile use llama.cpp's extra CPU buffers only if `extra_buffers`
    (also what `tests/support/llama_server.py` runs llama-cpp-python's server under)."""
    if extra_buffers:
        yield
        return
    library = llama_cpp.llama_cpp
    original = library.llama_model_default_params

    def without_extra_buffers() -> Any:
        params = original()
        params.use_extra_bufts = False
        return params

    library.llama_model_default_params = without_extra_buffers
    try:
        yield
    finally:
        library.llama_model_default_params = original


# ggml_log_level as the bundled llama.cpp numbers it (NONE 0, DEBUG 1, INFO 2, WARN 3,
# ERROR 4, CONT 5; llama-cpp-python's own table is older and off by one): warnings and
# errors keep their level, the rest goes out at debug.
_LLAMA_LEVELS = {3: "warning", 4: "error"}
_LEVEL_NUMBERS = {"debug": 10, "warning": 30, "error": 40}
_llama_logger = structlog.get_logger("tokenwire.llama_cpp")


# Warnings llama.cpp gives at every load of the packaged model, which say nothing an
# operator can act on ("this is probably a bug in the model", a cache note): at debug,
# so that a plain start shows no warning at all.
_NOTHING_TO_ACT_ON = (
    "load: control-looking token:",
    "llama_kv_cache_iswa: using full-size SWA cache",
)


def llama_log_level(level: int, message: str) -> int:
    """The logging level a llama.cpp log line goes out at."""
    if message.startswith(_NOTHING_TO_ACT_ON):
        return _LEVEL_NUMBERS["debug"]
    return _LEVEL_NUMBERS[_LLAMA_LEVELS.get(level, "debug")]


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _forward_llama_log(level: int, text: bytes, user_data: Any) -> None:
    message = text.decode("utf-8", "replace").strip()
    if message:
        _llama_logger.log(llama_log_level(level, message), message)


def route_llama_logs() -> None:
    """Send llama.cpp's own log lines through the structured logger instead of stderr.

    llama-cpp-python installs a callback that prints to stderr; this one replaces it
    (the callback object lives as long as the module).
    """
    llama_cpp.llama_log_set(_forward_llama_log, ctypes.c_void_p(0))
