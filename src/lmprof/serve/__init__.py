"""lmprof.serve: an OpenAI-compatible server whose throughput techniques are switches, and
which profiles itself.

settings.py (what was asked), backends.py (transformers or lmprof's engine, one batch
interface), worker.py (the model thread: batches, sampling, streaming, cancellation),
continuous_worker.py (the model thread of --scheduler continuous: lmprof's ContinuousBatcher),
protocol.py (the OpenAI wire format), app.py (aiohttp routes, checks, the schedulers'
admission), relay.py (events to SSE chunks or a body), state.py (what handlers share),
response_cache.py, metrics.py (Prometheus), profiler.py (the server's Run), server.py (life:
start, drain, stop).
"""
