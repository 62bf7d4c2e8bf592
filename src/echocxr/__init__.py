"""echocxr: fast chest X-ray report generation with one-step block diffusion."""

__version__ = "0.1.0"
