"""botkit.detectors: the export's PII scrubber finds what the moderation plugin redacts in chat."""

from __future__ import annotations

import pytest

from botkit.detectors import pii_scrubber
from botkit.plugins.moderation import Actions, ModerationSettings, Moderator

GITHUB = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
PEM_KEY = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA1b2c3d4\n-----END RSA PRIVATE KEY-----"

SAMPLES = [
    "write to bob.smith@example.com please",
    "my card is 4111 1111 1111 1111 thanks, not 4111 1111 1111 1112",
    "call +1 (555) 123-4567 tonight. Or mail me: ann@corp.example.org.",
    "the token is " + GITHUB + " and the key sk-proj-Ab3dEf6hIj9lMn2pQr5tUv8xYz1AbCdE",
    "here is my key\n" + PEM_KEY + "\nkeep it safe",
    "nothing to see here: order 2024-01-15, pi is 3.14159265358979",
]


@pytest.fixture(scope="module")
def moderation_redacts():
    pii_only = Actions(
        blocklist="off", profanity="off", injection="off", email="redact", phone="redact", card="redact",
        secret="redact",
    )  # fmt: skip
    moderator = Moderator(ModerationSettings(input_actions=pii_only), classifier=None)
    return lambda text: moderator.check(text, "in").text


@pytest.mark.parametrize("text", SAMPLES)
def test_the_scrubber_and_moderation_agree(text, moderation_redacts):
    scrubbed, found = pii_scrubber()(text)
    assert scrubbed == moderation_redacts(text)
    assert found == (scrubbed != text)


def test_what_is_scrubbed_is_gone():
    scrubbed, found = pii_scrubber()(SAMPLES[0] + " " + SAMPLES[3] + " " + SAMPLES[4])
    assert found
    for secret in ("bob.smith@example.com", GITHUB, "MIIEowIBAAKCAQEA1b2c3d4"):
        assert secret not in scrubbed
    assert "[email removed]" in scrubbed and "[secret removed]" in scrubbed
