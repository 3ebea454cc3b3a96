"""Figures with matplotlib (the optional `plots` extra): every logged loss term of one or more runs, and
the ELECTRA b1 x b2 heat-map.

    python -m kd_core.plot RUN_DIR [RUN_DIR ...] --output curves.png [--labels a,b]

One panel per loss term: the raw term (solid), the weighted term (dashed) and the held-out term
(dots), one colour per run, runs overlaid. Figures are written to a temporary file and renamed.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from .cli import exit_code_of
from .errors import UserError
from .metrics_log import METRICS_FILE, read_metrics


def pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UserError("figures need matplotlib: pip install -e '.[plots]' (make quickstart installs it)") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def save(fig, output: str | Path) -> Path:
    output = Path(output)
    kinds = fig.canvas.get_supported_filetypes()
    if output.suffix.lstrip(".").lower() not in kinds or output.is_dir():
        # matplotlib picks the format from the suffix: `--output run/metrics.jsonl` must not replace the metrics
        raise UserError(f"--output {output}: give an image file to write, ending in .png, .pdf or .svg "
                        f"(one of .{', .'.join(sorted(kinds))})")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp" + output.suffix)
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, output)
    return output


def term_names(records: list[dict]) -> list[str]:
    """Loss terms a run logged, `total` last: from loss/<t>, weighted/<t> and eval/loss/<t> keys."""
    names = {k.split("/")[-1] for r in records for k in r if k.startswith(("loss/", "weighted/", "eval/loss/"))}
    return sorted(names - {"total"}) + (["total"] if "total" in names else [])


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if key in r]
    return [s for s, _ in points], [v for _, v in points]


def read_runs(run_dirs: list[str | Path]) -> list[list[dict]]:
    runs = []
    for run in map(Path, run_dirs):
        if not (run / METRICS_FILE).is_file():
            raise UserError(f"{run} has no {METRICS_FILE}: give the --output-dir of a training run")
        runs.append(read_metrics(run / METRICS_FILE))
    return runs


def curves_figure(runs: list[list[dict]], labels: list[str]):
    """One panel per loss term, every run overlaid: raw (solid), weighted (dashed), held-out (dots)."""
    if len(labels) != len(runs):
        raise UserError(f"{len(labels)} labels for {len(runs)} runs: give one label per run")
    terms = sorted(set().union(*(term_names(r) for r in runs)), key=lambda t: (t == "total", t))
    if not terms:
        raise UserError("no loss terms logged in these runs")
    plt = pyplot()
    cols = min(3, len(terms))
    rows = math.ceil(len(terms) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, term in zip(axes.flat, terms):
        for i, (records, label) in enumerate(zip(runs, labels)):
            color = f"C{i % 10}"
            for key, style, suffix in ((f"loss/{term}", "-", ""), (f"weighted/{term}", "--", " weighted"),
                                       (f"eval/loss/{term}", "o", " held-out")):
                steps, values = series(records, key)
                if steps:
                    ax.plot(steps, values, style, color=color, markersize=3, label=label + suffix)
        ax.set_title(term)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(terms):]:
        ax.axis("off")
    return fig


def loss_curves(run_dirs: list[str | Path], output: str | Path, labels: list[str] | None = None) -> Path:
    fig = curves_figure(read_runs(run_dirs), labels or [Path(r).name for r in run_dirs])
    path = save(fig, output)
    pyplot().close(fig)
    return path


def heatmap_figure(points: list[dict], title: str):
    """Score over (b1 rows, b2 columns), one panel per b3: `score` (± `score_std` over seeds when given);
    a point whose score is NaN (a diverged GLUE task) is drawn grey and labelled failed."""
    b1s, b2s, b3s = (sorted({p[k] for p in points}) for k in ("b1", "b2", "b3"))
    finite = [p["score"] for p in points if math.isfinite(p["score"])]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    plt = pyplot()
    fig, axes = plt.subplots(1, len(b3s), figsize=(1.3 * len(b2s) * len(b3s) + 2, 1.1 * len(b1s) + 1.5),
                             squeeze=False)
    by_key = {(p["b1"], p["b2"], p["b3"]): p for p in points}
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    for ax, b3 in zip(axes[0], b3s):
        grid = [[by_key[(b1, b2, b3)]["score"] if (b1, b2, b3) in by_key else math.nan for b2 in b2s] for b1 in b1s]
        image = ax.imshow(grid, cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1)
        for i, b1 in enumerate(b1s):
            for j, b2 in enumerate(b2s):
                p = by_key.get((b1, b2, b3))
                if p is None:
                    continue
                text = "failed" if not math.isfinite(p["score"]) else f"{p['score']:.1f}" + (
                    f"\n± {p['score_std']:.1f}" if p.get("score_std") is not None else "")
                dark = math.isfinite(p["score"]) and p["score"] < (lo + hi) / 2
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
        ax.set_xticks(range(len(b2s)), [f"{b:g}" for b in b2s])
        ax.set_yticks(range(len(b1s)), [f"{b:g}" for b in b1s])
        ax.set_xlabel("b2 (L_cos)")
        ax.set_ylabel("b1 (L_mse)")
        ax.set_title(f"b3 (L_kl) = {b3:g}")
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8)
    fig.suptitle(title, fontsize=10)
    return fig


def heatmap(points: list[dict], output: str | Path, title: str) -> Path:
    fig = heatmap_figure(points, title)
    path = save(fig, output)
    pyplot().close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kd_core.plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="output dirs of training runs (each with metrics.jsonl)")
    parser.add_argument("--output", required=True, help="the PNG (or PDF/SVG) to write")
    parser.add_argument("--labels", help="comma-separated, one per run (default: the folder names)")
    args = parser.parse_args(argv)
    labels = args.labels.split(",") if args.labels else None
    code = exit_code_of(lambda: loss_curves(args.runs, args.output, labels))
    if code == 0:
        print(f"wrote {args.output}")
    return code


if __name__ == "__main__":
    sys.exit(main())
