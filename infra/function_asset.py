"""Stage the trigger Lambda's code with the SDK and Powertools pinned in requirements.lock, from the installed venv.

Why: the function must not depend on the SDK the Lambda runtime happens to carry (its version depends on the runtime
and the region, and conditional writes need a recent one), nor on a public SSM parameter naming a Powertools layer
that may not be published for a version. So the asset holds the function's own modules plus the distributions they
import, copied from this environment (which ``make venv`` installs from requirements.lock): boto3, botocore,
aws-lambda-powertools and their runtime dependencies. Lambda puts the function's folder first on ``sys.path``, so these
win over the runtime's copies.

How: CDK's bundling runs pip in a Docker image, and Docker is not available everywhere synth runs. Every distribution
needed is pure Python (checked: a compiled one would need a build for Lambda's platform), so the files pip installed,
which ``importlib.metadata`` lists per distribution, are the files Lambda needs. They go into one zip, written as
``infra/packaging.py`` writes job.zip: sorted entries, fixed timestamps, no bytecode, so an unchanged lock gives an
unchanged asset hash (and one file is quick for CDK to hash and copy at every synth). Each distribution's version is
checked against requirements.lock at synth, and the unzipped size against Lambda's limit.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from importlib.metadata import Distribution, PackageNotFoundError, distribution
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# What the function imports from outside the standard library; their own requirements come along.
ROOT_DISTRIBUTIONS = ("boto3", "aws-lambda-powertools")
# Lambda's limit on a function's unzipped code, layers included (it has none).
LAMBDA_UNZIPPED_LIMIT_BYTES = 250 * 1024 * 1024
# The environment requirement markers are evaluated for: the function's runtime (python3.11 on x86_64 Linux), whatever
# machine runs the synth.
LAMBDA_MARKER_ENVIRONMENT = {
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "sys_platform": "linux",
    "os_name": "posix",
    "python_version": "3.11",
    "python_full_version": "3.11.0",
    "implementation_version": "3.11.0",
    "extra": "",
}
_EXCLUDED_PARTS = {"__pycache__"}
_EXCLUDED_SUFFIXES = {".pyc", ".pyo"}
_ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip entry can hold: the same files give the same zip
_LOCK_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", re.MULTILINE)


class FunctionAssetError(ValueError):
    """The environment cannot produce the function's asset; the message says which distribution and how to fix it."""


def locked_versions(lock_path: Path) -> dict[str, str]:
    """``name -> version`` of every ``name==version`` line of requirements.lock (names canonicalized)."""
    return {canonicalize_name(name): version for name, version in _LOCK_LINE.findall(lock_path.read_text())}


def runtime_distributions(roots: tuple[str, ...] = ROOT_DISTRIBUTIONS) -> list[Distribution]:
    """The installed distributions ``roots`` need at run time on Lambda (no extras), sorted by name."""
    found: dict[str, Distribution] = {}
    pending = list(roots)
    while pending:
        name = canonicalize_name(pending.pop())
        if name in found:
            continue
        try:
            found[name] = distribution(name)
        except PackageNotFoundError:
            raise FunctionAssetError(
                f"{name} is not installed, but the trigger function needs it; run `make venv` (requirements.lock)"
            ) from None
        for text in found[name].requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({**default_environment(), **LAMBDA_MARKER_ENVIRONMENT}):
                pending.append(requirement.name)
    return [found[name] for name in sorted(found)]


def build_function_zip(function_dir: Path, zip_path: Path, lock_path: Path) -> Path:
    """Write ``zip_path``: the function's modules at its root, and the locked distributions beside them; return it.

    The zip is rewritten only when its inputs changed (their digest is kept next to it), since every synth asks for it.
    """
    entries = _asset_files(function_dir, lock_path)
    # The inputs: the function's files, and each distribution as pip recorded it (RECORD holds every file's hash).
    digest = hashlib.sha256()
    for relative, source in entries:
        if not relative.parts[0].endswith(".dist-info") and source.is_relative_to(function_dir):
            digest.update(f"{relative.as_posix()}\0".encode() + hashlib.sha256(source.read_bytes()).digest())
        elif relative.name == "RECORD":
            digest.update(f"{relative.as_posix()}\0".encode() + source.read_bytes())
    digest_path = zip_path.with_name(zip_path.name + ".sha256")
    if zip_path.is_file() and digest_path.is_file() and digest_path.read_text() == digest.hexdigest():
        return zip_path
    size = sum(source.stat().st_size for _, source in entries)
    if size > LAMBDA_UNZIPPED_LIMIT_BYTES:
        raise FunctionAssetError(
            f"the trigger function's code is {size / 2**20:.0f} MiB unzipped; Lambda accepts at most "
            f"{LAMBDA_UNZIPPED_LIMIT_BYTES / 2**20:.0f} MiB"
        )
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for relative, source in entries:
            entry = zipfile.ZipInfo(relative.as_posix(), date_time=_ZIP_TIMESTAMP)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, source.read_bytes())
    digest_path.write_text(digest.hexdigest())
    return zip_path


def _asset_files(function_dir: Path, lock_path: Path) -> list[tuple[Path, Path]]:
    """(path in the asset, source file) for the function's files and every locked runtime distribution, sorted."""
    locked = locked_versions(lock_path)
    distributions = runtime_distributions()
    for dist in distributions:
        name = canonicalize_name(dist.metadata["Name"])
        if locked.get(name) != dist.version:
            raise FunctionAssetError(
                f"{name} {dist.version} is installed, but requirements.lock pins "
                f"{locked.get(name, 'nothing')}; the trigger function ships what is locked: run `make venv`"
                + ("" if name in locked else f" after adding {name} to requirements.in and `make lock`")
            )
        if "Root-Is-Purelib: true" not in (dist.read_text("WHEEL") or ""):
            raise FunctionAssetError(
                f"{name} {dist.version} is not pure Python (its WHEEL says no Root-Is-Purelib: true): a copy from this "
                "machine would not run on Lambda; bundle it with a build for Lambda's platform instead"
            )
    owners: dict[Path, str] = {}
    entries: list[tuple[Path, Path]] = []

    def add(relative: Path, source: Path, owner: str) -> None:
        if relative in owners:
            raise FunctionAssetError(f"{relative} comes from both {owners[relative]} and {owner}; the asset needs one")
        owners[relative] = owner
        entries.append((relative, source))

    for path in sorted(function_dir.rglob("*")):
        if path.is_file() and _included(path.relative_to(function_dir)):
            add(path.relative_to(function_dir), path, "the function")
    for dist in distributions:
        name = dist.metadata["Name"]
        for relative in sorted(Path(str(file)) for file in dist.files or []):
            # Files outside site-packages (console scripts in bin/) are not importable; the function needs none.
            if relative.parts[0] != ".." and _included(relative):
                add(relative, Path(dist.locate_file(relative)), name)
    return sorted(entries)


def _included(relative: Path) -> bool:
    return not _EXCLUDED_PARTS.intersection(relative.parts) and relative.suffix not in _EXCLUDED_SUFFIXES
