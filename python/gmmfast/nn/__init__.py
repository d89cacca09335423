"""gmmfast.nn: torch.nn modules built on gmmfast's Gaussian-mixture ops.

Needs PyTorch (``pip install gmmfast[torch]``).
"""

from .classifier import GaussianMixtureClassifier, LGMLoss
from .fisher import FisherVectorPool, NetVLAD
from .conv import GaussianMixtureConv2d
from .mdn import GeneratedSequence, MDNHead, MDNOutput, MDNRNN
