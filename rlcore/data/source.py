"""An endless, resumable, seeded stream of prompt batches.

Each epoch is a permutation of the records derived only from ``(seed, epoch)`` via
``numpy.random.default_rng((seed, epoch))`` -- never the global RNG -- so the stream can be
resumed exactly from ``(epoch, cursor)`` after a restart.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["PromptSource"]


class PromptSource:
    """Cycle through ``records`` forever in batches.

    - ``shuffle=True``: each epoch uses ``default_rng((seed, epoch)).permutation(n)``;
      ``shuffle=False``: file order every epoch.
    - ``drop_last=False`` (DataLoader semantics): the last batch of an epoch may be shorter
      than ``batch_size``; ``drop_last=True``: the remainder is skipped, every batch is full.
    - Batches are lists of shallow copies of the records (mutating them does not affect the
      source; nested ``metadata`` dicts are shared).
    """

    def __init__(
        self,
        records: Sequence[dict],
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> None:
        if len(records) == 0:
            raise ValueError("PromptSource needs at least one record")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if drop_last and batch_size > len(records):
            raise ValueError(
                f"batch_size={batch_size} > {len(records)} records with drop_last=True would yield nothing"
            )
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self._records = list(records)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self._epoch = 0
        self._cursor = 0
        self._order: np.ndarray | None = None  # permutation for self._epoch, built lazily

    # ------------------------------------------------------------------ info
    @property
    def num_records(self) -> int:
        return len(self._records)

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def cursor(self) -> int:
        return self._cursor

    def __len__(self) -> int:
        """Batches per epoch."""
        n, b = self.num_records, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    # --------------------------------------------------------------- batches
    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            n = self.num_records
            if self.shuffle:
                self._order = np.random.default_rng((self.seed, self._epoch)).permutation(n)
            else:
                self._order = np.arange(n)
        return self._order

    def next_batch(self) -> list[dict]:
        order = self._epoch_order()
        n = self.num_records
        end = min(self._cursor + self.batch_size, n)
        batch = [dict(self._records[int(i)]) for i in order[self._cursor:end]]
        self._cursor = end
        # Normalise: once the epoch is exhausted (or only a dropped remainder is left), move on.
        remaining = n - self._cursor
        if remaining == 0 or (self.drop_last and remaining < self.batch_size):
            self._epoch += 1
            self._cursor = 0
            self._order = None
        return batch

    def __iter__(self):
        while True:
            yield self.next_batch()

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position: ``{"epoch", "cursor", "seed", "num_records"}``."""
        return {
            "epoch": int(self._epoch),
            "cursor": int(self._cursor),
            "seed": int(self.seed),
            "num_records": int(self.num_records),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where ``state`` was taken. Adopts the state's seed; raises
        ``ValueError`` if the number of records differs (the dataset changed)."""
        missing = {"epoch", "cursor", "seed", "num_records"} - set(state)
        if missing:
            raise ValueError(f"PromptSource state is missing keys {sorted(missing)}")
        if int(state["num_records"]) != self.num_records:
            raise ValueError(
                f"PromptSource state was saved with {state['num_records']} records but this source has "
                f"{self.num_records}: the dataset changed, cannot resume exactly"
            )
        epoch, cursor = int(state["epoch"]), int(state["cursor"])
        if epoch < 0 or not (0 <= cursor < self.num_records):
            raise ValueError(f"invalid PromptSource state: epoch={epoch}, cursor={cursor}")
        self.seed = int(state["seed"])
        self._epoch = epoch
        self._cursor = cursor
        self._order = None
