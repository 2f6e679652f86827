"""An agent's allowed hosts: the only host names its tools may call, checked when the agent is created and
again at every hop of every call (`tools.http`).

A pattern is an exact host name (`api.example.com`, or an IP address written as the URL writes it), or
`*.example.com`, which allows every name below example.com (at any depth) but not example.com itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from agent_service.errors import ToolDefinitionError
from agent_service.tools.addresses import ipv4_spelling_problem

# A DNS name's labels (letters, digits, hyphens; no leading or trailing hyphen), or an IP address literal.
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_NAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_IPV6 = re.compile(r"^[0-9a-f:.]+$")


def normalise_host(host: str) -> str:
    """A host as allowlists compare it: lower case, without a trailing dot or IPv6 brackets."""
    return host.strip().lower().rstrip(".").removeprefix("[").removesuffix("]")


def parse_allowed_hosts(raw: Iterable[object]) -> tuple[str, ...]:
    """The patterns of `raw`, normalised.
    Raises: ToolDefinitionError naming each bad entry (`allowed_hosts[2]: ...`)."""
    patterns, problems = [], []
    for index, entry in enumerate(raw):
        problem = _pattern_problem(entry)
        if problem:
            problems.append(f"allowed_hosts[{index}]: {problem}")
        else:
            patterns.append(normalise_host(str(entry)))
    if problems:
        raise ToolDefinitionError("; ".join(problems))
    return tuple(dict.fromkeys(patterns))


def host_allowed(host: str, allowed_hosts: Sequence[str]) -> bool:
    """Whether `host` matches one of the (normalised) patterns."""
    host = normalise_host(host)
    for pattern in allowed_hosts:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


def _pattern_problem(entry: object) -> str | None:
    if not isinstance(entry, str) or not entry.strip():
        return "must be a host name such as api.example.com or *.example.com"
    pattern = normalise_host(entry)
    name = pattern.removeprefix("*.")
    if pattern == "*":
        return "'*' would allow every host; name the hosts, or a domain's names as *.example.com"
    if "*" in name:
        return f"{entry!r}: a wildcard is allowed only as the first label (*.example.com)"
    if pattern.startswith("*.") and "." not in name:
        return f"{entry!r}: a wildcard must stand below a domain of two labels at least (*.example.com)"
    if not (_NAME.match(name) or (":" in name and _IPV6.match(name))):
        return f"{entry!r} is not a host name (no scheme, port or path: api.example.com)"
    return ipv4_spelling_problem(name)
