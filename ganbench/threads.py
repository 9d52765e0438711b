"""CPU threads: how torch's OpenMP threads wait between parallel regions. Torch-free.

torch's CPU kernels run on an OpenMP team, one thread per core by default. Between parallel regions GNU OpenMP
(libgomp, in the PyPI wheels) lets an idle thread spin for ``GOMP_SPINCOUNT`` iterations (300,000 by default)
before it sleeps. Alone on the machine that spinning is what makes two threads fast; beside any other busy
process it is what makes them slow: each barrier waits for a thread that shares its core with the other process,
while the waiting threads burn the CPU that thread needs. On a 2-core box the default job then runs at 0.2–0.3 of
its alone rate (docs/RESULTS.md, "CPU threads under load").

So ganbench sets, before torch loads:

- ``GOMP_SPINCOUNT=3000`` (a hundredth of libgomp's default): idle threads spin briefly, then sleep. Beside a
  busy process, or beside a second run, the default job keeps close to half of its alone rate (a fair share of
  two cores) instead of a fifth; alone it gives up some of the spin's speed (0.8–1.0 of it, measured in turns).
- Nothing else: ``cpu_threads`` left null is torch's default, one thread per core. In a joblib sweep the launcher's
  workers set ``OMP_NUM_THREADS`` to ``cores // n_jobs`` themselves (loky's guard against oversubscription), so
  the parallel jobs never ask for more threads than there are cores.

A user's own ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is left alone, as is ``OMP_NUM_THREADS`` (torch reads it) and
an explicit ``cpu_threads``. The wait policy never changes results. The thread count does (it changes the order of
floating-point sums in torch's kernels): a CPU run is repeatable bit for bit with the same thread count, which
metrics.json's execution record holds; ``cpu_threads=N`` fixes it on any machine.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

SPIN_COUNT = "3000"


def set_wait_policy(environ: MutableMapping[str, str] = os.environ) -> None:
    """A short OpenMP spin before idle threads sleep, unless the user chose a wait policy. Call before torch loads."""
    if "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ:
        environ["GOMP_SPINCOUNT"] = SPIN_COUNT
