"""Link mentions in worker processes, so that a native crash costs one mention, not the batch.

A segfault, an abort or an out-of-memory kill inside a model runtime (llama.cpp,
torch, onnxruntime) ends the process it happens in. ``i2cr eval`` therefore runs
the graph in ``concurrency`` worker processes (:class:`WorkerPool`) and writes
the predictions itself, in the parent:

* a worker is a fresh interpreter (``python -m evals.worker``, never a fork of a
  process that already runs model threads), started with the parent's
  ``sys.path``, the run's :class:`~graph.context.Context` and the graph, both
  pickled; models load lazily once per worker and are reused for every mention
  it links;
* a worker links one mention at a time (the next one waits in its pipe); when
  it dies, it is replaced and the mention it was linking is tried once more in
  the new worker (the one waiting goes back to the queue); a mention that
  kills two workers is recorded as failed (``worker died: SIGSEGV while
  linking``) and the batch goes on;
* a worker that spends longer than ``mention_timeout`` (:data:`MENTION_TIMEOUT`,
  10 minutes) on one mention is killed, and that counts as the mention killing it
  (``worker died: timed out after 600 s while linking`` on the second time);
* a worker that dies before it is ready twice in a row (the settings cannot be
  loaded, a model runtime crashes on import) stops the run with one line.

Objects in the settings (fake models in tests, a custom embedder) must be
picklable and defined in an importable module (not in ``__main__``); the graph
is the packaged one, a picklable object, or ``"module:attribute"`` (a graph or a
zero-argument factory of one). ``run_eval(..., isolation="inline")`` (``i2cr eval
--in-process``) links in the calling process instead, for objects that cannot
cross a process boundary and for debugging.
"""

from __future__ import annotations

import faulthandler
import importlib
import io
import os
import pickle
import signal
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for
from pathlib import Path
from typing import Any

from tools.errors import ConfigError, I2CRError, InputError

MAX_DEATHS = 2
"""Workers a mention may kill before it is recorded as failed."""
DEPTH = 2
"""Mentions sent to a worker ahead: the one it links and the next."""
MENTION_TIMEOUT = 600.0
"""Seconds a worker may spend on one mention before it is killed (a hang: a stuck server call, a deadlock);
the mention then counts as its death (tried once more, then recorded as failed). ``None``: no limit."""
PREFETCH_MAX_BYTES = 32 * 1024
"""A next mention is sent ahead only when its message fits in a pipe's buffer (64 KiB on Linux)."""


def mention_limit(seconds: float | None) -> float | None:
    """``--mention-timeout`` as a limit (``i2cr eval`` and ``i2cr batch``): ``seconds`` > 0, or ``None`` for
    no limit (0 or ``None``). A negative, NaN or non-number value is refused (:class:`InputError`)."""
    if seconds is not None and not (isinstance(seconds, (int, float)) and seconds >= 0):
        raise InputError(f"--mention-timeout: expected seconds >= 0 (0 = no limit), got {seconds}")
    return seconds if seconds else None


class WorkerError(I2CRError):
    """The worker process cannot start or keeps dying outside any mention."""


def exit_cause(returncode: int | None) -> str:
    """``SIGSEGV`` for a death by signal 11, ``exit code 3`` for ``sys.exit(3)``."""
    if returncode is None:
        return "unknown cause"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return name + (" (killed: out of memory?)" if -returncode == signal.SIGKILL else "")
    return f"exit code {returncode}"


def graph_ref(graph: Any) -> Any:
    """What tells the worker which graph to run: ``None`` (the packaged one), ``"module:attr"``, or the object."""
    if graph is None or isinstance(graph, str):
        return graph
    try:
        from graph.compiled import graph as default_graph
    except ImportError:  # pragma: no cover - the layout changed
        default_graph = None
    return None if graph is default_graph else graph


def load_graph(ref: Any) -> Any:
    """The graph named by :func:`graph_ref`'s value."""
    if ref is None:
        from graph import graph

        return graph
    if isinstance(ref, str):
        module, _, attr = ref.partition(":")
        if not module or not attr:
            raise ConfigError(f"graph {ref!r}: expected 'module:attribute'")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"graph {ref!r}: cannot import it ({type(exc).__name__}: {exc})") from None
        return obj if hasattr(obj, "invoke") else obj()
    return ref


class _Pickler(pickle.Pickler):
    """Pickles, noting classes and functions of ``__main__`` (a worker process cannot import them)."""

    def __init__(self, file: Any):
        super().__init__(file)
        self.in_main: list[str] = []

    def reducer_override(self, obj: Any) -> Any:
        if (isinstance(obj, type) or callable(obj)) and getattr(obj, "__module__", None) == "__main__":
            self.in_main.append(getattr(obj, "__qualname__", repr(obj)))
        return NotImplemented


def _check(what: str, value: Any) -> None:
    hint = "run in this process instead: run_eval(..., isolation='inline') or i2cr eval --in-process"
    pickler = _Pickler(io.BytesIO())
    try:
        pickler.dump(value)
    except Exception as exc:
        raise ConfigError(f"{what}: the {type(value).__name__} object cannot be sent to the eval worker process "
                          f"({type(exc).__name__}: {exc}); {hint}") from None
    if pickler.in_main:
        raise ConfigError(f"{what}: {pickler.in_main[0]} is defined in __main__ (the script), which the eval worker "
                          f"process cannot import; define it in a module, or {hint}")


def payload(ctx: Any, graph: Any) -> bytes:
    """Pickle the settings and the graph for the workers; a setting that cannot cross is named."""
    for name, value in list(getattr(ctx, "__dict__", {}).items()):
        if not isinstance(value, (str, int, float, bool, type(None))):
            _check(f"setting {name}", value)
    ref = graph_ref(graph)
    _check("graph", ref)
    return pickle.dumps((ctx, ref))


class _Worker:
    """One worker process and the two pipes to it."""

    def __init__(self, blob: bytes):
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "evals.worker", str(to_child_r), str(from_child_w)],
                                         pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL, stdout=2,
                                         env=env)
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self.send = Connection(to_child_w, readable=False)
        self.recv = Connection(from_child_r, writable=False)
        self.ready = False
        self.timed_out: float | None = None  # the limit it was killed at, if it was
        self.assigned: deque = deque()  # examples sent, in order; the first is the one being linked
        self.started = 0.0  # when the first of them started
        try:
            self.send.send(list(sys.path))
            self.send.send_bytes(blob)
        except OSError:  # it died at once; its pipe's end tells the pool
            pass

    def assign(self, example: Any, data: bytes) -> None:
        """Send ``example`` (pickled as ``data``); it is linked after those already sent."""
        self.send.send_bytes(data)
        if not self.assigned:
            self.started = time.perf_counter()
        self.assigned.append(example)

    def finished(self) -> Any:
        """The example whose record just arrived; the next one starts now."""
        ex = self.assigned.popleft()
        self.started = time.perf_counter()
        return ex

    def close(self, *, wait: float) -> None:
        """Ask the process to end (end of input), wait up to ``wait`` s, then terminate it."""
        for conn in (self.send, self.recv):
            try:
                conn.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class WorkerPool:
    """``size`` worker processes linking one mention each; dead workers are replaced.

    ``failed_record(example, error, seconds)`` builds the line of a mention that
    killed :data:`MAX_DEATHS` workers; ``notes`` collects what the summary shows.
    """

    def __init__(self, size: int, ctx: Any, graph: Any, *, failed_record: Callable[[Any, str, float], dict],
                 notes: list[str] | None = None, mention_timeout: float | None = MENTION_TIMEOUT):
        self.size, self.failed_record = size, failed_record
        self.mention_timeout = mention_timeout if mention_timeout and mention_timeout > 0 else None
        self.notes = [] if notes is None else notes
        self.blob = payload(ctx, graph)
        self.workers: list[_Worker] = []
        self.deaths: Counter[str] = Counter()
        self.restarts = 0

    def run(self, todo: list, record_done: Callable[[dict], None]) -> None:
        """Link every example of ``todo``, calling ``record_done`` (in this thread) with each line."""
        queue = deque(todo)
        failed_starts = 0
        try:
            self.workers = [_Worker(self.blob) for _ in range(min(self.size, len(queue)))]
            while self.workers:
                self._feed(queue)
                busy = [w for w in self.workers if w.assigned or not w.ready]
                if not busy:
                    break
                ready = wait_for([w.recv for w in busy], timeout=self._until_timeout(busy))
                if not ready:
                    self._kill_overdue(busy)
                for conn in ready:
                    w = next(w for w in busy if w.recv is conn)
                    try:
                        kind, value = w.recv.recv()
                    except (EOFError, OSError):
                        cause = self._bury(w)
                        if w.ready:
                            failed_starts = 0
                            self._died_linking(w, cause, queue, record_done)
                        else:
                            failed_starts += 1
                            if failed_starts >= MAX_DEATHS:
                                raise WorkerError(f"the eval worker process died while starting ({cause}), "
                                                  f"{failed_starts} times in a row; nothing was linked by it "
                                                  "(see the messages above; i2cr eval --in-process shows the "
                                                  "failure in this process)") from None
                        if queue or any(x.assigned for x in self.workers):
                            self.workers.append(_Worker(self.blob))
                            self.restarts += 1
                        continue
                    if kind == "ready":
                        w.ready, failed_starts = True, 0
                    elif kind == "done":
                        w.finished()
                        record_done(value)
                    elif kind == "fatal":
                        raise ConfigError(value)
        except BaseException:
            self.close(wait=0)
            raise
        self.close(wait=10)

    def _feed(self, queue: deque) -> None:
        """Give each ready worker a mention, and a second one to start on as soon as it answers the first.

        The second (sent only while more mentions wait than there are workers,
        and only when small enough to sit in the pipe without blocking this
        process) hides the hand-off between the processes; a crash is still
        blamed on the first, the one being linked, and the second is requeued.
        """
        for w in list(self.workers):
            while w.ready and queue and len(w.assigned) < DEPTH:
                if w.assigned and len(queue) <= len(self.workers):
                    break
                data = pickle.dumps(queue[0])
                if w.assigned and len(data) > PREFETCH_MAX_BYTES:
                    break
                try:
                    w.assign(queue[0], data)
                except OSError:  # it died after its last answer; if it holds mentions, its end is read next
                    if not w.assigned:
                        self.notes.append(f"an idle eval worker died ({self._bury(w)}); restarted")
                        self.workers.append(_Worker(self.blob))
                        self.restarts += 1
                    break
                queue.popleft()

    def _until_timeout(self, busy: list[_Worker]) -> float | None:
        """Seconds until the first linking worker passes :attr:`mention_timeout` (``None``: no limit); a worker
        killed already is left out (its pipe's end is waited for, not polled)."""
        linking = [w.started for w in busy if w.ready and w.assigned and w.timed_out is None]
        if self.mention_timeout is None or not linking:
            return None
        return max(0.0, min(linking) + self.mention_timeout - time.perf_counter())

    def _kill_overdue(self, busy: list[_Worker]) -> None:
        """Kill each worker linking one mention for longer than the limit; its pipe's end is read next."""
        now = time.perf_counter()
        for w in busy:
            if w.ready and w.assigned and w.timed_out is None and now - w.started >= self.mention_timeout:
                w.timed_out = self.mention_timeout
                w.proc.kill()

    def _bury(self, w: _Worker) -> str:
        self.workers.remove(w)
        w.close(wait=10)
        if w.timed_out is not None:
            return f"timed out after {w.timed_out:g} s"
        return exit_cause(w.proc.returncode)

    def _died_linking(self, w: _Worker, cause: str, queue: deque, record_done: Callable[[dict], None]) -> None:
        if not w.assigned:
            self.notes.append(f"an idle eval worker died ({cause}); restarted")
            return
        ex, waiting = w.assigned[0], list(w.assigned)[1:]
        queue.extendleft(reversed(waiting))  # sent but not started: back to the front, not blamed
        self.deaths[ex.id] += 1
        n = self.deaths[ex.id]
        if n < MAX_DEATHS:
            self.notes.append(f"the eval worker died ({cause}) while linking {ex.id!r}; restarted, tried again")
            queue.appendleft(ex)
        else:
            self.notes.append(f"{ex.id!r} killed the eval worker {n} times ({cause}); recorded as failed")
            record_done(self.failed_record(ex, f"worker died: {cause} while linking", time.perf_counter() - w.started))

    def close(self, *, wait: float) -> None:
        """Stop every worker (after ``wait`` s each for a clean exit)."""
        workers, self.workers = self.workers, []
        for w in workers:
            w.close(wait=wait)


# ---- the worker process -----------------------------------------------------------------

def _child(in_fd: int, out_fd: int) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops the workers
    faulthandler.enable()  # a native crash prints the Python stack of the mention to stderr
    os.set_inheritable(in_fd, False)
    os.set_inheritable(out_fd, False)
    inbox, outbox = Connection(in_fd, writable=False), Connection(out_fd, readable=False)
    try:
        parent_path = inbox.recv()
        sys.path[:] = list(parent_path) + [p for p in sys.path if p not in parent_path]
        blob = inbox.recv_bytes()
    except EOFError:
        return 0
    try:
        ctx, ref = pickle.loads(blob)
        graph = load_graph(ref)
        from evals.predict import Baselines, evaluate_one

        score_baselines = Baselines(ctx)
    except I2CRError as exc:  # e.g. a graph "module:attribute" that cannot be imported
        outbox.send(("fatal", str(exc)))
        return 3
    except Exception as exc:
        outbox.send(("fatal", "cannot load the run's settings in the eval worker process "
                              f"({type(exc).__name__}: {exc}); objects in the settings must be defined in an "
                              "importable module, not in __main__, or run in this process "
                              "(run_eval(..., isolation='inline'), i2cr eval --in-process)"))
        return 3
    outbox.send(("ready", os.getpid()))
    while True:
        try:
            example = pickle.loads(inbox.recv_bytes())
        except (EOFError, OSError):
            return 0
        rec = evaluate_one(graph, example, ctx, score_baselines)
        try:
            outbox.send(("done", rec))
        except (pickle.PicklingError, TypeError, AttributeError):
            import json

            outbox.send(("done", json.loads(json.dumps(rec, default=str))))
        except (BrokenPipeError, OSError):  # the parent is gone
            return 0


if __name__ == "__main__":
    sys.exit(_child(int(sys.argv[1]), int(sys.argv[2])))
