"""Install nri_modular: neural relational inference as modular meta-learning in JAX."""

from setuptools import find_packages, setup

setup(
    name="nri_modular",
    version="0.1.0",
    description="Neural relational inference as modular meta-learning, in JAX",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["nri_modular", "nri_modular.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax",
        "jaxlib",
        "flax",
        "optax",
        "jraph==0.0.6.dev0",
        "numpy",
        "absl-py",
        "orbax-checkpoint",
    ],
    extras_require={
        # matplotlib: tests draw the figures; pytest-xdist: the suite runs on every core;
        # scipy: the independent ODE reference the Kuramoto simulator is tested against
        "test": ["pytest", "pytest-xdist", "chex", "ruff", "matplotlib", "scipy"],
        "plots": ["matplotlib"],
        "tensorboard": ["tensorboardX"],
    },
)
