"""The ``hmedit`` entry point: builds the typer app, turns every user mistake into one line and exit code 2.

Commands live one per module in ``hmedit/cli/``; each module defines ``register(app)``, and every such module
is picked up here, so a new command is a new file. Command modules import heavy things (torch, diffusers)
inside their functions, never at the top, so that ``hmedit --help`` stays fast.
"""

from __future__ import annotations

import importlib
import math
import os
import pkgutil
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from typing import Annotated, Any

import typer

import hmedit
from hmedit.errors import HmeditError

# Commands in the order `hmedit --help` lists them; modules not named here come after, alphabetically.
_ORDER = ("render", "learn", "batch", "validate", "masks", "check", "bench", "schema")
_NOT_COMMANDS = frozenset({"app", "options", "report"})

_state = {"debug": False, "terminated": False}

app = typer.Typer(
    name="hmedit",
    help="Hierarchical, text-guided image editing and generation with diffusion models, from YAML scenes.\n\n"
    "[bold]Examples[/]\n\n"
    "  [green]hmedit validate scenes/[/]      check every scene below a folder\n\n"
    "  [green]hmedit schema -o scene.schema.json[/]   the format, for editor completion",
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hmedit {hmedit.__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
    debug: Annotated[
        bool,
        typer.Option("--debug", help="Show the full traceback and library warnings when something fails."),
    ] = False,
) -> None:
    """Hierarchical, text-guided image editing and generation with diffusion models, from YAML scenes."""
    _state["debug"] = debug


def _command_modules() -> list[str]:
    import hmedit.cli

    names = [m.name for m in pkgutil.iter_modules(hmedit.cli.__path__) if not m.name.startswith("_")]
    names = [n for n in names if n not in _NOT_COMMANDS]
    rank = {name: i for i, name in enumerate(_ORDER)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def _register_commands() -> None:
    for name in _command_modules():
        module = importlib.import_module(f"hmedit.cli.{name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_commands()


def _quiet_libraries() -> None:
    """Third-party chatter (deprecation notices, advisory logs) is noise for a user; --debug shows it."""
    for var, value in (
        ("TRANSFORMERS_VERBOSITY", "error"),
        ("DIFFUSERS_VERBOSITY", "error"),
        ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"),
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
        ("TOKENIZERS_PARALLELISM", "false"),
        ("TF_CPP_MIN_LOG_LEVEL", "3"),
    ):
        os.environ.setdefault(var, value)
    for category in (DeprecationWarning, FutureWarning, UserWarning):
        for module in ("torch", "diffusers", "transformers", "huggingface_hub", "accelerate", "PIL"):
            warnings.filterwarnings("ignore", category=category, module=rf"{module}(\..*)?")


def _print_error(err: HmeditError) -> None:
    from hmedit.cli.options import problem_line, stderr

    console = stderr()
    console.print(problem_line(err))
    for other in getattr(err, "others", ()):
        console.print(problem_line(other))


def _print_traceback() -> None:
    import traceback

    traceback.print_exc(file=sys.stderr)


def _finite(param: Any) -> None:
    """Make ``param`` refuse a number that is not finite (``inf``, ``nan``): no option of hmedit means one."""
    process = param.process_value

    def process_value(ctx: Any, value: Any) -> Any:
        value = process(ctx, value)
        items = value if isinstance(value, (list, tuple)) else (value,)
        for item in items:
            if isinstance(item, float) and not math.isfinite(item):
                raise typer.BadParameter(f"{item} is not a finite number", ctx=ctx, param=param)
        return value

    param.process_value = process_value


def _check_numbers(command: Any) -> None:
    """Every option and argument of ``command`` and its subcommands refuses non-finite numbers."""
    for param in getattr(command, "params", ()):
        _finite(param)
    for sub in getattr(command, "commands", {}).values():
        _check_numbers(sub)


def _usage_error(err: Any) -> None:
    """A command-line mistake (unknown option, bad value) as one line, naming where the help is."""
    ctx = getattr(err, "ctx", None)
    message = " ".join(str(err.format_message()).split())
    if ctx is None:
        print(f"error: {message} (see hmedit --help)", file=sys.stderr)
        return
    usage = " ".join(ctx.get_usage().split()).removeprefix("Usage: ")
    print(
        f"error: {ctx.command_path}: {message} (usage: {usage}; see {ctx.command_path} --help)",
        file=sys.stderr,
    )


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM is handled as Ctrl-C: the current scene's temporary files go, the summary is printed."""
    _state["terminated"] = True
    raise KeyboardInterrupt


def _run(args: list[str]) -> int:
    """Run the command line; returns the exit code, having printed any error in one line."""
    from typer._click import exceptions as click_errors

    command = typer.main.get_command(app)
    _check_numbers(command)
    try:
        # Not standalone: usage errors come here, so that they print in one line as every other error.
        rv = command.main(args=args, prog_name="hmedit", standalone_mode=False)
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            return exit_.code or 0
        print(exit_.code, file=sys.stderr)
        return 1
    except click_errors.NoArgsIsHelpError as err:  # the help is printed already
        return err.exit_code
    except click_errors.ClickException as err:
        _usage_error(err)
        return 2
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        return 1
    except HmeditError as err:
        if _state["debug"]:
            _print_traceback()
        _print_error(err)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: say so in one line; the traceback is one flag away
        if _state["debug"]:
            _print_traceback()
            return 1
        message = str(exc).splitlines()[0] if str(exc) else ""
        print(
            f"error: internal error: {type(exc).__name__}: {message} "
            "(run again with --debug for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1
    return rv if isinstance(rv, int) and not isinstance(rv, bool) else 0


def main(argv: Sequence[str] | None = None) -> None:
    """Run the CLI; exits with 0 (fine), 2 (a user mistake or failed checks), 1 (a bug), 130 (interrupted by
    Ctrl-C) or 143 (stopped by SIGTERM, 128 + 15: handled as Ctrl-C, so a batch removes the current scene's
    temporary files and prints its summary first)."""
    args = list(sys.argv[1:] if argv is None else argv)
    _state["debug"] = "--debug" in args  # the callback sets it too; this covers errors before it runs
    _state["terminated"] = False
    if not _state["debug"]:
        _quiet_libraries()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = _run(args)
    except KeyboardInterrupt:  # one that arrived between the command and here
        code = 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if code == 130:  # typer turns Ctrl-C inside a command into exit code 130, silently
        if _state["terminated"]:
            print("error: terminated (SIGTERM)", file=sys.stderr)
            code = 143
        else:
            print("error: interrupted", file=sys.stderr)
        # Stopped: the summary is printed and the temporary files are gone. Leave now, with this status:
        # interpreter shutdown after an interrupt (joining library threads the interrupt cut short) was
        # seen to end the process by SIGINT instead, now and then, on a loaded machine.
        if argv is None:  # the program itself (a caller passing arguments keeps its interpreter)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
