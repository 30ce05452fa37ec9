"""Old import path: schedules moved to :mod:`fastmri_growth.growth.schedule`, sites
to :mod:`fastmri_growth.growth.sites`.

The functions here keep their old signatures (a U-Net's ``num_pool_layers``
instead of a site list) and return ``(layer_id, conv_idx)`` tuples.
"""
from typing import Dict, Iterable, List, Optional, Tuple, Union

from fastmri_growth.growth.schedule import SCHEDULES, GrowthSchedule  # noqa: F401
from fastmri_growth.growth.schedule import parse_progressive as _parse_progressive
from fastmri_growth.growth.sites import Site
from fastmri_growth.growth.sites import parse_sites as _parse_sites


def _block_sites(num_pool_layers: int) -> List[Site]:
    from fastmri_growth.models.topology import layer_ids

    return [Site(lid, c) for lid in layer_ids(num_pool_layers) for c in (0, 1)]


def parse_sites(entries: Optional[Iterable[str]], num_pool_layers: int) -> List[Tuple[str, int]]:
    """``layers_to_grow`` entries of a U-Net as ``(layer_id, conv_idx)`` tuples (block convs)."""
    return [(s.layer, s.conv) for s in _parse_sites(entries, _block_sites(num_pool_layers))]


def parse_progressive(spec: Union[None, str, Dict], num_pool_layers: int
                      ) -> Dict[int, List[Tuple[str, int]]]:
    """A progressive schedule of a U-Net: epoch -> ``(layer_id, conv_idx)`` tuples."""
    parsed = _parse_progressive(spec, _block_sites(num_pool_layers))
    return {e: [(s.layer, s.conv) for s in sites] for e, sites in parsed.items()}
