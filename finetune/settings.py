"""``[finetune]`` in config.toml: the defaults of ``botkit finetune train`` and ``dpo``, each overridable by a flag."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


class DpoSettings(BaseModel):
    """``[finetune.dpo]``: what ``botkit finetune dpo`` adds to, or sets apart from, ``[finetune]``."""

    model_config = ConfigDict(extra="forbid")

    beta: float = Field(
        0.1, gt=0, le=10, description="DPO's beta: how far the adapter may move from the reference"
    )
    reference: Literal["start", "base"] = Field(
        "start",
        description="the model the adapter is measured against: 'start' (what training starts from: "
        "the base model, or the --from run's adapter) or 'base' (the base model even with --from)",
    )
    learning_rate: float = Field(
        5e-5, gt=0, lt=1, description="peak learning rate of DPO (lower than SFT's: the pairs differ little)"
    )
    epochs: int = Field(
        1, ge=1, description="passes over the preference pairs (unless max_steps ends sooner)"
    )


class GateSettings(BaseModel):
    """``[finetune.gate]``: the red-team results ``botkit finetune deploy`` needs of an adapter (docs/safety.md)."""

    model_config = ConfigDict(extra="forbid")

    required: bool = Field(
        False,
        description="refuse an adapter without red-team results beside it (redteam.json, from `botkit redteam "
        "--lora ADAPTER --baseline --json DIR/redteam.json`)",
    )
    max_drop: float = Field(
        0.0,
        ge=0,
        le=1,
        description="how far a suite's pass rate may fall below the base model's (0.05: 5 points)",
    )
    min_pass_rate: dict[str, float] = Field(
        default_factory=dict,
        description="the least pass rate of each suite named, e.g. {extraction = 1.0, injection = 0.8}",
    )

    @field_validator("min_pass_rate")
    @classmethod
    def _rates(cls, rates: dict[str, float]) -> dict[str, float]:
        for suite, rate in rates.items():
            if not 0 <= rate <= 1:
                raise ValueError(f"{suite}: a pass rate is from 0 to 1 (got {rate})")
        return rates


class CanarySettings(BaseModel):
    """``[finetune.canary]``: how a running bot watches a canary rollout (docs/safety.md)."""

    model_config = ConfigDict(extra="forbid")

    auto_rollback: bool = Field(
        True,
        description="roll a canary back when its 👎 rate is significantly higher than the control arm's",
    )
    check_interval: float = Field(
        60.0, gt=0, description="seconds between two looks at the running canaries (and their results)"
    )
    min_votes: int = Field(
        30, ge=1, description="👍 and 👎 each arm needs before auto_rollback judges the canary"
    )
    alpha: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="significance level of the one-sided two-proportion test auto_rollback uses",
    )


class FinetuneSettings(BaseModel):
    """LoRA and training defaults. alpaca-lora's: rank 8, alpha 16, dropout 0.05, the attention projections."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(8, ge=1, le=1024, description="LoRA rank r")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha; the update is scaled by alpha / rank")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the LoRA input during training")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        description="projections that get LoRA weights (llama names; gate_proj, up_proj, down_proj for the MLP)",
    )
    learning_rate: float = Field(3e-4, gt=0, lt=1, description="peak learning rate (AdamW)")
    epochs: int = Field(3, ge=1, description="passes over the training data (unless max_steps ends sooner)")
    max_steps: int | None = Field(
        None, ge=1, description="optimizer steps to stop after; unset: epochs decide"
    )
    batch_size: int = Field(4, ge=1, description="examples per forward pass")
    gradient_accumulation: int = Field(1, ge=1, description="forward passes per optimizer step")
    warmup_ratio: float = Field(
        0.03, ge=0.0, lt=1.0, description="share of the steps the learning rate rises in"
    )
    max_length: int = Field(1024, ge=16, description="longest example in tokens; longer ones are skipped")
    save_every: int | None = Field(
        None, ge=1, description="steps between checkpoints; unset: one at the end of each epoch"
    )
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept")
    seed: int = Field(0, description="seed of the LoRA initialisation, dropout and the data order")
    device: str = Field(
        "auto", description="'auto' (a CUDA GPU when there is one, else the CPU), 'cpu', 'cuda:N'"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="base model precision; 'auto': bfloat16 (or float16) on a GPU, float32 on a CPU"
    )
    group_by_length: bool = Field(
        True,
        description="batch examples of similar length together (less padding); the epoch's examples stay the same",
    )
    allowed_licenses: list[str] | None = Field(
        None,
        description="licences `botkit finetune deploy` accepts (e.g. ['apache-2.0', 'mit']); unset: any, "
        "with a warning for an adapter that declares none",
    )
    folders: list[str] = Field(
        default_factory=lambda: ["data", "runs"],
        description="where `botkit finetune runs` and the console's Exports and runs page look for exports and "
        "training runs: each folder and its sub-folders (relative: to the config file's folder)",
    )
    dpo: DpoSettings = Field(default_factory=DpoSettings, description="[finetune.dpo]: botkit finetune dpo")
    gate: GateSettings = Field(
        default_factory=GateSettings, description="[finetune.gate]: red-team results `deploy` requires"
    )
    canary: CanarySettings = Field(
        default_factory=CanarySettings, description="[finetune.canary]: watching a canary rollout"
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not DEVICE.fullmatch(value):
            raise ValueError("must be 'auto', 'cpu', 'cuda' or 'cuda:N' (N: the GPU's index)")
        return value

    @field_validator("allowed_licenses")
    @classmethod
    def _licence_names(cls, names: list[str] | None) -> list[str] | None:
        for name in names or []:
            if not name.strip():
                raise ValueError("a licence must be an identifier such as apache-2.0, not empty")
        return names

    @field_validator("target_modules")
    @classmethod
    def _module_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not MODULE_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a module name such as q_proj")
        return names
