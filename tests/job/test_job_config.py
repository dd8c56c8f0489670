"""The job's command line as a user reads it: ``--help`` states the defaults the code uses."""

from __future__ import annotations

from job.cli import main
from job.config import DEFAULT_LOCAL_MASTER, _argument_parser


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
