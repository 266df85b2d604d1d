"""Stdlib-only bootstrap: make sure we run inside ``<repo>/.venv`` with requirements installed.

Every entry point (``up.py``, ``down.py``, ``status.py``, ``test.py``) calls
:func:`ensure_venv` before importing anything outside the standard library. Outside the
venv it creates ``.venv`` if needed, installs ``requirements.txt`` when that file is newer
than the stamp in ``.venv`` (so re-runs are fast) and re-executes the script with the
venv's interpreter. It also puts the repository root on ``sys.path``. The venv gets
``requirements-dev.txt`` (runtime + training + test tools), since the scripts that use
it also run the tests; the image installs the runtime lock file alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"
REQUIREMENTS = ROOT / "requirements-dev.txt"
# the files REQUIREMENTS includes with -r: a change in any of them re-installs
REQUIREMENT_FILES = (ROOT / "requirements.txt", ROOT / "requirements-training.txt", REQUIREMENTS)
STAMP = VENV / ".requirements.stamp"
REEXEC_GUARD = "PHOENIX_BOOTSTRAPPED"


def venv_python(venv: Path = VENV) -> Path:
    if os.name == "nt":
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def inside_venv(venv: Path = VENV) -> bool:
    try:
        return Path(sys.prefix).resolve() == venv.resolve()
    except OSError:
        return False


def requirements_stale(requirements: Path | None = None, stamp: Path = STAMP) -> bool:
    """True when a requirements file changed after the last successful install."""
    if not stamp.exists():
        return True
    files = (requirements,) if requirements is not None else REQUIREMENT_FILES
    return any(f.exists() and f.stat().st_mtime > stamp.stat().st_mtime for f in files)


def _run(cmd: list[str]) -> None:
    print("+ " + " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc != 0:
        print(f"bootstrap: command failed with exit code {rc}: {' '.join(cmd)}", file=sys.stderr)
        raise SystemExit(rc or 1)


def ensure_venv(script: str, argv: list[str] | None = None) -> None:
    """Run ``script`` inside ``.venv``; return only when already running there."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    args = sys.argv[1:] if argv is None else argv
    python = venv_python()
    if not python.exists():
        print(f"bootstrap: creating virtualenv {VENV}", flush=True)
        _run([sys.executable, "-m", "venv", str(VENV)])
    if requirements_stale():
        print(f"bootstrap: installing {REQUIREMENTS.name} into .venv", flush=True)
        _run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q",
              "-r", str(REQUIREMENTS)])
        STAMP.touch()
    if inside_venv():
        return
    if os.environ.get(REEXEC_GUARD) == "1":
        print(f"bootstrap: {python} did not start inside {VENV}; giving up", file=sys.stderr)
        raise SystemExit(1)
    os.environ[REEXEC_GUARD] = "1"
    command = [str(python), str(Path(script).resolve()), *args]
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "nt":
        # os.execv on Windows detaches from the console; run a child and mirror its code.
        raise SystemExit(subprocess.call(command))
    os.execv(command[0], command)
