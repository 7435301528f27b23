"""Every ```python block of README.md and docs/*.md runs as written; the README's commands hold.

Each block runs in a fresh Python process (a fresh namespace, and jax started the way the block
expects): blocks that use several devices get eight virtual CPU devices, and the multi-host recipe
runs as two processes on localhost that meet over gloo, as the recipe says.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK_TIMEOUT_S = 120
MULTI_DEVICE = "--xla_force_host_platform_device_count=8"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def blocks(language: str) -> list[tuple[str, str]]:
    """(``file:line``, code) of every fenced block in that language."""
    found = []
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            if match.group(1) == language:
                line = text.count("\n", 0, match.start()) + 1
                found.append((f"{path.relative_to(ROOT)}:{line}", match.group(2)))
    return found


PYTHON_BLOCKS = blocks("python")


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "MPLBACKEND")}
    return {**env, "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg", **extra}


def start(code: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen, where: str) -> str:
    """The process's stdout; raises AssertionError with its stderr when it failed or hung."""
    try:
        out, err = process.communicate(timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"{where} ran past {BLOCK_TIMEOUT_S} s:\n{err[-3000:]}") from None
    assert process.returncode == 0, f"{where} failed:\n{err[-5000:]}"
    return out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_block(where: str, code: str, cwd: Path) -> None:
    """Run one block as a user would; raises AssertionError when it fails."""
    if "jax.distributed.initialize" in code:  # the multi-host recipe: one process per "host"
        env = child_env(COORDINATOR=f"127.0.0.1:{free_port()}")
        hosts = [start(code, cwd, {**env, "RANK": str(rank)}) for rank in range(2)]
        try:
            outputs = [finish(host, f"{where} (RANK={rank})") for rank, host in enumerate(hosts)]
        finally:
            for host in hosts:
                if host.poll() is None:
                    host.kill()
        results = [out.strip().splitlines()[-1].split(" ", 1) for out in outputs]
        assert [rank for rank, _ in results] == ["0", "1"], outputs
        assert results[0][1] == results[1][1], outputs  # "the same on every host"
        return
    several = "device_count()" in code or "pmap" in code or "shard_map" in code
    finish(start(code, cwd, child_env(**({"XLA_FLAGS": MULTI_DEVICE} if several else {}))), where)


@pytest.fixture(scope="module")
def block_failures(tmp_path_factory) -> dict[str, str | None]:
    """Every block run once, two at a time (most of each run is XLA compiling on one core)."""

    def attempt(where: str, code: str) -> str | None:
        try:
            run_block(where, code, tmp_path_factory.mktemp("block"))
        except AssertionError as error:
            return str(error)
        return None

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {where: pool.submit(attempt, where, code) for where, code in PYTHON_BLOCKS}
        return {where: future.result() for where, future in futures.items()}


def test_the_documents_have_python_blocks():
    assert len(PYTHON_BLOCKS) >= 9, [where for where, _ in PYTHON_BLOCKS]


@pytest.mark.parametrize("where", [where for where, _ in PYTHON_BLOCKS])
def test_python_block_runs_as_written(where, block_failures):
    failure = block_failures[where]
    if failure is not None:
        pytest.fail(failure, pytrace=False)


# -- the README's commands -------------------------------------------------------------------------


def readme_commands() -> list[str]:
    """The command lines of the README's bash blocks, comments stripped."""
    lines = []
    for where, code in blocks("bash"):
        if where.startswith("README.md"):
            for line in code.splitlines():
                command = line.split("  #")[0].strip()
                if command:
                    lines.append(command)
    return lines


def test_readme_set_up_commands_install_what_they_run():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    commands = readme_commands()
    assert commands[:2] == [
        "pip install -e '.[cli]' && jaxmetrics-ad demo",
        "pip install -e '.[test]' && python -m pytest",
    ]
    assert project["scripts"]["jaxmetrics-ad"] == "jaxmetrics_ad.cli:main"
    extras = {
        name: {re.split(r"[<>=!~ \[]", spec)[0].lower() for spec in specs}
        for name, specs in project["optional-dependencies"].items()
    }
    # the CLI reads images (Pillow), shows progress (tqdm) and writes --plots (matplotlib)
    assert {"pillow", "tqdm", "matplotlib"} <= extras["cli"]
    # the test command runs notebooks (nbmake, ipykernel) and the tests' references
    assert {"pytest", "nbmake", "ipykernel", "matplotlib", "scikit-learn", "scipy"} <= extras[
        "test"
    ]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")  # "(what .ci/run runs)"
    assert "pip install --quiet -e '.[test]'" in ci
    assert ci.rstrip().splitlines()[-1] == "python -m pytest"


def test_readme_command_lines_parse():
    from jaxmetrics_ad.cli import build_parser

    parser = build_parser()
    commands = [c for c in readme_commands() if c.startswith("jaxmetrics-ad ")]
    assert len(commands) >= 3, commands
    for command in commands:
        parser.parse_args(shlex.split(command)[1:])  # exits (SystemExit) on an unknown option


def test_relative_links_point_at_files():
    link = re.compile(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)")
    for path in DOCUMENTS:
        for target in link.findall(path.read_text(encoding="utf-8")):
            assert (path.parent / target).exists(), f"{path.name}: broken link {target}"


# -- readable reprs (the ones the README and notebooks show) ----------------------------------------


def test_reprs_round_floats():
    import jaxmetrics_ad as jm

    text = repr(jm.AUPRO())
    assert "fpr_limit=0.3," in text, text
    assert "fpr_bounds=(1e-05, 0.0001)" in repr(jm.AUPIMO())
    assert "thresholds=(0.1, 0.2)" in repr(jm.AUROC(thresholds=(0.1, 0.2)))
    assert "thresholds=(0.1,)" in repr(jm.AUROC(thresholds=(0.1,)))
