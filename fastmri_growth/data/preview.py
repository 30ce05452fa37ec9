"""A picture of what each phantom looks like (``fastmri-growth-synth --preview PNG``).

Each row is one phantom, each column the middle slice of one training
volume's target (three single-coil knee volumes, then three multicoil brain
volumes), exactly as ``generate_dataset`` writes them: phase, coils, noise
and fastMRI's target computation included. The README's ``docs/phantoms.png``
is made with::

    fastmri-growth-synth --preview docs/phantoms.png
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

import h5py

from fastmri_growth.data.fastmri_format import TARGET_KEYS
from fastmri_growth.data.phantoms import PHANTOMS
from fastmri_growth.data.synthetic import generate_dataset

_CHALLENGES = ("knee_singlecoil", "brain_multicoil")
_VOLUMES = 3


def render_preview(out, recon_size: int = 128, seed: int = 0,
                   phantoms: Sequence[str] = PHANTOMS) -> Path:
    """Draw one row of example targets per phantom.

    Args:
        out: The PNG to write (its folder is created).
        recon_size: Target side of the examples.
        seed: Dataset seed.
        phantoms: The rows, in order.

    Returns:
        The PNG path.

    Raises:
        ValueError, MissingExtraError: as ``generate_dataset``, before the
            picture is written.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for phantom in phantoms:
            root = Path(tmp) / phantom
            paths = generate_dataset(
                root, challenges=_CHALLENGES, splits=("train",), num_volumes=_VOLUMES,
                num_slices=3, recon_size=recon_size, seed=seed, num_coils=4, phantom=phantom,
            )
            row = []
            for path in paths:
                coils = path.parent.name.split("_")[0]
                with h5py.File(path, "r") as hf:
                    target = hf[TARGET_KEYS[coils]]
                    image = target[target.shape[0] // 2]
                    label = f"{path.parent.parent.name} {coils}\n{hf.attrs['acquisition']}"
                row.append((image, label))
            rows.append((phantom, row))

    ncol = max(len(row) for _, row in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.9 * ncol, 2.3 * len(rows)),
                             squeeze=False)
    for r, (phantom, row) in enumerate(rows):
        for c in range(ncol):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(row):
                ax.axis("off")
                continue
            image, label = row[c]
            ax.imshow(image, cmap="gray", vmin=0, vmax=float(image.max()))
            ax.set_title(label, fontsize=7)
            if c == 0:
                ax.set_ylabel(f"--phantom {phantom}", fontsize=9)
    fig.suptitle(f"fastmri-growth-synth targets, {recon_size}x{recon_size}, seed {seed}",
                 fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=72)
    plt.close(fig)
    return out
