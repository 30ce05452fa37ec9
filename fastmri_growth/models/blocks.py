"""fastMRI U-Net building blocks, with the same attribute names as fastMRI.

The classes mirror ``fastmri.models.unet.ConvBlock`` and
``TransposeConvBlock`` exactly (same ``layers`` Sequential, same state-dict
keys), so a ``fastmri.models.Unet`` state dict loads strictly into a
``DynamicUnet``. They are defined here rather than imported so that the model
package stays pure torch (importing ``fastmri.models`` pulls in its data
package).
"""

import torch
from torch import nn


class ConvBlock(nn.Module):
    """Two 3x3 convs, each followed by InstanceNorm, LeakyReLU(0.2) and Dropout2d.

    ``layers[0]`` is the block's first conv (``conv_idx=0``) and ``layers[4]``
    its second (``conv_idx=1``). Convs have no bias: InstanceNorm would cancel
    it.
    """

    def __init__(self, in_chans: int, out_chans: int, drop_prob: float, mid_chans: int = None):
        """
        Args:
            in_chans: Number of channels in the input.
            out_chans: Number of output channels of the second conv.
            drop_prob: Dropout probability.
            mid_chans: Number of output channels of the first conv. Defaults
                to ``out_chans`` (fastMRI's layout); a grown block may differ.
        """
        super().__init__()
        mid_chans = out_chans if mid_chans is None else mid_chans
        self.in_chans = in_chans
        self.out_chans = out_chans
        self.drop_prob = drop_prob
        self.layers = nn.Sequential(
            nn.Conv2d(in_chans, mid_chans, kernel_size=3, padding=1, bias=False),
            nn.InstanceNorm2d(mid_chans),
            nn.LeakyReLU(negative_slope=0.2, inplace=True),
            nn.Dropout2d(drop_prob),
            nn.Conv2d(mid_chans, out_chans, kernel_size=3, padding=1, bias=False),
            nn.InstanceNorm2d(out_chans),
            nn.LeakyReLU(negative_slope=0.2, inplace=True),
            nn.Dropout2d(drop_prob),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """
        Args:
            image: Input tensor of shape `(N, in_chans, H, W)`.

        Returns:
            Output tensor of shape `(N, out_chans, H, W)`.
        """
        return self.layers(image)


class TransposeConvBlock(nn.Module):
    """A 2x2 stride-2 transposed conv followed by InstanceNorm and LeakyReLU(0.2)."""

    def __init__(self, in_chans: int, out_chans: int):
        """
        Args:
            in_chans: Number of channels in the input.
            out_chans: Number of channels in the output.
        """
        super().__init__()
        self.in_chans = in_chans
        self.out_chans = out_chans
        self.layers = nn.Sequential(
            nn.ConvTranspose2d(in_chans, out_chans, kernel_size=2, stride=2, bias=False),
            nn.InstanceNorm2d(out_chans),
            nn.LeakyReLU(negative_slope=0.2, inplace=True),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """
        Args:
            image: Input tensor of shape `(N, in_chans, H, W)`.

        Returns:
            Output tensor of shape `(N, out_chans, 2*H, 2*W)`.
        """
        return self.layers(image)
