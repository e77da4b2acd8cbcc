"""tokenwire: stream AI model answers to browsers and apps, token by token."""

from importlib.metadata import PackageNotFoundError, version

# One source of truth: the version pyproject.toml gives the installed package.
try:
    __version__ = version("tokenwire")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
