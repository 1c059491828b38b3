"""ganforge: a plugin-based GAN framework for PyTorch.

Importing ganforge is cheap: torch is imported only by the parts that need it. Everything a
user or a plugin author needs imports from here::

    import ganforge
    run = ganforge.train(arch="dcgan", loss="lsgan", steps=1000)

    from ganforge import hookimpl, GANLoss, Callback, DataSpec, Data, UsageError
"""
__version__ = "0.1.0"

from ganforge.api import config_for, evaluate, export, load, train  # noqa: E402
from ganforge.errors import UsageError  # noqa: E402
from ganforge.hookspecs import hookimpl  # noqa: E402
from ganforge.interfaces import (Augmentation, Callback, Data, DataSpec, FeatureExtractor, GANLoss,  # noqa: E402
                                 StreamingData)

__all__ = ["__version__", "train", "config_for", "load", "export", "evaluate", "hookimpl", "UsageError", "DataSpec", "Data",
           "StreamingData", "GANLoss", "FeatureExtractor", "Callback",
           "Augmentation"]
