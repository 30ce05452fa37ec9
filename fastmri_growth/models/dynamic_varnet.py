"""DynamicVarNet: fastMRI's end-to-end VarNet whose U-Nets grow during training."""

import copy
import dataclasses
import re
from typing import Any, Dict, List, Mapping, Optional, Union

import torch
from torch import nn

from ..growth.depth import CASCADE_INITS, CascadeReport, check_alpha
from ..growth.net import SiteSpec
from ..growth.sites import Site, as_site
from .dynamic_unet import DynamicUnet
from .unet_spec import architecture_from_state_dict
from .varnet_blocks import NormUnet, SensitivityModel, VarNetBlock, complex_abs, ifft2c, rss

#: Name of the sensitivity model's U-Net in sites and ``get_network_size()``.
SENS_NET = "sens"
#: State-dict prefix of the sensitivity U-Net (fastMRI's module names).
SENS_PREFIX = "sens_net.norm_unet."
#: The prefix of a VarNetModule checkpoint's VarNet weights.
MODULE_PREFIX = "varnet."

_CASCADE_KEY = re.compile(r"^cascades\.(\d+)\.(.*)$")


def cascade_net(index: int) -> str:
    """``3 -> "cascade_3"``: the name of a cascade's U-Net in sites and sizes."""
    return f"cascade_{index}"


def cascade_prefix(index: int) -> str:
    """State-dict prefix of cascade ``index``'s NormUnet (its U-Net is under ``unet.``)."""
    return f"cascades.{index}.model."


def _check_int(name: str, value: Any, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class DynamicVarNet(nn.Module):
    """fastMRI's ``VarNet`` whose NormUnets hold growing :class:`DynamicUnet` s.

    A chain of ``num_cascades`` blocks refines the k-space; each applies soft
    data consistency and a NormUnet (a U-Net on the real and imaginary parts
    of the coil-combined image); a sensitivity model (a NormUnet too)
    estimates the coil sensitivities from the k-space centre. Module names
    and state-dict keys are fastMRI's (``sens_net.norm_unet.unet.*``,
    ``cascades.K.model.unet.*``, ``cascades.K.dc_weight``), so a
    ``fastmri.models.VarNet`` state dict loads strictly and gives identical
    outputs.

    The network implements the engine's
    :class:`~fastmri_growth.growth.net.GrowableNet` protocol by delegation:
    every U-Net is a sub-network named ``sens`` or ``cascade_K``, a site is
    ``Site(layer, conv, net)`` (text ``cascade_2/up_0:1``, ``sens/down_0``),
    and a site's conv, channel-wise function and consumers are those of the
    named U-Net. The NormUnet's normalisation, padding, data consistency,
    the sensitivity expansion and the root sum of squares lie outside the
    U-Nets and only shape the gradients that the one backward pass of the
    whole VarNet delivers to them, so one-pass scores are exact for the
    VarNet's loss. The widths' one source of truth is the parameter shapes.
    """

    def __init__(
        self,
        num_cascades: int = 12,
        sens_chans: int = 8,
        sens_pools: int = 4,
        chans: int = 18,
        pools: int = 4,
        mask_center: bool = True,
    ):
        """
        Args:
            num_cascades: Number of cascades (unrolled iterations).
            sens_chans: Starting width of the sensitivity U-Net (output
                channels of its first conv).
            sens_pools: Down-/up-sampling layers of the sensitivity U-Net.
            chans: Starting width of every cascade's U-Net.
            pools: Down-/up-sampling layers of every cascade's U-Net.
            mask_center: Estimate the sensitivities from the fully sampled
                centre columns only (fastMRI's default).

        Raises:
            ValueError: a bad value, naming it.
        """
        super().__init__()
        for name, value in (("num_cascades", num_cascades), ("sens_chans", sens_chans), ("sens_pools", sens_pools),
                            ("chans", chans), ("pools", pools)):
            _check_int(name, value, 1)
        if not isinstance(mask_center, bool):
            raise ValueError(f"mask_center must be True or False, got {mask_center!r}")
        # Built in fastMRI's order, so the same seed gives the same weights.
        self.sens_net = SensitivityModel(chans=sens_chans, num_pools=sens_pools,
                                         mask_center=mask_center)
        self.cascades = nn.ModuleList(
            [VarNetBlock(NormUnet(chans, pools)) for _ in range(num_cascades)])

    # ------------------------------------------------------------------ build
    @classmethod
    def from_varnet(cls, varnet: nn.Module) -> "DynamicVarNet":
        """A DynamicVarNet with the weights of a ``fastmri.models.VarNet`` (or a DynamicVarNet).

        Returns:
            A model whose outputs equal ``varnet``'s.
        """
        return cls.from_state_dict(varnet.state_dict(),
                                   mask_center=bool(varnet.sens_net.mask_center))

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor],
                        mask_center: bool = True) -> "DynamicVarNet":
        """Rebuild a (possibly grown) model from its state dict alone.

        The number of cascades, the pools and every U-Net's widths are read
        from the tensor shapes; then the weights are loaded strictly.

        Args:
            state_dict: A DynamicVarNet or ``fastmri.models.VarNet`` state
                dict; with a ``"varnet."`` prefix (a VarNetModule
                checkpoint's) only the prefixed keys are read.
            mask_center: Not stored in a state dict (fastMRI's default: True).

        Returns:
            The rebuilt model.

        Raises:
            ValueError: the tensors match no valid DynamicVarNet, naming the
                first inconsistent key.
        """
        arch = varnet_architecture_from_state_dict(state_dict)
        model = cls(arch["num_cascades"], sens_chans=arch["sens_chans"],
                    sens_pools=arch["sens_pools"], chans=arch["chans"], pools=arch["pools"],
                    mask_center=mask_center)
        model.resize_from_state_dict(state_dict)
        sd = _strip_module_prefix(state_dict)
        first = next(iter(sd.values()), None)
        if torch.is_tensor(first) and first.is_floating_point():
            model = model.to(first.dtype)
        model.load_state_dict(sd, strict=True)
        return model

    def resize_from_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Rebuild in place at a state dict's cascades, widths and fading gates.

        For checkpoints: Lightning loads a grown module's weights into the
        module it built, so the network must first take the saved number of
        cascades (cascades are added at the end or removed from it), every
        U-Net's widths, and a ``gate`` buffer on each cascade whose state dict
        has one (a cascade that was fading in). The weights are not loaded;
        dtype and device are kept. Everything is checked before anything
        changes.

        Args:
            state_dict: A DynamicVarNet / fastMRI VarNet state dict
                (``varnet.`` prefix allowed).

        Raises:
            ValueError: the tensors match no valid DynamicVarNet, or another
                architecture (pools) than this one; nothing changed.
        """
        arch = varnet_architecture_from_state_dict(state_dict)
        mine = (self.sens_pools, self.pools)
        theirs = (arch["sens_pools"], arch["pools"])
        if mine != theirs:
            raise ValueError(
                f"the state dict holds a VarNet with sens_pools={theirs[0]}, pools={theirs[1]}, "
                f"but this one has sens_pools={mine[0]}, pools={mine[1]}"
            )
        ref = self.cascades[0].dc_weight
        while self.num_cascades > arch["num_cascades"]:
            del self.cascades[self.num_cascades - 1]
        while self.num_cascades < arch["num_cascades"]:
            self.cascades.append(
                VarNetBlock(NormUnet(arch["chans"], arch["pools"])).to(ref.device, ref.dtype))
        for name, sub in arch["unet_state_dicts"].items():
            self.unet(name).resize_from_state_dict(sub)
        for k, block in enumerate(self.cascades):
            if k in arch["gates"]:
                if block.gate is None:
                    block.gate = ref.new_zeros(1)
            else:
                block.gate = None

    # ------------------------------------------------------------------ depth
    def add_cascades(self, n: int = 1, position: Union[str, int] = "end", init: str = "copy",
                     seed: Optional[int] = None) -> CascadeReport:
        """Insert ``n`` cascades that fade in, leaving the output unchanged.

        Each new cascade starts with its gate at 0 (see
        :class:`~.varnet_blocks.VarNetBlock`): it returns its input, so the
        network's output is exactly what it was. Raise the gates with
        :meth:`set_cascade_gates`; at 1 they are dropped and the network is a
        plain VarNet of ``num_cascades + n`` cascades (its state dict loads
        strictly into ``fastmri.models.VarNet``).

        Args:
            n: Cascades to insert.
            position: ``"end"`` (after the last cascade), ``"start"`` (before
                the first) or an index in ``[0, num_cascades]``; the new
                cascades take indices ``position .. position + n - 1`` and
                the later ones move up by ``n``.
            init: ``"copy"``: each new cascade's U-Net and data-consistency
                weight are copies of its neighbour's (the cascade before the
                position; the first one for ``position`` 0); ``"fresh"``:
                fastMRI's default initialisation (PyTorch's default conv
                init, ``dc_weight`` 1) at the neighbour's widths.
            seed: Seeds the fresh initialisation without touching the global
                random state (None: draw from it, as building a VarNet does).

        Returns:
            A :class:`~fastmri_growth.growth.depth.CascadeReport` with the new
            parameters (to add to an optimizer).

        Raises:
            ValueError: a bad ``n``, ``position`` or ``init``, naming it and
                the valid ones; nothing changed.
        """
        _check_int("n", n, 1)
        k = self.num_cascades
        if position == "end":
            at = k
        elif position == "start":
            at = 0
        elif isinstance(position, int) and not isinstance(position, bool) and 0 <= position <= k:
            at = position
        else:
            raise ValueError(f"position must be 'end', 'start' or an int in [0, {k}], "
                             f"got {position!r}")
        if init not in CASCADE_INITS:
            raise ValueError(f"Unknown cascade init {init!r}; valid: {', '.join(CASCADE_INITS)}")
        if seed is not None:
            _check_int("seed", seed, 0)
        neighbour_index = max(at - 1, 0)
        neighbour = self.cascades[neighbour_index]
        ref = neighbour.dc_weight
        before = self.num_parameters()
        blocks = []
        for _ in range(n):
            if init == "copy":
                block = copy.deepcopy(neighbour)
            else:
                block = self._fresh_block(neighbour, seed)
                seed = None if seed is None else seed + 1
            block = block.to(ref.device, ref.dtype)
            block.gate = ref.new_zeros(1).detach()
            blocks.append(block)
        for i, block in enumerate(blocks):
            self.cascades.insert(at + i, block)
        self.sync_attributes()
        return CascadeReport(
            position=at, n=n, init=init, neighbour=neighbour_index, cascades_before=k,
            cascades_after=self.num_cascades, params_before=before,
            params_after=self.num_parameters(),
            new_parameters=[p for b in blocks for p in b.parameters()])

    def _fresh_block(self, neighbour: VarNetBlock, seed: Optional[int]) -> VarNetBlock:
        """A cascade with fastMRI's default initialisation at ``neighbour``'s widths."""
        unet = neighbour.model.unet
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            block = VarNetBlock(NormUnet(unet.chans, unet.num_pool_layers))
            widths = unet.get_network_size()
            if widths != block.model.unet.get_network_size() or \
                    unet.transpose_widths() != block.model.unet.transpose_widths():
                # A grown neighbour: take its widths, then initialise every
                # layer as its constructor would (resizing does not).
                block.model.unet.resize_from_state_dict(unet.state_dict())
                for m in block.modules():
                    if m is not block and hasattr(m, "reset_parameters"):
                        m.reset_parameters()
        return block

    def cascade_gates(self) -> Dict[int, float]:
        """``{cascade index: gate}`` of the cascades fading in (empty: a plain VarNet)."""
        return {k: float(b.gate) for k, b in enumerate(self.cascades) if b.gate is not None}

    def set_cascade_gates(self, alpha: Union[float, Mapping[int, float]]) -> Dict[int, float]:
        """Set the fade-in gates; a gate set to 1 is dropped.

        Args:
            alpha: One value in [0, 1] for every fading cascade, or
                ``{cascade index: value}`` for some of them (a cascade
                without a gate given a value below 1 gets one: a resumed
                fade).

        Returns:
            The gates still set (:meth:`cascade_gates`).

        Raises:
            ValueError: a value outside [0, 1] or an unknown cascade index,
                naming it; nothing changed.
        """
        if isinstance(alpha, Mapping):
            values = {}
            for k, a in alpha.items():
                if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < self.num_cascades:
                    raise ValueError(f"cascade index must be an int in [0, "
                                     f"{self.num_cascades - 1}], got {k!r}")
                values[k] = check_alpha(a)
        else:
            a = check_alpha(alpha)
            values = {k: a for k in self.cascade_gates()}
        for k, a in values.items():
            block = self.cascades[k]
            if a >= 1.0:
                block.gate = None
            elif block.gate is None:
                block.gate = block.dc_weight.new_full((1,), a).detach()
            else:
                block.gate.fill_(a)
        return self.cascade_gates()

    # ----------------------------------------------------------------- access
    @property
    def num_cascades(self) -> int:
        return len(self.cascades)

    @property
    def pools(self) -> int:
        """Pools of the cascades' U-Nets."""
        return self.cascades[0].model.unet.num_pool_layers

    @property
    def sens_pools(self) -> int:
        return self.sens_net.norm_unet.unet.num_pool_layers

    @property
    def mask_center(self) -> bool:
        return self.sens_net.mask_center

    def net_names(self) -> List[str]:
        """``["sens", "cascade_0", ..., "cascade_{N-1}"]``, in :meth:`get_network_size` order."""
        return [SENS_NET] + [cascade_net(k) for k in range(self.num_cascades)]

    def unets(self) -> Dict[str, DynamicUnet]:
        """Every U-Net by sub-network name, sensitivity U-Net first."""
        out = {SENS_NET: self.sens_net.norm_unet.unet}
        for k, block in enumerate(self.cascades):
            out[cascade_net(k)] = block.model.unet
        return out

    def unet(self, net: str) -> DynamicUnet:
        """The U-Net of a sub-network name (``"sens"`` or ``"cascade_K"``).

        Raises:
            ValueError: an unknown name, naming the valid ones.
        """
        unets = self.unets()
        if net not in unets:
            raise ValueError(
                f"Unknown network {net!r}; valid networks: {', '.join(unets)} (this VarNet has "
                f"{self.num_cascades} cascade{'s' if self.num_cascades > 1 else ''})"
            )
        return unets[net]

    def unet_prefix(self, net: str) -> str:
        """State-dict prefix of a sub-network's U-Net, e.g. ``"cascades.2.model.unet."``."""
        self.unet(net)
        if net == SENS_NET:
            return SENS_PREFIX + "unet."
        return cascade_prefix(int(net[len("cascade_"):])) + "unet."

    @classmethod
    def site_ids(cls, num_cascades: int, pools: int, sens_pools: int) -> List[Site]:
        """Every growth site of a DynamicVarNet of this shape, without building it."""
        sites = [dataclasses.replace(s, net=SENS_NET) for s in DynamicUnet.site_ids(sens_pools)]
        for k in range(num_cascades):
            sites += [dataclasses.replace(s, net=cascade_net(k)) for s in DynamicUnet.site_ids(pools)]
        return sites

    # ------------------------------------------------------ GrowableNet protocol
    def growth_sites(self) -> List[Site]:
        """Every growth site, sensitivity U-Net first, then cascade by cascade."""
        return [dataclasses.replace(s, net=name)
                for name, u in self.unets().items() for s in u.growth_sites()]

    def site_spec(self, site: Union[Site, tuple, str]) -> SiteSpec:
        """The live description of a site: the named U-Net's, with the site's net.

        Args:
            site: ``Site(layer, conv, net)``, a ``(layer, conv, net)`` tuple or
                its text key ``"cascade_2/up_0:1"``.

        Raises:
            ValueError: no or an unknown network, or a site the U-Net has
                not, naming the valid ones.
        """
        site = as_site(site)
        if not site.net:
            raise ValueError(
                f"a DynamicVarNet site names its U-Net as NET/LAYER:CONV, got {site.key!r}; "
                f"valid networks: {', '.join(self.net_names())}"
            )
        spec = self.unet(site.net).site_spec(Site(site.layer, site.conv))
        return dataclasses.replace(spec, site=site)

    def get_network_size(self) -> Dict[str, Dict[str, Dict[str, int]]]:
        """Widths of every U-Net, read from the parameters.

        Returns:
            ``{"sens": {"down_0": {"conv1_out": c, ...}, ...}, "cascade_0": {...}, ...}``.
        """
        return {name: u.get_network_size() for name, u in self.unets().items()}

    def transpose_widths(self) -> Dict[str, List[int]]:
        """Per U-Net, the output widths of its transposed convs."""
        return {name: u.transpose_widths() for name, u in self.unets().items()}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def chans(self) -> int:
        """The cascades' U-Nets' first width (the budget schedule's ``target_chans`` scales it)."""
        return self.cascades[0].model.unet.chans

    def num_parameters_at(self, site_widths: Mapping[Site, int]) -> int:
        """Parameters with some sites at other widths (no allocation; see DynamicUnet's)."""
        by_net: Dict[str, Dict[Site, int]] = {}
        for site, width in site_widths.items():
            self.unet(site.net)
            by_net.setdefault(site.net, {})[Site(site.layer, site.conv)] = width
        total = self.num_parameters()
        for name, u in self.unets().items():
            if name in by_net:
                total += u.num_parameters_at(by_net[name]) - u.num_parameters()
        return total

    def sync_attributes(self) -> None:
        """Refresh every U-Net's informational width attributes after a surgery."""
        for u in self.unets().values():
            u.sync_attributes()

    # ---------------------------------------------------------------- forward
    def forward(self, masked_kspace: torch.Tensor, mask: torch.Tensor,
                num_low_frequencies=None) -> torch.Tensor:
        """
        Args:
            masked_kspace: Under-sampled multicoil k-space `(N, coils, H, W, 2)`.
            mask: Bool sampling mask `(N, 1, 1, W, 1)`.
            num_low_frequencies: Fully sampled centre columns (an int or `(N,)`;
                None or 0: read from the mask).

        Returns:
            The root-sum-of-squares image `(N, H, W)`.

        Raises:
            ValueError: the k-space is not multicoil `(N, coils, H, W, 2)`.
        """
        if masked_kspace.dim() != 5 or masked_kspace.shape[-1] != 2:
            hint = (" (single-coil k-space? the VarNet reconstructs multicoil data)"
                    if masked_kspace.dim() == 4 else "")
            raise ValueError(
                f"DynamicVarNet needs multicoil k-space of shape (N, coils, H, W, 2), got "
                f"{tuple(masked_kspace.shape)}{hint}"
            )
        sens_maps = self.sens_net(masked_kspace, mask, num_low_frequencies)
        kspace_pred = masked_kspace.clone()
        for cascade in self.cascades:
            kspace_pred = cascade(kspace_pred, masked_kspace, mask, sens_maps)
        return rss(complex_abs(ifft2c(kspace_pred)), dim=1)


# ---------------------------------------------------------------------------
# reading a VarNet state dict
# ---------------------------------------------------------------------------


def _strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Keys without a VarNetModule's ``varnet.`` prefix (only prefixed keys, if any has it)."""
    if any(str(k).startswith(MODULE_PREFIX) for k in state_dict):
        return {k[len(MODULE_PREFIX):]: v for k, v in state_dict.items()
                if str(k).startswith(MODULE_PREFIX)}
    return dict(state_dict)


def _unet_arch(sub: Mapping[str, torch.Tensor], net: str, full_prefix: str) -> dict:
    """A U-Net's architecture, errors naming its keys as the caller spelled them."""
    try:
        return architecture_from_state_dict(sub)
    except ValueError as err:
        detail = str(err).replace("state dict matches no valid DynamicUnet: ", "")
        detail = detail.replace("'unet.", f"'{full_prefix}unet.")
        raise ValueError(f"state dict matches no valid DynamicVarNet: {net} U-Net: {detail}") \
            from None


def varnet_architecture_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Read a VarNet's architecture from its tensor shapes.

    Args:
        state_dict: A DynamicVarNet / fastMRI VarNet state dict, optionally
            with a ``"varnet."`` prefix.

    Returns:
        ``{"num_cascades", "sens_chans", "sens_pools", "chans", "pools",
        "unets": {net: U-Net architecture}, "unet_state_dicts": {net: its
        keys under a "unet." prefix}}`` (``chans`` and ``pools`` of cascade 0;
        ``pools`` 0 without cascades), and ``"gates"``: ``{cascade index:
        gate}`` of the cascades fading in.

    Raises:
        ValueError: the tensors are not those of a valid VarNet, naming the
            first bad key and what was expected.
    """
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise ValueError("state dict matches no valid DynamicVarNet: it is empty or not a mapping")
    outer = MODULE_PREFIX if any(str(k).startswith(MODULE_PREFIX) for k in state_dict) else ""
    sd = _strip_module_prefix(state_dict)
    sens: Dict[str, torch.Tensor] = {}
    cascades: Dict[int, Dict[str, torch.Tensor]] = {}
    dc: Dict[int, torch.Tensor] = {}
    gates: Dict[int, torch.Tensor] = {}
    unexpected: List[str] = []
    for key, value in sd.items():
        key = str(key)
        if key.startswith(SENS_PREFIX + "unet."):
            sens[key[len(SENS_PREFIX):]] = value
            continue
        m = _CASCADE_KEY.match(key)
        if m and m.group(2) == "dc_weight":
            dc[int(m.group(1))] = value
        elif m and m.group(2) == "gate":
            gates[int(m.group(1))] = value
        elif m and m.group(2).startswith("model.unet."):
            cascades.setdefault(int(m.group(1)), {})[m.group(2)[len("model."):]] = value
        else:
            unexpected.append(key)
    if unexpected:
        raise ValueError(
            f"state dict matches no valid DynamicVarNet: unexpected key "
            f"{outer + unexpected[0]!r}; a VarNet's keys are {outer}{SENS_PREFIX}unet.*, "
            f"{outer}cascades.K.model.unet.*, {outer}cascades.K.dc_weight and (while "
            f"a cascade fades in) {outer}cascades.K.gate"
        )
    if not sens:
        raise ValueError(
            f"state dict matches no valid DynamicVarNet: no '{outer}{SENS_PREFIX}unet.*' keys "
            "(the sensitivity model's U-Net)"
        )
    indices = sorted(set(cascades) | set(dc) | set(gates))
    n = len(indices)
    if not n:
        raise ValueError(
            f"state dict matches no valid DynamicVarNet: no '{outer}cascades.K.*' keys "
            "(a VarNet has at least one cascade)"
        )
    if indices != list(range(n)):
        missing = next(i for i in range(max(indices) + 1) if i not in indices)
        raise ValueError(
            f"state dict matches no valid DynamicVarNet: no '{outer}cascades.{missing}.*' keys, "
            f"but cascades up to {max(indices)} exist; cascades must be numbered 0..N-1"
        )
    for k in indices:
        if k not in dc:
            raise ValueError(
                f"state dict matches no valid DynamicVarNet: missing key "
                f"'{outer}cascades.{k}.dc_weight'")
        if tuple(dc[k].shape) != (1,):
            raise ValueError(
                f"state dict matches no valid DynamicVarNet: '{outer}cascades.{k}.dc_weight' "
                f"has shape {tuple(dc[k].shape)}, expected (1,)")
        if k in gates and tuple(gates[k].shape) != (1,):
            raise ValueError(
                f"state dict matches no valid DynamicVarNet: '{outer}cascades.{k}.gate' "
                f"has shape {tuple(gates[k].shape)}, expected (1,)")
        if k not in cascades:
            raise ValueError(
                f"state dict matches no valid DynamicVarNet: no "
                f"'{outer}{cascade_prefix(k)}unet.*' keys (cascade {k}'s U-Net)")
    subs = {SENS_NET: (sens, outer + SENS_PREFIX)}
    for k in indices:
        subs[cascade_net(k)] = (cascades[k], outer + cascade_prefix(k))
    unets = {}
    for net, (sub, prefix) in subs.items():
        arch = _unet_arch(sub, net, prefix)
        if (arch["in_chans"], arch["out_chans"]) != (2, 2):
            raise ValueError(
                f"state dict matches no valid DynamicVarNet: the {net} U-Net "
                f"({prefix}unet.*) has in_chans={arch['in_chans']}, "
                f"out_chans={arch['out_chans']}; a VarNet's U-Nets take and give 2 channels "
                "(real, imaginary)"
            )
        unets[net] = arch
    pools = unets[cascade_net(0)]["num_pool_layers"]
    for k in indices[1:]:
        p = unets[cascade_net(k)]["num_pool_layers"]
        if p != pools:
            raise ValueError(
                f"state dict matches no valid DynamicVarNet: cascade {k}'s U-Net "
                f"({outer}{cascade_prefix(k)}unet.*) has {p} pools but cascade 0's has "
                f"{pools}; a VarNet's cascades share one number of pools"
            )
    first = unets[cascade_net(0)]
    return {
        "num_cascades": n,
        "sens_chans": unets[SENS_NET]["widths"]["down_0"]["conv2_out"],
        "sens_pools": unets[SENS_NET]["num_pool_layers"],
        "chans": first["widths"]["down_0"]["conv2_out"],
        "pools": pools,
        "unets": unets,
        "unet_state_dicts": {net: sub for net, (sub, _) in subs.items()},
        "gates": {k: float(v.reshape(-1)[0]) for k, v in gates.items()},
    }

