"""keras-kd: knowledge distillation for Keras 3 / TensorFlow."""

from setuptools import find_packages, setup

setup(
    name="keras-kd",
    version="0.3.0",
    description="Knowledge distillation for Keras 3: Hinton KD, feature distillation, "
    "ensemble, student-friendly teachers and online ensembles, inside model.fit.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["keras_kd", "keras_kd.*", "trainers", "trainers.*"]),
    package_data={"trainers": ["configs/*.yaml"]},
    install_requires=[
        # Plain `tensorflow` on Linux pulls no CUDA libraries; GPUs need the
        # `gpu` extra below (tensorflow[and-cuda]).
        "tensorflow>=2.21,<2.22",
        "keras>=3.15,<4",
        "tensorflow-datasets>=4.9.10,<5",
        "importlib_resources",  # tfds 4.9.10 imports it but does not declare it
        "tensorboard>=2.21,<2.22",
        "numpy>=1.26",
        "pyyaml>=6",
        "pydantic>=2.7,<3",
        "pillow>=10",  # reads image-folder headers (channel counts, unreadable files)
    ],
    extras_require={
        "gpu": ["tensorflow[and-cuda]>=2.21,<2.22"],
        "export": ["ai-edge-litert>=2.3"],
        "hub": ["keras-hub>=0.32"],  # KerasHub backbones from local presets
        "plots": ["matplotlib>=3.8", "scikit-learn>=1.4"],
        "dev": [
            "pytest>=8",
            "pytest-xdist>=3.5",  # scripts/test.sh runs the suite on two processes
            "ruff>=0.6",
            "ai-edge-litert>=2.3",
            "matplotlib>=3.8",
            "scikit-learn>=1.4",
        ],
    },
    entry_points={"console_scripts": ["keras-kd=trainers.cli:main"]},
    license="Apache-2.0",
)
