"""`lmprof load`: a load generator for OpenAI-compatible endpoints.

It collects and never prints: `bench.run_load` drives the levels and hands back a
`lmprof.record.load.LoadRun`; `lmprof.analyze.load` derives the figures and
`lmprof.render.load_*` presents them. asyncio + aiohttp, one process, one clock.
"""
