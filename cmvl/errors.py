"""Errors a user can cause. The CLI prints their message as one line and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a config key, a path, a file, a checkpoint. Never an internal bug."""

    exit_code = 2


class ConfigError(UserError):
    """A config key or value is invalid or inconsistent with another."""


class DataError(UserError):
    """A dataset file or folder is missing or does not have the expected layout."""


class CheckpointError(UserError):
    """A checkpoint is missing, truncated, or not a cmvl checkpoint."""
