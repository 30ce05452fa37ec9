"""DynamicUnet: fastMRI's U-Net that can grow conv filters during training."""

import re
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import ConvBlock, TransposeConvBlock
from .topology import Consumer, layer_ids, parse_layer_id

Widths = Dict[str, Dict[str, int]]


class DynamicUnet(nn.Module):
    """A drop-in superset of ``fastmri.models.Unet`` whose convs can grow.

    Module names and state-dict keys are fastMRI's (``down_sample_layers``,
    ``conv``, ``up_transpose_conv``, ``up_conv``, ``ConvBlock.layers``), so a
    fastMRI state dict loads strictly and gives identical outputs. Growth adds
    output filters to one block conv at a time and gives every consumer of the
    new channel a matching input slice (see :mod:`.topology`).

    The widths have one source of truth: the parameter shapes themselves.
    :meth:`get_network_size` reads them, every surgery changes them, and
    :meth:`from_state_dict` rebuilds a grown model from them.

    Layer ids: ``down_0`` .. ``down_{P-1}`` (``down_0`` at full resolution),
    ``bottleneck``, ``up_0`` .. ``up_{P-1}`` (``up_0`` next to the bottleneck).
    ``conv_idx`` 0 or 1 selects a block's first or second conv.
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        chans: int = 32,
        num_pool_layers: int = 4,
        drop_prob: float = 0.0,
        growth_method: str = "sample_select",
        n_candidates: int = 10,
        widths: Optional[Mapping[str, Mapping[str, int]]] = None,
        transpose_widths: Optional[Sequence[int]] = None,
    ):
        """
        Args:
            in_chans: Number of channels in the input to the U-Net.
            out_chans: Number of channels in the output of the U-Net.
            chans: Number of output channels of the first conv (fastMRI's
                meaning); the starting width before any growth.
            num_pool_layers: Number of down-sampling and up-sampling layers.
            drop_prob: Dropout probability.
            growth_method: Default method of :meth:`grow_network`, one of
                :data:`fastmri_growth.models.GROWTH_METHODS`.
            n_candidates: Number of candidates scored by ``sample_select``.
            widths: Optional per-layer widths in :meth:`get_network_size`
                format, to build an already grown network. Defaults to
                fastMRI's widths for ``chans``.
            transpose_widths: Optional output widths of the P transposed
                convs. Defaults to fastMRI's.
        """
        super().__init__()
        from .growth import GROWTH_METHODS  # local: growth imports this module

        for name, value in (("in_chans", in_chans), ("out_chans", out_chans),
                            ("chans", chans), ("num_pool_layers", num_pool_layers)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0.0 <= float(drop_prob) < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob!r}")
        if growth_method not in GROWTH_METHODS:
            raise ValueError(
                f"Unknown growth_method {growth_method!r}; valid methods: "
                f"{', '.join(GROWTH_METHODS)}"
            )
        if not isinstance(n_candidates, int) or n_candidates < 1:
            raise ValueError(f"n_candidates must be an int >= 1, got {n_candidates!r}")

        self.in_chans = in_chans
        self.out_chans = out_chans
        self.chans = chans
        self.num_pool_layers = num_pool_layers
        self.drop_prob = drop_prob
        self.growth_method = growth_method
        self.n_candidates = n_candidates

        P = num_pool_layers
        default = default_widths(chans, P)
        widths = _check_widths(default if widths is None else widths, P)
        if transpose_widths is None:
            transpose_widths = [chans * 2 ** (P - 1 - j) for j in range(P)]
        transpose_widths = list(transpose_widths)
        if len(transpose_widths) != P or any(int(t) < 1 for t in transpose_widths):
            raise ValueError(
                f"transpose_widths must hold {P} positive ints, got {transpose_widths!r}"
            )

        def block(in_ch, w):
            return ConvBlock(in_ch, w["conv2_out"], drop_prob, mid_chans=w["conv1_out"])

        self.down_sample_layers = nn.ModuleList()
        ch = in_chans
        for i in range(P):
            self.down_sample_layers.append(block(ch, widths[f"down_{i}"]))
            ch = widths[f"down_{i}"]["conv2_out"]
        self.conv = block(ch, widths["bottleneck"])
        ch = widths["bottleneck"]["conv2_out"]
        self.up_conv = nn.ModuleList()
        self.up_transpose_conv = nn.ModuleList()
        for j in range(P):
            t = int(transpose_widths[j])
            skip = widths[f"down_{P - 1 - j}"]["conv2_out"]
            self.up_transpose_conv.append(TransposeConvBlock(ch, t))
            up = block(t + skip, widths[f"up_{j}"])
            ch = widths[f"up_{j}"]["conv2_out"]
            if j == P - 1:
                up = nn.Sequential(up, nn.Conv2d(ch, out_chans, kernel_size=1, stride=1))
            self.up_conv.append(up)

    # ------------------------------------------------------------------ build
    @classmethod
    def from_unet(cls, unet: nn.Module, **kwargs) -> "DynamicUnet":
        """Build a DynamicUnet with the weights of a ``fastmri.models.Unet``.

        Args:
            unet: A fastMRI ``Unet`` (or a DynamicUnet).
            **kwargs: Growth options (``growth_method``, ``n_candidates``).

        Returns:
            A model whose outputs equal ``unet``'s.
        """
        model = cls.from_state_dict(unet.state_dict(), drop_prob=getattr(unet, "drop_prob", 0.0), **kwargs)
        chans = getattr(unet, "chans", None)
        if isinstance(chans, int):
            model.chans = chans
        return model

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], drop_prob: float = 0.0,
                        **kwargs) -> "DynamicUnet":
        """Rebuild a (possibly grown) model from its state dict alone.

        The widths are read from the tensor shapes, then the weights are
        loaded strictly.

        Args:
            state_dict: A ``DynamicUnet`` or ``fastmri.models.Unet`` state
                dict (a ``"unet."`` prefix, as in fastMRI's UnetModule
                checkpoints, is stripped).
            drop_prob: Dropout probability (not stored in a state dict).
            **kwargs: Growth options (``growth_method``, ``n_candidates``).

        Returns:
            The rebuilt model.

        Raises:
            ValueError: If the tensors match no valid DynamicUnet.
        """
        spec = architecture_from_state_dict(state_dict)
        sd = {k[len("unet."):] if k.startswith("unet.") else k: v for k, v in state_dict.items()}
        model = cls(
            spec["in_chans"], spec["out_chans"], chans=spec["widths"]["down_0"]["conv2_out"],
            num_pool_layers=spec["num_pool_layers"], drop_prob=drop_prob,
            widths=spec["widths"], transpose_widths=spec["transpose_widths"], **kwargs,
        )
        first = next(iter(sd.values()), None)
        if torch.is_tensor(first) and first.is_floating_point():
            model = model.to(first.dtype)
        model.load_state_dict(sd, strict=True)
        return model

    # ----------------------------------------------------------------- access
    def layer_ids(self) -> List[str]:
        """The growable layer ids, in :meth:`get_network_size` order."""
        return layer_ids(self.num_pool_layers)

    def block(self, layer_id: str) -> ConvBlock:
        """The ConvBlock of a layer id.

        Args:
            layer_id: One of :meth:`layer_ids`.

        Returns:
            The block (for the last up layer, the ConvBlock inside fastMRI's
            ``Sequential(ConvBlock, Conv2d)``).
        """
        part, idx = parse_layer_id(layer_id, self.num_pool_layers)
        if part == "down":
            return self.down_sample_layers[idx]
        if part == "bottleneck":
            return self.conv
        up = self.up_conv[idx]
        return up[0] if isinstance(up, nn.Sequential) else up

    def conv_layer(self, layer_id: str, conv_idx: int) -> nn.Conv2d:
        """The conv a growth site refers to.

        Args:
            layer_id: One of :meth:`layer_ids`.
            conv_idx: 0 (first conv) or 1 (second conv).

        Returns:
            The ``nn.Conv2d``, weight `(C_out, C_in, 3, 3)`.
        """
        _check_conv_idx(conv_idx)
        return self.block(layer_id).layers[4 * conv_idx]

    @property
    def final_conv(self) -> nn.Conv2d:
        """The 1x1 output conv."""
        return self.up_conv[-1][1]

    def consumers(self, layer_id: str, conv_idx: int) -> List[Consumer]:
        """The layers that read a new output channel of a growth site.

        Args:
            layer_id: A layer id from :meth:`layer_ids`.
            conv_idx: 0 or 1.

        Returns:
            The consumers, each taking the new channel as its LAST input
            channel.
        """
        part, idx = parse_layer_id(layer_id, self.num_pool_layers)
        _check_conv_idx(conv_idx)
        P = self.num_pool_layers
        if conv_idx == 0:
            return [Consumer(self.block(layer_id).layers[4], "conv3x3", False, f"{layer_id}.conv2")]
        if part == "down":
            nxt = f"down_{idx + 1}" if idx + 1 < P else "bottleneck"
            dec = f"up_{P - 1 - idx}"
            return [
                Consumer(self.block(nxt).layers[0], "conv3x3", True, f"{nxt}.conv1"),
                Consumer(self.block(dec).layers[0], "conv3x3", False, f"{dec}.conv1 (skip)",
                         channel_offset=self.transpose_widths()[P - 1 - idx]),
            ]
        if part == "bottleneck":
            return [Consumer(self.up_transpose_conv[0].layers[0], "transpose2x2", False,
                             "up_transpose_0")]
        if idx + 1 < P:
            return [Consumer(self.up_transpose_conv[idx + 1].layers[0], "transpose2x2", False,
                             f"up_transpose_{idx + 1}")]
        return [Consumer(self.final_conv, "conv1x1", False, "final_conv")]

    def get_network_size(self) -> Widths:
        """Output widths of every block conv, read from the parameters.

        Returns:
            ``{"down_0": {"conv1_out": c, "conv2_out": c}, ..., "bottleneck":
            {...}, "up_0": {...}, ...}`` in encoder-to-decoder order.
        """
        return {
            lid: {
                "conv1_out": self.block(lid).layers[0].weight.shape[0],
                "conv2_out": self.block(lid).layers[4].weight.shape[0],
            }
            for lid in self.layer_ids()
        }

    def transpose_widths(self) -> List[int]:
        """Output widths of the P transposed convs (fixed by growth)."""
        return [t.layers[0].weight.shape[1] for t in self.up_transpose_conv]

    def num_parameters(self) -> int:
        """Total number of parameters."""
        return sum(p.numel() for p in self.parameters())

    def sync_attributes(self) -> None:
        """Refresh the informational width attributes after a surgery.

        The parameters are the source of truth; this keeps fastMRI's
        ``in_chans``/``out_chans`` attributes, the convs' channel counts and
        the InstanceNorms' ``num_features`` consistent with them for
        ``repr`` and for code that reads them.
        """
        for lid in self.layer_ids():
            blk = self.block(lid)
            c1, c2 = blk.layers[0], blk.layers[4]
            for conv in (c1, c2):
                conv.out_channels, conv.in_channels = conv.weight.shape[0], conv.weight.shape[1]
            blk.layers[1].num_features = c1.out_channels
            blk.layers[5].num_features = c2.out_channels
            blk.in_chans, blk.out_chans = c1.in_channels, c2.out_channels
        for t in self.up_transpose_conv:
            conv = t.layers[0]
            conv.in_channels, conv.out_channels = conv.weight.shape[0], conv.weight.shape[1]
            t.in_chans, t.out_chans = conv.in_channels, conv.out_channels
            t.layers[1].num_features = conv.out_channels
        fc = self.final_conv
        fc.out_channels, fc.in_channels = fc.weight.shape[0], fc.weight.shape[1]

    # ---------------------------------------------------------------- forward
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """
        Args:
            image: Input tensor of shape `(N, in_chans, H, W)`.

        Returns:
            Output tensor of shape `(N, out_chans, H, W)`.
        """
        stack = []
        output = image
        for layer in self.down_sample_layers:
            output = layer(output)
            stack.append(output)
            output = F.avg_pool2d(output, kernel_size=2, stride=2, padding=0)
        output = self.conv(output)
        for transpose_conv, conv in zip(self.up_transpose_conv, self.up_conv):
            downsample_layer = stack.pop()
            output = transpose_conv(output)
            # Odd input sizes: reflect-pad right/bottom, exactly as fastMRI.
            pad_w = int(output.shape[-1] != downsample_layer.shape[-1])
            pad_h = int(output.shape[-2] != downsample_layer.shape[-2])
            if pad_w or pad_h:
                output = F.pad(output, [0, pad_w, 0, pad_h], "reflect")
            output = torch.cat([output, downsample_layer], dim=1)
            output = conv(output)
        return output

    # ----------------------------------------------------------------- growth
    def grow_network(
        self,
        layer_idx: str,
        conv_idx: int,
        batch_data: Optional[torch.Tensor],
        target_data: Optional[torch.Tensor],
        criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.l1_loss,
        n_new: int = 1,
        method: Optional[str] = None,
        split_noise: Optional[float] = None,
        candidates: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
        reduce_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ):
        """Add ``n_new`` filters to one conv, keeping the function (see methods).

        Args:
            layer_idx: Layer id, e.g. ``"down_0"``, ``"bottleneck"``, ``"up_1"``.
            conv_idx: 0 for the block's first conv, 1 for its second.
            batch_data: Input batch `(N, in_chans, H, W)` used to score.
            target_data: Target `(N, out_chans, H, W)` (or `(N, H, W)` when
                ``out_chans == 1``).
            criterion: Loss ``criterion(output, target)``; fastMRI's U-Net
                uses L1.
            n_new: Number of filters to add.
            method: ``"sample_select"`` or ``"split"``; defaults to the
                constructor's ``growth_method``.
            split_noise: Symmetry-breaking noise for ``split`` (see
                :func:`fastmri_growth.models.growth.split`).
            candidates: Optional explicit candidate fan-ins
                `(K, C_in, 3, 3)` for ``sample_select``.
            generator: Optional random generator (identical seeds on every
                DDP rank give identical candidates and noise).
            reduce_fn: Optional function applied to every gradient statistic
                before it is scored (e.g. a DDP all-reduce mean).

        Returns:
            A :class:`fastmri_growth.models.growth.GrowthReport`.

        Raises:
            ValueError: On bad arguments, before anything changes.
            RuntimeError: On a non-finite loss or score; the model is unchanged.
        """
        from .growth import grow

        return grow(
            self, layer_idx, conv_idx, batch_data, target_data, criterion=criterion,
            n_new=n_new, method=method, split_noise=split_noise, candidates=candidates,
            generator=generator, reduce_fn=reduce_fn,
        )


DynamicUnetModel = DynamicUnet


def default_widths(chans: int, num_pool_layers: int) -> Widths:
    """fastMRI's widths for a given ``chans`` and number of pools.

    Args:
        chans: Output channels of the first conv.
        num_pool_layers: Number of pools P.

    Returns:
        Widths in :meth:`DynamicUnet.get_network_size` format.
    """
    P = num_pool_layers
    w = {}
    for i in range(P):
        w[f"down_{i}"] = {"conv1_out": chans * 2 ** i, "conv2_out": chans * 2 ** i}
    w["bottleneck"] = {"conv1_out": chans * 2 ** P, "conv2_out": chans * 2 ** P}
    for j in range(P):
        c = chans * 2 ** (P - 1 - j)
        w[f"up_{j}"] = {"conv1_out": c, "conv2_out": c}
    return w


def _check_conv_idx(conv_idx) -> None:
    if type(conv_idx) is not int or conv_idx not in (0, 1):
        raise ValueError(f"conv_idx must be 0 (first conv) or 1 (second conv), got {conv_idx!r}")


def _check_widths(widths: Mapping[str, Mapping[str, int]], P: int) -> Widths:
    expected = layer_ids(P)
    if sorted(widths) != sorted(expected):
        raise ValueError(
            f"widths must have exactly the layer ids {expected}, got {sorted(widths)}"
        )
    out = {}
    for lid in expected:
        w = widths[lid]
        try:
            c1, c2 = int(w["conv1_out"]), int(w["conv2_out"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"widths[{lid!r}] must have int 'conv1_out' and 'conv2_out', got {w!r}")
        if c1 < 1 or c2 < 1:
            raise ValueError(f"widths[{lid!r}] must be positive, got {w!r}")
        out[lid] = {"conv1_out": c1, "conv2_out": c2}
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
    return {"in_chans": in_chans, "out_chans": fs[0], "num_pool_layers": P,
            "widths": widths, "transpose_widths": tws}
