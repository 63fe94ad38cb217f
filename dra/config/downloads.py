"""Downloads: every configured file as (config key, entry), its name and source, one entry per file,
and the lock file (config/data/downloads.lock.yaml) that pins what the first download found."""

from __future__ import annotations

import re
from pathlib import Path

from dra.config.core import _require
from dra.config.files import load_config_file


def _has(entry: dict, key: str) -> bool:
    # an overlay switching an entry from hf to url (or back) sets the other one to null
    return entry.get(key) is not None


def is_random(entry: dict | None) -> bool:
    """Whether a source or download entry is replaced by random content (the canary's `random:`)."""
    return isinstance(entry, dict) and entry.get("random") is not None


def download_entries(config: dict) -> list[tuple[str, dict]]:
    """Every configured download as (config key, entry), in config order; entries the canary
    replaces by random content (`random:`) download nothing."""
    entries = []
    for name, dataset in config["datasets"].items():
        if (_has(dataset["source"], "url") or _has(dataset["source"], "hf")) and not is_random(dataset["source"]):
            entries.append((f"datasets.{name}.source", dataset["source"]))
        for set_name, spec in dataset["synthetic"].items():
            for index, part in enumerate(spec.get("parts", [])):
                if not is_random(part):
                    entries.append((f"datasets.{name}.synthetic.{set_name}.parts[{index}]", part))
    for name, model in config["diffusion_models"].items():
        source = model["source"]
        if is_random(source):
            continue
        if _has(source, "url") or _has(source, "hf"):
            entries.append((f"diffusion_models.{name}.source", source))
        for key in ("tokenizer", "latent_stats"):
            if key in source:
                entries.append((f"diffusion_models.{name}.source.{key}", source[key]))
    for name, arch in config["archs"].items():
        if "pretrained" in arch and not is_random(arch["pretrained"]):
            entries.append((f"archs.{name}.pretrained", arch["pretrained"]))
    for name, model in config["reference_models"]["models"].items():
        for key in ("checkpoint", "args"):
            entries.append((f"reference_models.models.{name}.{key}", model[key]))
    return entries


def download_fields(entry: dict) -> dict:
    """What dra.download.fetch needs of an entry: its source (url or hf) and its checksums."""
    return {key: entry[key] for key in ("url", "hf", "sha256", "md5") if entry.get(key) is not None}


def download_name(entry: dict) -> str:
    """The file name of a download: the last part of its URL (without a query) or Hub path."""
    if _has(entry, "hf"):
        return entry["hf"]["path"].rsplit("/", 1)[-1]
    return entry["url"].split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


def _source_id(entry: dict) -> str:
    if _has(entry, "hf"):
        hf = entry["hf"]
        return f"hf://{hf['type']}/{hf['repo']}/{hf['path']}"
    return entry["url"]


def _check_downloads(config: dict) -> None:
    seen: dict[str, str] = {}
    for key, entry in download_entries(config):
        _require(_has(entry, "url") != _has(entry, "hf"), key,
                 "give exactly one of url (a plain download) or hf: {repo, type, path, revision} (a Hugging Face "
                 "file); an overlay that switches an entry from one to the other sets the other to null")
        source = _source_id(entry)
        _require(source not in seen, key,
                 f"downloads {source}, which {seen.get(source)} downloads too: two entries must name two files "
                 "(a copied line whose path was not changed?)")
        seen[source] = key
        _require(bool(download_name(entry)), key, f"{source} names no file")


def check_download_lock(config: dict, lock_path: str | Path) -> None:
    """Before the first job: the lock file (config/data/downloads.lock.yaml) and the config must
    agree wherever both pin a file (a sha256, or a Hub commit written into the config)."""
    lock_path = Path(lock_path)
    if not lock_path.is_file():
        return
    locked = load_config_file(lock_path)
    for key, entry in download_entries(config):
        recorded = locked.get(_source_id(entry))
        if not recorded:
            continue
        sha256 = entry.get("sha256")
        _require(sha256 is None or sha256 == recorded.get("sha256"), f"{key}.sha256",
                 f"{sha256} disagrees with {lock_path}, which recorded {recorded.get('sha256')} for "
                 f"{_source_id(entry)} at its first download; correct the config, or delete the lock entry if the "
                 "file has changed on purpose")
        revision = entry["hf"]["revision"] if _has(entry, "hf") else None
        if revision is not None and re.fullmatch(r"[0-9a-f]{40}", revision):
            _require(revision == recorded.get("revision"), f"{key}.hf.revision",
                     f"commit {revision} disagrees with {lock_path}, which pinned {recorded.get('revision')}; make "
                     "them agree (delete the lock entry to take the config's commit)")
