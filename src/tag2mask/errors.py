"""Errors that tag2mask raises on purpose, so the CLI can print one clear line instead of a traceback."""

from __future__ import annotations


class Tag2MaskError(Exception):
    """Base class of every error meant for the user: the message alone must say what to do."""


class ConfigError(Tag2MaskError, ValueError):
    """A config key, value or override is wrong."""


class DataError(Tag2MaskError, ValueError):
    """An input file (image, mask, list, CSV, annotation) is missing, unreadable or inconsistent."""


class MissingWeightsError(Tag2MaskError, FileNotFoundError):
    """A model weight file was not found; the message names the file, where it was looked for and how to get it."""


class NotBuiltError(Tag2MaskError):
    """A pipeline stage that this version does not implement yet."""
