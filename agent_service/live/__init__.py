"""Live output: a running task's progress (its streamed tokens, its steps, how it ended) on one bounded Redis
stream per task, for whoever follows it (`python cli.py follow`, a web app's server-sent events).

`events.py` names the keys and the events, `publisher.py` writes them from the worker, `tokens.py` writes a
call's tokens from the LLM process, `follow.py` reads them. A task nobody follows gets no stream.
"""
