"""LightningModule around ``FreeTransformer``: training step, honest validation, optimizer.

Training minimises the paper's loss (CE with posterior Z + per-token free bits).  The
validation figures are labelled by what they are:

- ``val/ce_prior``: CE with uniform Z at every position, the encoder never run.  This
  is what generation sees; it is an honest (single-sample) figure.
- ``val/elbo``: the bound ``CE_posterior + KL`` per scored token (sequence KL summed over
  every latent position, divided by the scored tokens): an upper bound on the negative
  log-likelihood, honest.
- ``val/ce_posterior_LEAKY``: CE with Z from the encoder that has seen the scored
  tokens.  Not a likelihood (PAPER.md §6, "posterior leak"); reported for diagnosis only.

Sums (not means of means) are reduced over batches and ranks with torchmetrics, so the
figures are exact under DDP.  Nothing here assumes a single process.

Anything task-specific comes from the run's task (:func:`ftstudy.tasks.get_task`): its
validation probe, if it has one, adds its ``curve`` figures to every validation (the
synthetic task's shared-Z probe: valid rate, position agreement, mutual information).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import lightning as L
import torch
from torchmetrics import SumMetric

from ftstudy.core.config import RunConfig
from ftstudy.core.latent import kl_per_bit
from ftstudy.core.model import FreeTransformer
from ftstudy.tasks import get_task

__all__ = ["LitFreeTransformer", "NonFiniteLossError", "compile_mode", "lr_at", "resolve_precision", "cpu_has_native_bf16"]

LN2 = math.log(2.0)


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 dot-product instructions (AVX512-BF16 or AMX-BF16)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def machine_name(device: torch.device | str = "cpu") -> str:
    """A file-name-safe label of the hardware: cpu-<cores>c-<isa> or the GPU's name
    (``nvidia-h200``); ``cuda`` when torch sees no CUDA device (a plan made on a CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else "cuda"
    else:
        name = f"cpu-{os.cpu_count()}c-{torch.backends.cpu.get_cpu_capability()}"
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def resolve_precision(precision: str, accelerator: str) -> str:
    """Turn "auto" into the fastest safe Lightning precision for this hardware."""
    if precision != "auto":
        return precision
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


def compile_mode(device: torch.device | str) -> str:
    """torch.compile's mode for ``TrainConfig.compile`` on this device: CUDA graphs on a GPU
    (``reduce-overhead``: one launch per captured graph instead of one per kernel), inductor's
    default elsewhere."""
    return "reduce-overhead" if torch.device(device).type == "cuda" else "default"


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss; the run stops and keeps its last good checkpoint."""


def lr_at(step: int, steps: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the peak learning rate: linear warm-up, then cosine to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class LitFreeTransformer(L.LightningModule):
    """Wraps either variant; ``config`` is a ``RunConfig`` or its dict (what checkpoints store)."""

    def __init__(self, config: RunConfig | dict[str, Any]) -> None:
        super().__init__()
        cfg = config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
        self.task = get_task(cfg.task.name)
        self.task.check_config(cfg)  # ConfigError for settings the task cannot run with
        # Plain dict hyper-parameters keep Lightning checkpoints loadable with weights_only=True.
        self.save_hyperparameters({"config": cfg.to_dict()})
        self.cfg = cfg
        self.model = FreeTransformer(cfg.model)
        # Under FSDP the strategy wraps each block in a checkpoint itself (train.build_strategy).
        self.model.activation_checkpointing = cfg.train.activation_checkpointing and cfg.train.strategy != "fsdp"
        self._sums = torch.nn.ModuleDict({k: SumMetric() for k in (
            "ce_prior", "ce_post", "kl", "n_scored", "n_latent")})
        self._t_last: float | None = None
        self._tokens_since = 0
        self._t_val = 0.0
        self._forward: Any = None  # the compiled forward (TrainConfig.compile), set at fit start
        self.compile_mode: str | None = None
        self._bad_step: torch.Tensor | None = None  # first step with a non-finite loss (-1: none), on the device
        self._bad_loss: torch.Tensor | None = None
        self.val_probe = self.task.validation_probe(cfg)  # None: the task has none
        self.train_tokens = 0  # tokens seen by this process since (re)start

    # ------------------------------------------------------------------ training

    def on_train_start(self) -> None:
        self._t_last, self._tokens_since = time.perf_counter(), 0

    def on_fit_start(self) -> None:
        if self.cfg.train.compile and self._forward is None:
            self.compile_mode = compile_mode(self.device)
            # A compiled view of the model's forward, used by training steps only (validation,
            # probes and generation stay eager). Not a submodule: the state dict is unchanged.
            self._forward = torch.compile(self.model.forward, mode=self.compile_mode, dynamic=False)

    def host_step(self) -> bool:
        """Whether the figures of this training step leave the device: a step that metrics.csv
        and TensorBoard log (every ``log_every`` steps, and the last). Nothing else in the step
        reads a device value on the host, so a GPU never waits for Python between these steps."""
        n = self.global_step + 1
        return n % self.cfg.train.log_every == 0 or n >= self.trainer.max_steps

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # Z draws are a function of (seed, step, rank), not of the global RNG, so a resumed
        # run makes exactly the draws an uninterrupted one would.
        gen = torch.Generator(device=self.device).manual_seed(
            (self.cfg.train.seed * 1_000_003 + self.global_step) * 4099 + self.global_rank)
        forward = self.model if self._forward is None else self._forward
        if self.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # a new step: the captured graph's last outputs are free
        out = forward(batch["idx"], batch["targets"], batch["loss_mask"], z="posterior-leaky", generator=gen)
        assert out.loss is not None and out.ce is not None
        self._note_nonfinite(out.loss.detach())
        n_tok = batch["idx"].numel()
        self.train_tokens += n_tok
        self._tokens_since += n_tok
        if self.host_step():
            self.raise_if_nonfinite()
            self._log_step(out, batch["idx"].shape[0])
        return out.loss

    def _note_nonfinite(self, loss: torch.Tensor) -> None:
        """Remember, on the device, the first step whose loss was NaN or inf (no host sync)."""
        if self._bad_step is None:
            self._bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
            self._bad_loss = torch.zeros((), dtype=torch.float32, device=loss.device)
        first = ~torch.isfinite(loss) & (self._bad_step < 0)
        self._bad_step = torch.where(first, self.global_step, self._bad_step)
        self._bad_loss = torch.where(first, loss.float(), self._bad_loss)

    def raise_if_nonfinite(self) -> None:
        """Raise NonFiniteLossError if any step since the start had a NaN/inf loss: called on
        every logged step and before any weights are saved (one host sync), so no checkpoint
        ever holds weights updated with a non-finite loss."""
        if self._bad_step is not None and int(self._bad_step) >= 0:
            raise NonFiniteLossError(
                f"non-finite loss {float(self._bad_loss)} at step {int(self._bad_step)}; "
                f"the run stops here and keeps its last good checkpoint")

    def _log_step(self, out: Any, batch_size: int) -> None:
        """The step's figures: computed on the device, reduced over ranks in one collective,
        brought to the host in one transfer, logged as numbers."""
        logs = {"train/loss": out.loss.detach(), "train/ce": out.ce.detach()}
        if out.kl is not None:
            assert out.enc_logits is not None and out.kl_loss is not None
            kl = out.kl.detach().mean()
            logs.update({"train/kl_nats": kl, "train/kl_bits": kl / LN2, "train/kl_loss": out.kl_loss.detach()})
            per_bit = kl_per_bit(out.enc_logits.detach()).flatten(0, -2).mean(0) / LN2  # (H,) bits
            logs.update({f"train/kl_bit{h:02d}": v for h, v in enumerate(per_bit)})
        if out.marginal_kl is not None:
            # DEVIATION's penalty (ModelConfig.marginal_weight > 0 only: no column otherwise), in bits.
            logs["train/marginal_kl_bits"] = out.marginal_kl.detach() / LN2
        keys = list(logs)
        values = torch.stack([logs[k].float() for k in keys])
        if self.trainer.world_size > 1:
            # The logged losses are the global batch's (mean over ranks, whose shares are equal).
            values = self.trainer.strategy.reduce(values, reduce_op="mean")
        figures: dict[str, float] = dict(zip(keys, values.cpu().tolist()))  # the step's one device-to-host copy
        now = time.perf_counter()  # after the copy: the device has finished the interval's work
        # Tokens of all ranks since the previous logged step (or the start) over the wall time they took.
        assert self._t_last is not None  # set at train start
        figures["train/tokens_per_s"] = self._tokens_since * self.trainer.world_size / (now - self._t_last)
        self._t_last, self._tokens_since = now, 0
        figures["train/lr"] = self.optimizers().param_groups[0]["lr"]
        figures["step"] = float(self.global_step + 1)  # the logger's x-axis: metrics.csv's step
        self.log_dict(figures, on_step=True, on_epoch=False, sync_dist=False, batch_size=batch_size)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """On a GPU, batches go through pinned memory with a non-blocking copy: the host does not
        wait for the device's queue to drain at every step."""
        if device.type != "cuda" or not isinstance(batch, dict):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        return {k: v.pin_memory().to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()}

    # ------------------------------------------------------------------ validation

    def on_validation_start(self) -> None:
        self._t_val = time.perf_counter()

    def on_validation_end(self) -> None:
        if self._t_last is not None:  # training throughput leaves validation time out
            self._t_last += time.perf_counter() - self._t_val

    def on_validation_epoch_start(self) -> None:
        # Fixed prior draws per rank: validation under prior Z is reproducible.
        self._val_gen = torch.Generator(device=self.device).manual_seed(
            self.cfg.train.seed * 7919 + self.global_rank + 1)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        idx, targets, mask = batch["idx"], batch["targets"], batch["loss_mask"]
        post = self.model(idx, targets, mask, z="posterior-leaky", generator=self._val_gen)
        assert post.ce_sum is not None and post.n_scored is not None
        self._sums["ce_post"].update(post.ce_sum)
        self._sums["n_scored"].update(post.n_scored)
        if self.model.cfg.is_free:
            assert post.kl is not None
            self._sums["kl"].update(post.kl.sum())
            self._sums["n_latent"].update(torch.tensor(float(post.kl.numel()), device=self.device))
            prior = self.model(idx, targets, mask, z="prior", generator=self._val_gen)
            assert prior.ce_sum is not None
            self._sums["ce_prior"].update(prior.ce_sum)
        else:
            self._sums["ce_prior"].update(post.ce_sum)  # no latent: one honest CE
            self._sums["kl"].update(torch.zeros((), device=self.device))
            self._sums["n_latent"].update(torch.ones((), device=self.device))

    def on_validation_epoch_end(self) -> None:
        s = {k: m.compute() for k, m in self._sums.items()}
        for m in self._sums.values():
            m.reset()
        n = s["n_scored"].clamp_min(1.0)
        metrics = {
            "val/ce_prior": s["ce_prior"] / n,
            "val/elbo": (s["ce_post"] + s["kl"]) / n,
            "val/kl_bits": s["kl"] / s["n_latent"].clamp_min(1.0) / LN2,
        }
        if self.model.cfg.is_free:
            metrics["val/ce_posterior_LEAKY"] = s["ce_post"] / n
        if not self.trainer.sanity_checking and self.val_probe is not None:
            curve = self.val_probe.curve
            metrics.update({f"val/{k}": torch.tensor(v) for k, v in self.val_probe(self.model).items() if k in curve})
        # Already reduced over ranks by torchmetrics (and the probe is identical on every
        # rank: same seed, same weights): no further sync.
        metrics["step"] = torch.tensor(float(self.global_step))  # the logger's x-axis: metrics.csv's step
        self.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=False, rank_zero_only=False)

    # ------------------------------------------------------------------ optimizer

    def configure_optimizers(self) -> dict[str, Any]:
        t = self.cfg.train
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]  # norm gains, ζ
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=t.lr, betas=(t.beta1, t.beta2))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_at(step, t.steps, t.warmup_steps, t.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
