"""Safe YAML reading for planning inputs, with errors that name the file and YAML path.

BOMs and plans come from registries and people, so loading is defensive: a size cap, no anchors
or aliases (a few lines of `*a` can expand to gigabytes), and one-line errors instead of tracebacks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from transship.cachedir import cache_dir
from transship.errors import PlanError
from transship.fsutil import write_atomic

if TYPE_CHECKING:  # imported on first use: a single `copy SRC DST` reads no YAML
    import yaml

MAX_INPUT_BYTES = 16 * 1024 * 1024
#: a plan file may be larger: `plan` writes some 300 bytes per entry (digest, size, origins),
#: five times what its image list took, and an archive carries up to this much (`layout`'s
#: MAX_EXTRA_BYTES); `plan` refuses to write one it could not read back
MAX_PLAN_BYTES = 64 * 1024 * 1024
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")

log = logging.getLogger("transship.cache")

#: `load_yaml(keep=True)`: documents at least this long are kept parsed, as JSON
KEEP_FROM_CHARS = 16 * 1024
#: parsed documents kept (the newest; a plan is rewritten as a whole, so older ones go stale)
KEEP_AT_MOST = 8
#: and at most this many bytes of them in all (the oldest go first; the newest always stays)
KEEP_BYTES = 64 * 1024 * 1024
#: a `.<key>.json.*.tmp` left this long (seconds) by a killed write is removed by the next scan
STALE_TMP_AGE = 3600
#: part of every kept document's key and header: ANY change of what parsing gives back (the
#: loaders, the alias refusal, what JSON keeps) must bump it, or old results would be served
_KEEP_FORMAT = 2


@cache
def _loader() -> type[yaml.SafeLoader]:
    """libyaml's parser where PyYAML has it (its wheels do): the same documents as the
    pure-Python one at a tenth of the CPU and two thirds of the memory, which a plan of
    thousands of entries pays on every `copy --plan`, no-op reruns included."""
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@cache
def _dumper() -> type[yaml.SafeDumper]:
    """libyaml's emitter where PyYAML has it (see `_loader`)."""
    import yaml

    return getattr(yaml, "CSafeDumper", yaml.SafeDumper)


#: an input file given as `-`: standard input (`xargs`-style pipelines), named `<stdin>` in
#: messages and origins (a file really named `-` is `./-`)
STDIN = "-"


def input_name(path: Path | str) -> str:
    """How messages and plan origins name an input file (`<stdin>` for `-`)."""
    return "<stdin>" if str(path) == STDIN else str(path)


def read_text(path: Path | str, limit: int = MAX_INPUT_BYTES) -> str:
    """Read a UTF-8 input file (or standard input for `-`), refusing huge ones before they
    reach the parser."""
    where = input_name(path)
    try:
        if str(path) == STDIN:
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(path, "rb") as handle:
                data = handle.read(limit + 1)
    except OSError as exc:
        raise PlanError(f"{where}: cannot read: {exc.strerror or exc}; check the path") from None
    if len(data) > limit:
        raise PlanError(f"{where}: larger than {limit} bytes; is this the right file?")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PlanError(f"{where}: not UTF-8 text (byte {exc.start}); give a text file") from None


@cache
def _unique_loader() -> type[yaml.SafeLoader]:
    """`_loader`, refusing a key given twice in one mapping (PyYAML keeps the last silently):
    two plans concatenated into one file (`cat a.yaml b.yaml`) would otherwise copy only the
    second one's entries and report success."""
    import yaml

    class UniqueKeyLoader(_loader()):  # type: ignore[misc]
        def construct_mapping(
            self, node: yaml.MappingNode, deep: bool = False
        ) -> dict[object, object]:
            lines: dict[str, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                first = lines.get(key_node.value)
                lines.setdefault(key_node.value, key_node.start_mark.line)
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"key {key_node.value!r} given twice (first on line {first + 1}): two "
                        "files joined into one? keep one of them, or merge the lists under it",
                        key_node.start_mark,
                    )
            mapping: dict[object, object] = super().construct_mapping(node, deep=deep)
            return mapping

    return UniqueKeyLoader


def load_yaml(
    text: str,
    name: str,
    *,
    keep: bool = False,
    unique_keys: bool = False,
    limit: int = MAX_INPUT_BYTES,
) -> Node:
    """Parse one YAML document with a safe loader after rejecting anchors and aliases.
    `unique_keys`: a key given twice in one mapping is an error (transship's own files).

    `keep`: a large document (a plan, read again by every `copy --plan` rerun) is kept parsed
    in the cache (`$XDG_CACHE_HOME/transship/parsed`), as JSON under the sha256 of its text,
    and read back from there while the text is the same: ~2 ms instead of importing PyYAML
    and parsing (~75 ms for a 277-entry plan). Only a value JSON holds exactly is kept."""
    if len(text) > limit:
        raise PlanError(f"{name}: larger than {limit} bytes; is this the right file?")
    kept = _kept_path(text, unique_keys) if keep and len(text) >= KEEP_FROM_CHARS else None
    if kept is not None:
        found = _read_kept(kept)
        if found is not None:
            _touch(kept)
            return Node(name, "", found)
    node = _parse(text, name, unique_keys=unique_keys)
    if kept is not None:
        _keep(kept, node.value)
    return node


def _kept_path(text: str, unique_keys: bool) -> Path | None:
    """Named by the sha256 of the text, of how it was read and of `_KEEP_FORMAT`: a document
    kept from a read that let a key repeat is never taken for one read with `unique_keys`, nor
    one kept by another parse behaviour."""
    directory = cache_dir("parsed")
    if directory is None:
        return None
    digest = hashlib.sha256(text.encode())
    digest.update(f"\0format={_KEEP_FORMAT}".encode())
    if unique_keys:
        digest.update(b"\0unique-keys")
    return directory / f"{digest.hexdigest()}.json"


def _read_kept(path: Path) -> object | None:
    """The value kept for the text whose sha256 names `path`: a header line (the format, that
    sha256, the sha256 of the body), then the value as JSON. None if absent, from another
    format or damaged (the body's sha256 is checked)."""
    try:
        header, _, body = path.read_bytes().partition(b"\n")
        doc = json.loads(header)
        if doc["format"] != _KEEP_FORMAT or doc["text"] != path.stem:
            raise ValueError("another format or document")
        if hashlib.sha256(body).hexdigest() != doc["body"]:
            raise ValueError("checksum mismatch")
        value: object = json.loads(body)
        return value
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.debug("parsed document %s not used: %s", path, exc)
    return None


def _touch(path: Path) -> None:
    """A hit makes the document the newest: the plan every run rereads is evicted last."""
    try:
        os.utime(path)
    except OSError as exc:
        log.debug("parsed document %s not touched: %s", path, exc)


def _keep(path: Path, value: object) -> None:
    """Keep `value` if JSON holds it exactly (a cache: a file that cannot be written is
    skipped), and only the newest `KEEP_AT_MOST` documents, `KEEP_BYTES` in all."""
    try:
        if not _json_exact(value):
            return
        body = json.dumps(value, ensure_ascii=False).encode()
    except (ValueError, RecursionError):  # never worth failing a run over
        return
    header = {"format": _KEEP_FORMAT, "text": path.stem, "body": hashlib.sha256(body).hexdigest()}
    try:
        write_atomic(path, json.dumps(header).encode() + b"\n" + body, private=True)
        _evict(path)
    except OSError as exc:
        log.debug("parsed document not kept in %s: %s", path.parent, exc)


def _evict(newest: Path) -> None:
    """Drop the oldest documents beyond `KEEP_AT_MOST` or `KEEP_BYTES` (never `newest`, just
    written), and temporary files a killed write left more than `STALE_TMP_AGE` ago."""
    now = time.time()
    documents: list[tuple[float, int, Path]] = []
    for entry in newest.parent.iterdir():
        try:
            info = entry.stat()
        except FileNotFoundError:  # another run removed it meanwhile
            continue
        if entry.name.startswith(".") and entry.name.endswith(".tmp"):
            if now - info.st_mtime > STALE_TMP_AGE:
                entry.unlink(missing_ok=True)
        elif entry.suffix == ".json" and entry != newest:
            documents.append((info.st_mtime, info.st_size, entry))
    documents.sort()
    total = newest.stat().st_size + sum(size for _, size, _ in documents)
    count = len(documents) + 1
    for _, size, old in documents:
        if count <= KEEP_AT_MOST and total <= KEEP_BYTES:
            break
        old.unlink(missing_ok=True)
        count -= 1
        total -= size


def _json_exact(value: object) -> bool:
    """Whether JSON gives `value` back as it is (YAML also has dates, sets, non-string keys)."""
    if value is None or isinstance(value, str | bool | int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_json_exact(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_exact(v) for k, v in value.items())
    return False


def _parse(text: str, name: str, *, unique_keys: bool) -> Node:
    import yaml

    try:
        _reject_aliases(text, name)
        value = yaml.load(text, Loader=_unique_loader() if unique_keys else _loader())
    except yaml.MarkedYAMLError as exc:
        raise PlanError(_describe_yaml_error(exc, name)) from None
    except yaml.YAMLError as exc:
        raise PlanError(f"{name}: invalid YAML: {_one_line(str(exc))}") from None
    except RecursionError:
        raise PlanError(f"{name}: YAML nested too deeply; is this the right file?") from None
    return Node(name, "", value)


def _reject_aliases(text: str, name: str) -> None:
    """Scan tokens (cheap, nothing is expanded) and refuse anchors and aliases."""
    if "&" not in text and "*" not in text:  # neither can be written without its sign
        return
    import yaml

    for token in yaml.scan(text, Loader=_loader()):
        if isinstance(token, yaml.AliasToken | yaml.AnchorToken):
            sign = "*" if isinstance(token, yaml.AliasToken) else "&"
            raise PlanError(
                f"{name}:{token.start_mark.line + 1}: YAML anchors and aliases "
                f"({sign}{token.value}) are not accepted here; write the values out in full"
            )


def dump_yaml(doc: object) -> str:
    """Block YAML in the order given (safe dumper); strings that look like numbers are quoted."""
    import yaml

    return yaml.dump(
        doc, Dumper=_dumper(), sort_keys=False, allow_unicode=True, width=4096, indent=2
    )


def _describe_yaml_error(exc: yaml.MarkedYAMLError, name: str) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"{name}:{mark.line + 1}" if mark is not None else name
    what = " ".join(part for part in (exc.context, exc.problem) if part)
    return f"{where}: invalid YAML: {_one_line(what or 'cannot parse')}; fix the file"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _describe_type(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({value!r})"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


@dataclass(frozen=True)
class Node:
    """A value inside a loaded document, with the file and YAML path to report errors against."""

    file: str
    path: str
    value: object

    def error(self, what: str) -> PlanError:
        return PlanError(f"{self.file}: {self.path or '(top level)'}: {what}")

    def _child_path(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        if not _BARE_KEY.match(key):
            return f'{self.path}["{key}"]'
        return f"{self.path}.{key}" if self.path else key

    def mapping(self) -> dict[str, object]:
        """The value as a mapping with string keys."""
        if not isinstance(self.value, dict):
            raise self.error(f"expected a mapping, found {_describe_type(self.value)}")
        for key in self.value:
            if not isinstance(key, str):
                raise self.error(f"key {key!r} must be a string; quote it")
        return self.value

    def has(self, key: str) -> bool:
        return isinstance(self.value, dict) and key in self.value

    def get(self, key: str) -> Node | None:
        """The child at `key`, or None when it is absent or null."""
        value = self.mapping().get(key)
        return None if value is None else Node(self.file, self._child_path(key), value)

    def child(self, key: str, hint: str = "") -> Node:
        """The child at `key`; missing or null is an error (with an optional hint on what to do)."""
        found = self.get(key)
        if found is None:
            path = self._child_path(key)
            tail = f"; {hint}" if hint else ""
            raise PlanError(f"{self.file}: {path}: missing{tail}")
        return found

    def items(self) -> Iterator[tuple[str, Node]]:
        """Entries of a mapping, in document order."""
        for key, value in self.mapping().items():
            yield key, Node(self.file, self._child_path(key), value)

    def elements(self) -> Iterator[Node]:
        """Entries of a list (null counts as empty)."""
        if self.value is None:
            return
        if not isinstance(self.value, list):
            raise self.error(f"expected a list, found {_describe_type(self.value)}")
        for index, value in enumerate(self.value):
            yield Node(self.file, self._child_path(index), value)

    def string(self) -> str:
        """A non-empty string; numbers are refused because YAML may already have changed them."""
        if not isinstance(self.value, str):
            found = _describe_type(self.value)
            hint = "; quote it" if isinstance(self.value, int | float) else ""
            raise self.error(f"expected a string, found {found}{hint}")
        if not self.value.strip():
            raise self.error("must not be empty")
        return self.value

    def text(self) -> str:
        """Any scalar as text, for descriptive fields (OVA names, AMI regions)."""
        if isinstance(self.value, dict | list):
            raise self.error(f"expected a single value, found {_describe_type(self.value)}")
        return "" if self.value is None else str(self.value)

    def only_keys(self, allowed: frozenset[str]) -> None:
        """Refuse unknown keys, so that typos in hand-edited files do not pass silently."""
        for key in self.mapping():
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                raise PlanError(
                    f"{self.file}: {self._child_path(key)}: unknown key; expected one of {known}"
                )
