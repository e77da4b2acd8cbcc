"""What tokenwire borrows of llama-cpp-python's internals (`providers/llama_library.py`),
held to the library: these fail when an upgrade moves what the adapter relies on.

The load path's promise is that the process's file descriptors are never redirected,
so that a line written by any thread while the model loads reaches the log."""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import llama_cpp
import llama_cpp._utils
import pytest

from tests.support.process import serving
from tokenwire.providers import llama_library
from tokenwire.providers.gguf_package import packaged_model_path
from tokenwire.providers.llama_library import open_model

# -- the borrowed internals are where the adapter expects them ----------------------


def test_each_module_the_adapter_patches_still_uses_suppress_stdout_stderr() -> None:
    for module in llama_library.SILENCING_MODULES:
        assert module.suppress_stdout_stderr is llama_cpp._utils.suppress_stdout_stderr, module


def test_the_library_s_default_model_parameters_still_turn_extra_buffers_on() -> None:
    # If this default ever changes, the borrowing that turns them off is no longer needed.
    assert llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts is True


# -- loading a model ----------------------------------------------------------------


def dup2_targets(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The descriptors that `os.dup2` is asked to replace, from now on, in this process."""
    targets: list[int] = []
    original: Callable[..., Any] = os.dup2

    def recording(fd: int, fd2: int, inheritable: bool = True) -> Any:
        targets.append(fd2)
        return original(fd, fd2, inheritable)

    monkeypatch.setattr(os, "dup2", recording)
    return targets


@pytest.mark.slow
def test_a_model_loads_without_redirecting_stdout_or_stderr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    targets = dup2_targets(monkeypatch)
    llm = open_model(packaged_model_path(), n_ctx=256, threads=1, extra_buffers=False)
    try:
        assert targets == []
        assert llm.model_params.use_extra_bufts is False
    finally:
        llm.close()
    # The library is as it was: the borrowing lasts only as long as the load.
    for module in llama_library.SILENCING_MODULES:
        assert module.suppress_stdout_stderr is llama_cpp._utils.suppress_stdout_stderr


# -- a real `tokenwire serve`: what is written during the load arrives ----------------

LINES = 20

# Installed in the server process through PYTHONPATH: the model file's load (the part
# the library used to wrap in a redirect of descriptors 1 and 2) waits until another
# thread has written its lines, through the logger and raw to descriptor 2; and any
# dup2 onto descriptor 1 or 2 says so on descriptor 2 before it happens.
SITECUSTOMIZE = textwrap.dedent(
    f"""
    import os
    import threading

    import llama_cpp.llama_cpp as library
    import structlog

    _dup2 = os.dup2

    def _telling_dup2(fd, fd2, inheritable=True):
        if fd2 in (1, 2):
            os.write(2, f"dup2 onto {{fd2}}\\n".encode())
        return _dup2(fd, fd2, inheritable)

    os.dup2 = _telling_dup2
    _load = library.llama_model_load_from_file

    def _write_lines():
        log = structlog.get_logger("tokenwire.test")
        for n in range({LINES}):
            log.warning("written during the load", n=n)
            os.write(2, f"raw line {{n}} written during the load\\n".encode())

    def _load_with_company(path, params):
        writer = threading.Thread(target=_write_lines)
        writer.start()
        writer.join(60)
        return _load(path, params)

    library.llama_model_load_from_file = _load_with_company
    """
)


@pytest.mark.slow
async def test_lines_written_while_the_model_loads_reach_the_output(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    async with serving(env={"PYTHONPATH": path}) as server:  # local and simulated
        await server.until_event("local model loaded")
        lines = server.lines
    records = [json.loads(line) for line in lines if line.startswith("{")]
    logged = [r["n"] for r in records if r["event"] == "written during the load"]
    assert logged == list(range(LINES))
    raw = [line for line in lines if line.startswith("raw line")]
    assert raw == [f"raw line {n} written during the load" for n in range(LINES)]
    assert not [line for line in lines if line.startswith("dup2 onto")]
    assert "serving" in [r["event"] for r in records]
