"""Stage the files the stack uploads to ``artifacts/`` in the data bucket.

The staged folder holds exactly what lands under ``s3://<bucket>/artifacts/``:
- ``job.zip``: the ``job/`` package at the zip's root (spark-submit ``--py-files``);
- ``spark_entry.py``: a copy of ``job/spark_entry.py`` (the step's entry point);
- ``bootstrap/``: the scripts of the repository's ``bootstrap/`` folder.
The optional wheelhouse is deployed separately (it is large and changes rarely), see ``infra/artifacts.py``.
The zip is deterministic (sorted entries, fixed timestamps), so an unchanged job gives an unchanged asset hash and
``cdk deploy`` uploads nothing new.
"""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path
from typing import Iterator

JOB_ZIP_NAME = "job.zip"
ENTRY_POINT_NAME = "spark_entry.py"
BOOTSTRAP_DIR_NAME = "bootstrap"
_EXCLUDED_PARTS = {"__pycache__", ".pytest_cache"}
_EXCLUDED_SUFFIXES = {".pyc", ".pyo"}
_ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip entry can hold


def _included(path: Path, root: Path) -> bool:
    relative = path.relative_to(root)
    return path.is_file() and not _EXCLUDED_PARTS.intersection(relative.parts) and path.suffix not in _EXCLUDED_SUFFIXES


def write_job_zip(job_dir: Path, zip_path: Path) -> list[str]:
    """Zip ``job_dir`` as the package ``job/`` at the zip's root; return the entry names."""
    names = []
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(job_dir.rglob("*")):
            if not _included(path, job_dir):
                continue
            name = f"{job_dir.name}/{path.relative_to(job_dir).as_posix()}"
            entry = zipfile.ZipInfo(name, date_time=_ZIP_TIMESTAMP)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, path.read_bytes())
            names.append(name)
    return names


def stage_artifacts(source_root: Path, staging_dir: Path) -> Path:
    """Fill ``staging_dir`` (emptied first) with the artifacts of the repository at ``source_root``; return it."""
    job_dir = source_root / "job"
    entry_point = job_dir / ENTRY_POINT_NAME
    if not entry_point.is_file():
        raise FileNotFoundError(
            f"{entry_point} not found: the stack packages the job from {job_dir} and needs its entry point "
            f"{ENTRY_POINT_NAME} (see README, 'The job's command line')"
        )
    if staging_dir.exists():
        shutil.rmtree(staging_dir)
    (staging_dir / BOOTSTRAP_DIR_NAME).mkdir(parents=True)
    write_job_zip(job_dir, staging_dir / JOB_ZIP_NAME)
    shutil.copyfile(entry_point, staging_dir / ENTRY_POINT_NAME)
    for path, relative in _bootstrap_files(source_root):
        target = staging_dir / BOOTSTRAP_DIR_NAME / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return staging_dir


def _bootstrap_files(source_root: Path) -> Iterator[tuple[Path, Path]]:
    """The bootstrap scripts the stack ships, sorted, each with its path relative to ``bootstrap/``."""
    bootstrap_dir = source_root / BOOTSTRAP_DIR_NAME
    for path in sorted(bootstrap_dir.rglob("*")) if bootstrap_dir.is_dir() else []:
        if _included(path, bootstrap_dir):
            yield path, path.relative_to(bootstrap_dir)


def bootstrap_digest(source_root: Path) -> str:
    """sha256 of the bootstrap scripts a cluster boots with (their names and contents): what a running cluster keeps
    of a deploy, beside its definition."""
    digest = hashlib.sha256()
    for path, relative in _bootstrap_files(source_root):
        digest.update(str(relative).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
