"""Every command the README shows runs as written.

Commands are read from the README itself: each line of a ```bash block and each ``$ `` line of a console block.
A command inside a ``<!-- figures: NAME -->`` block is run by ``scripts/readme_figures.py``, which writes the
command line and its output into the block (``tests/test_readme_figures.py`` checks those figures against the
shipped reports). Every other command is listed in ``HOW`` and run here, in a folder laid out as a checkout
(``exported``, ``examples``, ``scripts``, the environments, and ``../shared``), or named with the reason it
is not: a new README command fails ``test_every_readme_command_is_accounted_for`` until it is one or the other.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, serving_on

README = REPO / "README.md"
FIGURES = re.compile(r"<!-- figures: [\w-]+ -->\n.*?<!-- /figures -->", re.S)
SHIPPED = "exported/fashion-mnist-lenet-modern"

# How each command outside a figures block is run: "run" (here, exit status 0), "slow" (here, in the slow tier:
# a whole-test-set run of every backend), "server" (started here, checked, stopped), or why it is not run.
HOW = {
    "bash scripts/main.sh": "not here: its steps are the train, onnx, quantize and verify figures blocks' commands",
    "bash scripts/test.sh": "not here: it is what CI runs (.ci/run), this test among the rest",
    "bash scripts/install.sh serve": "not here: test.sh makes the same .venv-serve (install.sh's test extra)",
    "tritonserver --model-repository exported/fashion-mnist-lenet-modern/triton":
        "not here: Triton's server cannot run on these machines (tests/test_triton.py checks the repository)",
    "lenet-export data --dataset cifar10 --data-dir ../shared/datasets": "run",
    f"lenet-export verify --exported {SHIPPED} --replay {SHIPPED}/verify.json": "run",
    f"lenet-export verify --exported {SHIPPED} --images my-photos --fit letterbox --invert": "run",
    f"lenet-export bench --exported {SHIPPED} --images my-photos": "slow",  # a benchmark: 2 min of timing loops
    ".venv/bin/lenet-export verify --backends ort-cpu,oip-http,oip-grpc": "run",
    f".venv-serve/bin/lenet-export serve --exported {SHIPPED}": "server",
    ".venv/bin/lenet-export verify --backends oip-http,oip-grpc --endpoint http://127.0.0.1:8080 "
    "--endpoint grpc://127.0.0.1:8081": "with the server",
    f"lenet-export verify --exported {SHIPPED} --public-key exported/signing-key.pub.pem": "slow",
    f"lenet-export bench --exported {SHIPPED} --data-dir /usr/share/datasets/fashion-mnist": "slow",
    f"cd examples/node && npm install --ignore-scripts && node classify.js ../../{SHIPPED}": "run",
    "cd examples/web && npm ci --ignore-scripts && python3 serve.py": "server",
}


def _joined(lines: list[str]) -> list[str]:
    """Commands from lines: backslash continuations and open double quotes (``python -c "..."``) joined."""
    out, cur = [], ""
    for line in lines:
        cur = f"{cur}\n{line}" if cur else line
        if cur.endswith("\\"):
            cur = cur[:-1].rstrip() + " "
            continue
        if cur.count('"') % 2:
            continue
        out.append(cur)
        cur = ""
    return out


def readme_commands(text: str) -> tuple[list[str], list[str]]:
    """(commands outside figures blocks, commands inside them), in README order."""
    outside, inside = [], []
    for chunk, target in ((FIGURES.sub("", text), outside), ("\n".join(FIGURES.findall(text)), inside)):
        for lang, body in re.findall(r"```(\w*)\n(.*?)```", chunk, re.S):
            if lang == "bash":
                lines = [re.sub(r"\s+#\s.*$", "", ln).rstrip() for ln in body.splitlines()]
                target += _joined([ln for ln in lines if ln and not ln.startswith("#")])
            elif lang == "":
                lines, keep = [], False
                for ln in body.splitlines():  # a "$ " line and, while its quote is open, the lines after it
                    if ln.startswith("$ "):
                        lines.append(ln[2:])
                        keep = ln.count('"') % 2 == 1
                    elif keep:
                        lines.append(ln)
                        keep = "\n".join(lines).count('"') % 2 == 1
                target += _joined(lines)
    return outside, inside


def test_commands_are_read_from_the_readme():
    outside, inside = readme_commands(README.read_text())
    assert "bash scripts/main.sh" in outside and "lenet-export models" in inside
    assert any(c.startswith("python -c") and c.endswith("'/tmp/broken/model.onnx')\"") for c in inside)


def test_every_readme_command_is_accounted_for():
    outside, _ = readme_commands(README.read_text())
    assert [c for c in outside if c not in HOW] == [], "README commands neither run by a test nor explained"
    assert [c for c in HOW if c not in outside] == [], "commands listed here that the README no longer shows"


def test_an_unlisted_command_is_caught():
    text = README.read_text() + "\n```bash\nlenet-export frobnicate --now\n```\n"
    outside, _ = readme_commands(text)
    assert [c for c in outside if c not in HOW] == ["lenet-export frobnicate --now"]


@pytest.fixture
def checkout(tmp_path):
    """A folder laid out as the README's commands expect: a checkout (links to this one's shipped models,
    examples, scripts and environments) with ../shared beside it, and a ``my-photos`` folder of labelled images."""
    root = tmp_path / "main"
    root.mkdir()
    for name in ("exported", "scripts", ".venv-serve"):
        if (REPO / name).exists():
            (root / name).symlink_to(REPO / name)
    for example in (REPO / "examples").iterdir():
        if example.name == "web":  # a copy without its npm packages: the README's `npm ci` replaces node_modules,
            # which other test workers (ort-web in export and verify) read from this checkout at the same time
            shutil.copytree(example, root / "examples" / "web", ignore=shutil.ignore_patterns("node_modules"))
        else:
            (root / "examples").mkdir(exist_ok=True)
            (root / "examples" / example.name).symlink_to(example)
    (root / ".venv").symlink_to(Path(sys.prefix))
    if (REPO.parent / "shared").is_dir():
        (tmp_path / "shared").symlink_to(REPO.parent / "shared")
    for png in sorted((REPO / "examples" / "images").glob("fashion-mnist-*.png")):  # ...-test0-ankle-boot.png
        label = png.stem.split("-", 3)[-1].replace("-", " ").capitalize()  # the class: Ankle boot
        (root / "my-photos" / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, root / "my-photos" / label / png.name)
    return root


def _env() -> dict:
    """This environment's ``lenet-export`` first on PATH, as after activating the README's .venv."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def _run(command: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _commands(kind: str) -> list[str]:
    return [c for c, how in HOW.items() if how == kind]


def _needs_for(command: str) -> None:
    if "../shared" in command and not (REPO.parent / "shared" / "datasets").is_dir():
        pytest.skip("../shared/datasets is not beside this checkout")
    if command.startswith("cd examples/") and not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("node or npm is not installed")
    if command.startswith(".venv/bin/lenet-export verify --backends") and not (REPO / ".venv-serve").is_dir():
        pytest.skip("no .venv-serve: bash scripts/install.sh serve")


@pytest.mark.heavy
@pytest.mark.parametrize("command", _commands("run"), ids=lambda c: c.split(" --")[0][:40])
def test_readme_command_runs(command, checkout, monkeypatch):
    _needs_for(command)
    serving_on(monkeypatch)
    r = _run(command, checkout)
    assert r.returncode == 0, f"$ {command}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"  # verify and bench exit 1 on a failure


@pytest.mark.slow
@pytest.mark.parametrize("command", _commands("slow"))
def test_readme_command_runs_slow(command, checkout):
    r = _run(command, checkout, timeout=1800)
    assert r.returncode == 0, f"$ {command}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


def _wait_for(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}: {proc.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {timeout} s")


def _ports_free(*ports: int) -> None:
    for port in ports:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                pytest.skip(f"port {port} is in use: the README's command binds it")


def _serving(command: str, cwd: Path) -> subprocess.Popen:
    """The command in its own session, its output in a file (a pipe nobody reads would block its log writes)."""
    log = open(cwd / "server.log", "w")
    proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    proc.log = cwd / "server.log"
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


@pytest.mark.heavy
def test_readme_serve_commands_run(checkout):
    """The README's server, then the README's verify against it: both pass."""
    if not (REPO / ".venv-serve").is_dir():
        pytest.skip("no .venv-serve: bash scripts/install.sh serve")
    _ports_free(8080, 8081)
    server = _serving(_commands("server")[0], checkout)
    try:
        _wait_for("http://127.0.0.1:8080/v2/health/ready", server)
        (command,) = _commands("with the server")
        r = _run(command, checkout)
        assert r.returncode == 0, f"$ {command}\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
    finally:
        _stop(server)


@pytest.mark.heavy
def test_readme_web_page_command_runs(checkout):
    """``npm ci`` then ``python3 serve.py``: the page and the model it loads are served on port 8000."""
    command = _commands("server")[1]
    _needs_for(command)
    _ports_free(8000)
    server = _serving(command, checkout)
    try:
        _wait_for("http://127.0.0.1:8000/", server, timeout=600)
    finally:
        _stop(server)
