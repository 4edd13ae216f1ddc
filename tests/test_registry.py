"""The registries are the only lists of formats and backends: every derived view names every entry, so a new
runtime cannot be half-registered; and the package's import graph has no cycle and no upward edge."""

from __future__ import annotations

import ast
import json
import re
import tomllib
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from lenet_export import backends, formats
from lenet_export.artefacts import Export, check_metadata, present_formats
from lenet_export.formats import EXPORT, QUANTIZE

PACKAGE = REPO / "lenet_export"
FORMATS = formats.registry()
BACKENDS = backends.registry()


def _help(*verb: str) -> str:
    r = run_cli(*verb, "--help")
    assert r.exit_code == 0, r.output
    return re.sub(r"[\s│]+", " ", r.stdout)  # rich wraps help text in a box: compare words


def test_cli_help_names_every_format_and_backend():
    onnx, quantize = _help("onnx"), _help("quantize")
    for f in FORMATS.values():
        if f.stage == EXPORT and not f.required:
            assert f.name in onnx, f.name
        if f.stage == QUANTIZE:
            assert f.artefact in quantize, f.name
    verify, bench, diff = _help("verify"), _help("bench"), _help("diff")
    def named(name: str, text: str) -> bool:  # as a whole name: torch-cpu is not named by executorch-cpu
        import re

        return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", " ".join(text.split())) is not None

    for b in BACKENDS.values():
        assert named(b.name, verify), b.name
        assert named(b.name, bench) == (b.device == "cpu"), b.name
        assert named(b.name, diff) == (b.probe is not None), b.name


def test_diff_refusal_lists_the_probed_backends():
    unprobed = next(b for b in BACKENDS.values() if b.probe is None)
    r = run_cli("diff", "--backend", unprobed.name, "--exported", REPO / "exported" / "fashion-mnist-lenet-modern")
    assert r.exit_code == 2 and f"diff does not support backend {unprobed.name!r}" in r.stderr
    assert all(name in r.stderr for name in backends.probed())


def test_every_format_is_complete_and_run_by_a_backend():
    run = {b.artefact for b in BACKENDS.values()}
    for f in FORMATS.values():
        assert f.summary, f"{f.name}: no summary for the model card"
        assert f.metadata is not None or f.not_embedded, f"{f.name}: neither a metadata copy nor why not"
        assert f.artefact in run, f"{f.name}: no backend runs {f.artefact}"
        assert (f.variant_of is None) == (f.precision == "fp32"), f.name
        assert all(d in FORMATS for d in f.made_from), f.name
    for b in BACKENDS.values():
        assert b.artefact is None or formats.owner(b.artefact) is not None, f"{b.name}: no format writes {b.artefact}"
        if b.precision != "fp32":
            assert backends.base_of(b) is not None, f"{b.name}: no FP32 backend to compare with"


def test_install_hints_name_real_extras():
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for hint in [f.install for f in FORMATS.values()] + [b.install for b in BACKENDS.values()]:
        for extra in re.findall(r"lenet-export\[([a-z0-9_-]+)\]", hint):
            assert extra in extras, hint


def _all_formats_export(tmp_path: Path) -> Export:
    """An export folder whose metadata.json lists every format, each file holding garbage."""
    meta = {"formats": {f.name: list(f.files) for f in FORMATS.values()}, "checkpoint_sha256": "x",
            "mean": [0.5], "std": [0.5], "opset": 18, "exporter": "dynamo"}
    for f in FORMATS.values():
        for name in f.files:
            (tmp_path / name).write_bytes(b"not a model")
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    ckpt = {"classes": ["a"], "mean": [0.5], "std": [0.5], "input_shape": [1, 28, 28]}
    return Export(tmp_path, meta, ckpt, tmp_path / "best.pth", "x")


def test_metadata_check_covers_every_format(tmp_path):
    export = _all_formats_export(tmp_path)
    assert present_formats(export.metadata) == list(FORMATS)
    check = check_metadata(export)
    named = " ".join([*check.files, *check.errors, *check.unchecked])
    for f in FORMATS.values():
        assert f.label in named, f"{f.name}: its metadata copy is neither checked nor listed as unchecked"
    assert not check.passed  # garbage copies fail, they are never skipped silently


def test_model_card_lists_every_format(tmp_path):
    from lenet_export.ship import files_section

    export = _all_formats_export(tmp_path)
    card = files_section(tmp_path, export.metadata)
    for f in FORMATS.values():
        assert f"`{' + '.join(f.files)}`" in card, f.name


def test_bench_and_verify_rows_come_from_the_registry():
    from lenet_export.verify import requested

    assert [b.name for b in requested(None)] == list(BACKENDS)
    assert list(BACKENDS)[0] == backends.REFERENCE


def _imports(path: Path, module: str) -> set[str]:
    """Every lenet_export module ``module`` imports, at the top or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[:len(module.split(".")) - node.level + (path.name == "__init__.py")]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
            out |= {n if _exists(n) else target for n in names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {m for m in out if m.startswith("lenet_export") and m != module and _exists(m)}


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:]) if "." in module else Path()
    if module.startswith("lenet_export.training"):
        rel = Path("..", "training", *module.split(".")[2:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        module = ".".join(["lenet_export", *parts])
        graph[module] = _imports(path, module)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]):
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            # a package's __init__ importing its own submodules is not an edge back up
            if m.startswith(n + "."):
                continue
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n] if n in stack else [m, n]
            if n not in state and (found := visit(n, stack + [n])):
                return found
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m, [m])):
            return found
    return None


def test_import_graph_has_no_cycle():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()))


@pytest.mark.parametrize("lower, upper", [
    ("lenet_export.cifar10", "lenet_export.data"),
    ("lenet_export.verify", "lenet_export.diff"),
    ("lenet_export.formats", "lenet_export.diff"),
    ("lenet_export.formats", "lenet_export.backends"),
    ("lenet_export.formats", "lenet_export.quantize"),
    ("lenet_export.formats", "lenet_export.verify"),
    ("lenet_export.backends", "lenet_export.quantize"),
    ("lenet_export.backends", "lenet_export.verify"),
    ("lenet_export.backends", "lenet_export.diff"),
    ("lenet_export.artefacts", "lenet_export.backends"),
    ("lenet_export.parity", "lenet_export.backends"),
])
def test_no_upward_import(lower, upper):
    graph = _graph()
    offenders = [m for m, deps in graph.items() if (m == lower or m.startswith(lower + "."))
                 and any(d == upper or d.startswith(upper + ".") for d in deps)]
    assert not offenders, f"{offenders} import {upper}"


def test_cycle_detector_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
