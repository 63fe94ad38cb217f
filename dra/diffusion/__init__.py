"""The diffusion stack: EDM networks, safe checkpoint loading, sampling and features.

- ``edm``: SongUNet (DDPM++) and EDMPrecond with NVIDIA's module names.
- ``checkpoint``: NVIDIA pickle -> safetensors + json by a restricted unpickler; ``load_edm``.
- ``sampler``: EDM's deterministic Heun sampler; resumable synthetic-data generation.
- ``features``: pooled block outputs at a fixed, seeded noise (the DRA targets); feature stores.
- ``probe``: linear probes over (layer, sigma) and their PGD robustness.
- ``train``: the mini EDM trained by the workflow itself.
- ``shards``: resumable long jobs (finished shards kept in a state folder); ``run_sharded_job`` is the loop
  of every long job here (EDM and LightningDiT sampling and features).
"""
