"""Thin adapters from the network onto the core gateway."""
