"""Model shapes and the last-linear embedding contract of lcmat.models."""

import pytest
import torch
import torch.nn as nn

from lcmat.models import ConvNet3, LeNet, MLP, ResNet18, find_last_linear, get_model

SHAPES = [(3, 32), (1, 28)]
NAMES = ["resnet18", "convnet3", "lenet", "mlp"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels,size", SHAPES)
def test_output_shapes(name, channels, size):
    torch.manual_seed(0)
    model = get_model(name, 7, channels, size).eval()
    with torch.no_grad():
        logits = model(torch.randn(3, channels, size, size))
    assert logits.shape == (3, 7)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels,size", SHAPES)
def test_last_linear_receives_the_embedding(name, channels, size):
    torch.manual_seed(0)
    model = get_model(name, 5, channels, size).eval()
    layer = find_last_linear(model)
    assert layer is model.fc
    captured = {}
    handle = layer.register_forward_hook(lambda m, inputs, output: captured.update(h=inputs[0], z=output))
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        logits = model(x)
        manual = model.embed(x)
    handle.remove()
    assert captured["h"].shape == (2, model.embedding_dim)
    torch.testing.assert_close(captured["h"], manual)
    torch.testing.assert_close(captured["z"], logits)
    torch.testing.assert_close(manual @ layer.weight.T + layer.bias, logits, rtol=1e-5, atol=1e-5)


def test_resnet18_is_the_cifar_variant():
    model = ResNet18(10)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model.embedding_dim == 512
    assert ResNet18(10, in_channels=1).conv1.in_channels == 1


def test_convnet3_uses_instance_norm_and_average_pooling():
    model = ConvNet3(10, 3, 32, width=16)
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 3 and all(m.num_groups == m.num_channels == 16 and m.affine for m in norms)
    assert sum(isinstance(m, nn.AvgPool2d) for m in model.modules()) == 3
    assert model.embedding_dim == 16 * 4 * 4
    assert ConvNet3(10, 1, 28).embedding_dim == 128 * 3 * 3
    assert ConvNet3(10, 1, 8, width=4).embedding_dim == 4


def test_lenet_and_mlp_dimensions():
    assert LeNet(10).fc.in_features == 84
    assert LeNet(10, 3, 32).hidden[0].in_features == 16 * 6 * 6
    mlp = MLP(4, 64, hidden=32)
    assert mlp(torch.randn(2, 1, 8, 8)).shape == (2, 4) and mlp.embedding_dim == 32
    assert get_model("mlp", 3, 1, 8, hidden=16).hidden[1].in_features == 64


def test_embeddings_of_relu_models_are_non_negative():
    torch.manual_seed(0)
    for model in (ConvNet3(3, 1, 8, width=8), LeNet(3), MLP(3, 64), ResNet18(3)):
        size = 8 if isinstance(model, (ConvNet3, MLP)) else 28
        with torch.no_grad():
            h = model.eval().embed(torch.randn(2, 1 if not isinstance(model, ResNet18) else 3, size, size))
        assert (h >= 0).all()


def test_find_last_linear_errors_and_nested_models():
    with pytest.raises(ValueError, match="model: .*no nn.Linear"):
        find_last_linear(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()))
    with pytest.raises(ValueError, match="model"):
        find_last_linear("not a model")
    nested = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.ReLU(), nn.Linear(4, 2)))
    assert find_last_linear(nested) is nested[1][1]


def test_get_model_argument_errors():
    with pytest.raises(ValueError, match="name"):
        get_model("vgg", 10, 3, 32)
    with pytest.raises(ValueError, match="num_classes"):
        get_model("mlp", 0, 1, 8)
    with pytest.raises(ValueError, match="im_size"):
        get_model("lenet", 10, 1, 8)
    with pytest.raises(ValueError, match="im_size"):
        get_model("convnet3", 10, 1, 4)
    assert isinstance(get_model("ConvNet", 10, 1, (28, 28)), ConvNet3)
