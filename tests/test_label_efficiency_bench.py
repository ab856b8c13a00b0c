"""``bench label_efficiency``: ``--merge`` writes results of separate runs as one, and refuses results that are not one
run's parts with one line (exit code 2, nothing written); ``--best-of`` keeps each method's runs from the result where
it needed fewest labels, on the same seeds; ``--metric success`` reads the success ratio, and is refused on a suite
without success. The parts are real smoke runs of the benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import shown
from bench.label_efficiency import main

pytestmark = pytest.mark.slow  # two learning runs, if on a smoke budget
REPO = Path(__file__).resolve().parents[1]
SMOKE = ["-m", "bench", "label_efficiency", "--smoke", "--suite", "default", "--groups", "policy", "task"]


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three smoke runs: DAgger and BC (``_a``), DAgger and the uncertainty gate (``_b``), DAgger to a success ratio
    (``_s``)."""
    out = tmp_path_factory.mktemp("parts")
    for tag, extra in (("_a", ["--methods", "bc"]), ("_b", ["--methods", "gated"]), ("_s", ["--metric", "success"])):
        subprocess.run([sys.executable, *SMOKE, *extra, "--results-dir", str(out), "--tag", tag],
                       cwd=REPO, check=True, capture_output=True)
    return {tag: out / f"label_efficiency_default{tag}.json" for tag in ("_a", "_b", "_s")}


def merge(files: list[Path], out: Path, *extra: str, flag: str = "--merge") -> dict:
    return main([flag, *map(str, files), "--results-dir", str(out), "--tag", "_ab", *extra])


def test_merged_results_hold_every_method_of_the_parts_once(parts: dict[str, Path], tmp_path: Path) -> None:
    a, b = (json.loads(parts[t].read_text())["results"] for t in ("_a", "_b"))
    assert a["methods"]["dagger"]["runs"] == b["methods"]["dagger"]["runs"]  # the same seeded run in both
    merged = merge([parts["_a"], parts["_b"]], tmp_path)
    assert (tmp_path / "label_efficiency_default_ab.json").is_file()
    assert (tmp_path / "label_efficiency_default_ab.png").is_file()
    methods = merged["results"]["methods"]
    assert list(methods) == ["dagger", "gated", "bc"]
    assert methods["bc"]["runs"] == a["methods"]["bc"]["runs"]
    assert methods["gated"]["runs"] == b["methods"]["gated"]["runs"]
    assert methods["gated"]["median_labels"] == b["methods"]["gated"]["median_labels"]
    assert methods["gated"]["verdict"].startswith("gated ") and "BC" in methods["gated"]["verdict"]  # a title line
    assert merged["args"]["suite"] == "default" and merged["args"]["groups"] == ["policy", "task"]
    assert merged["results"]["merged_from"] == [str(parts["_a"].resolve()), str(parts["_b"].resolve())]
    assert set(merged["ratios"]) >= {"dagger_over_bc_labels", "gated_over_bc_labels", "gated_over_dagger_labels"}


def test_best_of_keeps_each_methods_runs_from_the_result_that_needed_fewest_labels(
        parts: dict[str, Path], tmp_path: Path) -> None:
    def cheaper_bc(d: dict) -> None:  # as a run of BC at another learning rate that needed 7 labels on seed 0
        bc = d["results"]["methods"]["bc"]
        bc["runs"][0]["labels_to_target"] = bc["median_labels"] = 7
        d["results"]["method_params"] = {"bc": {"lr": 0.0005}}

    cheaper = edited(parts["_a"], tmp_path, cheaper_bc)
    b = json.loads(parts["_b"].read_text())["results"]
    best = merge([parts["_a"], cheaper, parts["_b"]], tmp_path, flag="--best-of")
    methods, kept = best["results"]["methods"], best["results"]["best_of"]
    assert list(methods) == ["dagger", "gated", "bc"] and (tmp_path / "label_efficiency_default_ab.png").is_file()
    assert methods["bc"]["median_labels"] == 7 and kept["bc"]["kept"] == shown(cheaper)
    assert best["results"]["method_params"] == {"bc": {"lr": 0.0005}}  # the kept result's keys for BC
    assert kept["dagger"]["kept"] == shown(parts["_a"])  # the same runs in all three: the first is kept
    assert methods["gated"]["runs"] == b["methods"]["gated"]["runs"]
    gated = b["methods"]["gated"]["median_labels"]
    assert best["ratios"]["gated_over_bc_labels"] == (gated / 7 if gated else None)
    assert "merged_from" not in best["results"]


def test_best_of_compares_a_method_on_the_same_seeds(parts: dict[str, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    def bc_on_seed(seed: int):
        def edit(d: dict) -> None:
            d["results"]["methods"]["bc"]["runs"][0]["seed"] = seed
        return edit

    def bc_on_two_seeds(d: dict) -> None:
        runs = d["results"]["methods"]["bc"]["runs"]
        runs.append({**runs[0], "seed": 1})

    other = edited(parts["_a"], tmp_path, bc_on_seed(1))
    assert "--best-of: bc ran on different seeds" in refused(capsys, [parts["_a"], other], tmp_path, flag="--best-of")
    more = edited(parts["_a"], tmp_path, bc_on_two_seeds)
    best = merge([parts["_a"], more], tmp_path, flag="--best-of")["results"]["best_of"]["bc"]
    assert best["kept"] == shown(more) and best["left_out"] == [shown(parts["_a"])]


def test_parts_inside_the_repository_are_named_relative_to_it(tmp_path: Path) -> None:
    assert shown(REPO / "bench" / "results" / "x.json") == "bench/results/x.json"
    assert shown(tmp_path / "x.json") == str(tmp_path.resolve() / "x.json")


def test_results_written_before_method_keys_existed_merge(parts: dict[str, Path], tmp_path: Path) -> None:
    older = [edited(parts[t], tmp_path, lambda d: d["results"].pop("method_params")) for t in ("_a", "_b")]
    merged = merge(older, tmp_path)
    assert list(merged["results"]["methods"]) == ["dagger", "gated", "bc"]
    assert merged["results"]["method_params"] == {}


def test_a_merge_records_the_cpu_its_parts_ran_on(parts: dict[str, Path], tmp_path: Path) -> None:
    def elsewhere(d: dict) -> None:
        d["machine"].update(cpu="Intel(R) Xeon(R)", cpu_kind="6/85 avx512f")

    merged = merge([edited(parts[t], tmp_path, elsewhere) for t in ("_a", "_b")], tmp_path)
    assert merged["machine"]["cpu"] == "Intel(R) Xeon(R)" and merged["machine"]["cpu_kind"] == "6/85 avx512f"
    unrecorded = merge([edited(parts[t], tmp_path, lambda d: d["machine"].pop("cpu_kind")) for t in ("_a", "_b")],
                       tmp_path)
    assert unrecorded["machine"]["cpu_kind"] is None


def edited(path: Path, out: Path, edit) -> Path:
    """A copy of result ``path`` changed by ``edit(envelope)``."""
    data = json.loads(path.read_text())
    edit(data)
    copy = out / f"edited_{path.name}"
    copy.write_text(json.dumps(data))
    return copy


def refused(capsys: pytest.CaptureFixture[str], files: list[Path], out: Path, *extra: str,
            flag: str = "--merge") -> str:
    with pytest.raises(SystemExit) as e:
        merge(files, out / "merged", *extra, flag=flag)
    assert e.value.code == 2 and not (out / "merged").exists()
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "Traceback" not in err
    return err


def test_results_of_other_settings_are_refused(parts: dict[str, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    other = edited(parts["_b"], tmp_path, lambda d: d["args"].update(updates=11))
    assert "has updates 11" in refused(capsys, [parts["_a"], other], tmp_path)
    elsewhere = edited(parts["_b"], tmp_path, lambda d: d["machine"].update(cpu_kind="6/85 avx512f"))
    assert json.loads(parts["_a"].read_text())["machine"]["cpu_kind"] != "6/85 avx512f"
    assert "ran on different kinds of CPU" in refused(capsys, [parts["_a"], elsewhere], tmp_path)


def test_a_seed_that_is_another_run_is_refused(parts: dict[str, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    def other_curve(d: dict) -> None:
        d["results"]["methods"]["dagger"]["runs"][0]["curve"][0][1] += 0.01

    other = edited(parts["_b"], tmp_path, other_curve)
    assert "dagger seed 0 differs between" in refused(capsys, [parts["_a"], other], tmp_path)


def test_budgets_may_differ_only_where_every_run_reached_the_target(parts: dict[str, Path], tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """BC's rounds follow DAgger's median, so parts of one setting can give BC different budgets: they merge when
    every kept run reached the target within the smallest budget (it then decided nothing), under that budget."""
    def bc_runs(seed: int, reached: int | None, budget_times: int):
        def edit(d: dict) -> None:
            for info in d["results"]["methods"].values():
                for run in info["runs"]:
                    run["seed"] = seed  # as another seed's runs
            bc = d["results"]["methods"]["bc"]
            bc["rounds"], bc["budget_labels"] = bc["rounds"] * budget_times, bc["budget_labels"] * budget_times
            for run in bc["runs"]:
                run["labels_to_target"] = reached
        return edit

    base = json.loads(parts["_a"].read_text())["results"]["methods"]["bc"]
    reached = base["budget_labels"] // 2
    (tmp_path / "x").mkdir()
    first = edited(parts["_a"], tmp_path, bc_runs(0, reached, 1))
    larger = edited(parts["_a"], tmp_path / "x", bc_runs(1, reached, 10))
    bc = merge([first, larger], tmp_path / "ok")["results"]["methods"]["bc"]
    assert (bc["rounds"], bc["budget_labels"]) == (base["rounds"], base["budget_labels"])
    assert [r["seed"] for r in bc["runs"]] == [0, 1] and bc["median_labels"] == reached
    unreached = edited(parts["_a"], tmp_path / "x", bc_runs(1, None, 10))
    assert "different rounds (" in refused(capsys, [first, unreached], tmp_path)
    other_keys = edited(parts["_a"], tmp_path / "x", lambda d: (bc_runs(1, reached, 1)(d), d["results"].update(
        method_params={"bc": {"lr": 0.0005}})))
    assert "gave it different keys" in refused(capsys, [first, other_keys], tmp_path)


def test_a_file_that_is_not_a_result_and_a_run_setting_are_refused(parts: dict[str, Path], tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.json"
    junk.write_text("[1, 2]")
    assert "junk.json is not a label_efficiency result" in refused(capsys, [parts["_a"], junk], tmp_path)
    assert "also given: --seeds" in refused(capsys, [parts["_a"], parts["_b"]], tmp_path, "--seeds", "3")


def test_the_success_metric_reads_success_ratios_and_is_not_merged_with_scores(
        parts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    score, success = (json.loads(parts[t].read_text())["results"] for t in ("_a", "_s"))
    assert success["metric"] == "success" and score["metric"] == "score"
    got, had = (r["methods"]["dagger"]["runs"][0]["curve"] for r in (success, score))
    assert [c[0] for c in got] == [c[0] for c in had]  # the same run ...
    assert [c[1] for c in got] != [c[1] for c in had]  # ... read by another measure
    assert all(0.0 <= c[1] <= 1.5 for c in got)  # a success rate over the teacher's, per task
    assert "has metric \"success\"" in refused(capsys, [parts["_a"], parts["_s"]], tmp_path)


def test_the_success_metric_is_refused_on_a_suite_without_success(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "bench", "label_efficiency", "--smoke", "--suite", "pendulum_reacher",
                          "--metric", "success", "--results-dir", str(tmp_path / "out")],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 2 and not (tmp_path / "out").exists()
    assert run.stderr.strip().splitlines()[-1].endswith(
        "--metric success: suite pendulum_reacher defines no success for its tasks (expected --metric score)")


def test_a_gate_against_a_baseline_that_never_reached_the_target_is_a_bound(parts: dict[str, Path],
                                                                             tmp_path: Path) -> None:
    def never(d: dict) -> None:  # DAgger did not reach the target; the gate did, with 50 labels
        for run in d["results"]["methods"]["dagger"]["runs"]:
            run["labels_to_target"] = None
        for run in d["results"]["methods"]["gated"]["runs"]:
            run["labels_to_target"] = 50
    merged = merge([edited(parts["_b"], tmp_path, never)], tmp_path)
    budget = merged["results"]["methods"]["dagger"]["budget_labels"]
    assert merged["ratios"]["gated_over_dagger_labels_below"] == pytest.approx(50 / budget)
    assert merged["results"]["methods"]["gated"]["target_met"] == (50 / budget <= 0.5)
