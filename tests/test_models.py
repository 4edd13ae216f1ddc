import pytest
import torch

from lenet_export.errors import ConfigError
from lenet_export.models import VARIANTS, build_model, count_parameters, get_variant

# Pinned: the classic counts come from their published architectures.
EXPECTED = {"lenet-classic": 44_426, "lenet5": 61_706, "lenet-cifar": 121_182,
            "lenet-modern": 220_330, "lenet-modern-cifar": 156_186}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_parameter_counts_and_output_shape(name):
    v = VARIANTS[name]
    model = build_model(v.args).eval()
    assert count_parameters(model) == EXPECTED[name]
    x = torch.zeros(3, v.args["in_channels"], v.args["image_size"], v.args["image_size"])
    assert model(x).shape == (3, 10)


def test_classic_lenet_layers():
    m = build_model(VARIANTS["lenet-classic"].args)
    convs = [l for l in m.modules() if isinstance(l, torch.nn.Conv2d)]
    fcs = [l for l in m.modules() if isinstance(l, torch.nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 6, (5, 5)), (6, 16, (5, 5))]
    assert [(f.in_features, f.out_features) for f in fcs] == [(256, 120), (120, 84), (84, 10)]
    assert sum(isinstance(l, torch.nn.Sigmoid) for l in m.modules()) == 4
    assert sum(isinstance(l, torch.nn.MaxPool2d) for l in m.modules()) == 2


def test_lenet5_is_padded_average_pooling():
    m = build_model(VARIANTS["lenet5"].args)
    convs = [l for l in m.modules() if isinstance(l, torch.nn.Conv2d)]
    assert convs[0].padding == (2, 2) and convs[1].padding == (0, 0)
    assert sum(isinstance(l, torch.nn.AvgPool2d) for l in m.modules()) == 2
    assert [l.in_features for l in m.modules() if isinstance(l, torch.nn.Linear)][0] == 400


def test_unknown_model_lists_choices():
    with pytest.raises(ConfigError, match="lenet-classic"):
        get_variant("resnet50")
