"""The live dataflow, importable by ``python -m bytewax.run engine.live:get_flow()``.

Settings come from the environment (``CHURNFLOW_*``), so several processes
started with ``-i``/``-a`` build the same flow.
"""

from __future__ import annotations

from bytewax.dataflow import Dataflow

from engine.connectors.effects_sink import effects_sink
from engine.connectors.kafka import DeadLetterSink, events_source
from engine.connectors.recall_sink import RecallSink
from engine.connectors.redis_sink import RedisSink
from engine.flow import FlowSinks, build_flow
from engine.settings import Settings
from engine.triggers.stage import RulesBook


def get_flow() -> Dataflow:
    settings = Settings()
    sinks = FlowSinks(
        redis=RedisSink(settings.redis_url, settings.key_prefix),
        dead_letter=DeadLetterSink(settings.brokers, settings.dead_letter_topic),
        recalls=RecallSink(settings.redis_url, settings.key_prefix),
        effects=effects_sink(settings.redis_url, settings.key_prefix),
    )
    RulesBook(settings.rules_dir).preload()
    source = events_source(settings.brokers, settings.events_topic)
    return build_flow(source, sinks, settings)
