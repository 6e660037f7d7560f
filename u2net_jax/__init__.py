"""u2net_jax: 3D U²-Net (Huang et al., MICCAI 2019) in JAX/Flax."""

__version__ = "0.1.0"
