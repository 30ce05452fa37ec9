"""Data utilities: a synthetic dataset in fastMRI's on-disk format.

``generate_dataset`` is imported lazily so that
``python -m fastmri_growth.data.synthetic`` does not find the module already
imported by its package (runpy would warn on stderr) and so that importing
this package stays free of torch.
"""

__all__ = ["generate_dataset"]


def __getattr__(name):
    if name == "generate_dataset":
        from fastmri_growth.data.synthetic import generate_dataset

        return generate_dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
