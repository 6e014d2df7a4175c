"""What the device keeps on disk.

- ``gallery``: the SQLite gallery of enrolled identities and their face templates;
- ``keys``: the gallery key (a file or a systemd credential) and the AES-256-GCM sealing of
  templates at rest;
- ``face_store``: face crops kept on disk only when privacy settings allow, with retention.

It imports nothing of the recognition core, the service shell or the tools.
"""
