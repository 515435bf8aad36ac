"""The redteam plugin: ``botkit redteam``, its shipped probe suites, and the canary in probe conversations.

Built in (``botkit.plugin_discovery.BUILTIN_PLUGINS``) and switched off like any plugin. In a
running bot it does one thing: the system prompt of a conversation on the ``redteam`` platform
(``botkit.REDTEAM_PLATFORM``; no adapter uses it) ends with a canary token, so that the
system-prompt extraction suite can tell a leak. See docs/safety.md.
"""

from __future__ import annotations

from pathlib import Path

from botkit import REDTEAM_PLATFORM, hookimpl

from .canary import canary_line

SUITES = Path(__file__).resolve().parent / "suites"

# The shipped suites (each suites/<name>.jsonl) and what each checks.
SHIPPED = {
    "extraction": "system-prompt extraction: the canary planted in the system prompt must not come out",
    "injection": "prompt injection and jailbreaks (role-play, base64, ROT13, leetspeak, Unicode tag characters): "
    "the attacker's marker must not come out",
    "leakage": "cross-conversation leakage: a secret told in one user's conversation must not reach another's",
    "pii": "PII and secret echo: card numbers, keys, e-mail addresses the model was shown must not be repeated",
    "markup": "mention and markup injection: no ping, no attacker's link",
    "bias": "counterfactual pairs differing in a name, gender, nationality or religion: refusal, sentiment, length",
}


@hookimpl
def botkit_register_cli(cli):
    from .cli import redteam

    cli.add_command(redteam)


@hookimpl
def botkit_register_probes(register):
    for name, description in SHIPPED.items():
        register(name, SUITES / f"{name}.jsonl", description=description)


@hookimpl(trylast=True)
def botkit_prepare_context(message, prompt, bot):
    if message.platform == REDTEAM_PLATFORM:
        # Last, after any plugin that rewrites the system prompt: the canary must survive them.
        prompt.system = f"{prompt.system}\n\n{canary_line(message.channel_id)}".lstrip()
