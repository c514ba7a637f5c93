"""Sweep report: plots (metric vs setting, seeds as error bars) and a static HTML page.

``vstar-jax report SWEEP_DIR [--out DIR]`` reads ``SWEEP_DIR/results.parquet`` and writes
``DIR`` (default ``SWEEP_DIR/report``): ``index.html`` with a summary table, the videos of each
prompt side by side (relative links to the sweep's mp4 files) with their metrics, the failed
runs with their errors, and ``plots/<metric>_vs_<setting>.png``.
"""
from __future__ import annotations

import argparse
import html
import math
import os
from collections import defaultdict

import numpy as np

from vstar_jax.io.atomic import atomic_path, write_text
from vstar_jax.sweep import read_table

METRICS = ("ofs", "mawe", "warp_error", "scuts", "clip_score", "band_score")
AXES = ("method", "frames")
REPORT_TITLE = "<title>vstar-jax sweep report</title>"  # marks an index.html as vstar-jax's own


def _num(v):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def metrics_present(rows: list[dict]) -> list[str]:
    return [m for m in METRICS if any(_num(r.get(m)) is not None for r in rows)]


def _order(values):
    return sorted(set(values), key=lambda v: (isinstance(v, str), v))


def summarize(rows: list[dict], metric: str, axis: str, series: str | None = None) -> dict:
    """Mean and seed spread of ``metric`` per (series value, axis value).

    For each seed the metric is averaged over the other settings (prompts, ...); the result is the
    mean over seeds and their standard deviation (ddof 0): {(series_value, axis_value):
    (mean, std, n_seeds)}. Only finished runs with a finite value count.
    """
    per_seed = defaultdict(list)
    for r in rows:
        v = _num(r.get(metric))
        if r.get("status") != "ok" or v is None:
            continue
        key = (r.get(series) if series else None, r.get(axis))
        per_seed[key + (r.get("seed"),)].append(v)
    grouped = defaultdict(list)
    for (s, a, _seed), values in per_seed.items():
        grouped[(s, a)].append(float(np.mean(values)))
    return {k: (float(np.mean(v)), float(np.std(v)), len(v)) for k, v in grouped.items()}


def plot_metric(rows: list[dict], metric: str, axis: str, path: str) -> None:
    """One line per value of the other axis; x = ``axis`` values; error bars = seed std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = next(a for a in AXES if a != axis)
    stats = summarize(rows, metric, axis, series)
    xs = _order(a for _, a in stats)
    names = _order(s for s, _ in stats)
    categorical = any(isinstance(x, str) for x in xs)
    fig, ax = plt.subplots(figsize=(6, 4))
    for j, s in enumerate(names):
        shift = 0.1 * (j - (len(names) - 1) / 2)  # side by side, so error bars do not overlap
        pts = [(i + shift, stats[(s, x)]) for i, x in enumerate(xs) if (s, x) in stats]
        ax.errorbar(
            [i for i, _ in pts], [m for _, (m, _, _) in pts], yerr=[sd for _, (_, sd, _) in pts],
            marker="o", capsize=4, linestyle="none" if categorical else "-", label=f"{series}={s}",
        )
    ax.set_xticks(range(len(xs)), [str(x) for x in xs], rotation=20)
    ax.set_xlabel(axis)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs {axis} (error bars: std over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _fmt(v) -> str:
    n = _num(v)
    if n is None:
        return "" if v is None else html.escape(str(v))
    return f"{n:.4g}"


def _summary_table(rows, metrics) -> str:
    stats = {m: summarize(rows, m, "frames", "method") for m in metrics}
    keys = sorted({k for s in stats.values() for k in s}, key=lambda k: (str(k[0]), k[1]))
    head = "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
    body = []
    for k in keys:
        cells = []
        for m in metrics:
            mean, sd, n = stats[m].get(k, (None, None, 0))
            cells.append(f"<td>{_fmt(mean)} &plusmn; {_fmt(sd)} (n={n})</td>" if n else "<td></td>")
        body.append(f"<tr><td>{html.escape(str(k[0]))}</td><td>{k[1]}</td>{''.join(cells)}</tr>")
    return f"<table><tr><th>method</th><th>frames</th>{head}</tr>{''.join(body)}</table>"


def _video_cell(row, metrics, sweep_dir, out_dir) -> str:
    parts = [f"<div class='run'><b>{html.escape(str(row['method']))}</b>"]
    video = row.get("video")
    if row.get("status") == "ok" and video:
        src = os.path.relpath(os.path.join(sweep_dir, video), out_dir).replace(os.sep, "/")
        parts.append(f"<video src='{html.escape(src)}' controls loop muted autoplay width='256'></video>")
    if row.get("status") == "ok":
        items = "".join(f"<tr><td>{m}</td><td>{_fmt(row.get(m))}</td></tr>" for m in metrics)
        parts.append(f"<table class='m'>{items}</table>")
    else:
        parts.append(f"<p class='err'>{html.escape(str(row.get('error')))}</p>")
    parts.append(f"<small>{html.escape(str(row['run_id']))}</small></div>")
    return "".join(parts)


def write_html(rows, metrics, plots, sweep_dir, out_dir) -> str:
    groups = defaultdict(list)
    for r in rows:
        groups[(r["prompt"], r["frames"], r["seed"])].append(r)
    sections = []
    for prompt in _order(p for p, _, _ in groups):
        sections.append(f"<h3>{html.escape(str(prompt))}</h3>")
        for (p, frames, seed) in sorted(k for k in groups if k[0] == prompt):
            cells = "".join(_video_cell(r, metrics, sweep_dir, out_dir) for r in sorted(groups[(p, frames, seed)], key=lambda r: str(r["method"])))
            sections.append(f"<h4>frames={frames} seed={seed}</h4><div class='row'>{cells}</div>")
    failed = [r for r in rows if r.get("status") != "ok"]
    fail_html = "".join(
        f"<tr><td>{html.escape(str(r['run_id']))}</td><td>{html.escape(str(r['method']))}</td>"
        f"<td>{html.escape(str(r['prompt']))}</td><td>{html.escape(str(r.get('error')))}</td></tr>"
        for r in failed
    )
    flow_models = sorted({str(r["flow_model"]) for r in rows if r.get("flow_model")})
    imgs = "".join(f"<img src='plots/{html.escape(p)}' width='480'>" for p in plots)
    page = f"""<!doctype html>
<html><head><meta charset='utf-8'>{REPORT_TITLE}
<style>body{{font-family:sans-serif}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:2px 6px}}
.row{{display:flex;flex-wrap:wrap;gap:12px}} .run{{border:1px solid #ddd;padding:4px}} .err{{color:#b00}}</style></head>
<body><h1>Sweep report: {html.escape(os.path.abspath(sweep_dir))}</h1>
<p>{len(rows)} runs, {len(failed)} failed. Flow model: {html.escape(', '.join(flow_models) or 'n/a')}.</p>
<h2>Summary (mean &plusmn; std over seeds)</h2>{_summary_table(rows, metrics)}
<h2>Plots</h2><div class='row'>{imgs}</div>
<h2>Videos</h2>{''.join(sections)}
<h2>Failed runs</h2><table><tr><th>run</th><th>method</th><th>prompt</th><th>error</th></tr>{fail_html}</table>
</body></html>
"""
    path = os.path.join(out_dir, "index.html")

    write_text(path, page)
    return path


def _is_our_report(out_dir: str) -> bool:
    try:
        with open(os.path.join(out_dir, "index.html"), encoding="utf-8", errors="replace") as f:
            return REPORT_TITLE in f.read(4096)
    except OSError:
        return False


def check_report_dir(out_dir: str, plot_names=()) -> None:
    """A report replaces its own earlier index.html and plots only: in a folder whose index.html is not
    a vstar-jax report, an existing index.html or plots/<name>.png is never replaced (one line)."""
    if _is_our_report(out_dir):
        return
    taken = [n for n in ["index.html"] + [os.path.join("plots", p) for p in plot_names]
             if os.path.lexists(os.path.join(out_dir, n))]
    if taken:
        raise ValueError(f"report folder {out_dir} holds {', '.join(taken[:3])}"
                         f"{f' and {len(taken) - 3} more' if len(taken) > 3 else ''} that vstar-jax did not write; "
                         f"a report never replaces them: choose another --out")


def make_report(sweep_dir: str, out_dir: str | None = None) -> str:
    """Write plots and index.html for a sweep directory; returns the HTML path. Files vstar-jax did not
    write are never replaced (:func:`check_report_dir`)."""
    out_dir = out_dir or os.path.join(sweep_dir, "report")
    check_report_dir(out_dir)
    rows = read_table(sweep_dir)
    if not rows:
        raise ValueError(f"no results table in {sweep_dir}")
    metrics = metrics_present(rows)
    check_report_dir(out_dir, [f"{m}_vs_{axis}.png" for m in metrics for axis in AXES])
    os.makedirs(os.path.join(out_dir, "plots"), exist_ok=True)
    plots = []
    for m in metrics:
        for axis in AXES:
            name = f"{m}_vs_{axis}.png"
            plot_metric(rows, m, axis, os.path.join(out_dir, "plots", name))
            plots.append(name)
    return write_html(rows, metrics, plots, sweep_dir, out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vstar-jax report", description="Plots and an HTML page for a sweep.")
    parser.add_argument("sweep_dir")
    parser.add_argument("--out", default=None, help="report directory (default SWEEP_DIR/report)")
    args = parser.parse_args(argv)
    print(make_report(args.sweep_dir, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
