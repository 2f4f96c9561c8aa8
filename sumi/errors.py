"""Errors a user can act on.

Every mistake a user can make (a wrong config key, a token id out of range, a truncated checkpoint, a missing
file) raises a subclass of :class:`SumiError` whose message says what was wrong and how to fix it. The command
line prints that message without a traceback and exits with status 2.
"""


class SumiError(Exception):
    """Base class of sumi's user-facing errors."""


class ConfigError(SumiError, ValueError):
    """A configuration value or file is invalid."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition``: one line per rule in config validation."""
    if not condition:
        raise ConfigError(message)


class CheckpointError(SumiError, ValueError):
    """A model directory or checkpoint is missing, incomplete, corrupt or mismatched."""


class InputError(SumiError, ValueError):
    """Bad user input to a model, sampler or scorer (token ids, prompt lengths, options)."""


class OptionError(ConfigError, InputError):
    """An invalid option of a sampler call (:class:`sumi.sampling.SamplingConfig`): a configuration value that
    is also input to the call, so ``except ConfigError`` and ``except InputError`` both catch it.

    ``field`` names the offending option (the server reports it as the OpenAI ``param``).
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
