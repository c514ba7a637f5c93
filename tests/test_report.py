"""Sweep report: summary statistics, plots and the HTML page."""
import html.parser
import os

import numpy as np
import pytest

from test_sweep import tiny_config
from vstar_jax.report import main, summarize
from vstar_jax.sweep import read_table, run_sweep


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.videos, self.images = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "video":
            self.videos.append(a["src"])
        if tag == "img":
            self.images.append(a["src"])


def test_summarize_means_over_prompts_then_seeds():
    rows = [
        {"status": "ok", "method": "a", "frames": 8, "seed": 0, "prompt": "p", "ofs": 1.0},
        {"status": "ok", "method": "a", "frames": 8, "seed": 0, "prompt": "q", "ofs": 3.0},
        {"status": "ok", "method": "a", "frames": 8, "seed": 1, "prompt": "p", "ofs": 6.0},
        {"status": "error", "method": "a", "frames": 8, "seed": 2, "prompt": "p", "ofs": None},
        {"status": "ok", "method": "b", "frames": 8, "seed": 0, "prompt": "p", "ofs": float("nan")},
    ]
    s = summarize(rows, "ofs", "method")
    # seed 0: mean(1, 3) = 2; seed 1: 6 -> mean 4, std 2 over 2 seeds; nan and errors dropped
    assert s == {(None, "a"): (4.0, 2.0, 2)}


def test_report_html_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    config, d = tiny_config(seeds=[0, 1], frames=[8, 12], write_videos=True)
    config.methods = {"plain": {"tar": None}, "tar_64D1": {"tar": "64D1"}, "broken": {"tar": "x"}}
    sweep = tmp_path / "sweep"
    run_sweep(config, str(sweep), d, progress=False)
    rows = read_table(str(sweep))
    assert len(rows) == 2 * 3 * 2 * 2

    assert main([str(sweep)]) == 0
    out = sweep / "report"
    page = (out / "index.html").read_text()
    links = _Links()
    links.feed(page)
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(links.videos) == len(ok) == 16
    for src in links.videos:
        assert not os.path.isabs(src) and (out / src).is_file()
    for metric in ("ofs", "mawe", "warp_error", "scuts"):
        for axis in ("method", "frames"):
            png = out / "plots" / f"{metric}_vs_{axis}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
            assert f"plots/{png.name}" in links.images
    assert page.count("this method always fails") == 2 * 2 * 2 + 2 * 2 * 2  # video grid + failed table
    for r in ok[:3]:
        assert r["run_id"] in page and f"{r['ofs']:.4g}" in page
    # the summary row of plain at 8 frames: mean and std over seeds of the per-seed prompt means
    per_seed = [np.mean([r["ofs"] for r in ok if r["method"] == "plain" and r["frames"] == 8 and r["seed"] == s]) for s in (0, 1)]
    assert f"{np.mean(per_seed):.4g} &plusmn; {np.std(per_seed):.4g} (n=2)" in page
