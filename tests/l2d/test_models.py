"""Models: every backbone family builds and trains with the label-wise head; local weights load."""

import pytest
import timm
import torch

from l2d.models import ModelOutput, UnknownModelError, build_model, count_parameters

BACKBONES = [
    ("resnet18", {}),
    ("resnet34", {}),
    ("resnet50", {}),
    ("mobilenetv2_100", {}),
    ("repvgg_a0", {}),
    ("efficientnet_b0", {}),
    ("swin_tiny_patch4_window7_224", {"img_size": 64, "window_size": 2}),
    ("vit_tiny_patch16_224", {"img_size": 64}),
]


@pytest.mark.parametrize("backbone,kwargs", BACKBONES, ids=[b for b, _ in BACKBONES])
def test_backbone_shapes_and_backward(backbone, kwargs):
    torch.manual_seed(0)
    model = build_model(backbone, num_classes=10, embed_dim=64, **kwargs)
    output = model(torch.randn(2, 3, 64, 64))
    assert isinstance(output, ModelOutput)
    assert output.logits.shape == (2, 10)
    assert output.label_embeddings.shape == (2, 10, 64)
    assert output.features.shape == (2, model.backbone.num_features)
    output.logits.sum().backward()
    assert model.head.class_queries.weight.grad is None  # the class queries are frozen
    assert model.head.classifier_weight.grad is not None


def test_default_head_and_classifier():
    model = build_model("resnet18", num_classes=10)
    assert model.head.classifier_weight.shape == (10, 768)
    assert torch.all(model.head.classifier_bias == 0)
    assert not model.head.class_queries.weight.requires_grad
    model.eval()
    output = model(torch.randn(3, 3, 32, 32))
    # h is per class: logit_k = <E_k, w_k> + b_k.
    expected = (output.label_embeddings * model.head.classifier_weight).sum(-1) + model.head.classifier_bias
    torch.testing.assert_close(output.logits, expected)
    assert count_parameters(model) > count_parameters(model.backbone)


def test_unknown_backbone_suggests_close_matches():
    with pytest.raises(UnknownModelError, match="resnet34"):
        build_model("resnet_34", num_classes=10)


def test_loads_a_timm_backbone_state_dict(tmp_path):
    source = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model = build_model("resnet18", num_classes=5, pretrained=str(path))
    torch.testing.assert_close(model.backbone.conv1.weight, source.conv1.weight)
    torch.testing.assert_close(model.backbone.layer4[1].bn2.running_mean, source.layer4[1].bn2.running_mean)


def test_loads_our_own_checkpoint(tmp_path):
    model = build_model("resnet18", num_classes=5, embed_dim=32)
    path = tmp_path / "model.pth"
    torch.save({"model": model.state_dict(), "epoch": 3}, path)
    loaded = build_model("resnet18", num_classes=5, embed_dim=32, pretrained=path)
    torch.testing.assert_close(loaded.head.classifier_weight, model.head.classifier_weight)


def test_bad_pretrained_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_model("resnet18", num_classes=5, pretrained=tmp_path / "missing.pth")
    wrong = tmp_path / "resnet50.pth"
    torch.save(timm.create_model("resnet50", pretrained=False).state_dict(), wrong)
    with pytest.raises(ValueError, match="wrong shape for resnet18"):
        build_model("resnet18", num_classes=5, pretrained=wrong)
    junk = tmp_path / "junk.pth"
    torch.save({"epoch": 3}, junk)
    with pytest.raises(ValueError, match="not a state dict"):
        build_model("resnet18", num_classes=5, pretrained=junk)
