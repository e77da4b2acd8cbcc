"""Who may call the gateway, from where, and how much: credentials, access, limits, audit."""
