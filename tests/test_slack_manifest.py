"""slack-manifest.yaml asks for exactly the scopes, events and slash commands the Slack adapter uses."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from botkit.adapters import slack, slack_messages
from botkit.adapters.slack import SlackSettings

REPO = Path(__file__).resolve().parent.parent
MANIFEST = yaml.safe_load((REPO / "slack-manifest.yaml").read_text(encoding="utf-8"))
SOURCES = "\n".join(Path(module.__file__).read_text(encoding="utf-8") for module in (slack, slack_messages))

# The bot scopes Slack's reference asks for, per Web API method the adapter calls and per
# event it subscribes to. A new call or event must be added here, and its scope to the manifest.
METHOD_SCOPES: dict[str, set[str]] = {
    "auth_test": set(),
    "apps_connections_open": set(),  # the app-level token's connections:write, not a bot scope
    "chat_postMessage": {"chat:write"},
    "chat_update": {"chat:write"},
    "chat_delete": {"chat:write"},
    "conversations_replies": {"channels:history", "groups:history", "im:history", "mpim:history"},
    "users_info": {"users:read"},
}
EVENT_SCOPES: dict[str, set[str]] = {
    "app_mention": {"app_mentions:read"},
    "message.im": {"im:history"},
    "reaction_added": {"reactions:read"},
    "reaction_removed": {"reactions:read"},
}


def called_methods() -> set[str]:
    return set(re.findall(r"client\.([a-z]+_[A-Za-z_]+)\(", SOURCES))


def handled_events() -> set[str]:
    # The adapter listens to "message" for DMs only (message.im): channel messages are not subscribed.
    events = set(re.findall(r'app\.event\("([a-z_]+)"\)', SOURCES))
    return {"message.im" if event == "message" else event for event in events}


def test_every_web_api_method_the_adapter_calls_has_a_known_scope():
    assert called_methods() == set(METHOD_SCOPES)


def test_the_manifest_subscribes_exactly_the_events_the_adapter_handles():
    assert set(MANIFEST["settings"]["event_subscriptions"]["bot_events"]) == handled_events()


def test_the_manifest_asks_for_exactly_the_scopes_needed():
    needed = {"commands"}  # slash commands
    for method in called_methods():
        needed |= METHOD_SCOPES[method]
    for event in handled_events():
        needed |= EVENT_SCOPES[event]
    assert set(MANIFEST["oauth_config"]["scopes"]["bot"]) == needed
    assert "user" not in MANIFEST["oauth_config"]["scopes"]  # no user token is used


def test_the_manifest_defines_the_default_slash_commands_and_socket_mode():
    defaults = SlackSettings()
    commands = {entry["command"] for entry in MANIFEST["features"]["slash_commands"]}
    assert commands == {defaults.ask_command, defaults.command}
    assert MANIFEST["settings"]["socket_mode_enabled"] is True
    assert MANIFEST["features"]["app_home"]["messages_tab_enabled"] is True  # people can DM the bot
