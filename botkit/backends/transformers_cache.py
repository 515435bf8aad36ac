"""The rows of the transformers backend's batch: their KV cache, attention mask and sampling state.

Rows join (their prompts evaluated beforehand into a cache of their own) and
leave between two steps; ``GrowingRows`` keeps a ``DynamicCache``, ``FixedRows``
a ``StaticCache``. Either way each row sees only its own tokens: the attention
mask hides padding and other rows' columns, and position ids count each row's
own tokens.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Generic, Literal, TypeVar

import torch
from transformers import DynamicCache, StaticCache
from transformers.cache_utils import DynamicLayer, StaticLayer

from botkit.backends.transformers_engine import LoadedModel
from botkit.errors import ModelLoadError

Owner = TypeVar("Owner")


class Rows(ABC, Generic[Owner]):
    """The batch's rows: their KV cache, attention mask and sampling state, one row a sequence.

    ``tokens`` holds each row's last chosen token (evaluated by the next step) and
    ``positions`` its position; ``seen`` marks the tokens a row's repetition
    penalty weighs. Subclasses keep the KV cache in their own way.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.owners: list[Owner | None] = []
        self.tokens: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self.seen: torch.Tensor | None = None
        self.sampling: torch.Tensor | None = None

    @property
    def count(self) -> int:
        """Sequences in the batch."""
        return sum(owner is not None for owner in self.owners)

    def occupied(self) -> list[int]:
        return [row for row, owner in enumerate(self.owners) if owner is not None]

    def advance(self, rows: list[int], tokens: torch.Tensor) -> None:
        """Rows ``rows`` chose ``tokens``: they are evaluated next, one position further."""
        assert self.tokens is not None and self.positions is not None and self.seen is not None
        index = torch.tensor(rows, device=self.tokens.device)
        self.tokens[index] = tokens
        self.positions[index] += 1
        self.seen[index, tokens] = True

    @abstractmethod
    def admit(
        self, cache: DynamicCache, mask: torch.Tensor, state: dict[str, torch.Tensor], owners: list[Owner]
    ) -> list[int]:
        """Take in sequences whose prompts were evaluated into ``cache`` (left-padded: ``mask``); their rows."""

    @abstractmethod
    def release(self, rows: list[int]) -> None:
        """Drop rows: their sequences have left."""

    @abstractmethod
    def forward(self, model: Any) -> torch.Tensor:
        """Evaluate every row's last token in one pass; the logits of each row's next token."""


class GrowingRows(Rows[Owner]):
    """Rows over a ``DynamicCache``: joiners are left-padded to the batch's width, leavers are cut out."""

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None

    def admit(
        self, cache: DynamicCache, mask: torch.Tensor, state: dict[str, torch.Tensor], owners: list[Owner]
    ) -> list[int]:
        start = len(self.owners)
        self.owners.extend(owners)
        if self.cache is None or self.mask is None:
            self.cache, self.mask = cache, mask
            for name, value in state.items():
                setattr(self, name, value)
            return list(range(start, len(self.owners)))
        width = max(self.mask.shape[1], mask.shape[1])
        for ours, theirs in zip(self.cache.layers, cache.layers, strict=True):
            ours.keys = torch.cat([left_pad(ours.keys, width), left_pad(theirs.keys, width)])
            ours.values = torch.cat([left_pad(ours.values, width), left_pad(theirs.values, width)])
        self.mask = torch.cat([left_pad(self.mask, width), left_pad(mask, width)])
        for name, value in state.items():
            setattr(self, name, torch.cat([getattr(self, name), value]))
        return list(range(start, len(self.owners)))

    def release(self, rows: list[int]) -> None:
        if not rows:
            return
        gone = set(rows)
        keep = [row for row in range(len(self.owners)) if row not in gone]
        self.owners = [self.owners[row] for row in keep]
        if not keep or self.cache is None or self.mask is None:
            self.owners, self.cache, self.mask = [], None, None
            self.tokens = self.positions = self.seen = self.sampling = None
            return
        index = torch.tensor(keep, device=self.mask.device)
        # Columns that were padding for every row left are dropped: attention no longer pays for them.
        first = int(self.mask[index].any(dim=0).nonzero()[0])
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, first:]
            layer.values = layer.values[index, :, first:]
        self.mask = self.mask[index, first:]
        for name in ("tokens", "positions", "seen", "sampling"):
            setattr(self, name, getattr(self, name)[index])

    def forward(self, model: Any) -> torch.Tensor:
        assert self.mask is not None and self.tokens is not None and self.positions is not None
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        output = model(
            input_ids=self.tokens.unsqueeze(1),
            attention_mask=self.mask,
            position_ids=self.positions.unsqueeze(1),
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return output.logits[:, -1]


class FixedRows(Rows[Owner]):
    """Rows over a ``StaticCache`` (on a GPU): fixed buffers of ``capacity`` rows by ``length`` columns.

    Every row writes its next token to the same column, ``end``. A joiner's prompt
    is copied into a free row so that it ends at ``end``; when ``end`` reaches the
    last column, columns no sequence uses any more are shifted out at the left.
    Keys are stored after their rotary embedding, so moving them to another column
    changes nothing but which mask bit hides them.
    """

    def __init__(self, capacity: int, config: Any, length: int) -> None:
        super().__init__(capacity)
        self.owners = [None] * capacity
        self.length = length
        self.cache = StaticCache(config=config, max_cache_len=length)
        self.mask: torch.Tensor | None = None
        self.end = 0

    def admit(
        self, cache: DynamicCache, mask: torch.Tensor, state: dict[str, torch.Tensor], owners: list[Owner]
    ) -> list[int]:
        joining, width = mask.shape
        rows = [row for row, owner in enumerate(self.owners) if owner is None][:joining]
        if self.mask is None:
            self._allocate(cache, mask, state)
        assert self.mask is not None
        if self.count == 0:
            self.end = width
        elif self.end < width:  # a longer prompt than the batch's: everyone moves right to make room
            self._shift(width - self.end)
        index = torch.tensor(rows, device=self.mask.device)
        columns = slice(self.end - width, self.end)
        for ours, theirs in zip(self.cache.layers, cache.layers, strict=True):
            for mine, given in ((ours.keys, theirs.keys), (ours.values, theirs.values)):
                mine[index] = 0
                mine[index, :, columns] = given
        self.mask[index] = 0
        self.mask[index, columns] = mask
        for name, value in state.items():
            getattr(self, name)[index] = value
        for row, owner in zip(rows, owners, strict=True):
            self.owners[row] = owner
        self._sync()
        return rows

    def release(self, rows: list[int]) -> None:
        if not rows or self.mask is None:
            return
        for row in rows:
            self.owners[row] = None
        index = torch.tensor(rows, device=self.mask.device)
        self.mask[index] = 0
        if self.count == 0:
            self.end = 0
            self._sync()

    def forward(self, model: Any) -> torch.Tensor:
        assert self.mask is not None and self.tokens is not None and self.positions is not None
        if self.end == self.length:
            self._make_room()
        used = torch.tensor([owner is not None for owner in self.owners], device=self.mask.device)
        # A free row evaluates a dummy token that sees only itself (a row that sees nothing gives NaNs).
        self.mask[:, self.end] = 1
        output = model(
            input_ids=self.tokens.unsqueeze(1),
            attention_mask=self.mask[:, : self.end + 1],
            position_ids=self.positions.unsqueeze(1),
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.mask[:, self.end] = used.long()
        self.end += 1
        return output.logits[:, -1]

    def _allocate(self, cache: DynamicCache, mask: torch.Tensor, state: dict[str, torch.Tensor]) -> None:
        for ours, theirs in zip(self.cache.layers, cache.layers, strict=True):
            shape = (self.capacity, theirs.keys.shape[1], 0, theirs.keys.shape[3])
            value_shape = (self.capacity, theirs.values.shape[1], 0, theirs.values.shape[3])
            ours.lazy_initialization(theirs.keys.new_empty(shape), theirs.values.new_empty(value_shape))
        self.mask = mask.new_zeros((self.capacity, self.length))
        for name, value in state.items():
            setattr(self, name, value.new_zeros((self.capacity, *value.shape[1:])))

    def _make_room(self) -> None:
        assert self.mask is not None
        in_use = self.mask[torch.tensor(self.occupied(), device=self.mask.device)].any(dim=0)
        first = int(in_use.nonzero()[0]) if bool(in_use.any()) else self.end
        # Never 0: a sequence ends before it fills the context, which is the cache's length.
        assert first > 0, "a sequence fills the whole static cache"
        self._shift(-first)

    def _shift(self, columns: int) -> None:
        """Move every row ``columns`` to the right (left when negative); what wraps round is masked."""
        assert self.mask is not None
        for layer in self.cache.layers:
            layer.keys.copy_(layer.keys.roll(columns, dims=2))
            layer.values.copy_(layer.values.roll(columns, dims=2))
        self.mask.copy_(self.mask.roll(columns, dims=1))
        self.end += columns
        self._sync()

    def _sync(self) -> None:
        for layer in self.cache.layers:
            if layer.is_initialized:
                layer.cumulative_length.fill_(self.end)


def left_pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """``tensor`` with zero columns added at the left of its sequence dimension, to ``width``."""
    missing = width - tensor.shape[-2 if tensor.dim() == 4 else -1]
    if missing == 0:
        return tensor
    if tensor.dim() == 4:  # keys or values: [batch, heads, sequence, head size]
        return torch.nn.functional.pad(tensor, (0, 0, missing, 0))
    return torch.nn.functional.pad(tensor, (missing, 0))


CacheKind = Literal["dynamic", "static"]


def choose_cache(loaded: LoadedModel, setting: str, table: str) -> tuple[CacheKind, bool]:
    """The KV cache the batch keeps (``[table] cache_implementation``), and whether sequences can share it.

    'auto' is the static cache on a CUDA GPU, where its fixed buffers pay off, when
    the model's attention fits it; the dynamic one otherwise.
    """
    config = loaded.model.config
    static_fits = all(
        type(layer) is StaticLayer for layer in StaticCache(config=config, max_cache_len=1).layers
    )
    # Sliding-window and linear-attention layers keep other state than keys and values by column.
    mergeable = all(type(layer) is DynamicLayer for layer in DynamicCache(config=config).layers)
    if setting == "static" and not static_fits:
        raise ModelLoadError(
            f"[{table}] cache_implementation = 'static': {loaded.name_or_path} has attention layers "
            f"(sliding window or linear) that botkit's batch cannot keep in a static cache; "
            f'set [{table}] cache_implementation = "auto" or "dynamic"'
        )
    if setting == "static" or (setting == "auto" and loaded.device.startswith("cuda") and static_fits):
        return "static", True
    return "dynamic", mergeable
