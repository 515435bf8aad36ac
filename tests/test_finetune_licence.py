"""Where a fine-tune's base model comes from and under which licence, and the run's model card (no model loads)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from botkit.backends.llamacpp import embedded_model_path
from botkit.backends.llamacpp_lora import read_gguf_header
from botkit.finetune.base_model import base_model
from botkit.finetune.gguf_adapter import write_lora_gguf
from botkit.finetune.licence import from_adapter_metadata, licence_problem
from botkit.finetune.model_card import write_model_card
from botkit.finetune.settings import FinetuneSettings


def write_model_gguf(path: Path, **metadata: str) -> Path:
    """A GGUF model header with one tensor: enough for what reads a base model's metadata."""
    import gguf

    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_name("Tiny Test Model")
    for key, value in metadata.items():
        writer.add_string(key.replace("__", "."), value)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_the_embedded_models_licence_and_author_come_from_its_gguf():
    provenance = base_model(embedded_model_path()).provenance
    assert provenance.license == "apache-2.0" and provenance.author == "HuggingFaceTB"


def test_a_gguf_models_licence_name_link_and_source_are_read(tmp_path):
    path = write_model_gguf(
        tmp_path / "m.gguf",
        general__license="other",
        general__license__name="Example Community License",
        general__license__link="https://example.com/licence",
        general__author="Example Lab",
        general__source__url="https://example.com/model",
    )
    provenance = base_model(path).provenance
    assert provenance.describe() == "other (Example Community License, https://example.com/licence)"
    assert (provenance.author, provenance.source) == ("Example Lab", "https://example.com/model")


def test_a_hugging_face_folder_takes_its_licence_from_the_model_card(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (tmp_path / "README.md").write_text(
        "---\nlicense: mit\nbase_model: org/tiny\n---\n# Tiny\nlicense: not this\n"
    )
    provenance = base_model(tmp_path).provenance
    assert (provenance.license, provenance.source) == ("mit", "org/tiny")
    (tmp_path / "README.md").write_text("# Tiny\n\nNo front matter.\n")
    assert base_model(tmp_path).provenance.license == "unknown"


def test_a_base_model_without_licence_metadata_gets_a_card_saying_unknown(tmp_path):
    model = base_model(write_model_gguf(tmp_path / "nameless.gguf"))
    assert model.provenance.license == "unknown" and not model.provenance.known
    run = tmp_path / "run"
    run.mkdir()
    record = {
        "base_model": model.record(),
        "data": {"source": "data/export", "files": ["data/export/chat/train.jsonl"], "examples": 3},
        "settings": FinetuneSettings().model_dump(),
        "validation_before": None,
        "validation_after": None,
        "steps": 2,
        "total_steps": 2,
    }
    card = write_model_card(run, record).read_text(encoding="utf-8")
    assert card.startswith("---\nlicense: unknown\n")
    assert "- Licence: unknown" in card
    assert "unknown: the base model declares no licence" in card
    assert "| validation loss | n/a | n/a |" in card
    assert "- Examples: 3 train, 0 validation" in card


def test_an_adapter_carries_the_licence_it_was_given_and_unknown_otherwise(tmp_path):
    pairs = {"blk.0.attn_q.weight": (np.ones((2, 4), np.float32), np.ones((4, 2), np.float32))}
    base = base_model(embedded_model_path())
    licensed = write_lora_gguf(
        tmp_path / "a.gguf", architecture="llama", alpha=2, tensors=pairs, base_model=base.name,
        provenance=base.provenance,
    )  # fmt: skip
    plain = write_lora_gguf(tmp_path / "b.gguf", architecture="llama", alpha=2, tensors=pairs, base_model="x")
    assert from_adapter_metadata(read_gguf_header(licensed).metadata) == base.provenance
    assert from_adapter_metadata(read_gguf_header(plain).metadata).license == "unknown"


@pytest.mark.parametrize(
    ("licence", "allowed", "refused"),
    [
        ("apache-2.0", None, False),
        ("unknown", None, False),
        ("apache-2.0", ["MIT", "Apache-2.0"], False),
        ("apache-2.0", ["mit"], True),
        ("unknown", ["mit"], True),
        ("mit", [], True),
    ],
)
def test_allowed_licenses_compares_identifiers_case_insensitively(licence, allowed, refused):
    from botkit.finetune.licence import Provenance

    assert (licence_problem(Provenance(licence), allowed) is not None) is refused


def test_an_empty_licence_name_in_allowed_licenses_is_refused():
    with pytest.raises(ValueError, match="allowed_licenses"):
        FinetuneSettings(allowed_licenses=["mit", " "])
