"""Figures: loss curves of runs overlaid (the CLI), and the b1 x b2 heat-map, drawn by matplotlib."""
from __future__ import annotations

import math

import pytest

pytest.importorskip("matplotlib", reason="figures need the plots extra (make test installs it)")

from helpers import tiny_pretrain_config
from kd_core import pretrain
from kd_core.metrics_log import read_metrics
from kd_core.plot import curves_figure, heatmap, heatmap_figure, main, term_names


def test_loss_curves_cli_draws_every_term_of_each_run(tiny_corpus, tmp_path, capsys):
    for name, lr in (("a", 1e-3), ("b", 1e-4)):
        pretrain.run(tiny_pretrain_config(tiny_corpus, max_steps=6, eval_every=3, lr=lr), str(tmp_path / name))
    out = tmp_path / "figs" / "curves.png"
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--output", str(out), "--labels", "fast,slow"]) == 0
    assert out.read_bytes().startswith(b"\x89PNG") and out.stat().st_size > 10_000
    assert not list(out.parent.glob("*.tmp*"))
    fig = curves_figure([read_metrics(tmp_path / n / "metrics.jsonl") for n in "ab"], ["fast", "slow"])
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["mlm", "total"]
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == ["fast", "fast weighted", "fast held-out", "slow", "slow weighted", "slow held-out"]


def test_term_names_cover_raw_weighted_and_held_out_with_total_last():
    records = [{"step": 1, "loss/ce": 1, "weighted/ce": 5, "loss/total": 5}, {"step": 2, "eval/loss/mlm": 2}]
    assert term_names(records) == ["ce", "mlm", "total"]


def test_plot_cli_bad_input_is_one_error_line(tmp_path, capsys):
    assert main([str(tmp_path), "--output", str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path} has no metrics.jsonl: give the --output-dir of a training run"


def test_heatmap_marks_failed_points_and_spread(tmp_path):
    points = [{"b1": b1, "b2": b2, "b3": 1.0, "score": 50 + b1 + 2 * b2, "score_std": 0.5}
              for b1 in (0.0, 1.0) for b2 in (0.0, 1.0)]
    points[0]["score"] = math.nan  # a diverged GLUE task
    texts = [t.get_text() for t in heatmap_figure(points, "t").axes[0].texts]
    assert texts == ["failed", "52.0\n± 0.5", "51.0\n± 0.5", "53.0\n± 0.5"]
    assert heatmap(points, tmp_path / "h.png", "t").read_bytes().startswith(b"\x89PNG")
