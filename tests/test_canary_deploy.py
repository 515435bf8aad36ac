"""`botkit finetune deploy ADAPTER --canary PERCENT`: the deploy checks, then a canary in the running llama.cpp bot."""

from __future__ import annotations

from test_deploy import CONFIG, adapters, bot_in_thread, config, deploy, with_lora  # noqa: F401 (fixtures)


def test_a_canary_of_an_adapter_the_backend_does_not_load_side_by_side_is_refused(config, adapters):  # noqa: F811
    adapter = adapters / "good.gguf"
    result = deploy(config, str(adapter), "--canary", "10")
    assert result.exit_code == 1
    assert (
        f"{adapter}: a canary answers with two adapters side by side, and [backend] loras does not name this one"
        in result.stderr
    )
    assert config.read_text(encoding="utf-8") == CONFIG  # nothing written


def test_a_canary_needs_a_running_bot(config, adapters):  # noqa: F811
    adapter = adapters / "good.gguf"
    config.write_text(with_lora(CONFIG, f'loras = {{ new = "{adapter}" }}'), encoding="utf-8")
    result = deploy(config, str(adapter), "--canary", "10")
    assert result.exit_code == 1
    assert "no running bot answered" in result.stderr


def test_the_running_llamacpp_bot_answers_a_share_of_conversations_with_the_canary(config, adapters):  # noqa: F811
    adapter = adapters / "good.gguf"
    written = with_lora(CONFIG, f'loras = {{ new = "{adapter}" }}')
    config.write_text(written, encoding="utf-8")
    with bot_in_thread(config) as bot:
        result = deploy(config, str(adapter), "--canary", "10")
        refused = deploy(config, str(adapter), "--canary", "20")
        plan = bot.canaries.plan_for("default")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == (
        "canary 1 on backend 'default': 10% of conversations get LoRA adapter 'new', the rest the base model"
    )
    assert plan is not None and (plan.canary_lora, plan.control_lora, plan.share) == ("new", None, 10)
    assert refused.exit_code == 1 and "is running already: promote or roll it back first" in refused.stderr
    assert config.read_text(encoding="utf-8") == written  # a canary writes nothing into the config
