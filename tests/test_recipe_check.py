"""The recipe check's plain-torch ResNet-20 is the same network as bnstudy's, layer by layer."""
import importlib.util

import torch

from bnstudy.config import ModelConfig, NormConfig
from bnstudy.models import build_model

from .conftest import ROOT
from .test_models import RGB, model_cfg


def load_script():
    spec = importlib.util.spec_from_file_location("recipe_check", ROOT / "scripts" / "recipe_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_reference_resnet20_matches_bnstudys_layer_shapes():
    ref = load_script().resnet20()
    ours = build_model(ModelConfig(**{**model_cfg("resnet").__dict__, "width": 16}), NormConfig(name="bn"), RGB, 10)
    shapes = lambda net: sorted(tuple(p.shape) for p in net.parameters())  # noqa: E731
    assert shapes(ref) == shapes(ours)
    assert sum(p.numel() for p in ref.parameters()) == 272474
    assert ref(torch.randn(4, *RGB)).shape == (4, 10)
