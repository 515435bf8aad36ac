"""The web console (``botkit web``): login, roles, the review queue, conversations, plugins and the audit log.

Installed as ``botkit.web``; needs ``pip install 'botkit[web]'`` (Starlette, uvicorn,
argon2-cffi, python-multipart). Every page calls the same functions as the CLI
(``botkit.finetune.review``, ``bot.plugins``); templates only show what those return.
"""

from __future__ import annotations

import importlib.util

# The import name of each package of the `web` extra, and the name pip knows it by.
WEB_STACK = {"starlette": "starlette", "uvicorn": "uvicorn", "argon2": "argon2-cffi", "multipart": "python-multipart"}


def missing_web_stack() -> str | None:
    """What to install when a package of the web console is missing, else None."""
    missing = [package for module, package in WEB_STACK.items() if importlib.util.find_spec(module) is None]
    if not missing:
        return None
    return f"the web console needs {', '.join(missing)}: pip install 'botkit[web]'"
