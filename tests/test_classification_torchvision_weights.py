"""`gdet classify` on a plain torchvision checkpoint file, named with --backbone."""
import json

import cv2
import numpy as np
import torch
import torchvision
from click.testing import CliRunner

from gdet.classification import load_classifier
from gdet.cli import main as gdet_main


def _torchvision_file(tmp_path, num_classes=5):
    torch.manual_seed(3)
    ref = torchvision.models.googlenet(weights=None, num_classes=num_classes, aux_logits=True, init_weights=True,
                                       transform_input=True)
    path = tmp_path / "googlenet-tv.pth"
    torch.save(ref.state_dict(), path)
    return ref.eval(), path


def test_plain_torchvision_file_loads_with_backbone_and_matches_torchvision(tmp_path):
    ref, path = _torchvision_file(tmp_path)
    clf = load_classifier(path, backbone="googlenet_tv", class_names=list("abcde"))
    assert clf.class_names == list("abcde") and clf.input_size == 224
    img = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    # The independent reference: torchvision's own network on ImageNet-normalised input.
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref((img.float() / 255 - mean) / std)
    torch.testing.assert_close(clf.logits(img), expected, rtol=1e-4, atol=1e-4)


def test_cli_classify_plain_file_and_errors(tmp_path):
    _, path = _torchvision_file(tmp_path)
    image = tmp_path / "x.jpg"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8))
    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\nd\ne\n")
    runner = CliRunner()
    res = runner.invoke(gdet_main, ["classify", "--image", str(image), "--weights", str(path), "--backbone",
                                    "googlenet_tv", "--class-names", str(names), "--top-k", "2", "--json", "-"])
    assert res.exit_code == 0, res.output
    top = json.loads(res.output)[0]["top"]
    assert len(top) == 2 and {t["class"] for t in top} <= set("abcde") and top[0]["prob"] >= top[1]["prob"]
    # Without --backbone a plain file is refused with a hint; a wrong class-name count names the file.
    res = runner.invoke(gdet_main, ["classify", "--image", str(image), "--weights", str(path)])
    assert res.exit_code == 1 and "--backbone" in res.output and str(path) in res.output
    names.write_text("a\nb\n")
    res = runner.invoke(gdet_main, ["classify", "--image", str(image), "--weights", str(path), "--backbone",
                                    "googlenet_tv", "--class-names", str(names)])
    assert res.exit_code == 1 and "5 classes but 2 class names" in res.output
