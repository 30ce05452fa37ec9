"""The growth options of the growing Lightning modules: one table for defaults, flags and checks.

Each module-level growth option is declared once here (default, how the
command line parses it, its help); the growth methods' own options
(``n_candidates``, ``split_noise``, ...) come from the method registry.
The growing modules' constructors take their defaults from this table, the
flags are derived from it, and :func:`build_growth_callback` turns a set of
options into a configured :class:`~.growth_callback.GrowthCallback`, checking
every value before anything trains. Every flag takes the hyphen and the
underscore spelling (``--growth-method`` / ``--growth_method``).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Type

from fastmri_growth.growth.engine import FAN_OUT_INITS
from fastmri_growth.growth.methods import METHODS, all_options, check_method_name
from fastmri_growth.growth.optim import SEEDINGS
from fastmri_growth.growth.schedule import SCHEDULES, GrowthSchedule, parse_progressive
from fastmri_growth.growth.scoring import DEFAULT_SITE_CRITERION, SITE_CRITERIA
from fastmri_growth.growth.sites import Site, parse_sites

from fastmri_growth.growth.pruning import PRUNE_CRITERIA, PruneSchedule

from .growth_callback import GrowthCallback


def optional_int(text: str) -> Optional[int]:
    return None if str(text).lower() in ("none", "") else int(text)


def optional_float(text: str) -> Optional[float]:
    return None if str(text).lower() in ("none", "") else float(text)


def optional_str(text: str) -> Optional[str]:
    return None if str(text).lower() in ("none", "") else str(text)


@dataclass(frozen=True)
class GrowthFlag:
    """One module-level growth option.

    Attributes:
        name: Constructor keyword (and argparse dest).
        default: The default, for the constructors and the flag.
        help: Flag help ("" for the method flag, whose help lists the methods).
        type: Parses the flag's text.
        choices: The valid values, looked up when the parser is built.
        nargs: argparse ``nargs``.
        action: argparse ``action`` (instead of ``type``).
    """

    name: str
    default: Any
    help: str
    type: Optional[Callable[[str], Any]] = None
    choices: Optional[Callable[[], Sequence[str]]] = None
    nargs: Optional[str] = None
    action: Optional[str] = None


#: The module-level growth options (method options come from the registry).
GROWTH_FLAGS = (
    GrowthFlag("growth_method", "sample_select", "", choices=lambda: list(METHODS)),
    GrowthFlag("growth_interval", 1, "interval schedule: grow every N epochs", type=int),
    GrowthFlag("layers_to_grow", None, "Sites to grow: LAYER (both convs) or LAYER:CONV (0, 1, "
               "or t: the transposed conv into an up layer); layers are down_0..down_{P-1}, "
               "bottleneck, up_0..up_{P-1}; 'auto': the --auto-sites best sites of all, chosen "
               "at each event by --site-criterion; default: all", type=str, nargs="+"),
    GrowthFlag("auto_sites", None, "Grow only the K best of the sites at each event (ranked by "
               "--site-criterion from the event's statistics; 'auto' in --layers-to-grow "
               "implies 1)", type=optional_int),
    GrowthFlag("site_criterion", DEFAULT_SITE_CRITERION, "How --auto-sites ranks sites: the best "
               "candidate's score, per parameter or per FLOP a new filter adds",
               choices=lambda: list(SITE_CRITERIA)),
    GrowthFlag("growth_schedule", "interval", "When to grow: interval (every N epochs), plateau "
               "(after N validations without validation_loss improvement) or progressive (given "
               "epochs and sites)", choices=lambda: list(SCHEDULES)),
    GrowthFlag("plateau_patience", 2, "plateau schedule: grow after N validations without "
               "validation_loss improvement", type=int),
    GrowthFlag("progressive_schedule", None,
               "progressive schedule, e.g. '2:down_0,bottleneck;4:up_1:1'", type=str),
    GrowthFlag("n_new", 1, "Filters added per site per growth event", type=int),
    GrowthFlag("max_growth_steps", None, "Cap on growth events (default: none)", type=optional_int),
    GrowthFlag("max_width", None, "Cap on the filters of any conv (default: none)",
               type=optional_int),
    GrowthFlag("new_filter_lr_scale", 1.0, "Learning-rate scale of new weights during the epoch "
               "they were added in", type=float),
    GrowthFlag("reset_optimizer", False, "Recreate optimizer and LR scheduler after growth "
               "instead of keeping their state (the LR schedule then restarts from its first "
               "epoch)", action="store_true"),
    GrowthFlag("growth_start_epoch", 1, "First epoch at which growth may happen", type=int),
    GrowthFlag("growth_seed", 0, "Seed of candidate generation", type=int),
    GrowthFlag("plateau_min_delta", 0.0, "plateau schedule: an improvement of validation_loss "
               "smaller than this does not count", type=float),
    GrowthFlag("growth_batches", 8, "Scoring batches per growth event: the epoch's first and "
               "N-1 more drawn reproducibly from the training set (per process); scores are the "
               "gradient of their mean loss", type=int),
    GrowthFlag("fan_out_init", "zero", "New filters' fan-out: zero (output unchanged) or "
               "descent (minus its gradient, scaled by a line search on the scoring batches)",
               choices=lambda: list(FAN_OUT_INITS)),
    # grad: measured to halve the loss bump after an event (benchmarks/README.md, "bump").
    GrowthFlag("optimizer_seeding", "grad", "New second-moment optimizer state: grad (the "
               "square of the new fan-out slices' known gradient, never below the mean), "
               "moment (the mean over the scoring batches of their squared per-batch gradient, "
               "never below the mean), mean of the existing entries, or zero",
               choices=lambda: list(SEEDINGS)),
    # 80: measured to remove the loss bump after an event, at no cost in quality
    # (benchmarks/README.md, quality study); RMSprop's average of squared
    # gradients has a time constant of 100 steps.
    GrowthFlag("new_filter_ramp_steps", 80, "Ramp new weights' updates from 0 to full over N "
               "optimizer steps (0: none)", type=int),
    GrowthFlag("growth_end_epoch", None, "budget schedule: the epoch of the last growth event",
               type=optional_int),
    GrowthFlag("target_chans", None, "budget schedule: grow to the widths of a fixed U-Net of "
               "this chans", type=optional_int),
    GrowthFlag("target_params", None, "budget schedule: grow to this many parameters",
               type=optional_int),
    GrowthFlag("prune_schedule", None, "When to remove filters: interval (every "
               "--prune-interval epochs from --prune-start-epoch), epochs (--prune-epochs), or "
               "exchange (at every growth event, as many filters as it adds: the width moves to "
               "where it is needed); default: never", type=optional_str,
               choices=lambda: [None, "interval", "epochs", "exchange"]),
    GrowthFlag("prune_interval", 1, "prune schedule interval: every N epochs", type=int),
    GrowthFlag("prune_start_epoch", 1, "prune schedule interval: first pruning epoch", type=int),
    GrowthFlag("prune_epochs", None, "prune schedule epochs, e.g. '3,6,9'", type=str),
    GrowthFlag("prune_n", None, "Filters removed per prune site per event", type=optional_int),
    GrowthFlag("prune_fraction", None, "Or this fraction of each prune site's width, in (0, 1)",
               type=optional_float),
    GrowthFlag("prune_criterion", "magnitude", "Which filters go first: magnitude (smallest "
               "fan-out norm) or taylor (smallest first-order loss change of the removal, in size)",
               choices=lambda: list(PRUNE_CRITERIA)),
    GrowthFlag("prune_sites", None, "Sites that may lose filters (as --layers-to-grow); "
               "default: all", type=str, nargs="+"),
    GrowthFlag("min_width", 1, "No conv goes below this many filters when pruning", type=int),
)

#: Defaults of every growth option: the module-level ones, then the methods'.
GROWTH_DEFAULTS: Dict[str, Any] = {f.name: f.default for f in GROWTH_FLAGS}


def growth_default(name: str) -> Any:
    """The default of a growth option (module-level or a registered method's)."""
    if name in GROWTH_DEFAULTS:
        return GROWTH_DEFAULTS[name]
    return all_options()[name].default


def growth_arg_names() -> List[str]:
    """Every growth option's name: the module's and the registered methods'."""
    return list(GROWTH_DEFAULTS) + [n for n in all_options() if n not in GROWTH_DEFAULTS]


def spellings(name: str) -> List[str]:
    """``--growth-method`` and ``--growth_method`` (one entry for one-word names)."""
    return list(dict.fromkeys(["--" + name.replace("_", "-"), "--" + name]))


def _method_help() -> str:
    return "; ".join(f"{name}: {cls.summary}" for name, cls in METHODS.items())


def add_growth_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add every growth flag (module options, then the registered methods' options).

    Args:
        parser: The parser to extend.

    Returns:
        ``parser``.
    """
    g = parser.add_argument_group("growth")
    for f in GROWTH_FLAGS:
        kw: Dict[str, Any] = dict(dest=f.name, default=f.default, help=f.help or _method_help())
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
        if opt.name not in GROWTH_DEFAULTS:
            g.add_argument(*spellings(opt.name), dest=opt.name, default=opt.default,
                           type=opt.parse, help=opt.help)
    return parser


def split_growth_options(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Pop the registered methods' options out of a constructor's ``**kwargs``."""
    return {name: kwargs.pop(name) for name in list(kwargs) if name in all_options()}


def build_growth_callback(
    options: Mapping[str, Any],
    all_sites: Sequence[Site],
    callback_class: Type[GrowthCallback] = GrowthCallback,
) -> GrowthCallback:
    """A configured growth callback from a module's growth options, every value checked.

    Args:
        options: Growth options by name (missing ones take their defaults);
            method options are handed to the chosen method.
        all_sites: The network's sites (``layers_to_grow`` and the
            progressive schedule are parsed against them).
        callback_class: :class:`GrowthCallback` or a subclass.

    Returns:
        The callback.

    Raises:
        ValueError: a bad option, naming the value and the valid ones.
    """
    unknown = sorted(set(options) - set(growth_arg_names()))
    if unknown:
        raise ValueError(f"Unknown growth option(s) {', '.join(unknown)}; valid: "
                         f"{', '.join(growth_arg_names())}")
    o = {name: options.get(name, growth_default(name)) for name in growth_arg_names()}
    check_method_name(o["growth_method"])
    entries = o["layers_to_grow"]
    entries = entries.replace(",", " ").split() if isinstance(entries, str) else entries
    auto_sites = o["auto_sites"]
    if entries is not None and "auto" in list(entries):
        if list(entries) != ["auto"]:
            raise ValueError(f"layers_to_grow 'auto' chooses among all sites: give it alone, "
                             f"got {list(entries)}")
        entries, auto_sites = None, 1 if auto_sites is None else auto_sites
    sites = parse_sites(entries, all_sites)
    progressive = (parse_progressive(o["progressive_schedule"], all_sites)
                   if o["growth_schedule"] == "progressive" else {})
    schedule = GrowthSchedule(
        kind=o["growth_schedule"], sites=sites, interval=o["growth_interval"],
        start_epoch=o["growth_start_epoch"], patience=o["plateau_patience"],
        min_delta=o["plateau_min_delta"], progressive=progressive,
        max_events=o["max_growth_steps"], end_epoch=o["growth_end_epoch"],
        target_chans=o["target_chans"], target_params=o["target_params"],
    )
    method_options = {name: o[name] for name in all_options()}
    prune = None
    prune_flags = ("prune_n", "prune_fraction", "prune_epochs", "prune_sites")
    if o["prune_schedule"] is None:
        given = [f for f in prune_flags if o[f] is not None]
        if given:
            raise ValueError(f"{', '.join(given)} need a prune_schedule (interval, epochs or "
                             "exchange)")
    else:
        epochs = o["prune_epochs"]
        if isinstance(epochs, str):
            try:
                epochs = [int(e) for e in epochs.replace(",", " ").split()]
            except ValueError:
                raise ValueError(f"prune_epochs must be epochs like '3,6,9', got "
                                 f"{o['prune_epochs']!r}") from None
        prune = PruneSchedule(
            kind=o["prune_schedule"], interval=o["prune_interval"],
            start_epoch=o["prune_start_epoch"], epochs=tuple(epochs or ()), n=o["prune_n"],
            fraction=o["prune_fraction"], criterion=o["prune_criterion"],
            sites=None if o["prune_sites"] is None else parse_sites(
                o["prune_sites"], all_sites, what="prune_sites"),
            min_width=o["min_width"],
        )
    return callback_class(
        schedule, method=o["growth_method"], method_options=method_options, n_new=o["n_new"],
        max_width=o["max_width"], new_filter_lr_scale=o["new_filter_lr_scale"],
        reset_optimizer=o["reset_optimizer"], seed=o["growth_seed"],
        growth_batches=o["growth_batches"], fan_out_init=o["fan_out_init"],
        auto_sites=auto_sites, site_criterion=o["site_criterion"],
        optimizer_seeding=o["optimizer_seeding"], new_filter_ramp_steps=o["new_filter_ramp_steps"],
        prune=prune,
    )
