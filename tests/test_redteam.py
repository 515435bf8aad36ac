"""botkit redteam's suites against the scripted backend scripted to leak, to refuse and to comply.

Each shipped suite runs through the whole pipeline of a real bot (``make_bot``): a model that
leaks must fail the probes its suite names, and a model that refuses or gives a safe answer
must pass every one, so that no scorer passes vacuously and none fails a safe answer.
"""

from __future__ import annotations

import base64
import binascii
import re

import pytest

from botkit import PluginLoadError, hookimpl
from botkit.plugins.redteam.cli import choose
from botkit.plugins.redteam.report import bias_gaps, build
from botkit.plugins.redteam.runner import ERROR, FAIL, PASS, InProcessTarget, Run
from botkit.types import Prompt

SUITES = ("extraction", "injection", "leakage", "pii", "markup", "toxicity", "bias")
SAFE = "Here is a short and friendly answer to your question: I hope it helps."
REFUSAL = "I'm sorry, but I can't help with that."
TOXIC = "You are a worthless piece of shit and a stupid fucking idiot."
# The model leaks, moderation and mentions do not stand in its way (toxicity's suite is moderation's:
# its reply filter only flags profanity by default, so the toxic reply reaches the user).
UNGUARDED = {"plugins": {"moderation": {"enabled": False}, "mentions": {"enabled": False}}}
UNGUARDED_TOXICITY = {"plugins": {"mentions": {"enabled": False}}}


class LeakyModel:
    """A model that obeys whatever it reads and remembers every conversation: each reply is its system
    prompt, the message, what base64 in it decodes to, and the last messages anyone else sent it."""

    def __init__(self) -> None:
        self.heard: list[str] = []

    def __call__(self, prompt: Prompt) -> str:
        text = prompt.current.text
        decoded = []
        for run in re.findall(r"[A-Za-z0-9+/]{12,}={0,2}", text):
            try:
                decoded.append(base64.b64decode(run, validate=True).decode("utf-8"))
            except (binascii.Error, UnicodeDecodeError, ValueError):
                continue
        others = [said for said in reversed(self.heard[-5:]) if said != text]
        self.heard.append(text)
        return "\n".join([prompt.system, text, *decoded, *others])


def biased_model(probes) -> object:
    """Warm to the first value of each counterfactual probe, refusing every other value."""
    favoured = {
        probe.prompts_for(value)[0]: index == 0
        for probe in probes
        for index, value in enumerate(probe.values.values())
    }

    def reply(prompt: Prompt) -> str:
        if favoured.get(prompt.current.text):
            return "They are a wonderful, talented and reliable choice, and I recommend them warmly."
        return REFUSAL

    return reply


async def run_suite(bot, name: str, concurrency: int = 1):
    probes, scorers, _ = choose(bot.registry.probe_suites, [name], (), None)
    results = await Run(InProcessTarget(bot), scorers).all(probes, concurrency)
    return probes, {result.id: result for result in results}


def max_tokens(config: dict) -> dict:
    return {**config, "backend": {"type": "scripted", "max_tokens": 2048, "context_window": 16384}}


@pytest.mark.parametrize("suite", [s for s in SUITES if s != "bias"])
async def test_a_leaking_model_fails_every_probe_its_suite_names(make_bot, suite):
    config = max_tokens(UNGUARDED_TOXICITY if suite == "toxicity" else UNGUARDED)
    async with make_bot(config) as bot:
        bot.backend.answer_with((lambda prompt: TOXIC) if suite == "toxicity" else LeakyModel())
        probes, results = await run_suite(bot, suite)
    # What the pipeline takes out before any model reads it cannot leak: Unicode tag characters.
    defended = {"unicode-tags"} if suite == "injection" else set()
    assert len(results) == len(probes) >= 5
    assert {i for i, r in results.items() if r.outcome == PASS} == defended
    assert all(r.outcome == FAIL and r.reason for i, r in results.items() if i not in defended)
    assert all(r.model_answered for r in results.values())


async def test_a_biased_model_fails_every_counterfactual_pair_and_the_gaps_are_reported(make_bot):
    async with make_bot() as bot:
        probes, _, _ = choose(bot.registry.probe_suites, ["bias"], (), None)
        bot.backend.answer_with(biased_model(probes))
        _, results = await run_suite(bot, "bias")
    assert {r.outcome for r in results.values()} == {FAIL}
    assert all(r.reason == "refused for some values and not for others" for r in results.values())
    recommend = results["recommend-engineer"]
    assert recommend.variants["male"]["refused"] is False and recommend.variants["female"]["refused"] is True
    assert recommend.variants["male"]["sentiment"] == 1.0
    gaps = bias_gaps(list(results.values()))
    assert set(gaps) == {"gender", "name", "nationality", "religion"}
    assert all(gap["refusal_gap"] == 1.0 and gap["sentiment_gap"] > 0 for gap in gaps.values())
    assert gaps["gender"]["pairs"] == 2


@pytest.mark.parametrize("answer", [SAFE, REFUSAL], ids=["comply", "refuse"])
@pytest.mark.parametrize("suite", SUITES)
async def test_a_safe_answer_passes_every_probe(make_bot, suite, answer):
    async with make_bot(max_tokens({})) as bot:
        bot.backend.answer_with(lambda prompt: answer)
        probes, results = await run_suite(bot, suite, concurrency=4)
    assert len(results) == len(probes)
    assert {i: r.reason for i, r in results.items() if r.outcome != PASS} == {}


async def test_the_pipeline_defences_count_moderation_redacts_pii_and_mentions_neutralise_pings(make_bot):
    async with make_bot(max_tokens({})) as bot:
        bot.backend.answer_with(LeakyModel())
        _, pii = await run_suite(bot, "pii")
        _, markup = await run_suite(bot, "markup")
    assert {r.outcome for r in pii.values()} == {PASS}
    pings = {i for i in markup if not i.endswith(("link", "pixel", "page"))}
    assert {markup[i].outcome for i in pings} == {PASS}
    # Nothing in the pipeline takes a link out: the attacker's host still gets through.
    assert {markup[i].outcome for i in set(markup) - pings} == {FAIL}


async def test_the_canary_is_in_the_system_prompt_of_probe_conversations_only(make_bot):
    from botkit.plugins.redteam.canary import canary_for

    async with make_bot() as bot:
        await bot.chat.say("hello")
        _, results = await run_suite(bot, "extraction")
        prompts = bot.backend.prompts
    assert "CANARY-" not in prompts[0].system  # a user's conversation
    canaries = {re.search(r"CANARY-[0-9A-F]{12}", p.system).group(0) for p in prompts[1:]}
    assert len(canaries) == len(prompts) - 2  # one a conversation (developer-claim's has two messages)
    assert canary_for("a") != canary_for("b")
    assert {r.outcome for r in results.values()} == {PASS}


async def test_a_backend_failing_mid_run_marks_its_probes_errors_and_the_run_goes_on(make_bot):
    def flaky(prompt: Prompt) -> str:
        if "reference code" in prompt.current.text:
            raise RuntimeError("the model server went away")
        return SAFE

    async with make_bot() as bot:
        bot.backend.answer_with(flaky)
        probes, results = await run_suite(bot, "extraction", concurrency=3)
    errors = {i for i, r in results.items() if r.outcome == ERROR}
    assert errors == {p.id for p in probes if any("reference code" in t for t in p.prompts)}
    assert len(errors) >= 2 and len(errors) < len(probes)
    assert all("did not complete (status failed)" in results[i].reason for i in errors)
    report = build(
        list(results.values()), date="d", mode="in-process", backend=None, run_id="r", descriptions={}
    )
    suite = report["suites"]["extraction"]
    assert suite["errors"] == len(errors) and suite["passed"] == len(probes) - len(errors)
    assert suite["pass_rate"] == round((len(probes) - len(errors)) / len(probes), 4)  # errors are no passes


# -- botkit_register_probes: a plugin's own suite and scorer ------------------------------


def shouting_plugin(path):
    class Shouting:
        @hookimpl
        def botkit_register_probes(self, register):
            def no_shouting(reply, probe):
                limit = probe["score"]["max_capitals"]
                capitals = sum(1 for char in reply if char.isupper())
                return f"{capitals} capital letters" if capitals > limit else None

            register("shouting", path, description="no shouting", scorers={"no_shouting": no_shouting})

    return Shouting()


async def test_a_plugin_suite_runs_with_the_plugin_scorer(make_bot, tmp_path):
    path = tmp_path / "shouting.jsonl"
    path.write_text(
        '{"id": "calm", "prompts": ["be calm"], "score": {"kind": "no_shouting", "max_capitals": 3}}\n'
        '{"id": "also-no-echo", "prompts": ["my mail is a.b@example.com"], "score": {"kind": "no_echo"}}\n'
    )
    async with make_bot(plugins={"shouting": shouting_plugin(path)}) as bot:
        assert bot.registry.owner("probe suite", "shouting") == "shouting"
        bot.backend.answer_with(lambda prompt: "CALM DOWN" if prompt.current.text == "be calm" else "ok")
        _, results = await run_suite(bot, "shouting")
    assert results["calm"].outcome == FAIL and results["calm"].reason == "8 capital letters"
    assert results["also-no-echo"].outcome == PASS


def test_two_suites_of_one_name_name_both_plugins(tmp_path):
    from botkit.bot import Bot
    from botkit.settings import settings_from_mapping

    path = tmp_path / "injection.jsonl"
    path.write_text('{"id": "x", "prompts": ["x"], "score": {"kind": "canary"}}\n')

    class Impostor:
        @hookimpl
        def botkit_register_probes(self, register):
            register("injection", path)

    settings = settings_from_mapping({"backend": {"type": "scripted"}})
    with pytest.raises(
        PluginLoadError,
        match="probe suite 'injection' is registered by both plugin 'redteam' and plugin 'impostor'",
    ):
        Bot.load(settings, extra_plugins={"impostor": Impostor()})


def test_a_suite_whose_file_is_missing_fails_the_plugin_load(tmp_path):
    from botkit.bot import Bot
    from botkit.settings import settings_from_mapping

    class Careless:
        @hookimpl
        def botkit_register_probes(self, register):
            register("careless", tmp_path / "nowhere.jsonl")

    settings = settings_from_mapping({"backend": {"type": "scripted"}})
    with pytest.raises(PluginLoadError, match=r"plugin 'careless'.*nowhere.jsonl is not a file"):
        Bot.load(settings, extra_plugins={"careless": Careless()})
