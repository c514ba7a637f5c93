"""A procedural, captioned video world for the embedded demo model.

One coloured shape (circle, square or triangle) on a plain or textured grey
background goes through one to three *states*, each taking an equal share of
the clip: it moves in one of eight directions, grows, shrinks, turns another
colour or turns into another shape. Everything is a pure function of a seed.

A *spec* is a JSON-able dict::

    {"shape": "circle", "color": "red",
     "states": [{"action": "move", "direction": "right"},
                {"action": "recolor", "color": "green"}],
     "caption": "a red circle moves to the right, then turns green",
     "nuisance": {...background, start position, radius, amplitude...}}

``render(spec, frames, size)`` draws it; ``sample_clip(seed, frames, size)``
samples a spec and draws it; ``parse_caption`` maps a caption back to the
(shape, colour, states) it claims; ``spec_from_caption`` renders any caption.
Time runs over t = f / (F - 1) in [0, 1]; state k owns t in [k/K, (k+1)/K].
Recolours and reshapes switch at the middle of their segment (the object is
still during them). Coordinates are fractions of the frame, y pointing down.
"""
from __future__ import annotations

import math
import re

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (0.90, 0.12, 0.10),
    "yellow": (0.92, 0.82, 0.08),
    "green": (0.10, 0.75, 0.15),
    "cyan": (0.08, 0.78, 0.85),
    "blue": (0.12, 0.25, 0.95),
    "purple": (0.70, 0.12, 0.88),
}
COLOR_NAMES = tuple(COLORS)
# Unit displacement per direction, y down.
DIRECTIONS = {
    "right": (1.0, 0.0),
    "left": (-1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up-right": (1.0, -1.0),
    "up-left": (-1.0, -1.0),
    "down-right": (1.0, 1.0),
    "down-left": (-1.0, 1.0),
}
MOVE_PHRASES = {
    "right": "moves to the right",
    "left": "moves to the left",
    "up": "moves up",
    "down": "moves down",
    "up-right": "moves up and to the right",
    "up-left": "moves up and to the left",
    "down-right": "moves down and to the right",
    "down-left": "moves down and to the left",
}
GROW_FACTOR = 1.8  # radius ratio over a grow state (area x 3.24)
DIAGONAL = 0.8  # per-axis share of a diagonal move
BACKGROUNDS = ("plain", "stripes", "checker", "noise")
KINDS = ("any", "single", "move", "size", "multi")


# ----------------------------------------------------------------------------- captions

def state_phrase(state: dict) -> str:
    """The caption phrase of one state dict."""
    action = state.get("action")
    if action == "move":
        if state.get("direction") not in MOVE_PHRASES:
            raise ValueError(f"unknown direction {state.get('direction')!r}")
        return MOVE_PHRASES[state["direction"]]
    if action == "grow":
        return "grows"
    if action == "shrink":
        return "shrinks"
    if action == "recolor":
        if state.get("color") not in COLORS:
            raise ValueError(f"unknown color {state.get('color')!r}")
        return f"turns {state['color']}"
    if action == "reshape":
        if state.get("shape") not in SHAPES:
            raise ValueError(f"unknown shape {state.get('shape')!r}")
        return f"turns into a {state['shape']}"
    raise ValueError(f"unknown action {action!r}")


def make_caption(shape: str, color: str, states: list[dict]) -> str:
    """Template caption: 'a <color> <shape> <phrase>[, then <phrase>]*'."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}")
    if color not in COLORS:
        raise ValueError(f"unknown color {color!r}")
    if not states:
        raise ValueError("a caption needs at least one state")
    return f"a {color} {shape} " + ", then ".join(state_phrase(s) for s in states)


def synopsis(spec: dict) -> list[str]:
    """One prompt per state ('a blue square grows', 'a blue square turns green'), for VSP."""
    shape, color, out = spec["shape"], spec["color"], []
    for s in spec["states"]:
        out.append(make_caption(shape, color, [s]))
        color = s.get("color", color) if s["action"] == "recolor" else color
        shape = s.get("shape", shape) if s["action"] == "reshape" else shape
    return out


_COLOR_RE = "|".join(COLOR_NAMES)
_SHAPE_RE = "|".join(SHAPES)
_HEAD = re.compile(rf"^an? ({_COLOR_RE}) ({_SHAPE_RE})\s+(.*)$")
_DIR_WORDS = r"(up|down)?(?:\s*(?:and\s+)?(?:to\s+the\s+)?(left|right))?"
_PHRASES = [
    (re.compile(rf"^(?:moves|moving|slides|goes)\s+(?:to\s+the\s+)?(left|right)$"), "h"),
    (re.compile(rf"^(?:moves|moving|slides|goes)\s+(up|down)(?:\s*(?:and\s+|-)?(?:to\s+the\s+)?(left|right))?$"), "v"),
    (re.compile(r"^(?:grows|gets bigger|grows bigger|expands)$"), "grow"),
    (re.compile(r"^(?:shrinks|gets smaller|shrinks down)$"), "shrink"),
    (re.compile(rf"^(?:turns into|becomes|changes into)\s+an?\s+({_SHAPE_RE})$"), "reshape"),
    (re.compile(rf"^(?:turns|becomes|changes color to|changes to)\s+({_COLOR_RE})$"), "recolor"),
]


def _parse_phrase(phrase: str) -> dict:
    for regex, kind in _PHRASES:
        m = regex.match(phrase)
        if not m:
            continue
        if kind == "h":
            return {"action": "move", "direction": m.group(1)}
        if kind == "v":
            d = m.group(1) + (f"-{m.group(2)}" if m.group(2) else "")
            return {"action": "move", "direction": d}
        if kind in ("grow", "shrink"):
            return {"action": kind}
        if kind == "reshape":
            return {"action": "reshape", "shape": m.group(1)}
        return {"action": "recolor", "color": m.group(1)}
    raise ValueError(f"cannot parse caption phrase {phrase!r}")


def parse_caption(caption: str) -> dict:
    """Caption -> {'shape', 'color', 'states'}; raises ValueError if it is not of this world."""
    if not isinstance(caption, str):
        raise ValueError(f"caption must be a string, got {type(caption).__name__}")
    text = re.sub(r"\s+", " ", caption.strip().lower().rstrip("."))
    m = _HEAD.match(text)
    if not m:
        raise ValueError(f"caption {caption!r} does not start with 'a <color> <shape>'")
    color, shape, rest = m.groups()
    parts = [p.strip() for p in re.split(r",?\s*\b(?:and )?then\b\s*", rest) if p.strip()]
    if not parts:
        raise ValueError(f"caption {caption!r} names no action")
    return {"shape": shape, "color": color, "states": [_parse_phrase(p) for p in parts]}


# ----------------------------------------------------------------------------- sampling

def _sample_state(rng: np.random.Generator, family: str, shape: str, color: str) -> dict:
    if family == "move":
        return {"action": "move", "direction": str(rng.choice(list(DIRECTIONS)))}
    if family == "size":
        return {"action": str(rng.choice(["grow", "shrink"]))}
    if family == "recolor":
        return {"action": "recolor", "color": str(rng.choice([c for c in COLOR_NAMES if c != color]))}
    if family == "reshape":
        return {"action": "reshape", "shape": str(rng.choice([s for s in SHAPES if s != shape]))}
    raise ValueError(f"unknown state family {family!r}")


def _sample_states(rng: np.random.Generator, kind: str, shape: str, color: str) -> list[dict]:
    if kind == "any":
        kind = str(rng.choice(["move", "size", "multi"], p=[0.5, 0.15, 0.35]))
    if kind == "single":
        kind = str(rng.choice(["move", "size"], p=[0.75, 0.25]))
    if kind in ("move", "size"):
        return [_sample_state(rng, kind, shape, color)]
    if kind != "multi":
        raise ValueError(f"unknown clip kind {kind!r}; expected one of {KINDS}")
    n = int(rng.choice([2, 3], p=[0.75, 0.25]))
    states: list[dict] = []
    for i in range(n):
        # The first state is a motion so the first segment always shows the initial colour.
        fams = ["move", "size"] if i == 0 else ["move", "size", "recolor", "reshape"]
        probs = [0.7, 0.3] if i == 0 else [0.35, 0.15, 0.35, 0.15]
        while True:
            s = _sample_state(rng, str(rng.choice(fams, p=probs)), shape, color)
            repeat_size = s["action"] in ("grow", "shrink") and s in states  # keeps objects visible
            if (not states or s != states[-1]) and not repeat_size:
                break
        states.append(s)
        color = s.get("color", color) if s["action"] == "recolor" else color
        shape = s.get("shape", shape) if s["action"] == "reshape" else shape
    return states


def _sample_nuisance(rng: np.random.Generator) -> dict:
    bg = str(rng.choice(BACKGROUNDS, p=[0.4, 0.2, 0.2, 0.2]))
    return {
        "background": bg,
        "gray": float(rng.uniform(0.25, 0.8)),
        "tint": [float(v) for v in rng.uniform(-0.03, 0.03, size=3)],
        "amp": float(rng.uniform(0.04, 0.10)) if bg != "plain" else 0.0,
        "period": float(rng.uniform(0.15, 0.4)),
        "angle": float(rng.uniform(0, math.pi)),
        "noise_seed": int(rng.integers(0, 2**31 - 1)),
        "radius": float(rng.uniform(0.11, 0.16)),
        "amplitude": float(rng.uniform(0.9, 1.1)),
        "start_u": [float(v) for v in rng.uniform(0, 1, size=2)],
    }


def make_spec(shape: str, color: str, states: list[dict], nuisance: dict) -> dict:
    """Assemble and validate a spec (caption from the templates)."""
    caption = make_caption(shape, color, states)
    return {"shape": shape, "color": color, "states": [dict(s) for s in states],
            "caption": caption, "nuisance": dict(nuisance)}


def sample_spec(seed: int, kind: str = "any") -> dict:
    """A random spec from an integer seed (deterministic)."""
    if kind not in KINDS:
        raise ValueError(f"unknown clip kind {kind!r}; expected one of {KINDS}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED]))
    shape = str(rng.choice(SHAPES))
    color = str(rng.choice(COLOR_NAMES))
    states = _sample_states(rng, kind, shape, color)
    return make_spec(shape, color, states, _sample_nuisance(rng))


def spec_from_caption(caption: str, seed: int = 0) -> dict:
    """Spec for any caption of this world, nuisance (background, start) drawn from ``seed``."""
    parsed = parse_caption(caption)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xCA9]))
    return make_spec(parsed["shape"], parsed["color"], parsed["states"], _sample_nuisance(rng))


# ----------------------------------------------------------------------------- trajectory

def _segment_of(t: np.ndarray, k: int) -> np.ndarray:
    return np.minimum((t * k).astype(int), k - 1)


def _relative_track(states: list[dict], t: np.ndarray, amp: float, r0: float):
    """Per-frame offset (dx, dy) from the start and radius, for amplitude ``amp``."""
    k = len(states)
    seg = _segment_of(t, k)
    local = np.clip(t * k - seg, 0.0, 1.0)
    x = np.zeros_like(t)
    y = np.zeros_like(t)
    r = np.full_like(t, r0)
    bx = by = 0.0
    br = r0
    for i, s in enumerate(states):
        on = seg == i
        ex, ey, er = bx, by, br
        if s["action"] == "move":
            ux, uy = DIRECTIONS[s["direction"]]
            scale = DIAGONAL if ux and uy else 1.0
            ex, ey = bx + ux * scale * amp, by + uy * scale * amp
        elif s["action"] == "grow":
            er = br * GROW_FACTOR
        elif s["action"] == "shrink":
            er = br / GROW_FACTOR
        x[on] = bx + (ex - bx) * local[on]
        y[on] = by + (ey - by) * local[on]
        r[on] = br + (er - br) * local[on]
        bx, by, br = ex, ey, er
    return x, y, r


def trajectory(spec: dict, frames: int) -> dict:
    """Per-frame ground truth: x, y (centre, fraction of frame), radius, color, shape lists."""
    if frames < 2:
        raise ValueError(f"frames must be >= 2, got {frames}")
    states, nz = spec["states"], spec["nuisance"]
    k = len(states)
    amp = {1: 0.5, 2: 0.4}.get(k, 0.32) * nz["amplitude"]
    r0 = nz["radius"]
    tt = np.linspace(0.0, 1.0, 257)  # fit the start on a fine grid, independent of `frames`
    margin = 0.02
    for _ in range(40):
        x, y, r = _relative_track(states, tt, amp, r0)
        lo_x, hi_x = np.max(margin + r - x), np.min(1 - margin - r - x)
        lo_y, hi_y = np.max(margin + r - y), np.min(1 - margin - r - y)
        if lo_x <= hi_x and lo_y <= hi_y:
            break
        amp *= 0.9
        r0 *= 0.95
    else:
        raise ValueError(f"cannot fit the states of {spec['caption']!r} in the frame")
    ux, uy = nz["start_u"]
    x0, y0 = lo_x + ux * (hi_x - lo_x), lo_y + uy * (hi_y - lo_y)
    t = np.linspace(0.0, 1.0, frames)
    x, y, r = _relative_track(states, t, amp, r0)
    seg = _segment_of(t, k)
    local = t * k - seg
    colors, shapes = [], []
    for f in range(frames):
        color, shape = spec["color"], spec["shape"]
        for i, s in enumerate(states):
            if i > seg[f] or (i == seg[f] and local[f] < 0.5):
                break
            if s["action"] == "recolor":
                color = s["color"]
            elif s["action"] == "reshape":
                shape = s["shape"]
        colors.append(color)
        shapes.append(shape)
    return {"x": (x + x0).tolist(), "y": (y + y0).tolist(), "radius": r.tolist(),
            "color": colors, "shape": shapes, "segment": seg.tolist(), "amplitude": float(amp)}


# ----------------------------------------------------------------------------- rendering

def background(nz: dict, size: int) -> np.ndarray:
    """The clip's background (size, size, 3) in [0, 1] from its nuisance dict (no object)."""
    v, u = np.meshgrid((np.arange(size) + 0.5) / size, (np.arange(size) + 0.5) / size, indexing="ij")
    base = nz["gray"] + np.asarray(nz["tint"])
    kind, amp = nz["background"], nz["amp"]
    if kind == "plain":
        tex = np.zeros_like(u)
    elif kind == "stripes":
        ca, sa = math.cos(nz["angle"]), math.sin(nz["angle"])
        tex = np.sin(2 * math.pi * (ca * u + sa * v) / nz["period"])
    elif kind == "checker":
        p = nz["period"]
        tex = np.where((np.floor(u / p) + np.floor(v / p)) % 2 == 0, 1.0, -1.0)
    elif kind == "noise":
        g = np.random.default_rng(nz["noise_seed"]).standard_normal((6, 6))
        # bilinear upsampling of a 6x6 grid: smooth, resolution independent
        gi = np.clip(v * 5, 0, 5 - 1e-6)
        gj = np.clip(u * 5, 0, 5 - 1e-6)
        i0, j0 = gi.astype(int), gj.astype(int)
        fi, fj = gi - i0, gj - j0
        tex = (g[i0, j0] * (1 - fi) * (1 - fj) + g[i0 + 1, j0] * fi * (1 - fj)
               + g[i0, j0 + 1] * (1 - fi) * fj + g[i0 + 1, j0 + 1] * fi * fj)
        tex = tex / (np.abs(tex).max() + 1e-8)
    else:
        raise ValueError(f"unknown background {kind!r}")
    return np.clip(base[None, None, :] + amp * tex[..., None], 0.0, 1.0)


def _coverage(shape: str, x: float, y: float, r: float, size: int, ss: int = 4) -> np.ndarray:
    sub = (np.arange(size * ss) + 0.5) / (size * ss)
    v, u = np.meshgrid(sub, sub, indexing="ij")
    if shape == "circle":
        inside = (u - x) ** 2 + (v - y) ** 2 <= r * r
    elif shape == "square":
        h = 0.9 * r
        inside = (np.abs(u - x) <= h) & (np.abs(v - y) <= h)
    elif shape == "triangle":
        # apex up: (x, y - r), base from (x - r, y + r) to (x + r, y + r)
        inside = (v <= y + r) & (v - (y - r) >= 2 * np.abs(u - x))
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return inside.reshape(size, ss, size, ss).mean(axis=(1, 3))


def render(spec: dict, frames: int, size: int) -> np.ndarray:
    """Draw a spec: float32 video (frames, size, size, 3) in [0, 1]."""
    if not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"size must be an int >= 8, got {size!r}")
    tr = trajectory(spec, frames)
    bg = background(spec["nuisance"], size)
    out = np.empty((frames, size, size, 3), np.float32)
    for f in range(frames):
        cov = _coverage(tr["shape"][f], tr["x"][f], tr["y"][f], tr["radius"][f], size)[..., None]
        out[f] = bg * (1 - cov) + np.asarray(COLORS[tr["color"][f]]) * cov
    return out


def to_uint8(video: np.ndarray) -> np.ndarray:
    """Float video in [0, 1] -> uint8 (rounded)."""
    return np.clip(np.round(np.asarray(video, np.float32) * 255.0), 0, 255).astype(np.uint8)


def sample_clip(seed: int, frames: int = 8, size: int = 32, kind: str = "any"):
    """(video float32 (F, H, W, 3) in [0, 1], caption, spec) for an integer seed."""
    spec = sample_spec(seed, kind)
    spec = dict(spec, seed=int(seed), frames=int(frames), size=int(size))
    return render(spec, frames, size), spec["caption"], spec


def render_caption(caption: str, frames: int = 8, size: int = 32, seed: int = 0):
    """(video, spec) showing ``caption`` (any caption ``parse_caption`` accepts)."""
    spec = spec_from_caption(caption, seed)
    return render(spec, frames, size), spec
