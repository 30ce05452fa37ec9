"""What one growth step did: :class:`GrowthReport`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

from .sites import Conv, Site, conv_name, width_key
from .surgery import ParamChange


@dataclass
class GrowthReport:
    """What one growth step at one site did.

    Attributes:
        layer_idx: Grown layer id.
        conv_idx: 0, 1 or ``"t"``.
        method: The growth method's name.
        n_added: Number of filters added.
        scores: The method's scores (sample_select: one per candidate;
            split: the fan-in gradient norm of every existing filter).
        selected: The kept candidates (sample_select) or duplicated filters
            (split), best first; always a list.
        size_before: ``get_network_size()`` before the event.
        size_after: ``get_network_size()`` after this step.
        params_before: Parameter count before the event.
        params_after: Parameter count after this step.
        seconds: Wall time of the step (an event's shared statistics pass is
            split evenly over its sites).
        loss: Mean loss on the scoring batches before growth.
        net: The sub-network of a composite backbone ("" for a single U-Net).
        decision: The method's wording of the decision.
        loss_after: Mean loss on the scoring batches after the event (NaN
            unless the fan-out was initialised away from zero).
        fan_out_init: ``"zero"`` or ``"descent"``.
        details: Method-specific extras (e.g. feature correlations).
        changes: The parameter replacements (for the optimizer update).
    """

    layer_idx: str
    conv_idx: Conv
    method: str
    n_added: int
    scores: List[float]
    selected: List[int]
    size_before: Dict[str, Any]
    size_after: Dict[str, Any]
    params_before: int
    params_after: int
    seconds: float
    loss: float = float("nan")
    net: str = ""
    decision: str = ""
    loss_after: float = float("nan")
    fan_out_init: str = "zero"
    details: Dict[str, Any] = field(default_factory=dict, repr=False)
    changes: List[ParamChange] = field(default_factory=list, repr=False, compare=False)

    @property
    def site_id(self) -> Site:
        return Site(self.layer_idx, self.conv_idx, self.net)

    @property
    def site(self) -> str:
        """e.g. ``"bottleneck conv1"``."""
        return self.site_id.label

    def _widths(self, size: Dict[str, Any]) -> int:
        node = size
        if self.net:
            for part in self.net.split("/"):
                node = node[part]
        return node[self.layer_idx][width_key(self.conv_idx)]

    @property
    def width_before(self) -> int:
        return self._widths(self.size_before)

    @property
    def width_after(self) -> int:
        return self._widths(self.size_after)

    def __str__(self) -> str:
        decision = self.decision or f"added {self.n_added} {conv_name(self.conv_idx)} filter(s)"
        line = f"Growing {self.site}: {decision}, {self.width_before} -> {self.width_after} filters"
        if self.fan_out_init != "zero" and self.loss_after == self.loss_after:
            line += f" (scoring loss {self.loss:.4g} -> {self.loss_after:.4g})"
        return line
