"""When to grow: growth schedules.

No Lightning, so the CLI can validate flags before anything is built. A
schedule answers "which sites grow in epoch e (at its first training
batch)?" from the epoch and a small state that is saved in checkpoints, so
growth is idempotent and a resumed run takes the same decisions as an
uninterrupted one.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

from .sites import Site, parse_sites

SCHEDULES = ("interval", "plateau", "progressive")


def parse_progressive(spec: Union[None, str, Dict], all_sites: Sequence[Site]
                      ) -> Dict[int, List[Site]]:
    """Parse a progressive schedule: epoch -> sites to grow at its start.

    Args:
        spec: A dict ``{epoch: [entries]}`` or a string
            ``"2:down_0,bottleneck;4:up_1:1"`` (``;`` between epochs, ``,``
            between entries, entries as in :func:`~.sites.parse_sites`).
        all_sites: The network's sites.

    Returns:
        ``{epoch: [sites]}``.

    Raises:
        ValueError: If the schedule is missing or malformed.
    """
    fmt = "expected 'EPOCH:LAYER[:CONV],LAYER...;EPOCH:...', e.g. '2:down_0,bottleneck;4:up_1:1'"
    if spec is None or spec == "" or spec == {}:
        raise ValueError(f"growth_schedule='progressive' needs progressive_schedule; {fmt}")
    if isinstance(spec, str):
        parsed = {}
        for part in spec.split(";"):
            part = part.strip()
            if not part:
                continue
            epoch, sep, rest = part.partition(":")
            if not sep or not rest.strip():
                raise ValueError(f"Malformed progressive_schedule part {part!r}; {fmt}")
            parsed.setdefault(epoch.strip(), []).extend(e for e in rest.split(",") if e.strip())
        spec = parsed
    if not isinstance(spec, dict) or not spec:
        raise ValueError(f"Malformed progressive_schedule {spec!r}; {fmt}")
    out: Dict[int, List[Site]] = {}
    for epoch, entries in spec.items():
        try:
            e = int(epoch)
        except (TypeError, ValueError):
            raise ValueError(f"Malformed progressive_schedule epoch {epoch!r} (not an int); {fmt}")
        if e < 0:
            raise ValueError(f"progressive_schedule epoch must be >= 0, got {e}; {fmt}")
        if isinstance(entries, str):
            entries = [entries]
        out[e] = parse_sites(list(entries), all_sites, what="progressive_schedule")
    return out


@dataclass
class GrowthSchedule:
    """Decides at which epochs growth happens and where.

    Attributes:
        kind: ``"interval"``, ``"plateau"`` or ``"progressive"``.
        sites: Sites grown at each event (interval and plateau).
        interval: Grow every ``interval`` epochs (interval schedule).
        start_epoch: First epoch at which growth may happen.
        patience: Epochs without validation improvement before growing
            (plateau schedule).
        min_delta: Improvement smaller than this does not count.
        progressive: ``{epoch: sites}`` (progressive schedule).
        max_events: Stop after this many growth events (None: no cap).
        state: Mutable state saved in checkpoints.
    """

    kind: str
    sites: List[Site]
    interval: int = 1
    start_epoch: int = 1
    patience: int = 2
    min_delta: float = 0.0
    progressive: Dict[int, List[Site]] = field(default_factory=dict)
    max_events: Optional[int] = None
    state: Dict = field(default_factory=lambda: {
        "grown_epochs": [], "best_loss": None, "bad_epochs": 0, "observed_epochs": []})

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ValueError(f"Unknown growth_schedule {self.kind!r}; valid: {', '.join(SCHEDULES)}")
        if not isinstance(self.interval, int) or self.interval < 1:
            raise ValueError(f"growth_interval must be an int >= 1, got {self.interval!r}")
        if not isinstance(self.start_epoch, int) or self.start_epoch < 0:
            raise ValueError(f"growth_start_epoch must be an int >= 0, got {self.start_epoch!r}")
        if not isinstance(self.patience, int) or self.patience < 1:
            raise ValueError(f"plateau_patience must be an int >= 1, got {self.patience!r}")
        if self.max_events is not None and (not isinstance(self.max_events, int) or self.max_events < 0):
            raise ValueError(f"max_growth_steps must be an int >= 0 or None, got {self.max_events!r}")

    @property
    def events(self) -> int:
        """Growth events done so far."""
        return len(self.state["grown_epochs"])

    def observe_validation(self, epoch: int, loss: float) -> None:
        """Record the validation loss measured at the end of ``epoch``.

        Args:
            epoch: The epoch that validated (each epoch counts once).
            loss: Its ``validation_loss``.
        """
        if epoch in self.state["observed_epochs"]:
            return
        self.state["observed_epochs"].append(epoch)
        best = self.state["best_loss"]
        if best is None or loss < best - self.min_delta:
            self.state["best_loss"] = float(loss)
            self.state["bad_epochs"] = 0
        else:
            self.state["bad_epochs"] += 1

    def sites_for_epoch(self, epoch: int) -> List[Site]:
        """Sites to grow in ``epoch`` (empty: no growth).

        Idempotent: an epoch that already grew returns nothing. The explicit
        epochs of a progressive schedule are not subject to ``start_epoch``.

        Args:
            epoch: The epoch being trained.

        Returns:
            ``[(layer_id, conv_idx), ...]``.
        """
        if epoch in self.state["grown_epochs"]:
            return []
        if self.kind != "progressive" and epoch < self.start_epoch:
            return []
        if self.max_events is not None and self.events >= self.max_events:
            return []
        if self.kind == "interval":
            due = (epoch - self.start_epoch) % self.interval == 0
            return list(self.sites) if due else []
        if self.kind == "plateau":
            return list(self.sites) if self.state["bad_epochs"] >= self.patience else []
        return list(self.progressive.get(epoch, []))

    def mark_grown(self, epoch: int) -> None:
        """Record a growth event at ``epoch`` (a plateau starts anew).

        Args:
            epoch: The epoch that grew.
        """
        if epoch not in self.state["grown_epochs"]:
            self.state["grown_epochs"].append(epoch)
        if self.kind == "plateau":
            self.state["bad_epochs"] = 0
            self.state["best_loss"] = None  # the grown net starts a new plateau
