"""HTTP tool definitions: what an agent may carry (and the error naming the tool and field when it may not),
the JSON the model is given, and the validation of the arguments the model sends back, with no reference
outside the schema ever fetched."""

from __future__ import annotations

import copy

import pytest

from agent_service.errors import ToolDefinitionError
from agent_service.tools.allowlist import host_allowed, origin_allowed, parse_allowed_hosts
from agent_service.tools.definitions import ToolDefinition, openai_tool, parse_tools, validate_arguments
from tests.network_audit import attempts

ORDER = {
    "name": "get_order",
    "description": "Look up an order by its id.",
    "parameters": {
        "type": "object",
        "properties": {"order_id": {"type": "string"}, "verbose": {"type": "boolean"}},
        "required": ["order_id"],
        "additionalProperties": False,
    },
    "method": "GET",
    "url": "https://api.example.com/orders/{order_id}",
    "headers": {"Authorization": {"secret": "ORDERS_TOKEN"}, "Accept": "application/json"},
}


def tool(**changes) -> dict:
    definition = copy.deepcopy(ORDER)
    definition.update(changes)
    return definition


def test_a_valid_tool_is_parsed_with_its_defaults():
    [parsed] = parse_tools([ORDER], allowed_hosts=("api.example.com",))
    assert (parsed.name, parsed.method.value, parsed.host) == ("get_order", "GET", "api.example.com")
    assert (parsed.idempotent, parsed.requires_approval, parsed.timeout_seconds) == (True, False, None)
    assert parsed.placeholders == ("order_id",) and parsed.secret_names == ("ORDERS_TOKEN",)


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        (tool(name="get order"), "tools[1].name: String should match pattern"),
        (tool(name="x" * 65), "tools[1].name: String should match pattern"),
        (tool(description="  "), "tools[1].description: must not be blank"),
        (tool(parameters={"type": "array"}), 'tools[1].parameters: must be a JSON Schema with "type": "object"'),
        (tool(parameters={"type": "objekt"}), "tools[1].parameters: not a valid JSON Schema"),
        (
            tool(url="https://api.example.com/orders/{id}"),
            "tools[1].url: placeholder {id} is not a parameter",
        ),
        (
            tool(url="https://api.example.com/orders/{verbose}"),
            "tools[1].url: placeholder {verbose} must be a required parameter",
        ),
        (tool(url="https://{order_id}.example.com/"), "tools[1].url: placeholders are allowed in the path only"),
        (tool(url="https://api.example.com/o?id={order_id}"), "tools[1].url: placeholders are allowed in the path"),
        (tool(url="ftp://api.example.com/orders"), "tools[1].url: must be an http:// or https:// URL with a host"),
        (tool(url="https://user:pw@api.example.com/"), "tools[1].url: must not hold credentials"),
        (tool(url="https://api.example.com/{order_id"), "tools[1].url: has a brace that is not part of"),
        (tool(method="TRACE"), "tools[1].method: Input should be 'GET', 'POST', 'PUT', 'PATCH' or 'DELETE'"),
        (tool(headers={"X-Key": {"secret": "has space"}}), 'tools[1].headers: X-Key: must be a string or {"secret"'),
        (tool(headers={"X-Key": {"secret": "K", "x": 1}}), 'tools[1].headers: X-Key: must be a string or {"secret"'),
        (tool(headers={"X-Key": {"value": "K"}}), 'tools[1].headers: X-Key: must be a string or {"secret"'),
        (tool(headers={"X-Key": 42}), 'tools[1].headers: X-Key: must be a string or {"secret"'),
        (tool(headers={"Host": "evil.example"}), "tools[1].headers: Host is set by the service, not by a tool"),
        (tool(headers={"X-Key": "a\r\nX-Other: b"}), "tools[1].headers: X-Key: a header value must be one line"),
        (tool(timeout_seconds=0), "tools[1].timeout_seconds: Input should be greater than 0"),
        (tool(colour="blue"), "tools[1].colour: Extra inputs are not permitted"),
        ({**ORDER, "url": "https://evil.example.net/orders/{order_id}"}, "tools[1].url: host evil.example.net is not"),
    ],
)
def test_a_bad_tool_is_refused_with_its_index_and_field(definition, message):
    other = tool(name="other")
    with pytest.raises(ToolDefinitionError) as refused:
        parse_tools([other, definition], allowed_hosts=("api.example.com",))
    assert message in str(refused.value)


def test_every_problem_of_every_tool_is_named_at_once():
    with pytest.raises(ToolDefinitionError) as refused:
        parse_tools([tool(name="a b"), tool(method="TRACE", description="")])
    problems = str(refused.value).split("; ")
    assert [problem.split(":")[0] for problem in problems] == [
        "tools[0].name",
        "tools[1].description",
        "tools[1].method",
    ]


def test_two_tools_of_one_name_are_refused():
    with pytest.raises(ToolDefinitionError, match=r"tools\[1\].name: 'get_order' is defined twice"):
        parse_tools([ORDER, ORDER])


def test_tools_must_be_a_list():
    with pytest.raises(ToolDefinitionError, match="tools: must be a list"):
        parse_tools("get_order")  # type: ignore[arg-type]


def test_a_schema_with_a_remote_reference_is_refused_when_the_tool_is_defined():
    remote = {"type": "object", "properties": {"a": {"$ref": "https://schemas.example.com/a.json"}}}
    with pytest.raises(
        ToolDefinitionError,
        match=r"parameters: .*'https://schemas.example.com/a.json' is not a reference within the schema",
    ):
        parse_tools([tool(parameters=remote, url="https://api.example.com/orders")])


def test_the_model_is_given_the_openai_function_tool_json():
    [parsed] = parse_tools([ORDER])
    assert openai_tool(parsed) == {
        "type": "function",
        "function": {"name": "get_order", "description": ORDER["description"], "parameters": ORDER["parameters"]},
    }


def test_valid_arguments_pass_and_invalid_ones_are_described_for_the_model():
    [parsed] = parse_tools([ORDER])
    assert validate_arguments(parsed, {"order_id": "A-1", "verbose": True}) is None
    assert validate_arguments(parsed, {"verbose": "yes"}) == (
        "arguments: 'order_id' is a required property; verbose: 'yes' is not of type 'boolean'"
    )
    assert validate_arguments(parsed, {"order_id": "A-1", "extra": 1}) == (
        "arguments: Additional properties are not allowed ('extra' was unexpected)"
    )
    assert validate_arguments(parsed, ["A-1"]) == "arguments must be a JSON object, not list"


def test_local_references_resolve():
    schema = {
        "type": "object",
        "$defs": {"id": {"type": "string", "pattern": "^A-"}},
        "properties": {"order_id": {"$ref": "#/$defs/id"}},
        "required": ["order_id"],
    }
    [parsed] = parse_tools([tool(parameters=schema)])
    assert validate_arguments(parsed, {"order_id": "A-1"}) is None
    assert validate_arguments(parsed, {"order_id": "B-1"}) == "order_id: 'B-1' does not match '^A-'"


def test_a_remote_reference_is_never_fetched_while_validating():
    # Given a tool whose schema (stored before the definition-time check, say) refers to a remote schema
    schema = {"type": "object", "properties": {"a": {"$ref": "http://127.0.0.1:9/a.json"}}}
    remote = ToolDefinition.model_construct(**{**tool(url="https://api.example.com/"), "parameters": schema})
    # When arguments are validated against it
    with attempts() as tried:
        problem = validate_arguments(remote, {"a": 1})
    # Then the reference is reported unresolvable, and nothing was fetched or even connected to
    assert problem is not None and "cannot be resolved" in problem
    assert tried == []


def test_allowed_hosts_match_exact_names_and_wildcard_subdomains():
    allowed = parse_allowed_hosts(["API.example.com.", "*.tools.example.org", "127.0.0.1", "[::1]"])
    assert allowed == ("api.example.com", "*.tools.example.org", "127.0.0.1", "::1")

    def matches(host: str) -> bool:
        return host_allowed(host, allowed, port=443)

    assert matches("api.example.com") and matches("API.EXAMPLE.COM")
    assert matches("a.tools.example.org") and matches("a.b.tools.example.org")
    assert matches("127.0.0.1") and matches("::1")
    assert not matches("tools.example.org")  # the wildcard covers names below it only
    assert not matches("eviltools.example.org")
    assert not matches("api.example.com.evil.net")
    assert not matches("example.com")


def test_an_allowed_host_may_carry_a_port():
    allowed = parse_allowed_hosts(["api.example.com:8443", "*.tools.example.org:9000", "[::1]:8080", "other.example"])
    assert allowed == ("api.example.com:8443", "*.tools.example.org:9000", "[::1]:8080", "other.example")
    # A tool's own URL: the host, and the port when the entry names one
    assert host_allowed("api.example.com", allowed, port=8443) and not host_allowed(
        "api.example.com", allowed, port=443
    )
    assert host_allowed("a.tools.example.org", allowed, port=9000) and host_allowed("::1", allowed, port=8080)
    assert host_allowed("other.example", allowed, port=8443)  # an entry without a port: the tool's URL at any port
    # A redirect to another origin: host and port, an entry without a port meaning the scheme's default port
    assert origin_allowed("https", "api.example.com", 8443, allowed)
    assert not origin_allowed("https", "api.example.com", 443, allowed)
    assert origin_allowed("https", "other.example", 443, allowed) and origin_allowed(
        "http", "other.example", 80, allowed
    )
    assert not origin_allowed("https", "other.example", 8443, allowed)
    assert not origin_allowed("http", "other.example", 443, allowed)
    assert not origin_allowed("http", "::1", 80, allowed) and origin_allowed("http", "::1", 8080, allowed)


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("*", "would allow every host"),
        ("*.com", "a wildcard must stand below a domain of two labels"),
        ("api.*.example.com", "a wildcard is allowed only as the first label"),
        ("https://api.example.com", "is not a host name"),
        ("api.example.com/v1", "is not a host name"),
        ("api.example.com:0", "the port must be a number from 1 to 65535"),
        ("api.example.com:65536", "the port must be a number from 1 to 65535"),
        ("api.example.com:https", "the port must be a number from 1 to 65535"),
        ("[::1]:", "the port must be a number from 1 to 65535"),
        ("a:b:c", "is not a host name"),
        ("0177.0.0.1", "0177.0.0.1 is the IPv4 address 127.0.0.1 written in another form; write 127.0.0.1"),
        ("", "must be a host name"),
    ],
)
def test_a_bad_allowed_host_is_refused_by_its_index(pattern, message):
    with pytest.raises(ToolDefinitionError, match=rf"allowed_hosts\[1\]: .*{message}"):
        parse_allowed_hosts(["api.example.com", pattern])


# Every spelling the C resolver (inet_aton) reads as an address: one number, octal or hex parts, fewer parts.
@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("0177.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0x7F.0.0.1", "127.0.0.1"),
        ("0177.0x0.0.01", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.1", "127.0.0.1"),
        ("10.0.0.010", "10.0.0.8"),
        ("0251.0376.0251.0376", "169.254.169.254"),
    ],
)
def test_a_tool_url_with_an_ipv4_address_in_another_form_is_refused_when_the_tool_is_defined(host, address):
    # Given a tool whose URL names an address as the resolver would read it, but not as four decimal numbers
    definition = tool(url=f"http://{host}:8080/orders/{{order_id}}")
    # When it is defined, its host allowed as written
    with pytest.raises(ToolDefinitionError) as refused:
        parse_tools([definition], allowed_hosts=(host.lower(),))
    # Then it is refused, naming the address it stands for (not left to fail at every call)
    assert (
        str(refused.value)
        == f"tools[0].url: host {host.lower()} is the IPv4 address {address} written in another form; write {address}"
    )


@pytest.mark.parametrize("host", ["1.2.3.08", "1.2.3.4.5", "api.example.0x1"])
def test_a_tool_url_whose_host_ends_in_a_number_must_be_an_ipv4_address(host):
    with pytest.raises(ToolDefinitionError, match=rf"tools\[0\].url: host {host} ends in a number but is not an IPv4"):
        parse_tools([tool(url=f"http://{host}/orders/{{order_id}}")])


def test_dotted_quads_and_names_with_digits_are_accepted():
    for url in ("http://127.0.0.1:8080/orders/{order_id}", "https://v2.api.example.com/{order_id}"):
        [parsed] = parse_tools([tool(url=url)])
        assert parsed.url == url


def test_a_tool_url_the_http_client_cannot_send_is_refused_when_the_tool_is_defined():
    with pytest.raises(ToolDefinitionError, match=r"tools\[0\].url: the HTTP client cannot send to it: Invalid IDNA"):
        parse_tools([tool(url="https://a\u200b.example.com/orders/{order_id}")])
