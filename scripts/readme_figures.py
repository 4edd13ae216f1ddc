"""Regenerate every README figure that comes from a shipped model, from the shipped folders.

    .venv/bin/python scripts/readme_figures.py                 # every block: runs the README's commands (minutes)
    .venv/bin/python scripts/readme_figures.py --only predict,shipped
    .venv/bin/python scripts/readme_figures.py --check         # the quick blocks: exit 1 naming any that differ

A generated part of README.md sits between ``<!-- figures: NAME -->`` and ``<!-- /figures -->``. Each NAME
is one function: the command blocks below, the report blocks in ``figures_reports.py``. Command blocks run the
README's own command lines, as written, in a scratch folder that holds ``runs/fashion-mnist/best.pth`` (a copy
of the shipped checkpoint) and links to ``exported/``, ``examples/`` and ``../shared``; report blocks are
rendered from ``exported/*/verify.json``, ``metrics.json``, ``history.csv``, ``docs/bench-*.json``,
``docs/replay/*.json`` and ``training/benchmark-results.json``; a full run also retakes ``docs/web-page.png``
(the browser page test, with ``LENET_EXPORT_UPDATE_SCREENSHOT=1``). ``tests/test_readme_figures.py`` checks the
quick blocks and the figures of the slow ones against the shipped reports.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from figures_reports import (CIFAR, COLUMNS, FMNIST, README, REPO, blocks, fenced, figure_mismatches,
                             ort_int8_speed_block, ratios_block, rel, replace, replay_other_cpu_block, shipped_block,
                             train_block, training_speed_block)

# -- running README commands ------------------------------------------------------------------------------------

class Workspace:
    """A scratch folder laid out like a checkout after `scripts/main.sh`, with the shipped checkpoint as its run."""

    def __init__(self, root: Path):
        self.dir = root / "main"
        (self.dir / "runs" / "fashion-mnist").mkdir(parents=True)
        shutil.copy2(FMNIST / "best.pth", self.dir / "runs" / "fashion-mnist" / "best.pth")
        for name in ("exported", "examples", "docs"):
            (self.dir / name).symlink_to(REPO / name)
        (root / "shared").symlink_to((REPO.parent / "shared").resolve())
        bin_dir = Path(sys.executable).parent
        data = REPO.parent / "shared" / "datasets" / "fashion-mnist"
        self.env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "COLUMNS": COLUMNS,
                    "TERM": "dumb", "NO_COLOR": "1", "PYTHONWARNINGS": "ignore"}
        if data.is_dir() and not Path("/usr/share/datasets/fashion-mnist").is_dir():
            self.env["LENET_EXPORT_DATA"] = str(data)

    def run(self, command: str, ok=(0,)) -> str:
        """``$ command`` and its output (stdout, then stderr), as a reader of the README would see them."""
        r = subprocess.run(["bash", "-c", command], cwd=self.dir, env=self.env, capture_output=True, text=True,
                           timeout=1800)
        if r.returncode not in ok:
            sys.exit(f"README command failed ({r.returncode}): {command}\n{r.stdout}\n{r.stderr}")
        out = "\n".join(line.rstrip() for line in (r.stdout + r.stderr).splitlines())
        return f"$ {command}\n{out}\n"


def models_block(ws: Workspace) -> str:
    return fenced(ws.run("lenet-export models"))


def onnx_block(ws: Workspace) -> str:
    return fenced(ws.run("lenet-export onnx --checkpoint runs/fashion-mnist/best.pth --out runs/fashion-mnist/export"
                         " --force"))


def quantize_block(ws: Workspace) -> str:
    return fenced(ws.run("lenet-export quantize --exported runs/fashion-mnist/export"
                         " --checkpoint runs/fashion-mnist/best.pth"))


def verify_block(ws: Workspace) -> str:
    return fenced(ws.run("lenet-export verify --exported runs/fashion-mnist/export --checkpoint "
                         "runs/fashion-mnist/best.pth --report runs/fashion-mnist/verify.json"))


def replay_block(ws: Workspace) -> str:
    return fenced(ws.run(f"ONEDNN_MAX_CPU_ISA=SSE41 lenet-export verify --exported {rel(FMNIST)} --replay "
                         f"{rel(FMNIST)}/verify.json"))


DIFF_STEPS = (
    "cp -r exported/fashion-mnist-lenet-modern /tmp/broken",
    'python -c "import onnx; from onnx import numpy_helper as nh\n'
    "m = onnx.load('/tmp/broken/model.onnx'); w = next(t for t in m.graph.initializer if t.name == 'features.4.weight')\n"
    "a = nh.to_array(w).copy(); a[3] *= 1.05; w.CopyFrom(nh.from_array(a, w.name)); onnx.save(m, '/tmp/broken/model.onnx')\"",
    "lenet-export diff --exported /tmp/broken --backend ort-cpu --data-dir ../shared/datasets/fashion-mnist",
)


def diff_block(ws: Workspace) -> str:
    shutil.rmtree("/tmp/broken", ignore_errors=True)
    try:
        return fenced(*(ws.run(c, ok=(0, 1)) for c in DIFF_STEPS))
    finally:
        shutil.rmtree("/tmp/broken", ignore_errors=True)


PREDICT = ("lenet-export predict --model exported/fashion-mnist-lenet-modern/model.raw.onnx "
           "examples/images/fashion-mnist-test4-shirt.png examples/images/fashion-mnist-test0-ankle-boot.png")


def predict_block(ws: Workspace) -> str:
    return fenced(ws.run(PREDICT))


ENGINE_IMAGES = 10000  # the whole Fashion-MNIST test split, as PNG files


def engines_block(ws: Workspace) -> str:
    """predict's two engines on the test split written as PNG files: one run each, wall time and images/s (Ray's
    includes starting a local Ray and its actors), and whether the outputs are identical."""
    import time

    from PIL import Image

    from lenet_export.data import load_split
    from lenet_export.machine import this_machine

    folder = ws.dir / "test-pngs"
    folder.mkdir()
    split = load_split("fashion-mnist", train=False, data_dir=str(REPO.parent / "shared" / "datasets" / "fashion-mnist"))
    for i in range(ENGINE_IMAGES):
        Image.fromarray(split.images[i, 0].numpy()).save(folder / f"{i:05d}.png")
    lines, seconds = [], {}
    for engine in ("local", "ray"):
        t = time.perf_counter()
        lines.append(ws.run(f"lenet-export predict test-pngs --engine {engine} --format csv --out {engine}.csv"))
        seconds[engine] = time.perf_counter() - t
    lines.append(ws.run("cmp local.csv ray.csv && echo identical"))
    table = ["| engine | images | seconds | images/s |", "|---|---|---|---|"]
    table += [f"| {e} | {ENGINE_IMAGES:,} | {s:.1f} | {ENGINE_IMAGES / s:,.0f} |" for e, s in seconds.items()]
    return (fenced(*lines) + "\n" + "\n".join(table) + f"\n\nOne run each, whole command (Ray: with starting a "
            f"local Ray), on {this_machine().summary}.\n")


def bench_block(folder: Path, data_dir: str):
    def block(ws: Workspace) -> str:
        name = folder.name.split("-lenet")[0]
        cmd = f"lenet-export bench --exported {rel(folder)} --data-dir {data_dir}"
        ws.run(f"{cmd} --json docs/bench-{name}.json --markdown docs/bench-{name}.md")
        table = (REPO / "docs" / f"bench-{name}.md").read_text().split("\n\n", 1)[1]
        note = ", **CIFAR-10 JPEG copy**" if name == "cifar10" else ""
        return f"`{rel(folder)}`{note} (`{cmd}`):\n\n{table.strip()}\n"
    return block


def bench_serve_block(ws: Workspace) -> str:
    """bench --serve on the shipped Fashion-MNIST model: the endpoint under load beside in-process ORT."""
    from lenet_export.serve_process import ServerUnavailable, server_python

    try:
        server_python()  # where `lenet-export bench --serve` will look for it
    except ServerUnavailable as e:
        sys.exit(f"bench-serve: {e}")
    cmd = f"lenet-export bench --serve --exported {rel(FMNIST)}"
    ws.run(f"{cmd} --json docs/bench-serve.json --markdown docs/bench-serve.md")
    return f"`{cmd}`:\n\n{(REPO / 'docs' / 'bench-serve.md').read_text().strip()}\n"


QUICK = {"ratios": ratios_block, "train": train_block, "shipped": shipped_block, "training-speed": training_speed_block,
         "predict": predict_block, "models": models_block, "replay-other-cpu": replay_other_cpu_block,
         "ort-int8-speed": ort_int8_speed_block}
SLOW = {"onnx": onnx_block, "quantize": quantize_block, "verify": verify_block, "replay": replay_block,
        "diff": diff_block, "engines": engines_block, "bench-fashion-mnist": bench_block(FMNIST, "../shared/datasets/fashion-mnist"),
        "bench-cifar10": bench_block(CIFAR, "../shared/datasets"), "bench-serve": bench_serve_block}
GENERATORS = {**QUICK, **SLOW}


def generate(names: list[str]) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp))
        out = {}
        for name in names:  # README order: onnx before quantize before verify
            print(f"figures: {name}", file=sys.stderr, flush=True)
            out[name] = GENERATORS[name](ws)
        return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=None, help="comma-separated block names (default: all)")
    p.add_argument("--check", action="store_true",
                   help="compare the quick blocks, and the figures of the others, with the shipped models")
    p.add_argument("--readme", type=Path, default=README)
    args = p.parse_args(argv)
    text = args.readme.read_text()
    present = list(blocks(text))
    names = args.only.split(",") if args.only else [n for n in present if n in QUICK or not args.check]
    if args.check:
        names = [n for n in names if n in QUICK]
    unknown = [n for n in names if n not in GENERATORS or n not in present]
    if unknown:
        sys.exit(f"error: no such figure block in README.md: {', '.join(unknown)}")
    new = generate(names)
    if args.check:
        stale = [n for n in names if blocks(text)[n] != new[n]]
        for n in stale:
            print(f"README block {n!r} disagrees with the shipped models: run scripts/readme_figures.py --only {n}")
        wrong = figure_mismatches(text)
        print("\n".join(wrong)) if wrong else None
        return 1 if stale or wrong else 0
    args.readme.write_text(replace(args.readme.read_text(), new))  # read again: the run takes minutes
    if not args.only:
        screenshot()
    return 0


def screenshot() -> None:
    """docs/web-page.png: the browser page on the shipped model, taken by the page test (headless Chromium)."""
    print("figures: docs/web-page.png", file=sys.stderr, flush=True)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/test_web.py", "-k", "screenshot"], cwd=REPO,
                       env={**os.environ, "LENET_EXPORT_UPDATE_SCREENSHOT": "1"}, capture_output=True, text=True)
    if r.returncode != 0 or " passed" not in r.stdout:
        sys.exit(f"the screenshot was not taken:\n{r.stdout[-2000:]}")


if __name__ == "__main__":
    sys.exit(main())
