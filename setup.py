"""Packaging for fastmri_growth: growing U-Nets for fastMRI reconstruction."""
from setuptools import find_packages, setup

setup(
    name="fastmri-growth",
    version="0.1.0",
    description=(
        "Growing U-Nets (GradMax-style sample-select and split growth) for "
        "fastMRI reconstruction, on pytorch-lightning 2"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["fastmri_growth", "fastmri_growth.*"]),
    install_requires=[
        "torch>=2.1",
        "fastmri>=0.3.0,<0.4",
        "pytorch-lightning>=2.0,<3",
        "numpy>=1.22",
        "h5py>=3.0",
        "scikit-image>=0.19",
        # fastmri/data/mri_data.py imports requests without declaring it.
        "requests",
        "PyYAML>=5.3",
        "tensorboard",
        "matplotlib",
    ],
    extras_require={
        # --phantom anatomy reads brain images these wheels ship: nilearn's
        # MNI152 template, dipy's T1 slice, nibabel's example EPI (nibabel
        # also reads the NIfTI files).
        "anatomy": ["nibabel>=4", "nilearn>=0.10", "dipy>=1.7"],
        # LightningCLI (fastmri-growth-lightning and the configs in fastmri_growth/configs).
        "cli": ["jsonargparse[signatures]>=4.27.7"],
        "test": ["pytest>=7", "nibabel>=4", "nilearn>=0.10", "dipy>=1.7",
                 "jsonargparse[signatures]>=4.27.7"],
    },
    # The LightningCLI configs.
    package_data={"fastmri_growth": ["configs/*.yaml"]},
    entry_points={
        "console_scripts": [
            "fastmri-growth-train=fastmri_growth.cli.train:main",
            "fastmri-growth-eval=fastmri_growth.cli.evaluate:main",
            "fastmri-growth-plot=fastmri_growth.cli.plot:main",
            "fastmri-growth-synth=fastmri_growth.cli.synth:main",
            "fastmri-growth-lightning=fastmri_growth.cli.lightning_cli:main",
        ]
    },
)
