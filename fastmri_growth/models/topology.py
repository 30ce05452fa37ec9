"""The U-Net's layer ids (the consumer map is declared by ``DynamicUnet.consumers``)."""

from typing import List

from ..growth.net import Consumer  # noqa: F401  (old import path)
from ..growth.sites import conv_name  # noqa: F401  (old import path)

CONV_NAMES = ("conv1", "conv2")


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
