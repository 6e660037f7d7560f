"""Project errors: expected failures carry a sentence a user can act on.

`run.py` prints `U2NetError` messages without a traceback and exits non-zero.
"""


class U2NetError(Exception):
  """Base class of every expected, user-facing failure."""


class ConfigError(U2NetError, ValueError):
  """A configuration value is invalid (unknown domain, bad patch size, ...)."""


class InputError(U2NetError, ValueError):
  """An input array or file is invalid (bad shape, channel count, NaN, ...)."""


class DataError(U2NetError):
  """A dataset on disk is missing, malformed or inconsistent."""


class CheckpointError(U2NetError):
  """A checkpoint is missing, corrupt or incompatible with the config."""
