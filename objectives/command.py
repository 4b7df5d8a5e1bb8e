"""Command objectives: any script as a trial (``[study] command = "torchrun ... train.py"``).

The worker starts the command once per trial, in the study file's folder, with ``{name}``
placeholders replaced by the trial's parameters (and ``{devices}``, ``{trial}``, ``{study}``,
``{checkpoint}``), and the trial's identity in its environment (``HPSEARCH_*``). The script
reports in one of two ways:

* through the Python API (``trial = hpsearch.connect()``, then ``hpsearch.report``,
  ``hpsearch.get_checkpoint`` as in any loop): rank 0 talks to the worker over a Unix socket
  named in ``HPSEARCH_CHANNEL`` (an environment variable survives torchrun, where an inherited
  file descriptor would not), and every rank gets the pruner's decision;
* by printing lines ``hpsearch: step=3 mse=0.25`` (any language, any framework): the worker
  reports them, and ends the command's process group when the pruner says so.

A pruned command ends the trial PRUNED, an exit code other than 0 (or a signal) FAILS it with
the end of its output, a command silent for longer than ``command_timeout`` seconds is killed and
FAILS, and a stop of the worker (SIGTERM) ends the command and hands the trial back: its retry
starts the command again, which resumes from the checkpoint it saved. If the worker is killed
(kill -9) the command learns it from the kernel (a parent-death signal) or at its next report.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import selectors
import shlex
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from hpsearch.errors import ObjectiveError
from hpsearch.objectives import interrupt
from hpsearch.objectives.context import (
    CONTEXT_VARIABLE,
    TrialContext,
    context_document,
    current_context,
)

log = logging.getLogger("hpsearch.command")

PREFIX = "command:"
# Placeholders that every command may use beside the trial's parameters.
BUILTIN_PLACEHOLDERS = ("devices", "trial", "study", "checkpoint")
# The environment a command finds (and hpsearch.connect reads).
CHANNEL = "HPSEARCH_CHANNEL"
PARAMS = "HPSEARCH_PARAMS"
TRIAL = "HPSEARCH_TRIAL"
STUDY = "HPSEARCH_STUDY"
# A line the worker reads as a report: `hpsearch: step=3 mse=0.25` (step optional).
_REPORT_LINE = re.compile(r"^hpsearch:\s+(.*)$")
_FIELD = re.compile(r"^([A-Za-z_][\w.-]*)=(\S+)$")
# How long a command gets to end after SIGTERM (a prune, a stop) before SIGKILL.
_GRACE = 30.0
# How long a command told of its prune (through the channel) gets to end by itself.
_TOLD_GRACE = 10.0
_TAIL = 20  # lines of output kept for a failure's message


def command_ref(command: str, *, cwd: str, timeout: float | None, resumes: bool = False) -> str:
    """The objective reference of a command study: what every worker loads it from."""
    argv = split_command(command)
    placeholders(argv)  # a stray brace is refused now
    data = {"argv": argv, "cwd": cwd, "timeout": timeout, **({"resumes": True} if resumes else {})}
    return PREFIX + json.dumps(data)


def is_command(ref: str) -> bool:
    return ref.startswith(PREFIX)


def describe_objective(ref: str) -> str:
    """An objective reference as people read it: a command as its command line."""
    if not is_command(ref):
        return ref
    return f"command `{' '.join(CommandObjective.load(ref).argv)}`"


def split_command(command: str) -> list[str]:
    try:
        argv = shlex.split(command)
    except ValueError as err:
        raise ObjectiveError(f"command {command!r} cannot be split into words: {err}") from None
    if not argv:
        raise ObjectiveError("command is empty: give the program to run and its arguments")
    return argv


def placeholders(argv: Sequence[str]) -> list[str]:
    """The ``{name}`` placeholders the command's words hold, in order (``{{`` is a brace)."""
    names = []
    for word in argv:
        try:
            names += [name for _, name, _, _ in string.Formatter().parse(word) if name is not None]
        except ValueError as err:
            raise ObjectiveError(
                f"command: the word {word!r}: {err}; write {{{{ and }}}} for a literal brace"
            ) from None
    return names


@dataclass(frozen=True)
class CommandObjective:
    argv: tuple[str, ...]
    cwd: str
    timeout: float | None
    resumes: bool = False  # the script resumes from its checkpoint: pausing schedules take it

    @classmethod
    def load(cls, ref: str) -> CommandObjective:
        data = json.loads(ref[len(PREFIX) :])
        return cls(
            tuple(data["argv"]), str(data["cwd"]), data.get("timeout"), bool(data.get("resumes"))
        )

    def __call__(self, trial: Any, params: dict[str, Any]) -> float | list[float]:
        context = current_context()
        # `hpsearch train` runs the command again with a trial of no study.
        study = getattr(getattr(trial, "study", None), "study_name", "")
        values = {
            **params,
            "devices": context.devices,
            "trial": trial.number,
            "study": study,
            "checkpoint": context.checkpoint or "",
        }
        argv = [_substitute(word, values) for word in self.argv]
        with tempfile.TemporaryDirectory(prefix="hpsearch-command-") as folder:
            channel = os.path.join(folder, "channel")
            return _Run(trial, context, argv, self, channel, params, study).result()


def _substitute(word: str, values: Mapping[str, Any]) -> str:
    parts = []
    for literal, name, _, _ in string.Formatter().parse(word):
        parts.append(literal)
        if name is None:
            continue
        if name not in values:  # refused at create; a study file edited since still fails here
            raise ObjectiveError(f"the command's placeholder {{{name}}} names no parameter")
        parts.append(str(values[name]))
    return "".join(parts)


def _parent_death_signal() -> None:
    """In the child, before exec: the kernel sends SIGKILL when the worker dies (kill -9)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: the command ends at its next report instead
        pass


class _Run:
    """One command run: its process, the channel its rank 0 reports on, its output."""

    def __init__(
        self,
        trial: Any,
        context: TrialContext,
        argv: list[str],
        command: CommandObjective,
        channel: str,
        params: Mapping[str, Any],
        study: str,
    ) -> None:
        self.trial, self.context, self.command = trial, context, command
        self.tail: deque[str] = deque(maxlen=_TAIL)
        self.metrics: dict[str, float] = {}
        self.pruned: str | None = None
        self.told: float | None = None  # when the command was told of its prune
        self.reports = 0
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(channel)
        self.listener.listen()
        env = {
            **os.environ,
            CHANNEL: channel,
            CONTEXT_VARIABLE: context_document(context),
            PARAMS: json.dumps(dict(params)),
            TRIAL: str(trial.number),
            STUDY: study,
            "PYTHONUNBUFFERED": "1",  # report lines arrive as they are printed
            # `python` and `torchrun` are the worker's own (its virtual environment's) first.
            "PATH": os.pathsep.join(
                [os.path.dirname(sys.executable), *filter(None, [os.environ.get("PATH")])]
            ),
        }
        log.info("trial %d runs: %s", trial.number, shlex.join(argv))
        try:
            self.process = subprocess.Popen(
                argv,
                cwd=command.cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: a prune or stop ends all of it
                preexec_fn=_parent_death_signal,
            )
        except OSError as err:
            self.listener.close()
            raise ObjectiveError(f"command {argv[0]!r} cannot be started: {err}") from None

    def result(self) -> float | list[float]:
        import optuna

        try:
            code = self._follow()
        finally:
            self.listener.close()
        if interrupt.STOP.is_set():
            raise interrupt.TrialInterrupted("stop requested")
        if self.pruned is not None:
            raise optuna.TrialPruned(self.pruned)
        if code != 0:
            how = (
                f"was ended by {signal.Signals(-code).name}"
                if code < 0
                else f"exited with code {code}"
            )
            raise ObjectiveError(f"the command {how}{self._output_end()}")
        missing = [m for m in self.context.metrics if m not in self.metrics]
        if missing or not self.context.metrics:
            raise ObjectiveError(
                f"the command ended without reporting {', '.join(missing) or 'a value'}: call "
                "hpsearch.report in it, or print a line 'hpsearch: step=N "
                f"{(missing or ['value'])[0]}=VALUE'"
            )
        values = [self.metrics[m] for m in self.context.metrics]
        return values[0] if len(values) == 1 else values

    def _follow(self) -> int:
        """Relay reports and decisions until the command ends; its exit code."""
        assert self.process.stdout is not None
        output, pending = self.process.stdout.fileno(), b""
        selector = selectors.DefaultSelector()
        selector.register(output, selectors.EVENT_READ, "output")
        selector.register(self.listener, selectors.EVENT_READ, "listener")
        buffers: dict[socket.socket, bytes] = {}
        last_heard = time.monotonic()
        exited_at: float | None = None  # the command ended; its output is drained briefly
        terminated_at: float | None = None  # SIGTERM sent (a prune, a stop)
        try:
            while True:
                for key, _ in selector.select(timeout=0.2):
                    last_heard = time.monotonic()
                    if key.data == "listener":
                        accepted, _ = self.listener.accept()
                        selector.register(accepted, selectors.EVENT_READ, "channel")
                        buffers[accepted] = b""
                    elif key.data == "output":
                        # Read what is there (a buffered readline could hold lines back from
                        # the selector), and split it into lines here.
                        chunk = os.read(output, 65536)
                        if not chunk:
                            selector.unregister(output)
                            if pending:
                                self._output(pending.decode(errors="replace"))
                            continue
                        *lines, pending = (pending + chunk).split(b"\n")
                        for line in lines:
                            self._output(line.decode(errors="replace"))
                    else:
                        connection = key.fileobj
                        assert isinstance(connection, socket.socket)
                        try:
                            chunk = connection.recv(65536)
                        except OSError:  # the command ended mid-message (pruned, killed)
                            chunk = b""
                        if not chunk:
                            selector.unregister(connection)
                            connection.close()
                            continue
                        *lines, buffers[connection] = (buffers[connection] + chunk).split(b"\n")
                        for raw in lines:
                            self._message(connection, json.loads(raw))
                now = time.monotonic()
                code = self.process.poll()
                if code is not None:
                    exited_at = exited_at or now
                    # Its output is closed, or held open by a process it left behind.
                    if output not in selector.get_map() or now - exited_at > 5:
                        return code
                    continue
                # A script told of its prune through the channel ends itself (it raised
                # TrialPruned); one pruned by a printed line, or stopping, is ended here.
                ending = interrupt.STOP.is_set() or (
                    self.pruned is not None and (not self.told or now - self.told > _TOLD_GRACE)
                )
                if ending:
                    if terminated_at is None:
                        terminated_at = now
                        self._signal(signal.SIGTERM)
                    elif now - terminated_at > _GRACE:
                        self._signal(signal.SIGKILL)
                    continue
                timeout = self.command.timeout
                if timeout is not None and now - last_heard > timeout:
                    self._signal(signal.SIGKILL)
                    self.process.wait()
                    raise ObjectiveError(
                        f"the command was silent (no output, no report) for {timeout:g}s "
                        f"(command_timeout) and was killed{self._output_end()}"
                    )
        finally:
            selector.close()
            for connection in buffers:
                connection.close()

    def _output_end(self) -> str:
        """The end of the command's output, for a failure's message: its last line on the
        message's first line (the one the trial records), then the lines before it."""
        lines = [line for line in self.tail if line.strip()]
        if not lines:
            return " (it printed nothing)"
        return f" (its last line: {lines[-1].strip()!r}); its output ended with:\n" + "\n".join(
            lines
        )

    def _output(self, line: str) -> None:
        self.tail.append(line)
        match = _REPORT_LINE.match(line)
        if match is None:
            print(line, file=sys.stderr, flush=True)  # the script's own output, in the log
            return
        fields: dict[str, float] = {}
        for token in match.group(1).split():
            field = _FIELD.match(token)
            try:
                if field is None:
                    raise ValueError(token)
                fields[field.group(1)] = float(field.group(2))
            except ValueError:
                log.warning("trial %d: ignored the report line %r", self.trial.number, line)
                return
        step = int(fields.pop("step", self.reports))
        if self._report(fields, step) and self.pruned is None:
            self.pruned = self._decide(step)

    def _message(self, connection: Any, message: Mapping[str, Any]) -> None:
        op = message.get("op")
        if op == "report":
            self._report(message["metrics"], int(message["step"]))
        elif op == "decide":
            reason = self._decide(int(message["step"]))
            if reason is not None:
                self.pruned, self.told = reason, time.monotonic()
            with contextlib.suppress(OSError):  # it may be gone already
                connection.sendall(json.dumps({"prune": reason is not None}).encode() + b"\n")
        elif op == "attr":
            self.trial.set_user_attr(str(message["key"]), message["value"])

    def _report(self, metrics: Mapping[str, float], step: int) -> bool:
        """Record a report; whether the study's metric was in it (and went to the pruner)."""
        import warnings

        self.metrics.update({name: float(value) for name, value in metrics.items()})
        self.reports += 1
        metric = self.context.metrics[0] if self.context.metrics else ""
        if metric not in metrics or len(self.context.directions) > 1:
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a resumed trial reports its last step again
            self.trial.report(float(metrics[metric]), step)
        return True

    def _decide(self, step: int) -> str | None:
        if len(self.context.directions) > 1 or not self.trial.should_prune():
            return None
        metric = self.context.metrics[0]
        return f"pruned at step {step} with {metric} {self.metrics.get(metric, float('nan')):.4g}"

    def _signal(self, signum: int) -> bool:
        """Send ``signum`` to the command's process group; False if it is gone."""
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            return False
        return True


class ChannelTrial:
    """The trial as a command's rank 0 sees it: reports and decisions go to the worker."""

    def __init__(self, path: str) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.socket.connect(path)
        self.reader: IO[bytes] = self.socket.makefile("rb")
        self.number = int(os.environ.get(TRIAL, "0"))
        self.params: dict[str, Any] = json.loads(os.environ.get(PARAMS, "{}"))
        self.user_attrs: dict[str, Any] = {}
        self._step = 0

    def _send(self, message: Mapping[str, Any]) -> None:
        self.socket.sendall(json.dumps(message).encode() + b"\n")

    def report(self, value: float | Mapping[str, float], step: int) -> None:
        self._step = step
        context = current_context()
        metrics = value if isinstance(value, Mapping) else {_first(context): float(value)}
        self._send({"op": "report", "metrics": dict(metrics), "step": step})

    def should_prune(self) -> bool:
        self._send({"op": "decide", "step": self._step})
        line = self.reader.readline()
        if not line:
            raise ConnectionError("the worker that started this command is gone")
        return bool(json.loads(line)["prune"])

    def set_user_attr(self, key: str, value: Any) -> None:
        self.user_attrs[key] = value
        self._send({"op": "attr", "key": key, "value": value})


def _first(context: TrialContext) -> str:
    return context.metrics[0] if context.metrics else "value"


class OfflineTrial:
    """The trial of a command run by hand (no worker): nothing is reported, nothing pruned."""

    def __init__(self) -> None:
        self.number = 0
        self.params: dict[str, Any] = {}
        self.user_attrs: dict[str, Any] = {}

    def report(self, value: Any, step: int) -> None:
        pass

    def should_prune(self) -> bool:
        return False

    def set_user_attr(self, key: str, value: Any) -> None:
        self.user_attrs[key] = value


def _quiet_decisions() -> None:
    """A prune or a stop that ends the script is the worker's decision, not a crash: one line
    instead of a traceback in the worker's log."""
    import optuna

    previous = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException, trace: Any) -> None:
        if isinstance(error, optuna.TrialPruned | interrupt.TrialInterrupted):
            print(f"trial {os.environ.get(TRIAL)} ends: {error}", file=sys.stderr, flush=True)
            return
        previous(kind, error, trace)

    sys.excepthook = hook


def connect() -> Any:
    """The trial of the command this process runs in, for ``hpsearch.report`` and
    ``hpsearch.get_checkpoint``: rank 0 talks to the worker, every rank gets its decisions.
    Run by hand (no worker), a trial that reports nothing: the script runs unchanged.

    Under torch.distributed, every rank calls it, after ``init_process_group``."""
    import torch.distributed as dist

    channel = os.environ.get(CHANNEL)
    if channel:
        _quiet_decisions()
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    rank = dist.get_rank() if distributed else 0
    trial: Any = None
    if rank == 0:
        trial = ChannelTrial(channel) if channel else OfflineTrial()
    if not distributed:
        return trial
    from hpsearch.objectives.distributed import DistributedTrial, end_process_group

    # Before the interpreter's teardown, whether or not the script destroys the group itself
    # (see end_process_group: a group left to the teardown can abort the process).
    atexit.register(end_process_group)
    shared = DistributedTrial(trial)
    shared_params = shared.share(trial.params if trial is not None else None)
    shared.params = shared_params  # type: ignore[attr-defined]
    return shared
