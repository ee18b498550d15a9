"""Finding a Java runtime of a given major version."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from core.errors import StackError

_VERSION = re.compile(r'version "(\d+)(?:\.(\d+))?')


@dataclass(frozen=True, slots=True)
class Java:
    path: str
    major: int


def java_version(path: str) -> int | None:
    """The major version `path` reports (`1.8` -> 8), or None if it does not run."""
    try:
        result = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _VERSION.search(result.stderr + result.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def candidates(preferred_env: str | None = None) -> list[str]:
    """Java executables in order of preference: `$<preferred_env>`, `$JAVA_HOME`, PATH, /usr/lib/jvm (newest first)."""
    found: list[str] = []
    if preferred_env and os.environ.get(preferred_env):
        found.append(os.environ[preferred_env])
    if os.environ.get("JAVA_HOME"):
        found.append(str(Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    on_path = shutil.which("java")
    if on_path:
        found.append(on_path)
    found.extend(sorted(glob.glob("/usr/lib/jvm/*/bin/java"), reverse=True))
    return list(dict.fromkeys(found))


def find_java(min_major: int, preferred_env: str | None = None) -> Java | None:
    """The first candidate whose major version is at least `min_major`."""
    for path in candidates(preferred_env):
        major = java_version(path)
        if major is not None and major >= min_major:
            return Java(path, major)
    return None


def require_java(min_major: int, purpose: str) -> Java:
    java = find_java(min_major)
    if java is None:
        raise StackError(
            f"no Java {min_major} or newer found for {purpose}",
            hint="install one (apt-get install -y openjdk-17-jre-headless) or set JAVA_HOME",
        )
    return java
