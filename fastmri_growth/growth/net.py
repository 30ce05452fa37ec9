"""What the growth engine needs to know about a network: the GrowableNet protocol.

The engine is backbone-agnostic. A backbone (``DynamicUnet``, a VarNet of
them, your own network) tells it, for every growth site:

- the producing conv (``nn.Conv2d``, output channels on weight dim 0, or
  ``nn.ConvTranspose2d``, output channels on weight dim 1);
- the channel-wise function the network applies to that conv's output
  before anything else reads it (norm + activation; dropout is off while
  scoring), used to compute a candidate filter's feature map exactly as the
  network would;
- the consumers of those channels: every conv that reads them, the input
  index of the producer's channel 0 there (``channel_offset``: non-zero when
  the channels are concatenated after others), and what happens to the
  features on the way (pooling, padding).

Everything else (statistics, scores, surgery, optimizer state) is derived
from that declaration. Growth is exact (the network's output is unchanged by
a zero-fan-out filter) only if the declared function is channel-wise:
InstanceNorm, LeakyReLU, ReLU, identity (fastMRI's blocks); GroupNorm or
LayerNorm mix channels and cannot be declared.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, runtime_checkable

import torch
from torch import nn
from torch.nn import functional as F

from .sites import Site

#: A feature transform between producer and consumer: ``fn(features, (H, W))``
#: with the consumer's input size, e.g. 2x2 average pooling or fastMRI's
#: reflect padding of odd sizes.
Transform = Callable[[torch.Tensor, Tuple[int, int]], torch.Tensor]


@dataclass(frozen=True)
class Consumer:
    """A conv that reads a site's output channels.

    Attributes:
        module: The consuming ``nn.Conv2d`` (input channels on weight dim 1)
            or ``nn.ConvTranspose2d`` (input channels on weight dim 0).
        name: A readable name, e.g. ``"down_1.conv1"``.
        channel_offset: Input index of the site's channel 0 in the consumer.
            New channels go right after the site's current last channel.
        transform: What the features go through on the way (None: nothing).
    """

    module: nn.Module
    name: str
    channel_offset: int = 0
    transform: Optional[Transform] = None

    @property
    def in_dim(self) -> int:
        """Weight dimension of the input channels."""
        return 0 if isinstance(self.module, nn.ConvTranspose2d) else 1

    def see(self, features: torch.Tensor, input_hw: Tuple[int, int]) -> torch.Tensor:
        """The features as this consumer sees them."""
        return features if self.transform is None else self.transform(features, input_hw)


@dataclass(frozen=True)
class SiteSpec:
    """Everything the engine needs about one site, read from the live network.

    Attributes:
        site: The site.
        conv: The producing ``nn.Conv2d`` or ``nn.ConvTranspose2d``.
        post: The channel-wise function applied to the conv's output, dropout
            off: ``post(conv_output) -> features``, shapes `(N, C, H, W)`.
        consumers: The convs that read the features.
    """

    site: Site
    conv: nn.Module
    post: Callable[[torch.Tensor], torch.Tensor]
    consumers: List[Consumer]

    @property
    def transposed(self) -> bool:
        return isinstance(self.conv, nn.ConvTranspose2d)

    @property
    def out_dim(self) -> int:
        """Weight dimension of the output channels: 0 (conv) or 1 (transposed conv)."""
        return 1 if self.transposed else 0

    @property
    def width(self) -> int:
        """Current number of output channels."""
        return self.conv.weight.shape[self.out_dim]

    @property
    def in_channels(self) -> int:
        return self.conv.weight.shape[1 - self.out_dim]

    @property
    def kernel(self) -> Tuple[int, int]:
        return tuple(self.conv.weight.shape[2:])

    @property
    def fan_in_shape(self) -> Tuple[int, ...]:
        """Shape of one filter's fan-in, `(C_in, kh, kw)` (rows convention for both kinds)."""
        return (self.in_channels, *self.kernel)

    def filter_rows(self) -> torch.Tensor:
        """The existing filters as rows `(C_out, C_in, kh, kw)` (a view for convs)."""
        w = self.conv.weight.detach()
        return w.transpose(0, 1) if self.transposed else w

    def params_per_filter(self) -> int:
        """Parameters added by one new output filter (fan-in, bias, every fan-out slice)."""
        n = int(torch.Size(self.fan_in_shape).numel())
        if getattr(self.conv, "bias", None) is not None:
            n += 1
        for c in self.consumers:
            shape = list(c.module.weight.shape)
            shape[c.in_dim] = 1
            n += int(torch.Size(shape).numel())
        return n

    def conv_outputs(self, inputs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The site conv applied with the given fan-ins (before the channel-wise function).

        Args:
            inputs: The site conv's input `(N, C_in, H, W)`.
            rows: Fan-ins `(K, C_in, kh, kw)`.

        Returns:
            `(N, K, H', W')`.
        """
        conv = self.conv
        rows = rows.to(inputs.dtype)
        if self.transposed:
            return F.conv_transpose2d(inputs, rows.transpose(0, 1), stride=conv.stride,
                                      padding=conv.padding, output_padding=conv.output_padding,
                                      dilation=conv.dilation)
        return F.conv2d(inputs, rows, stride=conv.stride, padding=conv.padding,
                        dilation=conv.dilation)

    def features(self, inputs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Feature maps of filters with the given fan-ins, as the network computes them.

        Args:
            inputs: The site conv's input `(N, C_in, H, W)`.
            rows: Fan-ins `(K, C_in, kh, kw)`.

        Returns:
            ``post(conv(inputs, rows))`` of shape `(N, K, H', W')`.
        """
        return self.post(self.conv_outputs(inputs, rows))

    def flops_per_filter(self, input_hw: Tuple[int, int],
                         consumer_out_hw: Sequence[Tuple[int, int]]) -> int:
        """Forward FLOPs per sample that one more output filter costs (2 per MAC).

        Args:
            input_hw: The site conv's input size.
            consumer_out_hw: Each consumer's output size.

        Returns:
            FLOPs of the new filter's own conv plus its input slice in every
            consumer (a training step costs about three times this).
        """
        conv = self.conv
        h, w = input_hw
        kh, kw = self.kernel
        if self.transposed:
            # Each input pixel scatters into kh*kw outputs per new channel.
            flops = 2 * self.in_channels * kh * kw * h * w
        else:
            out_h = (h + 2 * conv.padding[0] - conv.dilation[0] * (kh - 1) - 1) // conv.stride[0] + 1
            out_w = (w + 2 * conv.padding[1] - conv.dilation[1] * (kw - 1) - 1) // conv.stride[1] + 1
            flops = 2 * self.in_channels * kh * kw * out_h * out_w
        for c, (ch, cw) in zip(self.consumers, consumer_out_hw):
            ckh, ckw = c.module.weight.shape[2:]
            c_out = c.module.weight.shape[1 - c.in_dim]
            if isinstance(c.module, nn.ConvTranspose2d):
                # A transposed conv's MACs scale with its input size (ours: out/stride).
                ch, cw = ch // c.module.stride[0], cw // c.module.stride[1]
            flops += 2 * c_out * ckh * ckw * ch * cw
        return int(flops)


@runtime_checkable
class GrowableNet(Protocol):
    """What a backbone implements so that the engine can grow (and prune) it.

    Any ``nn.Module`` with these methods works with :func:`fastmri_growth.growth.grow`,
    :func:`fastmri_growth.growth.score_sites`, the pruning functions and the
    Lightning ``GrowthCallback``.
    """

    def growth_sites(self) -> List[Site]:
        """Every growable site, in network order."""

    def site_spec(self, site: Site) -> SiteSpec:
        """The live description of ``site`` (raises ValueError for an unknown site)."""

    def get_network_size(self) -> Dict:
        """Widths, read from the parameter shapes."""

    def sync_attributes(self) -> None:
        """Refresh informational attributes (``in_channels``, ``num_features``) after surgery."""

    def resize_from_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Rebuild in place at the widths a state dict's shapes say (for checkpoints)."""


def resize_on_load(net: nn.Module) -> nn.Module:
    """Make ``net`` take a state dict's widths whenever one is loaded into it.

    Registers a ``load_state_dict`` pre-hook that calls
    ``net.resize_from_state_dict`` with the keys under ``net``'s own prefix,
    so loading a grown checkpoint into a module that holds ``net`` under any
    attribute name (``module.load_state_dict``, Lightning's resume and
    ``load_from_checkpoint``) first rebuilds ``net`` at the saved widths.
    Idempotent.

    Args:
        net: A :class:`GrowableNet`.

    Returns:
        ``net``.
    """
    if not getattr(net, "_resizes_on_load", False):
        def hook(module, state_dict, prefix, *_):
            own = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
            if own:
                module.resize_from_state_dict(own)

        net.register_load_state_dict_pre_hook(hook)
        net._resizes_on_load = True
    return net


def channelwise(modules: Sequence[nn.Module]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The functional, channel-count-agnostic form of norm/activation modules.

    The modules' own settings (eps, negative slope) are read at call time,
    so the function always matches what the network computes. Dropout is
    identity: scoring runs with dropout off.

    Args:
        modules: e.g. ``[InstanceNorm2d, LeakyReLU, Dropout2d]``.

    Returns:
        ``fn(x) -> y`` for `(N, C, H, W)` tensors of any C.

    Raises:
        TypeError: a module that is not channel-wise (or not supported),
            naming it.
    """
    steps = []
    for m in modules:
        if isinstance(m, nn.InstanceNorm2d):
            if m.affine or m.track_running_stats:
                raise TypeError(
                    f"{m!r}: an InstanceNorm2d with affine weights or running statistics has "
                    "per-channel state that growth would have to extend; fastMRI's blocks use "
                    "affine=False, track_running_stats=False"
                )
            steps.append(lambda x, m=m: F.instance_norm(x, eps=m.eps))
        elif isinstance(m, nn.LeakyReLU):
            steps.append(lambda x, m=m: F.leaky_relu(x, m.negative_slope))
        elif isinstance(m, nn.ReLU):
            steps.append(F.relu)
        elif isinstance(m, (nn.Dropout, nn.Dropout2d, nn.Identity)):
            continue
        else:
            raise TypeError(
                f"{type(m).__name__} after a growth site is not supported: growth needs a "
                "channel-wise function (InstanceNorm2d, LeakyReLU, ReLU, Dropout, Identity)"
            )

    def post(x: torch.Tensor) -> torch.Tensor:
        for step in steps:
            x = step(x)
        return x

    return post


def avg_pool_2x2(x: torch.Tensor, _input_hw: Tuple[int, int]) -> torch.Tensor:
    """fastMRI's down-sampling between encoder blocks."""
    return F.avg_pool2d(x, kernel_size=2, stride=2, padding=0)


def reflect_pad_to(x: torch.Tensor, input_hw: Tuple[int, int]) -> torch.Tensor:
    """fastMRI's padding of an up-sampled tensor to the skip's odd size (right/bottom)."""
    pad_h, pad_w = input_hw[0] - x.shape[-2], input_hw[1] - x.shape[-1]
    if pad_h != 0 or pad_w != 0:  # TorchScript (DynamicUnet.forward) has no int truthiness
        x = F.pad(x, [0, pad_w, 0, pad_h], "reflect")
    return x
