"""docs/configuration.md documents every knob of verl_commeff/config.py with its default."""

import dataclasses
import re
from pathlib import Path

import pytest

from verl_commeff.config import CommEffConfig

DOCS = Path(__file__).resolve().parents[2] / "docs"


def knobs(config, prefix="commeff"):
    """(yaml path, default) of every leaf field, recursing into nested config dataclasses.

    The default is the field's declared default (what the yaml says), not the value a built
    config resolved it to (``anchor.transport=auto`` becomes ``sign`` or ``shards``).
    """
    for field in dataclasses.fields(config):
        if field.name.startswith("_"):
            continue
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            yield from knobs(value, f"{prefix}.{field.name}")
        else:
            yield f"{prefix}.{field.name}", field.default if field.default is not dataclasses.MISSING else value


def yaml_text(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(value) + "]"
    return str(value)


CONFIG_DOC = (DOCS / "configuration.md").read_text()
ROWS = {m.group(1): m.group(0) for m in re.finditer(r"^\| `(commeff\.[\w.]+)` \|.*$", CONFIG_DOC, re.M)}


@pytest.mark.parametrize("path, default", list(knobs(CommEffConfig())))
def test_every_knob_has_a_row_with_its_default(path, default):
    assert path in ROWS, f"{path} is not documented in docs/configuration.md"
    default_cell = ROWS[path].split("|")[2].strip()
    assert default_cell == f"`{yaml_text(default)}`"


def test_no_row_documents_a_knob_that_does_not_exist():
    assert set(ROWS) <= {path for path, _ in knobs(CommEffConfig())}


def test_index_links_resolve():
    links = re.findall(r"\]\(([\w.]+\.md)\)", (DOCS / "index.md").read_text())
    assert {"method.md", "configuration.md", "report.md", "troubleshooting.md"} <= set(links)
    assert all((DOCS / link).is_file() for link in links)
