import pytest
import torch

from lenet_export.errors import ConfigError
from lenet_export.models import VARIANTS, build_model, count_parameters, get_variant

# Pinned: the classic counts come from their published architectures.
EXPECTED = {"lenet-classic": 44_426, "lenet5": 61_706, "lenet-cifar": 121_182,
            "lenet-modern": 232_378, "lenet-modern-cifar": 102_810}


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


def test_flip_tta_averages_the_mirror_image_in_eval_mode_only():
    torch.manual_seed(0)
    args = dict(VARIANTS["lenet-modern-cifar"].args)
    assert args["flip_tta"]
    model = build_model(args)
    plain = build_model({**args, "flip_tta": False})
    plain.load_state_dict(model.state_dict())  # the same weights: test-time flip adds none
    x = torch.randn(4, 3, 32, 32)
    model.train(), plain.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(1)
    assert torch.equal(a, plain(x))  # training sees one view
    model.eval(), plain.eval()
    with torch.no_grad():
        want = (plain(x) + plain(x.flip(3))) * 0.5
        assert torch.allclose(model(x), want, atol=1e-6)
        assert not torch.allclose(plain(x), want, atol=1e-3)  # the mirror image changes the logits
        assert torch.allclose(model(x.flip(3)), model(x), atol=1e-5)  # and the result is mirror-invariant


def test_pool_first_pools_before_batch_norm_and_activation():
    args = dict(VARIANTS["lenet-modern"].args)
    assert args["pool_first"]
    kinds = [type(m).__name__ for m in build_model(args).features]
    assert kinds[:4] == ["Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU"] and len(kinds) == 12
    kinds = [type(m).__name__ for m in build_model({**args, "pool_first": False}).features]
    assert kinds[:4] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]


def test_pool_first_is_the_same_function_without_batch_norm_only():
    """Max pooling commutes with a monotonic activation, not with a batch norm of negative scale: the order
    makes a different model only with batch norm."""
    torch.manual_seed(0)
    x = torch.randn(4, 1, 28, 28)
    for bn, same in ((False, True), (True, False)):
        args = {**VARIANTS["lenet-modern"].args, "batch_norm": bn, "flip_tta": False}
        a, b = build_model({**args, "pool_first": True}).eval(), build_model({**args, "pool_first": False}).eval()
        for m in a.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # scales of either sign, as training leaves them
                torch.nn.init.uniform_(m.weight, -1, 1)
        weighted = [m for m in a.modules() if list(m.parameters(recurse=False))]
        for src, dst in zip(weighted, [m for m in b.modules() if list(m.parameters(recurse=False))]):
            dst.load_state_dict(src.state_dict())  # the same layers, at other positions in `features`
        with torch.no_grad():
            assert torch.allclose(a(x), b(x), atol=1e-5) == same
