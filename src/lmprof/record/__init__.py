"""Everything saved and re-read: the Run and its parts, run groups, ablation tables, hardware probes.

Torch-free: `lmprof show`, `compare` and every renderer read these without loading a model stack.
"""
