"""Depth growth: when cascades are inserted, and how each one fades in.

A backbone with cascades (``DynamicVarNet``) inserts a cascade whose update
is gated, ``k + alpha * (cascade(k) - k)``: at alpha 0 the network's output
is unchanged, and alpha rises linearly to 1 over ``fade_steps`` optimizer
steps (the fade-in of progressive GAN growing), after which the gate is
dropped and the cascade is a plain one. :class:`DepthSchedule` decides the
insertion epochs from the epoch and the number of cascades alone, and every
gate's value from the trainer's global step and the step of its insertion,
both kept in a small state saved in checkpoints: a resumed run (also one
resumed mid-fade) takes exactly the decisions and gate values of an
uninterrupted one, and every DDP rank takes the same ones.

No Lightning here: the growth callback calls these methods from its hooks.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

#: How a new cascade's U-Net starts: a copy of its neighbour's weights, or
#: fastMRI's default initialisation (PyTorch's default for its convs).
CASCADE_INITS = ("copy", "fresh")


@dataclass
class CascadeReport:
    """What one :meth:`~fastmri_growth.models.DynamicVarNet.add_cascades` call did.

    Attributes:
        position: Index of the first inserted cascade.
        n: Cascades inserted (indices ``position .. position + n - 1``).
        init: ``"copy"`` or ``"fresh"``.
        neighbour: Index (before insertion) of the cascade copied from or
            whose widths a fresh cascade took.
        cascades_before: Cascades before the insertion.
        cascades_after: Cascades after it.
        params_before: Parameters before.
        params_after: Parameters after.
        new_parameters: The inserted cascades' parameters (for the
            optimizer), in module order.
    """

    position: int
    n: int
    init: str
    neighbour: int
    cascades_before: int
    cascades_after: int
    params_before: int
    params_after: int
    new_parameters: List[torch.nn.Parameter] = field(default_factory=list, repr=False)

    @property
    def indices(self) -> List[int]:
        """The new cascades' indices."""
        return list(range(self.position, self.position + self.n))

    def __str__(self) -> str:
        where = ", ".join(f"cascade_{k}" for k in self.indices)
        return (f"inserted {where} ({self.init} of cascade_{self.neighbour}): "
                f"{self.cascades_before} -> {self.cascades_after} cascades, "
                f"{self.params_before:,} -> {self.params_after:,} parameters")


def check_alpha(alpha: Any) -> float:
    """A gate value in [0, 1] as a float.

    Raises:
        ValueError: anything else, naming it.
    """
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"a cascade gate must be a number in [0, 1], got {alpha!r}") from None
    if isinstance(alpha, bool) or not 0.0 <= value <= 1.0:
        raise ValueError(f"a cascade gate must be a number in [0, 1], got {alpha!r}")
    return value


@dataclass
class DepthSchedule:
    """Insert one cascade every ``interval`` epochs from ``start_epoch`` until ``target``.

    Insertions happen at the first training batch of a due epoch (after any
    width growth of that epoch). Each fades in over ``fade_steps`` optimizer
    steps: in the training step taken at global step ``s`` (steps done
    before it) a cascade inserted at step ``s0`` has the gate
    ``min(1, (s - s0) / fade_steps)`` (0 at insertion; 0 fade steps: a
    plain cascade at once, which changes the output).

    Attributes:
        target: Number of cascades to reach.
        interval: Epochs between insertions.
        start_epoch: First epoch that may insert.
        fade_steps: Optimizer steps of each fade.
        init: ``"copy"`` or ``"fresh"``.
        state: ``{"events": [{"epoch", "step", "cascades": [indices]}]}``,
            saved in checkpoints.
    """

    target: int
    interval: int = 1
    start_epoch: int = 1
    fade_steps: int = 100
    init: str = "copy"
    state: Dict[str, Any] = field(default_factory=lambda: {"events": []})

    def __post_init__(self):
        for name, value, low in (("target_cascades", self.target, 1),
                                 ("cascade_interval", self.interval, 1),
                                 ("cascade_start_epoch", self.start_epoch, 0),
                                 ("cascade_fade_steps", self.fade_steps, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if self.init not in CASCADE_INITS:
            raise ValueError(f"Unknown cascade_init {self.init!r}; valid: "
                             f"{', '.join(CASCADE_INITS)}")

    # ------------------------------------------------------------ decisions
    @property
    def events(self) -> List[Dict[str, Any]]:
        return self.state["events"]

    def check_start(self, num_cascades: int) -> None:
        """Refuse a target below the network's cascades (depth growth only adds).

        Raises:
            ValueError: naming both numbers.
        """
        if self.target < num_cascades:
            raise ValueError(f"target_cascades={self.target} is below the network's "
                             f"{num_cascades} cascades; depth growth only adds cascades")

    def due(self, epoch: int, num_cascades: int) -> int:
        """How many cascades to insert at the start of ``epoch`` (0 or 1).

        Idempotent: an epoch that inserted returns 0.
        """
        if epoch < self.start_epoch or (epoch - self.start_epoch) % self.interval:
            return 0
        if any(e["epoch"] == epoch for e in self.events):
            return 0
        return 1 if num_cascades < self.target else 0

    def planned_epochs(self, num_cascades: int, first_epoch: int, max_epochs: int) -> List[int]:
        """The insertion epochs in ``[first_epoch, max_epochs)`` from ``num_cascades`` cascades."""
        out, k = [], num_cascades
        for epoch in range(first_epoch, max_epochs):
            if k >= self.target:
                break
            if self.due(epoch, k):
                out.append(epoch)
                k += 1
        return out

    def record(self, epoch: int, step: int, indices: Sequence[int]) -> None:
        """Note an insertion at ``epoch``, global step ``step``, of cascades ``indices``."""
        self.events.append({"epoch": int(epoch), "step": int(step),
                            "cascades": [int(i) for i in indices]})

    # ------------------------------------------------------------ fades
    def alpha(self, event: Mapping[str, Any], step: int) -> float:
        """The gate of ``event``'s cascades in the training step at global step ``step``."""
        if self.fade_steps == 0:
            return 1.0
        return min(1.0, max(0.0, (int(step) - int(event["step"])) / self.fade_steps))

    def gates(self, step: int) -> Dict[int, float]:
        """``{cascade index: gate}`` of every cascade still fading at global step ``step``.

        A gate that has reached 1 is listed (with 1.0) until it is dropped;
        the caller sets the network's gates with this (a gate at 1 is removed).
        """
        out: Dict[int, float] = {}
        for event in self.events:
            a = self.alpha(event, step)
            for k in event["cascades"]:
                out[k] = a
        return out

    def fading(self, step: int) -> bool:
        """Whether any cascade's gate is below 1 at ``step``."""
        return any(a < 1.0 for a in self.gates(step).values())

    # ------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        return copy.deepcopy(self.state)

    def load_state_dict(self, state: Optional[Mapping[str, Any]]) -> None:
        self.state = {"events": [dict(e) for e in (state or {}).get("events", [])]}


def extend_budget(budget: Optional[Dict[str, Any]], neighbour_net: str,
                  new_nets: Sequence[str]) -> None:
    """Give new sub-networks the budget widths of their neighbour (in place).

    The budget schedule keeps start and target widths by site key
    (``cascade_2/down_0:0``); an inserted cascade takes its neighbour's, so
    it grows with the others at later budget events.

    Args:
        budget: The budget schedule's ``state["budget"]`` (None: nothing).
        neighbour_net: The neighbour's name, ``"cascade_K"``.
        new_nets: The new cascades' names.
    """
    if not budget:
        return
    prefix = neighbour_net + "/"
    for part in ("start", "target"):
        widths = budget[part]
        for key in [k for k in widths if k.startswith(prefix)]:
            for net in new_nets:
                widths.setdefault(net + "/" + key[len(prefix):], widths[key])
