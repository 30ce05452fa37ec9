"""DynamicUnet: fastMRI's U-Net that can grow conv filters during training."""

from typing import Any, Callable, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn
from torch.nn import functional as F

from ..growth.config import GrowthConfig
from ..growth.engine import grow
from ..growth.pruning import prune
from ..growth.scoring import DEFAULT_SITE_CRITERION, brute_force_scores_at, score_candidates_at
from ..growth.scoring import score_sites as score_sites_at
from ..growth.statistics import Statistics
from ..growth.methods import check_method_name, get_method, option_default
from ..growth.net import Consumer, SiteSpec, avg_pool_2x2, channelwise, reflect_pad_to
from ..growth.sites import Site, check_conv_idx
from .blocks import ConvBlock, TransposeConvBlock
from .unet_spec import (Widths, architecture_from_state_dict, check_widths, default_widths,
                        layer_ids, parse_layer_id)


class DynamicUnet(nn.Module):
    """A drop-in superset of ``fastmri.models.Unet`` whose convs can grow.

    Module names and state-dict keys are fastMRI's (``down_sample_layers``,
    ``conv``, ``up_transpose_conv``, ``up_conv``, ``ConvBlock.layers``), so a
    fastMRI state dict loads strictly and gives identical outputs. Growth adds
    output filters to block convs and gives every consumer of the new channel
    a matching input slice; the network implements the engine's
    :class:`~fastmri_growth.growth.net.GrowableNet` protocol, which is all
    the engine needs.

    The widths have one source of truth: the parameter shapes themselves.
    :meth:`get_network_size` reads them, every surgery changes them, and
    :meth:`from_state_dict` rebuilds a grown model from them.

    Layer ids: ``down_0`` .. ``down_{P-1}`` (``down_0`` at full resolution),
    ``bottleneck``, ``up_0`` .. ``up_{P-1}`` (``up_0`` next to the bottleneck).
    ``conv_idx`` 0 or 1 selects a block's first or second conv.

    Who consumes a new output channel (fastMRI's topology, declared here
    rather than traced):

    * conv1 of a block feeds conv2 of the same block;
    * conv2 of ``down_i`` feeds conv1 of the next encoder block (after 2x2
      average pooling) and the decoder conv1 that takes skip ``i``; the skip
      is concatenated after the up-sampled tensor, so it is appended there;
    * conv2 of the bottleneck feeds the first transposed conv (input dim 0);
    * conv2 of ``up_j`` feeds transposed conv ``j+1``, or the final 1x1 conv.

    ``torch.jit.script`` compiles the network (grown or not) as it compiles
    fastMRI's ``Unet``: only :meth:`forward` is scripted, and the width
    properties are left out of the script.
    """

    # TorchScript compiles every property; these read growth state that a
    # scripted forward never needs.
    __jit_unused_properties__ = ["chans", "final_conv"]

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        chans: int = 32,
        num_pool_layers: int = 4,
        drop_prob: float = 0.0,
        growth_method: str = GrowthConfig.growth_method,
        n_candidates: int = option_default("n_candidates"),
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
                :data:`fastmri_growth.growth.methods.METHODS`.
            n_candidates: Number of candidates scored by ``sample_select``.
            widths: Optional per-layer widths in :meth:`get_network_size`
                format, to build an already grown network. Defaults to
                fastMRI's widths for ``chans``.
            transpose_widths: Optional output widths of the P transposed
                convs. Defaults to fastMRI's.
        """
        super().__init__()
        for name, value in (("in_chans", in_chans), ("out_chans", out_chans),
                            ("chans", chans), ("num_pool_layers", num_pool_layers)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0.0 <= float(drop_prob) < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob!r}")
        check_method_name(growth_method)
        if not isinstance(n_candidates, int) or n_candidates < 1:
            raise ValueError(f"n_candidates must be an int >= 1, got {n_candidates!r}")

        self.in_chans = in_chans
        self.out_chans = out_chans
        self.num_pool_layers = num_pool_layers
        self.drop_prob = drop_prob
        self.growth_method = growth_method
        self.n_candidates = n_candidates

        P = num_pool_layers
        widths = check_widths(default_widths(chans, P) if widths is None else widths, P)
        recorded = [widths[f"up_{j}"].get("transpose_out") for j in range(P)]
        if transpose_widths is None:
            transpose_widths = [r if r is not None else chans * 2 ** (P - 1 - j)
                                for j, r in enumerate(recorded)]
        transpose_widths = list(transpose_widths)
        if any(r is not None and int(r) != int(t) for r, t in zip(recorded, transpose_widths)):
            raise ValueError(
                f"transpose_widths {transpose_widths} disagree with the widths' transpose_out "
                f"{recorded}"
            )
        if len(transpose_widths) != P or any(int(t) < 1 for t in transpose_widths):
            raise ValueError(
                f"transpose_widths must hold {P} positive ints, got {transpose_widths!r}"
            )
        self._build(widths, [int(t) for t in transpose_widths])

    def _build(self, widths: Widths, transpose_widths: List[int]) -> None:
        """(Re)create every layer at the given widths (fastMRI's module names)."""
        P, drop = self.num_pool_layers, self.drop_prob

        def block(in_ch, w):
            return ConvBlock(in_ch, w["conv2_out"], drop, mid_chans=w["conv1_out"])

        self.down_sample_layers = nn.ModuleList()
        ch = self.in_chans
        for i in range(P):
            self.down_sample_layers.append(block(ch, widths[f"down_{i}"]))
            ch = widths[f"down_{i}"]["conv2_out"]
        self.conv = block(ch, widths["bottleneck"])
        ch = widths["bottleneck"]["conv2_out"]
        self.up_conv = nn.ModuleList()
        self.up_transpose_conv = nn.ModuleList()
        for j in range(P):
            t = transpose_widths[j]
            skip = widths[f"down_{P - 1 - j}"]["conv2_out"]
            self.up_transpose_conv.append(TransposeConvBlock(ch, t))
            up = block(t + skip, widths[f"up_{j}"])
            ch = widths[f"up_{j}"]["conv2_out"]
            if j == P - 1:
                up = nn.Sequential(up, nn.Conv2d(ch, self.out_chans, kernel_size=1, stride=1))
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
        return cls.from_state_dict(unet.state_dict(), drop_prob=getattr(unet, "drop_prob", 0.0),
                                   **kwargs)

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

    def resize_from_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Rebuild the layers in place at the widths of a state dict's shapes.

        For checkpoints: Lightning loads a grown module's weights into the
        module it built, so the network must first take the saved widths.
        The weights are not loaded; dtype and device are kept.

        Args:
            state_dict: A DynamicUnet / fastMRI Unet state dict (``unet.``
                prefix allowed).

        Raises:
            ValueError: the tensors match no valid DynamicUnet, or another
                architecture (in/out channels, pools) than this one.
        """
        spec = architecture_from_state_dict(state_dict)
        if (spec["in_chans"], spec["out_chans"], spec["num_pool_layers"]) != (
                self.in_chans, self.out_chans, self.num_pool_layers):
            raise ValueError(
                f"the state dict holds a U-Net with in_chans={spec['in_chans']}, "
                f"out_chans={spec['out_chans']}, num_pool_layers={spec['num_pool_layers']}, "
                f"but this one has in_chans={self.in_chans}, out_chans={self.out_chans}, "
                f"num_pool_layers={self.num_pool_layers}"
            )
        if spec["widths"] == self.get_network_size() and \
                spec["transpose_widths"] == self.transpose_widths():
            return
        ref = next(self.parameters())
        self._build(spec["widths"], spec["transpose_widths"])
        self.to(device=ref.device, dtype=ref.dtype)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``, with a hint when the widths differ.

        A grown (or pruned) state dict does not fit a network of other widths:
        :meth:`from_state_dict` builds one that does, and
        :meth:`resize_from_state_dict` resizes this one first.
        """
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError as err:
            if "size mismatch" not in str(err):
                raise
            raise RuntimeError(
                f"{err}\n(The state dict holds a U-Net of other widths, e.g. a grown or pruned "
                "one: build the network with DynamicUnet.from_state_dict(state_dict), or call "
                "model.resize_from_state_dict(state_dict) before load_state_dict)") from None

    # ----------------------------------------------------------------- access
    @property
    def chans(self) -> int:
        """Output channels of the first conv (fastMRI's ``Unet.chans``), read from the weights."""
        return self.down_sample_layers[0].layers[0].weight.shape[0]

    @classmethod
    def site_ids(cls, num_pool_layers: int) -> List[Site]:
        """Every growth site of a U-Net with ``num_pool_layers`` pools, without building it.

        In network order: each block's convs 0 and 1, and before each decoder
        block's convs its transposed conv ``"t"``.
        """
        return [Site(lid, c) for lid in layer_ids(num_pool_layers) for c in _convs_of(lid)]

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

    def conv_layer(self, layer_id: str, conv_idx: Union[int, str]) -> nn.Module:
        """The conv a growth site refers to.

        Args:
            layer_id: One of :meth:`layer_ids`.
            conv_idx: 0 (first conv), 1 (second conv), or ``"t"`` for an
                ``up_j`` layer (the transposed conv that up-samples into it).

        Returns:
            The ``nn.Conv2d`` (weight `(C_out, C_in, 3, 3)`) or the
            ``nn.ConvTranspose2d`` (weight `(C_in, C_out, 2, 2)`).
        """
        site = self.site(layer_id, conv_idx)
        if site.conv == "t":
            return self.up_transpose_conv[parse_layer_id(layer_id, self.num_pool_layers)[1]].layers[0]
        return self.block(layer_id).layers[4 * conv_idx]

    @property
    def final_conv(self) -> nn.Conv2d:
        """The 1x1 output conv."""
        return self.up_conv[-1][1]

    def consumers(self, layer_id: str, conv_idx: int) -> List[Consumer]:
        """The convs that read a new output channel of a growth site.

        Args:
            layer_id: A layer id from :meth:`layer_ids`.
            conv_idx: 0 or 1.

        Returns:
            The consumers (see the class docstring for the topology).
        """
        part, idx = parse_layer_id(layer_id, self.num_pool_layers)
        check_conv_idx(conv_idx, _convs_of(layer_id))
        P = self.num_pool_layers
        if conv_idx == "t":
            # The up-sampled channels come first in the decoder's concat: the
            # new channel goes after them, before the skip's.
            return [Consumer(self.block(layer_id).layers[0], f"{layer_id}.conv1",
                             transform=reflect_pad_to)]
        if conv_idx == 0:
            return [Consumer(self.block(layer_id).layers[4], f"{layer_id}.conv2")]
        if part == "down":
            nxt = f"down_{idx + 1}" if idx + 1 < P else "bottleneck"
            dec = f"up_{P - 1 - idx}"
            return [
                Consumer(self.block(nxt).layers[0], f"{nxt}.conv1", transform=avg_pool_2x2),
                Consumer(self.block(dec).layers[0], f"{dec}.conv1 (skip)",
                         channel_offset=self.transpose_widths()[P - 1 - idx]),
            ]
        if part == "bottleneck":
            return [Consumer(self.up_transpose_conv[0].layers[0], "up_transpose_0")]
        if idx + 1 < P:
            return [Consumer(self.up_transpose_conv[idx + 1].layers[0], f"up_transpose_{idx + 1}")]
        return [Consumer(self.final_conv, "final_conv")]

    def growth_sites(self) -> List[Site]:
        """Every growth site, in network order (GrowableNet protocol)."""
        return self.site_ids(self.num_pool_layers)

    def site(self, layer_id: str, conv_idx: Any) -> Site:
        """The :class:`Site` of a layer id and conv index, validated.

        Raises:
            ValueError: naming the bad value and the valid ones.
        """
        parse_layer_id(layer_id, self.num_pool_layers)
        check_conv_idx(conv_idx, _convs_of(layer_id))
        return Site(layer_id, conv_idx)

    def site_spec(self, site: Union[Site, tuple]) -> SiteSpec:
        """The live description of a site (GrowableNet protocol).

        Raises:
            ValueError: an unknown site, naming the valid layer ids and convs.
        """
        site = Site(*site) if isinstance(site, tuple) else site
        if site.net:
            raise ValueError(f"a DynamicUnet has no sub-network {site.net!r}; drop the NET/ prefix")
        site = self.site(site.layer, site.conv)
        if site.conv == "t":
            t = self.up_transpose_conv[parse_layer_id(site.layer, self.num_pool_layers)[1]]
            conv, post = t.layers[0], channelwise(t.layers[1:3])
        else:
            blk = self.block(site.layer)
            first = 4 * site.conv
            conv, post = blk.layers[first], channelwise(blk.layers[first + 1:first + 4])
        return SiteSpec(site=site, conv=conv, post=post,
                        consumers=self.consumers(site.layer, site.conv))

    def get_network_size(self) -> Widths:
        """Output widths of every block conv, read from the parameters.

        Returns:
            ``{"down_0": {"conv1_out": c, "conv2_out": c}, ..., "bottleneck":
            {...}, "up_0": {"conv1_out": c, "conv2_out": c, "transpose_out": t},
            ...}`` in encoder-to-decoder order; ``transpose_out`` is the width
            of the transposed conv that up-samples into ``up_j``.
        """
        size = {}
        tws = self.transpose_widths()
        for lid in self.layer_ids():
            blk = self.block(lid)
            size[lid] = {"conv1_out": blk.layers[0].weight.shape[0],
                         "conv2_out": blk.layers[4].weight.shape[0]}
            if lid.startswith("up_"):
                size[lid]["transpose_out"] = tws[parse_layer_id(lid, self.num_pool_layers)[1]]
        return size

    def transpose_widths(self) -> List[int]:
        """Output widths of the P transposed convs."""
        return [t.layers[0].weight.shape[1] for t in self.up_transpose_conv]

    def num_parameters(self) -> int:
        """Total number of parameters."""
        return sum(p.numel() for p in self.parameters())

    def num_parameters_at(self, site_widths: Mapping[Site, int]) -> int:
        """Parameters the network would have with some sites at other widths.

        Args:
            site_widths: ``{site: width}``; other sites keep their widths.

        Returns:
            The parameter count (counted on the meta device: nothing is allocated).
        """
        widths = self.get_network_size()
        for site, width in site_widths.items():
            self.site(site.layer, site.conv)
            widths[site.layer][site.width_key] = int(width)
        with torch.device("meta"):
            probe = DynamicUnet(self.in_chans, self.out_chans, chans=self.chans,
                                num_pool_layers=self.num_pool_layers, widths=widths)
        return probe.num_parameters()

    def sync_attributes(self) -> None:
        """Refresh the informational width attributes after a surgery.

        The parameters are the source of truth; this keeps the convs' channel
        counts and the InstanceNorms' ``num_features`` consistent with them
        for ``repr`` and for code that reads them.
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
            skip_hw = (downsample_layer.shape[-2], downsample_layer.shape[-1])
            output = reflect_pad_to(output, skip_hw)
            output = torch.cat([output, downsample_layer], dim=1)
            output = conv(output)
        return output

    # ----------------------------------------------------------------- growth
    def check_batches(self, batch_data, target_data) -> List[tuple]:
        """Validate scoring batches and pair them up.

        Args:
            batch_data: One batch `(N, in_chans, H, W)` or a list of them.
            target_data: Matching target(s) `(N, out_chans, H, W)` (or
                `(N, H, W)` when ``out_chans == 1``).

        Returns:
            ``[(image, target), ...]``.

        Raises:
            ValueError: naming the bad batch and what was expected.
        """
        xs = list(batch_data) if isinstance(batch_data, (list, tuple)) else [batch_data]
        ys = list(target_data) if isinstance(target_data, (list, tuple)) else [target_data]
        if len(xs) != len(ys):
            raise ValueError(
                f"got {len(xs)} batches but {len(ys)} targets; pass one target per batch")
        if not xs:
            raise ValueError("batch_data is an empty list; pass at least one batch")
        ref = next(self.parameters())
        pairs = []
        for i, (x, y) in enumerate(zip(xs, ys)):
            at = f" (batch {i})" if len(xs) > 1 else ""
            for name, t in (("batch_data", x), ("target_data", y)):
                if not torch.is_tensor(t):
                    raise ValueError(f"{name}{at} must be a torch.Tensor, got {type(t).__name__}")
                if t.device != ref.device:
                    raise ValueError(f"{name}{at} is on device {t.device} but the model is on {ref.device}")
                if t.dtype != ref.dtype:
                    raise ValueError(
                        f"{name}{at} has dtype {t.dtype} but the model's weights are {ref.dtype}")
            if x.dim() != 4 or x.shape[1] != self.in_chans:
                raise ValueError(
                    f"batch_data{at} must have shape (N, {self.in_chans}, H, W), got {tuple(x.shape)}")
            if x.shape[0] == 0:
                raise ValueError(f"batch_data{at} holds no samples (shape {tuple(x.shape)})")
            n, _, h, w = x.shape
            valid = [(n, self.out_chans, h, w)] + ([(n, h, w)] if self.out_chans == 1 else [])
            if tuple(y.shape) not in valid:
                raise ValueError(
                    f"target_data{at} shape {tuple(y.shape)} does not match the batch; valid "
                    f"shapes: {' or '.join(map(str, valid))}"
                )
            pairs.append((x, y))
        return pairs

    def loss_fn(self, criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        """``loss_fn((image, target)) -> criterion(self(image), target)`` for the engine."""
        def loss(batch):
            image, target = batch
            out = self(image)
            return criterion(out, prepare_target(out, target))
        return loss

    def grow_network(
        self,
        layer_idx: str,
        conv_idx: Optional[Union[int, str]],
        batch_data,
        target_data,
        criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.l1_loss,
        n_new: int = 1,
        method: Optional[str] = None,
        split_noise: Optional[float] = None,
        candidates: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
        reduce_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        fan_out_init: str = "zero",
        site_criterion: str = DEFAULT_SITE_CRITERION,
        **method_options,
    ):
        """Add ``n_new`` filters to one conv (zero fan-out: the function is kept).

        Args:
            layer_idx: Layer id, e.g. ``"down_0"``, ``"bottleneck"``, ``"up_1"``;
                or ``"auto"``: the best site of all, ranked by ``site_criterion``
                from one statistics pass (``conv_idx`` must then be None).
            conv_idx: 0 for the block's first conv, 1 for its second, ``"t"``
                for an up layer's transposed conv.
            batch_data: Scoring batch `(N, in_chans, H, W)`, or a list of
                batches (the score is then the gradient of their mean loss).
                None only for ``split`` on existing ``.grad``.
            target_data: Target(s) `(N, out_chans, H, W)` (or `(N, H, W)`
                when ``out_chans == 1``), one per batch.
            criterion: Loss ``criterion(output, target)``; fastMRI's U-Net
                uses L1.
            n_new: Number of filters to add.
            method: A registered growth method; defaults to the constructor's
                ``growth_method``.
            split_noise: Symmetry-breaking noise for ``split``.
            candidates: Optional explicit candidate fan-ins `(K, C_in, 3, 3)`
                for ``sample_select``.
            generator: Optional random generator (identical seeds on every
                DDP rank give identical candidates and noise).
            reduce_fn: Optional function applied to the accumulated
                statistics before they are scored (e.g. a DDP mean).
            fan_out_init: ``"zero"`` or ``"descent"`` (the new fan-outs along
                minus their gradient, scaled by a line search on the batches).
            site_criterion: With ``layer_idx="auto"``: ``score``,
                ``score_per_param`` or ``score_per_flop``.
            **method_options: Options of other registered methods.

        Returns:
            A :class:`fastmri_growth.growth.GrowthReport`.

        Raises:
            ValueError: On bad arguments, before anything changes.
            RuntimeError: On a non-finite loss or score; the model is unchanged.
        """
        auto = layer_idx == "auto"
        if auto and conv_idx is not None:
            raise ValueError(f"layer_idx='auto' chooses the conv too: pass conv_idx=None, "
                             f"got {conv_idx!r}")
        site = None if auto else self.site(layer_idx, conv_idx)
        name = check_method_name(self.growth_method if method is None else method)
        options = dict({"n_candidates": self.n_candidates, "split_noise": split_noise},
                       **method_options)
        m = get_method(name, **options)
        if not isinstance(n_new, int) or isinstance(n_new, bool) or n_new < 1:
            raise ValueError(f"n_new must be an int >= 1, got {n_new!r}")
        if auto and candidates is not None:
            raise ValueError("layer_idx='auto' draws its own candidates at every site")
        for spec in ([self.site_spec(s) for s in self.growth_sites()] if auto
                     else [self.site_spec(site)]):
            m.check(spec, n_new, candidates)
        if batch_data is None and target_data is None and not m.needs_batches:
            batches = None
        elif batch_data is None or target_data is None:
            raise ValueError(f"{name} needs batch_data and target_data (got None)")
        else:
            batches = self.check_batches(batch_data, target_data)
        (report,) = grow(
            self, None if auto else [site], m, batches, self.loss_fn(criterion), n_new,
            candidates=None if candidates is None else {site: candidates},
            generator=generator, reduce_fn=reduce_fn, fan_out_init=fan_out_init,
            auto_sites=1 if auto else None, site_criterion=site_criterion,
        )
        return report


    def prune_network(
        self,
        layer_idx: str,
        conv_idx: Union[int, str],
        n_remove: int,
        criterion: str = "magnitude",
        batch_data=None,
        target_data=None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.l1_loss,
        min_width: int = 1,
        reduce_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ):
        """Remove the ``n_remove`` output filters of one conv that the criterion ranks first.

        Their input slices go from every consumer (the growth consumer map);
        a filter with a zero fan-out goes without changing the output.

        Args:
            layer_idx: Layer id.
            conv_idx: 0, 1, or ``"t"`` for an up layer's transposed conv.
            n_remove: Filters to remove.
            criterion: ``"magnitude"`` (fan-out norm) or ``"taylor"``
                (first-order loss change of the removal; needs batches).
            batch_data: Batch(es) `(N, in_chans, H, W)`, for ``taylor`` and to
                report the loss before and after.
            target_data: The matching target(s).
            loss_fn: ``loss_fn(output, target)``, the training loss.
            min_width: The conv keeps at least this many filters.
            reduce_fn: Mean over DDP ranks of the statistics.

        Returns:
            A :class:`fastmri_growth.growth.pruning.PruneReport`.

        Raises:
            ValueError: bad arguments, before anything changes.
        """
        site = self.site(layer_idx, conv_idx)
        if batch_data is None and target_data is None:
            batches = None
        elif batch_data is None or target_data is None:
            raise ValueError("pass both batch_data and target_data, or neither")
        else:
            batches = self.check_batches(batch_data, target_data)
        (report,) = prune(self, {site: n_remove}, criterion, batches, self.loss_fn(loss_fn),
                          reduce_fn=reduce_fn, min_width=min_width)
        return report


DynamicUnetModel = DynamicUnet


def _convs_of(layer_id: str) -> tuple:
    """The growable convs of a layer: decoder layers also have their transposed conv."""
    return ("t", 0, 1) if layer_id.startswith("up_") else (0, 1)


def prepare_target(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Shape the target like the output (fastMRI targets have no channel dim).

    Args:
        output: Model output `(N, C, H, W)`.
        target: `(N, C, H, W)`, or `(N, H, W)` when ``C == 1``.

    Returns:
        The target as `(N, C, H, W)`.
    """
    if target.dim() == output.dim() - 1 and output.shape[1] == 1:
        return target.unsqueeze(1)
    return target


# ---------------------------------------------------------------------------
# one-pass scoring of a DynamicUnet by layer id (the engine scores by Site)
# ---------------------------------------------------------------------------


def score_candidates(
    model: nn.Module,
    layer_id: str,
    conv_idx: int,
    candidates: torch.Tensor,
    batch,
    target,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.l1_loss,
    reduce_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    stats: Optional[Statistics] = None,
) -> torch.Tensor:
    """Score explicit candidate filters of a DynamicUnet in one pass.

    Args:
        model: A :class:`~fastmri_growth.models.DynamicUnet`.
        layer_id: Grown layer id.
        conv_idx: 0 or 1.
        candidates: Candidate fan-ins `(K, C_in, 3, 3)`.
        batch: `(N, in_chans, H, W)`, or a list of batches.
        target: `(N, out_chans, H, W)` or `(N, H, W)`, one per batch.
        criterion: The training loss.
        reduce_fn: Optional reduction of the statistics (DDP mean); the
            non-finite-loss check is agreed over ranks through it.
        stats: Reuse statistics already collected for these candidates.

    Returns:
        Scores `(K,)`: the norm of the gradient of the (mean) loss w.r.t.
        each candidate's parameters if it alone were added with a zero fan-out.
    """
    site = model.site(layer_id, conv_idx)
    batches = None if stats is not None else model.check_batches(batch, target)
    return score_candidates_at(model, site, candidates, batches, model.loss_fn(criterion),
                               reduce_fn=reduce_fn, stats=stats)


def brute_force_scores(
    model: nn.Module,
    layer_id: str,
    conv_idx: int,
    candidates: torch.Tensor,
    batch,
    target,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.l1_loss,
) -> torch.Tensor:
    """Reference scores: add each candidate alone, forward, backward, norm.

    K separate forward+backward passes on copies of the model; used to test
    :func:`score_candidates` and to measure its speed-up.

    Args:
        model: A :class:`~fastmri_growth.models.DynamicUnet` (not modified).
        layer_id: Grown layer id.
        conv_idx: 0 or 1.
        candidates: Candidate fan-ins `(K, C_in, 3, 3)`.
        batch: `(N, in_chans, H, W)`, or a list of batches (mean loss).
        target: `(N, out_chans, H, W)` or `(N, H, W)`, one per batch.
        criterion: The training loss.

    Returns:
        Scores `(K,)`: the norm of the gradient of all of the candidate's
        parameters (fan-in and every consumer's fan-out slice), dropout off.
    """
    site = model.site(layer_id, conv_idx)
    batches = model.check_batches(batch, target)
    return brute_force_scores_at(model, site, candidates, batches,
                                 lambda m: m.loss_fn(criterion))


def score_sites(
    model: nn.Module,
    batches,
    targets,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.l1_loss,
    n_candidates: int = 10,
    sites=None,
    site_criterion: str = "score_per_flop",
    generator: Optional[torch.Generator] = None,
    reduce_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
):
    """Score random candidates at every site of a DynamicUnet in one pass.

    Args:
        model: A :class:`~fastmri_growth.models.DynamicUnet`.
        batches: One batch `(N, in_chans, H, W)` or a list of them.
        targets: The matching target(s).
        criterion: The training loss.
        n_candidates: Candidates per site.
        sites: Sites to score (default: all, transposed convs included).
        site_criterion: How the results are ranked (``score``,
            ``score_per_param``, ``score_per_flop``).
        generator: CPU generator for the candidates.
        reduce_fn: Mean over DDP ranks.

    Returns:
        Per site a :class:`~fastmri_growth.growth.scoring.SiteScore` (best
        score, candidates and their scores, parameters and forward FLOPs per
        added filter, value under the criterion), best first.
    """
    return score_sites_at(model, model.check_batches(batches, targets), model.loss_fn(criterion),
                          sites=sites, n_candidates=n_candidates, criterion=site_criterion,
                          generator=generator, reduce_fn=reduce_fn)
