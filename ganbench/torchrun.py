"""What torchrun's environment says about this process, without importing torch.

The command line is checked before torch loads (a config error is refused in about a second); these few facts are
all that check needs to know about a torchrun launch. The process group itself is :mod:`ganbench.distributed`'s.
"""

from __future__ import annotations

import os

# What torchrun (and `srun torchrun ...` on Slurm) puts in each worker's environment.
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched() -> bool:
    """True in a process started by torchrun (its environment names a rank, a world size and a rendezvous)."""
    return all(k in os.environ for k in ENV)


def env_rank() -> int:
    return int(os.environ.get("RANK", 0)) if launched() else 0


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1)) if launched() else 1
