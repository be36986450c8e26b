"""experiments/fault_injection.py: the smoke run (an MLP SIGKILLed twice at random moments,
resumed each time) ends identical to its reference, and the comparison does catch a
difference of one metrics record, one summary value, one ulp of one array."""

import json
import shutil
import signal

import numpy as np
import pytest

from experiments import fault_injection


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("fault_injection")
    results = fault_injection.main(["--smoke", "--run-dir", str(out)])
    return out, results, json.loads((out / "results.json").read_text())


def test_the_asked_number_of_kills_landed_and_every_other_start_exited_0(smoke):
    _, _, saved = smoke
    mlp = saved["families"]["mlp"]
    killed = [s for s in mlp["starts"] if s["returncode"] == -signal.SIGKILL]
    assert saved["kills_asked"] == 2 and mlp["kills_total"] == 2 == len(killed)
    assert sum(mlp["kills"].values()) == 2 and set(mlp["kills"]) == {"start-up", "training", "save"}
    assert mlp["uninterrupted_exit_codes"] == [0]  # the reference (the smoke has no control)
    assert mlp["unkilled_exit_codes"] and set(mlp["unkilled_exit_codes"]) == {0}
    assert mlp["exits_ok"] and not mlp["failures"]
    assert mlp["starts"][-1]["delay"] is None and mlp["starts"][-1]["moment"] == "finished"
    assert all(step % 5 == 0 and 0 < step <= 30 for step in mlp["resumed_from"])  # every 5


def test_the_resumed_run_is_identical_to_the_reference(smoke):
    out, results, saved = smoke
    mlp = saved["families"]["mlp"]
    assert mlp["identical"] == dict.fromkeys(("summary", "metrics", "checkpoint"), True)
    assert all(d is None for c in mlp["comparisons"].values() for d in c.values())
    assert saved["holds"] is results["holds"] is True
    assert (out / "fault_injection.png").exists()


def test_the_comparison_reports_a_changed_record_summary_value_or_checkpoint(smoke, tmp_path):
    out, _, _ = smoke
    reference = out / "runs" / "mlp" / "ref"
    changed = tmp_path / "changed"
    shutil.copytree(reference, changed)
    assert fault_injection.compare_runs(str(reference), str(changed)) == dict.fromkeys(
        ("summary", "metrics", "checkpoint")
    )
    lines = (changed / "metrics.jsonl").read_text().splitlines()
    record = json.loads(lines[2])
    record["loss"] = float(np.nextafter(record["loss"], np.inf))  # one ulp
    lines[2] = json.dumps(record)
    (changed / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    summary = json.loads((changed / "summary.json").read_text())
    summary["final"]["test"]["accuracy"] += 1e-12
    (changed / "summary.json").write_text(json.dumps(summary))
    latest = max(int(p.name) for p in (changed / "checkpoints").iterdir() if p.name.isdigit())
    shutil.rmtree(changed / "checkpoints" / str(latest))
    found = fault_injection.compare_runs(str(reference), str(changed))
    assert found["metrics"].startswith(f"line 3 (step {record['step']} train): loss: ")
    assert found["summary"].startswith("final.test.accuracy: ")
    assert found["checkpoint"].startswith(f"latest checkpoint at step {latest} vs ")


def test_one_ulp_in_one_array_is_a_difference():
    weights = np.linspace(0, 1, 6, dtype=np.float32)
    nudged = weights.copy()
    nudged[4] = np.nextafter(nudged[4], np.float32(2))
    assert fault_injection.first_difference({"w": weights}, {"w": weights.copy()}) is None
    assert fault_injection.first_difference({"w": weights}, {"w": nudged}).startswith("w: ")
    zero = {"x": np.zeros(1, np.float32)}
    assert fault_injection.first_difference(zero, {"x": -zero["x"]}) is not None  # -0.0: bits
