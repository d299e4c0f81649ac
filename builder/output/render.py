"""jinja2 templates shipped in vmbuild/output/templates: XML autoescaped, strict undefined."""

from __future__ import annotations

import functools
import shlex
from typing import Any

import jinja2


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("vmbuild.output", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(enabled_extensions=("xml.j2",), default=False),
        keep_trailing_newline=True,
    )
    env.filters["shquote"] = lambda value: shlex.quote(str(value))
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)
