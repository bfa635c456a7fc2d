"""Runs `emovlm-kd` commands in forked children that SIGKILL themselves at a chosen point.

Started as a script by tests/test_reliability_crashes.py. It imports the library once, then
reads one JSON request per line on stdin and answers one JSON line on stdout:

  request: {"argv": [...], "log": FILE, "kill": null | {"stage": S, "event": E, "at": K}}
  answer:  {"exit": code or null, "signal": number or null}

The child runs `main(argv)` with its output in FILE. With `kill`, it sends itself SIGKILL
(kill -9: no cleanup, no atexit, no flushing) on the K-th event E during stage S, where E is
"image" (an image decoded: training, or filling a cache) or "write" (a file renamed into
place: an artifact or cache shard being committed). If the stage ends first, the kill
comes as it returns. Markers in FILE ("@@ ...") say where each child was.

Forking saves each attempt the ~10 s of importing torch and transformers. Nothing here runs
a torch operation before forking, so no thread pool is copied into a child half-made.
"""

import json
import os
import signal
import sys

from emovlm_kd import cache, run_folder
from emovlm_kd.apps import cli
from emovlm_kd.stages.registry import Stage

# Small shards, so a kill while filling a cache leaves some finished and some not.
FLUSH_EVERY = 4


def child(request: dict) -> int:
    with open(request["log"], "a", buffering=1) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        return run_killable(request, log)


def run_killable(request: dict, log) -> int:
    kill = request.get("kill")
    state = {"stage": None, "events": 0}

    def mark(text: str) -> None:
        log.write(f"\n@@ {text}\n")  # after any progress bar on the line
        log.flush()

    def event(kind: str) -> None:
        if kill and state["stage"] == kill["stage"] and kind == kill["event"]:
            state["events"] += 1
            if state["events"] == kill["at"]:
                mark(f"kill {kind} {state['events']} in {state['stage']}")
                os.kill(os.getpid(), signal.SIGKILL)

    real_stage = Stage.train_function

    def stage_function(entry):
        stage, function = entry.name, real_stage(entry)

        def wrapped(run):
            state["stage"] = stage
            mark(f"stage {stage}")
            result = function(run)
            if kill and stage == kill["stage"]:
                mark(f"kill at the end of {stage} ({state['events']} {kill['event']} events)")
                os.kill(os.getpid(), signal.SIGKILL)
            mark(f"done {stage}")
            return result

        return wrapped

    Stage.train_function = stage_function

    real_load = run_folder.load_image

    def load_image(*args, **kwargs):
        event("image")
        return real_load(*args, **kwargs)

    run_folder.load_image = load_image

    real_replace = os.replace

    def replace(source, target):
        event("write")
        return real_replace(source, target)

    os.replace = replace

    real_fill = cache.TensorCache.fill

    def fill(self, keys, items, compute, batch_size, description, flush_every=FLUSH_EVERY):
        have = set(self.rows())
        reused = len({key for key in keys if key in have})
        mark(f"fill {self.directory.parent.name}/{self.directory.name} {len(set(keys))} rows {reused} reused")
        return real_fill(self, keys, items, compute, batch_size, description, flush_every=FLUSH_EVERY)

    cache.TensorCache.fill = fill
    return cli.main(request["argv"])


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = child(request)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        answer = {
            "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        }
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    serve()
