"""`toroid study run|status|report` through typer's test runner."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.test_cli import assert_one_line_error, invoke
from tests.test_study import TINY


def test_run_status_and_report(tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "analyses": {"bends": None}}))
    out = tmp_path / "study"
    result = invoke(["study", "run", config, "--out", out, "--quiet"])
    assert result.exit_code == 0, result.output
    assert "report:" in result.output and (out / "study.db").is_file()
    assert "1. " in result.output and "5. " in result.output  # the verdict lines
    status = invoke(["study", "status", out, "--pending"])
    assert status.exit_code == 0, status.output
    assert "complete" in status.output and "train" in status.output
    report = invoke(["study", "report", out])
    assert report.exit_code == 0, report.output
    assert (out / "report.html").is_file()


def test_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({**TINY, "seeds": [1, 1]}))
    assert_one_line_error(invoke(["study", "run", config, "--out", tmp_path / "x"]), "seeds")
    assert_one_line_error(invoke(["study", "run", "--preset", "huge"]), "--preset", "huge")
    assert_one_line_error(invoke(["study", "run", "--executor", "slurm"]), "--executor")
    assert_one_line_error(invoke(["study", "run", "--workers", "0"]), "--workers")
    assert_one_line_error(invoke(["study", "status", tmp_path]), "not a study directory")
    assert_one_line_error(invoke(["study", "run", tmp_path / "missing.yaml"]), "does not exist")
