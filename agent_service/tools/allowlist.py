"""An agent's allowed hosts: the only hosts its tools may call, checked when the agent is created and again
at every hop of every call (`tools.http`).

A pattern is an exact host name (`api.example.com`, or an IP address written as the URL writes it), or
`*.example.com`, which allows every name below example.com (at any depth) but not example.com itself; either
may carry a port (`api.example.com:8443`, `[::1]:8443`). A tool's own URL needs a pattern naming its host,
at its port if the pattern has one (`host_allowed`). A redirect to another origin than the tool's needs a
pattern naming that origin's host and port, a pattern without a port standing for the scheme's default
port, 443 or 80 (`origin_allowed`): an allowed API cannot send a call on to another service on its host.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator, Sequence

from agent_service.errors import ToolDefinitionError
from agent_service.tools.addresses import ipv4_spelling_problem

# A DNS name's labels (letters, digits, hyphens; no leading or trailing hyphen).
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_NAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise_host(host: str) -> str:
    """A host as allowlists compare it: lower case, without a trailing dot or IPv6 brackets."""
    return host.strip().lower().rstrip(".").removeprefix("[").removesuffix("]")


def parse_allowed_hosts(raw: Iterable[object]) -> tuple[str, ...]:
    """The patterns of `raw`, normalised (`api.example.com`, `api.example.com:8443`, `::1`, `[::1]:8443`).
    Raises: ToolDefinitionError naming each bad entry (`allowed_hosts[2]: ...`)."""
    patterns, problems = [], []
    for index, entry in enumerate(raw):
        try:
            host, port = _parse_pattern(entry)
        except ValueError as exc:
            problems.append(f"allowed_hosts[{index}]: {exc}")
            continue
        shown = f"[{host}]" if ":" in host else host
        patterns.append(host if port is None else f"{shown}:{port}")
    if problems:
        raise ToolDefinitionError("; ".join(problems))
    return tuple(dict.fromkeys(patterns))


def host_allowed(host: str, allowed_hosts: Sequence[str], *, port: int) -> bool:
    """Whether a tool's own URL, at `host` and `port`, matches one of the (normalised) patterns: by host,
    and by port when the pattern names one."""
    return any(_host_matches(host, pattern) and named in (None, port) for pattern, named in _patterns(allowed_hosts))


def origin_allowed(scheme: str, host: str, port: int, allowed_hosts: Sequence[str]) -> bool:
    """Whether a redirect may go to this origin: a pattern names its host, and its port (a pattern without
    one names the scheme's default port)."""
    default = DEFAULT_PORTS.get(scheme)
    return any(
        _host_matches(host, pattern) and (named or default) == port for pattern, named in _patterns(allowed_hosts)
    )


def _patterns(allowed_hosts: Sequence[str]) -> Iterator[tuple[str, int | None]]:
    """Each normalised pattern as its host pattern and port."""
    for pattern in allowed_hosts:
        host, _, port = pattern.rpartition(":") if _has_port(pattern) else (pattern, "", "")
        yield normalise_host(host), int(port) if port else None


def _has_port(pattern: str) -> bool:
    return pattern.count(":") == 1 or (pattern.startswith("[") and "]:" in pattern)


def _host_matches(host: str, pattern: str) -> bool:
    host = normalise_host(host)
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def _parse_pattern(entry: object) -> tuple[str, int | None]:
    """The normalised host pattern and port of one entry. Raises: ValueError saying what is wrong."""
    if not isinstance(entry, str) or not entry.strip():
        raise ValueError("must be a host name such as api.example.com or *.example.com, optionally with :port")
    text = entry.strip().lower()
    host, port = text, None
    if "/" not in text and _has_port(text):
        host, _, written = text.rpartition(":")
        if not (written.isascii() and written.isdigit() and 1 <= int(written) <= 65535):
            raise ValueError(f"{entry!r}: the port must be a number from 1 to 65535")
        port = int(written)
    problem = _pattern_problem(entry, normalise_host(host))
    if problem:
        raise ValueError(problem)
    return normalise_host(host), port


def _pattern_problem(entry: str, pattern: str) -> str | None:
    name = pattern.removeprefix("*.")
    if pattern == "*":
        return "'*' would allow every host; name the hosts, or a domain's names as *.example.com"
    if "*" in name:
        return f"{entry!r}: a wildcard is allowed only as the first label (*.example.com)"
    if pattern.startswith("*.") and "." not in name:
        return f"{entry!r}: a wildcard must stand below a domain of two labels at least (*.example.com)"
    if not (_NAME.match(name) or _is_ipv6(name)):
        return f"{entry!r} is not a host name with an optional port (no scheme or path: api.example.com:8443)"
    return ipv4_spelling_problem(name)


def _is_ipv6(name: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(name), ipaddress.IPv6Address)
    except ValueError:
        return False
