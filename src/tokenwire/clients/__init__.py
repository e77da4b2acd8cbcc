"""Python clients of tokenwire's WebSocket protocol: `StreamClient` (asyncio),
`SyncStreamClient` (a thread of its own) and the terminal chat (`tokenwire chat`).
Import them from `tokenwire.client`."""
