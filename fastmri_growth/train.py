"""Old import path of ``fastmri-growth-train``: :mod:`fastmri_growth.cli.train`.

``import fastmri_growth.train`` gives that module itself, so everything it
defines or re-exports works through either name (monkeypatching it reaches
what the command calls from there);
``python -m fastmri_growth.train`` runs the command.
"""
import sys

from fastmri_growth.cli import train as _train

if __name__ == "__main__":
    sys.exit(_train.main())
else:
    sys.modules[__name__] = _train
