"""The growth-method interface: options, candidates, proposal, surgery, wording.

A method is a small class registered with
:func:`~fastmri_growth.growth.methods.register_method`. The engine
(:func:`fastmri_growth.growth.grow`) calls, for every site of a growth event:

1. :meth:`GrowthMethod.check` - is the request valid (before anything runs)?
2. :meth:`GrowthMethod.candidates` - fan-ins to score, fixed before the
   statistics pass (or None); a method may first ask for a pre-pass
   (:meth:`GrowthMethod.pre_accumulator`) whose statistics it turns into
   candidates (``gradmax``: directions of a linearised problem);
3. one statistics pass over the scoring batches for all sites at once
   (fan-out gradients of the candidates, and whatever :meth:`wants` lists);
4. :meth:`GrowthMethod.propose` - the new filters (a :class:`Proposal`);
5. :meth:`GrowthMethod.apply` - the surgery (default: append the proposed
   fan-ins with the proposed, usually zero, fan-out);
6. :meth:`GrowthMethod.describe` - the report line.

Options are declared once (:class:`Option`) and become keyword arguments,
Lightning-module arguments and command-line flags.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, List, Optional, Tuple

import torch

from ..net import SiteSpec
from ..statistics import Accumulator, SiteStatistics
from ..surgery import ParamChange, add_output_channels, fit_rows


@dataclass(frozen=True)
class Option:
    """A method option: one definition for the keyword, the default and the flag.

    Attributes:
        name: Keyword name (``n_candidates``); the flag is ``--n-candidates``.
        default: Default value.
        parse: Turns command-line text into the value.
        check: Returns an error message for a bad value, or None.
        help: Flag help.
    """

    name: str
    default: Any
    parse: Callable[[str], Any]
    check: Callable[[Any], Optional[str]]
    help: str


def positive_int(name: str) -> Callable[[Any], Optional[str]]:
    def check(value):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return f"{name} must be an int >= 1, got {value!r}"
        return None
    return check


def optional_nonneg_float(name: str) -> Callable[[Any], Optional[str]]:
    def check(value):
        if value is None:
            return None
        if not isinstance(value, (int, float)) or isinstance(value, bool) \
                or not math.isfinite(value) or value < 0:
            return f"{name} must be a finite float >= 0 or None, got {value!r}"
        return None
    return check


def parse_optional_float(text: str):
    return None if str(text).lower() in ("none", "") else float(text)


@dataclass
class Proposal:
    """The filters a method proposes for one site.

    Attributes:
        rows: Fan-ins of the new filters `(n_new, C_in, kh, kw)`, laid out
            for the site's input channels when the proposal was made.
        selected: Indices the report names (kept candidates, split filters).
        scores: The scores the report quotes (one per candidate or filter).
        fan_out: Per consumer, the new input slices `(n_new, C_out, kh, kw)`;
            None means zero (function-preserving).
        fan_out_grads: Per consumer, the closed-form gradient of the new
            slices at zero fan-out, when known (descent init, optimizer seeding).
        fan_out_grad_sq: Per consumer, the mean over the scoring batches of
            the new slices' squared per-batch gradient, when known
            (``optimizer_seeding="moment"``).
        details: Anything the report should carry (e.g. diversity measures).
    """

    rows: Optional[torch.Tensor]
    selected: List[int]
    scores: List[float]
    fan_out: Optional[List[torch.Tensor]] = None
    fan_out_grads: Optional[List[torch.Tensor]] = None
    fan_out_grad_sq: Optional[List[torch.Tensor]] = None
    details: Dict[str, Any] = field(default_factory=dict)


def rows_of(grads: Optional[List[torch.Tensor]], idx: torch.Tensor
            ) -> Optional[List[torch.Tensor]]:
    """The kept candidates' rows of per-consumer tensors `(K, ...)` (None stays None)."""
    return None if grads is None else [g.index_select(0, idx.to(g.device)) for g in grads]


class GrowthMethod:
    """Base class of growth methods (see the module docstring for the phases).

    Class attributes:
        name: Registry key, ``growth_method=`` value and ``--growth-method`` choice.
        summary: One line for ``--help``.
        options: The method's :class:`Option` s.
        zero_fan_out: Whether the new filters start with a zero fan-out (the
            function is preserved, and ``fan_out_init="descent"`` applies).
        needs_batches: Whether :meth:`propose` needs statistics from batches.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    options: ClassVar[Tuple[Option, ...]] = ()
    zero_fan_out: ClassVar[bool] = True
    needs_batches: ClassVar[bool] = True

    def __init__(self, **options: Any):
        valid = {o.name: o for o in self.options}
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(
                f"Unknown option(s) {', '.join(map(repr, unknown))} for growth method "
                f"{self.name!r}; its options: {', '.join(valid) or 'none'}"
            )
        for opt in self.options:
            value = options.get(opt.name, opt.default)
            problem = opt.check(value)
            if problem:
                raise ValueError(problem)
            setattr(self, opt.name, value)

    # ------------------------------------------------------------ the phases
    def check(self, spec: SiteSpec, n_new: int, candidates: Optional[torch.Tensor]) -> None:
        """Raise ValueError if growing ``n_new`` filters at ``spec`` cannot work."""
        if candidates is not None:
            want = spec.fan_in_shape
            if not torch.is_tensor(candidates) or candidates.dim() != 4 or \
                    tuple(candidates.shape[1:]) != tuple(want):
                got = tuple(candidates.shape) if torch.is_tensor(candidates) \
                    else type(candidates).__name__
                raise ValueError(
                    f"candidates must have shape (K, {', '.join(map(str, want))}) for "
                    f"{spec.site.label}, got {got}"
                )

    def wants(self) -> Tuple[str, ...]:
        """Statistics needed beyond candidates' fan-out gradients: ``"weight_grad"``."""
        return ()

    def accumulator(self, spec: SiteSpec, n_new: int,
                    candidates: Optional[torch.Tensor]) -> Optional[Accumulator]:
        """An extra per-batch statistic of the scoring pass (given the pool), or None."""
        return None

    def pre_accumulator(self, spec: SiteSpec, n_new: int) -> Optional[Accumulator]:
        """A statistic of a first pass, from which :meth:`candidates` builds its pool, or None."""
        return None

    def candidates(self, spec: SiteSpec, n_new: int, generator: Optional[torch.Generator],
                   given: Optional[torch.Tensor] = None,
                   pre: Optional[SiteStatistics] = None) -> Optional[torch.Tensor]:
        """Fan-ins to score in the statistics pass `(K, C_in, kh, kw)`, or None.

        Args:
            spec: The site.
            n_new: Filters to add.
            generator: CPU random generator.
            given: Candidates passed explicitly by the caller.
            pre: The pre-pass statistics, if :meth:`pre_accumulator` asked for one.
        """
        return given

    def propose(self, spec: SiteSpec, n_new: int, stats: Optional[SiteStatistics],
                generator: Optional[torch.Generator]) -> Proposal:
        """The new filters for this site."""
        raise NotImplementedError

    def apply(self, spec: SiteSpec, proposal: Proposal,
              in_map: Optional[torch.Tensor]) -> List[ParamChange]:
        """Do the surgery at ``spec`` (the site as it is now).

        Args:
            spec: The live site.
            proposal: From :meth:`propose`.
            in_map: Index map of the site conv's input channels since the
                proposal (earlier sites of the event fed it new channels).

        Returns:
            The parameter changes.
        """
        return add_output_channels(spec, fit_rows(proposal.rows, in_map), proposal.fan_out,
                                   proposal.fan_out_grads, proposal.fan_out_grad_sq)

    def describe(self, selected: List[int], scores: List[float]) -> str:
        """The decision, as the report line words it."""
        what = "filter" if len(selected) == 1 else "filters"
        sel = selected[0] if len(selected) == 1 else selected
        return f"Added {what} {sel}"
