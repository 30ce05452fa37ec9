"""LightningCLI configs for this package's modules and fastMRI's data module.

``knee_unet`` (fastMRI's single-coil U-Net), ``knee_grown_unet`` (a U-Net
growing from chans 16 to fastMRI's chans-32 widths) and ``knee_varnet``
(fastMRI's multi-coil VarNet), each with fastMRI's demo transforms and masks
spelled out as class paths. Run them with ``fastmri-growth-lightning fit
--config PATH`` (:mod:`fastmri_growth.cli.lightning_cli`), which needs the
``cli`` extra (``pip install 'fastmri-growth[cli]'``: jsonargparse).
"""
from pathlib import Path
from typing import List

#: The folder holding the shipped ``*.yaml`` configs.
CONFIG_DIR = Path(__file__).resolve().parent


def names() -> List[str]:
    """The shipped configs' names, e.g. ``["knee_grown_unet", "knee_unet", "knee_varnet"]``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def path(name: str) -> Path:
    """The path of a shipped config.

    Raises:
        ValueError: ``name`` is no shipped config, naming the valid ones.
    """
    p = CONFIG_DIR / f"{name}.yaml"
    if not p.is_file():
        raise ValueError(f"no shipped LightningCLI config {name!r}; valid: {', '.join(names())}")
    return p
