"""ganforge: a plugin-based GAN framework for PyTorch.

Importing ganforge is cheap: torch is imported only by the parts that need it. Everything a
user or a plugin author needs imports from here::

    import ganforge
    run = ganforge.train(arch="dcgan", loss="lsgan", steps=1000)

    from ganforge import hookimpl, GANLoss, Callback, DataSpec, Data, UsageError
"""
from ganforge.api import config_for, evaluate, export, load, train
from ganforge.errors import UsageError
from ganforge.hookspecs import hookimpl
from ganforge.interfaces import (Augmentation, Callback, Data, DataSpec, FeatureExtractor, GANLoss,
                                 StreamingData)
from ganforge.version import __version__

__all__ = ["__version__", "train", "config_for", "load", "export", "evaluate", "hookimpl", "UsageError", "DataSpec", "Data",
           "StreamingData", "GANLoss", "FeatureExtractor", "Callback",
           "Augmentation"]
