"""The HTTP API (`python cli.py api`): an ASGI app on the same functions `create_agent_task`, the command line and
`follow_agent_task` use, for applications in any language. Every `/v1` request carries an API key bound to one
tenant, which is the `user_id` of what it submits and the only tasks it sees.

`app` builds the app; `problems` turns every error into RFC 9457 problem details; `keys` authenticates and
rate-limits a request; `schemas` are the documented bodies; `tasks`, `events` (Server-Sent Events) and `probes`
(`/healthz`, `/readyz`) are the routes."""
