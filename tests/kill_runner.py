"""Runs piggyback-bench and kills its own process with SIGKILL at a chosen
point, as a crash or ``kill -9`` would (a helper of test_runner_faults.py).

    python tests/kill_runner.py POINT N RUNNER-ARGUMENTS...

POINT: ``train`` (the N-th training step, before its backward pass),
``checkpoint`` (halfway through writing the N-th checkpoint) or ``result``
(halfway through writing the N-th saved result).
"""

import io
import os
import signal
import sys

from avalanche.training.templates.base_sgd import BaseSGDTemplate

import piggyback_avalanche.app.command_line as command_line
import piggyback_avalanche.app.runner as runner
import piggyback_avalanche.training.checkpoints as checkpoints

point, nth, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
seen = [0]


def _reached() -> bool:
    seen[0] += 1
    return seen[0] == nth


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


if point == "train":
    backward = BaseSGDTemplate.backward

    def killing_backward(self):
        if _reached():
            _die()
        backward(self)

    BaseSGDTemplate.backward = killing_backward
else:
    module = {"checkpoint": checkpoints, "result": runner}[point]
    write_atomically = module.write_atomically

    def killing_write(path, write, *, binary=False):
        if not _reached():
            return write_atomically(path, write, binary=binary)

        def half_then_die(file):
            buffer = io.BytesIO() if binary else io.StringIO()
            write(buffer)
            data = buffer.getvalue()
            file.write(data[: len(data) // 2])
            file.flush()
            os.fsync(file.fileno())
            _die()

        return write_atomically(path, half_then_die, binary=binary)

    module.write_atomically = killing_write

raise SystemExit(command_line.main(argv))
