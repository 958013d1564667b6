"""Normalization variants beyond bn / affine / none that isolate what standardization buys."""
