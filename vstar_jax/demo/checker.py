"""Read a generated video's pixels and verify what a demo-world caption claims.

``measure`` segments the one coloured object per frame: the world's
backgrounds are grey (low chroma, textured or not) and its objects saturated,
so a pixel belongs to the object when its chroma (max - min of RGB) is well
above the background's (estimated per frame by its median) and the largest
8-connected blob is kept. Per frame it returns the object's colour name
(nearest hue), centroid, soft area and shape (told
apart by matching each shape's rendering of the same area and centroid).

``check(video, caption_or_spec)`` splits the clip into the caption's states
(equal shares, like the world) and verifies colour, each motion's direction,
size changes, recolours and reshapes, in order.
"""
from __future__ import annotations

import colorsys

import numpy as np
from scipy import ndimage

from vstar_jax.demo import world

_HUES = {name: colorsys.rgb_to_hsv(*rgb)[0] * 360.0 for name, rgb in world.COLORS.items()}
MIN_CHROMA = 0.18  # absolute floor on object chroma (0..1)
MOVE_MIN = 0.12  # displacement (fraction of the frame) below which a segment is "still"
SIZE_RATIO = 1.4  # area ratio that counts as grow (1 / ratio: shrink)
_DIR_ANGLES = {  # angle of (dx, -dy) in degrees
    "right": 0, "up-right": 45, "up": 90, "up-left": 135,
    "left": 180, "down-left": 225, "down": 270, "down-right": 315,
}


def _as_float(video) -> np.ndarray:
    v = np.asarray(video)
    if v.ndim != 4 or v.shape[-1] != 3:
        raise ValueError(f"video must be (F, H, W, 3), got shape {v.shape}")
    if v.dtype == np.uint8:
        return v.astype(np.float32) / 255.0
    return np.clip(v.astype(np.float32), 0.0, 1.0)


def color_name(rgb) -> str:
    """Nearest world colour by hue."""
    h = colorsys.rgb_to_hsv(*[float(c) for c in rgb])[0] * 360.0
    return min(_HUES, key=lambda n: min(abs(h - _HUES[n]), 360 - abs(h - _HUES[n])))


def shape_name(alpha: np.ndarray, cx: float, cy: float) -> str:
    """Shape whose anti-aliased rendering (same area and centroid) best matches ``alpha`` (H, W)."""
    h, w = alpha.shape
    area = float(alpha.sum()) / (h * w)
    best, best_err = None, np.inf
    for shape, k in (("circle", np.pi), ("square", 3.24), ("triangle", 2.0)):
        r = np.sqrt(area / k)
        y = cy / h - (r / 3 if shape == "triangle" else 0.0)  # triangle centroid sits r/3 below centre
        cov = world._coverage(shape, cx / w, y, r, h) if h == w else None
        if cov is None:
            raise ValueError(f"shape classification needs square frames, got {h}x{w}")
        err = float(np.sum((cov - alpha) ** 2))
        if err < best_err:
            best, best_err = shape, err
    return best


def measure_frame(frame: np.ndarray) -> dict:
    """One float frame (H, W, 3) -> {'found', 'color', 'centroid' (x, y) in pixels, 'xy' (fraction),
    'size' (area fraction, anti-aliasing counted), 'area' (pixels), 'shape'}."""
    h, w, _ = frame.shape
    chroma = frame.max(-1) - frame.min(-1)
    bg = float(np.median(chroma))
    peak = float(np.percentile(chroma, 99.5))
    thr = max(MIN_CHROMA, bg + 0.5 * (peak - bg))
    mask = chroma > thr
    if peak < MIN_CHROMA or not mask.any():
        return {"found": False, "color": None, "centroid": None, "xy": None, "size": 0.0,
                "area": 0.0, "shape": None}
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n > 1:
        counts = np.bincount(labels.ravel())[1:]
        mask = labels == (1 + int(np.argmax(counts)))
    level = float(np.median(chroma[mask]))
    near = ndimage.binary_dilation(mask, structure=np.ones((3, 3)))
    alpha = np.where(near, np.clip((chroma - bg) / max(level - bg, 1e-6), 0.0, 1.0), 0.0)
    ys, xs = np.nonzero(alpha)
    wts = alpha[ys, xs]
    cx = float(np.sum((xs + 0.5) * wts) / wts.sum())
    cy = float(np.sum((ys + 0.5) * wts) / wts.sum())
    my, mx = np.nonzero(mask)
    cw = chroma[my, mx]
    rgb = (frame[my, mx] * cw[:, None]).sum(0) / cw.sum()
    area = float(wts.sum())
    return {"found": True, "color": color_name(rgb), "centroid": (cx, cy), "xy": (cx / w, cy / h),
            "size": area / (h * w), "area": area, "shape": shape_name(alpha, cx, cy)}


def measure(video) -> list[dict]:
    """Per-frame measurements of a video (F, H, W, 3), uint8 or float in [0, 1]."""
    return [measure_frame(f) for f in _as_float(video)]


def segment_ranges(frames: int, k: int) -> list[tuple[int, int]]:
    """Inclusive frame ranges of k equal states (neighbours share their boundary frames)."""
    if k < 1 or frames < 2:
        raise ValueError(f"need k >= 1 states and frames >= 2, got k={k}, frames={frames}")
    edges = np.linspace(0, frames - 1, k + 1)
    return [(int(np.floor(edges[i])), int(np.ceil(edges[i + 1]))) for i in range(k)]


def _majority(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    names, counts = np.unique(vals, return_counts=True)
    return str(names[int(np.argmax(counts))])


def direction_of(dx: float, dy: float, min_move: float = MOVE_MIN) -> str:
    """8-way direction of a displacement (fractions of the frame, y down), or 'still'."""
    if np.hypot(dx, dy) < min_move:
        return "still"
    ang = np.degrees(np.arctan2(-dy, dx)) % 360
    return min(_DIR_ANGLES, key=lambda d: min(abs(ang - _DIR_ANGLES[d]), 360 - abs(ang - _DIR_ANGLES[d])))


def turn_degrees(before: tuple, after: tuple, min_move: float = MOVE_MIN):
    """How far a displacement (dx, dy) turned into another, in degrees in [0, 180]; None where either is below
    ``min_move`` (a still segment has no direction). The 8-way call (:func:`direction_of`) flips for any turn
    that crosses a sector edge, 1 degree near the edge as much as 40; this says how far the motion moved."""
    (ax, ay), (bx, by) = before, after
    if np.hypot(ax, ay) < min_move or np.hypot(bx, by) < min_move:
        return None
    d = abs(np.degrees(np.arctan2(-by, bx) - np.arctan2(-ay, ax))) % 360
    return float(min(d, 360 - d))


def segment_summary(meas: list[dict], lo: int, hi: int) -> dict:
    """Motion, size ratio, start/end colour and shape over frames lo..hi (inclusive)."""
    seg = [m for m in meas[lo:hi + 1]]
    found = [(i, m) for i, m in enumerate(seg) if m["found"]]
    n = len(seg)
    third = max(1, int(round(n / 3)))
    out = {"frames": (lo, hi), "found": len(found), "direction": "unknown", "dx": 0.0, "dy": 0.0,
           "size_ratio": 1.0,
           "color_start": _majority([m["color"] for m in seg[:third]]),
           "color_end": _majority([m["color"] for m in seg[-third:]]),
           "shape_start": _majority([m["shape"] for m in seg[:third]]),
           "shape_end": _majority([m["shape"] for m in seg[-third:]])}
    if len(found) >= 2:
        t = np.array([i for i, _ in found], np.float64)
        xy = np.array([m["xy"] for _, m in found], np.float64)
        span = n - 1
        # least-squares slope times the segment length: robust to one bad frame
        slope = np.polyfit(t, xy, 1)[0]
        out["dx"], out["dy"] = float(slope[0] * span), float(slope[1] * span)
        out["direction"] = direction_of(out["dx"], out["dy"])
        sizes = np.array([m["size"] for _, m in found])
        k = max(1, len(sizes) // 3)
        out["size_ratio"] = float(np.mean(sizes[-k:]) / max(np.mean(sizes[:k]), 1e-9))
    return out


def _state_ok(state: dict, summ: dict, prev_color: str, prev_shape: str) -> bool:
    a = state["action"]
    if a == "move":
        return summ["direction"] == state["direction"]
    if a == "grow":
        return summ["size_ratio"] >= SIZE_RATIO
    if a == "shrink":
        return summ["size_ratio"] <= 1.0 / SIZE_RATIO
    if a == "recolor":
        return summ["color_end"] == state["color"] and summ["color_start"] == prev_color
    if a == "reshape":
        return summ["shape_end"] == state["shape"] and summ["shape_start"] == prev_shape
    raise ValueError(f"unknown action {a!r}")


def check(video, claim) -> dict:
    """Verify a caption (str) or spec (dict) against a video.

    Returns {'ok', 'color_ok', 'motion_ok', 'order_ok', 'shape_ok', 'found_ok', 'states_ok' (list),
    'expected', 'segments' (per-state summaries)}: colour_ok = the first state's frames show the
    caption's colour; motion_ok = every move/grow/shrink state shows the right direction/size change;
    order_ok = every state (recolours and reshapes included) holds in its own share of the clip, in
    the caption's order; shape_ok = the initial shape (informative: small frames blur shapes).
    ``ok`` = colour, motion and order all right.
    """
    claim = world.parse_caption(claim) if isinstance(claim, str) else claim
    for key in ("shape", "color", "states"):
        if key not in claim:
            raise ValueError(f"claim is missing {key!r}")
    meas = measure(video)
    states = claim["states"]
    ranges = segment_ranges(len(meas), len(states))
    summaries = [segment_summary(meas, lo, hi) for lo, hi in ranges]
    color, shape = claim["color"], claim["shape"]
    states_ok = []
    for s, summ in zip(states, summaries):
        states_ok.append(bool(_state_ok(s, summ, color, shape)))
        color = s["color"] if s["action"] == "recolor" else color
        shape = s["shape"] if s["action"] == "reshape" else shape
    lo, hi = ranges[0]
    first = meas[lo:hi + 1]
    color_ok = _majority([m["color"] for m in first]) == claim["color"]
    shape_ok = _majority([m["shape"] for m in first]) == claim["shape"]
    motion = [ok for s, ok in zip(states, states_ok) if s["action"] in ("move", "grow", "shrink")]
    motion_ok = all(motion) if motion else True
    order_ok = all(states_ok)
    found_ok = all(m["found"] for m in meas)
    return {"ok": bool(color_ok and motion_ok and order_ok), "color_ok": bool(color_ok),
            "motion_ok": bool(motion_ok), "order_ok": bool(order_ok), "shape_ok": bool(shape_ok),
            "found_ok": bool(found_ok), "states_ok": states_ok,
            "expected": {"shape": claim["shape"], "color": claim["color"], "states": states},
            "segments": summaries}
