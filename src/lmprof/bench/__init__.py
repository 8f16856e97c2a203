"""lmprof.bench: experiments that start lmprof's own servers and measure them.

plan.py (what `lmprof bench throughput` runs: options, rows, workloads), server_process.py (a
`lmprof serve` subprocess on loopback, its memory sampled on its pid), throughput.py (the
interleaved rounds, each level driven in-process by lmprof load, into one saved record).
"""
