"""`lmprof ablate`: the plan of rows, one row profiled in its own process, and the runner of rounds."""
