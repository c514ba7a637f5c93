"""Shared pieces of every converter: reading PyTorch state dicts, kernel layouts,
and applying a key-mapping plan with full reporting of what does not fit.

A *plan* maps each source key the model needs to ``(flax_path, transform)``.
It is built from the model config alone, so a checkpoint is checked against it
before anything is written: missing keys, unexpected keys and wrong shapes are
all collected and reported by name in one :class:`ConversionError`.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple

import jax
import numpy as np

from vstar_jax.trees import flatten, unflatten

FlaxPath = Tuple[str, ...]


class ConversionError(ValueError):
    """A checkpoint does not fit the model; lists every offending key.

    The message is a short summary line (counts per kind, and the likely cause when the wrong shapes
    follow a config field), then the keys one per line with the checkpoint's own prefix, capped at
    ``CAP`` per kind ("... and N more"). ``missing`` / ``unexpected`` / ``mismatched`` keep the keys
    as the converter saw them (prefix stripped)."""

    CAP = 20

    def __init__(self, component: str, missing=(), unexpected=(), mismatched=(), note: str = "", *,
                 prefix: str = "", shapes=(), hints: Optional[Mapping[int, str]] = None):
        self.component = component
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        self.mismatched = sorted(mismatched)
        self.note = note
        self.prefix = prefix
        self.shapes = list(shapes)  # (key, source shape, wanted shape) of the wrongly shaped keys
        self.hints = dict(hints or {})  # dimension -> the config field(s) that set it
        super().__init__(self.report())

    def likely_cause(self) -> str:
        """The config field whose value the wanted shapes carry where the weights differ, if one does."""
        votes: Dict[str, list] = {}
        for _, got, want in self.shapes:
            if len(got) != len(want):
                continue
            for g, w in zip(got, want):
                if g != w and w in self.hints:
                    votes.setdefault(self.hints[w], []).append((w, g))
        if not votes:
            return ""
        field, pairs = max(votes.items(), key=lambda kv: len(kv[1]))
        w, g = pairs[0]
        return (f"the config's {field} gives {w} channels where the weights have {g} "
                f"({len(pairs)} mismatched dimension{'s' if len(pairs) > 1 else ''}); check it against the source")

    def summary(self) -> str:
        kinds = [(len(self.missing), "missing"), (len(self.unexpected), "unexpected"),
                 (len(self.mismatched), "wrong shape")]
        counts = ", ".join(f"{n} {k}" for n, k in kinds if n) or "no key problems"
        line = f"{self.component}: checkpoint does not match the model config ({counts})"
        if self.note:
            line += f": {self.note}"
        cause = self.likely_cause()
        if cause:
            line += f"; likely cause: {cause}"
        return line

    def report(self) -> str:
        lines = [self.summary()]
        for title, items in (("missing", self.missing), ("unexpected", self.unexpected),
                             ("wrong shape", self.mismatched)):
            for item in items[:self.CAP]:
                lines.append(f"  {title}: {self.prefix}{item}")
            if len(items) > self.CAP:
                lines.append(f"  ... and {len(items) - self.CAP} more {title}")
        return "\n".join(lines)


class ConversionErrors(ConversionError):
    """Several parts of one checkpoint do not fit (every component is checked before reporting)."""

    def __init__(self, errors: Sequence[ConversionError]):
        self.errors = list(errors)
        self.component = ", ".join(e.component for e in self.errors)
        self.missing = [k for e in self.errors for k in e.missing]
        self.unexpected = [k for e in self.errors for k in e.unexpected]
        self.mismatched = [k for e in self.errors for k in e.mismatched]
        self.note, self.prefix, self.shapes, self.hints = "", "", [], {}
        ValueError.__init__(self, self.report())

    def summary(self) -> str:
        return f"{len(self.errors)} parts of the checkpoint do not match: {self.component}"

    def report(self) -> str:
        return "\n".join([self.summary()] + [e.report() for e in self.errors])


# ---------------------------------------------------------------- reading

class _LazySafetensors(Mapping):
    """A read-only mapping over a .safetensors file that loads one tensor at a time."""

    def __init__(self, path: str):
        from safetensors import safe_open

        self._path = path
        self._f = safe_open(path, framework="np")
        self._keys = list(self._f.keys())

    def __getitem__(self, key):
        if key not in self._keys:
            raise KeyError(key)
        return self._f.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class _TorchStateDict(Mapping):
    """A mapping over torch tensors that hands out numpy arrays (bf16 upcast to fp32)."""

    def __init__(self, tensors):
        self._t = tensors

    def __getitem__(self, key):
        t = self._t[key]
        if not hasattr(t, "numpy"):
            return np.asarray(t)
        import torch

        if t.dtype == torch.bfloat16:
            t = t.float()
        return t.detach().cpu().numpy()

    def __iter__(self):
        return iter(self._t)

    def __len__(self):
        return len(self._t)


def _verify_zip(path: str) -> None:
    """CRC-check every entry of a zip-format torch checkpoint (torch.load does not)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return  # legacy pickle format: no checksums to verify
    with zipfile.ZipFile(path) as zf:
        try:
            bad = zf.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise ValueError(f"corrupt zip archive ({e})") from None
    if bad is not None:
        raise ValueError(f"corrupted entry {bad!r} (CRC mismatch)")


def load_state_dict(path: str, *, trust_pickle: bool = False, verify: bool = True) -> Mapping:
    """Open a PyTorch checkpoint as a mapping ``key -> np.ndarray`` without copying it all.

    ``.safetensors`` files are read one tensor at a time; torch pickles
    (``model.ckpt``, ``*.bin``, ``*.pt``) are memory-mapped. A ``{"state_dict": ...}``
    wrapper is unwrapped. Non-tensor pickles need ``trust_pickle=True``. ``verify`` CRC-checks
    zip-format torch files first (one sequential read), so flipped bytes are an error, not
    silently wrong weights.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        if path.endswith(".safetensors"):
            return _LazySafetensors(path)
        import torch

        if verify:
            _verify_zip(path)
        try:
            obj = torch.load(path, map_location="cpu", mmap=True, weights_only=not trust_pickle)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except ImportError as e:
        raise ImportError(f"reading {path} needs torch: pip install 'vstar-jax[convert]' ({e})") from e
    except Exception as e:  # corrupt, truncated, or not a checkpoint at all
        hint = " (if you trust this file, retry with --trust-pickle)" if "weights_only" in str(e) else ""
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0][:300]}{hint}") from e
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    return _TorchStateDict(obj)


class PrefixView(Mapping):
    """The keys of ``sd`` under ``prefix``, with the prefix stripped."""

    def __init__(self, sd: Mapping, prefix: str):
        self._sd, self._p = sd, prefix
        self.prefix = prefix  # shown in key reports
        self._keys = [k[len(prefix):] for k in sd if k.startswith(prefix)]

    def __getitem__(self, key):
        return self._sd[self._p + key]

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)


# ---------------------------------------------------------------- layouts

def linear_kernel(w: np.ndarray) -> np.ndarray:
    """torch Linear (O, I) -> flax Dense (I, O)."""
    return np.ascontiguousarray(np.asarray(w).T)


def conv1x1_as_dense(w: np.ndarray) -> np.ndarray:
    """torch Conv1d/Conv2d with a 1-wide kernel (O, I, 1[, 1]) or Linear (O, I) -> Dense (I, O)."""
    w = np.asarray(w)
    if w.ndim > 2:
        if any(s != 1 for s in w.shape[2:]):
            raise ValueError(f"expected a 1x1 kernel, got shape {w.shape}")
        w = w.reshape(w.shape[:2])
    return linear_kernel(w)


def conv2d_kernel(w: np.ndarray) -> np.ndarray:
    """torch Conv2d (O, I, kh, kw) -> flax Conv (kh, kw, I, O)."""
    return np.ascontiguousarray(np.asarray(w).transpose(2, 3, 1, 0))


def conv3d_kernel(w: np.ndarray) -> np.ndarray:
    """torch Conv3d (O, I, t, h, w) -> flax Conv (t, h, w, I, O)."""
    return np.ascontiguousarray(np.asarray(w).transpose(2, 3, 4, 1, 0))


def conv1d_kernel(w: np.ndarray) -> np.ndarray:
    """torch Conv1d (O, I, k) -> flax Conv (k, I, O) (StreamingT2V's APM token mixer)."""
    w = np.asarray(w)
    if w.ndim != 3:
        raise ValueError(f"expected a Conv1d kernel (O, I, k), got shape {w.shape}")
    return np.ascontiguousarray(w.transpose(2, 1, 0))


def identity(w: np.ndarray) -> np.ndarray:
    return np.asarray(w)


TRANSFORMS: Dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "dense": conv1x1_as_dense,
    "conv2d": conv2d_kernel,
    "conv3d": conv3d_kernel,
    "conv1d": conv1d_kernel,
    "identity": identity,
}

Plan = Dict[str, Tuple[FlaxPath, str]]


# Plan builders for the leaf modules every layout uses.
def p_dense(plan: Plan, src: str, dst: FlaxPath, bias: bool = True):
    plan[f"{src}.weight"] = (dst + ("kernel",), "dense")
    if bias:
        plan[f"{src}.bias"] = (dst + ("bias",), "identity")


def p_conv(plan: Plan, src: str, dst: FlaxPath, kind: str = "conv2d"):
    plan[f"{src}.weight"] = (dst + ("kernel",), kind)
    plan[f"{src}.bias"] = (dst + ("bias",), "identity")


def p_norm(plan: Plan, src: str, dst: FlaxPath):
    """LayerNorm or flax GroupNorm leaf (scale, bias)."""
    plan[f"{src}.weight"] = (dst + ("scale",), "identity")
    plan[f"{src}.bias"] = (dst + ("bias",), "identity")


# ---------------------------------------------------------------- applying

def apply_plan(
    sd: Mapping,
    plan: Plan,
    expected,
    *,
    component: str,
    ignore_prefixes: Sequence[str] = (),
    dtype: Optional[np.dtype] = None,
    hints: Optional[Mapping[int, str]] = None,
) -> dict:
    """Convert ``sd`` with ``plan`` into a nested params dict shaped like ``expected``.

    ``expected`` is the model's params tree (arrays or ShapeDtypeStructs, e.g. from
    ``jax.eval_shape``). Every key of the plan must be in ``sd``, every key of ``sd``
    (outside ``ignore_prefixes``) must be in the plan, and every converted array must
    have the expected shape; otherwise a ConversionError names them all.
    """
    exp_flat = flatten(expected)
    planned = {dst for dst, _ in plan.values()}
    if planned != set(exp_flat):
        raise RuntimeError(
            f"{component}: internal key plan does not cover the model (plan-only: "
            f"{sorted(planned - set(exp_flat))[:5]}, model-only: {sorted(set(exp_flat) - planned)[:5]})")
    keys = set(sd)
    missing = [k for k in plan if k not in keys]
    unexpected = [k for k in keys if k not in plan and not any(k.startswith(p) for p in ignore_prefixes)]
    mismatched, shapes, out = [], [], {}
    for key, (dst, kind) in plan.items():
        if key not in keys:
            continue
        src = sd[key]
        want = tuple(exp_flat[dst].shape)
        try:
            arr = TRANSFORMS[kind](src)
        except ValueError:
            arr = None
        if arr is None or tuple(arr.shape) != want:
            mismatched.append(f"{key} {tuple(np.shape(src))} (model wants {want} as {'/'.join(dst)})")
            shapes.append((key, tuple(np.shape(arr if arr is not None else src)), want))
            continue
        out[dst] = arr.astype(dtype or exp_flat[dst].dtype, copy=False)
    if missing or unexpected or mismatched:
        raise ConversionError(component, missing, unexpected, mismatched, prefix=getattr(sd, "prefix", ""),
                              shapes=shapes, hints=hints)
    return unflatten(out)


def count_params_tree(params) -> int:
    return int(sum(np.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(params)))


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (Linux ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


DTYPES = ("float32", "float16", "bfloat16")


def cast_tree(params, dtype: Optional[str]):
    """Arrays that own their memory, cast to ``dtype`` (a name from DTYPES; None keeps the dtype).

    Owning matters: a leaf that is a view into a memory-mapped source checkpoint would
    keep the whole mapping resident while the output is written.
    """
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {DTYPES}")
    import ml_dtypes

    target = {None: None, "float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}[dtype]

    def leaf(x):
        x = np.asarray(x)
        if target is not None and x.dtype != target:
            return x.astype(target)
        return x if x.flags.owndata else x.copy()

    def cast(tree):
        return {k: cast(v) if isinstance(v, Mapping) else leaf(v) for k, v in tree.items()}

    return cast(params)


def convert_components(converters: Mapping[str, Callable], components: Sequence[str], *,
                       dtype: Optional[str] = None, verbose: bool = True,
                       errors: Sequence[ConversionError] = ()):
    """Run ``converters[name]() -> (params, config)`` for each component; returns (params, configs).

    Every component is converted (and so checked) before the caller writes anything, and every
    component's key problems are reported together: a :class:`ConversionError` of one component does
    not stop the others (``errors``: problems already found, e.g. stray keys outside every component)."""
    import sys
    import time

    unknown = sorted(set(components) - set(converters))
    if unknown:
        raise ValueError(f"unknown component(s) {unknown}; choose from {sorted(converters)}")
    errors = list(errors)
    params, cfgs = {}, {}
    for comp in components:
        t0 = time.time()
        try:
            p, cfg = converters[comp]()
        except ConversionError as e:
            errors.append(e)
            continue
        params[comp] = cast_tree(p, dtype)
        cfgs[comp] = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
        if verbose:
            print(f"[convert] {comp}: {count_params_tree(params[comp]):,} parameters in {time.time() - t0:.1f}s "
                  f"(peak RSS {peak_rss_gib():.2f} GiB)", file=sys.stderr)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConversionErrors(errors)
    return params, cfgs


def run_cli(convert_call: Callable[[], object]) -> int:
    """Run a converter from its command line: a one-line ``error: ...`` and exit code 2 on bad input."""
    import sys

    try:
        convert_call()
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def add_safety_flags(ap, *, trust_pickle: bool = True) -> None:
    """The converters' shared flags, said once: ``--overwrite`` (what it may replace) and, for torch pickles,
    ``--trust-pickle``."""
    ap.add_argument("--overwrite", action="store_true",
                    help="replace a previous vstar-jax checkpoint at --out (never another folder, never the source)")
    if trust_pickle:
        ap.add_argument("--trust-pickle", action="store_true",
                        help="allow a full torch unpickle of the checkpoint (non-tensor objects: only for files "
                             "you trust)")
