"""`ganbench <command> ...`: dispatch only."""

from __future__ import annotations

import importlib
import signal
import sys

from ganbench import threads, torchrun
from ganbench.errors import GanbenchError

USAGE = """usage: ganbench <command> [args]

commands:
  train [overrides] [-m]   train a GAN (Hydra overrides, e.g. loss=wgan_gp constraint=gn; -m for a grid)
  eval RUN_DIR [--checkpoint last|best|PATH] [metrics.KEY=VALUE ...]
                           image metrics of a run's generator (fd_classifier; fid, kid) into its metrics.json
  sample RUN_DIR --n N --out DIR [--checkpoint ...] [--seed S]
                           write N generated PNGs and grid.png
  features fit [dataset=NAME]
                           train/cache the fd_classifier feature net and print its test accuracy
  report SWEEP_DIR         table (report.md/csv) and loss × constraint heatmap of a sweep [--metric NAME] [--out DIR]
  bench [overrides]        G-steps/s, images/s and peak memory of ganbench's real step vs a plain PyTorch loop

`ganbench train --help` lists the config groups and their options; `ganbench train --cfg job` prints the config.
"""


# command -> (module, function); imported only when the command runs, so `ganbench --help` stays fast.
COMMANDS = {
    "train": ("ganbench.launch", "main"),
    "eval": ("ganbench.evaluate", "eval_main"),
    "sample": ("ganbench.evaluate", "sample_main"),
    "features": ("ganbench.evaluate", "features_main"),
    "report": ("ganbench.report", "main"),
    "bench": ("ganbench.bench", "main"),
}


def main(argv: list[str] | None = None) -> int:
    threads.set_wait_policy()  # OpenMP reads it when torch loads: before any command imports torch
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # Ctrl-C in start-up: KeyboardInterrupt, one line below
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except BaseException as e:
        if not _interrupted(e):
            raise
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while this line is printed changes nothing
        # CPython marks a KeyboardInterrupt that left an `exec` of a source string (torch's import builds dataclasses
        # that way) as unhandled even when it is caught later, and then ends a `python -m` process by SIGINT instead
        # of this exit code. One more exec of a string clears the mark, so every Ctrl-C exits 130.
        exec("pass")
        if not torchrun.env_rank():
            print("ganbench: error: interrupted (Ctrl-C); nothing was trained in this command (a run it had "
                  "started records status 'interrupted').", file=sys.stderr)
        return 130


def _interrupted(e: BaseException) -> bool:
    """True when ``e`` is a Ctrl-C's KeyboardInterrupt, or an error raised while one was being handled (an import or
    a logging config that it broke)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"ganbench: error: unknown command '{command}'; choose one of: {', '.join(COMMANDS)}.",
              file=sys.stderr)
        return 2
    try:
        if command == "train":  # the run directory and the command line are checked before torch loads
            rundir = importlib.import_module("ganbench.rundir")
            try:
                rest = rundir.prepare_train(rest)
            except rundir.NothingToDo as e:
                print(f"ganbench: {e}")
                return 0
        module, function = COMMANDS[command]
        return getattr(importlib.import_module(module), function)(rest)
    except GanbenchError as e:
        if not torchrun.env_rank():  # under torchrun rank 0 says it, once
            print(f"ganbench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
