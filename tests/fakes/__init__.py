"""Fake upstreams that speak real wire formats on loopback sockets."""
