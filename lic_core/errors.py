"""Errors the library raises on bad input; each message names what is wrong."""
from __future__ import annotations


class LicError(Exception):
    """Base class of every error ``lic_core`` raises on purpose."""


class BitstreamError(LicError):
    """Bytes that are not a valid ``lic_core`` bitstream (truncated, corrupted or foreign)."""


class CheckpointError(LicError):
    """A checkpoint that does not match the model (missing, unexpected or mis-shaped tensor)."""


class ConfigError(LicError):
    """A configuration value that is unknown or out of range; the message names the key."""


class ImageError(LicError):
    """A file that is not an image this tool can read."""


class DatasetError(LicError):
    """A dataset folder that is missing, incomplete or holds unexpected images, or a failed download."""
