"""Fetching the stack's jars with Maven, so they are cached in the local repository (~/.m2) once."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

from core.errors import StackError

# Output of Maven that means the remote repository could not be reached (not that an artifact is missing).
_NETWORK_SIGNS = (
    "Could not transfer artifact",
    "UnknownHostException",
    "Connection refused",
    "Network is unreachable",
    "Connect timed out",
    "connect timed out",
    "Temporary failure in name resolution",
    "offline mode",
    # With -q Maven hides transfer errors; these follow when nothing could be downloaded.
    "No plugin found for prefix",
    "Plugin not found",
)


def maven_base_args() -> list[str]:
    """`mvn` with batch mode; `$CDC_MAVEN_REPO` replaces the local repository (to measure a cold cache)."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError(
            "Maven (mvn) is not installed; the stack downloads Kafka and the registry with it",
            hint="apt-get install -y maven",
        )
    args = [mvn, "-B", "-q", "-Dstyle.color=never"]
    repo = os.environ.get("CDC_MAVEN_REPO")
    if repo:
        args.append(f"-Dmaven.repo.local={repo}")
    return args


def run_maven(args: Sequence[str], *, what: str, timeout: float = 1800) -> None:
    """Run one Maven goal; failures become one line saying whether the network or the artifact is at fault."""
    command = [*maven_base_args(), *args]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise StackError(f"Maven took longer than {timeout:.0f}s to fetch {what}", hint="check the network") from None
    if result.returncode == 0:
        return
    output = result.stdout + result.stderr
    if any(sign in output for sign in _NETWORK_SIGNS):
        raise StackError(
            f"Maven could not download {what}: the remote repository is unreachable",
            hint="check the network and the proxy/mirror settings in ~/.m2/settings.xml, "
            "or run once where it is reachable: the jars stay cached in ~/.m2",
        )
    errors = [line.strip() for line in output.splitlines() if "ERROR" in line] or output.strip().splitlines()[-1:]
    raise StackError(
        f"Maven failed to fetch {what}: {errors[0] if errors else 'exit code ' + str(result.returncode)}",
        hint="rerun with --debug or run the mvn command by hand: " + " ".join(command),
    )
