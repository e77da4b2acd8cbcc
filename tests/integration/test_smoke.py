from tests.support.server import of_type, running_server, ws_client


async def test_a_simulated_answer_streams_to_completion() -> None:
    async with running_server() as server, ws_client(server) as client:
        frames = await client.ask("hello", config={"options": {"tokens": 5, "delay_ms": 0}})
        assert frames[-1]["data"]["status"] == "completed"
        text = "".join(f["data"]["chunk"] for f in of_type(frames, "chunk"))
        assert len(text.split()) == 5
