"""GGUF models a user pulls from the Hugging Face Hub: the curated catalogue, the verified download, the record.

Nothing here runs unless the user asks (``botkit models pull``): the bot itself never
downloads. A pull reads the repository's card and file list (licence, the file's LFS sha256
and size) and the file's HEAD (``X-Linked-Etag``, ``X-Repo-Commit``, the CDN ``Location``)
through the Hub's HTTP API (``botkit.hub``), then streams the file into
``<file>.<sha>.part`` under ``<data_dir>/models/<org>/<repo>/``. A pull cut short leaves that
part behind and the next pull continues it with a ``Range`` request; the file gets its final
name only once its sha256 is the Hub's, and the record (``<file>.json``: repository, commit,
sha256, licence) is written after it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botkit.errors import BotkitError

RECORD_SUFFIX = ".json"
SHA256 = re.compile(r"[0-9a-f]{64}")
QUANTIZATION = re.compile(r"(?:^|[-_.])((?:I?Q\d(?:_[A-Z0-9]+)*)|BF16|F16|F32)(?=[-_.]|$)", re.IGNORECASE)

CHAT_NOTE = (
    'chat template: the model\'s own, from its GGUF metadata; keep [backend] prompt_format = "chat" '
    '(the default), not "alpaca": the model was not Alpaca-tuned'
)


class ModelPullError(BotkitError):
    """A model could not be pulled: unknown name, Hub unreachable or refusing, download cut off or corrupt."""


class HubUnreachable(ModelPullError):
    """The Hub did not answer (offline, no network, DNS, timeout): nothing was downloaded."""


@dataclass(frozen=True)
class CatalogueModel:
    """A small instruct model known to run well on a CPU, with the one GGUF file botkit pulls of it."""

    name: str
    repo: str
    file: str
    quantization: str
    licence: str
    approx_gb: float  # the file's size as last seen on the Hub; the Hub's own figure is used when pulling
    about: str
    template_note: str = CHAT_NOTE


CATALOGUE: tuple[CatalogueModel, ...] = (
    CatalogueModel(
        "qwen2.5-0.5b",
        "Qwen/Qwen2.5-0.5B-Instruct-GGUF",
        "qwen2.5-0.5b-instruct-q4_k_m.gguf",
        "Q4_K_M",
        "apache-2.0",
        0.49,
        "Qwen2.5 0.5B Instruct: the smallest step up, multilingual, about as fast as the embedded model",
        CHAT_NOTE + " (ChatML; its template has a default system prompt)",
    ),
    CatalogueModel(
        "qwen2.5-1.5b",
        "Qwen/Qwen2.5-1.5B-Instruct-GGUF",
        "qwen2.5-1.5b-instruct-q4_k_m.gguf",
        "Q4_K_M",
        "apache-2.0",
        1.1,
        "Qwen2.5 1.5B Instruct: good answers for its size, multilingual",
        CHAT_NOTE + " (ChatML)",
    ),
    CatalogueModel(
        "llama3.2-1b",
        "bartowski/Llama-3.2-1B-Instruct-GGUF",
        "Llama-3.2-1B-Instruct-Q4_K_M.gguf",
        "Q4_K_M",
        "llama3.2",
        0.81,
        "Llama 3.2 1B Instruct (Meta): English-first, quick on a CPU",
        CHAT_NOTE + " (Llama 3 headers; the template adds a date line to the system prompt)",
    ),
    CatalogueModel(
        "llama3.2-3b",
        "bartowski/Llama-3.2-3B-Instruct-GGUF",
        "Llama-3.2-3B-Instruct-Q4_K_M.gguf",
        "Q4_K_M",
        "llama3.2",
        2.0,
        "Llama 3.2 3B Instruct (Meta): the strongest here; needs about 3 GB of memory, slower",
        CHAT_NOTE + " (Llama 3 headers; the template adds a date line to the system prompt)",
    ),
    CatalogueModel(
        "smollm2-360m",
        "HuggingFaceTB/SmolLM2-360M-Instruct-GGUF",
        "smollm2-360m-instruct-q8_0.gguf",
        "Q8_0",
        "apache-2.0",
        0.39,
        "SmolLM2 360M Instruct: the embedded model's bigger sibling, same template",
        CHAT_NOTE + " (ChatML)",
    ),
    CatalogueModel(
        "smollm2-1.7b",
        "HuggingFaceTB/SmolLM2-1.7B-Instruct-GGUF",
        "smollm2-1.7b-instruct-q4_k_m.gguf",
        "Q4_K_M",
        "apache-2.0",
        1.06,
        "SmolLM2 1.7B Instruct: English, much better than 135M at facts and instructions",
        CHAT_NOTE + " (ChatML)",
    ),
)

LICENCE_NOTES = {
    "llama3.2": "Llama 3.2 Community License: attribution, Meta's acceptable use policy, and a separate "
    "licence from Meta past 700 million monthly users",
    "apache-2.0": "Apache License 2.0",
}


@dataclass(frozen=True)
class PullTarget:
    """What ``models pull NAME`` asked for: a repository file, and its catalogue entry if NAME was a short name."""

    repo: str
    file: str
    entry: CatalogueModel | None = None


@dataclass
class PulledModel:
    """The record of a pulled model, kept beside it as ``<file>.json``."""

    repo: str
    file: str
    path: str
    revision: str
    sha256: str
    size: int
    licence: str
    licence_link: str
    quantization: str
    name: str | None
    template_note: str
    pulled_at: str

    def config_line(self) -> str:
        return config_line(Path(self.path))


def config_line(path: Path) -> str:
    """The config line that makes the llama.cpp backend load ``path``."""
    return f"[backend] model_path = {json.dumps(str(path))}"


def resolve_name(name: str) -> PullTarget:
    """A catalogue short name, or ``org/repo/file.gguf``; ``ModelPullError`` saying what NAME may be otherwise."""
    for entry in CATALOGUE:
        if name.lower() == entry.name:
            return PullTarget(entry.repo, entry.file, entry)
    parts = name.strip("/").split("/")
    if len(parts) >= 3 and parts[-1].lower().endswith(".gguf") and all(parts):
        repo, file = "/".join(parts[:2]), "/".join(parts[2:])
        entry = next((e for e in CATALOGUE if (e.repo, e.file) == (repo, file)), None)
        return PullTarget(repo, file, entry)
    names = ", ".join(entry.name for entry in CATALOGUE)
    raise ModelPullError(
        f"{name!r} is neither a model botkit knows ({names}) nor a Hub path ORG/REPO/FILE.gguf, "
        "e.g. Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf"
    )


def quantization_of(file: str) -> str:
    """The quantization a GGUF file's name states (``Q4_K_M``, ``Q8_0``, ``F16``), or ``?``."""
    found = QUANTIZATION.findall(Path(file).name.removesuffix(".gguf"))
    return found[-1].upper() if found else "?"


def models_dir(data_dir: Path) -> Path:
    return data_dir.expanduser() / "models"


def model_path(data_dir: Path, target: PullTarget) -> Path:
    return models_dir(data_dir) / target.repo / target.file


def record_path(path: Path) -> Path:
    return path.with_name(path.name + RECORD_SUFFIX)


def read_record(path: Path) -> PulledModel | None:
    """The record kept beside the model file at ``path``, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads(record_path(path).read_text(encoding="utf-8"))
        return PulledModel(**data)
    except (OSError, ValueError, TypeError):
        return None


def pulled_models(data_dir: Path) -> list[tuple[Path, PulledModel | None]]:
    """Every ``.gguf`` under ``<data_dir>/models`` with its record (None for a file put there by hand)."""
    root = models_dir(data_dir)
    if not root.is_dir():
        return []
    return [(path, read_record(path)) for path in sorted(root.rglob("*.gguf")) if path.is_file()]


Echo = Callable[[str], None]
Progress = Callable[[int, int], None]  # (bytes so far, total)


def pull(
    target: PullTarget, data_dir: Path, echo: Echo, progress: Progress | None = None
) -> tuple[PulledModel, bool]:
    """Download ``target`` into ``data_dir``, verified, and record it; ``(record, downloaded)``.

    ``downloaded`` is False when the verified file was already there. When the Hub cannot be
    reached and an earlier pull of this file is on disk, that copy is returned with a notice.
    Raises ``ModelPullError``: nothing is left under the final name unless it is verified.
    """
    path = model_path(data_dir, target)
    try:
        remote = hub_file(target)
    except HubUnreachable as error:
        earlier = read_record(path)
        if earlier is not None and path.is_file() and path.stat().st_size == earlier.size:
            echo(f"warning: {error}; using the copy pulled on {earlier.pulled_at[:10]} (verified then)")
            return earlier, False
        raise
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(path):
        earlier = read_record(path)
        if earlier is not None and earlier.sha256 == remote.sha256 and path.is_file():
            if path.stat().st_size == remote.size:
                return earlier, False
        part = path.with_name(f"{path.name}.{remote.sha256[:16]}.part")
        for stale in path.parent.glob(f"{path.name}.*.part"):
            if stale != part:
                stale.unlink()  # a partial download of another revision of the file
        have = part.stat().st_size if part.exists() else 0
        free = shutil.disk_usage(path.parent).free
        if remote.size - have > free:
            raise ModelPullError(
                f"{path.parent}: {remote.size - have:,} bytes are needed and {free:,} are free; "
                "make room or set [storage] data_dir elsewhere"
            )
        if have:
            echo(f"resuming: {have:,} of {remote.size:,} bytes are already here")
        download(remote, part, progress)
        digest = file_sha256(part)
        if digest != remote.sha256:
            part.unlink()
            raise ModelPullError(
                f"{target.repo}/{target.file}: the download's sha256 is {digest}, not {remote.sha256} as "
                "the Hub says: it was corrupted on the way and has been deleted; run the command again"
            )
        os.replace(part, path)
        record = PulledModel(
            repo=target.repo,
            file=target.file,
            path=str(path),
            revision=remote.revision,
            sha256=remote.sha256,
            size=remote.size,
            licence=remote.licence,
            licence_link=remote.licence_link,
            quantization=target.entry.quantization if target.entry else quantization_of(target.file),
            name=target.entry.name if target.entry else None,
            template_note=target.entry.template_note if target.entry else unknown_template_note(),
            pulled_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        write_json_atomically(record_path(path), asdict(record))
    return record, True


def unknown_template_note() -> str:
    return (
        'chat template: the GGUF\'s own with prompt_format = "chat" (the default); if botkit says at start '
        'that it has none, give [backend] chat_template; use prompt_format = "alpaca" only for a model '
        "tuned on Alpaca's template"
    )


@dataclass(frozen=True)
class HubFile:
    """What the Hub says of one file: where to fetch it, its sha256 and size, the commit, the licence."""

    url: str
    sha256: str
    size: int
    revision: str
    licence: str
    licence_link: str
    headers: dict[str, str]


def hub_file(target: PullTarget) -> HubFile:
    """Ask the Hub about ``target``: the repository (licence, files with their LFS sha256) and the file's HEAD."""
    import httpx2

    from botkit.hub import (
        HubHTTPError,
        endpoint,
        file_metadata,
        hub_client,
        hub_headers,
        model_info,
        offline,
        resolve_url,
    )

    hub = endpoint()
    page = f"{hub}/{target.repo}"
    if offline():
        raise HubUnreachable("HF_HUB_OFFLINE is set: unset it to let `botkit models pull` reach the Hub")
    try:
        with hub_client() as client:
            info = model_info(client, hub, target.repo)
            siblings = [s for s in info.get("siblings") or [] if isinstance(s, dict)]
            sibling = next((s for s in siblings if s.get("rfilename") == target.file), None)
            if sibling is None:
                ggufs = sorted(
                    str(s.get("rfilename")) for s in siblings if str(s.get("rfilename")).endswith(".gguf")
                )
                raise ModelPullError(
                    f"{target.repo} has no file {target.file!r}; its GGUF files: {', '.join(ggufs) or 'none'}"
                )
            commit = info.get("sha")
            if not isinstance(commit, str) or not commit:
                raise ModelPullError(f"{page}: the Hub did not say which commit it serves; try again later")
            url = resolve_url(hub, target.repo, target.file, commit)
            metadata = file_metadata(client, url)
    except HubHTTPError as error:
        if error.code == "GatedRepo":
            raise ModelPullError(
                f"{target.repo} is gated: accept its licence at {page} and set HF_TOKEN to a token of that account"
            ) from None
        if error.code == "RepoNotFound":
            raise ModelPullError(
                f"there is no repository {target.repo} on {hub} (a private one needs HF_TOKEN)"
            ) from None
        if error.code == "EntryNotFound":
            raise ModelPullError(f"{target.repo} has no file {target.file!r} ({page})") from None
        raise ModelPullError(f"the Hub refused: {first_line(error)}; try again later") from None
    except (httpx2.TransportError, ValueError) as error:  # ValueError: an answer that is not JSON
        raise HubUnreachable(
            f"cannot reach the Hugging Face Hub at {hub} ({first_line(error) or type(error).__name__}); "
            "check the network (or HF_ENDPOINT) and run the command again; nothing was downloaded"
        ) from None
    lfs = sibling.get("lfs") if isinstance(sibling.get("lfs"), dict) else None
    lfs_sha = lfs.get("sha256") if lfs else None
    sha = metadata.etag if metadata.etag and SHA256.fullmatch(metadata.etag) else lfs_sha
    if sha is None or (lfs_sha is not None and lfs_sha != sha):
        raise ModelPullError(
            f"{target.repo}/{target.file}: the Hub gives no single sha256 for it "
            f"(file list: {lfs_sha}, HEAD: {metadata.etag}), so it cannot be verified; nothing downloaded"
        )
    size = metadata.size or (lfs.get("size") if lfs else sibling.get("size"))
    if not isinstance(size, int) or not size:
        raise ModelPullError(f"{target.repo}/{target.file}: the Hub gives no size for it; nothing downloaded")
    card = info.get("cardData") if isinstance(info.get("cardData"), dict) else {}
    licence = str(card.get("license") or "unknown")
    if licence == "other" and card.get("license_name"):
        licence = str(card["license_name"])
    link = str(card.get("license_link") or page)
    if link.startswith(("LICENSE", "./")):
        link = f"{page}/blob/{commit}/{link.removeprefix('./')}"
    headers = hub_headers()
    if not _same_host(url, metadata.location):
        headers.pop("Authorization", None)  # a signed CDN address: the token stays with the Hub
    return HubFile(metadata.location, sha, size, metadata.commit or commit, licence, link, headers)


def _same_host(a: str, b: str) -> bool:
    from urllib.parse import urlparse

    return urlparse(a).hostname == urlparse(b).hostname


def first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else ""


def download(remote: HubFile, part: Path, progress: Progress | None) -> None:
    """Fetch ``remote`` into ``part``, continuing what is there with a ``Range`` request.

    A connection lost after some bytes arrived is resumed at once; one that brings nothing
    raises ``ModelPullError`` and leaves ``part`` for the next pull to continue.
    """
    import httpx2

    from botkit.hub import HubHTTPError, hub_client, raise_for_status

    with hub_client() as client:
        while True:
            have = part.stat().st_size if part.exists() else 0
            if have > remote.size:
                part.unlink()
                have = 0
            if have == remote.size:
                return
            headers = dict(remote.headers, **({"Range": f"bytes={have}-"} if have else {}))
            headers["Accept-Encoding"] = "identity"
            try:
                # A CDN may redirect again; httpx2 drops the token on a redirect to another host.
                with client.stream("GET", remote.url, headers=headers, follow_redirects=True) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise_for_status(response)
                    # A server that ignores Range sends the whole file again: start the part over.
                    mode = "ab" if have and response.status_code == 206 else "wb"
                    got = have if mode == "ab" else 0
                    with part.open(mode) as file:
                        # Chunks as they arrive (no chunk size): a lost connection keeps all it brought.
                        for chunk in response.iter_bytes():
                            file.write(chunk)
                            got += len(chunk)
                            if progress is not None:
                                progress(got, remote.size)
            except HubHTTPError as error:
                raise ModelPullError(
                    f"the download was refused: {first_line(error)}; run the command again"
                ) from None
            except httpx2.TransportError as error:
                now = part.stat().st_size if part.exists() else 0
                if now > have:
                    continue  # progress was made: go on from there
                raise ModelPullError(
                    f"the download was interrupted ({first_line(error) or type(error).__name__}) with {now:,} of "
                    f"{remote.size:,} bytes in {part}; run the same command again to continue it"
                ) from None


def file_sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold ``<file>.lock`` so that two pulls of one file never write the same part."""
    lock = path.with_name(path.name + ".lock")
    with lock.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ModelPullError(
                f"another `botkit models pull` is downloading {path.name}; wait for it"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(data, file, indent=2)
            file.write("\n")
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def describe_licence(licence: str) -> str:
    note = LICENCE_NOTES.get(licence)
    return f"{licence} ({note})" if note else licence
