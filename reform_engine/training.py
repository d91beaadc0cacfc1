"""Train a reward model on preference pairs with the Bradley-Terry loss -log sigmoid(r+ - r-)."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .configs import nested, refuse, setting
from .data import DEMO_PATH, DataError, PreferencePair, load_preferences, ROWS_HELP, parse_rows, select_rows
from .evaluation import PairwiseMetrics, pairwise_metrics
from .resume import Snapshot
from .reward_model import RewardModelSpec, build_reward_model, load_causal_reward_model
from .runs import RunDir, job
from .runtime import Runtime, seed_everything
from .scoring import bradley_terry_loss, collate, encode, score_pairs
from .trunk_cache import finish, open_trunk_cache


@dataclass
class TrainRewardConfig:
    # data
    data: str = setting(str(DEMO_PATH), "preference data: a file or a hub id (see data.load_preferences)")
    train_rows: str = setting("", "source rows to train on: " + ROWS_HELP)
    train_sample: int = setting(0, "> 0: a seeded random sample of that many of those pairs (e.g. the replay set when "
                                   "fine-tuning on augmentation); 0 = all of them")
    eval_data: str = setting("", "pairs to evaluate on at the end ('' = no evaluation)")
    eval_rows: str = setting("", "source rows of eval_data: " + ROWS_HELP)
    augment_data: str = setting("", "extra pairs (e.g. approved REFORM inversions) added to the training set")
    init_from: str = setting("", "a checkpoint to fine-tune instead of a fresh model (its spec replaces model)")
    skip_invalid: bool = setting(True, "invalid rows are skipped and reported, not fatal")
    # model
    model: RewardModelSpec = nested(RewardModelSpec, "the reward model to build: backbone, fine-tuning, max length",
                                    set_by_job=("trust_remote_code",))
    # how long, and the checkpoints on the way
    epochs: int = setting(2, "passes over the training pairs (2: the recipe cross-validated on HH, benchmarks/RESULTS.md)")
    max_steps: int = setting(0, "> 0: stop after this many steps; 0 = the epochs decide")
    save_every: int = setting(0, "steps between intermediate checkpoints; 0 = at the end only")
    # optimisation
    batch_size: int = setting(8, "pairs per step (2x sequences per forward); under accelerate launch each of N processes "
                                 "takes a batch, so a step covers N x batch_size pairs")
    lr: float = setting(2e-4, "peak learning rate (AdamW, linear warm-up then decay)")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    warmup_ratio: float = setting(0.05, "share of the steps spent warming the learning rate up")
    max_grad_norm: float = setting(1.0, "gradient clipping norm (0 = no clipping)")
    runtime: Runtime = nested(Runtime, "device, dtype, threads, seed (model init and data order), remote-code leave, "
                                       "trunk cache")

    def __post_init__(self):
        checks = [(self.batch_size >= 1, "batch_size must be >= 1"), (self.lr > 0, "lr must be > 0"),
                  (self.epochs >= 1, "epochs must be >= 1"), (self.max_steps >= 0, "max_steps must be >= 0"),
                  (0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
                  (self.train_sample >= 0, "train_sample must be >= 0 (0 = all training pairs)")]
        refuse(self, checks)
        parse_rows(self.train_rows), parse_rows(self.eval_rows)


@dataclass
class TrainRewardResult:
    checkpoint: str
    train_pairs: int
    skipped_pairs: int                      # invalid rows + pairs whose response does not fit max_length
    steps: int
    seconds: float
    pairs_per_second: float
    final_loss: float                       # mean loss over the last 10% of steps
    loss_curve: list[float] = field(default_factory=list)
    eval: PairwiseMetrics | None = None
    trunk_cache: dict = field(default_factory=dict)  # hits, misses, entries, bytes (trunk_cache.TrunkCache.summary)


def batch_order(lengths: Sequence[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Shuffle, then sort by length inside windows of 32 batches: random order, little padding."""
    perm = torch.randperm(len(lengths), generator=generator).tolist()
    window = batch_size * 32
    batches = []
    for w in range(0, len(perm), window):
        chunk = sorted(perm[w:w + window], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]


def encode_for_training(tokenizer, pairs: Sequence[PreferencePair], spec: RewardModelSpec):
    """-> (kept pairs, [(chosen Encoded, rejected Encoded)], skipped count)."""
    kept, encoded, skipped = [], [], 0
    for p in pairs:
        try:
            encoded.append(tuple(encode(tokenizer, p.prompt, side, max_length=spec.max_length,
                                        use_chat_template=spec.use_chat_template) for side in (p.chosen, p.rejected)))
            kept.append(p)
        except DataError:
            skipped += 1
    return kept, encoded, skipped


def _lr_lambda(total: int, warmup: int):
    return lambda step: (step + 1) / max(1, warmup) if step < warmup else max(0.0, (total - step) / max(1, total - warmup))


RESUME = "resume.pt"     # the training state of a run that has not ended, in its run directory
RESUME_EVERY_S = 300.0   # wall seconds between saves of it: a killed run loses at most this much training


def _snapshot(run: RunDir, config: TrainRewardConfig) -> Snapshot:
    """Where a run saves its training state, under the config as the key (the same job: config_keys)."""
    return Snapshot(run.path / RESUME, config)


def _save_resume(run: RunDir, config: TrainRewardConfig, rm, optimizer, scheduler, *, step: int, losses: list[float],
                 epoch_rng: torch.Tensor, in_epoch: int, seconds: float) -> None:
    """Everything a rerun needs to go on from ``step`` as if never stopped: the trained weights, the
    optimizer and schedule, the loss curve so far, and where in which epoch's data order it was."""
    _snapshot(run, config).save({
        "step": step, "losses": losses, "epoch_rng": epoch_rng, "in_epoch": in_epoch,
        "seconds": seconds, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "params": {n: p.detach().cpu() for n, p in rm.named_parameters() if p.requires_grad}})


def _load_resume(run: RunDir, config: TrainRewardConfig) -> dict | None:
    """The saved training state of this config in this run directory, or None (none, another config's, or
    unreadable: the run then starts over, and says so)."""
    snapshot = _snapshot(run, config)
    state = snapshot.load()
    if state is None and snapshot.why:
        run.log(f"the saved training state {snapshot.path} {snapshot.why}; starting over")
    return state


def _launched_accelerator(device: str):
    """An ``accelerate.Accelerator`` under ``accelerate launch`` (or torchrun) with more than one
    process, else None: a single process never touches accelerate. device='cpu' trains on CPU
    processes (gloo); otherwise each process takes its own accelerator device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import Accelerator
    return Accelerator(cpu=device == "cpu")


def _shard(batches: list[list[int]], accelerator) -> list[list[int]]:
    """This process's share of an epoch's batches; every process gets the same count (wrapping
    around), so all take part in every gradient all-reduce."""
    if accelerator is None:
        return batches
    n, k = accelerator.num_processes, accelerator.process_index
    return [batches[(s * n + k) % len(batches)] for s in range(math.ceil(len(batches) / n))]


@job("loading data and model", done=lambda r: "done" + (f"; eval accuracy {r.eval.accuracy:.3f}" if r.eval else ""))
def train_reward_model(config: TrainRewardConfig, run: RunDir) -> TrainRewardResult:
    """Train, checkpoint atomically to ``run_dir/checkpoint``, evaluate if asked; status in run_dir.

    Under ``accelerate launch`` with N processes each trains on 1/N of every epoch's batches with
    gradients averaged (DDP), so a step covers N * batch_size pairs; only the main process writes
    the run directory and evaluates."""
    from tqdm.auto import tqdm

    rt = config.runtime
    accelerator = _launched_accelerator(rt.device)
    is_main = accelerator is None or accelerator.is_main_process
    device = str(accelerator.device) if accelerator else rt.device
    generator = seed_everything(rt.seed)
    data = load_preferences(config.data, skip_invalid=config.skip_invalid)
    pairs = select_rows(data.pairs, config.train_rows)
    if config.train_sample and config.train_sample < len(pairs):
        keep = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(rt.seed))[: config.train_sample]
        pairs = [pairs[i] for i in sorted(keep.tolist())]
        run.log(f"training on a random sample of {len(pairs)} original pairs (seed {rt.seed})")
    if config.augment_data:
        extra = load_preferences(config.augment_data, skip_invalid=config.skip_invalid).pairs
        pairs = pairs + extra
        run.log(f"{len(extra)} augmentation pairs from {config.augment_data}")
    if config.init_from:
        rm = load_causal_reward_model(config.init_from, device=device, dtype=rt.dtype, trainable=True,
                                      trust_remote_code=rt.trust_remote_code)
        spec = rm.spec
    else:
        spec = config.model
        rm = build_reward_model(spec, device=device, dtype=rt.dtype, seed=rt.seed, trust_remote_code=rt.trust_remote_code)
    pairs, encoded, too_long = encode_for_training(rm.tokenizer, pairs, spec)
    if not pairs:
        raise DataError(f"no trainable pairs in rows {config.train_rows!r} of {config.data}.", fix="check train_rows and max_length.")
    skipped = too_long + len(data.report.skipped)
    run.log(f"{len(pairs)} training pairs, {too_long} skipped as too long for max_length={spec.max_length}, "
            f"{len(data.report.skipped)} invalid rows skipped")

    trunk, note = open_trunk_cache(rm, run_dir=run.path, related=[config.init_from], **rt.trunk_args())
    run.log(note)
    lengths = [max(len(c.ids), len(r.ids)) for c, r in encoded]
    steps_per_epoch = math.ceil(math.ceil(len(pairs) / config.batch_size) / (accelerator.num_processes if accelerator else 1))
    total = config.max_steps or steps_per_epoch * config.epochs
    params = [p for p in rm.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total, int(total * config.warmup_ratio)))
    pad_id = rm.tokenizer.pad_token_id
    model = accelerator.prepare(rm) if accelerator else rm  # DDP: the wrapper's forward is rm's and syncs gradients

    rm.train()
    losses: list[float] = []
    step, start, earlier, skip = 0, time.perf_counter(), 0.0, 0
    # a single process saves its state now and then, so that a killed run (a session's end) resumes
    state = _load_resume(run, config) if accelerator is None else None
    if state is not None:
        trained = dict(rm.named_parameters())
        with torch.no_grad():
            for name, value in state["params"].items():
                trained[name].copy_(value)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, losses, earlier, skip = state["step"], list(state["losses"]), float(state["seconds"]), state["in_epoch"]
        generator.set_state(state["epoch_rng"])
        run.log(f"resuming from step {step}/{total} of an interrupted run ({RESUME})")
    saved_at = time.perf_counter()
    bar = tqdm(total=total, initial=step, desc="train-rm", unit="step", dynamic_ncols=True, disable=not is_main)
    while step < total:
        if trunk:
            trunk.refresh()  # what other processes of a launch stored last epoch
        epoch_rng = generator.get_state()
        for i, batch in enumerate(_shard(batch_order(lengths, config.batch_size, generator), accelerator)):
            if i < skip:  # done before the interruption
                continue
            if trunk:
                scores = trunk.pair_scores(model, rm, [encoded[i] for i in batch])  # (2B,)
            else:
                seqs = [encoded[i][0].ids for i in batch] + [encoded[i][1].ids for i in batch]
                ids, mask = collate(seqs, pad_id, "right", rm.device)  # (2B, T)
                scores = model(ids, mask)  # (2B,)
            loss = bradley_terry_loss(scores[: len(batch)], scores[len(batch):])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(float(loss.detach()))
            elapsed = earlier + time.perf_counter() - start
            recent = sum(losses[-20:]) / len(losses[-20:])
            bar.update(1)
            bar.set_postfix(loss=f"{recent:.3f}")
            run.progress(step, total, loss=recent, seconds=elapsed, message=f"step {step}/{total} loss {recent:.3f}")
            if config.save_every and step % config.save_every == 0 and step < total and is_main:
                rm.save(run.checkpoint_path)
                run.log(f"checkpoint at step {step}")
            if accelerator is None and step < total and time.perf_counter() - saved_at >= RESUME_EVERY_S:
                _save_resume(run, config, rm, optimizer, scheduler, step=step, losses=losses, epoch_rng=epoch_rng,
                             in_epoch=i + 1, seconds=earlier + time.perf_counter() - start)
                saved_at = time.perf_counter()
            if step >= total:
                break
        skip = 0
    bar.close()
    seconds = earlier + time.perf_counter() - start
    rm.eval()
    if is_main:
        rm.save(run.checkpoint_path)
    run.log(f"trained {step} steps in {seconds:.1f}s; checkpoint saved")

    metrics = None
    if config.eval_data and is_main:
        run.set_status("running", progress=1.0, message="evaluating")
        eval_data = load_preferences(config.eval_data, skip_invalid=config.skip_invalid)
        eval_pairs = select_rows(eval_data.pairs, config.eval_rows)
        scores = score_pairs(rm, eval_pairs, max_length=max(1024, spec.max_length), trunk=trunk)
        metrics = pairwise_metrics(scores.r_chosen, scores.r_rejected, eval_pairs)
    cache_summary = finish(trunk, note, run.log)
    _snapshot(run, config).remove()  # the checkpoint is written: the saved state has served
    tail = losses[-max(1, len(losses) // 10):]
    pairs_seen = min(step * config.batch_size, len(pairs) * config.epochs) if not config.max_steps else step * config.batch_size
    return TrainRewardResult(str(run.checkpoint_path), len(pairs), skipped, step, seconds, pairs_seen / seconds,
                             sum(tail) / len(tail), losses, metrics, cache_summary)
