"""Golden flow of torchvision's ``raft_large`` for the RAFT port's parity test.

The weights are synthetic and reproducible (``synthetic_state_dict``), so only the inputs' recipe
and the output flow are stored (``tests/data/raft_large_golden.safetensors``). Regenerate with a
torchvision install, or with its wheel unpacked (no C extension needed):

    pip download --no-deps torchvision -d /tmp/tvw && unzip -q /tmp/tvw/*.whl -d /tmp/tv
    python tests/raft_golden.py --torchvision-root /tmp/tv/torchvision
"""
from __future__ import annotations

import argparse
import hashlib
import pathlib

import numpy as np

GOLDEN = pathlib.Path(__file__).resolve().parent / "data" / "raft_large_golden.safetensors"
SIZE = (128, 160)
ITERS = 12


def synthetic_state_dict(shapes: dict[str, tuple]) -> dict[str, np.ndarray]:
    """Reproducible weights for a raft_large state dict given its key -> shape."""
    out = {}
    for key, shape in sorted(shapes.items()):
        rng = np.random.default_rng(int(hashlib.sha1(key.encode()).hexdigest()[:8], 16))
        if key.endswith("num_batches_tracked"):
            out[key] = np.zeros(shape, np.int64)
        elif key.endswith("running_var"):
            out[key] = (0.5 + rng.random(shape)).astype(np.float32)
        elif key.endswith("running_mean") or key.endswith("bias"):
            out[key] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        elif len(shape) == 1:  # batch-norm scale
            out[key] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:  # conv (O, I, kh, kw)
            fan_in = int(np.prod(shape[1:]))
            out[key] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    return out


def inputs() -> tuple[np.ndarray, np.ndarray]:
    """Two uint8 frames (1, H, W, 3): a smooth random texture and the same shifted by (3, -2)."""
    rng = np.random.default_rng(7)
    h, w = SIZE
    coarse = rng.random((h // 8 + 2, w // 8 + 2, 3))
    big = np.kron(coarse, np.ones((8, 8, 1)))[: h + 8, : w + 8]
    a = (big[4 : 4 + h, 4 : 4 + w] * 255).astype(np.uint8)
    b = (big[6 : 6 + h, 1 : 1 + w] * 255).astype(np.uint8)
    return a[None], b[None]


def _load_torchvision_raft(root: str | None):
    """torchvision's raft module: the installed one, or the source files of an unpacked wheel."""
    if root is None:
        from torchvision.models.optical_flow import raft

        return raft
    import collections.abc
    import enum
    import importlib.util
    import itertools
    import sys
    import types

    def stub(name, **attrs):
        m = types.ModuleType(name)
        m.__path__ = []
        m.__dict__.update(attrs)
        sys.modules[name] = m
        return m

    def load(name, path):
        spec = importlib.util.spec_from_file_location(name, path)
        m = importlib.util.module_from_spec(spec)
        sys.modules[name] = m
        spec.loader.exec_module(m)
        return m

    def make_ntuple(x, n):
        return tuple(x) if isinstance(x, collections.abc.Iterable) else tuple(itertools.repeat(x, n))

    class WeightsEnum(enum.Enum):
        @classmethod
        def verify(cls, obj):
            return obj

    stub("torchvision")
    stub("torchvision.utils", _log_api_usage_once=lambda *a, **k: None, _make_ntuple=make_ntuple)
    stub("torchvision.ops")
    misc = load("torchvision.ops.misc", f"{root}/ops/misc.py")
    sys.modules["torchvision.ops"].Conv2dNormActivation = misc.Conv2dNormActivation
    stub("torchvision.transforms")
    stub("torchvision.transforms._presets", OpticalFlow=object)
    stub("torchvision.models")
    stub("torchvision.models._api", register_model=lambda *a, **k: (lambda f: f), Weights=lambda **k: object(),
         WeightsEnum=WeightsEnum)
    stub("torchvision.models._utils", handle_legacy_interface=lambda **k: (lambda f: f))
    stub("torchvision.models.optical_flow")
    load("torchvision.models.optical_flow._utils", f"{root}/models/optical_flow/_utils.py")
    return load("torchvision.models.optical_flow.raft", f"{root}/models/optical_flow/raft.py")


def main(argv=None) -> int:
    import torch
    from safetensors.numpy import save_file

    parser = argparse.ArgumentParser()
    parser.add_argument("--torchvision-root", default=None, help="unpacked torchvision package folder")
    args = parser.parse_args(argv)
    raft = _load_torchvision_raft(args.torchvision_root)
    version = "unknown"
    if args.torchvision_root is None:
        import torchvision

        version = torchvision.__version__
    elif pathlib.Path(args.torchvision_root, "version.py").exists():
        import re

        text = pathlib.Path(args.torchvision_root, "version.py").read_text()
        found = re.search(r"__version__ = '([^']+)'", text)
        version = found.group(1) if found else version
    model = raft.raft_large().eval()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict({k: torch.from_numpy(v) for k, v in synthetic_state_dict(shapes).items()})
    a, b = inputs()
    to_t = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # noqa: E731
    with torch.no_grad():
        flow = model(to_t(a), to_t(b), num_flow_updates=ITERS)[-1].permute(0, 2, 3, 1).numpy()
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    save_file({"flow": np.ascontiguousarray(flow, np.float32)}, str(GOLDEN),
              metadata={"torch": torch.__version__, "torchvision": version, "iters": str(ITERS),
                       "model": "torchvision raft_large"})
    print(f"wrote {GOLDEN}: flow {flow.shape}, |flow| max {np.abs(flow).max():.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
