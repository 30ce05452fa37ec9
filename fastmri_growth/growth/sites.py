"""Growth sites: which conv of which network grows, and how users name it.

A site is one conv whose output channels can be added (or removed): conv 0
or 1 of a U-Net block, or ``"t"``, the transposed conv that up-samples into
a decoder block. In a network made of several U-Nets (a VarNet) a site also
names the sub-network, e.g. ``cascade_3/up_0:1``.

Text form, as ``--layers-to-grow`` takes it: ``[NET/]LAYER[:CONV]``, where
``LAYER`` alone means both block convs, ``NET`` may be ``cascade_*`` for
every cascade, and ``CONV`` is ``0``, ``1`` or ``t``.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple, Union

Conv = Union[int, str]
#: Block convs (0: first, 1: second) and the transposed conv (``"t"``).
CONV_IDS: Tuple[Conv, ...] = (0, 1, "t")
_CONV_NAMES = {0: "conv1", 1: "conv2", "t": "transpose"}
_WIDTH_KEYS = {0: "conv1_out", 1: "conv2_out", "t": "transpose_out"}


@dataclass(frozen=True)
class Site:
    """One growable conv.

    Attributes:
        layer: Layer id inside its U-Net: ``down_i``, ``bottleneck``, ``up_j``.
        conv: 0 or 1 (the block's first or second conv), or ``"t"`` (the
            transposed conv feeding ``up_j``).
        net: The sub-network in a composite backbone (``"cascade_3"``,
            ``"sens"``); ``""`` for a single U-Net.
    """

    layer: str
    conv: Conv
    net: str = ""

    @property
    def key(self) -> str:
        """Canonical text form, e.g. ``"up_0:1"`` or ``"cascade_2/down_0:t"``."""
        prefix = f"{self.net}/" if self.net else ""
        return f"{prefix}{self.layer}:{self.conv}"

    @property
    def label(self) -> str:
        """Readable name, e.g. ``"bottleneck conv1"`` or ``"sens/up_0 transpose"``."""
        prefix = f"{self.net}/" if self.net else ""
        return f"{prefix}{self.layer} {conv_name(self.conv)}"

    @property
    def width_key(self) -> str:
        """The key of this conv's width in ``get_network_size()``."""
        return width_key(self.conv)

    def __str__(self) -> str:
        return self.key


def conv_name(conv: Conv) -> str:
    """``0 -> "conv1"``, ``1 -> "conv2"``, ``"t" -> "transpose"``."""
    return _CONV_NAMES[conv]


def width_key(conv: Conv) -> str:
    """``0 -> "conv1_out"``, ``1 -> "conv2_out"``, ``"t" -> "transpose_out"``."""
    return _WIDTH_KEYS[conv]


def check_conv_idx(conv_idx, allowed: Sequence[Conv] = (0, 1)) -> Conv:
    """Validate a conv index.

    Args:
        conv_idx: 0, 1 or ``"t"``.
        allowed: The values valid at this layer.

    Returns:
        ``conv_idx``.

    Raises:
        ValueError: naming the bad value and the valid ones.
    """
    ok = (type(conv_idx) is int and conv_idx in allowed) or (
        isinstance(conv_idx, str) and conv_idx in allowed)
    if not ok:
        valid = " or ".join(
            {0: "0 (first conv)", 1: "1 (second conv)", "t": "'t' (transposed conv)"}[c]
            for c in allowed)
        raise ValueError(f"conv_idx must be {valid}, got {conv_idx!r}")
    return conv_idx


def as_site(value: Union[Site, Tuple, str]) -> Site:
    """A :class:`Site` from a Site, a ``(layer, conv[, net])`` tuple or its text key."""
    if isinstance(value, Site):
        return value
    if isinstance(value, tuple):
        return Site(*value)
    if isinstance(value, str):
        net, _, rest = value.rpartition("/")
        layer, _, conv = rest.partition(":")
        return Site(layer, int(conv) if conv in ("0", "1") else conv, net)
    raise TypeError(f"expected a Site, a (layer, conv) tuple or 'LAYER:CONV', got {value!r}")


def parse_sites(entries: Optional[Iterable[str]], all_sites: Sequence[Site],
                what: str = "layers_to_grow") -> List[Site]:
    """Parse ``--layers-to-grow`` entries against a network's sites.

    Args:
        entries: Strings ``[NET/]LAYER`` (both block convs) or
            ``[NET/]LAYER:CONV`` (``CONV`` 0, 1 or t); ``NET`` may hold
            shell wildcards (``cascade_*``). ``None``, empty, or a string of
            comma/space separated entries are accepted; None or empty means
            every site.
        all_sites: The network's sites, in network order.
        what: The option's name, for error messages.

    Returns:
        Sites in network order, without duplicates.

    Raises:
        ValueError: For an unknown net, layer or conv index, naming the valid ones.
    """
    if isinstance(entries, str):
        entries = entries.replace(",", " ").split()
    entries = [] if entries is None else [str(e).strip() for e in entries]  # reads a generator once
    if not entries:
        return list(all_sites)
    nets = list(dict.fromkeys(s.net for s in all_sites))
    chosen = set()
    for entry in entries:
        net_pat, slash, rest = entry.rpartition("/")
        layer, colon, conv = rest.partition(":")
        if slash:
            in_net = [n for n in nets if n and fnmatch.fnmatchcase(n, net_pat)]
            if not in_net:
                valid = ", ".join(n for n in nets if n)
                raise ValueError(
                    f"Unknown network {net_pat!r} in {what} entry {entry!r}; valid networks: "
                    f"{valid or '(none: this backbone has a single U-Net; drop the NET/ prefix)'}"
                )
        else:
            in_net = [n for n in nets if not n] or nets
        candidates = [s for s in all_sites if s.net in in_net]
        layers = list(dict.fromkeys(s.layer for s in candidates))
        if layer not in layers:
            raise ValueError(
                f"Unknown layer {layer!r} in {what} entry {entry!r}; valid layers: "
                f"{', '.join(layers)} (optionally with ':0', ':1' or ':t' for the first, second "
                "or transposed conv)"
            )
        if not colon:
            wanted = [0, 1]
        elif conv in ("0", "1"):
            wanted = [int(conv)]
        elif conv == "t":
            wanted = ["t"]
        else:
            raise ValueError(
                f"Bad conv index {conv!r} in {what} entry {entry!r}; valid: 0 (first conv), "
                "1 (second conv) or t (transposed conv)"
            )
        hits = [s for s in candidates if s.layer == layer and s.conv in wanted]
        if not hits:
            has = [str(s.conv) for s in candidates if s.layer == layer]
            raise ValueError(
                f"{what} entry {entry!r}: layer {layer!r} has no conv {conv!r}; its convs: "
                f"{', '.join(dict.fromkeys(has))}"
            )
        chosen.update(hits)
    return [s for s in all_sites if s in chosen]
