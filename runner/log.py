"""Run log: human text or one JSON object per line (``--log-format json``).

A :class:`Log` is created by the CLI and passed down; nothing logs through module state.
Messages go to stderr except ``out`` (command results such as ``status`` tables or the
dry-run SQL plan), which goes to stdout so it can be piped.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO


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

    def _emit(self, level: str, msg: str, fields: dict[str, Any]) -> None:
        if self.secrets:
            msg = self.redact(msg)
            fields = {k: self.redact(v) if isinstance(v, str) else v for k, v in fields.items()}
        if self.fmt == "json":
            record = {"ts": round(time.time(), 3), "level": level, "msg": msg, **fields}
            self.stream.write(json.dumps(record, default=str, ensure_ascii=False) + "\n")
        else:
            prefix = "" if level == "info" else f"{level}: "
            self.stream.write(f"{prefix}{msg}\n")
        self.stream.flush()

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
