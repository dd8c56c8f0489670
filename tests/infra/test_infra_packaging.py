"""The artifacts the stack uploads: job.zip (the `job` package at its root), the entry point, the bootstrap scripts."""

from __future__ import annotations

import zipfile

import pytest
from infra_helpers import REPO_ROOT

from infra.packaging import BOOTSTRAP_DIR_NAME, ENTRY_POINT_NAME, JOB_ZIP_NAME, stage_artifacts


@pytest.fixture
def fake_repo(tmp_path):
    """A small repository: a job package with a stale __pycache__, and one bootstrap script."""
    root = tmp_path / "repo"
    (root / "job" / "__pycache__").mkdir(parents=True)
    (root / "job" / "__init__.py").write_text("")
    (root / "job" / ENTRY_POINT_NAME).write_text("print('entry')\n")
    (root / "job" / "__pycache__" / "cli.cpython-311.pyc").write_bytes(b"stale")
    (root / BOOTSTRAP_DIR_NAME).mkdir()
    (root / BOOTSTRAP_DIR_NAME / "install-mxnet.sh").write_text("#!/bin/bash\n")
    return root


def test_job_zip_holds_the_job_package_at_its_root_without_bytecode(fake_repo, tmp_path):
    staged = stage_artifacts(fake_repo, tmp_path / "staged")
    assert zipfile.ZipFile(staged / JOB_ZIP_NAME).namelist() == ["job/__init__.py", "job/spark_entry.py"]


def test_entry_point_is_a_copy_of_the_jobs(fake_repo, tmp_path):
    staged = stage_artifacts(fake_repo, tmp_path / "staged")
    assert (staged / ENTRY_POINT_NAME).read_text() == "print('entry')\n"


def test_bootstrap_scripts_are_staged(fake_repo, tmp_path):
    staged = stage_artifacts(fake_repo, tmp_path / "staged")
    assert sorted(p.name for p in (staged / BOOTSTRAP_DIR_NAME).iterdir()) == ["install-mxnet.sh"]


def test_job_zip_is_byte_identical_across_runs_so_unchanged_code_is_not_redeployed(fake_repo, tmp_path):
    first = (stage_artifacts(fake_repo, tmp_path / "one") / JOB_ZIP_NAME).read_bytes()
    (fake_repo / "job" / ENTRY_POINT_NAME).touch()  # a new modification time alone must not change the zip
    second = (stage_artifacts(fake_repo, tmp_path / "two") / JOB_ZIP_NAME).read_bytes()
    assert first == second


def test_staging_replaces_what_an_earlier_run_left(fake_repo, tmp_path):
    staged = tmp_path / "staged"
    stage_artifacts(fake_repo, staged)
    (fake_repo / BOOTSTRAP_DIR_NAME / "install-mxnet.sh").unlink()
    assert list((stage_artifacts(fake_repo, staged) / BOOTSTRAP_DIR_NAME).iterdir()) == []


def test_missing_entry_point_is_named(tmp_path):
    (tmp_path / "job").mkdir()
    with pytest.raises(FileNotFoundError, match=r"job/spark_entry.py not found: the stack packages the job from"):
        stage_artifacts(tmp_path, tmp_path / "staged")


def test_real_job_package_is_zipped_without_bytecode(tmp_path):
    staged = stage_artifacts(REPO_ROOT, tmp_path / "staged")
    names = zipfile.ZipFile(staged / JOB_ZIP_NAME).namelist()
    assert "job/__init__.py" in names and f"job/{ENTRY_POINT_NAME}" in names
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)
