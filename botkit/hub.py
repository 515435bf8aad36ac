"""The Hugging Face Hub's HTTP API, the three calls ``botkit models pull`` makes, over httpx2.

The protocol is the one ``huggingface_hub`` speaks, without the package (it would bring a
second HTTP stack): ``GET /api/models/{repo}?blobs=true`` for the commit, card data and
files with their LFS sha256; ``HEAD /{repo}/resolve/{revision}/{file}`` for the file's
``X-Repo-Commit``, ``X-Linked-Etag`` (the sha256), ``X-Linked-Size`` and the CDN
``Location`` (relative redirects, as after a rename, are followed, the CDN's is not);
then a ``GET`` of that location. The settings are huggingface_hub's: ``HF_ENDPOINT``,
``HF_HUB_OFFLINE``, and the token from ``HF_TOKEN`` or the file ``hf auth login``
writes (``HF_TOKEN_PATH``, else ``$HF_HOME/token``, else ``~/.cache/huggingface/token``).
The token goes to the Hub only, never to the CDN, and appears in no message.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx2

DEFAULT_ENDPOINT = "https://huggingface.co"
TIMEOUT = 30.0  # seconds without a byte before a request counts as failed
# What the Hub says when the token itself is wrong (not the repository).
INVALID_TOKEN = "Invalid credentials in Authorization header"
REDIRECTS = 5  # relative redirects followed by a HEAD (a renamed repository)


class HubHTTPError(Exception):
    """The Hub answered with an HTTP error; ``code`` is its ``X-Error-Code`` (``RepoNotFound``...)."""

    def __init__(self, status: int, reason: str, url: str, code: str | None, message: str | None) -> None:
        self.status, self.code, self.server_message = status, code, message
        detail = f": {message}" if message else ""
        super().__init__(f"HTTP {status} {reason} for {url}{detail}")


@dataclass(frozen=True)
class FileMetadata:
    """The HEAD of a file's ``resolve`` address: where its bytes are, and what they are."""

    commit: str | None
    etag: str | None  # the LFS sha256 for an LFS file, without quotes
    size: int | None
    location: str


def endpoint() -> str:
    """The Hub's address: ``HF_ENDPOINT``, read now (a test or a mirror may set it late)."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def token_path() -> Path:
    """Where ``hf auth login`` (``huggingface-cli login`` before) keeps the token."""
    if path := os.environ.get("HF_TOKEN_PATH"):
        return Path(os.path.expandvars(path)).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    home = os.environ.get("HF_HOME") or os.path.join(cache, "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "token"


def token() -> str | None:
    """The user's Hub token: ``HF_TOKEN`` (or the older ``HUGGING_FACE_HUB_TOKEN``), else the login file."""
    value = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if value is None:
        try:
            value = token_path().read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
    return value.strip() or None


def hub_headers() -> dict[str, str]:
    """Headers for a request to the Hub itself: who asks, and the token if the user has one."""
    from botkit import __version__

    headers = {"User-Agent": f"botkit/{__version__}; httpx2/{httpx2.__version__}"}
    if secret := token():
        headers["Authorization"] = f"Bearer {secret}"
    return headers


def resolve_url(hub: str, repo: str, file: str, revision: str) -> str:
    return f"{hub}/{repo}/resolve/{quote(revision, safe='')}/{quote(file)}"


@contextmanager
def hub_client() -> Iterator[httpx2.Client]:
    """A client for the Hub's requests: redirects are followed only where a call says so."""
    with httpx2.Client(timeout=TIMEOUT, follow_redirects=False) as client:
        yield client


def raise_for_status(response: httpx2.Response, code: str | None = None) -> None:
    """``HubHTTPError`` for a 4xx or 5xx answer, with the Hub's error code (else ``code``) and message."""
    if response.status_code < 400:
        return
    message = response.headers.get("X-Error-Message")
    if message is None:
        try:
            error = response.json().get("error")
            message = str(error) if error else None
        except (ValueError, AttributeError, httpx2.ResponseNotRead):
            message = None
    raise HubHTTPError(
        response.status_code,
        response.reason_phrase,
        str(response.url),
        response.headers.get("X-Error-Code") or code,
        message,
    )


def model_info(client: httpx2.Client, hub: str, repo: str) -> dict[str, Any]:
    """The repository as ``HfApi.model_info(files_metadata=True)`` reads it: ``sha``, ``cardData``, ``siblings``."""
    response = client.get(f"{hub}/api/models/{repo}", params={"blobs": "true"}, headers=hub_headers())
    # The Hub answers 401 for a missing repository as for a private one it will not show.
    hidden = response.status_code == 401 and response.headers.get("X-Error-Message") != INVALID_TOKEN
    raise_for_status(response, "RepoNotFound" if hidden else None)
    info = response.json()
    if not isinstance(info, dict):
        raise HubHTTPError(response.status_code, "not a repository", str(response.url), None, None)
    return info


def file_metadata(client: httpx2.Client, url: str) -> FileMetadata:
    """HEAD ``url`` (a ``resolve`` address) as ``get_hf_file_metadata`` does."""
    headers = {**hub_headers(), "Accept-Encoding": "identity"}  # the size of the bytes, not of a gzip
    for _ in range(REDIRECTS):
        response = client.head(url, headers=headers)
        location = response.headers.get("Location")
        if response.is_redirect and location and not urlsplit(location).netloc:
            url = str(response.url.join(location))  # a renamed repository: still the Hub
            continue
        break
    raise_for_status(response)
    etag = response.headers.get("X-Linked-Etag") or response.headers.get("ETag")
    size = response.headers.get("X-Linked-Size") or (
        None if response.is_redirect else response.headers.get("Content-Length")
    )
    return FileMetadata(
        commit=response.headers.get("X-Repo-Commit"),
        etag=etag.removeprefix("W/").strip('"') if etag else None,
        size=int(size) if size and size.isdigit() else None,
        location=response.headers.get("Location") or str(response.url),
    )
