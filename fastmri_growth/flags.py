"""Argparse helpers shared by the Lightning modules' flags and the command lines.

The modules declare their own flags (``add_model_specific_args``,
``add_data_specific_args``), so these helpers sit below both
:mod:`fastmri_growth.pl_modules` and :mod:`fastmri_growth.cli`; they import
nothing from the package.
"""
from __future__ import annotations

import argparse

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
