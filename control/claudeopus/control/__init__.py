"""ClaudeOpus control plane: accounts, keys, budgets and usage behind a grpc.aio server.

Layout:

- ``settings``: the typed settings object, read once.
- ``models``: Tortoise ORM models; ``migrations``: the schema history.
- ``db``: connection configuration, migrations on start.
- ``domain``: the rules (keys, hierarchy, gateway, usage); no grpc import.
- ``services``: grpc servicers that translate protos to domain calls and back.
- ``server``: assembles the grpc.aio server (health, reflection) and runs it.
"""

from claudeopus.control.settings import ControlSettings

__all__ = ["ControlSettings"]
