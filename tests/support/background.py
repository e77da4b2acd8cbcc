"""A background response through the openai SDK, left part-way and resumed (anywhere)."""

from __future__ import annotations

import openai

Deltas = list[tuple[int, str]]
"""Text deltas as (sequence_number, delta)."""


async def left_after(client: openai.AsyncOpenAI, deltas: int, text: str) -> tuple[str, Deltas]:
    """Start a streamed background response and leave it after `deltas` text deltas: its
    id and the deltas read."""
    stream = await client.responses.create(
        model="simulated", input=text, stream=True, background=True
    )
    response_id, read = "", []
    async for event in stream:
        if event.type == "response.created":
            response_id = event.response.id
        if event.type == "response.output_text.delta":
            read.append((event.sequence_number, event.delta))
            if len(read) == deltas:
                break
    await stream.close()
    return response_id, read


async def resumed_after(client: openai.AsyncOpenAI, response_id: str, after: int) -> Deltas:
    """The text deltas of a response after sequence number `after`, to its end."""
    resumed = await client.responses.retrieve(response_id, stream=True, starting_after=after)
    return [
        (e.sequence_number, e.delta)
        async for e in resumed
        if e.type == "response.output_text.delta"
    ]
