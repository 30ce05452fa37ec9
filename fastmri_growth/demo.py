"""Old import path of the demo: :mod:`fastmri_growth.cli.demo`.

``import fastmri_growth.demo`` gives that module itself;
``python -m fastmri_growth.demo`` (``make demo``) runs the demo.
"""
import sys

from fastmri_growth.cli import demo as _demo

if __name__ == "__main__":
    sys.exit(_demo.main())
else:
    sys.modules[__name__] = _demo
