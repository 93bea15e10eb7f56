"""gdet: GoogLeNet detection and classification (Szegedy et al., 2014), reproduced and modernised."""
import re
from pathlib import Path

from setuptools import find_namespace_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "gdet" / "__init__.py").read_text()).group(1)

setup(
    name="gdet",
    version=VERSION,
    description="GoogLeNet R-CNN detection and Inception classification, GPU-first",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # Namespace discovery so that gdet/assets (shipped weights and the sample image, no __init__.py) is a package.
    packages=find_namespace_packages(include=["gdet", "gdet.*"], exclude=["*.__pycache__"]),
    package_data={"gdet.assets": ["*"]},
    include_package_data=True,
    install_requires=[
        # README pins the matched pair torch==2.14.1 torchvision==0.29.1; the ranges here admit it.
        "torch>=2.1",
        "torchvision>=0.16",
        "opencv-contrib-python-headless>=4.8",
        "selectivesearch>=0.4",
        "pycocotools>=2.0.6",
        "numpy>=1.23",
        "click>=8.0",
        "pyyaml>=6.0",
        "tqdm>=4.60",
        "matplotlib>=3.6",
        "scikit-image>=0.21",
        "pillow>=9.0",
    ],
    extras_require={
        "export": ["onnx>=1.14", "onnxruntime>=1.16"],   # gdet export --format onnx
        "tensorboard": ["tensorboard>=2.10"],             # tensorboard: true in a training config
        "bench": ["faster-coco-eval>=1.8"],               # the second COCO peer in gdet bench eval
        "dev": ["pytest>=7", "onnx>=1.14", "onnxruntime>=1.16", "tensorboard>=2.10", "faster-coco-eval>=1.8"],
    },
    entry_points={"console_scripts": ["gdet=gdet.cli:main"]},
)
