"""hmedit: hierarchical, text-guided image editing and generation with latent diffusion models."""

__version__ = "0.1.0"
