"""The agent's side: the policy's allowlist as LLM tool definitions, and an MCP server.

- ``tools``: one format-neutral definition (:class:`ToolSpec`) per exported tool, built from
  the compiled policy (the agent's tools, tenants and the registry).
- ``export``: those definitions rendered for OpenAI, Anthropic, MCP or plain JSON Schema.
- ``calls``: a tool call's arguments -> the MQTT message it stands for (and its reply topics).
- ``link``: an asyncio MQTT 5 client of the guard that reports each PUBACK's reason.
- ``mcp_server``: the MCP server that runs tool calls through the guard (extra ``mcp``).
- ``cli``: ``iot-guard tools export`` and ``iot-guard mcp``.
"""
