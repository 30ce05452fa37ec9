"""A U-Net's layer ids and widths: fastMRI's defaults, checks, and a state dict's widths.

The parameter shapes are the single source of truth for a grown U-Net's
widths; these functions read them back, so a checkpoint is widths + weights
(rebuild, then load strictly).
"""

import re
from typing import Dict, List, Mapping

import torch

Widths = Dict[str, Dict[str, int]]


def layer_ids(num_pool_layers: int) -> List[str]:
    """All growable layer ids, encoder first.

    Args:
        num_pool_layers: Number of down-sampling layers P.

    Returns:
        ``["down_0", ..., "down_{P-1}", "bottleneck", "up_0", ..., "up_{P-1}"]``;
        ``up_0`` is next to the bottleneck (fastMRI's ``up_conv[0]``).
    """
    return (
        [f"down_{i}" for i in range(num_pool_layers)]
        + ["bottleneck"]
        + [f"up_{j}" for j in range(num_pool_layers)]
    )


def parse_layer_id(layer_id: str, num_pool_layers: int):
    """Split a layer id into its part and index.

    Args:
        layer_id: e.g. ``"down_2"``, ``"bottleneck"``, ``"up_0"``.
        num_pool_layers: Number of down-sampling layers P.

    Returns:
        ``(part, index)`` with part in ``{"down", "bottleneck", "up"}``
        (index 0 for the bottleneck).

    Raises:
        ValueError: If the id is not one of :func:`layer_ids`.
    """
    valid = layer_ids(num_pool_layers)
    if not isinstance(layer_id, str) or layer_id not in valid:
        raise ValueError(
            f"Unknown layer id {layer_id!r}; valid layer ids for "
            f"num_pool_layers={num_pool_layers}: {', '.join(valid)}"
        )
    if layer_id == "bottleneck":
        return "bottleneck", 0
    part, idx = layer_id.split("_")
    return part, int(idx)


def default_widths(chans: int, num_pool_layers: int) -> Widths:
    """fastMRI's widths for a given ``chans`` and number of pools.

    Args:
        chans: Output channels of the first conv.
        num_pool_layers: Number of pools P.

    Returns:
        Widths in :meth:`DynamicUnet.get_network_size` format: ``conv1_out``
        and ``conv2_out`` per block, and ``transpose_out`` (the transposed
        conv that up-samples into the block) per ``up_j``.
    """
    P = num_pool_layers
    w = {}
    for i in range(P):
        w[f"down_{i}"] = {"conv1_out": chans * 2 ** i, "conv2_out": chans * 2 ** i}
    w["bottleneck"] = {"conv1_out": chans * 2 ** P, "conv2_out": chans * 2 ** P}
    for j in range(P):
        c = chans * 2 ** (P - 1 - j)
        w[f"up_{j}"] = {"conv1_out": c, "conv2_out": c, "transpose_out": c}
    return w


def check_widths(widths: Mapping[str, Mapping[str, int]], P: int) -> Widths:
    """Validated widths: every layer id, positive ints; ``transpose_out`` optional.

    Raises:
        ValueError: naming the bad entry.
    """
    expected = layer_ids(P)
    if sorted(widths) != sorted(expected):
        raise ValueError(
            f"widths must have exactly the layer ids {expected}, got {sorted(widths)}"
        )
    out = {}
    for lid in expected:
        w = widths[lid]
        keys = ("conv1_out", "conv2_out") + (
            ("transpose_out",) if lid.startswith("up_") and "transpose_out" in w else ())
        try:
            vals = {k: int(w[k]) for k in keys}
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"widths[{lid!r}] must have int 'conv1_out' and 'conv2_out', got {w!r}")
        if any(v < 1 for v in vals.values()):
            raise ValueError(f"widths[{lid!r}] must be positive, got {w!r}")
        out[lid] = vals
    return out


_DOWN_KEY = re.compile(r"^down_sample_layers\.(\d+)\.layers\.0\.weight$")


def architecture_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Read a U-Net's architecture from its tensor shapes.

    Args:
        state_dict: A DynamicUnet / fastMRI Unet state dict, optionally with
            a ``"unet."`` prefix.

    Returns:
        ``{"in_chans", "out_chans", "num_pool_layers", "widths",
        "transpose_widths"}``.

    Raises:
        ValueError: If the tensors are not those of a valid U-Net, naming the
            first inconsistent key.
    """
    # Error messages name keys as the caller spelled them (with any prefix).
    pre = "unet." if any(k.startswith("unet.") for k in state_dict) else ""
    sd = {k[len(pre):]: v for k, v in state_dict.items() if k.startswith(pre)}
    pools = sorted(int(m.group(1)) for k in sd if (m := _DOWN_KEY.match(k)))
    ups = {int(k.split(".")[1]) for k in sd if k.startswith("up_transpose_conv.")}
    P = max(pools + [u + 1 for u in ups], default=0)
    if P == 0:
        raise ValueError(
            "state dict matches no valid DynamicUnet: no "
            f"'{pre}down_sample_layers.<i>.layers.0.weight' keys"
        )
    missing = [f"{pre}down_sample_layers.{i}.layers.0.weight" for i in range(P) if i not in pools]
    if missing:
        raise ValueError(
            f"state dict matches no valid DynamicUnet: missing key(s) {', '.join(missing)} "
            f"(the other keys describe a U-Net with {P} pools)"
        )

    def shape(key, ndim, kernel=None):
        if key not in sd:
            raise ValueError(f"state dict matches no valid DynamicUnet: missing key {pre + key!r}")
        s = tuple(sd[key].shape)
        if len(s) != ndim or (kernel is not None and s[2:] != (kernel, kernel)):
            want = f"a {kernel}x{kernel} kernel" if kernel else f"{ndim} dimensions"
            raise ValueError(
                f"state dict matches no valid DynamicUnet: {pre + key!r} has shape {s}, "
                f"expected {want}"
            )
        return s

    def block_prefix(lid):
        part, idx = parse_layer_id(lid, P)
        if part == "down":
            return f"down_sample_layers.{idx}"
        if part == "bottleneck":
            return "conv"
        return f"up_conv.{idx}.0" if idx == P - 1 else f"up_conv.{idx}"

    widths, in_of = {}, {}
    for lid in layer_ids(P):
        p = block_prefix(lid)
        s1 = shape(f"{p}.layers.0.weight", 4, kernel=3)
        s2 = shape(f"{p}.layers.4.weight", 4, kernel=3)
        if s2[1] != s1[0]:
            raise ValueError(
                f"state dict matches no valid DynamicUnet: {pre}{p}.layers.4.weight has "
                f"{s2[1]} input channels but {pre}{p}.layers.0.weight has {s1[0]} outputs"
            )
        widths[lid] = {"conv1_out": s1[0], "conv2_out": s2[0]}
        in_of[lid] = (f"{p}.layers.0.weight", s1[1])
    tws = []
    for j in range(P):
        key = f"up_transpose_conv.{j}.layers.0.weight"
        s = shape(key, 4, kernel=2)
        src = widths["bottleneck" if j == 0 else f"up_{j - 1}"]["conv2_out"]
        if s[0] != src:
            raise ValueError(
                f"state dict matches no valid DynamicUnet: {pre + key!r} has {s[0]} input "
                f"channels, expected {src}"
            )
        tws.append(s[1])
    in_chans = in_of["down_0"][1]
    expect = {}
    for i in range(1, P):
        expect[f"down_{i}"] = widths[f"down_{i - 1}"]["conv2_out"]
    expect["bottleneck"] = widths[f"down_{P - 1}"]["conv2_out"]
    for j in range(P):
        expect[f"up_{j}"] = tws[j] + widths[f"down_{P - 1 - j}"]["conv2_out"]
    for lid, want in expect.items():
        key, got = in_of[lid]
        if got != want:
            raise ValueError(
                f"state dict matches no valid DynamicUnet: {pre + key!r} has {got} input "
                f"channels, expected {want}"
            )
    fk = f"up_conv.{P - 1}.1.weight"
    fs = shape(fk, 4, kernel=1)
    bk = f"up_conv.{P - 1}.1.bias"
    if bk not in sd or tuple(sd[bk].shape) != (fs[0],):
        got = tuple(sd[bk].shape) if bk in sd else "missing"
        raise ValueError(
            f"state dict matches no valid DynamicUnet: {pre + bk!r} is {got}, expected shape ({fs[0]},)"
        )
    if fs[1] != widths[f"up_{P - 1}"]["conv2_out"]:
        raise ValueError(
            f"state dict matches no valid DynamicUnet: {pre + fk!r} has {fs[1]} input channels, "
            f"expected {widths[f'up_{P - 1}']['conv2_out']}"
        )
    for j in range(P):
        widths[f"up_{j}"]["transpose_out"] = tws[j]
    return {"in_chans": in_chans, "out_chans": fs[0], "num_pool_layers": P,
            "widths": widths, "transpose_widths": tws}
