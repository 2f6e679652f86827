"""HTTP tools as an agent carries them: the definition, its checks, the JSON the model is given, and the
validation of the arguments the model sends back.

A tool is an HTTP endpoint: `url` is a template whose `{placeholders}` name required parameters (substituted
URL-quoted, in the path only); the other arguments go to the query string (GET, DELETE) or to a JSON body.
Headers are literal, or `{"secret": "NAME"}`: the value of `Settings.tool_secrets[NAME]`, looked up at call
time, so a definition (stored in the agent's row) never holds a secret.

JSON Schemas are checked with jsonschema (Draft 2020-12) and references resolve only inside the schema: a
remote `$ref` is refused when the tool is defined and, with an empty `referencing.Registry`, never fetched.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema
import referencing
import referencing.exceptions
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from agent_service.errors import ToolDefinitionError
from agent_service.jsonschemas import NOTHING_REMOTE, check_local_references
from agent_service.tools.addresses import ipv4_spelling_problem
from agent_service.tools.allowlist import DEFAULT_PORTS, host_allowed

NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"  # what OpenAI accepts as a function name
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an RFC 9110 token
# Headers the caller sets for each request (or that would change where and how it goes): not the tool's.
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "idempotency-key"})


class HttpMethod(str, enum.Enum):
    """The methods a tool may use."""

    GET = "GET"
    POST = "POST"
    PUT = "PUT"
    PATCH = "PATCH"
    DELETE = "DELETE"

    @property
    def sends_body(self) -> bool:
        """Whether the arguments not in the URL go to a JSON body (else to the query string)."""
        return self in (HttpMethod.POST, HttpMethod.PUT, HttpMethod.PATCH)


class SecretHeader(BaseModel):
    """A header whose value is `Settings.tool_secrets[secret]`, looked up at call time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    secret: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$")


class ToolDefinition(BaseModel):
    """One HTTP tool of an agent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    description: str
    parameters: dict[str, Any]
    method: HttpMethod
    url: str
    headers: dict[str, str | SecretHeader] = Field(default_factory=dict)
    idempotent: bool = True
    requires_approval: bool = False
    timeout_seconds: float | None = Field(None, gt=0)

    @field_validator("description")
    @classmethod
    def _description_is_not_blank(cls, description: str) -> str:
        if not description.strip():
            raise ValueError("must not be blank")
        return description

    @field_validator("parameters")
    @classmethod
    def _parameters_are_an_object_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
        if schema.get("type") != "object":
            raise ValueError('must be a JSON Schema with "type": "object"')
        check_local_references(schema)
        return schema

    @field_validator("url")
    @classmethod
    def _url_is_a_template_over_the_parameters(cls, url: str, info: ValidationInfo) -> str:
        parts = urlsplit(_PLACEHOLDER.sub("x", url))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not hold credentials; send them in a secret header")
        _ = parts.port  # raises ValueError on a bad port
        problem = ipv4_spelling_problem(parts.hostname)
        if problem:
            raise ValueError(f"host {problem}")
        try:
            httpx.URL(_PLACEHOLDER.sub("x", url))
        except httpx.InvalidURL as exc:
            raise ValueError(f"the HTTP client cannot send to it: {exc}") from None
        if any(brace in _PLACEHOLDER.sub("", url) for brace in "{}"):
            raise ValueError("has a brace that is not part of a {placeholder}")
        path = _path_span(url)
        if any(not path[0] <= found.start() < path[1] for found in _PLACEHOLDER.finditer(url)):
            raise ValueError("placeholders are allowed in the path only")
        schema: dict[str, Any] = info.data.get("parameters") or {}  # absent when the schema itself was refused
        for name in _PLACEHOLDER.findall(url) if schema else ():
            if name not in schema.get("properties", {}):
                raise ValueError(f"placeholder {{{name}}} is not a parameter")
            if name not in schema.get("required", []):
                raise ValueError(f"placeholder {{{name}}} must be a required parameter")
        return url

    @field_validator("headers", mode="before")
    @classmethod
    def _header_values_are_text_or_secret_names(cls, headers: object) -> object:
        if not isinstance(headers, dict):
            return headers  # pydantic's own message
        for name, value in headers.items():
            if isinstance(value, dict) and SecretHeader.model_fields.keys() == value.keys():
                try:
                    SecretHeader.model_validate(value)
                    continue
                except ValidationError:
                    pass
            if not isinstance(value, str):
                raise ValueError(f'{name}: must be a string or {{"secret": "NAME"}} (letters, digits, _ . -)')
        return headers

    @field_validator("headers")
    @classmethod
    def _headers_are_sendable(cls, headers: dict[str, str | SecretHeader]) -> dict[str, str | SecretHeader]:
        for name, value in headers.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a header name")
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"{name} is set by the service, not by a tool")
            if isinstance(value, str) and ("\r" in value or "\n" in value):
                raise ValueError(f"{name}: a header value must be one line")
        return headers

    @property
    def host(self) -> str:
        """The host the URL template names."""
        return urlsplit(_PLACEHOLDER.sub("x", self.url)).hostname or ""

    @property
    def port(self) -> int:
        """The port the URL template names, else its scheme's default."""
        parts = urlsplit(_PLACEHOLDER.sub("x", self.url))
        return parts.port or DEFAULT_PORTS[parts.scheme]

    @property
    def placeholders(self) -> tuple[str, ...]:
        """The parameters substituted into the URL, in order."""
        return tuple(_PLACEHOLDER.findall(self.url))

    @property
    def secret_names(self) -> tuple[str, ...]:
        """The names of the settings' tool secrets this tool's headers use."""
        return tuple(value.secret for value in self.headers.values() if isinstance(value, SecretHeader))


def parse_tools(raw: Sequence[object], *, allowed_hosts: Sequence[str] | None = None) -> tuple[ToolDefinition, ...]:
    """The tools of `raw` (a JSON list of definitions); with `allowed_hosts` (normalised, as
    `tools.allowlist.parse_allowed_hosts` gives them), each tool's host must match one of them.
    Raises: ToolDefinitionError naming every bad tool and field (`tools[1].url: placeholder {id} is not a
    parameter`), duplicate names and hosts outside the allowlist included."""
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)):
        raise ToolDefinitionError("tools: must be a list of tool definitions")
    tools: list[ToolDefinition] = []
    problems: list[str] = []
    for index, entry in enumerate(raw):
        try:
            tool = ToolDefinition.model_validate(entry)
        except ValidationError as exc:
            problems += [f"tools[{index}]{_location(error['loc'])}: {_message(error)}" for error in exc.errors()]
            continue
        if any(tool.name == seen.name for seen in tools):
            problems.append(f"tools[{index}].name: {tool.name!r} is defined twice")
        if allowed_hosts is not None and not host_allowed(tool.host, allowed_hosts, port=tool.port):
            problems.append(f"tools[{index}].url: host {tool.host} is not in the agent's allowed_hosts")
        tools.append(tool)
    if problems:
        raise ToolDefinitionError("; ".join(problems))
    return tuple(tools)


def openai_tool(tool: ToolDefinition) -> dict[str, Any]:
    """The OpenAI function-tool JSON that tells the model about `tool` (what `bind_tools` accepts as is)."""
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters},
    }


def validate_arguments(tool: ToolDefinition, arguments: object) -> str | None:
    """None when `arguments` fit the tool's parameters schema, else what is wrong, readable by the model
    (`order_id: 'abc' is not of type 'integer'; ...`). No reference outside the schema is ever fetched."""
    if not isinstance(arguments, Mapping):
        return f"arguments must be a JSON object, not {type(arguments).__name__}"
    validator = jsonschema.Draft202012Validator(tool.parameters, registry=NOTHING_REMOTE)
    try:
        errors = sorted(validator.iter_errors(dict(arguments)), key=lambda error: list(error.absolute_path))
        if not errors:
            return None
    except referencing.exceptions.Unresolvable as exc:
        return f"the tool's schema has a reference that cannot be resolved: {exc}"
    return "; ".join(f"{_argument_path(error.json_path)}: {error.message}" for error in errors)


def _argument_path(json_path: str) -> str:
    """`order_id` or `items[0].sku` for jsonschema's `$.order_id`; `arguments` for the whole object."""
    return json_path.removeprefix("$").removeprefix(".") or "arguments"


def _path_span(url: str) -> tuple[int, int]:
    """Where the path of `url` starts and ends (before its query or fragment)."""
    start = url.find("/", url.find("://") + 3)
    if start < 0:
        return len(url), len(url)
    ends = [found for found in (url.find("?", start), url.find("#", start)) if found >= 0]
    return start, min(ends, default=len(url))


def _location(loc: tuple[int | str, ...]) -> str:
    return "".join(f".{part}" for part in loc)


def _message(error: Any) -> str:
    message: str = error["msg"]
    return message.removeprefix("Value error, ")
