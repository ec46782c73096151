"""Errors with messages meant for the user, not stack traces."""


class I2CRError(Exception):
    """Base class of every error i2cr reports to its user."""


class InputError(I2CRError, ValueError):
    """An input (mention, context, image, candidates, file, record) is invalid; the message names it."""


class ModelError(I2CRError, RuntimeError):
    """A model could not be loaded or did not answer (after retries); the message names the model."""


class ConfigError(I2CRError, ValueError):
    """A setting (model spec, threshold, path) is invalid; the message names the setting."""
