"""bnstudy: why does BatchNorm standardize before its learnable affine map? Measured."""

from bnstudy.threads import prepare_openmp

__version__ = "0.1.0"

# before any torch import of ours: OpenMP reads its wait policy once, when torch loads (see bnstudy.threads)
prepare_openmp()
