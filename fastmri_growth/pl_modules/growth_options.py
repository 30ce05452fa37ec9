"""The growth options of the growing Lightning modules: one table, flags derived from it.

Each growth option is declared once here (how the command line parses it,
its help); its default is the module constructor's (so the constructor and
``--help`` cannot disagree), and the growth methods' own options
(``n_candidates``, ``split_noise``, ...) come from the method registry.
Every flag takes the hyphen and the underscore spelling
(``--growth-method`` / ``--growth_method``).
"""
from __future__ import annotations

import argparse
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

from fastmri_growth.growth.methods import METHODS, all_options
from fastmri_growth.growth.schedule import SCHEDULES


def optional_int(text: str) -> Optional[int]:
    return None if str(text).lower() in ("none", "") else int(text)


@dataclass(frozen=True)
class GrowthFlag:
    """One growth option as a flag (the default comes from the constructor)."""

    name: str
    help: str
    type: Optional[Callable[[str], Any]] = None
    choices: Optional[Callable[[], Sequence[str]]] = None
    nargs: Optional[str] = None
    action: Optional[str] = None


def _method_help() -> str:
    return "; ".join(f"{name}: {cls.summary}" for name, cls in METHODS.items())


#: The module-level growth options (method options come from the registry).
GROWTH_FLAGS = (
    GrowthFlag("growth_method", "", choices=lambda: list(METHODS)),
    GrowthFlag("growth_schedule", "When to grow: interval (every N epochs), plateau (after "
               "N validations without validation_loss improvement) or progressive (given epochs "
               "and sites)", choices=lambda: list(SCHEDULES)),
    GrowthFlag("growth_interval", "interval schedule: grow every N epochs", type=int),
    GrowthFlag("growth_start_epoch", "First epoch at which growth may happen", type=int),
    GrowthFlag("plateau_patience", "plateau schedule: grow after N validations without "
               "validation_loss improvement", type=int),
    GrowthFlag("plateau_min_delta", "plateau schedule: an improvement of validation_loss "
               "smaller than this does not count", type=float),
    GrowthFlag("progressive_schedule", "progressive schedule, e.g. '2:down_0,bottleneck;4:up_1:1'",
               type=str),
    GrowthFlag("layers_to_grow", "Sites to grow: LAYER (both convs) or LAYER:CONV (0 or 1); "
               "layers are down_0..down_{P-1}, bottleneck, up_0..up_{P-1}; default: all",
               type=str, nargs="+"),
    GrowthFlag("n_new", "Filters added per site per growth event", type=int),
    GrowthFlag("max_growth_steps", "Cap on growth events (default: none)", type=optional_int),
    GrowthFlag("max_width", "Cap on the filters of any conv (default: none)", type=optional_int),
    GrowthFlag("new_filter_lr_scale", "Learning-rate scale of new weights during the epoch "
               "they were added in", type=float),
    GrowthFlag("reset_optimizer", "Recreate optimizer and LR scheduler after growth instead of "
               "keeping their state (the LR schedule then restarts from its first epoch)",
               action="store_true"),
    GrowthFlag("growth_seed", "Seed of candidate generation", type=int),
)


def growth_arg_names() -> List[str]:
    """Every growth option's name: the module's and the registered methods'."""
    return [f.name for f in GROWTH_FLAGS] + [n for n in all_options() if n not in
                                             {f.name for f in GROWTH_FLAGS}]


def spellings(name: str) -> List[str]:
    """``--growth-method`` and ``--growth_method`` (one entry for one-word names)."""
    return list(dict.fromkeys(["--" + name.replace("_", "-"), "--" + name]))


def add_growth_args(parser: argparse.ArgumentParser, cls) -> argparse.ArgumentParser:
    """Add the growth flags of module class ``cls`` (defaults: its constructor's).

    Args:
        parser: The parser to extend.
        cls: A growing module class; its ``__init__`` names every option of
            :data:`GROWTH_FLAGS` and the registered methods' options.
    """
    params = inspect.signature(cls.__init__).parameters
    g = parser.add_argument_group("growth")
    for f in GROWTH_FLAGS:
        kw: Dict[str, Any] = dict(dest=f.name, default=params[f.name].default,
                                  help=f.help or _method_help())
        if f.action:
            kw["action"] = f.action
        else:
            kw["type"] = f.type or str
        if f.choices is not None:
            kw["choices"] = list(f.choices())
        if f.nargs:
            kw["nargs"] = f.nargs
        g.add_argument(*spellings(f.name), **kw)
    for opt in all_options().values():
        default = params[opt.name].default if opt.name in params else opt.default
        g.add_argument(*spellings(opt.name), dest=opt.name, default=default, type=opt.parse,
                       help=opt.help)
    return parser
