"""Config keys renamed in this release: still read under their old names, with a warning, until the next."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from pydantic import BaseModel, ModelWrapValidatorHandler, PrivateAttr, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

log = logging.getLogger("botkit.settings")


class RenamedKeys(BaseModel):
    """A settings table some of whose keys were renamed: ``renamed_keys`` maps each old name to its new one.

    A table may still use an old name, read as the new one; a table that sets both
    is refused rather than guessing which one was meant. The model remembers the old
    names it was given, for ``warn_old_keys`` to log once the table's place is known.
    """

    renamed_keys: ClassVar[dict[str, str]] = {}
    _old_keys_read: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="wrap")
    @classmethod
    def _read_old_names(cls, data: Any, handler: ModelWrapValidatorHandler[RenamedKeys]) -> RenamedKeys:
        if not isinstance(data, dict):
            return handler(data)
        data = dict(data)
        read: list[str] = []
        for old, new in cls.renamed_keys.items():
            if old not in data:
                continue
            if new in data:
                problem = PydanticCustomError(
                    "renamed_key_twice",
                    "the old name of {new}, which this table sets too: keep only {new}",
                    {"new": new},
                )
                raise ValidationError.from_exception_data(
                    cls.__name__, [InitErrorDetails(type=problem, loc=(old,), input=data[old])]
                )
            data[new] = data.pop(old)
            read.append(old)
        model = handler(data)
        model._old_keys_read = tuple(read)
        return model


def warn_old_keys(model: BaseModel, where: str) -> None:
    """Log each old key name ``model`` was read with; ``where`` names its table (``config.toml: [backend]``)."""
    if not isinstance(model, RenamedKeys):
        return
    for old in model._old_keys_read:
        log.warning(
            "%s %s is deprecated: rename it to %s (the old name is read until the next release)",
            where,
            old,
            model.renamed_keys[old],
        )
