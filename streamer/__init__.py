"""callmon streamer: the live path from a platform's audio to alerts in Redis.

    ingest/       transports (websocket, AudioSocket TCP) and one adapter per platform;
                  protocol.py: the call start and frame decoding they share; limits.py
      ↓ StreamStart, float frames
    calls.py      a live call: per-channel windowing.py (resampling, 3 s windows, voice gate)
      ↓ speech windows
    scheduler.py  batches windows into the model (models.EmotionModel)
      ↓ probabilities, released in window order
    results.py    windows released in order, decided (alerts.py: smoothing, hysteresis and
                  hold → raised / cleared), sent to Redis and the call's socket
      ↓ results, alerts, call events (schema.py: every message and Redis key)
    publisher.py  Redis pub/sub, the alert stream and call state, held through outages

monitor.py registers calls (admission, claims, start and end events) and hands their
windows to the scheduler; nodes.py claims call ids and ends the calls of
dead nodes; service.py composes and runs everything from settings.py. tools/ holds what runs
beside the live path: clients for each platform, the load, soak and alert benchmarks,
calibration, and the embedded Redis.
"""
