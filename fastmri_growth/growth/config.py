"""Every growth and pruning option, declared once.

:class:`GrowthConfig` and :class:`PruneConfig` are frozen dataclasses whose
fields are the options, under the names that are also the Lightning
hyperparameters and, hyphenated, the command-line flags
(``growth_method`` / ``--growth-method``). Each field's metadata
(:class:`Opt`) says how the flag parses its text, how the value is checked,
its help, and which schedules it applies to; the registered growth methods'
own options (``n_candidates``, ``split_noise``, ...) join from the method
registry. Everything else is derived from these declarations:

* :meth:`GrowthConfig.from_options` - a checked configuration from options
  by name (the growing modules' and :class:`GrowthCallback`'s keywords);
* :func:`defaults`, :func:`option_names` - the flat table of every option;
* :func:`add_arguments` - the argparse flags and their ``--help``;
* :func:`inapplicable` - options given for a schedule, prune schedule,
  method or backbone that would ignore them (the command line refuses them);
* :meth:`GrowthConfig.schedule`, :meth:`GrowthConfig.prune_schedule` - the
  engine's schedules for a network's sites.

No Lightning here: the command line checks its flags before anything is built.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .checks import (Check, any_int, anything, float_at_least, fraction, int_at_least, one_of, require,
                     text_or_list)
from .depth import CASCADE_INITS, DepthSchedule
from .engine import FAN_OUT_INITS
from .methods import METHODS, GrowthMethod, all_options, check_method_name, get_method
from .optim import SEEDINGS
from .pruning import PRUNE_CRITERIA, PruneSchedule
from .schedule import SCHEDULES, GrowthSchedule, parse_progressive
from .scoring import CANDIDATE_SCORES, DEFAULT_SITE_CRITERION, SITE_CRITERIA
from .sites import Site, parse_sites


def optional_int(text: str) -> Optional[int]:
    return None if str(text).lower() in ("none", "") else int(text)


def optional_float(text: str) -> Optional[float]:
    return None if str(text).lower() in ("none", "") else float(text)


def optional_str(text: str) -> Optional[str]:
    return None if str(text).lower() in ("none", "") else str(text)


@dataclass(frozen=True)
class Opt:
    """How one option is given on a command line, checked and documented.

    Attributes:
        help: Flag help.
        parse: Turns the flag's text into the value.
        check: ``check(name, value) -> problem or None``.
        applies: The (prune) schedules it applies to; None: every one.
        needs: What the backbone must have for the option to mean anything
            (``"cascades"``: depth growth); None: any backbone.
        choices: The valid values (looked up when the parser is built).
        nargs: argparse ``nargs``.
        switch: An on/off flag (argparse ``store_true``).
    """

    help: str
    parse: Callable[[str], Any] = str
    check: Check = anything
    applies: Optional[Tuple[str, ...]] = None
    choices: Optional[Callable[[], Sequence[Any]]] = None
    nargs: Optional[str] = None
    switch: bool = False
    needs: Optional[str] = None


def option(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field carrying its :class:`Opt`; ``choices`` imply the check."""
    if "choices" in kw and "check" not in kw:
        kw["check"] = one_of(kw["choices"])
    return field(default=default, metadata={"opt": Opt(help=help, **kw)})


def _method_help() -> str:
    return "; ".join(f"{name}: {cls.summary}" for name, cls in METHODS.items())


def _method_name(name: str, value: Any) -> Optional[str]:
    try:
        check_method_name(value)
    except ValueError as err:
        return str(err)
    return None


POSITIVE = int_at_least(1)
EPOCH = int_at_least(0)
OPTIONAL_POSITIVE = int_at_least(1, optional=True)

#: Schedules that grow the same sites at every event (``--layers-to-grow``).
SITE_SCHEDULES = ("interval", "plateau", "budget", "auto")


@dataclass(frozen=True)
class PruneConfig:
    """When and how filters are removed (see :class:`~.pruning.PruneSchedule`)."""

    prune_schedule: Optional[str] = option(
        None, "When to remove filters: interval (every --prune-interval epochs from "
        "--prune-start-epoch), epochs (--prune-epochs), or exchange (at every growth event, as "
        "many filters as it adds: the width moves to where it is needed); default: never",
        parse=optional_str, choices=lambda: [None, *PruneSchedule.KINDS],
        check=one_of(lambda: [None, *PruneSchedule.KINDS], "prune_schedule"))
    prune_interval: int = option(1, "prune schedule interval: every N epochs", parse=int,
                                 check=POSITIVE, applies=("interval",))
    prune_start_epoch: int = option(1, "prune schedule interval: first pruning epoch", parse=int,
                                    check=EPOCH, applies=("interval",))
    prune_epochs: Any = option(None, "prune schedule epochs, e.g. '3,6,9'", check=text_or_list,
                               applies=("epochs",))
    # exchange removes as many filters as each growth event adds
    prune_n: Optional[int] = option(None, "Filters removed per prune site per event",
                                    parse=optional_int, check=OPTIONAL_POSITIVE,
                                    applies=("interval", "epochs"))
    prune_fraction: Optional[float] = option(
        None, "Or this fraction of each prune site's width, in (0, 1)", parse=optional_float,
        check=fraction, applies=("interval", "epochs"))
    prune_criterion: str = option(
        "magnitude", "Which filters go first: magnitude (smallest fan-out norm) or taylor "
        "(smallest first-order loss change of the removal, in size)",
        choices=lambda: list(PRUNE_CRITERIA))
    prune_sites: Any = option(None, "Sites that may lose filters (as --layers-to-grow); "
                              "default: all", nargs="+", check=text_or_list)
    min_width: int = option(1, "No conv goes below this many filters when pruning", parse=int,
                            check=POSITIVE)

    #: Options that mean nothing without a prune schedule.
    NEEDS_SCHEDULE = ("prune_n", "prune_fraction", "prune_epochs", "prune_sites")

    def __post_init__(self):
        _check_fields(self)
        if self.prune_schedule is None:
            given = [n for n in self.NEEDS_SCHEDULE if getattr(self, n) is not None]
            if given:
                raise ValueError(f"{', '.join(given)} need a prune_schedule (interval, epochs or "
                                 "exchange)")
            return
        self.schedule(None)  # the schedule's own checks, now

    def epochs(self) -> Tuple[int, ...]:
        epochs = self.prune_epochs
        if isinstance(epochs, str):
            try:
                return tuple(int(e) for e in epochs.replace(",", " ").split())
            except ValueError:
                raise ValueError(f"prune_epochs must be epochs like '3,6,9', got "
                                 f"{epochs!r}") from None
        return tuple(epochs or ())

    def schedule(self, all_sites: Optional[Sequence[Site]]) -> Optional[PruneSchedule]:
        """The prune schedule for a network's sites (None: no pruning)."""
        if self.prune_schedule is None:
            return None
        sites = None
        if self.prune_sites is not None and all_sites is not None:
            sites = parse_sites(self.prune_sites, all_sites, what="prune_sites")
        return PruneSchedule(
            kind=self.prune_schedule, interval=self.prune_interval,
            start_epoch=self.prune_start_epoch, epochs=self.epochs(), n=self.prune_n,
            fraction=self.prune_fraction, criterion=self.prune_criterion, sites=sites,
            min_width=self.min_width)


@dataclass(frozen=True)
class GrowthConfig:
    """Every option of growth: when, where, how much, how, and the training state after.

    Build one with :meth:`from_options` (flat options by name, method and
    prune options included); construction checks every value and every
    combination, and raises ValueError naming the value and the valid ones.
    """

    growth_method: str = option("sample_select", "A registered growth method", choices=lambda: list(METHODS),
                                check=_method_name)
    growth_interval: int = option(1, "interval schedule: grow every N epochs", parse=int,
                                  check=POSITIVE, applies=("interval", "budget", "auto"))
    layers_to_grow: Any = option(
        None, "Sites to grow: LAYER (both convs) or LAYER:CONV (0, 1, or t: the transposed conv "
        "into an up layer); layers are down_0..down_{P-1}, bottleneck, up_0..up_{P-1}; 'auto': "
        "the --auto-sites best sites of all, chosen at each event by --site-criterion; default: "
        "all", nargs="+", check=text_or_list, applies=SITE_SCHEDULES)
    auto_sites: Optional[int] = option(
        None, "Grow only the K best of the sites at each event (ranked by --site-criterion from "
        "the event's statistics; 'auto' in --layers-to-grow implies 1)", parse=optional_int,
        check=OPTIONAL_POSITIVE)
    site_criterion: str = option(
        DEFAULT_SITE_CRITERION, "How --auto-sites ranks sites: the best candidate's score, per "
        "parameter or per FLOP a new filter adds", choices=lambda: list(SITE_CRITERIA),
        check=one_of(lambda: list(SITE_CRITERIA), "site criterion"))
    # grad_norm: the default until measurement favours the other (benchmarks/README.md,
    # "Predicted and realised loss decrease").
    candidate_score: str = option(
        "grad_norm", "What ranks candidates (sample_select) and sites (--auto-sites): grad_norm "
        "(the gradient norm of a candidate's zero fan-out) or optimizer (the loss decrease the "
        "optimizer's first step on its new weights realises: sum of G**2/sqrt(s), s the seeded "
        "second moment; about lr*||G||_1 under RMSprop/Adam with grad seeding)",
        choices=lambda: list(CANDIDATE_SCORES), check=one_of(lambda: list(CANDIDATE_SCORES),
                                                           "candidate score"))
    growth_schedule: str = option(
        "interval", "When to grow: interval (every N epochs), plateau (after N validations "
        "without validation_loss improvement), progressive (given epochs and sites), budget "
        "(to a target size by --growth-end-epoch) or auto (every --growth-interval epochs, grow "
        "while the best site's predicted gain per added FLOP is at least --auto-threshold times "
        "the training loss's recent decrease per FLOP; --target-chans/--target-params and "
        "--max-width cap it)", choices=lambda: list(SCHEDULES))
    # 1.0: grow while new capacity is predicted to buy at least as much loss
    # per FLOP as training the network as it is. Not tuned: measured, the ratio
    # stays far above 1 and the schedule never stops (benchmarks/README.md,
    # "Growth against the large network at equal FLOPs").
    auto_threshold: float = option(
        1.0, "auto schedule: grow while the gain ratio (best site's predicted loss decrease per "
        "added FLOP / training loss decrease per FLOP) is at least this", parse=float,
        check=float_at_least(0), applies=("auto",))
    auto_growth_rate: float = option(
        0.25, "auto schedule: each growth event widens every site by this fraction of its width "
        "(at least one filter)", parse=float, check=float_at_least(0), applies=("auto",))
    auto_patience: int = option(
        2, "auto schedule: stop growing for good after N declined checks in a row",
        parse=int, check=POSITIVE, applies=("auto",))
    plateau_patience: int = option(2, "plateau schedule: grow after N validations without "
                                   "validation_loss improvement", parse=int, check=POSITIVE,
                                   applies=("plateau",))
    progressive_schedule: Any = option(
        None, "progressive schedule, e.g. '2:down_0,bottleneck;4:up_1:1'",
        applies=("progressive",))
    n_new: int = option(1, "Filters added per site per growth event", parse=int, check=POSITIVE,
                        applies=("interval", "plateau", "progressive"))
    max_growth_steps: Optional[int] = option(
        None, "Cap on growth events (default: none)", parse=optional_int,
        check=int_at_least(0, optional=True))
    max_width: Optional[int] = option(None, "Cap on the filters of any conv (default: none)",
                                      parse=optional_int, check=OPTIONAL_POSITIVE)
    new_filter_lr_scale: float = option(
        1.0, "Learning-rate scale of new weights during the epoch they were added in",
        parse=float, check=float_at_least(0))
    reset_optimizer: bool = option(
        False, "Recreate optimizer and LR scheduler after growth instead of keeping their state "
        "(the LR schedule then restarts from its first epoch)", switch=True)
    growth_start_epoch: int = option(1, "First epoch at which growth may happen", parse=int,
                                     check=EPOCH, applies=("interval", "plateau", "budget", "auto"))
    growth_seed: int = option(0, "Seed of candidate generation (and of fresh cascades)",
                              parse=int, check=any_int)
    plateau_min_delta: float = option(
        0.0, "plateau schedule: an improvement of validation_loss smaller than this does not "
        "count", parse=float, check=float_at_least(0), applies=("plateau",))
    growth_batches: int = option(
        8, "Scoring batches per growth event: the epoch's first and N-1 more drawn reproducibly "
        "from the training set (per process); scores are the gradient of their mean loss",
        parse=int, check=POSITIVE)
    fan_out_init: str = option(
        "zero", "New filters' fan-out: zero (output unchanged) or descent (minus its gradient, "
        "scaled by a line search on the scoring batches)", choices=lambda: list(FAN_OUT_INITS))
    # grad: measured to halve the loss bump after an event (benchmarks/README.md, "bump").
    optimizer_seeding: str = option(
        "grad", "New second-moment optimizer state: grad (the square of the new fan-out slices' "
        "known gradient, never below the mean), moment (the mean over the scoring batches of "
        "their squared per-batch gradient, never below the mean), mean of the existing entries, "
        "or zero", choices=lambda: list(SEEDINGS))
    # 80: measured to remove the loss bump after an event, at no cost in quality
    # (benchmarks/README.md, quality study); RMSprop's average of squared
    # gradients has a time constant of 100 steps.
    new_filter_ramp_steps: int = option(
        80, "Ramp new weights' updates from 0 to full over N optimizer steps (0: none)",
        parse=int, check=int_at_least(0))
    growth_end_epoch: Optional[int] = option(
        None, "budget schedule: the epoch of the last growth event (auto: the last epoch that "
        "may grow)", parse=optional_int)
    target_chans: Optional[int] = option(
        None, "budget schedule: grow to the widths of a fixed U-Net of this chans (auto: grow no "
        "wider)",
        parse=optional_int)
    target_params: Optional[int] = option(
        None, "budget schedule: grow to this many parameters (auto: no further)", parse=optional_int)
    # Depth growth (backbones with cascades): independent of the width
    # schedule above, which keeps growing every cascade's U-Net, new ones too.
    target_cascades: Optional[int] = option(
        None, "Depth growth: insert cascades, one per event, until the network has N (a VarNet; "
        "each new cascade fades in, so the output is unchanged at insertion); default: none",
        parse=optional_int, check=OPTIONAL_POSITIVE, needs="cascades")
    cascade_interval: int = option(
        1, "Depth growth: insert a cascade every E epochs from --cascade-start-epoch",
        parse=int, check=POSITIVE, needs="cascades")
    cascade_start_epoch: int = option(
        1, "Depth growth: the first epoch that inserts a cascade (at its first batch)",
        parse=int, check=EPOCH, needs="cascades")
    # 100: unmeasured; a tenth of the first epochs of a small run, and of
    # the order of Adam's second-moment time constant.
    cascade_fade_steps: int = option(
        100, "Depth growth: a new cascade's update is scaled by a gate that rises from 0 to 1 "
        "over R optimizer steps (0: at once, which changes the output)", parse=int,
        check=int_at_least(0), needs="cascades")
    cascade_init: str = option(
        "copy", "Depth growth: a new cascade's U-Net starts as a copy of its neighbour's (the "
        "last cascade) or fresh (fastMRI's default initialisation, at its neighbour's widths)",
        choices=lambda: list(CASCADE_INITS), needs="cascades")
    #: The chosen method's options and those of every other registered method.
    method_options: Mapping[str, Any] = field(default_factory=dict)
    prune: PruneConfig = field(default_factory=PruneConfig)

    def __post_init__(self):
        _check_fields(self)
        unknown = sorted(set(self.method_options) - set(all_options()))
        if unknown:
            raise ValueError(f"Unknown growth method option(s) {', '.join(unknown)}; valid: "
                             f"{', '.join(all_options())}")
        full = {name: self.method_options.get(name, opt.default)
                for name, opt in all_options().items()}
        object.__setattr__(self, "method_options", full)
        method = self.method()  # checks the chosen method's option values
        if self.fan_out_init == "descent" and not method.zero_fan_out:
            raise ValueError(f"fan_out_init='descent' applies to methods that add zero-fan-out "
                             f"filters (not {method.name!r})")
        if self.auto_sites is not None and not method.zero_fan_out:
            raise ValueError(f"auto_sites ranks candidate scores; {method.name!r} has none (use "
                             "sample_select, random or gradmax)")
        if self.prune.prune_schedule == "exchange" and self.growth_schedule == "budget":
            raise ValueError("prune_schedule='exchange' moves width, the budget schedule adds it: "
                             "use exchange with the interval, plateau or progressive schedule")
        self._schedule_args([])  # the schedule's own checks (budget targets, ...), now
        entries = self.site_entries()
        if entries is not None and "auto" in entries and entries != ["auto"]:
            raise ValueError(f"layers_to_grow 'auto' chooses among all sites: give it alone, "
                             f"got {entries}")

    # ------------------------------------------------------------ building
    @classmethod
    def from_options(cls, options: Optional[Mapping[str, Any]] = None, **more: Any
                     ) -> "GrowthConfig":
        """A checked configuration from flat options by name (missing ones take defaults).

        Raises:
            ValueError: an unknown option (naming the valid ones) or a bad value.
        """
        given = {**dict(options or {}), **more}
        unknown = sorted(set(given) - set(option_names()))
        if unknown:
            raise ValueError(f"Unknown growth option(s) {', '.join(unknown)}; valid: "
                             f"{', '.join(option_names())}")
        own = {f: given[f] for f in _names(cls) if f in given}
        prune = {f: given[f] for f in _names(PruneConfig) if f in given}
        methods = {n: given[n] for n in all_options() if n in given}
        return cls(**own, method_options=methods, prune=PruneConfig(**prune))

    @staticmethod
    def split(kwargs: Mapping[str, Any]) -> Tuple["GrowthConfig", Dict[str, Any]]:
        """``(config of the growth options in kwargs, the other kwargs)``."""
        names = set(option_names())
        config = GrowthConfig.from_options({k: v for k, v in kwargs.items() if k in names})
        return config, {k: v for k, v in kwargs.items() if k not in names}

    def options(self) -> Dict[str, Any]:
        """Every option by name, flat (what hyperparameters record)."""
        out = {f: getattr(self, f) for f in _names(GrowthConfig)}
        out.update({f: getattr(self.prune, f) for f in _names(PruneConfig)})
        out.update(self.method_options)
        return out

    def replace(self, **options: Any) -> "GrowthConfig":
        """A copy with some options changed (flat names)."""
        return GrowthConfig.from_options({**self.options(), **options})

    def method(self) -> GrowthMethod:
        """The configured growth method."""
        return get_method(self.growth_method, **self.method_options)

    # ------------------------------------------------------------ schedules
    def site_entries(self) -> Optional[List[str]]:
        """``layers_to_grow`` as a list of entries (None: every site)."""
        entries = self.layers_to_grow
        if isinstance(entries, str):
            entries = entries.replace(",", " ").split()
        return None if entries is None else [str(e) for e in entries]

    @property
    def effective_auto_sites(self) -> Optional[int]:
        """``auto_sites``, or 1 where ``layers_to_grow`` is ``auto`` alone."""
        if self.site_entries() == ["auto"] and self.auto_sites is None:
            return 1
        return self.auto_sites

    def _schedule_args(self, sites: List[Site], progressive=None) -> GrowthSchedule:
        return GrowthSchedule(
            kind=self.growth_schedule, sites=sites, interval=self.growth_interval,
            start_epoch=self.growth_start_epoch, patience=self.plateau_patience,
            min_delta=self.plateau_min_delta, progressive=progressive or {},
            max_events=self.max_growth_steps, end_epoch=self.growth_end_epoch,
            target_chans=self.target_chans, target_params=self.target_params,
            threshold=self.auto_threshold, growth_rate=self.auto_growth_rate,
            auto_patience=self.auto_patience)

    def schedule(self, all_sites: Sequence[Site]) -> GrowthSchedule:
        """The growth schedule for a network's sites.

        Raises:
            ValueError: a site entry the network does not have, or more
                ``auto_sites`` than sites to choose from.
        """
        entries = self.site_entries()
        sites = parse_sites(None if entries == ["auto"] else entries, all_sites)
        progressive = (parse_progressive(self.progressive_schedule, all_sites)
                       if self.growth_schedule == "progressive" else {})
        auto = self.effective_auto_sites
        if auto is not None and self.growth_schedule != "progressive" and auto > len(sites):
            raise ValueError(f"auto_sites must be an int in [1, {len(sites)}] (the number of "
                             f"sites to choose from), got {auto!r}")
        return self._schedule_args(sites, progressive)

    def prune_schedule(self, all_sites: Sequence[Site]) -> Optional[PruneSchedule]:
        return self.prune.schedule(all_sites)

    def depth_schedule(self) -> Optional[DepthSchedule]:
        """The cascade insertion schedule (None: no depth growth)."""
        if self.target_cascades is None:
            return None
        return DepthSchedule(target=self.target_cascades, interval=self.cascade_interval,
                             start_epoch=self.cascade_start_epoch,
                             fade_steps=self.cascade_fade_steps, init=self.cascade_init)

    def check_backbone(self, capabilities: Iterable[str], what: str) -> None:
        """Refuse options that the backbone cannot honour (depth growth without cascades).

        Args:
            capabilities: What the backbone has (``"cascades"``).
            what: The backbone's name, for the message.

        Raises:
            ValueError: naming the option, its value and what it needs.
        """
        problem = backbone_problem(self.options(), capabilities, what)
        if problem:
            raise ValueError(problem)


def _names(cls) -> List[str]:
    return [f.name for f in dataclasses.fields(cls) if "opt" in f.metadata]


def _check_fields(config) -> None:
    for f in dataclasses.fields(config):
        if "opt" in f.metadata:
            require(f.metadata["opt"].check, f.name, getattr(config, f.name))


# ---------------------------------------------------------------- the table
def declared() -> Dict[str, Tuple[Any, Opt]]:
    """Every option: name -> (default, :class:`Opt`), growth, then pruning, then methods'."""
    out: Dict[str, Tuple[Any, Opt]] = {}
    for cls in (GrowthConfig, PruneConfig):
        for f in dataclasses.fields(cls):
            if "opt" in f.metadata:
                opt = f.metadata["opt"]
                if f.name == "growth_method":
                    opt = dataclasses.replace(opt, help=_method_help())
                out[f.name] = (f.default, opt)
    for name, o in all_options().items():
        out.setdefault(name, (o.default, Opt(help=o.help, parse=o.parse,
                                              check=lambda _n, v, o=o: o.check(v))))
    return out


def defaults() -> Dict[str, Any]:
    """Every option's default, by name."""
    return {name: default for name, (default, _) in declared().items()}


def option_names() -> List[str]:
    return list(declared())


def spellings(name: str) -> List[str]:
    """``--growth-method`` and ``--growth_method`` (one entry for one-word names)."""
    return list(dict.fromkeys(["--" + name.replace("_", "-"), "--" + name]))


def flag_strings() -> List[str]:
    """Both spellings of every option's flag."""
    return [s for name in option_names() for s in spellings(name)]


def add_arguments(parser: argparse.ArgumentParser,
                  help_overrides: Optional[Mapping[str, str]] = None) -> argparse.ArgumentParser:
    """Add every option as a flag (hyphen and underscore spellings) in a ``growth`` group.

    Args:
        parser: The parser to extend.
        help_overrides: Other help for some options (a backbone's site names).

    Returns:
        ``parser``.
    """
    group = parser.add_argument_group("growth")
    for name, (default, opt) in declared().items():
        kw: Dict[str, Any] = dict(dest=name, default=default,
                                  help=(help_overrides or {}).get(name, opt.help))
        if opt.switch:
            kw["action"] = "store_true"
        else:
            kw["type"] = opt.parse
        if opt.choices is not None:
            kw["choices"] = list(opt.choices())
        if opt.nargs:
            kw["nargs"] = opt.nargs
        group.add_argument(*spellings(name), **kw)
    return parser


#: What each ``needs`` of an option means: (for the command line, for code).
NEEDS = {"cascades": ("--model-type dynamic_varnet", "a network with cascades (DynamicVarNet)")}


def backbone_problem(values: Mapping[str, Any], capabilities: Iterable[str], what: str,
                     given: Optional[Iterable[str]] = None) -> Optional[str]:
    """Why some options cannot apply to a backbone lacking what they need, or None.

    Args:
        values: Every option's value.
        capabilities: What the backbone has (``"cascades"``).
        what: The backbone's name, for the message.
        given: The flags given on a command line (the message names flags);
            None: every option whose value is not its default counts (the
            message names options, as code gives them).
    """
    capabilities = set(capabilities)
    for name, (default, opt) in declared().items():
        if opt.needs is None or opt.needs in capabilities:
            continue
        value = values.get(name, default)
        for_cli, for_code = NEEDS.get(opt.needs, (opt.needs, opt.needs))
        if given is not None and name in set(given):
            flag = spellings(name)[0]
            return (f"{flag} {value} applies to backbones with {opt.needs} ({for_cli}); "
                    f"{what} has none: drop {flag}")
        if given is None and value != default:
            return f"{name}={value!r} needs {for_code}; {what} has no {opt.needs}"
    return None


def _either(names: Sequence[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def inapplicable(values: Mapping[str, Any], given: Iterable[str],
                 capabilities: Optional[Iterable[str]] = None, what: str = "this model") \
        -> Optional[str]:
    """Why some options given would be ignored by the chosen schedule, prune schedule, method or backbone.

    Args:
        values: Every option's value (the parsed flags).
        given: The options given explicitly (on the command line).
        capabilities: What the backbone has (``"cascades"``); None: not checked.
        what: The backbone's name, for the message.

    Returns:
        A message naming the flag, what it applies to and the fix, or None.
    """
    given = set(given)
    spell = spellings
    if capabilities is not None:
        problem = backbone_problem(values, capabilities, what, given)
        if problem:
            return problem
    if values.get("target_cascades") is None:
        for name, (_, opt) in declared().items():
            if opt.needs == "cascades" and name != "target_cascades" and name in given:
                return (f"{spell(name)[0]} is an option of depth growth, which needs "
                        "--target-cascades N; pass one or drop the flag")
    kind = values.get("growth_schedule", "interval")
    for name in _names(GrowthConfig):
        applies = declared()[name][1].applies
        if name in given and applies is not None and kind not in applies:
            if name == "layers_to_grow" and kind == "progressive":
                return ("--layers-to-grow does not apply to --growth-schedule progressive, whose "
                        "--progressive-schedule names the sites of each epoch "
                        "('EPOCH:LAYER[:CONV],...;...'); drop --layers-to-grow")
            flag = spell(name)[0]
            return (f"{flag} applies to --growth-schedule {_either(applies)}, not {kind}; "
                    f"pass --growth-schedule {applies[0]} or drop {flag}")
    method = values.get("growth_method")
    mine = {o.name for o in METHODS[method].options} if method in METHODS else set()
    for name in all_options():
        if name in given and name not in mine:
            takers = [m for m, cls in METHODS.items() if name in {o.name for o in cls.options}]
            return (f"{spell(name)[0]} is an option of --growth-method {_either(takers)}, "
                    f"not {method}; drop it or pass --growth-method {takers[0]}")
    prune = values.get("prune_schedule")
    for name in _names(PruneConfig):
        if name not in given or name == "prune_schedule":
            continue
        flag, applies = spell(name)[0], declared()[name][1].applies
        if prune is None:
            if name in PruneConfig.NEEDS_SCHEDULE:
                continue  # the configuration itself refuses these
            return (f"{flag} needs a --prune-schedule (interval, epochs or exchange); pass one "
                    "or drop the flag")
        if applies is not None and prune not in applies:
            return f"{flag} applies to --prune-schedule {_either(applies)}, not {prune}; drop it"
    return None
