"""Command line: `raider-bids bids_dir output_dir participant [options]` (BIDS-Apps conventions):
logging, library caches, signals and exit codes around the workflows."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Sequence

from .. import __version__
from ..errors import OutputError, RaiderError
from .parser import build_parser, config_from_args
from .progress import EpochReporter, format_duration

log = logging.getLogger("raider_bids")

_LOG_FORMAT = logging.Formatter("%(asctime)s [%(levelname)s] %(message)s", "%Y-%m-%d %H:%M:%S")


def _add_log_handler(handler: logging.Handler) -> None:
    handler.setFormatter(_LOG_FORMAT)
    log.addHandler(handler)


def _setup_logging(verbosity: int) -> None:
    _close_logging()
    _add_log_handler(logging.StreamHandler(sys.stderr))
    log.setLevel(logging.DEBUG if verbosity > 0 else logging.INFO)
    log.propagate = False


def _log_to_work_dir(work_dir: Path) -> None:
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        _add_log_handler(logging.FileHandler(work_dir / "raider-bids.log"))
    except OSError as exc:
        raise OutputError(f"{work_dir}: cannot use as work directory ({exc.strerror or exc})") from None


def _close_logging() -> None:
    for handler in list(log.handlers):
        handler.close()
        log.removeHandler(handler)


# Caches that libraries create on first use (matplotlib's font list; the directory torch's
# optimisers create through torch._inductor): they go to the work dir or a temporary directory
# removed at exit, never to HOME or /tmp, since the app writes only to its output and work dirs.
_CACHE_VARIABLES = {"MPLCONFIGDIR": "matplotlib", "TORCHINDUCTOR_CACHE_DIR": "torchinductor"}


@contextlib.contextmanager
def _cache_dirs(work_dir: Path | None):
    """Point every unset cache variable into the work dir, or into a temporary directory removed
    at exit. Variables already set (as in the container image) are kept."""
    unset = [v for v in _CACHE_VARIABLES if not os.environ.get(v)]
    with contextlib.ExitStack() as stack:
        root = work_dir
        if root is None and unset:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="raider-bids-cache-")))
        try:
            for variable in unset:
                os.environ[variable] = str(root / _CACHE_VARIABLES[variable])  # type: ignore[operator]
            yield root
        finally:
            for variable in unset:
                os.environ.pop(variable, None)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(_signals_as_exceptions())
        start = time.perf_counter()
        config = config_from_args(args, argv)
        if config.work_dir:
            _log_to_work_dir(config.work_dir)
        scratch = stack.enter_context(_cache_dirs(config.work_dir))
        from ..workflows.group import group
        from ..workflows.participant import participant

        log.debug("library caches in %s", scratch)

        log.info("raider-bids %s %s: %s -> %s", __version__, config.analysis_level, config.bids_dir,
                 config.output_dir)
        if config.analysis_level == "group":
            group(config)
            _raise_if_signalled()
            log.info("done in %s: group level; outputs in %s", format_duration(time.perf_counter() - start),
                     config.output_dir)
            return 0
        import torch

        from ..resources import available_cpus

        # torch's default counts every core of the machine, not those the process may use
        torch.set_num_threads(config.nprocs or available_cpus())
        result = participant(config, EpochReporter)  # run name -> its progress reporter
        _raise_if_signalled()
        log.info("done in %s: %d run(s) processed, %d skipped (already finished), %d failed%s; outputs in %s",
                 format_duration(time.perf_counter() - start), len(result.finished), len(result.skipped),
                 len(result.failed), f" ({', '.join(result.failed)})" if result.failed else "", config.output_dir)
        return result.exit_code
    except RaiderError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        log.error("interrupted (Ctrl-C): what the current run was writing is removed; finished outputs are kept")
        return 130
    except _Terminated:
        log.error("terminated (SIGTERM): what the current run was writing is removed; finished outputs are kept")
        return 143
    finally:
        stack.close()
        _close_logging()


def run() -> None:
    """The command's entry point: exits with main's code without the interpreter's teardown of the
    libraries (about 0.5 s for torch alone), since by then every output is written and closed."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be said there
            pass
    os._exit(code)


class _Terminated(BaseException):
    """SIGTERM (a scheduler's time limit or scancel) raised as an exception, so that the cleanup of
    unfinished runs and temporary files runs before exiting."""


# Signals received during this call. An exception raised while Python runs a finaliser or a weakref
# callback is printed and ignored, and the work goes on; main then still exits with the signal's code.
_received: list[int] = []


def _exception_for(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else _Terminated()


def _raise_for_signal(signum, frame) -> None:
    _received.append(signum)
    raise _exception_for(signum)


def _raise_if_signalled() -> None:
    """Raise again a signal's exception that was raised where Python ignores exceptions (a
    finaliser) and carried on."""
    if _received:
        raise _exception_for(_received[0])


@contextlib.contextmanager
def _signals_as_exceptions():
    """SIGINT as KeyboardInterrupt and SIGTERM as _Terminated, each also recorded in _received."""
    _received.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise_for_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
