"""Every registered backbone: forward, backward, aux heads, metadata; the registry; weight files; `gdet models`."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from gdet import __version__
from gdet.backbones import (Backbone, BackboneOutput, build_backbone, count_macs, count_parameters,
                            list_backbones, register_backbone)
from gdet.backbones.cli import describe_backbone
from gdet.cli import main
from gdet.engine import save_checkpoint
from gdet.errors import CheckpointError, ConfigError, GdetError

ALL = list_backbones()
SMALL = 96  # every network works here; v3 / v4 / Inception-ResNet-v2 need >= 75 px


def smallest(name: str) -> int:
    """The cheapest input for training-mode tests: 75 px (the minimum) for the 299-px networks, else 64."""
    return 75 if name.startswith("inception") else 64



# Counted at 1000 classes: (params with aux heads, params without, multiply-adds at the default input size).
# References: googlenet - our reading of the paper's Table 1 (the paper: "1.5 billion multiply-adds");
# googlenet_tv / inception_v3 - torchvision's own models (checked against them in test_backbones_torchvision.py);
# bn_inception - the layer table of the BN paper's Figure 5 as in the Caffe release / Cadene's PyTorch port,
# which has 10,016 extra conv biases in front of its BN layers (11,295,240 there; ours omits the redundant
# biases); inception_v4 / inception_resnet_v2 - the widely reported 42,679,816 and 55,843,464 (TF-slim ports,
# timm), whose reported multiply-adds are 12.28 G and 13.18 G.
EXPECTED = {
    "googlenet": (13_378_280, 6_998_552, 1_582_671_872),
    "googlenet_tv": (13_004_888, 6_624_904, 1_498_376_192),
    "bn_inception": (11_285_224, 11_285_224, 2_032_600_064),
    "inception_v3": (27_161_264, 23_834_568, 5_713_216_096),
    "inception_v4": (42_679_816, 42_679_816, 12_253_974_624),
    "inception_resnet_v2": (55_843_464, 55_843_464, 13_155_794_016),
}


def test_registry_holds_the_whole_family():
    assert set(ALL) == set(EXPECTED)


def test_parameter_and_mac_counts_via_gdet_models_json():
    res = CliRunner().invoke(main, ["models", "--json", "-"])  # built and counted on the meta device: no arithmetic
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert [r["name"] for r in rows] == ALL
    assert {r["name"]: (r["params"], r["params_no_aux"], r["macs"]) for r in rows} == EXPECTED
    for r in rows:
        assert r["input_size"] == (299 if r["name"].startswith("inception") else 224) and r["stride"] == 32


def test_bn_inception_matches_the_caffe_layout_with_conv_biases():
    model = build_backbone("bn_inception")
    conv_biases = sum(m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert count_parameters(model) + conv_biases == 11_295_240


@pytest.mark.parametrize("name", ALL)
def test_metadata(name):
    model = build_backbone(name)
    assert isinstance(model, Backbone) and model.backbone_name == name
    assert model.stride == 32 and model.input_size == (299 if name.startswith("inception") else 224)
    assert model.feature_info[-1]["channels"] == model.out_channels
    assert model.feature_info[-1]["stride"] == model.stride
    assert [f["stride"] for f in model.feature_info] == sorted(f["stride"] for f in model.feature_info)
    pre = model.preprocessing()
    assert pre["input_size"] == model.input_size and pre["input_scale"] == 1.0 and len(pre["mean"]) == 3


@pytest.mark.parametrize("name", ALL)
def test_forward_default_size_and_feature_info(name):
    model = build_backbone(name).eval()
    size = model.input_size
    seen = {}
    for f in model.feature_info:  # every named stage: its output must have the advertised channels and stride
        model.get_submodule(f["name"]).register_forward_hook(lambda m, i, o, n=f["name"]: seen.setdefault(n, o))
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 1000) and torch.isfinite(out).all()
    for f in model.feature_info:
        fmap = seen[f["name"]]
        assert fmap.shape[1] == f["channels"], f
        # 'valid' convolutions of v3 / v4 / Inception-ResNet-v2 trim a few pixels before the last stage.
        assert all(0.9 * size / f["stride"] - 1 <= s <= math.ceil(size / f["stride"]) + 1
                   for s in fmap.shape[-2:]), (f, fmap.shape)
    last = seen[model.feature_info[-1]["name"]]
    assert last.shape[1] == model.out_channels
    # The last map: input / stride (floor or ceil) within 1, e.g. 7 at 224 px, 8 at 299 px.
    lo, hi = math.floor(size / model.stride) - 1, math.ceil(size / model.stride) + 1
    assert all(lo <= s <= hi for s in last.shape[-2:]), last.shape


@pytest.mark.parametrize("name", ALL)
def test_forward_small_size_and_determinism(name):
    model = build_backbone(name, num_classes=10).eval()
    x = torch.randn(1, 3, SMALL, SMALL)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
        head = model.forward_head(feats)
    assert feats.shape[1] == model.out_channels
    # Networks with 'valid' convolutions shrink to (SMALL - 75) // 32 + 1 = 1 at 96 px; the others keep ~96/32.
    assert all(1 <= s <= math.ceil(SMALL / model.stride) for s in feats.shape[-2:]), feats.shape
    assert isinstance(logits, torch.Tensor) and logits.shape == (1, 10)  # eval: no aux output
    assert torch.isfinite(logits).all()
    assert torch.equal(head, logits)  # two separate passes give bit-identical results in eval mode


@pytest.mark.parametrize("name", ALL)
def test_backward_every_parameter_gets_a_gradient(name):
    model = build_backbone(name)
    model.reset_classifier(5)  # main and aux classifiers
    model.train()
    size = smallest(name)
    x = torch.randn(2, 3, size, size)  # batch 2: BN needs > 1 value per channel on 1x1 maps
    target = torch.tensor([1, 4])
    out = model(x)
    n_aux = len(model.aux_heads())
    if n_aux:
        assert isinstance(out, BackboneOutput) and len(out.aux_logits) == n_aux
        logits, aux = out.logits, out.aux_logits
    else:
        assert isinstance(out, torch.Tensor)
        logits, aux = out, ()
    assert logits.shape == (2, 5) and all(a.shape == (2, 5) for a in aux)
    loss = F.cross_entropy(logits, target) + model.aux_weight * sum(F.cross_entropy(a, target) for a in aux)
    assert torch.isfinite(loss)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.num_classes == 5


@pytest.mark.parametrize("name", [n for n in ALL if EXPECTED[n][0] != EXPECTED[n][1]])
def test_aux_heads_can_be_left_out(name):
    model = build_backbone(name, aux_logits=False).train()
    assert model.aux_heads() == [] and count_parameters(model) == EXPECTED[name][1]
    out = model(torch.randn(2, 3, smallest(name), smallest(name)))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1000)


@pytest.mark.parametrize("name", [n for n in ALL if EXPECTED[n][0] == EXPECTED[n][1]])
def test_networks_without_aux_heads_reject_them(name):
    with pytest.raises(ConfigError, match="no aux heads"):
        build_backbone(name, aux_logits=True)


def test_input_normalisation_conventions():
    x01 = torch.rand(2, 3, 8, 8)
    v4 = build_backbone("inception_v4")
    torch.testing.assert_close(v4.normalize(x01), x01 * 2 - 1)
    tv = build_backbone("googlenet_tv")
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(tv.normalize(x01), (x01 - mean) / std)
    # transform_input turns the ImageNet-normalised input into the (x - 0.5) / 0.5 the ported weights expect.
    from gdet.backbones.googlenet_tv import imagenet_to_half_range

    torch.testing.assert_close(imagenet_to_half_range(tv.normalize(x01)), x01 * 2 - 1)


def test_residual_scales_of_inception_resnet_v2():
    model = build_backbone("inception_resnet_v2")
    scales = [[b.scale for b in stage] for stage in (model.stage_a, model.stage_b, model.stage_c)]
    assert scales[0] == [0.17] * 10 and scales[1] == [0.10] * 20 and scales[2] == [0.20] * 9 + [1.0]
    assert not model.stage_c[-1].relu


def test_count_macs_of_paper_googlenet_is_about_1_5_billion():
    macs = count_macs(build_backbone("googlenet"), 224)  # a real CPU pass ...
    assert macs == EXPECTED["googlenet"][2] and 1.5e9 <= macs < 1.6e9
    assert describe_backbone("googlenet")["macs"] == macs  # ... counts what `gdet models` counts on meta


# --- registry -----------------------------------------------------------------------------------------------

def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(GdetError, match=r"unknown backbone 'resnet50'; known backbones: .*googlenet_tv.*"):
        build_backbone("resnet50")


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("googlenet")(lambda **kw: None)
    assert list_backbones() == ALL


# --- weight files ---------------------------------------------------------------------------------------------

def _eval_out(model, size=64):
    torch.manual_seed(1)
    with torch.no_grad():
        return model.eval()(torch.randn(1, 3, size, size))


def test_weights_round_trip_gdet_format_and_plain_state_dict(tmp_path):
    src = build_backbone("googlenet", num_classes=7)
    save_checkpoint({"model": src.state_dict(), "backbone": "googlenet"}, tmp_path / "gdet.pth")
    torch.save(src.state_dict(), tmp_path / "plain.pth")
    ref = _eval_out(src)
    for path in (tmp_path / "gdet.pth", tmp_path / "plain.pth"):
        torch.manual_seed(123)  # a different random init, overwritten by the file
        loaded = build_backbone("googlenet", num_classes=7, weights=path)
        assert torch.equal(_eval_out(loaded), ref)


def test_weights_mismatch_names_missing_and_unexpected_keys(tmp_path):
    save_checkpoint({"model": build_backbone("bn_inception").state_dict(), "backbone": "bn_inception"},
                    tmp_path / "bn.pth")
    with pytest.raises(CheckpointError) as e:
        build_backbone("googlenet_tv", weights=tmp_path / "bn.pth")
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'bn.pth'}: weights do not fit GoogLeNetTV (checkpoint is for backbone "
                          "'bn_inception')")
    assert "missing keys (350): conv3.conv.weight" in msg and "unexpected keys (402): conv2_reduce.conv.weight" in msg
    torch.save(build_backbone("googlenet", num_classes=3).state_dict(), tmp_path / "c3.pth")
    with pytest.raises(CheckpointError, match=r"shape mismatch .*fc\.weight \(3, 1024\) vs \(1000, 1024\)"):
        build_backbone("googlenet", weights=tmp_path / "c3.pth")


# --- CLI ----------------------------------------------------------------------------------------------------

def test_cli_help_and_version():
    runner = CliRunner()
    res = runner.invoke(main, ["--help"])
    assert res.exit_code == 0 and "models" in res.output
    res = runner.invoke(main, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output


def test_cli_models_table():
    res = CliRunner().invoke(main, ["models", "googlenet", "inception_v3"])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 4 and lines[0].split("|")[1].strip() == "backbone"
    row = next(line for line in lines if line.startswith("| googlenet "))
    assert [c.strip() for c in row.strip("|").split("|")] == [
        "googlenet", "13,378,280", "6,998,552", "2", "1.58", "224", "32", "1024"]
    assert "| inception_v3 " in lines[3] and "27,161,264" in lines[3] and "5.71" in lines[3]


def test_cli_models_unknown_name_is_a_one_line_error():
    res = CliRunner().invoke(main, ["models", "alexnet"])
    assert res.exit_code == 1
    err = res.stderr.strip()
    assert err.startswith("error: unknown backbone 'alexnet'") and "googlenet" in err and "\n" not in err
