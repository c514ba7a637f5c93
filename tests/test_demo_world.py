"""The demo world (deterministic captioned clips) and the pixel checker that verifies captions."""
import numpy as np
import pytest

from vstar_jax.demo import checker, world


def test_sample_clip_is_deterministic_and_in_range():
    v1, c1, s1 = world.sample_clip(123, frames=8, size=24)
    v2, c2, s2 = world.sample_clip(123, frames=8, size=24)
    v3, c3, _ = world.sample_clip(124, frames=8, size=24)
    assert v1.shape == (8, 24, 24, 3) and v1.dtype == np.float32
    assert 0.0 <= v1.min() and v1.max() <= 1.0
    np.testing.assert_array_equal(v1, v2)
    assert c1 == c2 and s1 == s2
    assert not np.array_equal(v1, v3)


@pytest.mark.parametrize("seed", range(60))
def test_caption_and_spec_agree(seed):
    _, caption, spec = world.sample_clip(seed, frames=8, size=16)
    parsed = world.parse_caption(caption)
    assert parsed == {"shape": spec["shape"], "color": spec["color"], "states": spec["states"]}
    assert world.make_caption(spec["shape"], spec["color"], spec["states"]) == caption
    assert caption.startswith(f"a {spec['color']} {spec['shape']} ")
    assert len(world.synopsis(spec)) == len(spec["states"])


def test_caption_templates_and_parser():
    assert world.parse_caption("A red circle moves to the right.") == {
        "shape": "circle", "color": "red", "states": [{"action": "move", "direction": "right"}]}
    p = world.parse_caption("a blue square grows, then turns green, then moves up and to the left")
    assert p["states"] == [{"action": "grow"}, {"action": "recolor", "color": "green"},
                           {"action": "move", "direction": "up-left"}]
    assert world.parse_caption("a yellow triangle moves down-right")["states"][0]["direction"] == "down-right"
    assert world.parse_caption("a cyan circle shrinks, then turns into a square")["states"][1] == {
        "action": "reshape", "shape": "square"}
    spec = {"shape": "square", "color": "blue", "states": p["states"]}
    assert world.synopsis(spec) == ["a blue square grows", "a blue square turns green",
                                    "a green square moves up and to the left"]
    for bad in ["a pink circle moves right", "a red hexagon grows", "a red circle dances", "", "red circle"]:
        with pytest.raises(ValueError):
            world.parse_caption(bad)


def test_ground_truth_trajectory_matches_caption():
    video, spec = world.render_caption("a red circle moves to the right", frames=8, size=32, seed=3)
    tr = world.trajectory(spec, 8)
    assert tr["x"][-1] - tr["x"][0] > 0.3 and abs(tr["y"][-1] - tr["y"][0]) < 1e-9
    assert set(tr["color"]) == {"red"}
    _, spec = world.render_caption("a blue square grows, then turns green", frames=8, size=32)
    tr = world.trajectory(spec, 8)
    assert tr["radius"][3] > 1.5 * tr["radius"][0]
    assert tr["color"][:5] == ["blue"] * 5 and tr["color"][-1] == "green"
    # every frame keeps the object inside the picture
    for seed in range(40):
        spec = world.sample_spec(seed)
        tr = world.trajectory(spec, 16)
        for x, y, r in zip(tr["x"], tr["y"], tr["radius"]):
            assert r <= x <= 1 - r and r <= y <= 1 - r


def test_measure_recovers_ground_truth_position_size_color():
    """Per-frame centroid/size/colour against the renderer's ground truth (32x32, 50 clips)."""
    pos_err, size_rel, colors, n = [], [], 0, 0
    for seed in range(50):
        video, _, spec = world.sample_clip(seed, frames=8, size=32)
        tr = world.trajectory(spec, 8)
        for f, m in enumerate(checker.measure(world.to_uint8(video))):
            shape, r = tr["shape"][f], tr["radius"][f]
            y_true = tr["y"][f] + (r / 3 if shape == "triangle" else 0.0)
            pos_err.append(np.hypot(m["xy"][0] - tr["x"][f], m["xy"][1] - y_true))
            true_area = {"circle": np.pi, "square": 3.24, "triangle": 2.0}[shape] * r * r
            size_rel.append(abs(m["size"] / true_area - 1))
            colors += m["color"] == tr["color"][f]
            n += 1
    assert np.max(pos_err) < 0.03, np.max(pos_err)  # under a pixel at 32x32
    assert np.median(size_rel) < 0.05 and np.max(size_rel) < 0.3, (np.median(size_rel), np.max(size_rel))
    assert colors == n


@pytest.mark.parametrize("frames,size", [(8, 12), (8, 16), (8, 32), (16, 24)])
def test_checker_accuracy_on_ground_truth_clips(frames, size):
    """The checker's accuracy: ground-truth clips of every kind must pass (measured: 100% at 8x32 and
    16x24 over 300/200 seeds; 99.2% at 8x16 over 500 and 99.5% at 8x12 (the demo model's size) over 200;
    colour and motion 100% everywhere; the misses are reshapes of shrunken 1-2 pixel objects)."""
    n, ok, color_ok, motion_ok = 120, 0, 0, 0
    for seed in range(n):
        video, caption, _ = world.sample_clip(1000 + seed, frames=frames, size=size)
        r = checker.check(world.to_uint8(video), caption)
        ok += r["ok"]
        color_ok += r["color_ok"]
        motion_ok += r["motion_ok"]
    assert color_ok == n
    assert motion_ok >= n - 1
    assert ok >= int(0.97 * n), ok


def test_checker_rejects_wrong_claims():
    """A clip must fail captions that contradict it: wrong colour, wrong direction, wrong order."""
    video, _ = world.render_caption("a red circle moves to the right", frames=8, size=24, seed=5)
    u8 = world.to_uint8(video)
    assert checker.check(u8, "a red circle moves to the right")["ok"]
    r = checker.check(u8, "a blue circle moves to the right")
    assert not r["color_ok"] and r["motion_ok"] and not r["ok"]
    for d in ["left", "up", "down", "up and to the right", "down and to the left"]:
        r = checker.check(u8, f"a red circle moves {d}")
        assert r["color_ok"] and not r["motion_ok"] and not r["ok"], d
    assert not checker.check(u8, "a red circle grows")["ok"]
    video, _ = world.render_caption("a blue square grows, then turns green", frames=8, size=24, seed=1)
    u8 = world.to_uint8(video)
    assert checker.check(u8, "a blue square grows, then turns green")["ok"]
    assert not checker.check(u8, "a blue square shrinks, then turns green")["ok"]
    assert not checker.check(u8, "a blue square turns green, then grows")["order_ok"]
    assert not checker.check(u8, "a green square grows, then turns blue")["ok"]
    # reversed time reverses the order
    assert not checker.check(u8[::-1], "a blue square grows, then turns green")["ok"]


def test_checker_is_robust_to_noise_and_textured_backgrounds():
    rng = np.random.default_rng(0)
    passed = 0
    n = 40
    for seed in range(n):
        video, caption, spec = world.sample_clip(seed, frames=8, size=24, kind="move")
        noisy = np.clip(video + rng.normal(0, 0.04, video.shape), 0, 1)
        passed += checker.check(world.to_uint8(noisy), caption)["ok"]
    assert passed >= n - 1
    assert any(world.sample_spec(s)["nuisance"]["background"] != "plain" for s in range(10))


def test_empty_video_and_bad_input():
    gray = np.full((4, 16, 16, 3), 128, np.uint8)
    m = checker.measure(gray)
    assert not any(f["found"] for f in m)
    r = checker.check(gray, "a red circle moves to the right")
    assert not r["ok"] and not r["found_ok"]
    with pytest.raises(ValueError):
        checker.measure(np.zeros((4, 16, 16), np.uint8))
    with pytest.raises(ValueError):
        world.sample_spec(0, kind="bogus")
    with pytest.raises(ValueError):
        world.render(world.sample_spec(0), 8, 4)


def test_turn_degrees_measures_how_far_a_move_turned():
    """checker.turn_degrees: the angle between two displacements (y down, as the checker's), 0-180, symmetric,
    None where either is still; a turn of 2 degrees across a sector edge flips the 8-way call, and the turn
    says it was 2. The issue-27 benchmark's turn figures rest on it. (Mutations: no wrap at 180 fails 170 vs
    190; the still threshold dropped fails the last line.)"""
    deg = checker.turn_degrees
    assert deg((0.5, 0.0), (0.5, 0.0)) == 0.0
    assert abs(deg((0.5, 0.0), (0.0, -0.5)) - 90.0) < 1e-9  # right -> up (y down)
    assert abs(deg((0.5, 0.0), (-0.5, 0.0)) - 180.0) < 1e-9
    a, b = np.radians(21.5), np.radians(23.5)  # both sides of the right / up-right edge
    pa, pb = (0.5 * np.cos(a), -0.5 * np.sin(a)), (0.5 * np.cos(b), -0.5 * np.sin(b))
    assert checker.direction_of(*pa) == "right" and checker.direction_of(*pb) == "up-right"
    assert abs(deg(pa, pb) - 2.0) < 1e-9 and abs(deg(pb, pa) - 2.0) < 1e-9
    up_right, down_right = (0.4, -0.4), (0.4, 0.4)
    assert abs(deg(up_right, down_right) - 90.0) < 1e-9
    c, d = np.radians(170), np.radians(190)  # either side of "left": atan2 gives 170 and -170
    assert abs(deg((np.cos(c), -np.sin(c)), (np.cos(d), -np.sin(d))) - 20.0) < 1e-9
    assert deg((0.05, 0.0), (0.5, 0.0)) is None and deg((0.5, 0.0), (0.0, 0.05)) is None
