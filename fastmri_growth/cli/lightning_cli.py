"""``fastmri-growth-lightning``: Lightning's ``LightningCLI`` for these modules.

Any LightningModule and LightningDataModule by class path (subclass mode),
so the shipped configs (:mod:`fastmri_growth.configs`) run as written and a
growing module's growth options go under ``model.dict_kwargs``::

    fastmri-growth-lightning fit --config $(python -c \\
        "import fastmri_growth.configs as c; print(c.path('knee_grown_unet'))") \\
        --data.init_args.data_path data/knee

It needs jsonargparse (the ``cli`` extra); the training command
``fastmri-growth-train`` does not.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

PROG = "fastmri-growth-lightning"
#: What LightningCLI needs (pytorch_lightning/cli.py checks the same requirement).
REQUIREMENT = "jsonargparse[signatures]>=4.27.7"


def main(args: Optional[Sequence[str]] = None):
    """Run ``LightningCLI`` on ``args`` (``None``: ``sys.argv``).

    Returns:
        The ``LightningCLI`` object (its ``trainer``, ``model``, ``datamodule``).
    """
    from lightning_utilities.core.imports import RequirementCache

    if not RequirementCache(REQUIREMENT):
        print(f"{PROG}: error: LightningCLI needs {REQUIREMENT!r}; install it with "
              f"pip install 'fastmri-growth[cli]'", file=sys.stderr, flush=True)
        raise SystemExit(2)
    from pytorch_lightning.cli import LightningCLI

    # No model or data class: any subclass by class path, as the configs give them.
    return LightningCLI(args=None if args is None else list(args))


if __name__ == "__main__":
    main()
