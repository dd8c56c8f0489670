"""Shared helpers for the bootstrap script tests: paths, running a script, and a throw-away Python runtime.

The throw-away runtime is a virtual environment made from the base interpreter behind the project's .venv. A
`--system-site-packages` venv would inherit the *base* interpreter's site-packages, not the .venv's (checked: no
mxnet there), so instead a .pth file puts a view of the .venv's site-packages on its path. The view leaves out one
small pinned package, so that a first run of install-mxnet.sh has exactly one thing to install, offline, from a local
wheelhouse; everything else (MXNet, numpy, ...) is already satisfied and pip installs nothing for it.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP_DIR = REPO_ROOT / "bootstrap"
INSTALL_SCRIPT = BOOTSTRAP_DIR / "install-mxnet.sh"
CGROUP_SCRIPT = BOOTSTRAP_DIR / "configure-gpu-cgroups.sh"

# Pure Python, tiny, and in the runtime's closure (python-dateutil needs it): the one pin a first run must install.
LEFT_OUT_DISTRIBUTION = "six"
SCRIPT_TIMEOUT_SECONDS = 120
# What `uname -m` says here: the wheelhouse folder install-mxnet.sh reads on this machine.
MACHINE = platform.machine()


@dataclass(frozen=True)
class ThrowAwayRuntime:
    python: Path
    own_site_packages: Path


def script_environment(**overrides: str) -> dict[str, str]:
    """The caller's environment without any pip configuration, so only the script's own pip options apply."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    environment["PIP_CONFIG_FILE"] = os.devnull
    environment.update(overrides)
    return environment


def run_install_script(*arguments: str, python: Path, **environment: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INSTALL_SCRIPT), *arguments],
        env=script_environment(MXNET_BOOTSTRAP_PYTHON=str(python), **environment),
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_SECONDS,
        check=False,
    )


def base_interpreter() -> Path:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return Path(sys.base_prefix) / "bin" / f"python{version}"


def make_throw_away_runtime(root: Path, left_out: str | tuple[str, ...] = LEFT_OUT_DISTRIBUTION) -> ThrowAwayRuntime:
    """A venv that sees the project's installed packages except `left_out` (one distribution's name, or several)."""
    # Resolved: the .venv may be a symlink (a worktree sharing another checkout's), and file paths resolve through it.
    project_site_packages = Path(sysconfig.get_paths()["purelib"]).resolve()
    left_out_paths = {
        (project_site_packages / file).resolve()
        for name in ((left_out,) if isinstance(left_out, str) else left_out)
        for file in importlib.metadata.distribution(name).files or []
    }
    left_out_top_level = {path.relative_to(project_site_packages).parts[0] for path in left_out_paths}
    view = root / "site-packages-view"
    view.mkdir()
    for entry in project_site_packages.iterdir():
        # __pycache__ at the top level only holds compiled top-level modules such as six's.
        if entry.name in left_out_top_level or entry.name == "__pycache__":
            continue
        (view / entry.name).symlink_to(entry)

    venv_dir = root / "venv"
    subprocess.run([str(base_interpreter()), "-m", "venv", "--without-pip", str(venv_dir)], check=True)
    python = venv_dir / "bin" / "python"
    own_site_packages = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (own_site_packages / "project-packages-view.pth").write_text(f"{view}\n")
    return ThrowAwayRuntime(python=python, own_site_packages=own_site_packages)


def wheel_from_installed(name: str, wheelhouse: Path) -> Path:
    """Rebuild a pure-Python wheel from an installed distribution, so the wheelhouse needs no network."""
    distribution = importlib.metadata.distribution(name)
    site_packages = Path(sysconfig.get_paths()["purelib"])
    files = [
        file
        for file in distribution.files or []
        if "__pycache__" not in file.parts and file.name not in {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
    ]
    dist_info = next(file.parts[0] for file in files if file.parts[0].endswith(".dist-info"))
    wheel_path = wheelhouse / f"{distribution.metadata['Name']}-{distribution.version}-py3-none-any.whl"
    record_lines = []
    with zipfile.ZipFile(wheel_path, "w") as wheel:
        for file in files:
            content = (site_packages / file).read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
            wheel.writestr(file.as_posix(), content)
            record_lines.append(f"{file.as_posix()},sha256={digest},{len(content)}")
        record_lines.append(f"{dist_info}/RECORD,,")
        wheel.writestr(f"{dist_info}/RECORD", "\n".join(record_lines) + "\n")
    return wheel_path


def stand_in_wheel(file_name: str, directory: Path) -> Path:
    """A wheel named ``file_name`` that carries only its metadata: enough for pip download and for the bootstrap's
    choice of files, which never open the payload (it could not be installed and imported)."""
    name, version = file_name.split("-")[:2]
    dist_info = f"{name}-{version}.dist-info"
    path = directory / file_name
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{dist_info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        wheel.writestr(f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: false\n")
        wheel.writestr(f"{dist_info}/RECORD", "")
    return path
