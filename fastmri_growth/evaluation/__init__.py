"""Evaluation: fastMRI's metrics, inference over a split, leaderboard validation, plots.

- :mod:`.metrics`: per-volume NMSE/PSNR/SSIM of reconstruction folders, and
  submission-format checks.
- :mod:`.inference`: reconstruct a split with an image-domain network and
  write leaderboard files; fixed-mask 4x/8x validation.
- :mod:`.plot`: curves of a run and reconstruction grids (PNG).

Submodules are imported on demand, so importing this package stays light.
"""
