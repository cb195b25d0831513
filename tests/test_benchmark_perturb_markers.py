"""benchmarks/perturb_markers.py end to end at smoke scale (``--quick``: a 2 x 32 model, 3 cells a type).

No biology is asserted: at this scale (and, measured, at the benchmark's full 4 x 64 scale) the
pretrained model's marker ranks are not above what their rank positions predict, so a test that
asked for it would pass or fail by luck. What is checked is what holds by construction: the
pipeline (tokenize, pretrain, evaluate, perturb, perturb-stats with both models) runs, the control
is a random model (its held-out MLM loss is chance, ln of the vocabulary), and the three rankings
the JSON reports (of the textbook markers and of the data's defining genes) are ranks of the same
genes of each type.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "perturb_markers.py"


@pytest.mark.slow
def test_quick_run_reports_the_three_rankings(shared_data):
    env = {**os.environ, "STFORMER_SHARED_DATA": str(shared_data), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, "one JSON line on stdout; the commands' output goes to stderr"
    check_report(json.loads(lines[0]))


def check_report(report: dict) -> None:
    """What the quick run's JSON must say (see the module docstring)."""
    loss = report["learned"]["held_out_mlm_loss"]
    assert loss["chance_ln_vocab"] == pytest.approx(math.log(692), abs=1e-3)
    assert abs(loss["random_init"] - loss["chance_ln_vocab"]) < 0.1  # an untrained model: chance
    assert loss["gene_frequency_no_context"] < loss["chance_ln_vocab"]
    assert loss["n_cells"] == 70 and report["learned"]["knn_split"] == "run"
    assert report["cells_per_type"] == dict.fromkeys(report["types"], 3)

    for cell_type, entry in report["types"].items():
        n = entry["n_genes_ranked"]
        assert n > 50, cell_type
        for m in entry["markers"].values():
            if "rank_position" not in m:  # expressed in fewer than min_cells of the 3 cells
                assert m["expressed_in"] < report["min_cells"]
                continue
            for name in ("pretrained", "random_init", "position"):
                assert 1 <= m[f"rank_{name}"] <= n
            assert 0 <= m["mean_rel_position"] < 1
            assert 0 <= m["matched_pct_pretrained"] <= 1
            assert 0 <= m["matched_pct_random_init"] <= 1
            assert m["expressed_in"] >= report["min_cells"]
        for key in ("spearman_shift_position_pretrained", "spearman_shift_position_random_init"):
            assert -1 <= entry[key] <= 1
        defining = entry["defining_genes"]
        assert len(defining["genes"]) == 20
        for name in ("pretrained", "random_init", "position"):
            assert 0 <= defining[f"in_top20_{name}"] <= 20
            assert 1 <= defining[f"median_rank_{name}"] <= n
    n_ranked = sum(
        "rank_position" in m for e in report["types"].values() for m in e["markers"].values()
    )
    assert n_ranked > 0
    for name in ("pretrained", "random_init", "position"):
        top, total = map(int, report["summary"][name]["markers_in_top10"].split("/"))
        assert 0 <= top <= total == n_ranked
