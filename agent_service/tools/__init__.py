"""Agent tools: HTTP endpoints an agent's model may call (the `api` task kind).

definitions.py  a tool's definition and its checks, the JSON the model sees, argument validation
allowlist.py    the host names an agent's tools may reach
addresses.py    which resolved addresses a call may connect to, and the resolver
targets.py      where a checked request goes: host, port and origin on the wire, the address it connects to
http.py         call_tool: one guarded outbound call (aiohttp, loaded with the first call)
outcomes.py     ToolOutcome: what a call came to, as the model sees it

Plain functions with no Celery and no database: the agent loop that runs model turns and records steps
calls `call_tool` and stores what it returns.
"""
