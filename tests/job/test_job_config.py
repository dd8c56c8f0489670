"""The job's command line as a user reads it: ``--help`` states the defaults the code uses."""

from __future__ import annotations

import pytest

from job.cli import main
from job.config import DEFAULT_LOCAL_MASTER, ConfigError, _argument_parser, parse_args


def test_master_help_states_the_default_master_the_job_uses(capsys):
    """``python -m job`` without ``--master`` runs on ``DEFAULT_LOCAL_MASTER`` (job/cli.py); the help said
    ``local[*]``, which drops the task retries a local run has."""
    (master,) = [action for action in _argument_parser()._actions if "--master" in action.option_strings]
    assert f"default {DEFAULT_LOCAL_MASTER}" in master.help
    assert DEFAULT_LOCAL_MASTER == "local[*,4]"
    try:
        main(["--help"])
    except SystemExit as exit_:
        assert exit_.code == 0
    assert "local[*,4]" in " ".join(capsys.readouterr().out.split())


def test_a_run_record_uri_is_checked_like_the_other_uris():
    base = ["--input", "in/", "--model", "m/", "--output", "out/"]
    assert parse_args(base).run_record is None  # no record unless asked (python -m job, make demo)
    assert parse_args([*base, "--run-record", "s3://bucket/runs/1.json"]).run_record == "s3://bucket/runs/1.json"
    with pytest.raises(ConfigError, match=r"--run-record 'https://example.com/1.json': only s3:// URIs"):
        parse_args([*base, "--run-record", "https://example.com/1.json"])
