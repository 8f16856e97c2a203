"""What `lmprof profile` runs: the request, and the transformers or engine workload that serves it."""
