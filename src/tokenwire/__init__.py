"""tokenwire: stream AI model answers to browsers and apps, token by token."""

__version__ = "0.1.0"
