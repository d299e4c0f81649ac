"""jinja2 templates shipped in vmbuild/output/templates: XML autoescaped, strict undefined."""

from __future__ import annotations

import functools
import shlex
from typing import Any

import jinja2


def template_environment(package: str) -> jinja2.Environment:
    """The templates of ``package``'s ``templates`` folder, as vmbuild renders every
    template: strict undefined, XML autoescaped, trailing newlines kept, and the
    ``shquote`` filter (a value quoted for the shell)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(package, "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(enabled_extensions=("xml.j2",), default=False),
        keep_trailing_newline=True,
    )
    env.filters["shquote"] = lambda value: shlex.quote(str(value))
    return env


@functools.cache
def environment() -> jinja2.Environment:
    return template_environment("vmbuild.output")


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)
