"""Request bodies -> one `ReportRequest`: multipart uploads, JSON with base64 images, OpenAI chat messages.

Parsing is strict where a typo would silently change the result (an unknown field of /v1/reports is an
error, not ignored) and lenient where clients send more than we use (OpenAI chat fields we do not honour
are ignored). Multipart bodies are parsed in memory with python-multipart's streaming parser, because
Starlette's form parser spools large files to a temporary file and uploads must never touch the disk.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

from echocxr.backbones.prompt import PROMPTS
from echocxr.backbones.settings import DECODERS
from echocxr.serving.decode_upload import decode_base64_image


class ApiError(Exception):
    """An HTTP error answered as {"error": {"message", "type"}}; the message is one line, safe to show."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.headers = headers


# decode settings a request may change, with their parser (the rest is fixed by the server's command line)
_OVERRIDES = {"decoder": str, "max_new_tokens": int, "steps": int, "threshold": float, "temperature": float,
              "seed": int, "refine": float}
REPORT_FIELDS = ("images", "lang", "instruction", "stream", "format", *_OVERRIDES)


@dataclass
class ReportRequest:
    images: list[bytes] = field(default_factory=list)
    lang: str = "en"
    instruction: str | None = None  # None: the model's official prompt for `lang`
    overrides: dict = field(default_factory=dict)
    stream: bool = False
    include_usage: bool = False  # chat streaming: send a usage chunk at the end
    format: str | None = None  # /v1/reports output: text | json | fhir | dicom-sr (None: the Accept header's)


def parse_json(body: bytes) -> dict:
    """Strict JSON: no NaN/Infinity literals, bounded nesting, no lone surrogates in strings."""
    if not body.strip():
        raise ApiError(400, "empty request body (expected JSON or multipart/form-data)")
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except RecursionError:
        raise ApiError(400, f"malformed JSON: nested more than {MAX_JSON_DEPTH} levels deep") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"malformed JSON: {exc.msg if hasattr(exc, 'msg') else _one_line(exc)}") from None
    except ValueError as exc:  # e.g. an integer literal past Python's 4300-digit conversion limit
        digits = "integer string conversion" in str(exc)
        raise ApiError(400, "malformed JSON: an integer literal has too many digits" if digits
                       else f"malformed JSON: {_one_line(exc)}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    _check_json_values(data)
    return data


MAX_JSON_DEPTH = 32  # the deepest valid request (chat content parts) is 5 levels
_SURROGATE = re.compile("[\ud800-\udfff]")


def _no_constant(name: str) -> float:
    raise ApiError(400, f"malformed JSON: {name} is not a JSON value")


def _check_json_values(data: object) -> None:
    """Refuse what would fail later, deep in a handler: nesting past MAX_JSON_DEPTH, lone surrogates
    (valid JSON escapes, but not Unicode text: no tokenizer or UTF-8 encoder takes them)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ApiError(400, f"malformed JSON: nested more than {MAX_JSON_DEPTH} levels deep")
        if isinstance(value, dict):
            for k, v in value.items():
                stack.append((k, depth))
                stack.append((v, depth + 1))
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, str) and _SURROGATE.search(value):
            raise ApiError(400, "malformed JSON: a string holds a lone UTF-16 surrogate (not Unicode text)")


def report_from_json(data: dict) -> ReportRequest:
    """/v1/reports JSON: {"images": [base64 or data: URI, ...], "lang", "decoder", ...}."""
    unknown = sorted(set(data) - set(REPORT_FIELDS))
    if unknown:
        raise ApiError(400, f"unknown field {_show(unknown[0])} (allowed: {', '.join(REPORT_FIELDS)})")
    images = data.get("images", [])
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list):
        raise ApiError(400, "'images' must be a list of base64 strings or data: URIs")
    req = ReportRequest(images=[decode_base64_image(v) for v in images])
    _common_fields(req, data)
    req.stream = _as_bool("stream", data.get("stream", False))
    req.format = report_format(data.get("format"))
    return req


def report_from_multipart(body: bytes, content_type: str) -> ReportRequest:
    """/v1/reports multipart/form-data: files in `images` (repeat it for more views) + text fields."""
    return report_from_form(parse_multipart(body, content_type))


def report_from_urlencoded(body: bytes) -> ReportRequest:
    """A form without files (application/x-www-form-urlencoded): only settings, so it fails on 'no image'."""
    from urllib.parse import parse_qsl

    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=100)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, f"malformed form body: {exc}") from None
    return report_from_form([(k, None, v.encode()) for k, v in pairs])


def report_from_form(parts: list[tuple[str, str | None, bytes]]) -> ReportRequest:
    fields: dict[str, str] = {}
    req = ReportRequest()
    for name, filename, data in parts:
        if name in ("images", "image"):
            req.images.append(data)
        elif name in REPORT_FIELDS and filename is None:
            try:
                fields[name] = data.decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(400, f"form field {name!r} is not UTF-8 text") from None
        else:
            raise ApiError(400, f"unknown form field {_show(name)} (send views as 'images' files; "
                                f"other fields: {', '.join(REPORT_FIELDS[1:])})")
    _common_fields(req, fields, from_form=True)
    req.stream = _as_bool("stream", fields.get("stream", False))
    req.format = report_format(fields.get("format"))
    return req


def report_from_chat(data: dict) -> ReportRequest:
    """OpenAI chat completion request: images as `image_url` data URIs in the user messages' content."""
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list")
    req = ReportRequest()
    text = ""
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg:
            raise ApiError(400, f"messages[{i}] must be an object with a 'role'")
        if msg["role"] != "user":
            continue  # system / assistant turns do not change how the model writes a report
        content = msg.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list):
            raise ApiError(400, f"messages[{i}].content must be a string or a list of content parts")
        texts = []
        for j, part in enumerate(parts):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise ApiError(400, f"messages[{i}].content[{j}].text must be a string")
                texts.append(part["text"])
            elif kind == "image_url":
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                if not isinstance(url, str):
                    raise ApiError(400, f"messages[{i}].content[{j}].image_url.url must be a string")
                req.images.append(decode_base64_image(url))
            else:
                raise ApiError(400, f"messages[{i}].content[{j}]: unsupported content part type {kind!r} "
                                    "(use 'text' or 'image_url')")
        text = "\n".join(t for t in texts if t.strip())  # the last user turn's text is the instruction
    n = data.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int)):
        raise ApiError(400, f"'n' must be an integer, got {_show(n)}")
    if n not in (None, 1):
        raise ApiError(400, "only n=1 is supported")
    fields = {k: data[k] for k in ("lang", "decoder", "steps", "threshold", "temperature", "seed") if k in data}
    limit = data.get("max_completion_tokens", data.get("max_tokens"))
    if limit is not None:
        fields["max_new_tokens"] = limit
    if text.strip():
        fields["instruction"] = text.strip()
    _common_fields(req, fields)
    req.stream = _as_bool("stream", data.get("stream", False))
    opts = data.get("stream_options") or {}
    req.include_usage = isinstance(opts, dict) and _as_bool("include_usage", opts.get("include_usage", False))
    return req


def parse_multipart(body: bytes, content_type: str) -> list[tuple[str, str | None, bytes]]:
    """(field name, filename or None, data) for each part, parsed in memory."""
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "multipart body without a boundary")
    parts: list[dict] = []
    state = {"field": b"", "value": b""}

    def on_part_begin() -> None:
        parts.append({"headers": {}, "data": bytearray()})

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        parts[-1]["headers"][state["field"].lower()] = state["value"]
        state["field"] = state["value"] = b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1]["data"] += data[start:end]

    parser = MultipartParser(boundary, {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                                        "on_header_value": on_header_value, "on_header_end": on_header_end,
                                        "on_part_data": on_part_data})
    try:
        parser.write(body)
        parser.finalize()
    except (FormParserError, ValueError) as exc:
        raise ApiError(400, f"malformed multipart body: {exc}") from None
    out = []
    for part in parts:
        _, disp = parse_options_header(part["headers"].get(b"content-disposition", b""))
        name = disp.get(b"name")
        if name is None:
            raise ApiError(400, "multipart part without a field name")
        filename = disp.get(b"filename")
        out.append((name.decode("utf-8", "replace"), None if filename is None else filename.decode("utf-8", "replace"),
                    bytes(part["data"])))
    return out


def _common_fields(req: ReportRequest, data: dict, from_form: bool = False) -> None:
    lang = data.get("lang", "en")
    if not isinstance(lang, str) or lang not in PROMPTS:
        raise ApiError(400, f"unknown language {_show(lang)} (use one of: {', '.join(PROMPTS)})")
    req.lang = lang
    instruction = data.get("instruction")
    if instruction is not None and not isinstance(instruction, str):
        raise ApiError(400, "'instruction' must be a string")
    req.instruction = instruction or None
    for name, kind in _OVERRIDES.items():
        if data.get(name) is None:
            continue
        req.overrides[name] = _override(name, kind, data[name], from_form)
    decoder = req.overrides.get("decoder")
    if decoder is not None and decoder not in DECODERS:
        raise ApiError(400, f"unknown decoder {_show(decoder)} (use one of: {', '.join(DECODERS)})")


def _override(name: str, kind: type, value: object, from_form: bool) -> object:
    """One decode setting, typed; ranges are the engine's to check (DecodeConfig.validate)."""
    if kind is str:
        if not isinstance(value, str):
            raise ApiError(400, f"{name!r} must be a string")
        return value
    what = "an integer" if kind is int else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)) or (
            isinstance(value, str) and not from_form):
        raise ApiError(400, f"{name!r} must be {what}")
    if isinstance(value, str) and len(value) > 100:
        raise ApiError(400, f"{name!r} must be {what} (got {len(value)} characters)")
    try:
        number = float(value) if kind is float else value
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise ApiError(400, f"{name!r} must be {what}") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise ApiError(400, f"{name!r} must be a finite number, got {value}")
    return number


def _show(value: object, limit: int = 40) -> str:
    """A client's value quoted for an error message: one line, short."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    return msg if len(msg) <= 160 else msg[:157] + "..."


def report_format(value: object) -> str | None:
    """The report format a request names (field or query; None: not named), checked against the formats."""
    from echocxr.clinical.formats import FORMATS

    if value is None or value == "":
        return None
    if not isinstance(value, str) or value not in FORMATS:
        raise ApiError(400, f"unknown format {_show(value)} (use one of: {', '.join(FORMATS)})")
    return value


def _as_bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no", ""):
        return value.lower() in ("1", "true", "yes")
    raise ApiError(400, f"{name!r} must be true or false")
