"""The embedded model: a GGUF file run in-process by llama.cpp.

By default this is the Gemma 3 270M that ships as a Python package (see
`gguf_package`). Options (`[[providers]] options`, checked at start-up):
`model_path` (any GGUF file instead), `n_ctx` (2048), `threads` (the usable CPUs
but one, divided by `parallelism`: see `cpus.py`), `parallelism` (generations at once, one model
instance each; 1), `temperature` (0), `max_tokens` (256), `prompt_format`,
`extra_buffers` ("auto"), and the defaults of the per-request options `stop`,
`top_p`, `top_k`, `repeat_penalty`, `frequency_penalty`, `presence_penalty` and
`seed` (which the dialects' fields of those names set too; any other option is
refused, as a model here cannot honour it).

`prompt_format` "qa" (the default) writes the conversation as "Question: ... /
Answer:" lines, which a base model such as the packaged one continues with an
answer; "gemma" uses Gemma's turn markup, for instruction-tuned Gemma files
(the packaged base model answers it with noise); "plain" sends the text as is.

Loading starts in a worker thread when the provider is built, so the first
request does not pay for it; it goes through `llama_library`, which leaves the
process's file descriptors alone (nothing written meanwhile is lost). Every
llama.cpp call runs on the provider's own threads, one per model instance:
requests beyond `parallelism` queue there, and a request closed while queued
never reaches the model. Closing a stream stops its generation before the next
token (or the next slice of a long prompt). Each prompt is evaluated afresh, so
at temperature 0 the same conversation always gets the same answer.

llama.cpp's threads wait for each other many times a token: when another
process keeps a core busy, as many threads as cores run several times slower
than one thread, which is why the default leaves a core free.
"""

from __future__ import annotations

import asyncio
import ctypes
import queue
import random
import threading
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import CancelledError as FutureCancelled
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import llama_cpp
import structlog
from pydantic import BaseModel, ConfigDict, Field

from tokenwire.core.provider import FinishReason, Message, ProviderEvent, ProviderRequest, Usage
from tokenwire.protocol.errors import (
    InvalidRequest,
    ProviderError,
    TokenwireError,
    UnsupportedFeature,
)
from tokenwire.providers.cpus import default_threads, extra_buffers_by_default, read_cpuinfo
from tokenwire.providers.gguf_package import (
    MODEL_NAME,
    ModelFileError,
    packaged_model,
    packaged_model_path,
)
from tokenwire.providers.llama_library import open_model, route_llama_logs
from tokenwire.providers.llama_text import (
    AnswerText,
    PromptFormat,
    format_stops,
    prompt_segments,
    tokenize_prompt,
)
from tokenwire.providers.local_grammar import grammar_for
from tokenwire.providers.options import configured_options, merged_options
from tokenwire.settings import ProviderSettings

logger = structlog.get_logger("tokenwire.local")

# Prompt tokens evaluated between two looks at the cancel flag: about 90 ms on
# two cores, at about 80% of the speed of llama.cpp's default 512.
PROMPT_SLICE = 32


class SamplingOptions(BaseModel):
    """What a request may set in `config.options`."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)

    stop: Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=16)] = []
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.95
    top_k: Annotated[int, Field(ge=0, le=1_000_000)] = 40
    repeat_penalty: Annotated[float, Field(gt=0, le=5)] = 1.1
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    seed: Annotated[int, Field(ge=0, lt=2**32)] | None = None


class LocalOptions(SamplingOptions):
    """The provider's `options` table."""

    model_path: Annotated[str, Field(min_length=1)] | None = None
    n_ctx: Annotated[int, Field(ge=64, le=1_048_576)] = 2048
    threads: Annotated[int, Field(ge=1, le=1024)] | None = None
    parallelism: Annotated[int, Field(ge=1, le=64)] = 1
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.0
    max_tokens: Annotated[int, Field(ge=1)] = 256
    prompt_format: PromptFormat = "qa"
    # llama.cpp's extra CPU buffers (weight repacking, AMX): about twice the tokens/s,
    # but on some virtual machines that advertise AMX the AMX kernels kill the process
    # (SIGILL). "auto": on only where no CPU advertises AMX (`cpus.py`).
    extra_buffers: bool | Literal["auto"] = "auto"


@dataclass(frozen=True, slots=True)
class Generation:
    """One request, resolved against the provider's defaults."""

    messages: tuple[Message, ...]
    prompt_format: PromptFormat
    max_tokens: int
    temperature: float
    sampling: SamplingOptions
    grammar: Any = None
    """A `LlamaGrammar` the answer must follow (structured output), or None."""


_Item = str | Usage | Exception | None


class _Job:
    """A generation's link between its worker thread and the waiting stream."""

    def __init__(self, loop: asyncio.AbstractEventLoop, generation: Generation) -> None:
        self.generation = generation
        self.cancelled = threading.Event()
        self.items: asyncio.Queue[_Item] = asyncio.Queue()
        self._loop = loop

    def send(self, item: _Item) -> None:
        """From the worker thread; a text delta, or the end (`Usage`, an error, None)."""
        if item == "":
            return
        try:
            self._loop.call_soon_threadsafe(self.items.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancelled.set()


class LocalProvider:
    kind = "local"

    def __init__(self, settings: ProviderSettings) -> None:
        route_llama_logs()
        self._name = settings.name
        self._options = configured_options(LocalOptions, settings.options)
        self._sampling = SamplingOptions.model_validate(
            self._options.model_dump(include=set(SamplingOptions.model_fields))
        )
        locate, default_model = _model_source(self._options.model_path)
        self._model = settings.model or default_model
        parallelism = self._options.parallelism
        self._threads = self._options.threads or default_threads(parallelism)
        self._extra_buffers = choose_extra_buffers(self._options.extra_buffers)
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._instances: list[Any] = []
        self._jobs: set[_Job] = set()
        self._closing = False
        self._started = 0
        self._started_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(parallelism, f"tokenwire-local-{self._name}")
        self._loading: Future[None] = self._executor.submit(self._load, locate)

    @property
    def name(self) -> str:
        return self._name

    @property
    def model(self) -> str:
        return self._model

    @property
    def threads(self) -> int:
        """llama.cpp threads per model instance."""
        return self._threads

    @property
    def extra_buffers(self) -> bool:
        """Whether llama.cpp's extra CPU buffers (weight repacking) are used."""
        return self._extra_buffers

    @property
    def started_generations(self) -> int:
        """How many requests reached the model; one closed while queued never does."""
        return self._started

    def readiness(self) -> str | None:
        if not self._loading.done():
            return "loading the model"
        if self._loading.cancelled():
            return "shutting down"
        error = self._loading.exception()
        if error is not None:
            return f"the model could not be loaded: {error}"
        return None

    def validate(self, request: ProviderRequest) -> None:
        if request.has_images:
            raise UnsupportedFeature(f"provider {self._name} (a local text model) sees no images")
        if request.tools or any(m.tool_calls or m.tool_results for m in request.messages):
            # The packaged 270M base model calls a tool for every prompt, and llama.cpp's
            # function-calling handler neither streams "auto" nor renders results: refused.
            raise UnsupportedFeature(
                f"provider {self._name} (a local text model) does not call tools; "
                "name one that does or use auto"
            )
        self._generation(request)

    def expected_deltas(self, request: ProviderRequest) -> int | None:
        return None

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[ProviderEvent, None]:
        generation = self._generation(request)
        await self._ready()
        job = _Job(asyncio.get_running_loop(), generation)
        try:
            future = self._executor.submit(self._run, job)
        except RuntimeError:
            raise ProviderError(f"provider {self._name} is shutting down") from None
        self._jobs.add(job)
        try:
            while True:
                item = await job.items.get()
                if isinstance(item, str):
                    yield item
                elif isinstance(item, Usage):
                    yield item
                    return
                elif isinstance(item, TokenwireError):
                    raise item
                elif item is None:
                    raise ProviderError(f"provider {self._name} shut down during the answer")
                else:
                    raise ProviderError(f"the local model failed: {item}") from item
        finally:
            # Closed early (cancel, timeout, a vanished client) or done: either way
            # the worker stops before its next token, and a queued job never starts.
            job.cancelled.set()
            future.cancel()
            self._jobs.discard(job)

    async def count_tokens(self, request: ProviderRequest) -> int:
        """The prompt tokens as `generate` evaluates them: the same prompt format and
        special tokens, by the model's own tokenizer."""
        generation = self._generation(request)
        await self._ready()
        segments = prompt_segments(generation.messages, generation.prompt_format)
        # Tokenizing reads only the vocabulary, so it need not wait for a free instance.
        tokens = await asyncio.to_thread(tokenize_prompt, self._instances[0], segments)
        return len(tokens)

    async def aclose(self) -> None:
        self._closing = True
        for job in list(self._jobs):
            job.cancelled.set()
            job.send(None)
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        while self._instances:
            self._instances.pop().close()

    # -- requests -------------------------------------------------------------

    def _generation(self, request: ProviderRequest) -> Generation:
        if request.model is not None and request.model != self._model:
            raise InvalidRequest(f"provider {self._name} serves only model {self._model!r}")
        defaults, sampling = self._options, self._sampling
        sampling = merged_options(sampling, SamplingOptions, request, self)
        given = {"top_p": request.top_p, "stop": list(request.stop) or None}
        first_class = {name: value for name, value in given.items() if value is not None}
        if first_class:
            sampling = sampling.model_copy(update=first_class)
        temperature = request.temperature
        return Generation(
            messages=request.messages,
            prompt_format=defaults.prompt_format,
            max_tokens=request.max_tokens or defaults.max_tokens,
            temperature=defaults.temperature if temperature is None else temperature,
            sampling=sampling,
            grammar=grammar_for(request.response_format) if request.response_format else None,
        )

    async def _ready(self) -> None:
        try:
            if not self._loading.done():
                # Shielded: a cancelled request must not cancel the shared load.
                await asyncio.shield(asyncio.wrap_future(self._loading))
            self._loading.result()
        except (asyncio.CancelledError, FutureCancelled):
            if self._loading.cancelled():
                raise ProviderError(f"provider {self._name} is shutting down") from None
            raise
        except Exception as exc:
            raise ProviderError(f"the local model could not be loaded: {exc}") from None

    # -- worker threads ---------------------------------------------------------

    def _load(self, locate: Callable[[], Path]) -> None:
        started = time.monotonic()
        try:
            path = locate()
            for _ in range(self._options.parallelism):
                if self._closing:
                    return
                llm = open_model(
                    path,
                    n_ctx=self._options.n_ctx,
                    threads=self._threads,
                    extra_buffers=self._extra_buffers,
                )
                _warm_up(llm)
                self._instances.append(llm)
                self._idle.put(llm)
        except Exception as exc:
            logger.error("local model failed to load", provider=self._name, error=str(exc))
            raise
        logger.info(
            "local model loaded",
            provider=self._name,
            path=str(path),
            instances=self._options.parallelism,
            threads=self._threads,
            extra_buffers=self._extra_buffers,
            seconds=round(time.monotonic() - started, 3),
        )

    def _run(self, job: _Job) -> None:
        if job.cancelled.is_set():
            return
        try:
            # There are as many instances as threads, each holding at most one.
            llm = self._idle.get_nowait()
        except queue.Empty:
            job.send(ProviderError(f"provider {self._name} has no model loaded"))
            return
        with self._started_lock:
            self._started += 1
        try:
            job.send(generate(llm, job.generation, job.send, job.cancelled))
        except Exception as exc:
            job.send(exc)
        finally:
            self._idle.put(llm)


def generate(
    llm: Any,
    generation: Generation,
    emit: Callable[[str], None],
    cancelled: threading.Event,
) -> Usage | None:
    """Run one generation on `llm`, emitting text; None when cancelled."""
    prompt = tokenize_prompt(llm, prompt_segments(generation.messages, generation.prompt_format))
    room = llm.n_ctx() - len(prompt)
    if room < 1:
        raise InvalidRequest(
            f"the prompt is {len(prompt)} tokens; the local model's context holds {llm.n_ctx()}"
        )
    sampling = generation.sampling
    seed = random.randrange(2**32) if sampling.seed is None else sampling.seed
    llm.set_seed(seed)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    answer = AnswerText(
        (*format_stops(generation.prompt_format), *sampling.stop),
        strip=generation.prompt_format != "plain",
    )
    budget = min(generation.max_tokens, room)
    count = 0
    # From an empty cache, in fixed slices: the same prompt always gets the same
    # arithmetic (so the same answer at temperature 0; reusing a cached prefix
    # would change it), and a cancel is seen between slices of a long prompt.
    llm.reset()
    for start in range(0, len(prompt), PROMPT_SLICE):
        if cancelled.is_set():
            return None
        llm.eval(prompt[start : start + PROMPT_SLICE])
    # The prompt is evaluated: `generate` finds it cached and samples at once.
    tokens = llm.generate(
        prompt,
        temp=generation.temperature,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        repeat_penalty=sampling.repeat_penalty,
        frequency_penalty=sampling.frequency_penalty,
        presence_penalty=sampling.presence_penalty,
        grammar=generation.grammar,
    )
    try:
        for token in tokens:
            if cancelled.is_set():
                return None
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                break
            count += 1
            emit(answer.push(token_bytes(vocab, token)))
            if answer.stopped or count >= budget:
                break
    finally:
        tokens.close()
    emit(answer.finish())
    finish: FinishReason = "length" if count >= budget and not answer.stopped else "stop"
    # The prompt format's own stops end a turn; only the request's are its stop sequences.
    matched = answer.stopped_by if answer.stopped_by in sampling.stop else None
    return Usage(
        prompt_tokens=len(prompt),
        completion_tokens=count,
        finish_reason=finish,
        stop_sequence=matched,
    )


def token_bytes(vocab: Any, token: int) -> bytes:
    # Llama.detokenize uses a 32-byte buffer and garbles longer pieces (Gemma has some).
    buffer = ctypes.create_string_buffer(64)
    size = llama_cpp.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, False)
    if size < 0:
        buffer = ctypes.create_string_buffer(-size)
        size = llama_cpp.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, False)
    return buffer.raw[:size]


# -- loading ------------------------------------------------------------------


def choose_extra_buffers(setting: bool | Literal["auto"], cpuinfo: str | None = None) -> bool:
    """The `extra_buffers` option resolved: as set, or for "auto" by this machine's CPU
    flags (`cpuinfo` is /proc/cpuinfo's text, read when not given)."""
    if setting != "auto":
        return setting
    return extra_buffers_by_default(read_cpuinfo() if cpuinfo is None else cpuinfo)


def _model_source(model_path: str | None) -> tuple[Callable[[], Path], str]:
    """How to find the model file when loading, and the model's default name.

    Checked now, so that a wrong path or a missing package stops start-up.
    """
    if model_path is not None:
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise ValueError(f"options.model_path: no such file: {path}")
        return (lambda: path), path.stem
    try:
        packaged_model()
    except ModelFileError as exc:
        raise ValueError(str(exc)) from None
    return packaged_model_path, MODEL_NAME


def _warm_up(llm: Any) -> None:
    """Evaluate a few tokens, so that the first request does not pay for
    touching every page of the weights (a few hundred milliseconds)."""
    llm.eval(llm.tokenize(b"Hello", add_bos=True))
    llm.reset()
