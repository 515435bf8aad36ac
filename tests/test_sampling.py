"""The sampling keys are declared once, on SamplingParams: [backend] and per-place overrides take them from there."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Annotated

import pytest
from pydantic import ConfigDict, Field, ValidationError, create_model

from botkit.backend import BackendSettings
from botkit.bot import Bot
from botkit.errors import ConfigError
from botkit.overrides import PlaceOverride
from botkit.sampling import SAMPLING_KEYS, config_fields
from botkit.settings import settings_from_mapping
from botkit.types import SamplingParams


def test_every_field_of_sampling_params_but_lora_is_a_key_of_both_tables():
    keys = {field.name for field in fields(SamplingParams)} - {"lora"}
    assert set(SAMPLING_KEYS) == keys
    assert keys <= set(BackendSettings.model_fields) and keys <= set(PlaceOverride.model_fields)


def test_backend_defaults_are_the_declared_ones():
    assert BackendSettings().sampling() == SamplingParams()
    assert BackendSettings().stop == []  # a TOML array, given to the model as a tuple


@pytest.mark.parametrize(
    "key, value, problem",
    [
        ("max_tokens", 0, "max_tokens: Input should be greater than or equal to 1 (got 0)"),
        ("temperature", 5.1, "temperature: Input should be less than or equal to 5 (got 5.1)"),
        ("top_p", 0, "top_p: Input should be greater than 0 (got 0)"),
        ("top_k", -1, "top_k: Input should be greater than or equal to 0 (got -1)"),
        ("repeat_penalty", -0.1, "repeat_penalty: Input should be greater than or equal to 0 (got -0.1)"),
        ("stop", "END", "stop: Input should be a valid list (got 'END')"),
    ],
)
def test_backend_and_override_refuse_a_value_out_of_bounds_alike(key, value, problem):
    for config, table in [
        ({"backend": {"type": "scripted", key: value}}, "[backend]"),
        ({"backend": {"type": "scripted"}, "overrides": {"test:x": {key: value}}}, '[overrides."test:x"]'),
    ]:
        with pytest.raises(ConfigError) as error:
            Bot.load(settings_from_mapping(config))
        assert str(error.value) == f"config: {table} {problem}"


async def test_each_sampling_key_of_an_override_reaches_the_model(make_bot):
    values = {"max_tokens": 9, "temperature": 0.2, "top_p": 0.5, "top_k": 3, "repeat_penalty": 1.3, "seed": 7}
    assert set(values) | {"stop"} == set(SAMPLING_KEYS)
    config = {
        "backend": {"type": "scripted", "loras": {"a": "a.gguf"}},
        "overrides": {"test:x": {**values, "stop": ["END"], "lora": "a"}},
    }
    async with make_bot(config) as bot:
        await bot.chat.say("hi", channel="x")
        assert bot.backend.requests[0].params == SamplingParams(**values, stop=("END",), lora="a")


def test_a_key_declared_on_the_params_becomes_a_config_key_with_its_bounds():
    """What adding a sampling key takes: one field on the dataclass, both tables get it."""

    @dataclass(frozen=True)
    class WithMinP:
        min_p: Annotated[float, Field(ge=0.0, le=1.0, description="drop tokens below this share")] = 0.05
        stop: Annotated[tuple[str, ...], Field(description="extra stop strings")] = ()

    strict = ConfigDict(extra="forbid")
    table = create_model("Table", __config__=strict, **config_fields(WithMinP, optional=False))
    place = create_model("Place", __config__=strict, **config_fields(WithMinP, optional=True))
    assert table().min_p == 0.05 and table().stop == [] and place().min_p is None
    assert table.model_fields["min_p"].description == "drop tokens below this share"
    for model in (table, place):
        with pytest.raises(ValidationError, match="less than or equal to 1"):
            model(min_p=2)
