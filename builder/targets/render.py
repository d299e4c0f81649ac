"""jinja2 templates of the targets (vmbuild/targets/templates): strict undefined, XML
autoescaped, and filters that quote a value for the language a template writes:
PowerShell (``psquote``), xl configs (``xl``) and the shell (``shquote``)."""

from __future__ import annotations

import functools
import re
from typing import Any

import jinja2
from vmbuild.errors import BuildError
from vmbuild.output.render import template_environment

#: The characters PowerShell takes for a single quote: ASCII's and four typographic ones.
_PS_QUOTES = "'\u2018\u2019\u201a\u201b"


def psquote(value: object) -> str:
    """``value`` as a single-quoted PowerShell string, in which nothing is expanded:
    each quote character is doubled, as PowerShell reads it."""
    text = str(value)
    for quote in _PS_QUOTES:
        text = text.replace(quote, quote * 2)
    return f"'{text}'"


#: What an xl config string cannot hold: xl's parser has no escapes.
XL_UNSAFE = re.compile(r'["\\\x00-\x1f\x7f]')


def xl_string(value: object) -> str:
    """``value`` as a double-quoted xl config string."""
    text = str(value)
    if XL_UNSAFE.search(text):
        raise BuildError(f"{text!r} cannot be written as a string of an xl config")
    return f'"{text}"'


@functools.cache
def environment() -> jinja2.Environment:
    env = template_environment("vmbuild.targets")
    env.filters["psquote"] = psquote
    env.filters["xl"] = xl_string
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)
