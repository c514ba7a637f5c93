"""Hostile checkpoints and configs (issue 22), as a user types the commands: a ``config.json`` that is a
JSON list, not JSON, or another model's (flax's ScopeParamShapeError while tracing); a weights file
truncated or changed in place since conversion (``save_checkpoint`` records each params file's size,
mtime and sha256; ``load_checkpoint`` checks them: a stat per file, a hash only where the mtime moved);
a converter YAML that does not parse. Each is one line ``error: ...`` naming the file, exit status 2,
no traceback, the output folder as it was."""
import glob
import json
import os
import shutil

import pytest

from hostile import assert_one_line_refusal, run_many, snapshot
from tiny_checkpoint import shared_tiny_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:os.fork")


def _largest_data_file(ckpt):
    return max(glob.glob(os.path.join(ckpt, "params", "**", "d", "*"), recursive=True), key=os.path.getsize)


def _flip_a_byte(ckpt):
    f = _largest_data_file(ckpt)
    b = bytearray(open(f, "rb").read())
    b[len(b) // 2] ^= 1
    open(f, "wb").write(b)


def _edit_config(ckpt, fn):
    path = os.path.join(ckpt, "config.json")
    cfg = json.load(open(path))
    cfg = fn(cfg)
    if isinstance(cfg, str):
        open(path, "w").write(cfg)
    else:
        json.dump(cfg, open(path, "w"))


def _other_model(cfg):
    cfg["unet"]["model_channels"] = 64  # the params are the 32-channel model's
    return cfg


DAMAGE = {
    "config_list": (lambda c: _edit_config(c, lambda cfg: [1, 2]), "holds a JSON list, not a vstar-jax checkpoint"),
    "config_not_json": (lambda c: _edit_config(c, lambda cfg: '{"format": "vstar-jax/1", '), "is not valid JSON"),
    "weights_flipped_byte": (_flip_a_byte, "changed since conversion (its sha256 differs"),
    "weights_truncated": (lambda c: os.truncate(_largest_data_file(c), 1000), "truncated or replaced"),
    "another_models_config": (lambda c: _edit_config(c, _other_model),
                              "the checkpoint's weights do not fit its config.json"),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    src = shared_tiny_checkpoint()
    cases, roots = {}, {}
    for name, (damage, _) in DAMAGE.items():
        root = tmp_path_factory.mktemp(name)
        ckpt = str(root / "ckpt")
        shutil.copytree(src, ckpt)  # copy2: mtimes kept, as a converted checkpoint's are
        damage(ckpt)
        (root / "out").mkdir()
        (root / "out" / "keep.txt").write_text("kept")
        cases[name] = (["generate", "a red ball", "--checkpoint", ckpt, "--frames", "4", "--steps", "2", "--quiet",
                        "--out", "out/clip.mp4"], root)
        roots[name] = (root, snapshot(root))
    root = tmp_path_factory.mktemp("yaml")
    (root / "bad.yaml").write_text("model: {params: [\n")
    (root / "model.ckpt").write_bytes(b"")
    cases["convert_yaml_invalid"] = (["convert", "videocrafter2", "--ckpt", "model.ckpt", "--config", "bad.yaml",
                                      "--out", "out/ckpt"], root)
    roots["convert_yaml_invalid"] = (root, snapshot(root))
    runs = run_many(cases, workers=3, timeout=300)
    return {name: (runs[name], before, snapshot(root)) for name, (root, before) in roots.items()}


MATCH = {**{k: v for k, (_, v) in DAMAGE.items()}, "convert_yaml_invalid": "bad.yaml: not valid YAML (line 2)"}


@pytest.mark.parametrize("name", list(MATCH))
def test_a_damaged_checkpoint_or_config_is_one_line(results, name):
    r, before, after = results[name]
    line = assert_one_line_refusal(r, MATCH[name], code=2)
    assert after == before, line
    if name.startswith("weights") or name.startswith("config"):
        assert "compiling" not in r.stderr  # found before any compute


def test_an_untouched_copy_loads_and_records_every_params_file(tmp_path):
    from vstar_jax.io.checkpoint import FILES_KEY, check_params_files, read_config

    ckpt = shared_tiny_checkpoint()
    files = read_config(ckpt)[FILES_KEY]
    on_disk = sorted(os.path.relpath(p, os.path.join(ckpt, "params"))
                     for p in glob.glob(os.path.join(ckpt, "params", "**", "*"), recursive=True) if os.path.isfile(p))
    assert [f[0] for f in files] == on_disk
    copy = str(tmp_path / "copy")
    shutil.copytree(ckpt, copy, copy_function=shutil.copy)  # new mtimes: every file is hashed, and matches
    check_params_files(copy, files)
