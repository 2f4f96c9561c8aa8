"""Read packed shards: a random-access dataset of canvases and an endless, resumable, rank-sliced loader.

Order of the loader (seed ``s``, epoch ``e``, ``N`` canvases, per-rank batch ``B``, ``W`` ranks): the epoch's order
is the keyed permutation ``π_{(s, e)}`` of ``[0, N)`` (``sumi.data.streams.IndexPermutation``; the identity without
shuffling), evaluated only at the positions a rank reads, never materialised; global step ``k`` takes positions
``[k·B·W, (k+1)·B·W)`` of that order and rank ``r`` the slice ``[k·B·W + r·B, k·B·W + (r+1)·B)``. So ranks read
disjoint canvases, and the global batch does not depend on how it is split across ranks (one process with batch B·W
sees exactly the canvases that W processes with batch B see together), and a rank reads only its own canvases
(``PackedDataset.bytes_read`` counts them). With ``drop_last`` an epoch has ``N // (B·W)`` steps; without it the
last step wraps around to the start of the epoch's order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sumi.data.shards import SPLITS, Manifest, ShardError
from sumi.data.streams import IndexPermutation
from sumi.errors import ConfigError, InputError
from sumi.tokenizer import SumiTokenizer


class PackedDataset:
    """Canvases of one split of a shard directory, memory-mapped.

    Args:
        shard_dir: a directory written by :func:`~sumi.data.shards.build_shards`.
        split: ``"train"`` or ``"heldout"``.
        verify: ``"checksum"`` (sha256 of every file, default), ``"size"`` (sizes only, for huge shards) or
            ``"none"``.
    """

    def __init__(self, shard_dir: str | Path, split: str = "train", *, verify: str = "checksum") -> None:
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if verify not in ("checksum", "size", "none"):
            raise ConfigError(f"verify must be 'checksum', 'size' or 'none', got {verify!r}")
        self.shard_dir = Path(shard_dir)
        if not self.shard_dir.is_dir():
            raise ShardError(f"shard directory {self.shard_dir} does not exist; build it with `sumi data build`")
        self.manifest = Manifest.load(self.shard_dir)
        if verify != "none":
            self.manifest.verify(self.shard_dir, split, checksums=verify == "checksum")
        self.split = split
        self.seq_len: int = self.manifest.seq_len
        self.vocab_size: int = self.manifest.vocab_size
        info = self.manifest.splits[split]
        dtype = np.dtype(self.manifest.dtype)
        self._shards = [np.memmap(self.shard_dir / s.file, dtype=dtype, mode="r",
                                  shape=(s.num_canvases, self.seq_len)) for s in info.shards if s.num_canvases]
        self._starts = np.cumsum([0] + [m.shape[0] for m in self._shards])
        self._len = int(self._starts[-1])
        self.bytes_read = 0
        """Canvas bytes copied out of the shards so far (each rank's own I/O volume)."""
        self._row_bytes = self.seq_len * dtype.itemsize

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> np.ndarray:
        """Canvas ``i``: int64 ``[seq_len]`` (a copy)."""
        i = int(i)
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"canvas {i} out of range for {self._len} canvases")
        shard = int(np.searchsorted(self._starts, i, side="right") - 1)
        self.bytes_read += self._row_bytes
        return np.asarray(self._shards[shard][i - self._starts[shard]], dtype=np.int64)

    def get_batch(self, indices) -> np.ndarray:
        """Canvases ``indices``: int64 ``[len(indices), seq_len]``."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), self.seq_len), dtype=np.int64)
        shard_of = np.searchsorted(self._starts, indices, side="right") - 1
        for row, (i, s) in enumerate(zip(indices, shard_of)):
            out[row] = self._shards[s][i - self._starts[s]]
        self.bytes_read += len(indices) * self._row_bytes
        return out

    def iter_batches(self, batch_size: int, *, rank: int = 0, world_size: int = 1):
        """One ordered pass (e.g. held-out evaluation): ``torch.LongTensor [<=batch_size, seq_len]`` batches.

        Rank ``r`` gets canvases ``r, r + W, r + 2W, …``, so ranks split the split without overlap and the
        last batch may be shorter.
        """
        import torch

        if batch_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, "
                              f"{world_size}")
        mine = np.arange(rank, self._len, world_size)
        for start in range(0, len(mine), batch_size):
            yield torch.from_numpy(self.get_batch(mine[start:start + batch_size]))

    def documents(self) -> np.ndarray:
        """The split's document index: int64 ``[n, 3]`` rows (source, document, stream offset of its BOS)."""
        return np.load(self.shard_dir / self.manifest.splits[self.split].index_file)

    def tokenizer(self):
        """The tokenizer stored with the shards."""
        return SumiTokenizer.from_pretrained(self.shard_dir)


class PackedLoader:
    """Endless ``torch.LongTensor [batch_size, seq_len]`` batches of one split, exactly resumable.

    See the module docstring for the order. ``state_dict()`` saves (epoch, step within the epoch, seed, …);
    ``load_state_dict`` continues with exactly the batches an uninterrupted loader would have produced.

    Args:
        vocab_size: the model's vocabulary (embedding rows); a ConfigError if the shards hold larger ids.
    """

    def __init__(self, shard_dir: str | Path, split: str = "train", batch_size: int = 8, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1, shuffle: bool = True, drop_last: bool = True,
                 verify: str = "checksum", vocab_size: int | None = None) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(world_size, int) or world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.dataset = PackedDataset(shard_dir, split, verify=verify)
        self.manifest = self.dataset.manifest
        self.seq_len = self.dataset.seq_len
        self.vocab_size = self.dataset.vocab_size
        max_id = self.manifest.splits[split].max_token_id
        if vocab_size is not None and max_id >= vocab_size:
            raise ConfigError(f"the {split} shards in {shard_dir} hold token id {max_id} (tokenizer vocab "
                              f"{self.vocab_size}) but the model has only {vocab_size} embedding rows; use a "
                              "model whose vocab_size covers the tokenizer, or rebuild the shards with its "
                              "tokenizer")
        self.split, self.batch_size, self.seed = split, batch_size, int(seed)
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.global_batch = batch_size * world_size
        n = len(self.dataset)
        if n == 0 or (drop_last and n < self.global_batch):
            raise InputError(f"the {split} split of {shard_dir} has {n} canvases, fewer than one global batch "
                             f"({batch_size} x {world_size} ranks); lower the batch size, use drop_last=False, "
                             "or add data")
        self.steps_per_epoch = n // self.global_batch if drop_last else -(-n // self.global_batch)
        self.epoch = 0
        self.step = 0  # global steps already taken in this epoch
        self._order_epoch, self._order = -1, None  # the epoch's IndexPermutation (cheap to rebuild)

    @property
    def tokens_per_batch(self) -> int:
        return self.batch_size * self.seq_len

    def _epoch_order(self, epoch: int, positions: np.ndarray) -> np.ndarray:
        """Canvas indices at ``positions`` of the epoch's order."""
        if not self.shuffle:
            return positions
        if self._order_epoch != epoch:
            self._order = IndexPermutation(len(self.dataset), self.seed, epoch)
            self._order_epoch = epoch
        return self._order(positions)

    def next_indices(self) -> np.ndarray:
        """Canvas indices of this rank's next batch (advances the position)."""
        if self.step >= self.steps_per_epoch:
            self.epoch += 1
            self.step = 0
        start = self.step * self.global_batch + self.rank * self.batch_size
        positions = np.arange(start, start + self.batch_size) % len(self.dataset)
        self.step += 1
        return self._epoch_order(self.epoch, positions)

    def __iter__(self):
        return self

    def __next__(self):
        import torch

        return torch.from_numpy(self.dataset.get_batch(self.next_indices()))

    def state_dict(self) -> dict:
        """The read position; the same on every rank (positions are global)."""
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed, "split": self.split,
                "global_batch": self.global_batch, "num_canvases": len(self.dataset), "shuffle": self.shuffle,
                "drop_last": self.drop_last}

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state``'s position; a ConfigError if it was taken over different data or batching."""
        for key, mine in (("seed", self.seed), ("split", self.split), ("num_canvases", len(self.dataset)),
                          ("global_batch", self.global_batch), ("shuffle", self.shuffle),
                          ("drop_last", self.drop_last)):
            if key not in state:
                raise ConfigError(f"loader state has no {key!r}; it was not written by PackedLoader.state_dict")
            if state[key] != mine:
                raise ConfigError(f"cannot resume: the saved loader had {key}={state[key]!r} but this one has "
                                  f"{mine!r}; resume with the same shards, split, seed and global batch")
        if not 0 <= int(state["step"]) <= self.steps_per_epoch or int(state["epoch"]) < 0:
            raise ConfigError(f"loader state position epoch={state['epoch']} step={state['step']} is invalid")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
