"""The `gdet` front door: a fast, torch-free `--help`, every command and tools/ script reachable with `-h`,
suggestions for misspelt commands and options, and one `error:` line with exit code 1 on bad input."""
import json
import runpy
import subprocess
import sys
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

from gdet.cli import COMMANDS, main
from gdet.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
TOOLS = sorted((ROOT / "tools").glob("*.py"))


def test_help_lists_every_command_without_importing_torch():
    code = ("import sys\nfrom gdet.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit as e:\n"
            "    assert e.code == 0, e.code\nprint('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
            "print(sorted(m for m in sys.modules if m.startswith('gdet')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "NO-TORCH" in r.stdout
    assert r.stdout.splitlines()[-1] == str(["gdet", "gdet.cli", "gdet.errors", "gdet.io", "gdet.memory"])
    for name, (_, help_) in COMMANDS.items():
        assert f"  {name} " in r.stdout, name
        assert help_.split()[0] in r.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_resolves_to_its_name_and_has_short_help(name):
    target, help_ = COMMANDS[name]
    module = target.split(":")[0]
    if module == "gdet.export.cli" and not (ROOT / "gdet" / "export" / "cli.py").is_file():
        r = CliRunner().invoke(main, [name, "-h"])
        assert r.exit_code == 1 and r.output.startswith("error: command 'export' is not available")
        return
    ctx = click.Context(main)
    cmd = main.get_command(ctx, name)
    assert isinstance(cmd, click.Command) and cmd.name == name
    assert len(help_) <= 70
    r = CliRunner().invoke(main, [name, "-h"])
    assert r.exit_code == 0 and r.output.startswith(f"Usage: main {name}"), r.output


@pytest.mark.parametrize("script", TOOLS, ids=lambda p: p.name)
def test_every_tool_script_answers_dash_h(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(script), "-h"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(script), run_name="__main__")
    assert e.value.code in (0, None)
    out = capsys.readouterr().out
    assert out.startswith("Usage: ") and "-h, --help" in out


@pytest.mark.parametrize("args, hint", [
    (["detct"], "Did you mean 'detect'?"),
    (["proposals", "evl"], "Did you mean 'eval'?"),
    (["train", "dett"], "Did you mean 'det'?"),
    (["detect", "--imag", "x"], "Did you mean '--image'?"),
    (["eval", "--gt", "x"], "--data"),
    (["classify", "--topk", "3"], "--top-k"),
])
def test_misspelt_commands_and_options_get_a_suggestion(args, hint):
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and hint in r.output, r.output


def test_tool_scripts_print_bad_values_as_one_line_and_keep_usage_errors(tmp_path):
    script = str(ROOT / "tools" / "test_det.py")
    bad = subprocess.run([sys.executable, script, "--data", str(tmp_path), "--max-size", "-3"], capture_output=True,
                         text=True, cwd=tmp_path)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == ["error: --max-size: -3 is not in the range x>=1"]
    # Grammar stays click's usage error (exit 2): a misspelt option and a missing required one.
    typo = subprocess.run([sys.executable, script, "--dat", "x"], capture_output=True, text=True, cwd=tmp_path)
    assert typo.returncode == 2 and "Did you mean one of: '--data'" in typo.stderr
    missing = CliRunner().invoke(main, ["detect", "--weights", "w.pth"])
    assert missing.exit_code == 2 and "Missing option '--image'" in missing.output


def test_shared_vocabulary_across_commands():
    """The same idea has one option name in every command that has it."""
    ctx = click.Context(main)
    names = {}
    for cmd_path in (["detect"], ["test"], ["demo"], ["fuse"], ["eval"], ["classify"], ["classify", "eval"],
                     ["models"], ["proposals", "compute"], ["proposals", "eval"], ["data", "convert"],
                     ["data", "browse"], ["bench", "proposals"]):
        cmd = main
        for part in cmd_path:
            cmd = cmd.get_command(ctx, part)
        names[" ".join(cmd_path)] = {o for p in cmd.params for o in getattr(p, "opts", [])}
    every = set().union(*names.values())
    for old in ("--gt", "--src", "--multibox-weights", "--proposal-opt", "--topk", "--nms"):
        assert old not in every, old
    for cmd in ("detect", "test", "proposals compute"):
        assert "--opt" in names[cmd] and "--proposal-weights" in names[cmd], cmd
    for cmd in ("test", "fuse", "eval", "proposals compute", "proposals eval", "data convert", "data browse",
                "classify eval"):
        assert "--data" in names[cmd], cmd
    for cmd in ("detect", "test", "fuse", "eval", "classify", "classify eval", "models", "proposals eval",
                "bench proposals"):
        assert "--json" in names[cmd], cmd
    for cmd in ("detect", "test", "demo", "classify", "classify eval"):
        assert {"--device", "--precision", "--compile", "--cuda-graphs"} <= names[cmd], cmd
    for cmd in ("detect", "test", "demo"):
        assert {"--max-proposals", "--score-thr", "--nms-iou", "--max-dets", "--device", "--precision", "--scales",
                "--max-size"} <= names[cmd]
    for cmd in ("test", "fuse", "eval"):  # metrics: one comma-separated option
        assert "--metrics" in names[cmd], cmd
    for cmd in ("test", "classify eval", "proposals compute", "proposals eval", "data browse"):  # first N images
        assert "--limit" in names[cmd], cmd
    for cmd in ("detect", "test", "classify eval", "proposals compute", "bench proposals"):  # worker processes
        assert "--workers" in names[cmd], cmd


@pytest.mark.parametrize("args, needle", [
    (["detect", "--image", "{tmp}/none.jpg", "--weights", "{tmp}/w.pth"], "none.jpg: image not found"),
    (["detect", "--image", "{tmp}/*.png", "--weights", "{tmp}/w.pth"], "no image matches this pattern"),
    (["test", "--data", "{tmp}/nothing", "--weights", "{tmp}/w.pth", "--out", "{tmp}/d.json"], "nothing"),
    (["test", "--data", "{tmp}", "--weights", "{tmp}/w.pth", "--out", "{tmp}/d.json", "--metrics", "map"],
     "unknown metric 'map'"),
    (["fuse", "{tmp}/a.json", "--data", "{tmp}/nothing", "--out", "{tmp}/f.json"], "nothing"),
    (["eval", "--data", "{tmp}/nothing", "--dets", "{tmp}/a.json"], "nothing"),
    (["proposals", "eval", "--data", "{tmp}/nothing", "--proposals", "{tmp}/p.npz"], "nothing"),
    (["proposals", "eval", "--data", "{tmp}", "--proposals", "{tmp}/p.npz", "--counts", "ten"], "--counts"),
    (["proposals", "info", "{tmp}/p.npz"], "p.npz"),
    (["classify", "--image", "{tmp}/none.jpg", "--weights", "{tmp}/w.pth"], "none.jpg: image not found"),
    (["classify", "eval", "--data", "{tmp}", "--weights", "{tmp}/w.pth", "--crops", "7"], "1, 10 or 144"),
    (["models", "no_such_net"], "no_such_net"),
    (["detect", "--image", "{tmp}/none.jpg", "--weights", "{tmp}/w.pth", "--nms-iou", "nan"],
     "--nms-iou: 'nan' is not in the range"),
    (["fuse", "{tmp}/a.json", "--data", "{tmp}", "--out", "{tmp}/f.json", "--iou", "nan"], "--iou: 'nan'"),
    (["demo", "--weights", "{tmp}/w.pth", "--out", "{tmp}/o"], "w.pth: detector checkpoint not found"),
    (["train", "cls", "--config", "{tmp}/none.yaml"], "none.yaml"),
    (["train", "det", "no_such_key=1"], "no_such_key"),
    (["train", "multibox", "epochz=3"], "epochz"),
    (["bench", "proposals", "--size", "big"], "expected WxH"),
    (["data", "browse", "--data", "{tmp}/nothing", "--out", "{tmp}/o"], "nothing"),
    # invalid option values: the option and click's reason, no usage block
    (["detect", "--image", "x.jpg", "--weights", "w.pth", "--mode", "fast"],
     "error: --mode: 'fast' is not one of 'rcnn', 'shared'"),
    (["test", "--data", "{tmp}", "--weights", "w.pth", "--max-size", "-5"], "error: --max-size: -5 is not in the range"),
    (["bench", "detect", "--repeats", "many"], "error: --repeats: 'many' is not a valid integer"),
])
def test_bad_input_is_one_error_line_and_exit_1(tmp_path, args, needle):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1, (args, r.output)
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (args, r.output)


def test_classify_files_folders_globs_and_json_file(tmp_path):
    """`gdet classify` takes what `gdet detect` takes (one helper); --json FILE holds what the text shows."""
    import json
    import shutil

    assets = ROOT / "gdet" / "assets"
    (tmp_path / "imgs").mkdir()
    for name in ("a.jpg", "b.jpg"):
        shutil.copy(assets / "sample.jpg", tmp_path / "imgs" / name)
    r = CliRunner().invoke(main, ["classify", "--image", str(tmp_path / "imgs"), "--image",
                                  str(tmp_path / "imgs" / "a*.jpg"), "--weights",
                                  str(assets / "classifier_synth_fp16.pth"), "--top-k", "2", "--device", "cpu",
                                  "--json", str(tmp_path / "c.json")])
    assert r.exit_code == 0, r.output
    assert r.stderr.count("trained on synthetic shapes only") == 1
    rows = json.loads((tmp_path / "c.json").read_text())
    assert [Path(row["image"]).name for row in rows] == ["a.jpg", "b.jpg", "a.jpg"]
    assert rows[0]["top"] == rows[1]["top"] == rows[2]["top"] and len(rows[0]["top"]) == 2
    first = rows[0]["top"][0]
    assert f"{first['prob']:8.4f}  {first['class']}" in r.stdout


class _Unreadable(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        raise DataError(f"img{i}.jpg: cannot decode image")


def test_an_error_in_a_loader_worker_is_one_line(capsys):
    # PyTorch re-raises a worker's error with the worker's traceback as its message; the user sees the error only.
    from gdet.cli import run_guarded

    def load():
        return list(torch.utils.data.DataLoader(_Unreadable(), batch_size=None, num_workers=1))

    with pytest.raises(SystemExit) as e:
        run_guarded(load)
    assert e.value.code == 1
    assert capsys.readouterr().err == "error: img0.jpg: cannot decode image\n"


def _one_error(r, needle: str) -> None:
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr


def test_an_output_that_is_an_input_is_refused_and_the_input_kept(tmp_path):
    from helpers_detection import make_voc
    assets = ROOT / "gdet" / "assets"
    weights = tmp_path / "c.pth"
    weights.write_bytes((assets / "classifier_synth_fp16.pth").read_bytes())
    image = tmp_path / "x.png"
    image.write_bytes((assets / "sample.jpg").read_bytes())
    before = weights.read_bytes(), image.read_bytes()
    r = CliRunner().invoke(main, ["classify", "--image", str(image), "--weights", str(weights), "--json", str(weights)])
    _one_error(r, f"{weights}: --json would overwrite an input of this command (--weights)")
    r = CliRunner().invoke(main, ["classify", "--image", str(image), "--weights", str(weights), "--json", str(image)])
    _one_error(r, "(--image)")
    # detect --out FOLDER writes FOLDER/<image stem>.png: here the image itself
    r = CliRunner().invoke(main, ["detect", "--image", str(image), "--weights", str(assets / "detector_synth_fp16.pth"),
                                  "--out", str(tmp_path)])
    _one_error(r, f"{image}: --out would overwrite an input of this command (--image)")
    assert (weights.read_bytes(), image.read_bytes()) == before
    # a result file scored into itself, and a positional input
    data = make_voc(tmp_path / "voc")
    dets = tmp_path / "d.json"
    dets.write_text("[]")
    r = CliRunner().invoke(main, ["eval", "--data", str(data), "--dets", str(dets), "--json", str(dets)])
    _one_error(r, "(--dets)")
    r = CliRunner().invoke(main, ["fuse", str(dets), "--data", str(data), "--out", str(dets)])
    _one_error(r, "would overwrite an input")
    assert dets.read_text() == "[]"


def test_an_output_path_that_cannot_be_written_is_one_line_before_any_work(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    folder = tmp_path / "folder"
    folder.mkdir()
    missing = str(tmp_path / "none.pth")  # would fail later: the output is checked first
    r = CliRunner().invoke(main, ["detect", "--image", missing, "--weights", missing, "--json", f"{afile}/x.json"])
    _one_error(r, f"--json cannot be written: {afile} is a file, not a folder")
    r = CliRunner().invoke(main, ["export", "--weights", missing, "--format", "fp16", "--out", f"{afile}/e.pth"])
    _one_error(r, f"{afile} is a file, not a folder")
    r = CliRunner().invoke(main, ["eval", "--data", missing, "--dets", missing, "--json", str(folder)])
    _one_error(r, "is a directory")
    r = CliRunner().invoke(main, ["proposals", "eval", "--data", missing, "--proposals", missing, "--plot",
                                  str(tmp_path / "r.npz")])
    _one_error(r, "--plot names a picture")


@pytest.mark.parametrize("error, needle", [
    (IsADirectoryError(21, "Is a directory", "/x/out"), "error: /x/out: is a folder, not a file"),
    (NotADirectoryError(20, "Not a directory", "/x/f/o"), "error: /x/f/o: a part of the path is a file, not a folder"),
    (PermissionError(13, "Permission denied", "/x/ro.json"), "error: /x/ro.json: permission denied"),
])
def test_an_operating_system_error_on_a_file_is_one_line(capsys, error, needle):
    from gdet.cli import run_guarded

    def fail():
        raise error

    with pytest.raises(SystemExit) as e:
        run_guarded(fail)
    assert e.value.code == 1
    assert capsys.readouterr().err == needle + "\n"


def test_the_temporary_file_of_an_atomic_write_is_not_named_in_errors(tmp_path):
    from gdet.io import save_json
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError) as e:
        save_json({}, tmp_path / "afile" / "sub" / "x.json")
    assert ".tmp" not in e.value.filename
    with pytest.raises(IsADirectoryError) as e:
        save_json({}, tmp_path)
    assert e.value.filename == str(tmp_path)


def test_a_split_is_a_name_and_a_split_file_is_text(tmp_path):
    from helpers_detection import make_voc
    data = make_voc(tmp_path / "voc")
    (tmp_path / "evil.txt").write_text("000001\n")
    dets = tmp_path / "d.json"
    dets.write_text("[]")
    for split in ("../evil", str(tmp_path / "evil"), ".."):
        r = CliRunner().invoke(main, ["eval", "--data", str(data), "--dets", str(dets), "--split", split])
        _one_error(r, f"split {split!r}: a split is a name such as train or val, not a path")
    (data / "ImageSets" / "Main" / "val.txt").write_bytes(b"\xff\xd8\xff\xe0 a JPEG")
    r = CliRunner().invoke(main, ["eval", "--data", str(data), "--dets", str(dets), "--split", "val"])
    _one_error(r, "val.txt: not a text file of image ids")


def test_json_dash_prints_the_json_alone_on_stdout(tmp_path):
    from helpers_detection import make_voc
    assets = ROOT / "gdet" / "assets"
    r = CliRunner().invoke(main, ["detect", "--image", str(assets / "sample.jpg"), "--weights",
                                  str(assets / "detector_synth_fp16.pth"), "--max-proposals", "50", "--json", "-"])
    assert r.exit_code == 0, r.output
    dets = json.loads(r.stdout)  # nothing but the result list: tables, mode and notes are not on stdout
    assert dets and {"image_id", "category_id", "bbox", "score"} <= set(dets[0]) and dets[0]["image_id"] == "sample"
    assert "mode: rcnn" in r.stderr and not Path("-").exists()
    data = make_voc(tmp_path / "voc")
    (tmp_path / "d.json").write_text("[]")
    r = CliRunner().invoke(main, ["eval", "--data", str(data), "--dets", str(tmp_path / "d.json"), "--json", "-"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["mAP"] == 0.0
