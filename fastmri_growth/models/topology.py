"""The U-Net's growth sites and which layers consume a new channel.

The fastMRI U-Net topology is fixed, so the producer/consumer map is declared
here instead of being traced from a graph (see ``shared`` design notes,
"Who consumes a new output channel of each conv"). Every consumer of a block
conv takes the new channel at the END of its input channels:

* conv1 of a block feeds conv2 of the same block;
* conv2 of ``down_i`` feeds conv1 of the next encoder block (after 2x2
  average pooling) and the decoder conv1 that takes skip ``i``; the skip is
  concatenated after the up-sampled tensor, so it is appended there too;
* conv2 of the bottleneck feeds the first transposed conv (input dim 0);
* conv2 of ``up_j`` feeds transposed conv ``j+1``, or the final 1x1 conv.
"""

from dataclasses import dataclass
from typing import List

from torch import nn

CONV_NAMES = ("conv1", "conv2")


@dataclass(frozen=True)
class Consumer:
    """A layer that reads a grown conv's output channels.

    Attributes:
        module: The consuming ``nn.Conv2d`` or ``nn.ConvTranspose2d``.
        kind: ``"conv3x3"``, ``"transpose2x2"`` or ``"conv1x1"``: how the
            weight gradient of a new input slice is computed.
        pooled: Whether the consumer sees the channel after 2x2 average
            pooling (the next encoder block).
        name: A readable name, e.g. ``"down_1.conv1"``.
        channel_offset: Input index of the grown conv's channel 0 in the
            consumer (non-zero only for a decoder conv1 reading a skip: the
            up-sampled channels come first).
    """

    module: nn.Module
    kind: str
    pooled: bool
    name: str
    channel_offset: int = 0


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


def conv_name(conv_idx: int) -> str:
    """``0 -> "conv1"``, ``1 -> "conv2"``."""
    return CONV_NAMES[conv_idx]
