"""MkDocs hooks: the pages generated from the code, and the benchmark charts.

Two pages are written from the code at build time, so they cannot drift from it: the
settings table from ``service.config.Settings`` (``<!-- generated: settings -->``) and
the API schema reference from the app's own OpenAPI schema (``<!-- generated: openapi
-->``), built with ``create_app(...).openapi()``, which loads no model. The charts under
``bench/results`` are added to the site as ``benchmarks/results/*.png``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
CHARTS = ROOT / "bench" / "results"
SETTINGS_MARK = "<!-- generated: settings -->"
OPENAPI_MARK = "<!-- generated: openapi -->"
# The placeholders a path default is shown with, instead of this machine's directories.
HOME = "/home-directory"
PATH_ENV = {"XDG_CACHE_HOME": "$XDG_CACHE_HOME", "XDG_DATA_HOME": "$XDG_DATA_HOME"}

# This tree's service, ahead of any other installed copy.
sys.path.insert(0, str(ROOT))


@contextlib.contextmanager
def _environment(values: dict[str, str], remove: tuple[str, ...] = ()) -> Iterator[None]:
    """Run with ``values`` set and ``remove`` unset, as the default settings see them."""
    saved = dict(os.environ)
    for name in remove:
        os.environ.pop(name, None)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _cell(text: str) -> str:
    """Text for one table cell: one line, no column breaks."""
    return " ".join(text.split()).replace("|", "\\|")


def _value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def setting_default(field: Any) -> str:
    """A setting's default as the table shows it; a path computed at startup is shown
    with ``$XDG_*_HOME``, else the home directory's fallback."""
    if field.default_factory is None:
        return _value(field.default)
    judge = tuple(name for name in os.environ if name.startswith("JUDGE_"))
    with _environment(PATH_ENV, remove=judge):
        with_xdg = field.default_factory()
    with _environment({"HOME": HOME}, remove=(*PATH_ENV, *judge)):
        without = str(field.default_factory()).replace(HOME, "~", 1)
    return f"`{with_xdg}`, else `{without}`"


def settings_markdown() -> str:
    """The settings table: every field of ``Settings`` with its variable, flag and default."""
    from service.config import Settings

    rows = ["| variable | flag | default | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        meaning = _cell(field.description or "")
        rows.append(f"| `JUDGE_{name.upper()}` | `{flag}` | {setting_default(field)} | {meaning} |")
    return "\n".join(rows)


def openapi_schema() -> dict[str, Any]:
    """The app's own ``/openapi.json`` with the default settings; no model is loaded."""
    from service.app import create_app
    from service.config import Settings

    judge = tuple(name for name in os.environ if name.startswith("JUDGE_"))
    quiet = logging.getLogger("service.app")
    was = quiet.disabled
    # Without API keys the app warns at startup; the docs build is no startup.
    quiet.disabled = True
    try:
        with _environment({}, remove=judge):
            return create_app(Settings()).openapi()
    finally:
        quiet.disabled = was


def _ref(schema: dict[str, Any]) -> str:
    name = schema["$ref"].rsplit("/", 1)[-1]
    return f"[{name}](#{name.lower()})"


def schema_type(schema: dict[str, Any]) -> str:
    """A JSON Schema type, in words, with links to the named schemas it uses."""
    if "$ref" in schema:
        return _ref(schema)
    for combinator in ("anyOf", "oneOf", "allOf"):
        if combinator in schema:
            return " or ".join(schema_type(branch) for branch in schema[combinator])
    if "const" in schema:
        return f"`{schema['const']!r}`".replace("'", '"')
    if "enum" in schema:
        return "one of " + ", ".join(f"`{value}`" for value in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return "list of " + schema_type(schema.get("items", {}))
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return "map of " + schema_type(schema["additionalProperties"])
    return "null" if kind == "null" else str(kind)


LIMITS = (
    *("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum", "minLength", "maxLength"),
    *("minItems", "maxItems", "minProperties", "maxProperties", "default"),
)


def schema_limits(schema: dict[str, Any]) -> str:
    """A field's constraints and default, from every branch of its schema."""
    found: list[str] = []
    for branch in [schema, *schema.get("anyOf", [])]:
        found += [f"{key} `{json.dumps(branch[key])}`" for key in LIMITS if key in branch]
    return ", ".join(found)


def _operations(schema: dict[str, Any]) -> list[str]:
    lines = ["## Endpoints", "", "| method | path | summary | request body | answers |", "|---|---|---|---|---|"]
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            content = operation.get("requestBody", {}).get("content", {})
            body = "; ".join(f"{schema_type(spec.get('schema', {}))} ({kind})" for kind, spec in content.items())
            answers = ", ".join(operation.get("responses", {}))
            summary = _cell(operation.get("summary", ""))
            lines.append(f"| `{method.upper()}` | `{path}` | {summary} | {body or '—'} | {answers} |")
    return lines


def _components(schema: dict[str, Any]) -> list[str]:
    lines = ["## Schemas"]
    for name, model in sorted(schema.get("components", {}).get("schemas", {}).items()):
        lines += ["", f"### {name}", ""]
        if model.get("description"):
            lines += [_cell(model["description"]), ""]
        properties = model.get("properties")
        if not properties:
            lines.append(f"Type: {schema_type(model)}.")
            continue
        required = set(model.get("required", []))
        lines += ["| field | type | required | limits and default | meaning |", "|---|---|---|---|---|"]
        for field, spec in properties.items():
            meaning = _cell(spec.get("description", ""))
            needed = "yes" if field in required else "no"
            lines.append(f"| `{field}` | {schema_type(spec)} | {needed} | {schema_limits(spec)} | {meaning} |")
    return lines


def openapi_markdown() -> str:
    """Endpoint and schema tables of the app's OpenAPI schema."""
    schema = openapi_schema()
    head = [f"Schema of {schema['info']['title']} {schema['info']['version']}, OpenAPI {schema['openapi']}.", ""]
    return "\n".join(head + _operations(schema) + [""] + _components(schema))


def on_files(files: Files, config: Any) -> Files:
    """Add the benchmark charts from ``bench/results`` to the site."""
    for chart in sorted(CHARTS.glob("*.png")):
        files.append(File.generated(config, f"benchmarks/results/{chart.name}", abs_src_path=str(chart)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Fill the generated pages in."""
    if SETTINGS_MARK in markdown:
        markdown = markdown.replace(SETTINGS_MARK, settings_markdown())
    if OPENAPI_MARK in markdown:
        markdown = markdown.replace(OPENAPI_MARK, openapi_markdown())
    return markdown
