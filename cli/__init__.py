"""The ``loralens`` command line: the one floor that sees every other (store, analysis, precompute, app).

This module only routes: each subcommand is a module of this package with ``add(sub)`` (its parser) and
``run(args)`` (its work, importing what it needs when it runs, so ``loralens --help`` stays light).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import warnings
from typing import NoReturn

from loralens.cli import (
    app,
    data,
    demo,
    grid,
    importing,
    intervene,
    intruders,
    model,
    predict,
    report,
    summarise,
    trace,
    train,
    validate,
)
from loralens.store.schema import UserError

if __name__ != "loralens.cli":  # one name per module: the checkout's folders install as loralens.*
    raise ImportError(f"import loralens.cli, not {__name__}: the package installs under one name "
                      "(pip install -e . in the checkout)")

log = logging.getLogger("loralens")

COMMANDS = (train, grid, importing, model, trace, validate, report, summarise, intervene, intruders, predict, app, data,
            demo)

# Errors that are the user's to fix: shown as one line, never as a traceback. Anything else is a bug (ours or a
# library's): its traceback is shown, with where to report it.
USER_ERRORS: tuple[type[Exception], ...] = (UserError, FileNotFoundError, PermissionError, IsADirectoryError,
                                            NotADirectoryError)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every ``loralens`` subcommand."""
    parser = argparse.ArgumentParser(prog="loralens", description="What LoRA does inside a Whisper emotion model.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``loralens`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    # peft asks transformers a deprecated question on every adapter load; nothing for a user to act on.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        log.error("interrupted; run the same command again to resume")
        return 130
    except USER_ERRORS as e:
        if args.verbose:
            raise
        log.error("%s", e)
        return 2
    except Exception:
        log.critical("loralens %s stopped on an error that is not about your input, but a bug in loralens or a "
                     "library it uses: please report it to loralens's maintainers with the command and the "
                     "traceback below.", args.command, exc_info=True)
        return 1

def _ignore_interrupts() -> None:
    """Ignore SIGINT from here on, quietly.

    ``signal.signal`` races with a SIGINT that lands while it runs: in its Python wrapper the signal raises
    KeyboardInterrupt (caught: try again); inside the change CPython writes "Signal 2 ignored due to race condition"
    as an unraisable error (dropped). Both were seen in CI runs of the test of ``script``. (Blocking SIGINT with
    ``pthread_sigmask`` instead blocks it in this thread only: the kernel hands it to another, and CPython raises it
    here all the same.)
    """
    report = sys.unraisablehook

    def quiet(unraisable) -> None:
        if not (isinstance(unraisable.exc_value, OSError) and "race condition" in str(unraisable.exc_value)):
            report(unraisable)

    sys.unraisablehook = quiet
    while True:
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            return
        except KeyboardInterrupt:
            continue

def script() -> NoReturn:
    """The console script: ``main``, then an exit that a late Ctrl+C cannot turn into a failure.

    Once ``main`` has returned, the work is done and saved. A SIGINT that lands while the interpreter shuts down
    (flushing output, joining threads) would otherwise end a finished command with status -2 or an
    "Exception ignored" traceback, telling a user or a supervisor it failed.
    """
    code = main()
    _ignore_interrupts()
    sys.exit(code)


if __name__ == "__main__":
    script()
