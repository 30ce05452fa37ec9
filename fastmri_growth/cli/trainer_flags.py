"""Command-line flags for ``pytorch_lightning.Trainer``, derived from the Trainer itself.

Lightning 2 removed ``Trainer.add_argparse_args``. Instead of a hand-written
list, every argument of ``Trainer.__init__`` whose annotation can be typed on
a command line (ints, floats, strings, booleans, literals, and unions of
them) becomes a flag with Lightning's own default and the first sentence of
Lightning's own docstring as its help. Arguments that only take Python
objects (``logger``, ``callbacks``, ``plugins``) and those the training
command sets itself (:data:`CONTROLLED`) are left out. fastMRI's demo
defaults override Lightning's where the demo sets one (:data:`DEMO_DEFAULTS`).
"""
from __future__ import annotations

import argparse
import inspect
import re
import typing
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from fastmri_growth.flags import str2bool

#: Trainer arguments the training command sets itself: the loggers, the
#: checkpoint and progress callbacks, fastMRI's samplers (the data module
#: builds them) and options that would switch those off.
CONTROLLED = (
    "logger", "callbacks", "plugins", "enable_checkpointing", "use_distributed_sampler",
    "barebones", "default_root_dir", "model_registry",
)
#: fastMRI's ``train_unet_demo.py`` defaults, and values that differ from
#: Lightning's ``None`` only in spelling the default out.
DEMO_DEFAULTS: Dict[str, Any] = {
    "max_epochs": 50,
    "deterministic": True,
    "precision": "32-true",
    "log_every_n_steps": 50,
    "num_sanity_val_steps": 2,
    "enable_progress_bar": True,
}

@dataclass(frozen=True)
class TrainerFlag:
    """One ``Trainer`` argument as a command-line flag.

    Attributes:
        name: The ``Trainer.__init__`` parameter (and the argparse dest).
        parse: Turns the command-line text into the value.
        default: The default (fastMRI's demo default where it has one).
        help: Lightning's description.
        metavar: What the value looks like.
        choices: Allowed values, for literals.
    """

    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    metavar: str
    choices: Optional[tuple] = None


def _docstring_args(doc: str) -> Dict[str, str]:
    """``{name: first sentence}`` of a Google-style ``Args:`` section."""
    out: Dict[str, str] = {}
    section = doc.split("Args:", 1)[-1] if doc else ""
    current = None
    for line in section.splitlines():
        m = re.match(r"^\s{8,16}(\w+): (.*)$", line)
        if m and not line.strip().startswith(("Default", "Example")):
            current = m.group(1)
            out[current] = m.group(2)
        elif current and line.strip():
            out[current] += " " + line.strip()
        elif current and not line.strip():
            current = None
    cleaned = {}
    for name, text in out.items():
        text = re.sub(r":(class|func|meth|paramref|attr):`~?([^`]+)`", r"\2", text)
        text = text.replace("``", "").replace("`", "")
        first = re.split(r"(?<=[.)])\s+(?=[A-Z])", text.strip())[0]
        cleaned[name] = " ".join(first.split())
    return cleaned


def _members(annotation) -> list:
    """The alternatives of a Union / Optional / Literal annotation, flattened."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union:
        return [m for arg in typing.get_args(annotation) for m in _members(arg)]
    if origin is typing.Literal:
        return [("literal", v) for v in typing.get_args(annotation)]
    return [annotation]


def _parser_for(name: str, annotation) -> Optional[tuple]:
    """``(parse, metavar, choices)`` for an annotation, or None if not typeable."""
    members = _members(annotation)
    literals = tuple(v for m in members if isinstance(m, tuple) for v in [m[1]])
    kinds = {m for m in members if not isinstance(m, tuple)}
    optional = type(None) in kinds
    kinds.discard(type(None))
    simple = {k for k in kinds if k in (int, float, str, bool)}
    objects = kinds - simple
    if objects and str not in simple and not literals:
        return None  # only Python objects (loggers, callbacks, plugins)

    def none_or(fn):
        def parse(text):
            if optional and str(text).strip().lower() == "none":
                return None
            return fn(text)
        parse.__name__ = getattr(fn, "__name__", "value")
        return parse

    if list in {typing.get_origin(o) for o in objects}:  # devices: 2, "0,1", "auto"

        def devices(text):
            try:
                return int(text)
            except ValueError:
                return text
        return devices, "N|LIST|auto", None
    if literals and not simple:
        strs = tuple(dict.fromkeys(str(v) for v in literals))
        return none_or(str), "{" + ",".join(strs) + "}", strs
    if literals and bool in simple:  # e.g. deterministic: bool | "warn"
        words = tuple(str(v) for v in literals)

        def bool_or_literal(text):
            if str(text).strip().lower() in words:
                return str(text).strip().lower()
            return str2bool(text)
        return none_or(bool_or_literal), "BOOL|" + "|".join(words), None
    if simple == {bool}:
        return none_or(str2bool), "BOOL", None
    if simple >= {int, bool} and float not in simple and str not in simple:  # fast_dev_run

        def int_or_bool(text):
            try:
                return int(text)
            except ValueError:
                return str2bool(text)
        return none_or(int_or_bool), "INT|BOOL", None
    if simple == {int}:
        return none_or(int), "INT", None
    if simple == {float}:
        return none_or(float), "FLOAT", None
    if int in simple or float in simple:

        def number(text):
            # An int is a count (batches, steps), a float a fraction.
            try:
                return int(text)
            except ValueError:
                pass
            try:
                return float(text)
            except ValueError:
                if str in simple:
                    return text
                raise argparse.ArgumentTypeError(
                    f"expected an int count or a float fraction, got {text!r}"
                ) from None
        metavar = "INT|FLOAT" + ("|STR" if str in simple else "")
        return none_or(number), metavar, None
    return none_or(str), "STR", None


def trainer_flags() -> List[TrainerFlag]:
    """Every command-line-typeable ``Trainer.__init__`` argument, in signature order."""
    import pytorch_lightning as pl

    sig = inspect.signature(pl.Trainer.__init__)
    hints = typing.get_type_hints(pl.Trainer.__init__)
    docs = _docstring_args(pl.Trainer.__init__.__doc__ or "")
    flags = []
    for name, param in sig.parameters.items():
        if name == "self" or name in CONTROLLED or param.default is inspect.Parameter.empty:
            continue
        spec = _parser_for(name, hints.get(name, param.annotation))
        if spec is None:
            continue
        parse, metavar, choices = spec
        default = DEMO_DEFAULTS.get(name, param.default)
        flags.append(TrainerFlag(name, parse, default, docs.get(name, ""), metavar, choices))
    return flags


def add_trainer_args(parser: argparse.ArgumentParser) -> List[str]:
    """Add the Trainer flags to ``parser`` (one group), returning their names.

    Args:
        parser: The parser to extend.

    Returns:
        The argparse destinations, which are the ``Trainer`` argument names.
    """
    group = parser.add_argument_group(
        "trainer (pytorch_lightning.Trainer; defaults: fastMRI's demo where it sets one, "
        "else Lightning's)"
    )
    names = []
    for f in trainer_flags():
        group.add_argument(f"--{f.name}", dest=f.name, type=f.parse, default=f.default,
                           metavar=f.metavar, choices=f.choices, help=f.help)
        names.append(f.name)
    return names
