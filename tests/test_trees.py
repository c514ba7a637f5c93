"""vstar_jax.trees: the one flatten/unflatten/plain/json_default (converters, demo model, checkpoints,
sweeps and sidecars use them)."""
import json
import pathlib

import ml_collections
import numpy as np
from flax.core import freeze

from vstar_jax.trees import flatten, json_default, plain, unflatten


def test_flatten_and_unflatten_are_inverse_on_any_mapping():
    tree = freeze({"unet": {"conv": {"kernel": np.ones(2), "bias": 0.5}}, "text": {"w": 1}})
    flat = flatten(tree)
    assert flat == {("unet", "conv", "kernel"): flat["unet", "conv", "kernel"], ("unet", "conv", "bias"): 0.5,
                    ("text", "w"): 1}
    assert flatten(unflatten(flat)).keys() == flat.keys()
    assert unflatten(flat)["unet"]["conv"]["bias"] == 0.5


def test_plain_gives_json_without_a_default():
    cfg = ml_collections.ConfigDict({"mult": (1, 2), "scale": np.float32(0.5), "n": np.int64(3), "sub": {4: "x"}})
    got = plain(cfg)
    assert got == {"mult": [1, 2], "scale": 0.5, "n": 3, "sub": {"4": "x"}}
    assert type(got["n"]) is int and json.loads(json.dumps(got)) == got


def test_json_default_covers_numpy_paths_and_sets():
    data = {"a": np.arange(2), "b": np.float32(0.25), "p": pathlib.Path("/x/y"), "s": {3}, "t": (1, 2)}
    assert json.loads(json.dumps(data, default=json_default)) == {"a": [0, 1], "b": 0.25, "p": "/x/y", "s": [3],
                                                                   "t": [1, 2]}


def test_json_default_writes_sets_sorted():
    """A set's iteration order changes between processes (string hashing), so a sidecar holding one must
    sort it, or two runs of the same settings would write different bytes."""
    names = {f"k{i:02d}" for i in range(20)}
    assert json.loads(json.dumps({"s": names}, default=json_default)) == {"s": sorted(names)}
    assert sorted(json.loads(json.dumps({1, "a"}, default=json_default)), key=str) == [1, "a"]  # mixed: no error
