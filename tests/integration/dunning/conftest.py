"""Fixtures of the dunning tests: ``book``, an empty store with the company's calendar (Mon-Fri
in Europe/Berlin, Good Friday and 1 May off) and a ``Book`` to fill it."""
from __future__ import annotations

import pytest

from middleware.models import Company
from tests.support.dunning import HOLIDAYS, Book


@pytest.fixture
def book(db) -> Book:
    Company.create(name="Acme Cloud", timezone="Europe/Berlin", business_days="Mon,Tue,Wed,Thu,Fri", holidays=HOLIDAYS)
    return Book()
