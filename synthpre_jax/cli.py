"""`synthpre <command> [args]`: one console script for every entry point.

Each command lives in its own module exposing `main(argv: list[str]) -> int`; the
module is imported only when its command runs, so `synthpre gen` never imports
JAX or TensorFlow. Every command runs under `run_guarded`, which turns a
`UserError` into one line on stderr and exit code 2.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import tempfile
from typing import Callable, Iterator, Sequence

from synthpre_jax.errors import UserError

# command -> (module, one-line help, whether its first steps import TensorFlow (seqio input
# pipelines): those load it quietly first, see `import_tensorflow_quietly`)
COMMANDS: dict[str, tuple[str, str, bool]] = {
    "train": ("synthpre_jax.train", "train or fine-tune a model (T5X-style gin flags)", True),
    "gen": ("synthpre_jax.synthetic.cli", "print generated examples of a synthetic task", False),
    "inspect": ("synthpre_jax.data.inspect", "print decoded examples of any registered task or mixture", True),
    "prepare-data": ("synthpre_jax.data.prepare", "download a downstream task's public data and verify its counts", True),
    "eval": ("synthpre_jax.eval", "inference eval (decode + metrics) of a checkpoint or every checkpoint of a run", True),
    "infer": ("synthpre_jax.infer", "predictions of a checkpoint for a task split or a file of inputs, to JSONL", True),
    "select": ("synthpre_jax.select", "the paper's checkpoint selection: max validation accuracy step and its metrics", True),
    "experiment": ("synthpre_jax.experiment", "run or resume a grid of pre-train -> select -> fine-tune runs", True),
    "report": ("synthpre_jax.report", "tables (with % of benefit) and plots from finished runs", True),
    "weight-stats": ("synthpre_jax.weight_stats_cli", "re-initialise a checkpoint from its weight statistics", False),
}


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Hold back what native code writes to fd 2 inside the block; replay it if the block
    fails. TensorFlow's libraries log while they load ("Could not find cuda drivers...",
    "All log messages before absl::InitializeLog()..."), before TF_CPP_MIN_LOG_LEVEL can
    apply, so every command would start with lines that are not about the user's input."""
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2
        yield
        return
    ok = False
    with tempfile.TemporaryFile() as held:
        sys.stderr.flush()
        os.dup2(held.fileno(), 2)
        try:
            yield
            ok = True
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if not ok:
                held.seek(0)
                os.write(2, held.read())


def import_tensorflow_quietly() -> None:
    """SYNTHPRE_QUIET_TF=0 shows the load-time lines (e.g. to debug a TensorFlow install)."""
    if os.environ.get("SYNTHPRE_QUIET_TF", "1") == "0":
        return
    with _quiet_native_stderr():
        try:
            import tensorflow  # noqa: F401 - loaded here, quietly, for the command
        except ImportError:
            pass  # the command reports it where it needs TensorFlow


class _NoLibraryTracebacks(logging.Filter):
    """Orbax logs a failed background write with its traceback before the error reaches us and
    is reported as one line; keep Orbax's message, drop the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        tb = record.exc_info[2] if record.exc_info else None
        while tb is not None:
            if "orbax" in tb.tb_frame.f_code.co_filename:
                record.exc_info, record.exc_text = None, None
                break
            tb = tb.tb_next
        return True


_NO_LIBRARY_TRACEBACKS = _NoLibraryTracebacks()


def _quiet_closed_loop_noise(hook):
    """After a failed write, TensorStore callbacks may still post to Orbax's closed asyncio loop;
    Python prints each as an unraisable 'Event loop is closed' traceback. Those say nothing."""
    def unraisablehook(info):
        if isinstance(info.exc_value, RuntimeError) and str(info.exc_value) == "Event loop is closed":
            return
        hook(info)
    unraisablehook.quiet_closed_loop = True
    return unraisablehook


def quiet_library_noise() -> None:
    """Install the two filters above (once): a failed checkpoint read or write is then the
    command's one error line, not Orbax's traceback and asyncio's closed-loop echoes."""
    absl_logger = logging.getLogger("absl")
    if _NO_LIBRARY_TRACEBACKS not in absl_logger.filters:
        absl_logger.addFilter(_NO_LIBRARY_TRACEBACKS)
    if not getattr(sys.unraisablehook, "quiet_closed_loop", False):
        sys.unraisablehook = _quiet_closed_loop_noise(sys.unraisablehook)


def run_guarded(fn: Callable[[list[str]], int], argv: Sequence[str]) -> int:
    """Run an entry point; a UserError becomes one line on stderr and exit code 2."""
    quiet_library_noise()
    try:
        return int(fn(list(argv)) or 0)
    except UserError as e:
        # One line: gin appends "In call to configurable ..." on further lines.
        lines = str(e).strip().splitlines() or [type(e).__name__]
        print(f"error: {lines[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `synthpre gen ... | head`: the reader has gone. Stop quietly, as `cat` does; point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141  # 128 + SIGPIPE, what a shell reports for a writer killed by the pipe


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: synthpre <command> [args]", "", "commands:"]
    lines += [f"  {c.ljust(width)}  {h}" for c, (_, h, _) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # TensorFlow (used by seqio for input pipelines only) is noisy on stderr at import.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        from synthpre_jax.errors import did_you_mean

        print(f"error: unknown command {cmd!r}{did_you_mean(cmd, COMMANDS)}; "
              "run 'synthpre --help' for the list", file=sys.stderr)
        return 2
    module_name, _, uses_tf = COMMANDS[cmd]
    if uses_tf and not {"-h", "--help"} & set(rest):
        import_tensorflow_quietly()
    module = importlib.import_module(module_name)
    return run_guarded(module.main, rest)


if __name__ == "__main__":
    sys.exit(main())
