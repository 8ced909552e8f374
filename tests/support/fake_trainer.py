"""A stand-in for `python -m embedserve.training.run <job_dir>`: speaks the same files (reads
spec.json, appends events.jsonl, writes output_dir) without torch, so job tests cost a process
start, not a training run. `python fake_trainer.py MODE <job_dir>`; MODE:

complete: started, 4 progress steps, metrics before/after, the output folder, completed.
hang:     started and one progress step, then waits to be stopped (cancel, cap, restart tests).
fail:     a `failed` event, exit 1.
crash:    started, then kills itself with SIGKILL (no final event).
exit:     exits 3 without a word.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path


def main() -> None:
    mode, job_dir = sys.argv[1], Path(sys.argv[2])
    spec = json.loads((job_dir / "spec.json").read_text())
    events = (job_dir / "events.jsonl").open("a")

    def emit(type_, **fields):
        events.write(json.dumps({"type": type_, "created_at": time.time(), **fields}) + "\n")
        events.flush()

    if mode == "exit":
        sys.exit(3)
    if mode == "fail":
        emit("failed", error="no GPU fairy dust")
        sys.exit(1)
    emit("started", message=f"training {spec['method']} (resume={spec['resume']}, threads={os.environ.get('OMP_NUM_THREADS')})")
    if mode == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "hang":
        emit("progress", step=1, total_steps=10, epoch=0.1, loss=1.5)
        while True:
            time.sleep(0.1)
    emit("metrics", stage="before", metrics={"mrr@10": 0.5, "recall@1": 0.4})
    for step in range(1, 5):
        emit("progress", step=step, total_steps=4, epoch=step / 4, loss=1.0 / step)
    output = Path(spec["output_dir"])
    output.mkdir(parents=True)
    (output / "trained.txt").write_text(spec["name"])
    emit("metrics", stage="after", metrics={"mrr@10": 0.7, "recall@1": 0.6})
    emit("completed", message=str(output), metrics={"mrr@10": 0.7, "recall@1": 0.6})


if __name__ == "__main__":
    main()
