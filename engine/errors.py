"""churnflow's exceptions.

One root, a short tree::

    ChurnflowError
    ├── ConfigError          settings or a rules file that cannot be used
    ├── EventDecodeError     raw bytes that are not a canonical event (engine.events)
    ├── ServiceError         a broker or redis-server that cannot be started or reached
    └── WebhookError         a webhook that fails verification or normalisation (api)
"""

from __future__ import annotations


class ChurnflowError(Exception):
    """Root of every error churnflow raises on purpose."""


class ConfigError(ChurnflowError):
    """Settings or a rules file that cannot be used; the message names the field."""


class ServiceError(ChurnflowError):
    """A service (broker, redis-server) could not be started, stopped or reached."""
