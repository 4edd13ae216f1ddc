"""What the CLI's verbs share: one-line errors for library and usage errors, the option values taken from the
registries (help texts are derived from them, never written by hand), and option parsing helpers."""

from __future__ import annotations

import functools
import os
import sys
import warnings
from pathlib import Path

import typer

from . import backends as backend_registry, formats as format_registry
from .errors import ConfigError, LenetExportError, ParityError

OPTIONAL_FORMATS = ", ".join(f.name for f in format_registry.registry(format_registry.EXPORT).values()
                             if not f.required)
VARIANTS = ", ".join(f.artefact for f in format_registry.registry(format_registry.QUANTIZE).values())
VARIANT_FORMATS = ", ".join(format_registry.registry(format_registry.QUANTIZE))
BACKENDS = ", ".join(backend_registry.names())
CPU_BACKENDS = ", ".join(backend_registry.names("cpu"))
PROBED = ", ".join(backend_registry.probed())
TOOLCHAIN = "this command needs the toolchain: pip install 'lenet-export[export]'"


class OneLineErrors(typer.core.TyperGroup):
    """click's usage errors (an unknown verb, ``--epochs abc``, a missing argument) as the one ``error:`` line
    every other bad input gets, instead of click's usage box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            from typer._click.exceptions import ClickException, NoArgsIsHelpError  # typer 0.2x vendors click
        except ImportError:  # pragma: no cover - older typer on click
            from click.exceptions import ClickException, NoArgsIsHelpError

        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as e:  # `lenet-export` alone: the help, as click shows it
            print(e.format_message())
            sys.exit(e.exit_code)
        except ClickException as e:
            print(f"error: {e.format_message()} (see lenet-export --help)", file=sys.stderr)
            sys.exit(e.exit_code)
        except typer.Abort:
            print("error: aborted", file=sys.stderr)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

    def get_params(self, ctx):
        return conventional_help(super().get_params(ctx), ctx)

    def get_command(self, ctx, cmd_name):
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None:
            conventional_help(cmd.get_params(ctx), ctx)  # click keeps these objects (the help option is cached)
        return cmd


CLICK_NAMES = {"int": "INTEGER", "str": "TEXT"}  # click's own names; others (path, float) upper-cased


def conventional_help(params: list, ctx) -> list:
    """Help as click writes it: ``--model PATH``, ``--top-k INTEGER``, flags without a label. typer 0.2x shows
    ``<path>``/``<bool>`` labels instead and has no switch for it; options honour ``metavar``, arguments do not,
    so an argument's type column is turned off on the instance."""
    for p in params:
        if isinstance(p, typer.core.TyperOption) and p.metavar is None:
            label = p.display_type(ctx).strip("<>")
            p.metavar = "" if p.is_flag else CLICK_NAMES.get(label, label.upper())
        elif isinstance(p, typer.core.TyperArgument):
            p.display_type_rich = lambda ctx: None
    return params


def _quiet_libraries() -> None:
    # torch 2.15 announces TorchScript's deprecation and the exporters chatter; none of it is actionable
    # for a user of this tool. Our own messages go through rich, not warnings.
    for category in (DeprecationWarning, FutureWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def cli_errors(fn):
    """Turn library errors into one line and an exit code; never a traceback for bad input."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .ui import fail

        _quiet_libraries()
        try:
            return fn(*args, **kwargs)
        except LenetExportError as e:
            fail(str(e), e.exit_code)
        except ModuleNotFoundError as e:  # a light install (no torch) asked for a toolchain verb
            top = (e.name or "").split(".")[0]
            hint = TOOLCHAIN if top in ("torch", "torchvision", "onnxscript") else "see the README, 'Set-up'"
            fail(f"{top or e} is not installed here ({hint})", 2)
        except (PermissionError, IsADirectoryError, NotADirectoryError) as e:  # reading what the user named
            fail(f"cannot read {e.filename or e}: {e.strerror or e}", 2)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except MemoryError:
            fail("out of memory", 1)
    return wrapper


def backend_names(spec: str) -> tuple[str, ...] | None:
    """``all`` -> None; otherwise the names, at least one."""
    if spec.strip() == "all":
        return None
    names = tuple(b.strip() for b in spec.split(",") if b.strip())
    if not names:
        raise ConfigError(f"--backends {spec!r} names no backend; choose from: {BACKENDS} (or all)")
    return names


def run_replay(record: Path, exported: Path, checkpoint, data_dir, report) -> None:
    """``verify --replay``: rerun the record's backends here, print the comparison, exit 1 when one differs."""
    from .artefacts import refuse_input_as_output
    from .fsutil import atomic_write_json, write_errors
    from .replay import replay
    from .record import sidecar_path
    from .ui import print_replay

    refuse_input_as_output(report, exported, checkpoint, "--report")
    if report is not None and Path(report).resolve() in (Path(record).resolve(), sidecar_path(record).resolve()):
        raise ConfigError(f"--report {report} is the record being replayed; write it elsewhere")
    res = replay(record, exported, checkpoint, str(data_dir) if data_dir else None, log=lambda _: None)
    print_replay(res)
    if report:
        with write_errors(report):
            atomic_write_json(report, res.to_dict())
    if not res.passed:
        differs = [n for n, b in res.backends.items() if b.status == "differs"]
        raise ParityError(f"replay of {record} differs: {', '.join(differs)}" if differs
                          else f"replay of {record}: no recorded backend could run here")
