"""Tools that check or show the device runtime but never run on a device in service.

- ``bench``: latency of the shipped models side by side, or the whole chain per stage;
- ``calibrate``: per-|yaw|-bin accept thresholds of an identity model on real CFP pairs;
- ``demo`` and ``demo_people``: the landmark chain on real photos, and ``edge.app.run``
  recognising real people it never trained on (``make demo``);
- ``faults``: the fault-injection campaign on real parts; ``fuzz``: the property-based fuzzer
  of every parser and loader that reads untrusted input.

They import the device's code (``edge.core``, ``edge.storage``, ``edge.app``); nothing on the
device imports them. The user-facing ones are ``poseface`` commands (``edge.cli``) and keep
their ``python -m edge.NAME`` forms through thin aliases beside the device's packages.
"""
