"""Choosing a provider for each request."""
