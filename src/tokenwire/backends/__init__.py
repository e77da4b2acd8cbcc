"""Where event logs are kept: in this process, or (later) shared through Redis."""
