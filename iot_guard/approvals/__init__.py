"""Held actions: approval requests bound to their exact bytes, levels and escalation (pure),
the service that resolves holds and carries approved actions out, and staged rollouts.

- ``chains``: which approvers decide at which level, and for how long (from the policy)
- ``request``: one request as a pure state machine driven by ``now``
- ``rollout``: a staged rollout as a pure state machine (device states, canary, abort)
- ``executor``: the guard's own MQTT connection that publishes approved actions
- ``runner``: paces a rollout on the loop (asyncio-throttle), timers and results
- ``service``: ``ApprovalService`` (the admin API's contract), persistence, notifications
- ``webhooks``: signed JSON POSTs of every transition, delivered in the background
- ``addon``: the server hooks (``on_hold``, ``on_guard_subscribe``, start/stop)
"""
