"""Commands to try, made from an app's own event types and projections (`bus up`'s panel).

A sample event has every required field filled by its type, so the `bus publish` shown
is accepted as printed; the projection key shown is the one that event would land on.
"""

from __future__ import annotations

import json
import shlex
from typing import Any, get_args, get_origin

import msgspec

from bus import App, Envelope, Event, matches

SAMPLES: dict[Any, Any] = {str: "hello", int: 1, float: 1.5, bool: True}


def sample_value(annotation: Any) -> Any:
    """A value msgspec accepts for `annotation` (None where we cannot tell)."""
    if annotation in SAMPLES:
        return SAMPLES[annotation]
    origin = get_origin(annotation) or annotation
    if origin in (list, tuple, set, frozenset):
        return []
    if origin is dict:
        return {}
    if isinstance(origin, type) and issubclass(origin, msgspec.Struct):
        return sample_fields(origin)
    options = [a for a in get_args(annotation) if a is not type(None)]
    return sample_value(options[0]) if options else None


def sample_fields(cls: type[msgspec.Struct]) -> dict[str, Any]:
    return {f.encode_name: sample_value(f.type) for f in msgspec.structs.fields(cls) if f.required}


def try_commands(app: App) -> list[str]:
    """`bus publish` of the app's first event type, a tail of its stream, and a read of the
    projection that event feeds (or the projection list); for an app with workflows, a run
    of its first one."""
    if app.workflows:
        name, workflow = next(iter(app.workflows.items()))
        sample = sample_value(workflow.input_type)
        return [
            f"bus workflows start {name} {shlex.quote(json.dumps(sample))} --wait",
            "bus workflows list",
            f"bus workflows runs {name}",
        ]
    event_types = [cls for cls in app.registry if cls.__domain__ and cls.__event_name__]
    if not event_types:
        return ["bus streams", "bus components"]
    cls = event_types[0]
    aggregate_id = f"{cls.__domain__[0]}1"
    subject = f"{cls.__domain__}.{aggregate_id}.{cls.__event_name__}"
    fields = sample_fields(cls)
    commands = [
        f"bus publish {subject} {shlex.quote(json.dumps(fields))}",
        f"bus tail {shlex.quote(cls.__domain__ + '.>')} --from-seq 1",
    ]
    for projection in app.projections.values():
        if any(matches(pattern, subject) for pattern in projection.subjects):
            key = _key_of(projection.key, cls, fields, subject)
            if key is not None:
                commands.append(f"bus projections get {projection.name} {shlex.quote(key)}")
                return commands
    return [*commands, "bus projections list"] if app.projections else commands


def _key_of(key: Any, cls: type[Event], fields: dict[str, Any], subject: str) -> str | None:
    """The key the projection gives the sample event (None if its key function objects)."""
    try:
        event = msgspec.convert(fields, cls)
        envelope = Envelope(
            event=event, id="sample", subject=subject, occurred_at="", correlation_id=""
        )
        found = key(envelope)
    except Exception:  # a user's key function may expect more than a sample has
        return None
    return found if isinstance(found, str) and found else None
