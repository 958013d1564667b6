"""bnstudy: why does BatchNorm standardize before its learnable affine map? Measured."""

__version__ = "0.1.0"
