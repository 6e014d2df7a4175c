"""Where a training run executes: device, precision and processes, shared by every trainer.

Both trainers (``training.landmarks.train`` with its STC rounds, ``training.identity.train`` and
the student in ``training.identity.student``) take the same code path on a CPU, one GPU or many:

- **Device**: ``resolve_device("auto" | "cpu" | "cuda" | "cuda:N")``; ``auto`` is CUDA where
  ``torch.cuda.is_available()``, else the CPU. Under torchrun each process takes
  ``cuda:LOCAL_RANK``. On CUDA ``torch.backends.cudnn.benchmark`` is on (fixed input sizes).
- **Precision** (a recipe field): ``fp32`` (no autocast), ``bf16`` (``torch.autocast``, CPU or a
  GPU with bfloat16), ``fp16`` (autocast + ``GradScaler``, CUDA only: fp16 on a CPU is refused
  with one line, never silently changed). The trainers run the network under :meth:`Runtime.autocast`
  and compute their losses in fp32.
- **Processes**: started by ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the
  environment) a run is DistributedDataParallel over NCCL (CUDA) or gloo (CPU). The recipe's
  ``batch_size`` is the *global* batch (each process takes ``batch_size / world_size``), so a
  recipe's learning rate and schedule mean the same on 1 or 8 GPUs and a run resumes under any
  world size. Rank 0 alone logs, validates and writes files (atomically, :mod:`training.run_folder`);
  the others wait at a barrier. Checkpoints hold the unwrapped model and load on the CPU first
  (``load_state``), then move: a run started on a GPU resumes on a CPU and the other way round.

Without torchrun nothing here changes what a CPU run computed before: no autocast for fp32, the
GradScaler disabled (a pass-through), the same DataLoader and the same sampler.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from training.nn.runner import TorchRunner

PRECISIONS = ("fp32", "bf16", "fp16")
CHANNELS_LAST = ("auto", "on", "off")
# Rank 0 validates, pseudo-labels (STC) and detects faces while the others wait at a barrier:
# a collective's default timeout (10 min on NCCL) is too short for that.
BARRIER_TIMEOUT = datetime.timedelta(hours=4)


# ------------------------------------------------------------------ device and precision


def check_precision(precision: str, device: torch.device | None = None) -> None:
    """One-line errors for a precision the recipe cannot have (on ``device``, when given)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected fp32, bf16 or fp16, got {precision!r}")
    if device is None:
        return
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision = fp16 needs a CUDA device (autocast + GradScaler); on a CPU use bf16 or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision = bf16: {torch.cuda.get_device_name(device)} has no bfloat16; use fp16")


def check_channels_last(value: str) -> None:
    if value not in CHANNELS_LAST:
        raise ValueError(f"channels_last: expected auto, on or off, got {value!r}")


def resolve_device(flag: str = "auto", local_rank: int | None = None) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a torch device. ``local_rank`` (torchrun's,
    when several processes share a machine) picks the GPU for ``auto`` and ``cuda``."""
    text = (flag or "auto").strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise ValueError(f"--device {flag}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {flag}: torch {torch.__version__} sees no CUDA device; use --device cpu or auto")
    count = torch.cuda.device_count()
    if match.group(1) is not None:
        if local_rank is not None:
            raise ValueError(
                f"--device {flag}: under torchrun each process takes cuda:LOCAL_RANK; pass --device cuda "
                "(choose GPUs with CUDA_VISIBLE_DEVICES)"
            )
        index = int(match.group(1))
    else:
        index = local_rank if local_rank is not None else torch.cuda.current_device()
    if index >= count:
        raise ValueError(f"--device {flag}: GPU {index} asked for, {count} visible (--nproc_per_node at most {count})")
    return torch.device("cuda", index)


def use_channels_last(setting: str, device: torch.device, cpu_default: bool) -> bool:
    """``on``/``off`` as the recipe says; ``auto``: always on CUDA (tensor-core convolutions want
    NHWC), on a CPU as the trainer measured (``cpu_default``)."""
    check_channels_last(setting)
    if setting != "auto":
        return setting == "on"
    return device.type == "cuda" or cpu_default


# ------------------------------------------------------------------ processes


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment {name}={value!r}: expected an integer (set by torchrun)") from None


@dataclass
class Runtime:
    """One process of a run: its device, the recipe's precision, and its place among the processes."""

    device: torch.device
    precision: str = "fp32"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def describe(self) -> str:
        where = str(self.device) if not self.cuda else f"{self.device} ({torch.cuda.get_device_name(self.device)})"
        procs = f", {self.world_size} processes ({dist.get_backend()})" if self.distributed else ""
        return f"{where}, {self.precision}{procs}"

    # --- threads, precision

    def threads(self, recipe_threads: int) -> int:
        """CPU threads for this process: the recipe's, shared among the processes of one CPU machine."""
        if self.cuda:
            return max(1, recipe_threads)
        return max(1, recipe_threads // max(1, self.local_world_size))

    def autocast(self):
        """The context the network's forward runs in (a no-op for fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """A GradScaler, enabled for fp16 only: for fp32/bf16 ``scale``, ``step`` and ``update``
        pass straight through to the loss and the optimizer."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    # --- processes

    def wrap(self, module: torch.nn.Module, **kwargs) -> torch.nn.Module:
        """DistributedDataParallel around ``module`` (already on the device) when several
        processes run; the module itself otherwise."""
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.cuda else None
        # buffers (batch-norm statistics) are rank 0's at every forward: DDP's default
        return DistributedDataParallel(module, device_ids=ids, **kwargs)

    def barrier(self) -> None:
        if not self.distributed:
            return
        if self.cuda:
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first (it may write a cache: detected boxes, frozen features,
        pseudo-labels), the others after it (they read what it wrote)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def broadcast(self, obj):
        """Rank 0's ``obj`` (a picklable value) on every process."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self.device if self.cuda else None)
        return box[0]

    def mean_over_processes(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """Per-process sums (float64 tensors, any device) -> their mean over the processes, as floats."""
        if not values:
            return {}
        keys = list(values)  # insertion order: the same on every process (the same code ran)
        stacked = torch.stack([values[k].detach().to(self.device, torch.float64) for k in keys])
        if self.distributed:
            dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
            stacked /= self.world_size
        return dict(zip(keys, stacked.cpu().tolist()))

    # --- data

    def per_process_batch(self, batch_size: int) -> int:
        if batch_size % self.world_size:
            raise ValueError(
                f"batch_size {batch_size}: the global batch must divide evenly among {self.world_size} processes"
            )
        return batch_size // self.world_size

    def epoch_loader(
        self,
        dataset,
        batch_size: int,
        *,
        epoch: int,
        seed: int,
        workers: int = 0,
        collate_fn=None,
        weights: np.ndarray | None = None,
    ) -> torch.utils.data.DataLoader:
        """This process's shuffled batches of one epoch (the last partial batch dropped).

        ``batch_size`` is the global batch. The order is drawn from ``seed * 1000 + epoch``. One
        process: the DataLoader the trainers always built (shuffle with that generator), so a CPU
        run reproduces its earlier results. Several: a ``DistributedSampler`` (``set_epoch``) that
        deals each process every ``world_size``-th index of one shared permutation, so the
        processes' batches of one step together form one global batch. ``weights``: draw
        ``len(weights)`` indices with replacement by weight (``WeightedRandomSampler``), the same
        draw on every process, each taking its share."""
        cuda = dict(pin_memory=True) if self.cuda else {}
        common = dict(drop_last=True, num_workers=workers, persistent_workers=False, **cuda)
        if collate_fn is not None:
            common["collate_fn"] = collate_fn
        gen = torch.Generator().manual_seed(seed * 1000 + epoch)
        if weights is not None:
            w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
            sampler = torch.utils.data.WeightedRandomSampler(w, len(w), replacement=True, generator=gen)
            if self.distributed:
                sampler = ProcessShare(sampler, self.rank, self.world_size)
            return torch.utils.data.DataLoader(dataset, self.per_process_batch(batch_size), sampler=sampler, **common)
        if not self.distributed:
            return torch.utils.data.DataLoader(dataset, batch_size, shuffle=True, generator=gen, **common)
        sampler = torch.utils.data.DistributedSampler(
            dataset, self.world_size, self.rank, shuffle=True, seed=seed * 1000, drop_last=True
        )
        sampler.set_epoch(epoch)
        return torch.utils.data.DataLoader(dataset, self.per_process_batch(batch_size), sampler=sampler, **common)

    def to_device(self, batch: dict) -> dict:
        """A collated batch's tensors on this process's device (asynchronously from pinned memory)."""
        if not self.cuda:
            return batch
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class ProcessShare(torch.utils.data.Sampler):
    """Every ``world``-th index of ``sampler``'s draw, from ``rank`` on (the same draw on every
    process: its generator is seeded alike), cut to an equal count per process."""

    def __init__(self, sampler, rank: int, world: int):
        self.sampler, self.rank, self.world = sampler, rank, world

    def __len__(self) -> int:
        return len(self.sampler) // self.world

    def __iter__(self):
        return iter(list(self.sampler)[self.rank :: self.world][: len(self)])


def setup(device: str = "auto", precision: str = "fp32") -> Runtime:
    """This process's :class:`Runtime`. Under torchrun (``WORLD_SIZE`` > 1) the process group is
    created on the first call (NCCL on CUDA, gloo on a CPU) and kept for the process's later
    stages (STC rounds); :func:`teardown` ends it."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    dev = resolve_device(device, local_rank if world > 1 else None)
    check_precision(precision, dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True
    if world > 1:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if not dist.is_initialized():
            kwargs = {"device_id": dev} if dev.type == "cuda" else {}
            dist.init_process_group(backend, timeout=BARRIER_TIMEOUT, **kwargs)
        elif dist.get_backend() != backend:
            raise ValueError(f"--device {device}: this process group runs {dist.get_backend()}, not {backend}")
    return Runtime(dev, precision, rank, world, local_rank, local_world)


def teardown() -> None:
    """End the process group, if this process started one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    """Rank 0, or the only process (before or without a process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return _env_int("RANK", 0) == 0


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The model inside DistributedDataParallel (what checkpoints hold)."""
    return getattr(module, "module", module)


def model_device(module: torch.nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


class DeviceRunner(TorchRunner):
    """:class:`TorchRunner` for a model on any device: the preprocessed batch goes to the model's
    device, the outputs come back to the CPU as float32 (evaluation always runs in fp32)."""

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        was_training = self.model.training
        self.model.eval()
        device = model_device(self.model)
        with torch.no_grad():
            outs = self.model(torch.from_numpy(batch).to(device))
        self.model.train(was_training)
        if isinstance(outs, torch.Tensor):
            outs = (outs,)
        return [o.float().cpu().numpy() for o in outs]
