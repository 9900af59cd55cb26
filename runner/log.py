"""Run log: human text or one JSON object per line (``--log-format json``).

A :class:`Log` is created by the CLI and passed down; nothing logs through module state.

Streams, as sequelize-cli uses them (scripts ``| grep`` its stdout): progress and results
(``info``) go to ``info_stream``, which the CLI points at stdout; warnings and errors go to
``stream`` (stderr). ``out`` is a command's result (tables, SQL plans, JSON documents): always
stdout. When stdout carries a document (``--json``, ``--dry-run``) the CLI points
``info_stream`` at stderr so the document stays parseable. Library callers that pass only
``stream`` get everything on it.

JSON records: ``ts`` is ISO-8601 UTC with milliseconds (``2026-11-26T12:43:57.123Z``);
durations are integer milliseconds (``duration_ms``); the same stream rule applies.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Log:
    fmt: str = "text"  # "text" | "json"
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    out_stream: TextIO = field(default_factory=lambda: sys.stdout)
    quiet: bool = False
    #: Passwords migrunner knows (every connection source, DB_PASSWORD, PGPASSWORD): removed
    #: from every line written, SQL plans of a dry run included.
    secrets: list[str] = field(default_factory=list)

    def redact(self, text: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            if secret not in text:
                continue
            if len(secret) >= 4:
                text = text.replace(secret, "***")
            else:  # a very short one only as a word of its own, or every line is garbled
                text = re.sub(rf"(?<!\w){re.escape(secret)}(?!\w)", "***", text)
        return text

    info_stream: TextIO | None = None  # None: same as ``stream``

    def _emit(self, level: str, msg: str, fields: dict[str, Any]) -> None:
        target = (self.info_stream or self.stream) if level == "info" else self.stream
        if self.secrets:
            msg = self.redact(msg)
            fields = {k: self.redact(v) if isinstance(v, str) else v for k, v in fields.items()}
        if self.fmt == "json":
            record = {"ts": iso_now(), "level": level, "msg": msg, **fields}
            target.write(json.dumps(record, default=str, ensure_ascii=False) + "\n")
        else:
            prefix = "" if level == "info" else f"{level}: "
            target.write(f"{prefix}{msg}\n")
        target.flush()

    def info(self, msg: str, **fields: Any) -> None:
        if not self.quiet:
            self._emit("info", msg, fields)

    def warn(self, msg: str, **fields: Any) -> None:
        self._emit("warning", msg, fields)

    def error(self, msg: str, **fields: Any) -> None:
        self._emit("error", msg, fields)

    def out(self, text: str) -> None:
        """Command output (tables, SQL plans, JSON documents): always stdout."""
        if self.secrets:
            text = self.redact(text)
        self.out_stream.write(text if text.endswith("\n") else text + "\n")
        self.out_stream.flush()
