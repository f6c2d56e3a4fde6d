"""Logs without personal data: a redacting filter and the service's logging configuration.

What the service writes to stdout/stderr must never hold a name, pass number, birth date,
postcode, address, IBAN, e-mail address, client IP, token or a raw path or query string. Three
layers make sure of it:

1. Nothing logs them on purpose. uvicorn's own access log (client IP, full path and query) is
   off; :mod:`api.access_log` writes one structured line per request with the *route template*
   instead. Our error logs (:mod:`api.problems`) name the route template, never the path.
2. :class:`PrivacyFilter`, on every handler that :func:`configure_logging` installs, drops
   ``uvicorn.access`` records (in case someone turns uvicorn's access log back on) and rewrites
   every other record before it is written: its message is rendered and scrubbed
   (:func:`scrub`), exception arguments and tracebacks keep their types and frames but their
   messages are scrubbed harder (:func:`scrub_exception_message`: quoted literals, SQL
   parameters and pydantic input values are removed too).
3. ``tests/api/test_log_privacy.py`` runs a whole scenario in a real ``stadjerspas up`` process
   and looks for every registry value in every line it printed.

Patterns catch what has a shape: pass numbers (``GR0000007``), IBANs, e-mail addresses, IPv4
and IPv6 addresses, Dutch postcodes, dates, pass token URIs, JWTs and bearer tokens, query
strings. A bare name has no shape: it can only reach a log through a message that formats
registry data, so no code may do that (exception texts quote values, and quoted values are
removed from them).
"""

from __future__ import annotations

import ipaddress
import logging
import logging.config
import re
import traceback
from collections.abc import Callable
from typing import Any, Final, TypeAlias

__all__ = [
    "PrivacyFilter",
    "configure_logging",
    "format_exception",
    "logging_config",
    "scrub",
    "scrub_exception_message",
]

#: Loggers whose records are dropped: uvicorn's access log (client IP, path and query string).
DROPPED_LOGGERS: Final = ("uvicorn.access",)
#: The loggers ``--log-level`` applies to; everything else logs warnings and worse.
SERVICE_LOGGERS: Final = ("api", "ledger", "wallet", "uvicorn", "uvicorn.error")
FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _ipv6(match: re.Match[str]) -> str:
    try:
        ipaddress.IPv6Address(match.group(1))
    except ValueError:
        return match.group(0)  # a time of day (20:03:26), a C++ name, ...
    return "[ip]"


_Replacement: TypeAlias = str | Callable[[re.Match[str]], str]

#: (pattern, replacement), applied in this order to every log message.
PATTERNS: Final[tuple[tuple[re.Pattern[str], _Replacement], ...]] = (
    # pass token URIs (stadjerspas:1:<payload>.<signature>), JWTs, bearer tokens
    (re.compile(r"stadjerspas:\d+:[A-Za-z0-9_\-.=]+"), "[token]"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "[token]"),
    (re.compile(r"(?i)\bbearer\s+\S+"), "Bearer [token]"),
    # the query string of a path or URL
    (re.compile(r"(/[^\s?\"'<>]*)\?[^\s\"'<>#]+"), r"\1?[query]"),
    (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "[email]"),
    # IBAN, compact or in groups of four (NL91 ABNA 0417 1643 00)
    (re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"), "[iban]"),
    # pass numbers (GR0000007; a search may send them in lower case)
    (re.compile(r"(?i)\b[A-Z]{2}\d{7}\b"), "[pass]"),
    # IP addresses; not in a URL (http://127.0.0.1:8545): that is a server's, from the settings
    (re.compile(r"(?<!://)\b(?:\d{1,3}\.){3}\d{1,3}\b"), "[ip]"),
    (re.compile(r"(?<!//)\[([0-9A-Fa-f:.]{2,45})\]"), _ipv6),
    (re.compile(r"(?<![\w:./\[])([0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7})(?![\w:\]])"), _ipv6),
    # dates: ISO, Dutch (17-05-1980 or 17/05/1980) and Python's repr
    (re.compile(r"\b\d{4}-\d{1,2}-\d{1,2}\b"), "[date]"),
    (re.compile(r"\b\d{1,2}[-/]\d{1,2}[-/]\d{4}\b"), "[date]"),
    (re.compile(r"\bdate(?:time)?\(\d{4}, \d{1,2}, \d{1,2}[^)]*\)"), "[date]"),
    # Dutch postcodes as the registry keeps them (9711AB, 9711 AB)
    (re.compile(r"\b[1-9]\d{3} ?[A-Z]{2}\b"), "[postcode]"),
)
_URL = re.compile(r"(?:https?|wss?)://")


def _quoted(match: re.Match[str]) -> str:
    text = match.group(0)
    if _URL.match(text, 1):
        return text
    return f"{text[0]}[redacted]{text[0]}"


#: Applied to exception messages (and exception arguments) before :data:`PATTERNS`.
EXCEPTION_PATTERNS: Final[tuple[tuple[re.Pattern[str], _Replacement], ...]] = (
    # SQLAlchemy appends the statement's parameters: the values themselves
    (re.compile(r"\[parameters: [^\n]*"), "[parameters: [redacted]]"),
    # pydantic's ValidationError repeats the input
    (re.compile(r"input_value=.*?, input_type="), "input_value=[redacted], input_type="),
    (re.compile(r"(?:input|value|values|params|parameters)=\{[^\n]*\}"), "[redacted]"),
    # repr()s of strings, the way exceptions quote the values they are about; a quoted URL (a
    # node's, from the settings) stays, scrubbed by PATTERNS like any text
    (re.compile(r"'(?:[^'\\\n]|\\.)*'"), _quoted),
    (re.compile(r'"(?:[^"\\\n]|\\.)*"'), _quoted),
)


def scrub(text: str) -> str:
    """``text`` with everything that looks like personal data or a credential replaced."""
    for pattern, replacement in PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def scrub_exception_message(text: str) -> str:
    """An exception's message, scrubbed harder than a log message: quoted values go too."""
    for pattern, replacement in EXCEPTION_PATTERNS:
        text = pattern.sub(replacement, text)
    return scrub(text)


def _exception_line(exc: BaseException) -> str:
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ not in ("builtins", "__main__"):
        name = f"{kind.__module__}.{name}"
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not break logging
        message = "<unprintable>"
    lines = [f"{name}: {scrub_exception_message(message)}" if message else name]
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, list):
        lines.extend(scrub_exception_message(str(note)) for note in notes)
    return "\n".join(lines) + "\n"


_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def format_exception(exc: BaseException) -> str:
    """A traceback like :func:`traceback.format_exception`'s, chained causes included, whose
    frames are kept (file, line, function, source line) and whose messages are scrubbed."""
    chain: list[tuple[BaseException, str]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    link = ""
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            current, link = current.__cause__, _CAUSE
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = current.__context__, _CONTEXT
        else:
            current = None
    parts: list[str] = []
    for index in range(len(chain) - 1, -1, -1):
        error = chain[index][0]
        if index < len(chain) - 1:
            parts.append(chain[index + 1][1])
        if error.__traceback__ is not None:
            parts.append("Traceback (most recent call last):\n")
            parts.extend(traceback.format_tb(error.__traceback__))
        parts.append(_exception_line(error))
    return "".join(parts).rstrip("\n")


def _scrub_formatted_traceback(text: str) -> str:
    # an already formatted traceback: frames are indented, exception lines are not
    return "\n".join(
        line if line.startswith((" ", "Traceback ")) else scrub_exception_message(line)
        for line in text.split("\n")
    )


def _argument(value: object) -> object:
    if isinstance(value, BaseException):
        return scrub_exception_message(str(value))
    return value


class PrivacyFilter(logging.Filter):
    """Drops uvicorn's access records; rewrites every other record without personal data.

    The record is changed in place (message rendered and scrubbed, arguments cleared,
    traceback formatted and scrubbed), so every handler after this one sees the clean record
    too. A record is scrubbed once, however many handlers carry the filter.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(DROPPED_LOGGERS):
            return False
        if getattr(record, "privacy_scrubbed", False):
            return True
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(_argument(a) for a in args)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep the template only
            message = str(record.msg)
        record.msg = scrub(message)
        record.args = ()
        # uvicorn's coloured formatter re-renders this from the original arguments
        record.__dict__.pop("color_message", None)
        if record.exc_info is not None and record.exc_info[1] is not None:
            record.exc_text = format_exception(record.exc_info[1])
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = _scrub_formatted_traceback(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        record.privacy_scrubbed = True
        return True


def logging_config(level: str = "info") -> dict[str, Any]:
    """The ``logging.config.dictConfig`` of ``stadjerspas up``: one stderr handler on the root
    logger with :class:`PrivacyFilter`; :data:`SERVICE_LOGGERS` (``api.access`` too) at
    ``level``, everything else at warning; uvicorn's access log without handlers, not
    propagated. Every logger propagates to the root, so nothing bypasses the filter."""
    name = level.upper()
    if name == "TRACE":  # uvicorn's level below debug
        name = "DEBUG"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"privacy": {"()": PrivacyFilter}},
        "formatters": {"plain": {"format": FORMAT}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "plain",
                "filters": ["privacy"],
            }
        },
        "loggers": {
            **{
                logger: {"level": name, "handlers": [], "propagate": True}
                for logger in SERVICE_LOGGERS
            },
            "uvicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
        },
        "root": {"level": "WARNING", "handlers": ["stderr"]},
    }


def configure_logging(level: str = "info") -> None:
    """Install :func:`logging_config` (call it before anything logs)."""
    logging.config.dictConfig(logging_config(level))
