"""Step-time cost model of the co-serving step, fitted from a profile and cached on disk.

The SLO controller (`_controller.py`) needs to predict how long one step takes for a given mix
of work. The model is linear with an intercept (spec §a.6, "recommended controller"):

    t(n_inf, n_ft, bwd) = c0 + c_inf * n_inf + c_ft * n_ft + c_bwd * bwd

with ``n_inf`` inference tokens (decode + prefill), ``n_ft`` finetuning forward tokens and
``bwd`` 1 when the step runs one backward step (a token chunk or a group of layers; its size
is fixed by the step config, so it is part of the cache key, not a feature). It ignores the
attended context length and any non-linearity (a fixed-shape jitted step pads every batch to
the token budget, so on an accelerator the slopes are small and the intercept dominates);
the controller's feedback term absorbs what the model misses.

The profile is measured through a caller-supplied callable (`profile_step_time`), so the
engine passes a closure that runs its jitted step with a given token mix and tests pass a
fake clock. Fitted models are cached as JSON keyed by backend, device kind and the model and
step configs (`load_or_profile`); an unreadable cache file is logged as a warning and
re-profiled (the cache is derived data, so refitting is always safe).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jgraph.core import ConfigError, atomic_write_json, check_int, check_number

__all__ = [
    "ProfileSample",
    "StepCostModel",
    "cache_path",
    "default_profile_grid",
    "device_identity",
    "load_or_profile",
    "profile_step_time",
]

log = logging.getLogger(__name__)

_FORMAT = 1
_FEATURES = ("intercept", "inference_tokens", "ft_tokens", "backward")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProfileSample:
    """One profiled token mix and its median step time in seconds."""

    inference_tokens: int
    ft_tokens: int
    backward: bool
    seconds: float

    def __post_init__(self) -> None:
        check_int("ProfileSample.inference_tokens", self.inference_tokens, minimum=0)
        check_int("ProfileSample.ft_tokens", self.ft_tokens, minimum=0)
        if not isinstance(self.backward, bool):
            raise ConfigError(
                "ProfileSample.backward", self.backward, "must be a bool", "pass True/False"
            )
        check_number("ProfileSample.seconds", self.seconds, minimum=0.0)


def _row(inference_tokens: float, ft_tokens: float, backward: bool) -> np.ndarray:
    return np.array([1.0, inference_tokens, ft_tokens, float(backward)])


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepCostModel:
    """Linear step-time model (seconds); see the module docstring for the features.

    Attributes:
        intercept: c0, seconds of a step with no work (launch, padding rows, sampling).
        per_inference_token: c_inf, seconds per inference token.
        per_ft_token: c_ft, seconds per finetuning forward token.
        backward: c_bwd, seconds added by one backward step.
        key: what the profile was measured on (`device_identity` plus configs); the cache
            is reused only when it matches.
        residual_s: root-mean-square fit residual, seconds (0 for a hand-made model).
    """

    intercept: float
    per_inference_token: float
    per_ft_token: float
    backward: float
    key: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    residual_s: float = 0.0

    def __post_init__(self) -> None:
        check_number("StepCostModel.intercept", self.intercept)
        for name in ("per_inference_token", "per_ft_token", "backward", "residual_s"):
            check_number(f"StepCostModel.{name}", getattr(self, name), minimum=0.0)

    def predict(self, inference_tokens: float, ft_tokens: float, backward: bool) -> float:
        """Predicted seconds of one step with this token mix.

        Example:
            >>> m = StepCostModel(intercept=0.01, per_inference_token=1e-4, per_ft_token=2e-4,
            ...                   backward=0.005)
            >>> round(m.predict(10, 5, True), 6)
            0.017
        """
        return float(
            self.intercept
            + self.per_inference_token * inference_tokens
            + self.per_ft_token * ft_tokens
            + self.backward * float(backward)
        )

    @classmethod
    def fit(
        cls, samples: Sequence[ProfileSample], *, key: Mapping[str, Any] | None = None
    ) -> StepCostModel:
        """Least-squares fit; slopes are constrained to be >= 0 (a step never gets faster
        with more work, so a negative slope is noise: it is pinned to 0 and the rest refit).

        Raises:
            ConfigError: fewer samples than features, or a feature the samples never vary.
        """
        if len(samples) < len(_FEATURES):
            raise ConfigError(
                "samples",
                len(samples),
                f"need >= {len(_FEATURES)} profile samples",
                "profile more token mixes",
            )
        x = np.stack([_row(s.inference_tokens, s.ft_tokens, s.backward) for s in samples])
        y = np.array([s.seconds for s in samples])
        for j in range(1, len(_FEATURES)):
            if np.ptp(x[:, j]) == 0:
                raise ConfigError(
                    "samples",
                    _FEATURES[j],
                    "this feature has one value in every sample, so its cost cannot be fitted",
                    "profile a grid that varies it (see default_profile_grid)",
                )
        active = list(range(len(_FEATURES)))
        coef = np.zeros(len(_FEATURES))
        while True:
            sol, *_ = np.linalg.lstsq(x[:, active], y, rcond=None)
            coef[:] = 0.0
            coef[active] = sol
            negative = [j for j in active[1:] if coef[j] < 0]
            if not negative:
                break
            active.remove(min(negative, key=lambda j: coef[j]))
        rms = float(np.sqrt(np.mean((x @ coef - y) ** 2)))
        return cls(
            intercept=float(coef[0]),
            per_inference_token=float(coef[1]),
            per_ft_token=float(coef[2]),
            backward=float(coef[3]),
            key=dict(key or {}),
            residual_s=rms,
        )

    def to_json(self) -> dict[str, Any]:
        return {"format": _FORMAT, **dataclasses.asdict(self), "key": dict(self.key)}

    @classmethod
    def from_json(cls, obj: Any) -> StepCostModel:
        """Inverse of `to_json`; raises ConfigError on anything else."""
        fields = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(obj, dict) or obj.get("format") != _FORMAT:
            raise ConfigError(
                "StepCostModel", obj, f"not a format-{_FORMAT} cost model", "re-profile"
            )
        missing = [f for f in fields if f not in obj]
        if missing or not isinstance(obj["key"], dict):
            raise ConfigError(
                "StepCostModel", obj, f"missing or bad fields {missing or ['key']}", "re-profile"
            )
        return cls(**{f: obj[f] for f in fields})

    def save(self, path: str | Path) -> Path:
        """Writes the model as JSON, atomically."""
        return atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> StepCostModel:
        """Reads a model written by `save`.

        Raises:
            FileNotFoundError: no file.
            ConfigError: the file is not a valid cost model (the message names the file).
        """
        text = Path(path).read_text()
        try:
            return cls.from_json(json.loads(text))
        except (json.JSONDecodeError, ConfigError, TypeError) as exc:
            raise ConfigError(
                "StepCostModel.load",
                str(path),
                f"unreadable cost model ({exc})",
                "delete it and re-profile",
            ) from exc


def device_identity() -> dict[str, str]:
    """Backend and device kind of JAX's default device (part of a profile's cache key)."""
    import jax  # only the profile key needs JAX; the controller itself is pure Python

    dev = jax.devices()[0]
    return {"backend": jax.default_backend(), "device_kind": str(dev.device_kind)}


def cache_path(cache_dir: str | Path, key: Mapping[str, Any]) -> Path:
    """The cache file of ``key`` under ``cache_dir`` (a hash of its canonical JSON)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return Path(cache_dir) / f"step_cost_{digest[:16]}.json"


def default_profile_grid(token_budget: int, *, points: int = 4) -> list[tuple[int, int, bool]]:
    """Token mixes like FlexLLM's overhead test: inference tokens x finetuning tokens (their
    sum within ``token_budget``), each with and without a backward step.

    Example:
        >>> len(default_profile_grid(64, points=2))  # (1|32|64 inference) x (0|32|64 ft), x2
        10
    """
    check_int("token_budget", token_budget, minimum=2)
    check_int("points", points, minimum=1)
    levels = sorted({max(1, round(token_budget * i / points)) for i in range(1, points + 1)})
    inf_levels = [1, *[n for n in levels if n > 1]]
    ft_levels = [0, *levels]
    return [
        (n_inf, n_ft, bwd)
        for n_inf in inf_levels
        for n_ft in ft_levels
        if n_inf + n_ft <= token_budget
        for bwd in (False, True)
    ]


def profile_step_time(
    run_step: Callable[[int, int, bool], float],
    grid: Iterable[tuple[int, int, bool]],
    *,
    repeats: int = 5,
    warmup: int = 1,
) -> list[ProfileSample]:
    """Measures the median step time of each token mix.

    Args:
        run_step: runs one step with ``(inference_tokens, ft_tokens, backward)`` and returns
            its wall time in seconds (the caller blocks on the result before stopping its
            clock).
        grid: the token mixes (e.g. `default_profile_grid`).
        repeats: timed runs per mix; the median is kept (robust to one slow outlier).
        warmup: untimed runs per mix first (compilation, caches).

    Example:
        >>> samples = profile_step_time(lambda i, f, b: 0.01 + 1e-4 * (i + f), [(1, 0, False)])
        >>> samples[0].seconds
        0.0101
    """
    check_int("repeats", repeats, minimum=1)
    check_int("warmup", warmup, minimum=0)
    out = []
    for n_inf, n_ft, bwd in grid:
        for _ in range(warmup):
            run_step(n_inf, n_ft, bwd)
        times = [float(run_step(n_inf, n_ft, bwd)) for _ in range(repeats)]
        out.append(
            ProfileSample(
                inference_tokens=n_inf,
                ft_tokens=n_ft,
                backward=bwd,
                seconds=statistics.median(times),
            )
        )
        log.debug("profile %s: %.6f s", (n_inf, n_ft, bwd), out[-1].seconds)
    return out


def load_or_profile(
    cache_dir: str | Path | None,
    key: Mapping[str, Any],
    profile: Callable[[], Sequence[ProfileSample]],
) -> StepCostModel:
    """The cached model for ``key``, or a fresh fit of ``profile()`` (then cached).

    A cache file that cannot be read, or that holds another key, is logged (warning) and
    replaced by a new profile. ``cache_dir=None`` never caches.
    """
    path = None if cache_dir is None else cache_path(cache_dir, key)
    if path is not None and path.exists():
        try:
            model = StepCostModel.load(path)
        except ConfigError as exc:
            log.warning("ignoring the step-time cache %s and re-profiling: %s", path, exc)
        else:
            if dict(model.key) == json.loads(json.dumps(dict(key), default=str)):
                log.info("step-time model from cache %s", path)
                return model
            log.warning("step-time cache %s was measured for another setup; re-profiling", path)
    model = StepCostModel.fit(profile(), key=json.loads(json.dumps(dict(key), default=str)))
    if path is not None:
        model.save(path)
        log.info("step-time model cached in %s", path)
    return model
