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


def one_line(err: UserError) -> str:
    """The error's message on one line. An error raised in a DataLoader worker reaches the main process re-raised
    with the worker's traceback in its message; the user's line is the original one, at its end."""
    text = str(err)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text
