"""A resume's event id is compared with the stored event's in the canonical
form of their UUID: an import may have kept an event's id in upper case
(imports take any form of a UUID and store it as given), and a subscriber
sends it back in the form the API hands on (canonical, as Subscribe decodes
it). The same event either way; another one is a rewind still."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from service.errors import LogRewound
from service.plugins.registry import Registry
from service.processing.subscriptions import SubscriptionRequest, Subscriptions
from service.processing.upcasting import EventReader
from service.store.memory import MemoryStore
from tests.support.events import new_event


async def test_an_event_stored_with_an_upper_case_id_is_the_one_its_canonical_id_names() -> None:
    stored_id = uuid.uuid4()
    store = MemoryStore()
    await store.append("thing-1", [dataclasses.replace(new_event(), event_id=str(stored_id).upper())], 0)
    await store.append("thing-1", [new_event()], 1)
    subscriptions = Subscriptions(store, EventReader(Registry([])))
    for sent in (str(stored_id), str(stored_id).upper()):
        await subscriptions.open(SubscriptionRequest(after_position=1, after_event_id=sent))  # not refused
    with pytest.raises(LogRewound):
        await subscriptions.open(SubscriptionRequest(after_position=1, after_event_id=str(uuid.uuid4())))
