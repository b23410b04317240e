"""octo: distributed self-supervised pretraining of vision backbones (distribution name ``octo-ssl``)."""
from setuptools import find_packages, setup

# Runtime dependencies, each earning its place:
#   torch/torchvision  - the framework; ranges admit 2.14.1 / 0.29.1 (FSDP2 + DCP public APIs need >= 2.6)
#   omegaconf          - typed configs (structured configs + CLI dotlists), the format DINOv2 users know
#   submitit           - Slurm submission with preemption/requeue handling
#   fvcore             - FLOP counting in the benchmark launcher
#   safetensors        - exported weights that load without executing code
#   numpy, pillow      - image decoding and array maths
#   scipy              - SVHN's official .mat files
#   scikit-learn       - the bundled `digits` dataset and the logistic-regression probe
#   tensorboard        - training curves
#   tqdm               - progress bars for feature extraction
#   psutil             - RSS memory figures on CPU (logs and benchmarks)
#   matplotlib         - reliability diagrams and attention heatmaps (PNG)
INSTALL_REQUIRES = [
    "torch>=2.6,<2.15",
    "torchvision>=0.21,<0.30",
    "omegaconf>=2.3,<2.5",
    "submitit>=1.5,<2",
    "fvcore>=0.1.5.post20221221",
    "safetensors>=0.4",
    "numpy>=1.24",
    "pillow>=9.0",
    "scipy>=1.10",
    "scikit-learn>=1.3",
    "tensorboard>=2.14",
    "tqdm>=4.60",
    "psutil>=5.9",
    "matplotlib>=3.7",
]

EXTRAS = {
    # test helpers; timm is only used as the independent reference in side-by-side benchmarks/tests
    "dev": ["pytest>=7.4", "pytest-timeout>=2.2", "timm>=1.0"],
    # optional CUDA attention kernels (never required; selected with attn_backend=xformers)
    "xformers": ["xformers>=0.0.28"],
    # optional segmentation backend (never required; the pure-PyTorch evaluator is the default)
    "mmseg": ["mmcv-lite==2.1.0", "mmsegmentation>=1.2", "setuptools<81"],
}

setup(
    name="octo-ssl",
    version="0.1.0",
    description="Distributed self-supervised pretraining (DINOv2, DeiT III) of swappable vision backbones",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["pretrain", "pretrain.*", "eval", "eval.*"]),
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
