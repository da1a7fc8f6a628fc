"""Moving a store's contents out and in: the export stream (its records,
protos/chronicle/v1/export.proto; its files, ``stream``), the ``Exporter``
that reads a store into it and the ``Importer`` that writes it into
another, resumably. Both work below encryption at rest, on what the store
holds (``Store.transfer`` and the adapter's own roles)."""
