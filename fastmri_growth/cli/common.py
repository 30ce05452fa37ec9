"""What every fastmri_growth command line shares: one-line errors and help."""
from __future__ import annotations

import argparse
from typing import List


_TRUE = ("true", "yes", "y", "1", "on")
_FALSE = ("false", "no", "n", "0", "off")


def str2bool(value) -> bool:
    """Parses a command-line boolean (``true/false``, ``yes/no``, ``1/0``, ``on/off``).

    fastMRI declares boolean flags with ``type=bool``, for which any
    non-empty string, ``"False"`` included, is True.

    Raises:
        argparse.ArgumentTypeError: none of these; argparse turns it into a
            one-line usage error (exit status 2).
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise argparse.ArgumentTypeError(
        f"expected a boolean ({'/'.join(_TRUE)} or {'/'.join(_FALSE)}), got {value!r}"
    )


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


def redeclare(parser: argparse.ArgumentParser, *declarations) -> argparse.ArgumentParser:
    """A parser with ``parser``'s arguments, some of them declared anew.

    Args:
        parser: The parser to copy (its actions are shared, not duplicated).
        *declarations: ``(option_strings, kwargs)`` pairs for ``add_argument``;
            each replaces the existing option of the same name.
    """
    new = argparse.ArgumentParser(parents=[parser], add_help=False, conflict_handler="resolve")
    for option_strings, kwargs in declarations:
        new.add_argument(*option_strings, **kwargs)
    return new
