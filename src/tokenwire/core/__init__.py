"""Request orchestration, sessions, event logs and statistics. No sockets here."""
