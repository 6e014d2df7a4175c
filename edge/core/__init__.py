"""The recognition core: one frame in, faces and events out.

- ``faces``: a detection -> landmarks -> head pose -> aligned crop -> embedding (the chain
  training and quantization reuse, so a model is scored by the code that runs it);
- ``pipeline``: detect -> landmarks -> pose and align -> embed -> match -> track -> events for
  one frame, a plain object whose state is the tracks;
- ``tracker``: IoU tracks and the evidence that decides a track's identity;
- ``matching``: pose-aware gallery matching (a cosine threshold per |yaw| bin);
- ``events``: the event documents the pipeline emits (JSON Schema: ``event_schema.json``).

It builds on the model-level packages beside it (``detect``, ``landmarks``, ``geometry``,
``runtime``) and reads gallery arrays from ``edge.storage``; it never imports the service
shell (``edge.app``) or the tools.
"""
