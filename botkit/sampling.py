"""The sampling keys of the config, derived from ``SamplingParams``, where each is declared once.

``[backend]`` takes every key, defaulting to ``SamplingParams``' value
(``SamplingSettings``, a base of ``BackendSettings``); an ``[overrides."<place>"]``
table may set any of them or leave it unset (``PlaceSampling``, a base of
``PlaceOverride``). Both keep the bounds and descriptions declared on
``SamplingParams``, so adding a key there adds it to both tables. A tuple there
is a list here, as TOML arrays are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Annotated, Any, get_args, get_origin, get_type_hints

from pydantic import ConfigDict, Field, create_model

from botkit.types import SamplingParams

# SamplingParams' fields that no config table sets as a sampling key: a place's LoRA
# adapter is PlaceOverride's own key, and a backend's active one is not a default.
NOT_SAMPLING_KEYS = ("lora",)

SAMPLING_KEYS: tuple[str, ...] = tuple(
    field.name for field in fields(SamplingParams) if field.name not in NOT_SAMPLING_KEYS
)


def _config_type(declared: Any) -> Any:
    """The config's type for a declared one: ``Annotated[tuple[str, ...], ...]`` -> ``Annotated[list[str], ...]``."""
    value_type, *bounds = get_args(declared) if get_origin(declared) is Annotated else (declared,)
    if get_origin(value_type) is tuple:
        value_type = list[get_args(value_type)[0]]  # type: ignore[valid-type]
    return Annotated[(value_type, *bounds)] if bounds else value_type


def config_fields(declaration: type, *, optional: bool) -> dict[str, Any]:
    """``create_model`` fields for the sampling keys of ``declaration`` (``SamplingParams``, a dataclass).

    Each keeps its declared bounds and description, and either its default or, when
    ``optional``, ``None`` for "unset".
    """
    declared = get_type_hints(declaration, include_extras=True)
    config: dict[str, Any] = {}
    for field in fields(declaration):
        if field.name in NOT_SAMPLING_KEYS:
            continue
        annotation = _config_type(declared[field.name])
        if optional:
            config[field.name] = (annotation | None, None)
        elif isinstance(field.default, tuple):
            config[field.name] = (annotation, Field(default_factory=lambda d=field.default: list(d)))
        else:
            config[field.name] = (annotation, field.default)
    return config


SamplingSettings = create_model(
    "SamplingSettings",
    __config__=ConfigDict(extra="forbid"),
    __doc__="The sampling keys with their defaults: a base of ``BackendSettings``.",
    __module__=__name__,
    **config_fields(SamplingParams, optional=False),
)

PlaceSampling = create_model(
    "PlaceSampling",
    __config__=ConfigDict(extra="forbid"),
    __doc__="The sampling keys, each unset unless a place sets it: a base of ``PlaceOverride``.",
    __module__=__name__,
    **config_fields(SamplingParams, optional=True),
)


def with_values(params: SamplingParams, values: Mapping[str, Any]) -> SamplingParams:
    """``params`` with each of its fields that ``values`` (config values) sets; other keys are ignored."""
    changes = {
        field.name: tuple(values[field.name]) if isinstance(values[field.name], list) else values[field.name]
        for field in fields(SamplingParams)
        if field.name in values
    }
    return replace(params, **changes)
