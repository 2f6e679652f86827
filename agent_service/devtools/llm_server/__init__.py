"""Offline OpenAI-compatible chat server for tests, demos and benchmarks.

It answers ``/v1/chat/completions`` deterministically (plain text, JSON mode and JSON schemas, tool calls,
streaming, usage with cached prompt tokens) after a configurable latency; it injects faults, plays scripted
replies one per model turn, and enforces its own rate limits, all set through the ``/control`` API. Run it
with ``python -m agent_service.devtools.llm_server --port 0`` (`devtools.processes.llm_server` does).

The map, from the request inwards:

- ``__main__``: the command line (port, latency, seed, rate limits) and the startup line it prints.
- ``app``: the aiohttp application and its routes, ``/v1/models`` and ``/health``.
- ``completions``: ``POST /v1/chat/completions``, the order of one request: choose what answers it, admit
  it, wait, answer, log.
- ``chat``: the request as read (model, messages' texts and roles, tools) and its validation.
- ``replies``: the default reply (text, the format asked for, a tool call) or a scripted one.
- ``structured``: sample values for JSON schemas (``response_format``, tool arguments).
- ``responses``: a reply as OpenAI sends it, one JSON body or a stream of server-sent chunks.
- ``usage``: tokens (words), ``usage`` and the prompt cache.
- ``faults``: fault kinds, read from headers, rules and ``[[mock:KIND]]`` directives, and their responses.
- ``scripts``: scripted replies, registered by name and chosen by header, rule or ``[[script:NAME]]``.
- ``rules``: the ``/control/faults`` rules that answer matching requests with a fault or a script.
- ``rate_limits``: requests and tokens per minute, per model or for all, as leaky buckets; the 429 they send.
- ``control``: the ``/control`` API: rules, scripts, config, the request log, stats, reset.
- ``state``: what the server keeps between requests.
- ``errors`` and ``validation``: OpenAI-style error bodies and the checks on what clients send.
"""
