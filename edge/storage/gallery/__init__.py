"""The gallery: a SQLite file of enrolled identities and their face templates.

- :mod:`~edge.storage.gallery.store`: :class:`~edge.storage.gallery.store.Gallery`, an open
  gallery: reads (identities, templates, the arrays matching needs), writes (each one
  transaction, encrypted with a key), import and export, the integrity check;
- :mod:`~edge.storage.gallery.schema`: the file: its SQLite schema, versions and pragmas, and
  what opening a file checks (a gallery, a version this program reads, the right key);
- :mod:`~edge.storage.gallery.records`: the records that go in and come out (``Template``,
  ``Identity``, ``GalleryArrays``, ...), the checks on names, yaws and embeddings, and
  ``GalleryError``;
- :mod:`~edge.storage.gallery.exchange`: the export file (``poseface.gallery`` JSON lines),
  written atomically and read back validated.
"""
