"""Old import path: parameter surgery moved to :mod:`fastmri_growth.growth.surgery`."""
from ..growth.surgery import (  # noqa: F401
    ParamChange,
    add_output_channels,
    insert_map,
    keep_map,
    remap,
    remove_output_channels,
)


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise ImportError(
        f"fastmri_growth.models.surgery.{name} is gone: surgery is an index map "
        "(fastmri_growth.growth.surgery.remap, add_output_channels, remove_output_channels)"
    )
