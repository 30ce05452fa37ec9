"""fastmri_growth: U-Nets for MRI reconstruction that grow during training."""

__version__ = "0.1.0"
