"""Pay for the frozen layers once: a cache of the hidden states entering the first trainable layer.

The default RM trains LoRA on its top layers; the embeddings and the layers below (the *trunk*) are
frozen, have no dropout, and take position ids from the attention mask, so the hidden states they
give a token sequence never change. Training (every epoch after the first), influence scoring,
evaluation, robustness and retraining arms on the same backbone read them from here; only new texts
pay for the trunk.

**Key.** A namespace per trunk: a SHA-256 of the frozen tensors themselves (embeddings, layers below
the split, rotary buffers), the model config, the split layer, dtype, device type and the torch and
transformers versions, computed once per model load (~0.6 s for SmolLM2's 100M frozen parameters).
Inside it, an entry per exact token sequence: a prompt's ids, or prompt + response ids with where
the response starts and whether the prompt was cut. Truncation acts only through the ids (a cut
prompt is other ids, and the flag is in the key too), so two truncations never share an entry while
a pair that no max_length cuts is shared by training at 320 tokens and scoring at 1024. The entry
stores its full key and a read compares it, so a hash collision is a miss. Different weights, split,
dtype or code versions are another namespace: a stale entry cannot be read.

**Storage: append-only files in the run directory, read back with pread; nothing kept in process
memory.** fp16 storage was ruled out: it moves scores by ~1e-3, and the cached path must give the
uncached path's losses and scores to 1e-5, so states are stored in the model's dtype. Files (not a
dict) because (1) a process's memory then does not grow with the cache: an HH training run (~0.8 GB of
fp32 states for 1,500 pairs at 320 tokens, the prompt stored once per pair) stays at the size of its
model and batch, far under 8 GB, and the OS page cache serves re-reads at memory speed; (2) the
influence, evaluation and robustness jobs that follow training, and retraining arms, are separate
processes or stages: they open the training run's files read-only (``related``) or share one
directory (a pipeline's ``trunk_cache/``). Each process appends to its own part files, so concurrent
writers (``accelerate launch`` ranks, parallel jobs) never touch each other's; ``refresh`` picks up
what the others wrote. ``cap_gb`` bounds what one job writes: over it, new states are computed and
used but not stored. The files are safe to delete at any time.

Bypassed automatically (``trunk_split``): nothing frozen below the first trainable layer (full
fine-tuning, LoRA on every layer), dropout inside the frozen layers, a non-causal RM, or a decoder
``layer_stack.Stack`` does not understand. A head-only RM caches the last layer's output.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import secrets
import struct
import weakref
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .layer_stack import Stack
from .prompt_once import Packed, Unit, lower_states, pack, units_of

FORMAT = 1
DEFAULT_CAP_GB = 4.0                 # HH fp32: ~0.8 GB for 1,500 training pairs at 320 tokens, ~0.45 GB for robustness on 290
RECORD = struct.Struct("<16sQII")    # key digest, data offset, key length (int32s), rows of states
CONFIG_NOISE = ("_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype", "_commit_hash")


def trunk_split(rm) -> tuple[int | None, str]:
    """-> (the first layer whose input is cached, '') or (None, why the cache is bypassed).

    The split is the first layer with anything trainable or adapted, capped by what the spec says
    was trained (an inference model has LoRA merged and nothing trainable)."""
    if not getattr(rm, "is_causal", False):
        return None, "not a causal reward model"
    stack = Stack.of(rm.backbone)
    if stack is None:
        return None, "not a Llama-style decoder with sdpa/eager attention"
    n = len(stack.layers)
    live = [i for i, layer in enumerate(stack.layers)
            if any(p.requires_grad or "lora_" in name for name, p in layer.named_parameters())]
    split = 0 if any(p.requires_grad for p in stack.embed.parameters()) else min(live, default=n)
    spec = rm.spec
    split = min(split, {"full": 0, "head": n}.get(spec.finetune, max(0, n - (spec.lora_layers or n))))
    if split == 0:
        return None, "full fine-tuning: nothing is frozen" if spec.finetune == "full" else \
            "nothing frozen below the first trainable layer (LoRA on every layer)"
    if rm.training and getattr(stack.config, "attention_dropout", 0.0):
        return None, "dropout in the frozen layers makes their output random"
    return split, ""


def namespace(rm, split: int) -> dict:
    """Everything that decides the trunk's output except the tokens."""
    import transformers

    stack = Stack.of(rm.backbone)
    h = hashlib.sha256()
    tensors = itertools.chain(
        (("embed." + n, t) for n, t in itertools.chain(stack.embed.named_parameters(), stack.embed.named_buffers())),
        ((f"layers.{i}.{n}", t) for i in range(split)
         for n, t in itertools.chain(stack.layers[i].named_parameters(), stack.layers[i].named_buffers())),
        (("rotary." + n, t) for n, t in stack.rotary.named_buffers()))
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    config = {k: v for k, v in stack.config.to_dict().items() if k not in CONFIG_NOISE}
    return {"format": FORMAT, "weights": h.hexdigest(), "split": split, "layers": len(stack.layers),
            "config": hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest(),
            "attention": stack.config._attn_implementation, "dtype": str(stack.embed.weight.dtype),
            "device": stack.embed.weight.device.type, "hidden": stack.config.hidden_size,
            "torch": torch.__version__, "transformers": transformers.__version__}


def entry_key(e=None, prompt: Sequence[int] = ()) -> np.ndarray:
    """int32 key of a response (a scoring.Encoded: its whole ids) or of a prompt."""
    if e is None:
        return np.asarray([0, len(prompt), 0, *prompt], dtype=np.int32)
    return np.asarray([1, e.response_start, int(e.prompt_truncated), *e.ids], dtype=np.int32)


class TrunkStore:
    """Entries of one namespace, in part files under ``<dir>/<namespace digest>/`` of the write
    directory and any read-only directories. Per part: ``.bin`` (key int32s then states, appended)
    and ``.idx`` (fixed-size records, written after the data, so a reader never sees a record
    without its bytes; a torn trailing record is ignored)."""

    def __init__(self, meta: dict, write_dir: Path | None, read_dirs: Sequence[Path] = (),
                 cap_bytes: int = int(DEFAULT_CAP_GB * 2**30)):
        self.meta, self.cap = meta, cap_bytes
        self.name = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:32]
        self.dtype, self.hidden = getattr(torch, meta["dtype"].removeprefix("torch.")), meta["hidden"]
        self.write_dir = Path(write_dir).resolve() / self.name if write_dir else None
        self.dirs = [Path(d).resolve() / self.name for d in dict.fromkeys([*(p for p in [write_dir] if p), *read_dirs])]
        self.index: dict[bytes, tuple[str, int, int, int]] = {}
        self._fds: dict[str, int] = {}                     # open files: read ones by path, this writer's by 'w:' + path
        self._consumed: dict[str, int] = {}
        self._writer: tuple[int, int, str] | None = None  # data fd, index fd, data path
        self.hits = self.misses = self.written = self.not_stored = 0
        self._finalizer = weakref.finalize(self, _close_fds, self._fds)
        self.refresh()

    def refresh(self) -> None:
        """Index the entries written since the last look (by this process or any other)."""
        for d in self.dirs:
            if not (d / "meta.json").is_file() or json.loads((d / "meta.json").read_text()) != self.meta:
                continue  # someone else's files, or a digest collision: never read them
            for idx in sorted(d.glob("part-*.idx")):
                data = idx.with_suffix(".bin")
                seen = self._consumed.get(str(idx), 0)
                with open(idx, "rb") as fh:
                    fh.seek(seen)
                    raw = fh.read()
                raw = raw[: len(raw) - len(raw) % RECORD.size]
                size = data.stat().st_size if data.exists() else 0
                for digest, offset, n_key, rows in RECORD.iter_unpack(raw):
                    if offset + 4 * n_key + rows * self.hidden * self.dtype.itemsize <= size:
                        self.index.setdefault(digest, (str(data), offset, n_key, rows))
                self._consumed[str(idx)] = seen + len(raw)

    def get(self, key: np.ndarray) -> torch.Tensor | None:
        """(rows, H) states stored under exactly ``key``, or None."""
        found = self.index.get(_digest(key))
        if found is not None:
            path, offset, n_key, rows = found
            try:
                fd = self._fds.get(path)
                if fd is None:
                    fd = self._fds[path] = os.open(path, os.O_RDONLY)
                raw = os.pread(fd, 4 * n_key + rows * self.hidden * self.dtype.itemsize, offset)
            except OSError:  # the files were deleted or cut short under us: compute again
                raw = b""
            if len(raw) >= 4 * n_key and np.array_equal(np.frombuffer(raw[: 4 * n_key], dtype=np.int32), key) \
                    and len(raw) == 4 * n_key + rows * self.hidden * self.dtype.itemsize:
                self.hits += 1
                states = torch.frombuffer(bytearray(raw[4 * n_key:]), dtype=torch.uint8)
                return states.view(self.dtype).view(rows, self.hidden)
            del self.index[_digest(key)]  # unreadable, or another key under this digest: let a fresh entry in
        self.misses += 1
        return None

    def put(self, key: np.ndarray, states: torch.Tensor) -> None:
        """Store (rows, H) states under ``key``, unless present or over the cap."""
        digest = _digest(key)
        if digest in self.index or self.write_dir is None:
            return
        body = states.detach().to("cpu", self.dtype).contiguous().reshape(-1).view(torch.uint8).numpy()
        if self.written + key.nbytes + body.nbytes > self.cap:
            self.not_stored += 1
            return
        try:
            if self._writer is None:
                self._open_writer()
            data_fd, idx_fd, path = self._writer
            offset = os.lseek(data_fd, 0, os.SEEK_END)
            os.write(data_fd, key.tobytes() + body.tobytes())
            os.write(idx_fd, RECORD.pack(digest, offset, len(key), states.shape[0]))
        except OSError:  # a full or read-only disk costs the cache, never the job (a torn record is ignored)
            self.write_dir, self.not_stored = None, self.not_stored + 1
            return
        self.index[digest] = (path, offset, len(key), states.shape[0])
        self.written += key.nbytes + body.nbytes

    def _open_writer(self) -> None:
        from .runs import atomic_write_json

        self.write_dir.mkdir(parents=True, exist_ok=True)
        if not (self.write_dir / "meta.json").is_file():
            atomic_write_json(self.write_dir / "meta.json", self.meta)
        part = self.write_dir / f"part-{os.getpid()}-{secrets.token_hex(4)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        data_fd, idx_fd = os.open(f"{part}.bin", flags, 0o644), os.open(f"{part}.idx", flags, 0o644)
        self._writer = (data_fd, idx_fd, f"{part}.bin")
        self._fds[f"w:{part}.idx"], self._fds[f"w:{part}.bin"] = idx_fd, data_fd

    def stored_bytes(self) -> int:
        return sum(4 * n_key + rows * self.hidden * self.dtype.itemsize for _, _, n_key, rows in self.index.values())

    def close(self) -> None:
        self._finalizer()


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.1f} KB"


def _digest(key: np.ndarray) -> bytes:
    return hashlib.sha256(key.tobytes()).digest()[:16]


def _close_fds(fds: dict) -> None:
    for fd in fds.values():
        os.close(fd)
    fds.clear()


class TrunkCache:
    """A ``TrunkStore`` bound to a model's split: serves the hidden states entering layer ``split``."""

    def __init__(self, store: TrunkStore, split: int):
        self.store, self.split = store, split

    def lower(self, rm, packed: Packed) -> torch.Tensor:
        """(U, W, H) hidden states entering layer ``split`` for the packed rows (padding zero). Every
        prompt and response is read from the store; units with anything missing run through the
        trunk (the prompt and the missing responses only) and what they give is stored."""
        pieces: dict[bytes, torch.Tensor] = {}
        todo: list[Unit] = []
        for u in packed.units:
            missing = [e for e in u.members if not self._found(entry_key(e), pieces)]
            prompt_found = self._found(entry_key(prompt=u.prompt), pieces)
            if missing or not prompt_found:
                todo.append(Unit(u.prompt, missing))
        if todo:
            sub = pack(todo, rm.tokenizer.pad_token_id, rm.device)
            with torch.no_grad():
                states = lower_states(rm, sub, self.split)  # (U', W', H)
            for row, (u, spans) in enumerate(zip(todo, sub.spans)):
                for key, (a, b) in [(entry_key(prompt=u.prompt), (0, len(u.prompt))),
                                    *((entry_key(e), span) for e, span in zip(u.members, spans))]:
                    pieces.setdefault(key.tobytes(), states[row, a:b])
                    self.store.put(key, states[row, a:b])
        hidden = torch.zeros(*packed.ids.shape, self.store.hidden, dtype=self.store.dtype, device=rm.device)
        for row, (u, spans) in enumerate(zip(packed.units, packed.spans)):
            hidden[row, : len(u.prompt)] = pieces[entry_key(prompt=u.prompt).tobytes()]
            for e, (a, b) in zip(u.members, spans):
                hidden[row, a:b] = pieces[entry_key(e).tobytes()]
        return hidden

    def pair_scores(self, model, rm, pairs: Sequence[tuple]) -> torch.Tensor:
        """Training's forward: (2B,) rewards of B (chosen, rejected) ``scoring.Encoded`` pairs, chosen
        first; each pair's prompt run once, layers from ``split`` up only. ``model`` is ``rm`` or its
        DDP wrapper (whose forward syncs the gradients)."""
        packed = pack(units_of([list(p) for p in pairs]), rm.tokenizer.pad_token_id, rm.device)
        rewards = model(packed=packed, lower=(self.split, self.lower(rm, packed)))  # (2B,) in unit order
        slots = torch.tensor([s for u in packed.units for s in u.slots], device=rewards.device)
        order = torch.empty_like(slots)
        order[slots] = torch.arange(len(slots), device=rewards.device)
        by_pair = rewards[order]  # chosen, rejected of pair 0, then pair 1, ...
        return torch.cat([by_pair[0::2], by_pair[1::2]])

    def _found(self, key: np.ndarray, pieces: dict) -> bool:
        if key.tobytes() in pieces:
            return True
        states = self.store.get(key)
        if states is not None:
            pieces[key.tobytes()] = states
        return states is not None

    def refresh(self) -> None:
        self.store.refresh()

    def summary(self) -> dict:
        s = self.store
        return {"split": self.split, "layers": s.meta["layers"], "hits": s.hits, "misses": s.misses,
                "entries": len(s.index), "bytes": s.stored_bytes(), "written_bytes": s.written,
                "not_stored_over_cap": s.not_stored, "directory": str(s.write_dir or "")}

    def report(self) -> str:
        """The job log's line."""
        s = self.summary()
        cap = f"; {s['not_stored_over_cap']} not stored (over the {self.store.cap / 2**30:.2f} GB cap)" if s["not_stored_over_cap"] else ""
        return (f"trunk cache: {s['hits']} hits, {s['misses']} misses; {s['entries']} entries, {_size(s['bytes'])} "
                f"({_size(s['written_bytes'])} written by this job{cap}); layers 0-{self.split - 1} of "
                f"{s['layers']} cached, in {s['directory']}")

    def close(self) -> None:
        self.store.close()


def open_trunk_cache(rm, setting: str, run_dir: str | Path, cap_gb: float = DEFAULT_CAP_GB,
                     related: Sequence[str] = ()) -> tuple[TrunkCache | None, str]:
    """The cache a job uses for ``rm``, and a line for its log.

    ``setting``: 'off'; 'auto' (``<run_dir>/trunk_cache``); or directories separated by commas, the
    first written and the others only read. ``related``: checkpoints this job starts from; the cache
    of the run that wrote each is read too (the training run's states serve the influence scoring
    and evaluations after it)."""
    if setting.strip() == "off":
        return None, "trunk cache: off"
    split, why = trunk_split(rm)
    if split is None:
        return None, f"trunk cache: bypassed ({why})"
    dirs = setting_dirs(setting, run_dir)
    reads = dirs[1:] + [d for r in related if r for d in run_cache_dirs(r)]
    store = TrunkStore(namespace(rm, split), dirs[0], reads, int(cap_gb * 2**30))
    return TrunkCache(store, split), (f"trunk cache: layers 0-{split - 1} of {store.meta['layers']} from "
                                      f"{len(store.index)} stored entries; new ones go to {store.write_dir}")


def setting_dirs(setting: str, run_dir: str | Path) -> list[Path]:
    """The directories a ``trunk_cache`` setting names (the first is written); [] for 'off'."""
    if setting.strip() == "off":
        return []
    if setting.strip() == "auto":
        return [Path(run_dir) / "trunk_cache"]
    return [Path(d.strip()).expanduser() for d in setting.split(",") if d.strip()]


def run_cache_dirs(checkpoint: str | Path) -> list[Path]:
    """Where the run that wrote ``checkpoint`` kept its trunk states (its config.json's setting)."""
    if not Path(checkpoint).expanduser().is_dir():
        return []  # a model id, not a checkpoint of ours
    return run_setting_dirs(Path(checkpoint).expanduser().parent)


def run_setting_dirs(run_dir: str | Path) -> list[Path]:
    """The cache directories run ``run_dir`` names in its config.json (the first is the one it writes)."""
    from .runs import read_json

    run_dir = Path(run_dir)
    saved = read_json(run_dir / "config.json", {})
    runtime = saved.get("runtime") if isinstance(saved, dict) else None
    setting = runtime.get("trunk_cache", "auto") if isinstance(runtime, dict) else saved.get("trunk_cache", "auto") \
        if isinstance(saved, dict) else "auto"  # a run's runtime, or a flat config of a run before nested configs
    return setting_dirs(setting, run_dir)


def usage(directory: str | Path) -> list[dict]:
    """What a cache directory holds on disk now, one row per trunk (namespace) in it: entries, bytes
    (the part files, torn records included), and the layers cached. [] when nothing is there."""
    rows = []
    root = Path(directory)
    for ns in sorted(root.iterdir()) if root.is_dir() else []:
        meta = _read_meta(ns / "meta.json")
        if meta is None:
            continue
        files = [f for f in ns.glob("part-*") if f.suffix in (".bin", ".idx")]
        rows.append({"directory": str(root), "trunk": ns.name, "cached_layers": f"0-{meta['split'] - 1} of {meta['layers']}",
                     "entries": sum(f.stat().st_size // RECORD.size for f in files if f.suffix == ".idx"),
                     "bytes": sum(f.stat().st_size for f in files)})
    return rows


def _read_meta(path: Path) -> dict | None:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and {"split", "layers"} <= meta.keys() else None


def finish(trunk: TrunkCache | None, note: str, log) -> dict:
    """Log the cache's line, close it, and return what goes in the job's metrics."""
    if trunk is None:
        return {"off": note}
    log(trunk.report())
    summary = trunk.summary()
    trunk.close()
    return summary


def check_setting(setting: str, cap_gb: float) -> None:
    """For a job config's ``__post_init__``."""
    if not setting.strip():
        raise ValueError("trunk_cache is empty; use 'auto', 'off', or a directory")
    if not cap_gb > 0:
        raise ValueError(f"trunk_cache_gb={cap_gb}: use a positive cap in GB; trunk_cache='off' turns the cache off")
