"""What every fastmri_growth command line shares: one-line errors and help."""
from __future__ import annotations

import argparse
from typing import List


class UsageError(Exception):
    """Bad command-line input; the command prints it as one line and exits 2."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except ``None`` and off switches (their help says the fallback)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.required:
            return action.help or ""
        return super()._get_help_string(action)


def flag(name: str) -> List[str]:
    """Both spellings of a multi-word option.

    Args:
        name: The hyphenated spelling, e.g. ``"--data-path"``.

    Returns:
        ``["--data-path", "--data_path"]`` (one entry for one-word options).
    """
    under = "--" + name[2:].replace("-", "_")
    return [name] if under == name else [name, under]


def one_line(err: BaseException) -> str:
    """An exception's message folded onto one line."""
    return " ".join(str(err).split())
