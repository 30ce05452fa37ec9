"""When to grow: growth schedules.

No Lightning, so the CLI can validate flags before anything is built. A
schedule answers "which sites grow in epoch e (at its first training
batch)?" from the epoch and a small state that is saved in checkpoints, so
growth is idempotent and a resumed run takes the same decisions as an
uninterrupted one.
"""

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

from .sites import Site, parse_sites

SCHEDULES = ("interval", "plateau", "progressive", "budget", "auto")


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

    The ``budget`` schedule grows from the start widths to a target size by
    ``end_epoch``: events every ``interval`` epochs from ``start_epoch`` to
    ``end_epoch``; at the k-th of n events every site's target width is
    ``w0 + round((W - w0) * k / n)`` (so every site reaches its target ``W``
    together, at the last event). The targets scale every site's start width
    by one factor: ``target_chans / chans`` (the widths of a fixed U-Net of
    ``target_chans``) or the factor whose network has ``target_params``
    parameters; the growth callback computes them from the network at the
    first event and keeps them in :attr:`state`.

    The ``auto`` schedule decides at each due epoch (every ``interval`` from
    ``start_epoch``, up to ``end_epoch`` if given) from evidence whether to
    grow (:func:`auto_decision`): the best site's predicted loss decrease per
    added FLOP against the training loss's recent decrease per FLOP. It
    grows every site by ``growth_rate`` of its width (at least one filter;
    ``target_chans``/``target_params`` and ``max_width`` are caps), and stops
    for good after ``auto_patience`` declined checks in a row or when every
    site is at its cap. Its decisions are kept in ``state["auto"]``.

    Attributes:
        kind: One of :data:`SCHEDULES`.
        sites: Sites grown at each event (interval, plateau and budget).
        interval: Grow every ``interval`` epochs (interval and budget schedules).
        start_epoch: First epoch at which growth may happen.
        patience: Epochs without validation improvement before growing
            (plateau schedule).
        min_delta: Improvement smaller than this does not count.
        progressive: ``{epoch: sites}`` (progressive schedule).
        max_events: Stop after this many growth events (None: no cap).
        end_epoch: Budget schedule: the epoch of the last event.
        target_chans: Budget schedule: grow to a fixed U-Net's widths of this ``chans``.
        target_params: Budget schedule: grow to this many parameters.
        threshold: Auto schedule: grow while the gain ratio is at least this.
        growth_rate: Auto schedule: each event widens a site by this fraction.
        auto_patience: Auto schedule: stop after this many declined checks in a row.
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
    end_epoch: Optional[int] = None
    target_chans: Optional[int] = None
    target_params: Optional[int] = None
    threshold: float = 1.0
    growth_rate: float = 0.25
    auto_patience: int = 2
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
        budget = {"growth_end_epoch": self.end_epoch, "target_chans": self.target_chans,
                  "target_params": self.target_params}
        given = [name for name, value in budget.items() if value is not None]
        if self.kind == "auto":
            # The budget's end and targets are caps of the auto schedule.
            self._check_targets()
            return
        if self.kind != "budget":
            if given:
                raise ValueError(
                    f"{', '.join(given)} only apply to growth_schedule='budget' (got "
                    f"growth_schedule={self.kind!r})")
            return
        if self.end_epoch is None:
            raise ValueError("growth_schedule='budget' needs growth_end_epoch (the epoch of the "
                             "last growth event)")
        if not isinstance(self.end_epoch, int) or self.end_epoch < self.start_epoch:
            raise ValueError(
                f"growth_end_epoch must be an int >= growth_start_epoch ({self.start_epoch}), "
                f"got {self.end_epoch!r}")
        if (self.target_chans is None) == (self.target_params is None):
            raise ValueError("growth_schedule='budget' needs exactly one of target_chans and "
                             f"target_params (got {', '.join(given[1:]) or 'neither'})")
        self._check_targets()

    def _check_targets(self) -> None:
        if self.kind == "auto":
            if self.target_chans is not None and self.target_params is not None:
                raise ValueError("growth_schedule='auto' takes at most one of target_chans and "
                                 "target_params (its cap)")
            if self.end_epoch is not None and (not isinstance(self.end_epoch, int)
                                               or self.end_epoch < self.start_epoch):
                raise ValueError(
                    f"growth_end_epoch must be an int >= growth_start_epoch "
                    f"({self.start_epoch}), got {self.end_epoch!r}")
        for name in ("target_chans", "target_params"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 1):
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")

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
        if self.kind == "budget":
            return list(self.sites) if epoch in self.budget_epochs() else []
        if self.kind == "auto":
            if self.state.get("auto_stopped") is not None or (
                    self.end_epoch is not None and epoch > self.end_epoch):
                return []
            due = (epoch - self.start_epoch) % self.interval == 0
            return list(self.sites) if due else []
        return list(self.progressive.get(epoch, []))

    # ---------------------------------------------------------------- auto
    def observe_train_loss(self, epoch: int, loss: float) -> None:
        """Record one training step's loss (the auto schedule's evidence of progress)."""
        run = self.state.get("auto_losses")
        if run is None or run["epoch"] != epoch:
            if run is not None and run["epoch"] < epoch:
                self.state["auto_last_epoch"] = run
            run = self.state["auto_losses"] = {"epoch": int(epoch), "losses": []}
        run["losses"].append(float(loss))

    def loss_decrease_per_step(self, epoch: int) -> float:
        """The training loss's decrease per step over the epoch before ``epoch``.

        The mean loss of that epoch's first half minus its second half's,
        over the steps between the halves' centres; NaN without such an epoch.
        """
        for run in (self.state.get("auto_losses"), self.state.get("auto_last_epoch")):
            if run is not None and run["epoch"] == epoch - 1 and len(run["losses"]) >= 2:
                losses = run["losses"]
                half = len(losses) // 2
                first, second = losses[:half], losses[len(losses) - half:]
                return (sum(first) / half - sum(second) / half) / (len(losses) - half)
        return float("nan")

    def record_auto(self, decision: "AutoDecision") -> None:
        """Keep an auto decision; stop after ``auto_patience`` declines in a row.

        A decision that grows nothing because every site is at its cap
        (``decision.capped``) stops the schedule at once.
        """
        log = self.state.setdefault("auto", [])
        if any(d["epoch"] == decision.epoch for d in log):
            return  # an epoch decides once
        log.append(asdict(decision))
        declines = 0
        for d in reversed(log):
            if d["grow"]:
                break
            declines += 1
        if decision.capped or declines >= self.auto_patience:
            self.state["auto_stopped"] = decision.epoch

    # ---------------------------------------------------------------- budget
    def budget_epochs(self) -> List[int]:
        """The budget schedule's event epochs."""
        return list(range(self.start_epoch, self.end_epoch + 1, self.interval))

    def budget_targets(self, epoch: int) -> Dict[str, int]:
        """``{site key: target width}`` at the budget event of ``epoch``.

        Raises:
            RuntimeError: the targets were not set (:meth:`set_budget`).
        """
        budget = self.state.get("budget")
        if budget is None:
            raise RuntimeError("the budget schedule's targets are not set yet")
        events = self.budget_epochs()
        k = events.index(epoch) + 1 if epoch in events else (
            len([e for e in events if e <= epoch]))
        frac = k / len(events)
        return {key: w0 + int(round((budget["target"][key] - w0) * frac))
                for key, w0 in budget["start"].items()}

    def set_budget(self, start: Dict[str, int], target: Dict[str, int], params: int) -> None:
        """Record the start and target widths (by site key) and the target's parameters."""
        self.state["budget"] = {"start": dict(start), "target": dict(target),
                                "target_params": int(params)}

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


@dataclass
class AutoDecision:
    """One check of the auto schedule, and why it grew or not.

    Attributes:
        epoch: The epoch checked.
        grow: Whether it grows.
        ratio: ``gain_per_flop / progress_per_flop`` (inf: training has
            stopped improving).
        gain_per_flop: The best site's predicted loss decrease per optimizer
            step of its new filter (``lr * score**2``, the optimizer-aware
            score) per forward FLOP per sample the filter adds.
        progress_per_flop: The training loss's decrease per step over the
            last epoch, per forward FLOP per sample of the network.
        site: The best site's label.
        threshold: The threshold the ratio was held against.
        capped: Every site is at its cap (nothing left to grow).
        reason: One line saying why.
    """

    epoch: int
    grow: bool
    ratio: float
    gain_per_flop: float
    progress_per_flop: float
    site: str
    threshold: float
    capped: bool = False
    reason: str = ""


def auto_decision(epoch: int, site_scores: Sequence[Any], lr: float,
                  loss_decrease_per_step: float, flops_per_sample: float,
                  threshold: float) -> AutoDecision:
    """Whether adding capacity now buys more loss per FLOP than training the network as it is.

    The predicted gain of a new filter is the loss decrease its optimizer
    steps realise (``lr * s**2`` per step for its optimizer-aware score
    ``s``), per forward FLOP it adds; training's own progress is the recent
    decrease of the training loss per step, per forward FLOP of the whole
    network. Growth pays while the first is at least ``threshold`` times the
    second.

    Args:
        epoch: The epoch checked.
        site_scores: :class:`~fastmri_growth.growth.scoring.SiteScore` per
            site with room to grow, scored with the optimizer's preconditioner.
        lr: The optimizer's learning rate.
        loss_decrease_per_step: Training loss decrease per step (may be <= 0).
        flops_per_sample: Forward FLOPs per sample of the network now.
        threshold: The ratio at or above which growth happens.
    """
    gains = [(lr * s.best_score ** 2 / max(s.flops_per_filter, 1), s) for s in site_scores]
    if not gains:
        return AutoDecision(epoch, False, float("nan"), float("nan"), float("nan"), "",
                            threshold, capped=True, reason="every site is at its cap")
    gain, best = max(gains, key=lambda g: g[0])
    progress = loss_decrease_per_step / max(flops_per_sample, 1.0)
    ratio = gain / progress if progress > 0 else float("inf")
    grow = ratio >= threshold
    why = (f"best site {best.site.label} predicts {gain:.3g} loss per step per added FLOP; "
           + (f"training's loss fell {progress:.3g} per step per FLOP over the last epoch"
              if progress > 0 else "training's loss did not fall over the last epoch"))
    verdict = f"gain ratio {ratio:.3g} {'>=' if grow else '<'} threshold {threshold:g}"
    return AutoDecision(epoch, grow, ratio, gain, progress, best.site.label, threshold,
                        reason=f"{verdict}: {why}")


def auto_targets(size: Dict, sites: Sequence[Site], growth_rate: float,
                 caps: Optional[Dict[str, int]] = None,
                 max_width: Optional[int] = None) -> Dict[str, int]:
    """This auto event's target width per site key: ``w + max(1, round(rate * w))``, capped."""
    out = {}
    for site in sites:
        width = width_of(size, site)
        target = width + max(1, int(round(growth_rate * width)))
        if caps is not None and site.key in caps:
            target = min(target, caps[site.key])
        if max_width is not None:
            target = min(target, max_width)
        out[site.key] = target
    return out


def width_of(size: Dict, site: Site) -> int:
    """A site's width in a (possibly nested) ``get_network_size()``."""
    node = size
    if site.net:
        for part in site.net.split("/"):
            node = node[part]
    return int(node[site.layer][site.width_key])


def budget_targets_for(net, sites: Sequence[Site], target_chans: Optional[int] = None,
                       target_params: Optional[int] = None):
    """Start and target widths of a budget schedule, scaling every site by one factor.

    Args:
        net: The network at the start of growth (a GrowableNet; ``target_chans``
            needs its ``chans``, ``target_params`` its ``num_parameters_at``).
        sites: The sites that grow.
        target_chans: Scale by ``target_chans / net.chans`` (a fixed U-Net's
            widths when the network starts at fastMRI's widths).
        target_params: Scale by the smallest factor whose network has at
            least this many parameters.

    Returns:
        ``(start, target, params)``: widths by site key, and the target's
        parameter count.

    Raises:
        ValueError: the target is smaller than the start, or the network
            cannot say what is needed.
    """
    size = net.get_network_size()
    start = {s.key: width_of(size, s) for s in sites}

    def scaled(r: float) -> Dict[str, int]:
        return {k: max(w, int(round(w * r))) for k, w in start.items()}

    def params_at(widths: Dict[str, int]) -> int:
        from .sites import as_site

        return int(net.num_parameters_at({as_site(k): w for k, w in widths.items()}))

    now = sum(p.numel() for p in net.parameters())
    if target_chans is not None:
        chans = getattr(net, "chans", None)
        if not isinstance(chans, int):
            raise ValueError("target_chans needs a network with a 'chans' (a U-Net); give "
                             "target_params instead")
        if target_chans < chans:
            raise ValueError(f"target_chans={target_chans} is below the network's start width "
                             f"chans={chans}; the budget schedule only grows")
        target = scaled(target_chans / chans)
        return start, target, params_at(target)
    if target_params < now:
        raise ValueError(f"target_params={target_params:,} is below the network's {now:,} "
                         "parameters; the budget schedule only grows")
    hi = 1.0
    while params_at(scaled(hi)) < target_params:
        hi *= 2
        if hi > 2 ** 14:
            raise ValueError(f"target_params={target_params:,} cannot be reached by growing "
                             f"the sites {', '.join(start)}")
    lo = hi / 2 if hi > 1 else 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if params_at(scaled(mid)) < target_params else (lo, mid)
    target = scaled(hi)
    return start, target, params_at(target)


# ---------------------------------------------------------------- per event
def event_counts(size: Dict, sites: Sequence[Site], n_new: int,
                 targets: Optional[Dict[str, int]] = None,
                 max_width: Optional[int] = None) -> Dict[Site, int]:
    """How many filters each site gets at one event (sites with none left out).

    Args:
        size: The network's ``get_network_size()``.
        sites: The event's sites.
        n_new: Filters per site (without budget targets).
        targets: The budget schedule's target widths of this event, by site key.
        max_width: Cap on any conv's filters.
    """
    out = {}
    for site in sites:
        width = width_of(size, site)
        n = n_new if targets is None else targets.get(site.key, width) - width
        if max_width is not None:
            n = min(n, max_width - width)
        if n > 0:
            out[site] = n
    return out


def auto_budget_counts(schedule: GrowthSchedule, net, auto: int,
                       max_width: Optional[int] = None):
    """Budget schedule with auto sites: this event's parameter increment over the chosen sites.

    Returns ``count(site_score) -> filters`` for the engine, which calls it
    for each chosen site. No site grows past its target width: auto sites
    decides which sites get there first. (Uncapped, a full-resolution site,
    cheap in parameters per filter, took a hundred filters in one event and
    the network three times the target's FLOPs: benchmarks/README.md.)
    """
    budget = schedule.state["budget"]
    left = len([e for e in schedule.budget_epochs()
                if e not in schedule.state["grown_epochs"]]) or 1
    now = sum(p.numel() for p in net.parameters())
    step = max(0, budget["target_params"] - now) / left
    size = net.get_network_size()

    def count(score) -> int:
        n = int(round(step / (auto * max(score.params_per_filter, 1))))
        room = budget["target"][score.site.key] - width_of(size, score.site)
        if max_width is not None:
            room = min(room, max_width - width_of(size, score.site))
        # Only sites below this event's target are offered: room >= 1.
        return max(1, min(n, room))
    return count


def scoring_batch_indices(seed: int, epoch: int, rank: int, extra_batches: int,
                          batch_size: int, dataset_len: int) -> List[List[int]]:
    """Dataset indices of an event's extra scoring batches, drawn reproducibly.

    The generator is seeded by the seed, the epoch and the rank, so a
    resumed run draws the same batches, and each process its own.

    Returns:
        One list of indices per batch (at most ``extra_batches`` of
        ``batch_size``; fewer when the dataset is small).
    """
    import torch

    if extra_batches <= 0 or dataset_len <= 0:
        return []
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 8191 + rank + 1)
    count = min(extra_batches * batch_size, dataset_len)
    idx = torch.randperm(dataset_len, generator=g)[:count].tolist()
    return [idx[i:i + batch_size] for i in range(0, count, batch_size)]
