"""The growth engine: pure torch, backbone-agnostic.

One small module per phase of the algorithm::

    sites.py        Site: which conv grows, and how users name it
    net.py          GrowableNet protocol: a backbone declares each site's conv,
                    the channel-wise function after it, and its consumers
    statistics.py   collect: one forward+backward per batch for every site
    candidates.py   random candidate fan-ins, diverse selection
    methods/        one module per growth method + the registry
    surgery.py      add/remove output channels as old -> new index maps
    optim.py        optimizer state follows the index maps
    pruning.py      remove filters: criteria (magnitude, taylor), prune(net, removals),
                    PruneSchedule (when)
    engine.py       grow(net, sites, method, batches, loss_fn) -> reports
    schedule.py     when to grow, and how much at each event
    ramp.py         the update ramp of new weights (state by parameter name)
    checks.py       value checks every option shares
    config.py       GrowthConfig / PruneConfig: every option declared once
                    (default, parse, check, help, which schedules it applies to)
    report.py       GrowthReport

Importing this package loads neither Lightning nor fastMRI.
"""

from .candidates import generate_candidates, select_diverse
from .config import GrowthConfig, PruneConfig
from .engine import FAN_OUT_INITS, grow
from .methods import METHODS, GrowthMethod, Option, Proposal, get_method, register_method
from .net import Consumer, GrowableNet, SiteSpec, channelwise, resize_on_load
from .optim import grow_optimizer_state, remap_optimizer_state
from .pruning import PRUNE_CRITERIA, PruneReport, PruneSchedule, prune
from .ramp import UpdateRamp
from .report import GrowthReport
from .schedule import SCHEDULES, GrowthSchedule, parse_progressive
from .scoring import SITE_CRITERIA, SiteScore, brute_force_scores_at, score_candidates_at, score_sites
from .sites import Site, parse_sites
from .statistics import Statistics, collect
from .surgery import ParamChange, add_output_channels, remove_output_channels

__all__ = [
    "FAN_OUT_INITS", "GrowthConfig", "PruneConfig", "UpdateRamp", "resize_on_load", "METHODS", "PRUNE_CRITERIA", "PruneReport", "PruneSchedule", "SCHEDULES",
    "prune", "Consumer", "GrowableNet", "GrowthMethod",
    "GrowthReport", "GrowthSchedule", "Option", "ParamChange", "Proposal", "Site", "SiteSpec",
    "Statistics", "add_output_channels", "brute_force_scores_at", "channelwise", "collect",
    "generate_candidates", "get_method", "grow", "grow_optimizer_state", "parse_progressive",
    "parse_sites", "register_method", "remap_optimizer_state", "remove_output_channels",
    "SITE_CRITERIA", "SiteScore", "score_candidates_at", "score_sites", "select_diverse",
]
