"""The store contract, as a test suite any store can run: the behaviour
every ``StoreAdapter`` (service/store/base.py) must have, one module per
role. Chronicle runs it on its memory, SQLite and PostgreSQL stores
(tests/contract/); a third-party store runs it with the pytest plugin::

    pytest -p service.store_contract.plugin --pyargs service.store_contract \\
        --chronicle-store-url 'mystore://{tmp}/data'

where the URL's scheme is one the store registers in the ``chronicle.stores``
entry points and ``{tmp}`` a fresh folder for each test (docs/stores.md).
A store that needs more to start each test from nothing (a database of its
own per test, say) gives the ``store`` fixture itself, in a plugin of its
own passed with another ``-p``.
"""
