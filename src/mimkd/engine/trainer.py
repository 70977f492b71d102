"""The training loop. It knows nothing about methods: a distiller gives it losses, it steps.

Per step there is no host sync: losses, accuracy and method metrics accumulate in device tensors
that are read once per `log_every` steps (progress bar, NaN check) and at the end of each epoch.

What a kill leaves, and what resuming does with it (README "Reliability"): every file is written
atomically (`atomic_write`), so each is whole, old or new. Per epoch the trainer logs the epoch's
record, then writes last.pt, then best.pt. Resuming reads last.pt, drops the metrics logged past
its step (that work is done again), rebuilds best.pt from last.pt when a kill fell between the two,
deletes our temp files and any report older than the checkpoint. So metrics.jsonl holds each epoch
once, best.pt agrees with results.json, and the weights end bit-identical to an uninterrupted run.
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
from mimkd.engine.distributed import DistributedContext
from mimkd.engine.fast import CompiledOrEager, resolve_compile, resolve_precision, uses_cuda_graphs
from mimkd.engine.optim import build_optimizer, build_scheduler
from mimkd.engine.report import write_run_report
from mimkd.engine.rundir import (
    REPORT_FILES,
    RESTART,
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


class RunningSums:
    """Device-side sums of per-step values; `read()` is the only place they reach the host."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.samples = torch.zeros((), device=device)
        self.steps = 0

    def add(self, values: dict[str, torch.Tensor], batch_size: torch.Tensor | int) -> None:
        for key, value in values.items():
            value = value.detach().float()
            if key in self.sums:
                self.sums[key] += value
            else:
                self.sums[key] = value.clone()
        self.samples += batch_size
        self.steps += 1

    def read(self) -> dict[str, float]:
        if not self.sums:
            return {}
        keys = list(self.sums)
        stacked = torch.stack([self.sums[k] for k in keys]).cpu().tolist()
        return {key: value / max(self.steps, 1) for key, value in zip(keys, stacked)}


def evaluate(model: torch.nn.Module, loader, autocast) -> dict[str, float]:
    """Top-1/top-5 accuracy and mean CE of `model` over a loader (one host sync at the end)."""
    was_training = model.training
    model.eval()
    device_sums = None
    with torch.no_grad(), autocast():
        for images, labels, _ in loader:
            logits = model(images).float()
            top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = top5 == labels[:, None]
            batch = torch.stack(
                [
                    hits[:, 0].sum().float(),
                    hits.any(dim=1).sum().float(),
                    torch.nn.functional.cross_entropy(logits, labels, reduction="sum"),
                    torch.tensor(float(labels.shape[0]), device=labels.device),
                ]
            )
            device_sums = batch if device_sums is None else device_sums + batch
    model.train(was_training)
    top1, top5, loss, count = device_sums.cpu().tolist()
    return {"top1": top1 / count, "top5": top5 / count, "loss": loss / count, "count": count}


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


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during `fit`: still a KeyboardInterrupt, carrying the folder to resume."""

    def __init__(self, run_dir: Path):
        super().__init__(str(run_dir))
        self.run_dir = str(run_dir)


class Trainer:
    """Trains `parts.distiller`, checkpoints every epoch, and writes the run's report."""

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
        self.optimizer = build_optimizer(
            self.distiller.trainable_parameters(), config.optim, device
        )
        self.scheduler = build_scheduler(
            self.optimizer, config.optim, len(self.train_loader), config.epochs
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
        self.step = 0
        self.best_accuracy = -1.0
        self.best_epoch = 0
        self.saved_epoch = 0  # the epoch last.pt holds (0: none written or resumed yet)
        self.history: list[dict] = []
        self.folder: RunFolder | None = None
        self.metrics_file = self.run_dir / "metrics.jsonl"
        self.tensorboard = None
        self._epoch_tensor = torch.zeros((), device=device)

    # ---- precision / compile -----------------------------------------------------------------
    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
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
            "best_accuracy": self.best_accuracy,
            "best_epoch": self.best_epoch,
            "history": self.history,
            **self.record,
        }

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
        self.train_loader.load_state_dict(state["loader"])
        self.epoch = state["epoch"]
        self.step = state["step"]
        self.best_accuracy = state["best_accuracy"]
        self.best_epoch = state["best_epoch"]
        self.saved_epoch = self.epoch
        self.history = list(state["history"])
        return state

    def _repair_best(self, state: dict) -> None:
        """A kill between last.pt and best.pt leaves best.pt one epoch behind a last.pt that
        records itself as the best epoch: write best.pt from last.pt's state."""
        if state["best_epoch"] != state["epoch"]:
            return
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
        what a kill left there, then record the config."""
        self.folder = self._claim_folder()
        last = self.run_dir / "last.pt"
        if self.folder is not None:
            plan = self.folder.plan
        else:  # other processes of a distributed run follow the main one's folder
            plan = RESUME if self.config.resume and last.is_file() else RESTART
        try:
            state = self.resume(last) if plan == RESUME else None
            if self.folder is not None:
                with run_folder_writes(self.run_dir):
                    self._tidy_folder(state)
                    config = self._recorded_config()
                    if config is not None:
                        atomic_write_text(
                            self.run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False)
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
        total = self.config.epochs * len(self.train_loader)
        return min(total, self.config.max_steps) if self.config.max_steps else total

    def _training_left(self) -> bool:
        return self.epoch < self.config.epochs and self.step < self._total_steps()

    # ---- the loop ----------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train to the end (resuming first if the config says so), then write the report.

        The run folder is locked from the start to the end of `fit`, on every way out."""
        self._open_run()
        try:
            return self._fit()
        except KeyboardInterrupt:
            raise RunInterrupted(self.run_dir) from None
        finally:
            self._release_folder()

    def _fit(self) -> TrainResult:
        self._open_tensorboard()
        start = time.perf_counter()
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
        finally:
            bar.close()
            if self.tensorboard is not None:
                self.tensorboard.close()
        last = self.history[-1]["test_top1"] if self.history else float("nan")
        wall_seconds = time.perf_counter() - start
        results = {
            **{key: value for key, value in self.record.items() if key not in _NOT_IN_RESULTS},
            "best_accuracy": self.best_accuracy,
            "best_epoch": self.best_epoch,
            "last_accuracy": last,
            "epochs": self.config.epochs,
            "seed": self.config.seed,
            "wall_seconds": wall_seconds,
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
        """One optimisation step: the distiller's forward in the run's precision (its stage step,
        compiled when compile is on), backward, SGD and the schedule. No host sync."""
        if self.cuda_graphs:
            # the previous step's graph outputs were consumed; let the next replay reuse them
            torch.compiler.cudagraph_mark_step_begin()
        with self.autocast():
            output = self.step_model(images, labels, indices, self._epoch_tensor)
        self.optimizer.zero_grad(set_to_none=True)
        output.total_loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return output

    def _train_epoch(self, bar, total_steps: int) -> None:
        self.distiller.train()
        self.distiller.on_epoch_start(self.epoch)
        # the epoch reaches the step as a tensor: a compiled step never specialises on it
        self._epoch_tensor = torch.tensor(float(self.epoch), device=self.device)
        sums = RunningSums(self.device)
        interval = RunningSums(self.device)
        epoch_start = time.perf_counter()
        interval_start = epoch_start
        log_every = max(1, self.config.log_every)
        for images, labels, indices in self.train_loader:
            output = self.train_step(images, labels, indices)
            correct = (output.logits.detach().argmax(dim=1) == labels).sum()
            values = {"loss": output.total_loss, "train_correct": correct / labels.shape[0]}
            values.update({f"loss_{k}": v for k, v in output.losses.items()})
            values.update(output.metrics)
            sums.add(values, labels.shape[0])
            interval.add(values, labels.shape[0])
            if self.step % log_every == 0 or self.step >= total_steps:
                interval_start = self._report_interval(bar, interval, interval_start)
                interval = RunningSums(self.device)
            if self.step >= total_steps:
                break
        if interval.steps:
            self._report_interval(bar, interval, interval_start)
        train = sums.read()
        self._check_finite(train.get("loss", 0.0))
        # fp32 whatever the step's precision: reported accuracy must not depend on speed flags
        evaluation = evaluate(self.eval_model, self.test_loader, contextlib.nullcontext)
        self.epoch += 1
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
        self.log_line(
            f"epoch {self.epoch}/{self.config.epochs}  loss {record['train_loss']:.4f}  "
            f"train {record['train_top1']:.4f}  test {evaluation['top1']:.4f}  "
            f"(best {self.best_accuracy:.4f} @ {self.best_epoch})"
        )

    def _report_interval(self, bar, interval: RunningSums, since: float) -> float:
        values = interval.read()
        now = time.perf_counter()
        images = interval.samples.item()
        self._check_finite(values.get("loss", 0.0))
        speed = images / max(now - since, 1e-9)
        bar.update(interval.steps)
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
        raise TrainingDivergedError(
            f"the loss became {loss} at step {self.step} (epoch {self.epoch + 1}); {kept}. Lower "
            "optim.lr or the method's loss weights and rerun in a new run_dir."
        )
