"""The training loop. It knows nothing about methods: a distiller gives it losses, it steps.

Per step there is no host sync: losses, accuracy and method metrics accumulate in device tensors
that are read once per `log_every` steps (progress bar, NaN check) and at the end of each epoch.

What a kill leaves, and what resuming does with it (README "Reliability"): every file is written
atomically (`atomic_write`), so each is whole, old or new. Per epoch the trainer logs the epoch's
record, then writes last.pt, then best.pt. Resuming reads last.pt, drops the metrics logged past
its step (that work is done again), rebuilds best.pt from last.pt when a kill fell between the two,
deletes our temp files and any report older than the checkpoint. So metrics.jsonl holds each epoch
once, best.pt agrees with results.json, and the weights end bit-identical to an uninterrupted run.

Mid-epoch (README "Multi-GPU and clusters"): `checkpoint_every=N` also writes last.pt every N
optimizer steps, with the loader's position and the epoch's running sums, so a resumed run takes
the epoch's remaining batches in the same order and logs the records an uninterrupted run logs.
SIGTERM or SIGUSR1 (what SLURM and Kubernetes send before they preempt a job) sets a flag; at the
next step every rank agrees to stop, rank 0 writes last.pt at that step, and the run raises
`RunPreempted` (`mimkd.engine.preemption`; the CLI exits with 75). Checkpoints do not depend on the
number of processes: a run resumes on another world size with the same global batch.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from mimkd.config import RunConfig
from mimkd.distillers.base import Distiller, StepOutput
from mimkd.engine.checkpoint import capture_rng_state, restore_rng_state
from mimkd.engine.distributed import DistributedContext, convert_sync_batchnorm
from mimkd.engine.fast import CompiledOrEager, resolve_compile, resolve_precision, uses_cuda_graphs
from mimkd.engine.metrics import RunningSums, evaluate
from mimkd.engine.optim import build_optimizer, build_scheduler, scaled_lr
from mimkd.engine.preemption import RunInterrupted, RunPreempted, StopSignals
from mimkd.engine.report import write_run_report
from mimkd.engine.rundir import (
    REPORT_FILES,
    RESUME,
    RUN_FILES,
    RunFolder,
    claim_run_folder,
    run_folder_writes,
    trim_metrics,
)
from mimkd.errors import CheckpointError, TrainingDivergedError
from mimkd.serialization import (
    CHECKPOINT_FORMAT,
    atomic_save,
    atomic_write_text,
    load_checkpoint,
    remove_temp_files,
)

# recorded in checkpoints, not repeated in results.json
_NOT_IN_RESULTS = ("config", "class_names", "mean", "std", "model_name", "in_channels", "input")


@dataclass
class TrainResult:
    best_accuracy: float
    last_accuracy: float
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    wall_seconds: float = 0.0
    run_dir: str = ""
    results: dict[str, Any] = field(default_factory=dict)  # results.json's content


@dataclass
class RunParts:
    """Everything a `Trainer` needs for one run (`build_run` assembles it from a config)."""

    config: RunConfig
    distiller: Distiller
    train_loader: Any
    test_loader: Any
    run_dir: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    method_config: Any = None
    distributed: DistributedContext = field(default_factory=DistributedContext)
    # what the run records about itself (checkpoints, results.json, report.md)
    record: dict[str, Any] = field(default_factory=dict)
    # the run folder, claimed by `build_run` (None: `Trainer.fit` claims it)
    folder: RunFolder | None = None


class Trainer:
    """Trains `parts.distiller`, checkpoints every epoch (and every `checkpoint_every` steps),
    and writes the run's report."""

    def __init__(self, parts: RunParts, *, log_line: Callable[[str], Any] | None = None):
        config, device = parts.config, parts.device
        self.parts = parts
        self.config = config
        self.device = device
        self.distiller = parts.distiller.to(device)
        self.train_loader = parts.train_loader
        self.test_loader = parts.test_loader
        self.run_dir = Path(parts.run_dir)
        self.distributed = parts.distributed
        self.record = parts.record
        self.log_line = log_line or (lambda text: tqdm.write(text))
        if config.channels_last:
            self.distiller.to(memory_format=torch.channels_last)
        if config.sync_batchnorm and self.distributed.enabled:
            # the student and the method's modules; the frozen teacher runs in eval mode
            for module in [self.distiller.student, *self.distiller.extra_modules()]:
                convert_sync_batchnorm(module)
        # an optimizer step takes `accumulation` batches: the schedule counts optimizer steps
        self.accumulation = config.optim.accumulation_steps
        self.batches_per_epoch = len(self.train_loader)
        self.steps_per_epoch = max(1, math.ceil(self.batches_per_epoch / self.accumulation))
        batch_size = getattr(self.train_loader, "batch_size", config.data.batch_size)
        self.global_batch_size = self.distributed.world_size * batch_size * self.accumulation
        self.lr = scaled_lr(config.optim, self.global_batch_size)
        self.optimizer = build_optimizer(
            self.distiller.trainable_parameters(), config.optim, device, lr=self.lr
        )
        self.scheduler = build_scheduler(
            self.optimizer, config.optim, self.steps_per_epoch, config.epochs
        )
        # bf16 needs no loss scaling; the scaler is kept (disabled) so checkpoints have one format
        self.scaler = torch.amp.GradScaler(device.type, enabled=False)
        self.step_model = self.distributed.wrap(self.distiller)
        self.eval_model = self.distiller.student
        self.precision = resolve_precision(config.precision, device)
        self.cuda_graphs = False
        if resolve_compile(config.compile, device):
            # the distiller's stage steps are compiled inside DDP's forward, one per stage
            self.distiller.compile_steps(
                lambda step, label: CompiledOrEager(
                    step, mode=config.compile_mode, backend=config.compile_backend, label=label
                )
            )
            self.eval_model = CompiledOrEager(
                self.eval_model,
                mode=config.compile_mode,
                backend=config.compile_backend,
                label="evaluation student",
            )
            self.cuda_graphs = uses_cuda_graphs(config.compile_mode, device)
        self.epoch = 0  # completed epochs
        self.step = 0  # optimizer steps
        self.epoch_step = 0  # optimizer steps of the unfinished epoch
        self.best_accuracy = -1.0
        self.best_epoch = 0
        self.saved_epoch = 0  # the epoch last.pt holds (0: none written or resumed yet)
        self.history: list[dict] = []
        # training time over every session of this run (a resumed run adds to what it resumed)
        self.seconds_before = 0.0
        self._session_start = time.perf_counter()
        self.folder: RunFolder | None = None
        self.metrics_file = self.run_dir / "metrics.jsonl"
        self.tensorboard = None
        self._epoch_tensor = torch.zeros((), device=device)
        self._batch_sizes: list[int] | None = None  # per batch of an epoch, for accumulation
        self._resumed_sums: dict | None = None  # a mid-epoch checkpoint's running sums
        self.stop_signals = StopSignals()  # a scheduler's stop signal, once received

    # ---- precision / compile -----------------------------------------------------------------
    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---- checkpoints -------------------------------------------------------------------------
    def state_dict(self, running: dict | None = None) -> dict:
        """Everything resuming needs; `running`: the unfinished epoch's sums (mid-epoch)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.distiller.student.state_dict(),
            "distiller": self.distiller.method_state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng_state(),
            "loader": self.train_loader.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "epoch_step": self.epoch_step,
            "running": running,
            "global_batch_size": self.global_batch_size,
            "world_size": self.distributed.world_size,
            "best_accuracy": self.best_accuracy,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "train_seconds": self.train_seconds(),
            **self.record,
        }

    def train_seconds(self) -> float:
        """Seconds this run has trained, over every session that resumed it."""
        return self.seconds_before + time.perf_counter() - self._session_start

    def save(self, is_best: bool) -> None:
        """last.pt, then best.pt. last.pt first: it is what resuming reads, and a best.pt left
        behind by a kill between the two is rebuilt from it (`_repair_best`); the other order
        would leave best.pt ahead of a last.pt whose re-run epoch must reproduce it exactly."""
        if self.distributed.is_main:
            state = self.state_dict()
            self._write_checkpoint(state, "last.pt")
            if is_best:
                self._write_checkpoint(state, "best.pt")
        self.saved_epoch = self.epoch

    def save_mid_epoch(self, sums: RunningSums, interval: RunningSums) -> None:
        """last.pt at the current step of an unfinished epoch (best.pt is an epoch's)."""
        if self.distributed.is_main:
            running = {"epoch": sums.state_dict(), "interval": interval.state_dict()}
            self._write_checkpoint(self.state_dict(running), "last.pt")

    def _write_checkpoint(self, state: dict, name: str) -> None:
        with run_folder_writes(self.run_dir, self.run_dir / name):
            atomic_save(state, self.run_dir / name)

    def resume(self, path: str | Path) -> dict:
        """Load every piece of training state from a checkpoint; return the checkpoint."""
        state = load_checkpoint(path, map_location=self.device)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{path} is not a mimkd training checkpoint; resume from a run's last.pt."
            )
        self._check_global_batch(path, state)
        try:
            self.distiller.student.load_state_dict(state["model"])
        except RuntimeError as error:
            raise CheckpointError(
                f"{path} holds a student that does not fit this run "
                f"({str(error).splitlines()[-1].strip()}); resume with the run's own settings."
            ) from None
        self.distiller.load_method_state_dict(state["distiller"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        self.epoch = state["epoch"]
        self.step = state["step"]
        self.epoch_step = state.get("epoch_step", 0)
        # the loader continues the epoch after the batches its optimizer steps took, counted in
        # this run's batches (the same samples whatever the number of processes)
        self.train_loader.load_state_dict(
            {**state["loader"], "position": self.epoch_step * self.accumulation}
        )
        self._resumed_sums = state.get("running")
        self.best_accuracy = state["best_accuracy"]
        self.best_epoch = state["best_epoch"]
        self.saved_epoch = self.epoch
        self.history = list(state["history"])
        self.seconds_before = float(state.get("train_seconds", 0.0))
        return state

    def _check_global_batch(self, path: str | Path, state: dict) -> None:
        """The global batch fixes the schedule and which samples each step takes: a run may
        resume on another number of processes, not with another global batch."""
        recorded = state.get("global_batch_size")
        if recorded is None or recorded == self.global_batch_size:
            return
        world = self.distributed.world_size
        batch = self.global_batch_size // (world * self.accumulation)
        hints = []
        if recorded % (world * self.accumulation) == 0:
            hints.append(f"data.batch_size={recorded // (world * self.accumulation)}")
        if recorded % (world * batch) == 0:
            hints.append(f"optim.accumulation_steps={recorded // (world * batch)}")
        fix = f"pass {' or '.join(hints)}" if hints else "choose data.batch_size and processes"
        raise CheckpointError(
            f"{path} trains with a global batch of {recorded} images (processes x "
            f"data.batch_size x optim.accumulation_steps); this run's is {self.global_batch_size} "
            f"({world} x {batch} x {self.accumulation}). To continue it on {world} "
            f"process{'es' if world > 1 else ''}, {fix}."
        )

    def _repair_best(self, state: dict) -> None:
        """A kill between last.pt and best.pt leaves best.pt one epoch behind a last.pt that
        records itself as the best epoch: write best.pt from last.pt's state."""
        if state.get("epoch_step", 0) or state["best_epoch"] != state["epoch"]:
            return  # a mid-epoch last.pt is never a best.pt
        best = self.run_dir / "best.pt"
        if best.is_file():
            try:
                if load_checkpoint(best)["step"] == state["step"]:
                    return
            except (CheckpointError, KeyError, TypeError):
                pass  # unreadable: rewrite it
        self._write_checkpoint(state, "best.pt")

    # ---- logging -----------------------------------------------------------------------------
    def _log(self, record: dict) -> None:
        if not self.distributed.is_main:
            return
        # appended, not rewritten: a kill cuts at most the last line, which resuming drops
        with (
            run_folder_writes(self.run_dir, self.metrics_file),
            open(self.metrics_file, "a") as file,
        ):
            file.write(json.dumps(record) + "\n")
        if self.tensorboard is not None and record.get("kind") == "epoch":
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                    self.tensorboard.add_scalar(key, value, record["epoch"])

    def _log_main(self, text: str) -> None:
        if self.distributed.is_main:
            self.log_line(text)

    def _open_tensorboard(self) -> None:
        if self.config.tensorboard and self.distributed.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.log_line(
                    'warning: tensorboard is not installed (pip install "mimkd[tensorboard]")'
                )
                return
            self.tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"))

    # ---- the run folder ----------------------------------------------------------------------
    def _recorded_config(self) -> dict | None:
        """config.yaml's content: the config that reproduces this run."""
        if "config" not in self.record:
            return None
        return {**self.record["config"], "resume": False, "run_dir": str(self.run_dir)}

    def _claim_folder(self) -> RunFolder | None:
        """The folder `build_run` claimed, else claim it now (only the main process owns it)."""
        if not self.distributed.is_main:
            return None
        folder = self.parts.folder
        if folder is None or not folder.held:
            folder = claim_run_folder(
                self.run_dir, resume=self.config.resume, config=self._recorded_config()
            )
        return folder

    def _release_folder(self) -> None:
        if self.folder is not None:
            self.folder.release()

    def _open_run(self) -> None:
        """Claim the folder, resume (reading before anything in the folder is written), tidy
        what a kill left there, then record the config. Every rank follows rank 0's plan; an
        error on any rank stops all (shown once, by the lowest failing rank)."""
        try:
            with self.distributed.agreement():
                self.folder = self._claim_folder()
            plan = self.distributed.broadcast_object(
                self.folder.plan if self.folder is not None else None
            )
            with self.distributed.agreement():
                state = self.resume(self.run_dir / "last.pt") if plan == RESUME else None
                if self.folder is not None:
                    with run_folder_writes(self.run_dir):
                        self._tidy_folder(state)
                        config = self._recorded_config()
                        if config is not None:
                            atomic_write_text(
                                self.run_dir / "config.yaml",
                                yaml.safe_dump(config, sort_keys=False),
                            )
        except BaseException:
            self._release_folder()
            raise

    def _tidy_folder(self, state: dict | None) -> None:
        """Make the folder what an uninterrupted run would hold at the resumed step."""
        remove_temp_files(self.run_dir, RUN_FILES)
        # step 0 (a new run, or one killed before its first checkpoint) keeps no record
        trim_metrics(self.metrics_file, self.step)
        if state is not None:
            self._repair_best(state)
        if self._training_left():
            # results.json and report.md describe a finished run; this one trains on
            for name in REPORT_FILES:
                (self.run_dir / name).unlink(missing_ok=True)

    def _total_steps(self) -> int:
        total = self.config.epochs * self.steps_per_epoch
        return min(total, self.config.max_steps) if self.config.max_steps else total

    def _training_left(self) -> bool:
        return self.epoch < self.config.epochs and self.step < self._total_steps()

    # ---- stop signals ------------------------------------------------------------------------
    def _stop_agreed(self) -> bool:
        """Whether any rank received a stop signal: the same answer (and signal) on every rank,
        at the same step (a small all-reduce on a gloo group)."""
        received = self.distributed.max_over_ranks(self.stop_signals.received or 0)
        if received:
            self.stop_signals.received = received
        return bool(received)

    def _preempted(self) -> RunPreempted:
        name = self.stop_signals.name
        self._log_main(f"{name}: checkpoint at step {self.step} in {self.run_dir / 'last.pt'}")
        return RunPreempted(self.run_dir, name, self.step, quiet=not self.distributed.is_main)

    # ---- the loop ----------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train to the end (resuming first if the config says so), then write the report.

        The run folder is locked from the start to the end of `fit`, on every way out."""
        self._open_run()
        try:
            with self.stop_signals.watching():
                return self._fit()
        except RunInterrupted:
            raise
        except KeyboardInterrupt:
            raise RunInterrupted(self.run_dir) from None
        except Exception as error:
            # a collective that failed because another rank did: that rank shows the error
            note = self.distributed.peer_failure(error)
            if note is not None:
                raise note from None
            raise
        finally:
            self._release_folder()

    def _fit(self) -> TrainResult:
        self._open_tensorboard()
        if self.lr != self.config.optim.lr:
            self._log_main(
                f"optim.lr_scaling={self.config.optim.lr_scaling}: lr {self.config.optim.lr:g} x "
                f"global batch {self.global_batch_size} / {self.config.optim.reference_batch_size}"
                f" = {self.lr:g}"
            )
        self._session_start = start = time.perf_counter()
        total_steps = self._total_steps()
        bar = tqdm(
            total=total_steps,
            initial=min(self.step, total_steps),
            disable=not (self.config.progress and self.distributed.is_main),
            desc=self.config.name or "train",
            unit="step",
            dynamic_ncols=True,
        )
        try:
            while self.epoch < self.config.epochs and self.step < total_steps:
                self._train_epoch(bar, total_steps)
                # a signal during the evaluation: last.pt is current (a finished run finishes)
                if self._training_left() and self._stop_agreed():
                    raise self._preempted()
        finally:
            bar.close()
            if self.tensorboard is not None:
                self.tensorboard.close()
        last = self.history[-1]["test_top1"] if self.history else float("nan")
        session_seconds = time.perf_counter() - start
        wall_seconds = self.train_seconds()
        results = {
            **{key: value for key, value in self.record.items() if key not in _NOT_IN_RESULTS},
            "best_accuracy": self.best_accuracy,
            "best_epoch": self.best_epoch,
            "last_accuracy": last,
            "epochs": self.config.epochs,
            "seed": self.config.seed,
            "world_size": self.distributed.world_size,
            "global_batch_size": self.global_batch_size,
            "lr": self.lr,
            "lr_scaling": self.config.optim.lr_scaling,
            "wall_seconds": wall_seconds,  # every session's, resumed ones included
            "session_seconds": session_seconds,
            "run_dir": str(self.run_dir),
        }
        if self.distributed.is_main and self.record:
            with run_folder_writes(self.run_dir):
                write_run_report(self.run_dir, results, self.history)
        return TrainResult(
            best_accuracy=self.best_accuracy,
            last_accuracy=last,
            best_epoch=self.best_epoch,
            history=self.history,
            wall_seconds=wall_seconds,
            run_dir=str(self.run_dir),
            results=results,
        )

    def train_step(self, images, labels, indices=None) -> StepOutput:
        """One optimisation step on one batch: the distiller's forward in the run's precision
        (its stage step, compiled when compile is on), backward, SGD and the schedule. No host
        sync."""
        output = self._forward_backward(images, labels, indices, first=True, weight=1.0)
        self._optimizer_step()
        return output

    def _forward_backward(
        self, images, labels, indices, *, first: bool, weight: float
    ) -> StepOutput:
        """Forward and backward of one batch, its loss weighted by `weight` (its share of the
        optimizer step's samples); `first` of a step clears the gradients first."""
        if self.cuda_graphs:
            # the previous step's graph outputs were consumed; let the next replay reuse them
            torch.compiler.cudagraph_mark_step_begin()
        with self.autocast():
            output = self.step_model(images, labels, indices, self._epoch_tensor)
        if first:
            self.optimizer.zero_grad(set_to_none=True)
        loss = output.total_loss if weight == 1.0 else output.total_loss * weight
        loss.backward()
        return output

    def _optimizer_step(self) -> None:
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.epoch_step += 1

    def _accumulate(self, images, labels, indices, batch: int) -> StepOutput:
        """Batch `batch` of the epoch, as a part of its optimizer step: DDP all-reduces the
        gradients after the step's last batch only (`no_sync` before)."""
        first = batch % self.accumulation == 0
        last = self._ends_step(batch + 1)
        no_sync = getattr(self.step_model, "no_sync", None)
        with contextlib.nullcontext() if last or no_sync is None else no_sync():
            return self._forward_backward(
                images, labels, indices, first=first, weight=self._batch_weight(batch)
            )

    def _ends_step(self, batches_done: int) -> bool:
        return batches_done % self.accumulation == 0 or batches_done == self.batches_per_epoch

    def _batch_weight(self, batch: int) -> float:
        """The batch's share of its optimizer step's samples: the step's gradient is then that
        of the mean over all of them, as one batch of their size would give."""
        if self.accumulation == 1:
            return 1.0
        if self._batch_sizes is None:
            sizes = getattr(self.train_loader, "batch_sizes", None)
            self._batch_sizes = sizes() if sizes else [1] * self.batches_per_epoch
        first = batch - batch % self.accumulation
        group = self._batch_sizes[first : first + self.accumulation]
        return self._batch_sizes[batch] / sum(group)

    def _train_epoch(self, bar, total_steps: int) -> None:
        self.distiller.train()
        self.distiller.on_epoch_start(self.epoch)
        # the epoch reaches the step as a tensor: a compiled step never specialises on it
        self._epoch_tensor = torch.tensor(float(self.epoch), device=self.device)
        running, self._resumed_sums = self._resumed_sums or {}, None
        sums = RunningSums.from_state(running.get("epoch"), self.device)
        interval = RunningSums.from_state(running.get("interval"), self.device)
        epoch_start = time.perf_counter()
        interval_start = epoch_start
        log_every = max(1, self.config.log_every)
        batch = self.epoch_step * self.accumulation  # the loader resumes there too
        batches = iter(self.train_loader)
        try:
            for images, labels, indices in batches:
                output = self._accumulate(images, labels, indices, batch)
                batch += 1
                correct = (output.logits.detach().argmax(dim=1) == labels).sum()
                values = {"loss": output.total_loss, "train_correct": correct / labels.shape[0]}
                values.update({f"loss_{k}": v for k, v in output.losses.items()})
                values.update(output.metrics)
                sums.add(values, labels.shape[0])
                interval.add(values, labels.shape[0])
                if not self._ends_step(batch):
                    continue
                self._optimizer_step()
                if self.step % log_every == 0 or self.step >= total_steps:
                    interval_start = self._report_interval(bar, interval, interval_start)
                    interval = RunningSums(self.device)
                if self.step >= total_steps:
                    break
                if self.epoch_step < self.steps_per_epoch:  # its last step: epoch end follows
                    self._between_steps(sums, interval)
        finally:
            # a loader's iteration closed before its end (max_steps) still ends its epoch
            close = getattr(batches, "close", None)
            if close is not None:
                close()
        if interval.steps:
            self._report_interval(bar, interval, interval_start)
        train = sums.read(self.distributed)
        self._check_finite(train.get("loss", 0.0))
        # fp32 whatever the step's precision: reported accuracy must not depend on speed flags
        evaluation = evaluate(
            self.eval_model, self.test_loader, contextlib.nullcontext, self.distributed
        )
        self.epoch += 1
        self.epoch_step = 0
        record = {
            "kind": "epoch",
            "epoch": self.epoch,
            "step": self.step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": train.get("loss", float("nan")),
            "train_top1": train.get("train_correct", float("nan")),
            "test_top1": evaluation["top1"],
            "test_top5": evaluation["top5"],
            "test_loss": evaluation["loss"],
            "epoch_seconds": time.perf_counter() - epoch_start,
        }
        record.update({k: v for k, v in train.items() if k not in ("loss", "train_correct")})
        self.history.append(record)
        is_best = evaluation["top1"] > self.best_accuracy
        if is_best:
            self.best_accuracy = evaluation["top1"]
            self.best_epoch = self.epoch
        self._log(record)
        self.save(is_best)
        self._log_main(
            f"epoch {self.epoch}/{self.config.epochs}  loss {record['train_loss']:.4f}  "
            f"train {record['train_top1']:.4f}  test {evaluation['top1']:.4f}  "
            f"(best {self.best_accuracy:.4f} @ {self.best_epoch})"
        )

    def _between_steps(self, sums: RunningSums, interval: RunningSums) -> None:
        """After a step inside an epoch: the step checkpoint when due, and the agreed stop."""
        stopping = self._stop_agreed()
        every = self.config.checkpoint_every
        if stopping or (every and self.step % every == 0):
            self.save_mid_epoch(sums, interval)
        if stopping:
            # no rank leaves before last.pt is written: a launcher seeing one process exit
            # terminates the others, rank 0 among them
            self.distributed.barrier()
            raise self._preempted()

    def _report_interval(self, bar, interval: RunningSums, since: float) -> float:
        values = interval.read(self.distributed)
        now = time.perf_counter()
        images = self.distributed.sum(interval.samples).item()
        self._check_finite(values.get("loss", 0.0))
        speed = images / max(now - since, 1e-9)
        bar.update(max(0, self.step - bar.n))
        bar.set_postfix(
            epoch=self.epoch + 1,
            loss=f"{values['loss']:.3f}",
            acc=f"{values['train_correct']:.3f}",
            img_s=f"{speed:,.0f}",
            refresh=False,
        )
        self._log(
            {
                "kind": "interval",
                "epoch": self.epoch + 1,
                "step": self.step,
                "images_per_second": speed,
                **values,
            }
        )
        return now

    def _check_finite(self, loss: float) -> None:
        if math.isfinite(loss):
            return
        if self.saved_epoch:
            kept = (
                f"the last good checkpoint is {self.run_dir / 'last.pt'} (epoch {self.saved_epoch})"
            )
        else:
            kept = "no checkpoint was written yet"
        # not "resume": a resumed run keeps the checkpoint's learning rate and schedule
        error = TrainingDivergedError(
            f"the loss became {loss} at step {self.step} (epoch {self.epoch + 1}); {kept}. Lower "
            "optim.lr or the method's loss weights and rerun in a new run_dir."
        )
        # the loss is every rank's mean: all ranks stop here, rank 0 says why
        error.quiet = not self.distributed.is_main
        raise error
