"""The wire contract: client messages, server events, error codes. No I/O happens here."""
