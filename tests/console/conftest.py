from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from syncctl.bus import Users
from tests.console.helpers import Room, make_users, open_room


@pytest.fixture(scope="module")
def users() -> Users:
    return make_users()


@pytest_asyncio.fixture
async def room(users: Users) -> AsyncIterator[Room]:
    async for opened in open_room(users):
        yield opened
