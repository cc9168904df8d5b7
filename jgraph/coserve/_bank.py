"""The engine's inference adapter bank as fixed-capacity named slots, writable at run time.

The step's bank arrays have fixed shapes (``max_adapters`` slots, one rank, one target set),
so writing an adapter into a slot or zeroing it changes values only: the step is not
recompiled. A host copy (numpy) is edited and uploaded whole with `jnp.asarray` (a transfer,
not a jitted scatter, so nothing compiles). Slot indices never move: requests keep theirs.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jgraph.core import ConfigError
from jgraph.coserve._config import LlamaConfig, LoraConfig
from jgraph.coserve._lora import BASE, AdapterBank, _check_compatible
from jgraph.coserve._parallel import shard_tree

__all__ = ["BankSlots"]

Lora = dict[str, dict[str, jax.Array]]


class BankSlots:
    """Named adapter slots over an `AdapterBank`'s arrays.

    Args:
        cfg: the base model.
        bank: the initial bank (its capacity is fixed from now on).
        mesh, specs: place uploaded weights with these shardings (tensor-parallel engines).
    """

    def __init__(
        self, cfg: LlamaConfig, bank: AdapterBank, *, mesh: Mesh | None = None, specs: Any = None
    ) -> None:
        self.cfg, self.mesh, self._specs = cfg, mesh, specs
        cap = int(bank.scales.shape[0])
        self.names: list[str | None] = [*bank.names] + [None] * (cap - len(bank.names))
        self._host = jax.tree.map(np.array, bank.weights)  # writable copies
        self._scales = np.array(bank.scales)
        self._upload()

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(self._host)

    @property
    def rank(self) -> int:
        return int(next(iter(self._host.values()))["A"].shape[-1])

    def index(self, name: str | None) -> int:
        """The slot of a loaded adapter; `BASE` for None.

        Raises:
            ConfigError: the name is not loaded.
        """
        if name is None:
            return BASE
        if name not in self.names:
            loaded = [n for n in self.names if n is not None]
            raise ConfigError("adapter", name, "is not loaded in the bank", f"use one of {loaded}")
        return self.names.index(name)

    def set(self, name: str, lora_cfg: LoraConfig, lora: Lora) -> int:
        """Writes ``lora`` into the slot named ``name`` or the first free one; returns it.

        Raises:
            ConfigError: no free slot, a rank above the bank's, a target outside the bank's,
                or weights that do not fit the model.
        """
        if name in self.names:
            slot = self.names.index(name)
        elif None in self.names:
            slot = self.names.index(None)
        else:
            raise ConfigError(
                "set_bank_adapter",
                name,
                f"the bank is full ({len(self.names)} slots)",
                "remove_bank_adapter one first, or raise CoServeConfig.max_adapters",
            )
        _check_compatible(self.cfg, lora, f"adapter {name!r}")
        if lora_cfg.rank > self.rank:
            raise ConfigError(
                f"adapter {name!r}.rank",
                lora_cfg.rank,
                f"exceeds bank rank {self.rank}",
                "use a bank built with a larger rank",
            )
        extra = sorted(set(lora_cfg.targets) - set(self.targets))
        if extra or set(lora) != set(lora_cfg.targets):
            raise ConfigError(
                f"adapter {name!r}.targets",
                sorted(lora),
                f"must be LoraConfig.targets and within the bank's {self.targets}",
                "build the bank with these targets",
            )
        r = lora_cfg.rank
        for t, ab in lora.items():
            if ab["A"].shape[-1] != r or ab["B"].shape[-2] != r:
                raise ConfigError(
                    f"adapter {name!r}[{t!r}] rank",
                    (ab["A"].shape[-1], ab["B"].shape[-2]),
                    f"!= LoraConfig.rank={r}",
                    "pass the LoraConfig the adapter was trained with",
                )
        # numpy only: a jnp op on new shapes would compile (and this must not).
        for t, ab in self._host.items():
            ab["A"][slot] = 0
            ab["B"][slot] = 0
            if t in lora:
                ab["A"][slot, :, :, :r] = np.asarray(lora[t]["A"])
                ab["B"][slot, :, :r, :] = np.asarray(lora[t]["B"])
        self._scales[slot] = lora_cfg.scale
        self.names[slot] = name
        self._upload()
        return slot

    def remove(self, name: str) -> int:
        """Zeroes and frees the slot of ``name``; returns it.

        Raises:
            ConfigError: the name is not loaded.
        """
        slot = self.index(name)
        for ab in self._host.values():
            ab["A"][slot] = 0
            ab["B"][slot] = 0
        self._scales[slot] = 0.0
        self.names[slot] = None
        self._upload()
        return slot

    def _upload(self) -> None:
        weights = jax.tree.map(jnp.asarray, self._host)
        if self.mesh is not None:
            weights = shard_tree(weights, self._specs, self.mesh)
        self.weights: Lora = weights
        self.scales: jax.Array = jnp.asarray(self._scales)

    def bank(self) -> AdapterBank:
        """The current bank (free slots are named "")."""
        names = tuple(n or "" for n in self.names)
        return AdapterBank(names=names, weights=self.weights, scales=self.scales)
