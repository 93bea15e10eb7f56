"""googlenet_tv and inception_v3 load torchvision weight files and then compute exactly what torchvision does."""

import torch
import torchvision

from gdet.backbones import BackboneOutput, build_backbone, count_parameters



def _tv_file(tmp_path, model, name):
    path = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), path)  # the format of torchvision's published weight files
    return path


def test_googlenet_tv_loads_a_torchvision_file_and_matches_it(tmp_path):
    # torchvision's pretrained configuration: aux heads in the file, transform_input=True.
    tv = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True, transform_input=True)
    model = build_backbone("googlenet_tv", weights=_tv_file(tmp_path, tv, "googlenet"))
    assert list(model.state_dict()) == list(tv.state_dict())
    assert count_parameters(model, include_aux=False) == 6_624_904
    assert count_parameters(model) == sum(p.numel() for p in tv.parameters())

    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref, out = tv.eval()(x), model.eval()(x)
    assert torch.equal(out, ref)

    # Training mode (batch statistics, dropout with the same seed, aux heads): same outputs, torchvision
    # returns them as (logits, aux2, aux1), gdet in network order.
    tv.train(), model.train()
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(5)
    ref = tv(x)
    torch.manual_seed(5)
    out = model(x)
    assert isinstance(out, BackboneOutput)
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.aux_logits[0], ref.aux_logits1, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.aux_logits[1], ref.aux_logits2, rtol=0, atol=1e-6)


def test_inception_v3_loads_a_torchvision_file_and_matches_it(tmp_path):
    tv = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=True, transform_input=True)
    model = build_backbone("inception_v3", weights=_tv_file(tmp_path, tv, "inception_v3"))
    assert list(model.state_dict()) == list(tv.state_dict())
    assert count_parameters(model) == sum(p.numel() for p in tv.parameters()) == 27_161_264

    tv.eval(), model.eval()
    x = torch.randn(1, 3, 139, 139)  # the same operators as at 299 px, at a quarter of the cost
    with torch.no_grad():
        assert torch.equal(model(x), tv(x))
        # The aux head on the 17x17 map of a 299 px input (the only size torchvision's head accepts).
        t = torch.randn(1, 768, 17, 17)
        assert torch.equal(model.AuxLogits(t), tv.AuxLogits(t))


def test_reset_classifier_replaces_torchvision_style_aux_classifiers():
    v3 = build_backbone("inception_v3")
    v3.reset_classifier(3)
    assert v3.fc.out_features == 3 and v3.AuxLogits.fc.out_features == 3
    g = build_backbone("googlenet_tv")
    g.reset_classifier(4)
    assert g.fc.out_features == 4 and g.aux1.fc2.out_features == 4 and g.aux2.fc2.out_features == 4
    assert g.aux1.fc1.out_features == 1024


def test_torchvision_file_without_aux_heads_needs_aux_logits_false(tmp_path):
    tv = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True, transform_input=True)
    path = _tv_file(tmp_path, tv, "noaux")
    model = build_backbone("googlenet_tv", aux_logits=False, weights=path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), tv.eval()(x))
