"""ganbench: a GAN experiment runner for studying losses and Lipschitz constraints."""

__version__ = "0.1.0"
