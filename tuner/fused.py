"""Fused trial arrays: K configurations of one architecture trained as ONE network on one device.

`fit_array(configs, data, on_epoch) -> list[MemberResult]` is `tuner.train.fit` for K configurations that
share `widths`, `blocks` and `batch_size` (the case of search_spaces/recipe.yaml). Framework-free, like
`fit`: no Ray, no MLflow.

How (HFTA-style horizontal fusion): every convolution of ModifiedResNet becomes one grouped convolution
(groups=K) over the members' stacked channels, every BatchNorm one BatchNorm over K*C channels (its
statistics are per channel, so per member), and the linear head one batched matrix product. Member k's
batch is its own: shuffled and augmented from its own generator by the same calls `fit` makes, then
stacked along channels, so member k steps on exactly the images `fit(configs[k])` would. The members'
losses are summed; no parameter is shared, so each member's gradients are those of its own loss. The
optimizer step is written here on one flat buffer of all the array's parameters, with per-element
hyperparameters (torch's SGD with momentum/Nesterov, Adam and AdamW formulas), so one step is a handful
of kernels whatever K is, not K optimizers' worth. Each member keeps its own learning-rate schedule
(`LrSchedule`: warmup, onecycle/cosine/plateau), weight average (`ema_epochs`), label smoothing,
augmentation, flip TTA, seed, metrics per epoch and checkpoint.

Equivalence with `fit` (tests/test_fused.py states the tolerances and what they catch): in float64 a
member's weights, statistics and optimizer state after 3 epochs are fit's to about 1e-14 relative, so
the arithmetic is fit's. In fp32 the fused convolutions sum in another order than K separate ones and
training amplifies the rounding, so members agree with `fit` to float tolerance, not bit for bit: per
epoch, losses to about 1e-4 relative and accuracies to the image on the test's CPU.

A member's checkpoint is in `fit`'s format (`tuner.checkpoint.model_from_checkpoint` and
`fit(resume=...)` read it) and `fit_array(resume=[...])` reads `fit`'s: weights as a plain
ModifiedResNet state dict, optimizer state as torch's optimizer would have saved it.

Members leave the array when they complete their own `epochs`, diverge (status `diverged`, at the same
check `fit` makes), or are dropped between epochs (`on_epoch` returns False, or `TrialArray.drop`:
status `stopped`); the array then continues with the rest, rebuilt narrower. `TrialArray.add` joins a
member (fresh or from a checkpoint) between epochs.

Whether an array beats separate processes is measured by bench/fused_throughput.py (and on a GPU by
bench/gpu_packing.sh); the gain, if any, is a GPU effect: on CPU a fused array is no faster.

Not supported: different architectures or batch sizes in one array, and different `precision`,
`channels_last`, `compile` or `deterministic` (one network runs them all): `fit_array` refuses such a
set with a ValueError naming the field. With `compile`, the fused network is compiled (and recompiled
whenever the array narrows or widens); equivalence is tested without it.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from tuner import augment
from tuner.config import TrainConfig
from tuner.data import DataSplits
from tuner.device import autocast_dtype, pick_device
from tuner.evaluate import EVAL_BATCH, DeviceImages, normalise, tta_logits
from tuner.model import NUM_CLASSES, build_model
from tuner.train import (
    CHECKPOINT_FORMAT,
    DIVERGED_LOSS,
    DIVERGENCE_CHECK_EVERY,
    EpochMetrics,
    LrSchedule,
    augment_batch,
    draw_first_flips,
    make_optimizer,
)

# One network runs the whole array, so these must agree across its members.
SHARED_FIELDS = ("widths", "blocks", "batch_size", "precision", "channels_last", "compile", "deterministic")
# Every TrainConfig field this module trains as fit does. A field added to TrainConfig later is refused at
# any value but its default until it is handled here (and in tests/test_fused.py).
SUPPORTED_FIELDS = frozenset(SHARED_FIELDS) | {
    "zero_init_residual", "dirac_init",  # build_model applies them to each member's initial weights
    "optimizer", "lr", "momentum", "nesterov", "weight_decay", "bn_bias_decay", "epochs", "schedule",
    "warmup_epochs", "plateau_patience", "plateau_factor", "label_smoothing",
    "crop_padding", "flip", "alternate_flip", "color_jitter", "rotation", "translate", "final_plain_epochs",
    "tta_flip", "tta_translate", "ema_epochs", "seed",
}
Status = Literal["completed", "diverged", "stopped"]
# on_epoch(index, metrics, checkpoint) -> False to drop member `index` (configs' order) from the array.
ArrayCallback = Callable[[int, EpochMetrics, Callable[[], dict[str, Any]]], "bool | None"]


@dataclass
class MemberResult:
    """How one member ended: `fit`'s FitResult, plus `stopped` for a member dropped between epochs."""

    status: Status
    history: list[EpochMetrics] = field(default_factory=list)
    # the full training state at the member's last epoch, in fit's format; None when it diverged
    checkpoint: dict[str, Any] | None = None

    @property
    def best(self) -> EpochMetrics | None:
        return max(self.history, key=lambda m: m.val_acc, default=None)


def fit_array(
    configs: Sequence[TrainConfig],
    data: DataSplits,
    on_epoch: ArrayCallback | None = None,
    resume: Sequence[Mapping[str, Any] | None] | None = None,
    device: str | torch.device | None = None,
) -> list[MemberResult]:
    """Train `configs` as one fused array on `data`; one MemberResult per config, in order.

    `resume[k]`, when given and not None, is a checkpoint of configs[k] written by `fit` or by this
    function. `on_epoch(k, metrics, checkpoint)` is called after each epoch of each member, as `fit` calls
    its callback; returning False drops that member (status `stopped`, its checkpoint kept).
    """
    array = TrialArray(configs, data, resume, device)
    with _deterministic(bool(array.shared["deterministic"])):
        while array.active:
            for index, metrics in array.run_epoch().items():
                if on_epoch is None:
                    continue
                keep = on_epoch(index, metrics, lambda index=index: array.checkpoint(index))
                if keep is False and index in array.active:
                    array.drop(index)
    return [result for result in array.results if result is not None]


class FusedResNet(nn.Module):
    """K ModifiedResNets of one architecture as one network: input N x 3K x H x W, logits N x K x classes.

    Its state dict has ModifiedResNet's keys; every tensor stacks the K members' tensors along dim 0, so
    member k's tensor is `t.unflatten(0, (K, -1))[k]`.
    """

    def __init__(self, widths: Sequence[int], blocks: Sequence[int], members: int,
                 num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.members = members
        self.stem = nn.Sequential(_conv(3, widths[0], 3, 1, members), nn.BatchNorm2d(members * widths[0]),
                                  nn.ReLU(inplace=True))
        stages, in_channels = [], widths[0]
        for index, (width, depth) in enumerate(zip(widths, blocks)):
            layers = []
            for block in range(depth):
                layers.append(_FusedBlock(in_channels, width, 2 if index > 0 and block == 0 else 1, members))
                in_channels = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.head = _FusedLinear(in_channels, num_classes, members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int, members: int) -> nn.Conv2d:
    return nn.Conv2d(members * in_channels, members * out_channels, kernel, stride=stride, padding=kernel // 2,
                     bias=False, groups=members)


class _FusedBlock(nn.Module):
    """tuner.model.BasicBlock over K members (same attribute names, so the same state-dict keys)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, members: int) -> None:
        super().__init__()
        self.conv1 = _conv(in_channels, out_channels, 3, stride, members)
        self.bn1 = nn.BatchNorm2d(members * out_channels)
        self.conv2 = _conv(out_channels, out_channels, 3, 1, members)
        self.bn2 = nn.BatchNorm2d(members * out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(_conv(in_channels, out_channels, 1, stride, members),
                                          nn.BatchNorm2d(members * out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _FusedLinear(nn.Module):
    """K linear layers: weight (K*out) x in and bias K*out, stacked like every other fused tensor."""

    def __init__(self, in_features: int, out_features: int, members: int) -> None:
        super().__init__()
        self.members, self.out_features = members, out_features
        self.weight = nn.Parameter(torch.empty(members * out_features, in_features))
        self.bias = nn.Parameter(torch.empty(members * out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, out = self.members, self.out_features
        features = x.view(len(x), k, -1).transpose(0, 1)  # K x N x in
        weight = self.weight.view(k, out, -1).transpose(1, 2)  # K x in x out
        return torch.baddbmm(self.bias.view(k, 1, out), features, weight).transpose(0, 1)  # N x K x out


@dataclass(eq=False)
class _Member:
    """One configuration's own state, apart from its tensors (which live in the fused network)."""

    index: int  # position in the configs given to the array
    config: TrainConfig
    schedule: LrSchedule
    generator: torch.Generator  # shuffling and augmentation, as in fit
    torch_rng: torch.Tensor  # the global CPU RNG state fit's checkpoint would hold (seeded, then init drawn)
    param_groups: list[dict[str, Any]]  # torch's optimizer param_groups for this config, for its checkpoint
    param_names: list[str]  # ModifiedResNet's parameters in optimizer order (the checkpoint's state indices)
    decay: dict[str, float]  # each parameter's weight decay: its optimizer group's (bn_bias_decay: 0 for some)
    first_flips: torch.Tensor | None  # alternating flips: the images mirrored on odd epochs, as fit draws them
    epoch: int = 0  # epochs completed
    steps: int = 0  # optimizer steps taken: BatchNorm's num_batches_tracked and Adam's step
    averaged_steps: int = 0
    last_lr: float = 0.0
    history: list[EpochMetrics] = field(default_factory=list)
    slot: int = -1  # position in the fused tensors
    pending: dict[str, dict[str, torch.Tensor]] | None = None  # tensors not yet in the fused network
    order: torch.Tensor | None = None  # this epoch's shuffle

    @property
    def adam(self) -> bool:
        return self.config.optimizer in ("adam", "adamw")

    @property
    def averaging(self) -> bool:
        return self.config.ema_epochs > 0


class TrialArray:
    """A fused array being trained: `run_epoch()` until `active` is empty; `drop`/`add` between epochs."""

    def __init__(self, configs: Sequence[TrainConfig], data: DataSplits,
                 resume: Sequence[Mapping[str, Any] | None] | None = None,
                 device: str | torch.device | None = None) -> None:
        configs = list(configs)
        _check_shared(configs)
        if resume is not None and len(resume) != len(configs):
            raise ValueError(f"resume has {len(resume)} entries for {len(configs)} configs: give one per config "
                             "(None for a fresh start)")
        self.device = torch.device(device) if device is not None else pick_device()
        first = configs[0]
        self.shared = {name: getattr(first, name) for name in SHARED_FIELDS}
        self.autocast = autocast_dtype(first.precision, self.device)
        self.train, self.val = DeviceImages(data.train, self.device), DeviceImages(data.val, self.device)
        self.batch_size = min(first.batch_size, len(self.train))
        self.steps_per_epoch = len(self.train) // self.batch_size  # fit drops the ragged last batch too
        self.results: list[MemberResult | None] = []
        self._members: list[_Member] = []
        self._stale = True
        for index, config in enumerate(configs):
            self.add(config, None if resume is None else resume[index])

    # --- the public surface -------------------------------------------------------------------------

    @property
    def active(self) -> list[int]:
        """Indices (in the order configs were given and added) of the members still training."""
        return [m.index for m in self._members]

    def add(self, config: TrainConfig, resume: Mapping[str, Any] | None = None) -> int:
        """Join a member between epochs (fresh, or from a checkpoint of fit or fit_array); returns its index."""
        _check_shared([config])
        for name, value in self.shared.items():
            if _normal(getattr(config, name)) != _normal(value):
                raise ValueError(f"fit_array: all members must share {name} (one network trains them all); this "
                                 f"array has {value!r}, the config {getattr(config, name)!r}")
        member = _new_member(len(self.results), config, resume, self.device, self.steps_per_epoch, len(self.train))
        self.results.append(None)
        if member.epoch >= config.epochs:  # nothing left to train: fit returns at once as well
            self.results[member.index] = MemberResult("completed", member.history,
                                                      self._checkpoint_from(member, member.pending or {}))
            return member.index
        self._members.append(member)
        self._stale = True
        return member.index

    def drop(self, index: int, status: Status = "stopped") -> None:
        """Take member `index` out of the array (between epochs); it keeps its history and checkpoint."""
        member = self._member(index)
        checkpoint = None if status == "diverged" else self.checkpoint(index)
        self.results[index] = MemberResult(status, member.history, checkpoint)
        self._members.remove(member)
        self._stale = True

    def checkpoint(self, index: int) -> dict[str, Any]:
        """Member `index`'s full training state after its last epoch, in fit's checkpoint format (CPU)."""
        result = self.results[index]
        if result is not None:
            if result.checkpoint is None:
                raise ValueError(f"member {index} {result.status} and has no checkpoint")
            return result.checkpoint
        member = self._member(index)
        return self._checkpoint_from(member, member.pending if member.pending is not None else self._tensors_of(member))

    def run_epoch(self) -> dict[int, EpochMetrics]:
        """One epoch of every active member; their metrics by index. Members that diverge, or complete their
        epochs, leave the array (see `results`)."""
        if self._stale:
            self._rebuild()
        started = time.perf_counter()
        device, batch, steps = self.device, self.batch_size, self.steps_per_epoch
        self.model.train()
        for member in self._members:
            member.order = torch.randperm(len(self.train), generator=member.generator, device=device)
        table = self._step_table()
        plains, flipped = self._augmentation_plan()
        loss_sum = torch.zeros(len(self._members), device=device)
        correct = torch.zeros(len(self._members), device=device, dtype=torch.long)
        for step in range(steps):
            images, labels = [], []
            for member, plain, flips in zip(self._members, plains, flipped):
                assert member.order is not None
                index = member.order[step * batch : (step + 1) * batch]
                x = self.train.batch(index)
                if not plain:  # fit's final plain epochs draw no augmentation at all
                    x = augment_batch(member.config, x, member.generator, None if flips is None else flips[index])
                images.append(normalise(x))
                labels.append(self.train.labels[index])
            y = torch.stack(labels, 1)
            loss, logits = self._step(torch.cat(images, 1), y, table[step])
            loss_sum += loss * batch
            correct += (logits.argmax(2) == y).sum(0)
            if (step + 1) % DIVERGENCE_CHECK_EVERY == 0 or step + 1 == steps:
                means = (loss_sum / ((step + 1) * batch)).tolist()
                diverged = [m for m, mean in zip(self._members, means) if not mean < DIVERGED_LOSS]  # NaN too
                if diverged:
                    for member in diverged:
                        self.drop(member.index, "diverged")
                    if not self._members:
                        return {}
                    kept = self._rebuild()  # mid-epoch: the survivors' totals and schedules follow them
                    loss_sum, correct, table = loss_sum[kept], correct[kept], table[:, :, kept]
                    plains, flipped = self._augmentation_plan()
        for member in self._members:
            member.steps += steps
            member.last_lr = member.schedule.lr((member.epoch + 1) * steps - 1)
        images_seen = steps * batch
        sums, hits = loss_sum.tolist(), correct.tolist()  # waits for the device: the clock measures the steps
        train_seconds = time.perf_counter() - started
        evaluated = self._evaluate()
        metrics: dict[int, EpochMetrics] = {}
        for member, total, right, (val_loss, val_acc) in zip(list(self._members), sums, hits, evaluated):
            if not math.isfinite(val_loss):
                self.drop(member.index, "diverged")
                continue
            member.schedule.end_epoch(val_loss)
            member.epoch += 1
            metrics[member.index] = EpochMetrics(
                epoch=member.epoch, train_loss=total / images_seen, train_acc=right / images_seen,
                val_loss=val_loss, val_acc=val_acc, lr=member.last_lr,
                epoch_seconds=time.perf_counter() - started,
                images_per_s=images_seen / train_seconds,  # each member's own images, the array's time
            )
            member.history.append(metrics[member.index])
        for member in list(self._members):
            if member.epoch >= member.config.epochs:
                self.drop(member.index, "completed")
        return metrics

    def _augmentation_plan(self) -> tuple[list[bool], list[torch.Tensor | None]]:
        """Per member (slot order), for the epoch it is training: whether it is one of its final plain epochs, and
        with alternating flips which images it mirrors (fit's train_one_epoch decides both the same way)."""
        plains, flipped = [], []
        for member in self._members:
            epoch = member.epoch + 1
            plains.append(epoch > member.config.epochs - member.config.final_plain_epochs)
            flipped.append(None if member.first_flips is None else augment.alternating_flips(member.first_flips, epoch))
        return plains, flipped

    # --- the fused tensors ----------------------------------------------------------------------------

    def _member(self, index: int) -> _Member:
        for member in self._members:
            if member.index == index:
                return member
        result = self.results[index] if 0 <= index < len(self.results) else None
        raise ValueError(f"member {index} is not in the array"
                         + (f" (it {result.status})" if result is not None else ""))

    def _tensors_of(self, member: _Member) -> dict[str, dict[str, torch.Tensor]]:
        """Views of one member's slices of the fused tensors: live weights, average, optimizer state."""
        k, slot = self._width, member.slot  # the fused tensors' width, which a drop changes only at _rebuild

        def part(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            # BatchNorm's counters are one scalar for all; _checkpoint_from writes each member's own count
            return {name: t.unflatten(0, (k, -1))[slot] if t.dim() else t for name, t in named.items()}

        tensors = {"live": part(self._live)}
        if self._average is not None and member.averaging:
            tensors["average"] = part(self._averaged)
        for name, named in self._state.items():
            tensors[name] = part(named)
        return tensors

    def _rebuild(self) -> list[int]:
        """Build the fused network for the current members (SGD members first, so each optimizer family is a
        contiguous block); returns the members' old slots in their new order."""
        members = sorted(self._members, key=lambda m: m.adam)  # stable: keeps the order within a family
        states = [m.pending if m.pending is not None else self._tensors_of(m) for m in members]
        old_slots = [m.slot for m in members]
        self._members = members
        for slot, member in enumerate(members):
            member.slot, member.pending = slot, None
        self._assemble(states)
        self._stale = False
        return old_slots

    @torch.no_grad()
    def _assemble(self, states: list[dict[str, dict[str, torch.Tensor]]]) -> None:
        k, members, device = len(self._members), self._members, self.device
        self._width = k
        ids = torch.arange(k, device=device)

        def network() -> FusedResNet:
            with torch.device("meta"):  # no initialisation drawn: the members' weights are copied in
                net = FusedResNet(self.shared["widths"], self.shared["blocks"], k)
            net = net.to_empty(device=device)
            return net.to(memory_format=torch.channels_last) if self.shared["channels_last"] else net

        def load(net: FusedResNet, key: str) -> tuple[torch.Tensor, torch.Tensor]:
            """Copy the members' tensors in; returns the flat parameter and statistics buffers."""
            params, stats = _flatten(list(net.parameters())), _flatten(_float_buffers(net))
            for name, tensor in net.state_dict().items():  # detached views of the flat buffers
                if tensor.is_floating_point():
                    tensor.copy_(torch.cat([state[key if key in state else "live"][name] for state in states]))
                else:
                    tensor.zero_()  # BatchNorm's step counter: each member's own lives in _Member.steps
            return params, stats

        self.model = network()
        self._params, self._stats = load(self.model, "live")
        self._live = self.model.state_dict()
        parameters = list(self.model.parameters())
        self._grads = torch.zeros_like(self._params)
        for parameter, grad in zip(parameters, _views(self._grads, parameters)):
            parameter.grad = grad  # backward accumulates into the flat buffer the optimizer reads
        self._param_ids = _member_ids(parameters, k)
        self._stat_ids = _member_ids(_float_buffers(self.model), k)
        self.forward = torch.compile(self.model) if self.shared["compile"] else self.model

        self._average = None
        self._averaged: dict[str, torch.Tensor] = {}
        if any(m.averaging for m in members):
            # One averaged copy for all; members without an average follow their weights exactly (weight 1).
            self._average = network().requires_grad_(False)
            self._average_params, self._average_stats = load(self._average, "average")
            self._averaged = self._average.state_dict()
            self._average_weights()

        # Optimizer state: momentum for SGD members, moments for Adam(W) members, flat like the weights.
        names = [name for name, _ in self.model.named_parameters()]
        kinds = (["momentum_buffer"] if not all(m.adam for m in members) else []) + \
                (["exp_avg", "exp_avg_sq"] if any(m.adam for m in members) else [])
        self._state: dict[str, dict[str, torch.Tensor]] = {}
        self._flat_state: dict[str, torch.Tensor] = {}
        for kind in kinds:
            flat = torch.zeros_like(self._params)
            views = _views(flat, parameters)
            for name, view in zip(names, views):
                view.copy_(torch.cat([state[kind][name] if kind in state else torch.zeros_like(state["live"][name])
                                      for state in states]))
            self._flat_state[kind], self._state[kind] = flat, dict(zip(names, views))

        def per_element(value: Callable[[_Member, str], float | bool],
                        dtype: torch.dtype | None = None) -> torch.Tensor:
            """A constant per element of the flat parameters: value(member, parameter name)."""
            return torch.cat([torch.tensor([value(m, name) for m in members], device=device,
                                           dtype=dtype or self._params.dtype).repeat_interleave(p.numel() // k)
                              for name, p in self.model.named_parameters()])

        # Per-element constants: weight decay is each parameter's group's (torch skips a zero decay, and x + 0 * p
        # is x exactly); Adam and SGD add it to the gradient, AdamW decays the weights by 1 - lr * decay.
        self._weight_decay = per_element(lambda m, name: 0.0 if m.config.optimizer == "adamw" else m.decay[name])
        self._decoupled = per_element(lambda m, name: m.config.optimizer == "adamw" and m.decay[name] != 0, torch.bool)
        self._momentum = per_element(lambda m, name: m.config.momentum)
        self._nesterov = per_element(lambda m, name: m.config.nesterov and m.config.momentum > 0, torch.bool)
        self._some_nesterov = any(m.config.nesterov and m.config.momentum > 0 for m in members if not m.adam)
        self._sgd_slots = sum(not m.adam for m in members)
        self._rows = (0 if self._sgd_slots else 1, 4 if self._sgd_slots < k else 1)
        self._is_sgd = ids[self._param_ids] < self._sgd_slots
        adam_groups = {(tuple(m.param_groups[0]["betas"]), m.param_groups[0]["eps"]) for m in members if m.adam}
        if len(adam_groups) > 1:  # make_optimizer gives every config torch's defaults; refuse anything else
            raise ValueError(f"fit_array: Adam members must share betas and eps, got {sorted(adam_groups)}")
        if adam_groups:
            (self._betas, self._eps), = adam_groups
        self._smoothing = torch.tensor([m.config.label_smoothing for m in members], device=device)
        self._tta = [(m.config.tta_flip, m.config.tta_translate) for m in members]

    def _average_weights(self) -> None:
        """Per-element weight of the newest weights in the average: fit's 1/horizon, or 1 (an exact copy) for a
        member's first update and for members without an average."""
        weights = [min(1.0, 1.0 / (m.config.ema_epochs * self.steps_per_epoch))
                   if m.averaging and m.averaged_steps > 0 else 1.0 for m in self._members]
        vector = torch.tensor(weights, device=self.device, dtype=self._params.dtype)
        self._ema_first = any(m.averaging and m.averaged_steps == 0 for m in self._members)
        self._ema_param_weight, self._ema_stat_weight = vector[self._param_ids], vector[self._stat_ids]

    def _step_table(self) -> torch.Tensor:
        """steps x 4 x K: per step and member, the learning rate and Adam's step size, sqrt of the second bias
        correction and AdamW's decay factor (for its decayed parameters), in Python doubles as torch computes them."""
        rows = []
        steps = self.steps_per_epoch
        for member in self._members:
            config, column = member.config, []
            beta1, beta2 = member.param_groups[0].get("betas", (0.9, 0.999))
            for step in range(steps):
                lr = member.schedule.lr(member.epoch * steps + step)
                t = member.steps + step + 1
                decay = 1 - lr * config.weight_decay if config.optimizer == "adamw" else 1.0
                column.append((lr, lr / (1 - beta1**t), (1 - beta2**t) ** 0.5, decay))
            rows.append(column)
        return torch.tensor(rows, device=self.device, dtype=self._params.dtype).permute(1, 2, 0).contiguous()

    def _step(self, x: torch.Tensor, labels: torch.Tensor,
              hyper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step of every member; (per-member loss, logits N x K x classes)."""
        if self.shared["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
            logits = self.forward(x)
            loss = _member_losses(logits.float(), labels, self._smoothing)
        self._grads.zero_()
        loss.sum().backward()
        with torch.no_grad():
            self._optimizer_step(hyper)
            if self._average is not None:
                self._params_average()
        return loss.detach(), logits

    def _optimizer_step(self, hyper: torch.Tensor) -> None:
        """torch.optim.SGD / Adam / AdamW (single-tensor formulas) on the flat buffers, per-member values."""
        p, g = self._params, self._grads
        # per element, of the rows the array's optimizers read: lr (SGD); step size, bias sqrt, decay (Adam)
        first, last = self._rows  # a slice, not a list: a list index would copy it to the device every step
        rows = dict(zip(range(first, last), hyper[first:last].index_select(1, self._param_ids)))
        updated = []
        if self._sgd_slots:
            d = torch.addcmul(g, self._weight_decay, p)  # grad.add(param, alpha=weight_decay)
            buf = self._flat_state["momentum_buffer"]
            buf.mul_(self._momentum).add_(d)  # fit's first step clones d: 0 * m + d is d exactly
            d = torch.where(self._nesterov, torch.addcmul(d, self._momentum, buf), buf) if self._some_nesterov else buf
            updated.append(torch.addcmul(p, d, rows[0], value=-1))  # param.add_(d, alpha=-lr)
        if self._sgd_slots < self._width:
            beta1, beta2 = self._betas
            q = torch.where(self._decoupled, p * rows[3], p)  # AdamW: param.mul_(1 - lr * weight_decay) where decayed
            d = torch.addcmul(g, self._weight_decay, q)  # Adam's coupled decay; AdamW's weight_decay here is 0
            m, v = self._flat_state["exp_avg"], self._flat_state["exp_avg_sq"]
            m.lerp_(d, 1 - beta1)
            v.mul_(beta2).addcmul_(d, d, value=1 - beta2)
            denom = (v.sqrt() / rows[2]).add_(self._eps)
            updated.append(torch.addcmul(q, m / denom, rows[1], value=-1))  # addcdiv_(m, denom, -step_size)
        p.copy_(updated[0] if len(updated) == 1 else torch.where(self._is_sgd, updated[0], updated[1]))

    def _params_average(self) -> None:
        """WeightAverage.update for every member at once (lerp with weight 1 is an exact copy)."""
        self._average_params.lerp_(self._params, self._ema_param_weight)
        self._average_stats.lerp_(self._stats, self._ema_stat_weight)
        for member in self._members:
            member.averaged_steps += member.averaging
        if self._ema_first:  # after a member's first update its weight drops from 1 (a copy) to fit's
            self._average_weights()

    @torch.no_grad()
    def _evaluate(self) -> list[tuple[float, float]]:
        """tuner.evaluate.evaluate for every member: (loss, accuracy) on the validation split, its own TTA."""
        model = self._average if self._average is not None else self.model
        model.eval()
        k, split, device = self._width, self.val, self.device
        views = sorted(set(self._tta))  # each distinct (tta_flip, tta_translate) of the members
        loss_sums, corrects = [0.0] * k, [0] * k
        for start in range(0, len(split), EVAL_BATCH):
            x = normalise(split.batch(slice(start, start + EVAL_BATCH))).repeat(1, k, 1, 1)  # same images for all
            y = split.labels[start : start + EVAL_BATCH]
            if self.shared["channels_last"]:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
                # evaluate's own tta_logits on the whole array, once per view set; each member takes its own
                by_views = {v: tta_logits(model, x, *v) for v in views}
                logits = by_views[views[0]] if len(views) == 1 else \
                    torch.stack([by_views[v][:, i] for i, v in enumerate(self._tta)], 1)
            losses = torch.stack([F.cross_entropy(logits[:, i], y, reduction="sum") for i in range(k)])
            hits = (logits.argmax(2) == y[:, None]).sum(0)
            for i, (loss, hit) in enumerate(zip(losses.tolist(), hits.tolist())):
                loss_sums[i] += loss
                corrects[i] += hit
        return [(loss / len(split), hit / len(split)) for loss, hit in zip(loss_sums, corrects)]

    def _checkpoint_from(self, member: _Member, tensors: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, Any]:
        """fit's checkpoint of one member from its tensors (views of the fused ones, or not yet fused)."""
        config, counter = member.config, torch.tensor(member.steps)

        def plain(named: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            out = {}
            for name, tensor in named.items():
                out[name] = counter.clone() if name.endswith("num_batches_tracked") else _cpu(tensor)
            return out

        live = plain(tensors["live"])
        state: dict[int, dict[str, torch.Tensor]] = {}
        if member.steps > 0 and (member.adam or config.momentum != 0):  # what torch's optimizer would hold
            for i, name in enumerate(member.param_names):
                if member.adam:
                    state[i] = {"step": torch.tensor(float(member.steps)), "exp_avg": _cpu(tensors["exp_avg"][name]),
                                "exp_avg_sq": _cpu(tensors["exp_avg_sq"][name])}
                else:
                    state[i] = {"momentum_buffer": _cpu(tensors["momentum_buffer"][name])}
        groups = [dict(group, lr=member.last_lr) for group in member.param_groups]
        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "config": config.to_dict(),
            "epoch": member.epoch,
            "model": plain(tensors["average"]) if member.averaging else live,
            "optimizer": {"state": state, "param_groups": groups},
            "schedule": member.schedule.state_dict(),
            "rng": {"generator": member.generator.get_state().cpu(), "torch": member.torch_rng.clone()},
            "history": [m.as_dict() for m in member.history],
        }
        if member.averaging:
            checkpoint["trained"] = live
            checkpoint["averaged_steps"] = member.averaged_steps
        return checkpoint


def _new_member(index: int, config: TrainConfig, resume: Mapping[str, Any] | None, device: torch.device,
                steps_per_epoch: int, train_images: int) -> _Member:
    """A member as fit starts it: seeded initial weights (or a checkpoint's state) and its own generator."""
    with torch.device("meta"):  # torch's own optimizer for this config: its groups, order and decays
        shape = build_model(config)
        optimizer = make_optimizer(config, shape)
    name_of = {id(p): name for name, p in shape.named_parameters()}
    groups = optimizer.param_groups
    _check_groups(config, groups)
    member = _Member(index=index, config=config, schedule=LrSchedule(config, steps_per_epoch),
                     generator=torch.Generator(device=device).manual_seed(config.seed),
                     torch_rng=torch.get_rng_state(), param_groups=optimizer.state_dict()["param_groups"],
                     param_names=[name_of[id(p)] for group in groups for p in group["params"]],
                     decay={name_of[id(p)]: group["weight_decay"] for group in groups for p in group["params"]},
                     first_flips=draw_first_flips(config, train_images, device), last_lr=config.lr)
    if resume is None:
        torch.manual_seed(config.seed)  # exactly as fit: seed, then draw the initial weights
        weights = {name: t.to(device) for name, t in build_model(config).state_dict().items()}
        member.torch_rng = torch.get_rng_state()
        member.pending = {"live": weights}
        if member.averaging:
            member.pending["average"] = weights
        return member
    live = resume.get("trained", resume["model"])
    member.pending = {"live": {name: t.to(device) for name, t in live.items()}}
    if member.averaging:
        member.pending["average"] = {name: t.to(device) for name, t in resume["model"].items()}
        member.averaged_steps = int(resume.get("averaged_steps", 0))
    counters = [t for name, t in live.items() if name.endswith("num_batches_tracked")]
    member.steps = int(counters[0]) if counters else 0
    optimizer = resume["optimizer"]
    for i, name in enumerate(member.param_names):
        for kind, value in optimizer["state"].get(i, {}).items():
            if kind != "step" and value is not None:
                member.pending.setdefault(kind, {})[name] = value.to(device)
    member.last_lr = float(optimizer["param_groups"][0]["lr"])
    member.schedule.load_state_dict(resume["schedule"])
    member.generator.set_state(resume["rng"]["generator"].to("cpu"))
    member.torch_rng = resume["rng"]["torch"].clone()
    member.history = [EpochMetrics(**m) for m in resume["history"]]
    member.epoch = int(resume["epoch"])
    return member


def _check_groups(config: TrainConfig, groups: list[dict[str, Any]]) -> None:
    """The array applies one lr schedule, momentum and betas per member and a decay of 0 or the config's to each
    parameter: what make_optimizer builds. Anything else would be trained differently, so it is refused."""
    first = groups[0]
    for group in groups:
        same = all(group.get(key) == first.get(key) for key in ("lr", "momentum", "nesterov", "betas", "eps"))
        if not same or group["weight_decay"] not in (0, config.weight_decay):
            raise ValueError(f"fit_array: make_optimizer's parameter groups for {config.optimizer} differ in more "
                             "than weight decay (0 or the config's); teach tuner.fused those groups first")


def _check_shared(configs: list[TrainConfig]) -> None:
    if not configs:
        raise ValueError("fit_array needs at least one config")
    defaults = TrainConfig()
    for config in configs:
        config.validate("fit_array config")
        for name in TrainConfig.field_names():
            if name not in SUPPORTED_FIELDS and getattr(config, name) != getattr(defaults, name):
                raise ValueError(f"fit_array does not support {name}={getattr(config, name)!r} yet (it trains only "
                                 f"{name}={getattr(defaults, name)!r}); train that config with fit")
    for name in SHARED_FIELDS:
        values = [getattr(c, name) for c in configs]
        if any(_normal(v) != _normal(values[0]) for v in values):
            raise ValueError(f"fit_array: all members must share {name} (one network trains them all); got "
                             f"{', '.join(sorted({str(_normal(v)) for v in values}))}: split the configs into arrays "
                             f"by {name}")


def _normal(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value  # widths as a list or a tuple are the same widths


def _member_losses(logits: torch.Tensor, labels: torch.Tensor, smoothing: torch.Tensor) -> torch.Tensor:
    """F.cross_entropy(logits[:, k], labels[:, k], label_smoothing=smoothing[k]) for every member k at once,
    in torch's own formula: (1 - e) * nll + e / classes * (-sum of log-probabilities), means over the batch."""
    log_p = F.log_softmax(logits, 2)
    nll = -log_p.gather(2, labels.unsqueeze(2)).squeeze(2).mean(0)
    smooth = -log_p.sum(2).mean(0)
    return (1 - smoothing) * nll + smooth * (smoothing / logits.shape[2])


def _float_buffers(net: nn.Module) -> list[torch.Tensor]:
    return [b for b in net.buffers() if b.is_floating_point()]  # BatchNorm's running mean and variance


def _flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Move `tensors` (parameters or buffers, in their own layouts) into one flat buffer, which is returned:
    one elementwise kernel on it updates them all."""
    flat = torch.zeros(sum(t.numel() for t in tensors), device=tensors[0].device if tensors else None)
    for tensor, view in zip(tensors, _views(flat, tensors)):
        tensor.data = view
    return flat


def _views(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """Views of consecutive parts of `flat` shaped and strided like `like` (channels_last stays so)."""
    views, offset = [], 0
    for tensor in like:
        if not (tensor.is_contiguous() or tensor.is_contiguous(memory_format=torch.channels_last)):
            raise ValueError(f"cannot flatten a tensor of strides {tensor.stride()}")
        views.append(flat.as_strided(tensor.shape, tensor.stride(), offset))
        offset += tensor.numel()
    return views


def _member_ids(tensors: list[torch.Tensor], members: int) -> torch.Tensor:
    """The member of every element of the flat buffer holding `tensors`: dim 0 (members stacked) is outermost in
    memory in both layouts, so each tensor is K equal consecutive runs."""
    if not tensors:
        return torch.zeros(0, dtype=torch.long)
    ids = torch.arange(members, device=tensors[0].device)
    return torch.cat([ids.repeat_interleave(t.numel() // members) for t in tensors])


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", copy=True)


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    """fit's deterministic mode: process-wide, so restored after (a reused Ray worker's next trial is unaffected)."""
    previous = torch.are_deterministic_algorithms_enabled()
    if enabled:
        torch.use_deterministic_algorithms(True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


