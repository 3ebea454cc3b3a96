"""Every seed-table recipe end to end at smoke scale (tiny random teachers, generated corpus and tasks), and the
paper scale's run configs assembled without running them."""
import json
from pathlib import Path

import pytest

from kd_core.errors import UserError

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def keys_logged(run_dir: Path) -> set[str]:
    return {k for line in (run_dir / "metrics.jsonl").read_text().splitlines() for k in json.loads(line)}


def test_greek_table1_smoke(tmp_path):
    import greek_table1

    assert greek_table1.main(["--scale", "smoke", "--output-dir", str(tmp_path)]) == 0
    table = (tmp_path / "greek_table1.md").read_text()
    for row in ("DistilBERT (1,3,4,6): ours, init [0, 2]", "BERT (1,5,8,12): ours, init [0, 5]",
                "BERT (Att-MSE): ours, init [0, 5]", "teacher (6 layers)", "BERT (Att-MSE) (report, quoted)"):
        assert f"| {row} |" in table
    assert "| 37.3 |" in table  # the quoted DistilBERT CoLA MCC
    donor = json.loads((tmp_path / "greek_distilbert_init" / "student_init.json").read_text())
    assert donor["init"] == "checkpoint" and donor["layers"] == [0, 2]
    assert json.loads((tmp_path / "greek_cos" / "student_init.json").read_text())["layers"] == [0, 5]
    att = keys_logged(tmp_path / "greek_att")
    assert "loss/att" in att and "loss/cos" not in att
    assert "loss/cos" in keys_logged(tmp_path / "greek_cos")
    assert "Ordering by macro" in table and '"scale": "smoke"' in table
    # the controls, and the claims as paired differences (the main row pools 2 distillation x 2 fine-tuning seeds)
    assert "| control: truncated, not distilled, init [0, 5] |" in table
    assert "| control: teacherless (own MLM loss only), init [0, 5] |" in table
    claim = next(line for line in table.splitlines()
                 if line.startswith("| BERT (1,5,8,12): ours, init [0, 5] - control: truncated"))
    cells = claim.split(" | ")
    assert cells[1] == "4, 2" and cells[3].startswith("[") and cells[6].startswith(("yes", "no"))  # runs A, B; interval
    assert cells[7] == "dev examples, fine-tuning seeds, distillation seeds"  # what the interval covers
    assert "  seed: 1\n" in (tmp_path / "greek_cos_seed1" / "config.yaml").read_text()
    teacherless = keys_logged(tmp_path / "teacherless")
    assert "loss/mlm" in teacherless and "loss/cos" not in teacherless
    provenance = json.loads(table.split("Provenance: ")[1].splitlines()[0])
    assert provenance["compute"]["training_s"] > 0 and provenance["compute"]["finetuning_s"] > 0
    assert provenance["distill_seeds"] == 2 and str(tmp_path) not in provenance["command"]
    saved = (tmp_path / "greek_table1.json").read_text()  # the file a user commits: no machine paths
    assert "dev_examples" not in saved and str(tmp_path) not in saved and "<outside>/" in saved


def test_greek_table1_paper_scale_assembles_the_report_configs(tmp_path, capsys):
    import greek_table1

    assert greek_table1.main(["--scale", "paper", "--corpus", str(tmp_path / "wt103"), "--output-dir",
                              str(tmp_path), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("== ") == 4 and "greek_distilbert_init.yaml" in printed  # 3 rows + the teacherless control
    assert "teacherless: " in printed and "loss_weights={ce: 0.0, mlm: 1.0, cos: 0.0}" in printed
    from kd_core.config import load_config

    from bert_kd.distill import DistilConfig

    cfg = load_config(DistilConfig, RECIPES / "configs" / "greek_distilbert_init.yaml")
    assert cfg.student.init_checkpoint == "distilbert-base-uncased" and cfg.student.init_layers == [0, 2, 3, 5]
    with pytest.raises(UserError, match="needs --corpus"):
        greek_table1.main(["--scale", "paper", "--output-dir", str(tmp_path), "--dry-run"])


def test_distilbert_table4_smoke(tmp_path):
    import distilbert_table4

    assert distilbert_table4.main(["--scale", "smoke", "--output-dir", str(tmp_path)]) == 0
    text = (tmp_path / "distilbert_table4.md").read_text()
    assert "| ∅ - L_cos - L_mlm (no L_ce) |" in text and "| -3.69 |" in text
    assert "loss/ce" not in keys_logged(tmp_path / "no_ce") and "loss/ce" in keys_logged(tmp_path / "triple")
    assert "loss/cos" not in keys_logged(tmp_path / "no_cos") and "loss/mlm" not in keys_logged(tmp_path / "no_mlm")
    assert json.loads((tmp_path / "random_init" / "student_init.json").read_text())["init"] == "random"
    change = next(line for line in text.splitlines() if line.startswith("| L_ce - ∅ - L_mlm (no L_cos) |")
                  and line.endswith("| -1.46 |"))
    assert change.split(" | ")[2].split(" [")[1].count(",") == 1  # our change with its 95% interval
    assert "| triple loss, teacher init - control: truncated, not distilled | 4, 2 |" in text  # 2 distil x 2 fine-tune
    assert "| control: teacherless (own MLM loss only), teacher init |" in text


def test_herbert_scenarios_smoke(tmp_path):
    import torch
    from safetensors.torch import load_file

    import herbert_scenarios

    assert herbert_scenarios.main(["--scale", "smoke", "--output-dir", str(tmp_path)]) == 0
    text = (tmp_path / "herbert_scenarios.md").read_text()
    for row in ("S0: random init, no pretraining", "S3: truncated init, MLM only", "S5: truncated init, distilled from T1",
                "T1: teacher adapted further on the corpus"):
        assert f"| {row} |" in text
    assert not (tmp_path / "S0" / "metrics.jsonl").exists() and (tmp_path / "S0" / "final" / "config.json").is_file()
    assert keys_logged(tmp_path / "S1") >= {"loss/mlm"} and "loss/ce" not in keys_logged(tmp_path / "S1")
    assert "loss/cos" in keys_logged(tmp_path / "S4") and "loss/cos" in keys_logged(tmp_path / "S4_seed1")
    assert "| S4: truncated init, distilled from T0 - S2: truncated init, no pretraining | 4, 2 |" in text
    t1 = load_file(tmp_path / "T1" / "final" / "model.safetensors")
    t0 = load_file(tmp_path / "assets" / "mlm_teacher" / "model.safetensors")
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(t1[name], t0[name])  # T1 was trained further


def test_korean_slides_smoke(tmp_path):
    import korean_slides

    assert korean_slides.main(["--scale", "smoke", "--output-dir", str(tmp_path)]) == 0
    text = (tmp_path / "korean_slides.md").read_text()
    for row in ("DistilBERT-shaped", "DistilBERT-shaped + pred", "TinyBERT-shaped 4x312 + trm + pred"):
        assert f"| {row} |" in text
    assert (tmp_path / "task_teachers" / "rte" / "config.json").is_file()  # the fine-tuned teacher, saved
    two_stage = tmp_path / "tinybert" / "two-stage" / "glue" / "rte" / "lr0.001_bs16" / "seed0" / "result.json"
    assert set(json.loads(two_stage.read_text())["stages"]) == {"stage1", "stage2"}
    assert {"loss/emb", "loss/hid", "loss/att"} <= keys_logged(tmp_path / "tinybert")
    assert "| DistilBERT-shaped + pred - DistilBERT-shaped | 2, 2 |" in text  # each claim with its seeds and interval
    assert "| DistilBERT-shaped - control: DistilBERT-shaped truncated, not distilled | 2, 2 |" in text


def test_electra_ablation_smoke(tmp_path):
    import electra_ablation

    assert electra_ablation.main(["--scale", "smoke", "--output-dir", str(tmp_path)]) == 0
    points = json.loads((tmp_path / "points" / "ablation.json").read_text())["points"]
    assert [(p["b1"], p["b2"], p["b3"]) for p in points] == [(0.0, 1.0, 1.0), (1.0, 1.0, 1.0)]
    assert "loss/hid" not in keys_logged(Path(points[0]["run_dir"]))  # b1 = 0: L_mse = emb+hid+att+out not computed
    assert "loss/hid" in keys_logged(Path(points[1]["run_dir"]))
    assert (tmp_path / "points" / "heatmap.png").read_bytes().startswith(b"\x89PNG")


def test_ordering_note_says_when_rankings_disagree():
    from kd_core.glue.results import ModelResults
    from scales import ordering_note

    def result(label, rte, wnli):
        return ModelResults.from_json({"label": label, "tasks": {t: {"chosen": "c", "cells": {"c": {"runs": [
            {"seed": 0, "metrics": {"accuracy": v}, "combined": v}]}}} for t, v in (("rte", rte), ("wnli", wnli))}})

    refs = [{"label": "A (quoted)", "scores": {"rte": {"accuracy": 60.0}, "wnli": {"accuracy": 50.0}}},
            {"label": "B (quoted)", "scores": {"rte": {"accuracy": 50.0}, "wnli": {"accuracy": 50.0}}}]
    pairs = [("A", "A (quoted)"), ("B", "B (quoted)")]
    agree = ordering_note([result("A", 70.0, 50.0), result("B", 65.0, 50.0)], refs, pairs)
    assert agree.count("agrees") == 2 and "over rte, wnli: ours A (60.0) > B (57.5)" in agree
    # B ahead only through WNLI: the ordering over all tasks disagrees, the one without WNLI agrees
    wnli_only = ordering_note([result("A", 66.0, 40.0), result("B", 65.0, 60.0)], refs, pairs)
    assert "over rte, wnli: ours B (62.5) > A (53.0); this DISAGREES" in wnli_only
    assert "over rte: ours A (66.0) > B (65.0); this agrees" in wnli_only
    assert "no per-example predictions to test the differences" in agree


def test_ordering_note_tests_each_step_of_the_ranking():
    """With per-example predictions, each step of our ranking gets its interval; what it cannot resolve is said to be
    unresolved, with what it could detect."""
    import numpy as np
    from kd_core.glue.results import ModelResults
    from scales import ordering_note

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)

    def result(label, predictions):
        accuracy = 100 * float(np.mean(predictions == labels))
        runs = [{"seed": seed, "metrics": {"accuracy": accuracy}, "combined": accuracy, "dev_examples": {"dev": {
            "predictions": predictions.tolist(), "labels": labels.tolist()}}} for seed in (0, 1)]
        return ModelResults.from_json({"label": label, "tasks": {"rte": {"chosen": "c", "cells": {"c": {"runs": runs}}}}})

    good, coin = labels.copy(), rng.integers(0, 2, 300)
    near = coin.copy()
    near[:3] = labels[:3]  # three examples better than the coin: within noise
    refs = [{"label": f"{x} (quoted)", "scores": {"rte": {"accuracy": v}}} for x, v in (("A", 70), ("B", 60), ("C", 50))]
    pairs = [("A", "A (quoted)"), ("B", "B (quoted)"), ("C", "C (quoted)")]
    note = ordering_note([result("A", good), result("B", near), result("C", coin)], refs, pairs)
    assert "this agrees" in note and "A - B = +" in note
    step_ab, step_bc = note.split("A - B = ")[1].split(";")[0], note.split("B - C = ")[1]
    assert "not resolved" not in step_ab and "not resolved (detectable: " in step_bc
    assert "(1 of 2 steps not resolved by this data)" in note


@pytest.mark.parametrize("argv, expected", [
    (["greek_table1.py", "--scale", "smoke", "--distill-seeds", "0"], "--distill-seeds 0: give 1 or more"),
    (["distilbert_table4.py", "--scale", "paper", "--dry-run"], "--scale paper needs --corpus"),
    # smoke numbers once overwrote a committed table: only --results writes into results/, never at smoke scale
    (["greek_table1.py", "--scale", "smoke", "--results", str(RECIPES.parent / "results" / "greek_table1.md")],
     "smoke-scale numbers never go into results/"),
    (["distilbert_table3.py", "--scale", "smoke", "--results", str(RECIPES.parent / "results" / "x.md")],
     "smoke-scale numbers never go into results/"),
])
def test_recipe_user_errors_are_one_line(argv, expected, tmp_path):
    """What a user runs: the script itself, exit 2 and one `error:` line, no traceback, nothing written."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(RECIPES / argv[0]), *argv[1:], "--output-dir", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert expected in done.stderr.strip().splitlines()[-1]
    assert len([line for line in done.stderr.splitlines() if line.startswith("error:")]) == 1
    assert not (tmp_path / "out").exists()
