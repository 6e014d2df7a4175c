"""The service shell: the program around the recognition core that runs on a device.

- ``run``: the run loop (``poseface run``): frame source -> pipeline -> sinks, with the systemd
  protocol, health and the face store; ``enroll``: the gallery's command (``poseface enroll``);
- ``config``: the runtime config, one TOML file validated at start, with device profiles;
- ``service``: sd_notify, the watchdog, credentials and the choice of execution providers;
- ``health`` and ``metrics_prom``: the JSON health endpoint and Prometheus metrics;
- ``sinks``: where events go (stdout, JSON lines, MQTT, webhook); ``homeassistant``: MQTT
  discovery for Home Assistant.

It uses ``edge.core``, ``edge.storage`` and the packages beside them; nothing below imports it.
"""
