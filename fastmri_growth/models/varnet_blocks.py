"""fastMRI's end-to-end VarNet parts in pure torch, with a growing U-Net inside.

The classes and functions mirror ``fastmri.models.varnet`` (``NormUnet``,
``SensitivityModel``, ``VarNetBlock``), ``fastmri.fftc``, ``fastmri.math``,
``fastmri.coil_combine`` and ``fastmri.data.transforms.batched_mask_center``
op for op, in the same order, so outputs equal fastMRI's exactly. They are
defined here rather than imported because ``fastmri.models.varnet`` imports
``fastmri.data`` (pandas, requests, h5py): the model package stays pure torch,
like :mod:`.blocks` for the U-Net's blocks.

Complex tensors are real tensors with a last dimension of size 2 (real,
imaginary), as in fastMRI.
"""

import math
from typing import List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .dynamic_unet import DynamicUnet

# ---------------------------------------------------------------------------
# fastmri.fftc, fastmri.math, fastmri.coil_combine
# ---------------------------------------------------------------------------


def _roll_one_dim(x: torch.Tensor, shift: int, dim: int) -> torch.Tensor:
    shift = shift % x.size(dim)
    if shift == 0:
        return x
    left = x.narrow(dim, 0, x.size(dim) - shift)
    right = x.narrow(dim, x.size(dim) - shift, shift)
    return torch.cat((right, left), dim=dim)


def _roll(x: torch.Tensor, shift: List[int], dim: List[int]) -> torch.Tensor:
    for s, d in zip(shift, dim):
        x = _roll_one_dim(x, s, d)
    return x


def fftshift(x: torch.Tensor, dim: List[int]) -> torch.Tensor:
    """``fastmri.fftshift``: roll each dim by ``size // 2``."""
    return _roll(x, [x.shape[d] // 2 for d in dim], dim)


def ifftshift(x: torch.Tensor, dim: List[int]) -> torch.Tensor:
    """``fastmri.ifftshift``: roll each dim by ``(size + 1) // 2``."""
    return _roll(x, [(x.shape[d] + 1) // 2 for d in dim], dim)


def _check_complex(x: torch.Tensor) -> None:
    if not x.shape[-1] == 2:
        raise ValueError("Tensor does not have separate complex dim.")


def fft2c(data: torch.Tensor, norm: str = "ortho") -> torch.Tensor:
    """``fastmri.fft2c``: centred 2-D FFT over dims -3, -2 of `(..., H, W, 2)`."""
    _check_complex(data)
    data = ifftshift(data, dim=[-3, -2])
    data = torch.view_as_real(torch.fft.fftn(torch.view_as_complex(data), dim=(-2, -1), norm=norm))
    return fftshift(data, dim=[-3, -2])


def ifft2c(data: torch.Tensor, norm: str = "ortho") -> torch.Tensor:
    """``fastmri.ifft2c``: centred 2-D inverse FFT over dims -3, -2 of `(..., H, W, 2)`."""
    _check_complex(data)
    data = ifftshift(data, dim=[-3, -2])
    data = torch.view_as_real(torch.fft.ifftn(torch.view_as_complex(data), dim=(-2, -1), norm=norm))
    return fftshift(data, dim=[-3, -2])


def complex_mul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``fastmri.complex_mul`` of `(..., 2)` tensors."""
    if not x.shape[-1] == y.shape[-1] == 2:
        raise ValueError("Tensors do not have separate complex dim.")
    re = x[..., 0] * y[..., 0] - x[..., 1] * y[..., 1]
    im = x[..., 0] * y[..., 1] + x[..., 1] * y[..., 0]
    return torch.stack((re, im), dim=-1)


def complex_conj(x: torch.Tensor) -> torch.Tensor:
    """``fastmri.complex_conj`` of a `(..., 2)` tensor."""
    _check_complex(x)
    return torch.stack((x[..., 0], -x[..., 1]), dim=-1)


def complex_abs(data: torch.Tensor) -> torch.Tensor:
    """``fastmri.complex_abs``: `(..., 2) -> (...)`."""
    _check_complex(data)
    return (data**2).sum(dim=-1).sqrt()


def complex_abs_sq(data: torch.Tensor) -> torch.Tensor:
    """``fastmri.complex_abs_sq``: `(..., 2) -> (...)`."""
    _check_complex(data)
    return (data**2).sum(dim=-1)


def rss(data: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``fastmri.rss``: root sum of squares over the coil dim."""
    return torch.sqrt((data**2).sum(dim))


def rss_complex(data: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``fastmri.rss_complex``: root sum of squares of complex values over the coil dim."""
    return torch.sqrt(complex_abs_sq(data).sum(dim))


def mask_center(x: torch.Tensor, mask_from: int, mask_to: int) -> torch.Tensor:
    """``fastmri.data.transforms.mask_center``: keep columns ``[mask_from, mask_to)``."""
    mask = torch.zeros_like(x)
    mask[:, :, :, mask_from:mask_to] = x[:, :, :, mask_from:mask_to]
    return mask


def batched_mask_center(x: torch.Tensor, mask_from: torch.Tensor,
                        mask_to: torch.Tensor) -> torch.Tensor:
    """``fastmri.data.transforms.batched_mask_center``: per-sample centre columns.

    Args:
        x: k-space `(N, coils, H, W, 2)`.
        mask_from: `(N,)` or `(1,)` first kept column.
        mask_to: Same shape, one past the last kept column.

    Returns:
        ``x`` with every other column zero.
    """
    if not mask_from.shape == mask_to.shape:
        raise ValueError("mask_from and mask_to must match shapes.")
    if not mask_from.ndim == 1:
        raise ValueError("mask_from and mask_to must have 1 dimension.")
    if not mask_from.shape[0] == 1:
        if (not x.shape[0] == mask_from.shape[0]) or (not x.shape[0] == mask_to.shape[0]):
            raise ValueError("mask_from and mask_to must have batch_size length.")
    if mask_from.shape[0] == 1:
        mask = mask_center(x, int(mask_from), int(mask_to))
    else:
        mask = torch.zeros_like(x)
        for i, (start, end) in enumerate(zip(mask_from, mask_to)):
            mask[i, :, :, start:end] = x[i, :, :, start:end]
    return mask


# ---------------------------------------------------------------------------
# fastmri.models.varnet, with a DynamicUnet in every NormUnet
# ---------------------------------------------------------------------------


class NormUnet(nn.Module):
    """fastMRI's ``NormUnet`` holding a :class:`~.dynamic_unet.DynamicUnet` as ``unet``.

    The complex channels go to the channel dim, each of the real and the
    imaginary part is normalised by its mean and std over everything else,
    H and W are zero-padded to multiples of 16, the U-Net runs, and the
    padding and normalisation are undone. The norm is outside the U-Net, so
    the U-Net's growth sites, consumers and one-pass scores are those of a
    plain DynamicUnet.
    """

    def __init__(self, chans: int, num_pools: int, in_chans: int = 2, out_chans: int = 2,
                 drop_prob: float = 0.0):
        """
        Args:
            chans: Output channels of the U-Net's first conv.
            num_pools: Number of down- and up-sampling layers.
            in_chans: U-Net input channels (2: real and imaginary of one coil image).
            out_chans: U-Net output channels.
            drop_prob: Dropout probability.
        """
        super().__init__()
        self.unet = DynamicUnet(in_chans=in_chans, out_chans=out_chans, chans=chans,
                                num_pool_layers=num_pools, drop_prob=drop_prob)

    def complex_to_chan_dim(self, x: torch.Tensor) -> torch.Tensor:
        """`(b, c, h, w, 2) -> (b, 2c, h, w)` (real parts first)."""
        b, c, h, w, two = x.shape
        assert two == 2
        return x.permute(0, 4, 1, 2, 3).reshape(b, 2 * c, h, w)

    def chan_complex_to_last_dim(self, x: torch.Tensor) -> torch.Tensor:
        """`(b, 2c, h, w) -> (b, c, h, w, 2)`."""
        b, c2, h, w = x.shape
        assert c2 % 2 == 0
        c = c2 // 2
        return x.view(b, 2, c, h, w).permute(0, 2, 3, 4, 1).contiguous()

    def norm(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-(real, imaginary) group norm of `(b, c, h, w)`; returns ``(x, mean, std)``."""
        b, c, h, w = x.shape
        x = x.view(b, 2, c // 2 * h * w)
        mean = x.mean(dim=2).view(b, 2, 1, 1)
        std = x.std(dim=2).view(b, 2, 1, 1)
        x = x.view(b, c, h, w)
        return (x - mean) / std, mean, std

    def unnorm(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        return x * std + mean

    def pad(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[List[int], List[int], int, int]]:
        """Zero-pad H and W to the next multiples of 16 (centred)."""
        _, _, h, w = x.shape
        w_mult = ((w - 1) | 15) + 1
        h_mult = ((h - 1) | 15) + 1
        w_pad = [math.floor((w_mult - w) / 2), math.ceil((w_mult - w) / 2)]
        h_pad = [math.floor((h_mult - h) / 2), math.ceil((h_mult - h) / 2)]
        x = F.pad(x, w_pad + h_pad)
        return x, (h_pad, w_pad, h_mult, w_mult)

    def unpad(self, x: torch.Tensor, h_pad: List[int], w_pad: List[int], h_mult: int,
              w_mult: int) -> torch.Tensor:
        return x[..., h_pad[0]:h_mult - h_pad[1], w_pad[0]:w_mult - w_pad[1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: Complex images `(b, c, h, w, 2)` with ``2c == unet.in_chans``.

        Returns:
            `(b, c', h, w, 2)` with ``2c' == unet.out_chans``.
        """
        if not x.shape[-1] == 2:
            raise ValueError("Last dimension must be 2 for complex.")
        x = self.complex_to_chan_dim(x)
        x, mean, std = self.norm(x)
        x, pad_sizes = self.pad(x)
        x = self.unet(x)
        x = self.unpad(x, *pad_sizes)
        x = self.unnorm(x, mean, std)
        return self.chan_complex_to_last_dim(x)


class SensitivityModel(nn.Module):
    """fastMRI's ``SensitivityModel``: coil sensitivities from the k-space centre.

    Each coil image (of the centre columns, when ``mask_center``) goes
    through the NormUnet as its own batch element; the result is divided by
    its root sum of squares over coils.
    """

    def __init__(self, chans: int, num_pools: int, in_chans: int = 2, out_chans: int = 2,
                 drop_prob: float = 0.0, mask_center: bool = True):
        """
        Args:
            chans: Output channels of the U-Net's first conv.
            num_pools: Number of down- and up-sampling layers.
            in_chans: U-Net input channels.
            out_chans: U-Net output channels.
            drop_prob: Dropout probability.
            mask_center: Estimate from the fully sampled centre columns only.
        """
        super().__init__()
        self.mask_center = mask_center
        self.norm_unet = NormUnet(chans, num_pools, in_chans=in_chans, out_chans=out_chans,
                                  drop_prob=drop_prob)

    def chans_to_batch_dim(self, x: torch.Tensor) -> Tuple[torch.Tensor, int]:
        b, c, h, w, comp = x.shape
        return x.view(b * c, 1, h, w, comp), b

    def batch_chans_to_chan_dim(self, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        bc, _, h, w, comp = x.shape
        c = bc // batch_size
        return x.view(batch_size, c, h, w, comp)

    def divide_root_sum_of_squares(self, x: torch.Tensor) -> torch.Tensor:
        return x / rss_complex(x, dim=1).unsqueeze(-1).unsqueeze(1)

    def get_pad_and_num_low_freqs(self, mask: torch.Tensor,
                                  num_low_frequencies: Optional[int] = None
                                  ) -> Tuple[torch.Tensor, torch.Tensor]:
        """First centre column and number of centre columns, per sample."""
        if num_low_frequencies is None or num_low_frequencies == 0:
            squeezed_mask = mask[:, 0, 0, :, 0].to(torch.int8)
            cent = squeezed_mask.shape[1] // 2
            # running argmin returns the first non-zero
            left = torch.argmin(squeezed_mask[:, :cent].flip(1), dim=1)
            right = torch.argmin(squeezed_mask[:, cent:], dim=1)
            num_low_frequencies_tensor = torch.max(
                2 * torch.min(left, right), torch.ones_like(left)
            )  # force a symmetric center unless 1
        else:
            num_low_frequencies_tensor = num_low_frequencies * torch.ones(
                mask.shape[0], dtype=mask.dtype, device=mask.device
            )
        pad = (mask.shape[-2] - num_low_frequencies_tensor + 1) // 2
        return pad.type(torch.long), num_low_frequencies_tensor.type(torch.long)

    def forward(self, masked_kspace: torch.Tensor, mask: torch.Tensor,
                num_low_frequencies: Optional[int] = None) -> torch.Tensor:
        """
        Args:
            masked_kspace: `(N, coils, H, W, 2)`.
            mask: Bool `(N, 1, 1, W, 1)`.
            num_low_frequencies: Centre columns per sample (None or 0: read from the mask).

        Returns:
            Sensitivity maps `(N, coils, H, W, 2)`, unit root sum of squares.
        """
        if self.mask_center:
            pad, num_low_freqs = self.get_pad_and_num_low_freqs(mask, num_low_frequencies)
            masked_kspace = batched_mask_center(masked_kspace, pad, pad + num_low_freqs)
        images, batches = self.chans_to_batch_dim(ifft2c(masked_kspace))
        return self.divide_root_sum_of_squares(
            self.batch_chans_to_chan_dim(self.norm_unet(images), batches)
        )


class VarNetBlock(nn.Module):
    """fastMRI's ``VarNetBlock``: soft data consistency plus a learned regulariser.

    A block inserted during training fades in: while its ``gate`` buffer
    (shape `(1,)`, alpha in [0, 1)) is set, the block returns
    ``k + alpha * (block(k) - k)``, so at alpha 0 it is the identity (the
    NormUnet adds back the image mean, so zero weights alone would not be
    one). Without a gate (``gate is None``, the default) the block is
    fastMRI's, op for op, and its state dict has fastMRI's keys.
    """

    def __init__(self, model: nn.Module):
        """
        Args:
            model: The regulariser (a :class:`NormUnet`).
        """
        super().__init__()
        self.model = model
        self.dc_weight = nn.Parameter(torch.ones(1))
        # A None buffer is not in the state dict; assigning a tensor makes it
        # a persistent entry (cascades.K.gate) for as long as the fade lasts.
        self.register_buffer("gate", None)

    def sens_expand(self, x: torch.Tensor, sens_maps: torch.Tensor) -> torch.Tensor:
        return fft2c(complex_mul(x, sens_maps))

    def sens_reduce(self, x: torch.Tensor, sens_maps: torch.Tensor) -> torch.Tensor:
        return complex_mul(ifft2c(x), complex_conj(sens_maps)).sum(dim=1, keepdim=True)

    def forward(self, current_kspace: torch.Tensor, ref_kspace: torch.Tensor, mask: torch.Tensor,
                sens_maps: torch.Tensor) -> torch.Tensor:
        """
        Args:
            current_kspace: `(N, coils, H, W, 2)`.
            ref_kspace: The measured k-space, same shape.
            mask: Bool `(N, 1, 1, W, 1)`.
            sens_maps: `(N, coils, H, W, 2)`.

        Returns:
            The refined k-space `(N, coils, H, W, 2)`.
        """
        zero = torch.zeros(1, 1, 1, 1, 1).to(current_kspace)
        soft_dc = torch.where(mask, current_kspace - ref_kspace, zero) * self.dc_weight
        model_term = self.sens_expand(
            self.model(self.sens_reduce(current_kspace, sens_maps)), sens_maps
        )
        out = current_kspace - soft_dc - model_term
        if self.gate is not None:
            out = current_kspace + self.gate * (out - current_kspace)
        return out
