"""Old import path: growth methods and reports moved to :mod:`fastmri_growth.growth`.

``GROWTH_METHODS`` is the method registry (name -> method class), the
source of every ``growth_method`` choice.
"""
from ..growth.candidates import DUPLICATE_COSINE, generate_candidates, select_diverse  # noqa: F401
from ..growth.methods import METHODS as GROWTH_METHODS  # noqa: F401
from ..growth.methods.split import DEFAULT_SPLIT_NOISE, SPLIT_FAN_OUT_ASYMMETRY  # noqa: F401
from ..growth.report import GrowthReport  # noqa: F401


def grow(model, layer_idx, conv_idx, batch, target, criterion=None, n_new=1, method=None,
         split_noise=None, candidates=None, generator=None, reduce_fn=None):
    """Old entry point: :meth:`DynamicUnet.grow_network` (same arguments)."""
    from torch.nn import functional as F

    return model.grow_network(layer_idx, conv_idx, batch, target,
                              criterion=F.l1_loss if criterion is None else criterion,
                              n_new=n_new, method=method, split_noise=split_noise,
                              candidates=candidates, generator=generator, reduce_fn=reduce_fn)


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise ImportError(
        f"fastmri_growth.models.growth.{name} is gone: growth methods are classes in "
        "fastmri_growth.growth.methods (sample_select.SampleSelect, split.Split) behind "
        "fastmri_growth.growth.methods.METHODS"
    )
