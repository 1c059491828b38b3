"""ganforge: a plugin-based GAN framework for PyTorch.

Importing ganforge is cheap: torch is imported only by the parts that need it.
"""
from ganforge.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
