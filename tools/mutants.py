"""Realistic one-line bugs, each of which some test must catch: `make mutants`.

Each mutant replaces one exact piece of source text. The script applies them one
at a time in a scratch copy of the tree (the working tree is never touched, so an
interrupted run leaves nothing behind), runs that mutant's tests there against
the copy's own src, and reports each mutant as killed (a test failed), killed by
timeout (the run hung past `--timeout`) or SURVIVED. It first runs the same tests
without any mutant: a test that fails on its own would "kill" them all. A mutant
whose original text does not appear exactly once is an error before anything
runs: the code moved, and the list needs updating.

Adding a mutant is one `Mutant(...)` entry in MUTANTS.

    python tools/mutants.py                # every mutant, against its own tests
    python tools/mutants.py grace-doubled  # some mutants, by id
    python tools/mutants.py --each         # each listed test alone must kill its mutant
    python tools/mutants.py --all          # every mutant against the whole suite
    python tools/mutants.py --list

Exit status: 0 if every mutant was killed; 1 if one survived, or its run could not
run (pytest found no such test, say); 2 if the list is out of date or the tests
fail without any mutant.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the scratch copy leaves out: environments, caches, version control.
NOT_COPIED = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".venv-*",  # LiteLLM's own environment: no mutant's tests start its proxy
    "__pycache__",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    "*.egg-info",
    "node_modules",  # the JavaScript clients: no mutant's tests run them
)


@dataclass(frozen=True, slots=True)
class Mutant:
    id: str
    file: str
    """Relative to src/tokenwire/."""
    original: str
    replacement: str
    description: str
    tests: tuple[str, ...]
    """pytest node ids (or files) that must fail with this mutant in place."""


RESUME = "tests/integration/test_resume.py"
HYDRATION = "tests/unit/test_hydration.py"
GATEWAY = "tests/unit/test_gateway.py"
EVENTLOG = "tests/unit/test_eventlog.py"
ROUTER = "tests/unit/test_router.py"
ROUTING = "tests/integration/test_routing.py"
DEADLINES = "tests/unit/test_deadlines.py"
FINISHED = "tests/integration/test_finished_streams.py"
IMAGES = "tests/integration/test_images.py"
FIELDS = "tests/integration/test_dialect_fields.py"
ENDPOINTS = "tests/integration/test_v1_endpoints.py"
TOOL_CALLS = "tests/unit/test_tool_calls.py"
CLIENT = "tests/clients/test_stream_client.py"
CHAT = "tests/clients/test_terminal_chat.py"
EVENT_MODELS = "tests/integration/test_server_event_models.py"
PAGE = "tests/browser/test_chat_page.py"
PAGE_HTTP = "tests/integration/test_chat_page_http.py"

MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "hydration-oldest-progress",
        "core/hydration.py",
        "latest_progress = progress[-1] if progress else None",
        "latest_progress = progress[0] if progress else None",
        "compact hydration sends the oldest progress instead of the latest",
        (f"{HYDRATION}::test_only_the_latest_progress_is_sent_and_everything_in_seq_order",),
    ),
    Mutant(
        "hydration-first-seq",
        "core/hydration.py",
        "final = texts[-1]",
        "final = texts[0]",
        "the merged chunk carries the first text event's seq: the next resume repeats text",
        (
            f"{HYDRATION}::test_the_text_so_far_is_one_chunk_with_the_seq_of_the_last_text_event",
            f"{RESUME}::test_a_client_that_resumes_after_a_compact_replay_gets_no_text_twice",
        ),
    ),
    Mutant(
        "hydration-token-number",
        "core/hydration.py",
        'number = last["index"] + 1',
        'number = last["index"]',
        "a merged chunk of tokens is numbered one short",
        (f"{HYDRATION}::test_the_text_so_far_is_one_chunk_with_the_seq_of_the_last_text_event",),
    ),
    Mutant(
        "hydration-chunk-number",
        "core/hydration.py",
        'number = last["chunk_number"]',
        'number = last["chunk_number"] + 1',
        "a merged chunk of chunks is numbered one past its last chunk",
        (f"{HYDRATION}::test_merged_chunks_keep_the_last_chunk_s_number_and_the_length_so_far",),
    ),
    Mutant(
        "hydration-first-length",
        "core/hydration.py",
        'accumulated = last["accumulated_length"]',
        'accumulated = pieces[0]["accumulated_length"]',
        "a merged chunk gives the first chunk's accumulated length",
        (f"{HYDRATION}::test_merged_chunks_keep_the_last_chunk_s_number_and_the_length_so_far",),
    ),
    Mutant(
        "chunk-number-from-zero",
        "core/orchestrator.py",
        '"chunk_number": self._text_events + 1,',
        '"chunk_number": self._text_events,',
        "the orchestrator numbers chunks from 0 instead of 1",
        (
            "tests/unit/test_orchestrator.py::test_chunks_are_numbered_from_one_with_the_length_so_far",
        ),
    ),
    Mutant(
        "grace-doubled",
        "core/gateway.py",
        "loop.call_later(grace, self._grace_over, running, follower)",
        "loop.call_later(grace * 2, self._grace_over, running, follower)",
        "a stream nobody re-attached to runs for twice the resume grace",
        (f"{GATEWAY}::test_nobody_re_attaching_cancels_the_stream_when_the_grace_ends_not_before",),
    ),
    Mutant(
        "grace-halved",
        "core/gateway.py",
        "loop.call_later(grace, self._grace_over, running, follower)",
        "loop.call_later(grace / 2, self._grace_over, running, follower)",
        "a stream nobody re-attached to is cancelled before its resume grace ends",
        (f"{GATEWAY}::test_nobody_re_attaching_cancels_the_stream_when_the_grace_ends_not_before",),
    ),
    Mutant(
        "zero-grace-waits",
        "core/gateway.py",
        "if lost and grace > 0:",
        "if lost and grace >= 0:",
        "with resume_grace_seconds = 0 a lost stream waits a loop turn, under another reason",
        (f"{GATEWAY}::test_with_a_zero_grace_a_lost_connection_cancels_its_stream_at_once",),
    ),
    Mutant(
        "close-1001-on-purpose",
        "transports/websocket.py",
        "self._client_closed_on_purpose = code == 1000",
        "self._client_closed_on_purpose = code in (1000, 1001)",
        "a page reload (close 1001) cancels its streams at once instead of leaving the grace",
        (f"{RESUME}::test_a_close_with_1001_leaves_the_stream_running_for_the_grace",),
    ),
    Mutant(
        "grace-over-forgets-others",
        "core/gateway.py",
        "    running.absent.pop(follower, None)\n        if not running.followed:",
        "    running.absent.clear()\n        if not running.followed:",
        "one lost device's grace ending forgets the others still in theirs",
        (f"{GATEWAY}::test_each_lost_follower_keeps_the_stream_for_its_own_whole_grace",),
    ),
    Mutant(
        "sse-start-not-following",
        "transports/sse.py",
        "    gateway.add_follower(log.key, follower.id)\n",
        "",
        "an SSE start does not count as a follower: a 1000 close elsewhere cancels it",
        (f"{RESUME}::test_a_stream_started_over_sse_outlives_another_device_s_1000_close",),
    ),
    Mutant(
        "sse-resume-not-following",
        "transports/sse.py",
        "compact=compact, follower=follower.id)",
        "compact=compact, follower=None)",
        "an SSE re-attach does not count as a follower: a 1000 close elsewhere cancels it",
        (f"{RESUME}::test_a_stream_re_attached_over_sse_outlives_another_device_s_1000_close",),
    ),
    Mutant(
        "sse-compact-ignored",
        "transports/sse.py",
        '    if raw == "true":\n        return True\n',
        '    if raw == "true":\n        return False\n',
        "an SSE re-attach ignores compact=true and replays every text event",
        (f"{RESUME}::test_an_sse_re_attach_with_compact_gets_the_text_so_far_as_one_chunk",),
    ),
    Mutant(
        "ws-compact-ignored",
        "transports/websocket.py",
        "compact=message.compact, follower=session",
        "compact=False, follower=session",
        "a WebSocket resume ignores compact and replays every text event",
        (
            f"{RESUME}::test_compact_hydration_sends_the_text_so_far_as_one_chunk_then_live_frames",
            f"{RESUME}::test_a_client_that_resumes_after_a_compact_replay_gets_no_text_twice",
        ),
    ),
    Mutant(
        "ws-resume-delivers-twice",
        "core/eventlog.py",
        "        self.unsubscribe(subscriber)\n        for record in replay:",
        "        for record in replay:",
        "a WebSocket resume of a request the connection follows delivers every event twice",
        (
            f"{RESUME}::test_a_resume_on_the_connection_that_follows_the_request_sends_each_frame_once",
        ),
    ),
    Mutant(
        "ws-resume-counted-twice",
        "transports/websocket.py",
        "if known.key != key and not known.finished]",
        "if not known.finished]",
        "each resume of a followed request counts it again against max_streams_per_connection",
        (
            f"{RESUME}::test_resuming_a_followed_request_again_does_not_count_it_twice_against_the_limit",
        ),
    ),
    Mutant(
        "failed-attempt-keeps-place",
        "core/attempts.py",
        "        try:\n            yield\n        finally:\n            gate.release()",
        "        yield\n        gate.release()",
        "a failed or cancelled attempt never gives back its provider's concurrency place",
        (f"{ROUTING}::test_a_failed_or_cancelled_answer_gives_its_provider_s_place_back",),
    ),
    Mutant(
        "client-4xx-counts",
        "core/attempts.py",
        "if not failure.counts_against_provider:\n"
        "                    outcome = AttemptOutcome.NEUTRAL\n",
        "",
        "a request the upstream refused as malformed counts against the provider's health",
        (f"{ROUTING}::test_requests_the_upstream_refuses_as_malformed_leave_its_circuit_closed",),
    ),
    Mutant(
        "upstream-rejected-counts",
        "protocol/errors.py",
        '401/403/429)."""\n\n    retryable = False\n    counts_against_provider = False',
        '401/403/429)."""\n\n    retryable = False\n    counts_against_provider = True',
        "an upstream 4xx (other than 401/403/429) is taken for the provider being unwell",
        (f"{ROUTING}::test_requests_the_upstream_refuses_as_malformed_leave_its_circuit_closed",),
    ),
    Mutant(
        "health-neutral-counts",
        "routing/health.py",
        "elif outcome is AttemptOutcome.FAILED:",
        "else:",
        "a cancelled or refused attempt counts as the provider failing",
        (
            f"{ROUTING}::test_requests_the_upstream_refuses_as_malformed_leave_its_circuit_closed",
            f"{ROUTER}::test_a_cancelled_probe_leaves_the_circuit_half_open_for_the_next_request",
        ),
    ),
    Mutant(
        "cost-limit-forced-inclusive",
        "routing/router.py",
        "if limit is not None and cost > limit:",
        "if limit is not None and cost >= limit:",
        "a forced provider whose estimate equals the cost limit is refused",
        (
            f"{ROUTER}::test_a_provider_whose_estimate_is_exactly_the_limit_is_within_it",
            f"{ROUTING}::test_an_answer_that_costs_exactly_the_limit_is_within_it",
        ),
    ),
    Mutant(
        "cost-limit-ranked-exclusive",
        "routing/router.py",
        "if o.cost_usd <= limit]",
        "if o.cost_usd < limit]",
        "a provider whose estimate equals the cost limit is left out of routing",
        (
            f"{ROUTER}::test_a_provider_whose_estimate_is_exactly_the_limit_is_within_it",
            f"{ROUTING}::test_an_answer_that_costs_exactly_the_limit_is_within_it",
        ),
    ),
    Mutant(
        "cost-limit-running-inclusive",
        "core/attempts.py",
        "if so_far > limit:",
        "if so_far >= limit:",
        "an answer is stopped when its cost reaches the limit, not when it passes it",
        (f"{ROUTING}::test_an_answer_that_costs_exactly_the_limit_is_within_it",),
    ),
    Mutant(
        "max-queued-one-more",
        "core/attempts.py",
        "if slot.waiting >= self._policy.max_queued:",
        "if slot.waiting > self._policy.max_queued:",
        "one request more than max_queued waits for a provider",
        (f"{ROUTING}::test_past_max_queued_a_request_is_busy_at_once_while_the_queued_one_waits",),
    ),
    Mutant(
        "load-bonus-sign",
        "routing/strategies.py",
        "- LOAD_WEIGHT * o.load",
        "+ LOAD_WEIGHT * o.load",
        "a busier provider scores higher instead of lower",
        (
            f"{ROUTER}::test_a_provider_s_load_lowers_its_intelligent_score_by_the_share_of_its_places_in_use",
        ),
    ),
    Mutant(
        "load-off-by-one",
        "routing/router.py",
        "min(1.0, health.in_flight / health.max_concurrency)",
        "min(1.0, (health.in_flight + 1) / health.max_concurrency)",
        "a provider's load counts one request more than it has in flight",
        (
            f"{ROUTER}::test_a_provider_s_load_lowers_its_intelligent_score_by_the_share_of_its_places_in_use",
        ),
    ),
    Mutant(
        "log-bound-drops-newest",
        "core/eventlog.py",
        "and len(self._data) > 1:",
        "and len(self._data) > 0:",
        "an event larger than max_log_bytes is dropped with the rest: nothing to replay",
        (
            f"{EVENTLOG}::test_the_newest_event_stays_replayable_even_when_it_alone_exceeds_the_bound",
        ),
    ),
    Mutant(
        "previous-response-in-progress",
        "transports/v1/responses.py",
        " from None\n    if not log.finished:\n",
        " from None\n    if log.finished is None:\n",
        "previous_response_id accepts a response still in progress",
        (
            "tests/integration/test_openai_api.py::test_a_response_still_in_progress_cannot_be_continued_yet",
        ),
    ),
    Mutant(
        "silence-not-rearmed",
        "core/attempts.py",
        "                    quiet.reschedule(loop.time() + silence)\n",
        "",
        "the silence timer is not re-armed per delta: answers longer than it are cut off",
        (
            f"{DEADLINES}::test_an_answer_that_flows_for_longer_than_the_silence_timeout_is_not_cut_off",
            f"{DEADLINES}::test_silence_is_counted_from_the_latest_delta_not_the_first",
        ),
    ),
    Mutant(
        "request-deadline-blames-provider",
        "core/attempts.py",
        "if self.cancelled_by_client or self._out_of_time():",
        "if self.cancelled_by_client:",
        "the request's own deadline counts against the provider that was answering",
        (
            f"{DEADLINES}::test_the_request_deadline_ends_a_flowing_answer_without_blaming_the_provider",
        ),
    ),
    Mutant(
        "provider-timeout-lengthens",
        "core/attempts.py",
        "first_token, silence = min(first_token, limit), min(silence, limit)",
        "first_token, silence = limit, limit",
        "a provider's own timeout replaces the request's deadlines, lengthening them",
        (
            f"{DEADLINES}::test_a_provider_s_own_timeout_shortens_both_of_its_waits_but_never_lengthens_them",
        ),
    ),
    # -- issue 22: what real clients and hostile ones send --------------------------
    Mutant(
        "sse-reattach-at-end-streams",
        "transports/sse.py",
        "if log.finished and after >= log.last_seq:",
        "if log.finished and after > log.last_seq:",
        "an SSE re-attach at a finished stream's end gets heartbeats instead of 204",
        (f"{FINISHED}::test_an_sse_re_attach_with_nothing_left_is_204_and_holds_no_slot",),
    ),
    Mutant(
        "absent-follower-forgotten",
        "core/gateway.py",
        "return bool(self.followers or self.absent)",
        "return bool(self.followers)",
        "a device that reloaded no longer counts: the other's 1000 close cancels its stream",
        (
            f"{FINISHED}::test_a_device_that_reloads_keeps_the_stream_when_the_other_then_closes_with_1000",
        ),
    ),
    Mutant(
        "head-one-field-too-many",
        "transports/request_head.py",
        "if self._lines - 1 > self._max_fields:",
        "if self._lines - 2 > self._max_fields:",
        "a head of 101 header fields is served",
        (
            "tests/unit/test_request_head.py::test_a_hundred_fields_pass_and_a_hundred_and_first_is_too_many",
        ),
    ),
    Mutant(
        "vision-not-routed",
        "routing/router.py",
        "    lambda c: c.vision,\n",
        "    lambda c: True,\n",
        "auto sends a request with images to a provider that cannot see",
        (f"{IMAGES}::test_auto_with_no_sighted_provider_is_unsupported_feature",),
    ),
    Mutant(
        "ignored-field-unnamed",
        "transports/v1/fields.py",
        "            self.ignored.append(name)",
        "            pass",
        "fields accepted and ignored are not named in tokenwire-ignored-fields",
        (f"{FIELDS}::test_ignored_fields_are_named_in_a_header_streaming_or_not",),
    ),
    Mutant(
        "cache-control-dropped",
        "transports/v1/messages.py",
        "None if cache is None else cache.model_dump(exclude_none=True)",
        "None",
        "a Messages text block loses its cache_control on the way to Anthropic",
        (f"{FIELDS}::test_messages_fields_and_cache_control_blocks_reach_an_anthropic_upstream",),
    ),
    Mutant(
        "v1-body-utf8-replaced",
        "transports/v1/route.py",
        'return body.decode("utf-8")',
        'return body.decode("utf-8", "replace")',
        "a /v1 body of invalid UTF-8 is read with replacement characters instead of refused",
        (f"{ENDPOINTS}::test_a_body_that_is_not_utf8_is_a_400_naming_the_byte",),
    ),
    # -- issue 23: tool calls and structured output --------------------------------
    Mutant(
        "tool-arguments-any-json",
        "core/tool_calls.py",
        "    if not isinstance(value, dict):",
        "    if value is None:",
        "a call whose arguments are JSON but not an object is finalised as a call",
        (f"{TOOL_CALLS}::test_arguments_that_are_not_a_json_object_are_an_error_not_a_call",),
    ),
    Mutant(
        "chat-call-id-on-every-fragment",
        "transports/v1/chat.py",
        'return {"index": data["index"], "function": {"arguments": data["arguments"]}}',
        'return {"index": data["index"], "id": "x", "function": {"arguments": data["arguments"]}}',
        "Chat streams a call's id on every fragment (clients concatenate or restart calls)",
        (
            "tests/integration/test_chat_tools.py::test_a_calls_id_type_and_name_come_in_its_first_fragment_only",
        ),
    ),
    Mutant(
        "trim-keeps-orphan-results",
        "core/conversations.py",
        'while self._turns and self._turns[0][0].role == "tool":',
        'while self._turns and self._turns[0][0].role == "nobody":',
        "trimming drops a call but keeps its results, which then answer nothing",
        (
            "tests/unit/test_tool_conversations.py::test_trimming_drops_a_call_and_its_results_together",
        ),
    ),
    Mutant(
        "structured-miss-passes",
        "core/orchestrator.py",
        "if not self.verdict.valid and not cut:",
        "if not self.verdict.valid and cut:",
        "an answer that misses its schema completes as if valid",
        (
            "tests/integration/test_structured_output.py::test_websocket_answer_that_misses_its_schema_ends_as_invalid_output",
        ),
    ),
    Mutant(
        "bedrock-tool-use-is-stop",
        "providers/bedrock.py",
        '            self.finish = "tool_calls"',
        '            self.finish = "stop"',
        "a bedrock answer that called tools ends as a plain stop",
        (
            "tests/providers/test_bedrock_tools.py::test_parallel_calls_after_text_stream_as_deltas_keyed_by_block_index",
            "tests/providers/test_bedrock_tools.py::test_a_bedrock_call_reaches_the_sdk_as_a_tool_use_block",
        ),
    ),
    # Issue 24: several nodes on Redis.
    Mutant(
        "replica-resends-held",
        "core/eventlog.py",
        "            if self.replica and after_seq > self.last_seq:",
        "            if False:",
        "a copy behind a resuming client sends it again what it saw on the owner",
        (
            "tests/unit/test_eventlog.py::test_a_replica_sends_none_of_what_a_subscriber_holds_when_it_catches_up",
        ),
    ),
    Mutant(
        "resume-forgets-held",
        "core/gateway.py",
        "        log.attach(subscriber, replay, after_seq)",
        "        log.attach(subscriber, replay)",
        "a resume does not tell the log what the client holds",
        (
            "tests/unit/test_gateway.py::test_a_resume_on_a_copy_behind_the_client_sends_nothing_it_already_has",
        ),
    ),
    Mutant(
        "redis-retention-not-checked",
        "backends/redis/log_records.py",
        "        return self.discarded or (self.ends_at is not None and now >= self.ends_at)",
        "        return self.discarded",
        "a log past its retention is served until Redis happens to expire it",
        (
            "tests/integration/test_redis_logs.py::test_a_log_past_its_retention_is_unknown_on_the_other_node",
        ),
    ),
    Mutant(
        "cancel-stays-local",
        "core/gateway.py",
        "            if self.cluster.shared and await self.cluster.cancel(key, reason):",
        "            if False:",
        "a cancel on another node than the owner's does nothing",
        (
            "tests/integration/test_redis_cluster.py::test_a_cancel_on_another_node_stops_the_provider_on_the_owner",
        ),
    ),
    Mutant(
        "turn-saved-after-end",
        "core/orchestrator.py",
        "        if status is StreamStatus.COMPLETED and self._before_end is not None:",
        "        if False:",
        "a completed answer's turn is not saved before its stream_end",
        (
            "tests/unit/test_gateway.py::test_a_completed_turn_is_saved_before_its_stream_end_goes_out",
        ),
    ),
    Mutant(
        "previous-response-not-awaited",
        "transports/v1/responses.py",
        "    await caught_up(log, REPLICA_LAG_SECONDS)",
        "    pass",
        "previous_response_id on a trailing copy says the response still runs",
        (
            "tests/unit/test_response_replicas.py::test_continuing_at_once_on_another_node_is_not_told_the_response_still_runs",
        ),
    ),
    Mutant(
        "client-resumes-ahead",
        "clients/stream_client.py",
        '                "last_seq": stream.last_seq,',
        '                "last_seq": stream.last_seq + 3,',
        "a restored link resumes past what the client has: text is lost across the cut",
        (f"{CLIENT}::test_a_link_cut_mid_answer_is_restored_and_every_token_arrives_exactly_once",),
    ),
    Mutant(
        "client-forgets-last-seq",
        "clients/stream.py",
        "        self.last_seq = event.seq\n",
        "        pass\n",
        "the client never records what it has: a resume replays from the start, twice the text",
        (f"{CLIENT}::test_a_link_cut_mid_answer_is_restored_and_every_token_arrives_exactly_once",),
    ),
    Mutant(
        "client-never-resends",
        "clients/stream_client.py",
        "            and not stream.accepted\n",
        "            and False\n",
        "an ai_request lost with the link is never sent again: the stream is refused instead",
        (f"{CLIENT}::test_a_request_lost_with_the_link_is_sent_again_and_answered_once",),
    ),
    Mutant(
        "client-no-reconnect",
        "clients/stream_client.py",
        "        if self._streams:\n            self._restoring",
        "        if False:\n            self._restoring",
        "a dropped link is not restored while streams run",
        (f"{CLIENT}::test_a_link_cut_mid_answer_is_restored_and_every_token_arrives_exactly_once",),
    ),
    Mutant(
        "client-error-end-quiet",
        "clients/stream.py",
        'if event.data.status == "error":',
        'if event.data.status == "failed":',
        "a stream that ends in error raises nothing",
        (f"{CLIENT}::test_a_failed_stream_yields_its_end_then_raises_stream_failed",),
    ),
    Mutant(
        "client-token-not-bearer",
        "clients/link.py",
        'Subprotocol(f"bearer.{token}")',
        'Subprotocol(f"bearer-{token}")',
        "the credential goes in a subprotocol the server does not read",
        (f"{CLIENT}::test_a_bad_credential_is_refused_and_a_good_one_streams_as_its_user",),
    ),
    Mutant(
        "chat-no-cancel",
        "clients/chat.py",
        "        stream.cancel()\n",
        "        pass\n",
        "Ctrl-C in the chat stops showing the answer but never cancels it",
        (f"{CHAT}::test_chat_answers_stops_on_ctrl_c_keeps_the_conversation_and_leaves_on_ctrl_d",),
    ),
    Mutant(
        "chat-new-conversation-each-turn",
        "clients/chat.py",
        "            prompt, conversation_id=self.conversation_id, provider=self.provider",
        "            prompt, provider=self.provider",
        "the chat's turns are not one conversation",
        (f"{CHAT}::test_chat_answers_stops_on_ctrl_c_keeps_the_conversation_and_leaves_on_ctrl_d",),
    ),
    Mutant(
        "server-event-field-unmodelled",
        "core/orchestrator.py",
        '                "prompt_length": self._prompt_length(),',
        '                "prompt_length": self._prompt_length(), "prompt_chars": 0,',
        "the server sends a field the event models do not declare",
        (f"{EVENT_MODELS}::test_every_frame_of_every_kind_of_stream_matches_the_models_exactly",),
    ),
    Mutant(
        "schema-stale",
        "protocol/messages.py",
        "    last_seq: Annotated[int, Field(ge=0, le=2**53)] = 0",
        "    last_seq: Annotated[int, Field(ge=0, le=2**52)] = 0",
        "a client message changes and docs/schemas is not generated anew",
        ("tests/unit/test_schemas.py::test_the_schema_file_is_what_the_models_give",),
    ),
    # -- the chat page and tokenwire.js (issue 25) --
    Mutant(
        "markdown-code-as-html",
        "static/markdown.js",
        "  code.textContent = text;",
        "  code.innerHTML = text;",
        "a fenced code block's text is parsed as HTML: model output can inject markup",
        (
            f"{PAGE}::test_model_output_with_html_renders_inert_while_its_markdown_renders",
            f"{PAGE}::test_the_markdown_renderer_builds_each_block_and_leaves_html_as_text",
        ),
    ),
    Mutant(
        "markdown-any-link-scheme",
        "static/markdown.js",
        'if (!url || (url.protocol !== "http:" && url.protocol !== "https:")) {',
        "if (!url) {",
        "javascript: and data: links become clickable",
        (f"{PAGE}::test_model_output_with_html_renders_inert_while_its_markdown_renders",),
    ),
    Mutant(
        "module-no-dedup",
        "static/tokenwire.js",
        "      if (event.seq <= this.lastSeq) return; // already delivered before a reconnect\n",
        "",
        "a frame delivered before a reconnect is delivered again",
        (f"{PAGE}::test_a_cut_socket_reconnects_and_the_answer_resumes_without_loss_or_repeat",),
    ),
    Mutant(
        "module-resume-from-zero",
        "static/tokenwire.js",
        "last_seq: answer.lastSeq, compact };",
        "last_seq: 0, compact };",
        "a reconnect asks for the whole answer again instead of what it missed",
        (f"{PAGE}::test_a_cut_socket_reconnects_and_the_answer_resumes_without_loss_or_repeat",),
    ),
    Mutant(
        "module-no-reconnect",
        "static/tokenwire.js",
        "    this._timer = setTimeout(() => this._open(), delay);",
        "",
        "a lost link is never reconnected",
        (f"{PAGE}::test_a_cut_socket_reconnects_and_the_answer_resumes_without_loss_or_repeat",),
    ),
    Mutant(
        "module-attach-not-compact",
        "static/tokenwire.js",
        "const compact = answer._compact || answer.lastSeq === 0;",
        "const compact = answer._compact;",
        "a reloaded page re-attaches frame by frame, not with the text so far at once",
        (
            f"{PAGE}::test_a_reload_mid_answer_shows_it_at_once_and_finishes_it",
            f"{PAGE}::test_the_es_module_streams_lists_and_reattaches_exactly",
        ),
    ),
    Mutant(
        "page-forgets-the-answer-under-way",
        "static/chat.js",
        "if (chat.pending) {",
        "if (false) {",
        "a reload loses the answer that was streaming",
        (f"{PAGE}::test_a_reload_mid_answer_shows_it_at_once_and_finishes_it",),
    ),
    Mutant(
        "page-stop-does-nothing",
        "static/chat.js",
        "  if (current) current.answer.cancel();",
        "  if (current) return;",
        "the Stop button and Esc send no cancel_request",
        (
            f"{PAGE}::test_the_stop_button_stops_the_answer_and_the_server_agrees",
            f"{PAGE}::test_enter_sends_shift_enter_breaks_the_line_and_esc_stops",
        ),
    ),
    Mutant(
        "page-shift-enter-sends",
        "static/chat.js",
        'if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {',
        'if (event.key === "Enter" && !event.isComposing) {',
        "Shift+Enter sends instead of starting a new line",
        (f"{PAGE}::test_enter_sends_shift_enter_breaks_the_line_and_esc_stops",),
    ),
    Mutant(
        "page-no-typing-indicator",
        "static/chat.js",
        "        view.typing.hidden = !data.is_typing;",
        "        view.typing.hidden = true;",
        "the typing indicator never shows",
        (f"{PAGE}::test_an_answer_grows_as_it_streams_with_typing_and_progress_then_its_footer",),
    ),
    Mutant(
        "page-credential-in-url",
        "static/tokenwire.js",
        "?user_id=${encodeURIComponent(this.userId)}` : this.url;",
        "?user_id=${encodeURIComponent(this.userId)}&access_token=${this.token}` : this.url;",
        "the credential travels in the WebSocket URL, where proxies log it",
        (f"{PAGE}::test_with_auth_on_a_bad_key_is_refused_and_a_good_one_connects",),
    ),
    Mutant(
        "page-inline-script-allowed",
        "transports/web.py",
        "script-src 'self';",
        "script-src 'self' 'unsafe-inline';",
        "the page's policy lets inline script run",
        (
            f"{PAGE_HTTP}::test_a_browser_gets_the_chat_page_under_a_policy_that_allows_no_inline_script",
        ),
    ),
    Mutant(
        "page-files-cached-blindly",
        "transports/web.py",
        '            response.headers["cache-control"] = "no-cache"\n',
        "",
        "static files are cached without revalidation: a release is not seen",
        (f"{PAGE_HTTP}::test_every_file_the_page_loads_is_served_and_revalidated_before_reuse",),
    ),
    Mutant(
        "api-list-needs-a-credential",
        "security/access.py",
        'OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/api"})',
        'OPEN_PATHS = frozenset({"/healthz", "/readyz", "/"})',
        "with auth on, the list of endpoints that / answered openly now needs a credential",
        (
            f"{PAGE_HTTP}::test_with_auth_on_the_page_its_files_and_the_list_are_open_and_nothing_else",
        ),
    ),
    Mutant(
        "ws-close-without-linger",
        "transports/uvicorn_ws.py",
        "        if not self.transport.can_write_eof():\n",
        "        if True:\n",
        "a connection closed for a client's error is closed at once: a client still sending"
        " gets a reset, not the close frame",
        (
            "tests/integration/test_slow_clients.py::test_a_client_still_sending_behind_its_invalid_frame_reads_the_close_frame",
        ),
    ),
)


# -- running --------------------------------------------------------------------


def check(mutants: list[Mutant]) -> list[str]:
    """What is wrong with the list against the current tree (empty if nothing)."""
    problems = []
    for mutant in mutants:
        path = ROOT / "src" / "tokenwire" / mutant.file
        if not path.is_file():
            problems.append(f"{mutant.id}: no file src/tokenwire/{mutant.file}")
            continue
        found = path.read_text().count(mutant.original)
        if found != 1:
            problems.append(
                f"{mutant.id}: its original text appears {found} times in {mutant.file} "
                f"(expected once): {mutant.original!r}"
            )
    ids = [m.id for m in MUTANTS]
    problems += [f"{i}: the id is used twice" for i in sorted({i for i in ids if ids.count(i) > 1})]
    return problems


def scratch_copy(into: Path, mutant: Mutant | None) -> Path:
    tree = into / (mutant.id if mutant else "baseline")
    shutil.copytree(ROOT, tree, ignore=NOT_COPIED)
    if mutant is not None:
        path = tree / "src" / "tokenwire" / mutant.file
        path.write_text(path.read_text().replace(mutant.original, mutant.replacement, 1))
    return tree


def pytest_in(tree: Path, tests: list[str], timeout: float) -> tuple[str, float]:
    """Run pytest in `tree` against its own src: 'passed', 'failed', 'timeout' or 'error N'."""
    env = {
        **os.environ,
        "PYTHONPATH": str(tree / "src"),
        "PYTHONDONTWRITEBYTECODE": "1",  # a pyc of the same size and second could mask a mutant
    }
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    started = time.monotonic()
    with subprocess.Popen(
        command,
        cwd=tree,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: a timeout ends all of it
    ) as process:
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return "timeout", time.monotonic() - started
        except BaseException:  # Ctrl-C: its own session did not get it, so end it here
            os.killpg(process.pid, signal.SIGKILL)
            raise
    took = time.monotonic() - started
    if process.returncode == 0:
        return "passed", took
    if process.returncode == 1:
        return "failed", took
    tail = output.decode(errors="replace").strip().splitlines()[-15:]
    print("\n".join("    | " + line for line in tail))
    return f"error {process.returncode}", took


def imports_its_own_copy(tree: Path) -> bool:
    """The scratch copy's tokenwire, not the installed one, is what the tests import."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    where = subprocess.run(
        [sys.executable, "-c", "import tokenwire; print(tokenwire.__file__)"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return Path(where).is_relative_to(tree)


VERDICTS = {"failed": "killed", "timeout": "killed (timeout)", "passed": "SURVIVED"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ids", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--all", action="store_true", help="run the whole suite per mutant")
    parser.add_argument(
        "--each", action="store_true", help="run each of a mutant's tests alone: all must kill it"
    )
    parser.add_argument("--timeout", type=float, help="seconds per run (default 180, --all 1800)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args()
    known = {m.id: m for m in MUTANTS}
    unknown = [i for i in args.ids if i not in known]
    if unknown:
        parser.error(f"unknown mutant(s): {', '.join(unknown)}")
    if args.all and args.each:
        parser.error("--all and --each exclude each other")
    chosen = [known[i] for i in args.ids] if args.ids else list(MUTANTS)
    if args.list:
        for m in chosen:
            print(f"{m.id:30} {m.file:26} {m.description}")
        return 0
    problems = check(chosen)
    if problems:
        print("the mutant list is out of date:", *problems, sep="\n  ", file=sys.stderr)
        return 2
    timeout = args.timeout or (1800.0 if args.all else 180.0)

    def runs_of(mutant: Mutant) -> list[list[str]]:
        if args.all:
            return [[]]  # pytest's own testpaths: the whole suite
        return [[test] for test in mutant.tests] if args.each else [list(mutant.tests)]

    with tempfile.TemporaryDirectory(prefix="tokenwire-mutants-") as scratch:
        baseline = scratch_copy(Path(scratch), None)
        if not imports_its_own_copy(baseline):
            print("the tests import an installed tokenwire, not the copy", file=sys.stderr)
            return 2
        tests = [] if args.all else list(dict.fromkeys(t for m in chosen for t in m.tests))
        result, took = pytest_in(baseline, tests, timeout)
        print(f"{'(no mutant)':30} {result:>16}  {took:6.1f} s")
        if result != "passed":
            print("without any mutant the tests do not pass: fix them first", file=sys.stderr)
            return 2
        shutil.rmtree(baseline)
        not_killed = []
        for mutant in chosen:
            tree = scratch_copy(Path(scratch), mutant)
            for tests in runs_of(mutant):
                result, took = pytest_in(tree, tests, timeout)
                verdict = VERDICTS.get(result, result)
                what = tests[0].split("::")[-1] if args.each else mutant.description
                print(f"{mutant.id:30} {verdict:>16}  {took:6.1f} s  {what}", flush=True)
                if not verdict.startswith("killed") and mutant.id not in not_killed:
                    not_killed.append(mutant.id)
            shutil.rmtree(tree)
    print(f"\n{len(chosen) - len(not_killed)} of {len(chosen)} mutants killed", end="")
    print(f"; not killed: {', '.join(not_killed)}" if not_killed else "")
    return 1 if not_killed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("interrupted: nothing was left behind")
