"""The diffusion stack: EDM networks, safe checkpoint loading, sampling and features.

- ``edm``: SongUNet (DDPM++) and EDMPrecond with NVIDIA's module names.
- ``checkpoint``: NVIDIA pickle -> safetensors + json by a restricted unpickler; ``load_edm``.
- ``sampler``: EDM's deterministic Heun sampler; resumable synthetic-data generation.
- ``select``: DM-AT's per-class top-fraction selection of generated images.
- ``features``: pooled block outputs at a fixed, seeded noise (the DRA targets); feature stores.
- ``probe``: linear probes over (layer, sigma) and their PGD robustness.
- ``train``: the mini EDM trained by the workflow itself.
- ``shards``: resumable long jobs (finished shards kept in a state folder).
"""
