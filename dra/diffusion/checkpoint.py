"""Read NVIDIA's EDM pickles without NVIDIA's code and without running anything from the file.

NVIDIA's ``torch_utils.persistence`` pickles every decorated object as a call of
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` where ``meta`` is a dict
``{type: 'class', version, module_src, class_name, state}``; loading it normally would exec()
``module_src`` (NVlabs/edm torch_utils/persistence.py). Tensors inside are plain-pickled torch tensors:
``torch._utils._rebuild_tensor_v2(torch.storage._load_from_bytes(<legacy torch.save bytes>), ...)``.

``SafeEDMUnpickler`` resolves only a short whitelist of globals, each mapped to a function of
ours: the persistence hook becomes a ``PersistentRecord`` (class name + state, the source text
is kept as an inert string), storages are decoded from their bytes by our own reader of torch's
legacy format, and anything else stops with ``UnsafePickleError``. The result is converted once
to safetensors + a json of the EDMPrecond init kwargs, which ``load_edm`` turns into our network.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dra.diffusion.edm import EDMPrecond
from dra.io import atomic_file, write_json


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for a global outside the whitelist; nothing from it was run."""


class CheckpointFormatError(ValueError):
    """The file is not an EDM network pickle / converted checkpoint of the expected shape."""


@dataclass
class PersistentRecord:
    """What a ``torch_utils.persistence`` object becomes here: data only, no class is built."""

    class_name: str
    state: dict
    version: int
    module_src: str = field(repr=False)

    @property
    def init_args(self) -> tuple:
        return tuple(self.state.get("_init_args") or ())

    @property
    def init_kwargs(self) -> dict:
        return dict(self.state.get("_init_kwargs") or {})


class ModuleDictRecord:
    """torch.nn.ModuleDict (NVIDIA's enc/dec containers are not persistent classes): its state only.

    Pickle builds it with ``cls.__new__(cls)`` and hands its ``__dict__`` to ``__setstate__``.
    """

    class_name = "ModuleDict"

    def __setstate__(self, state: dict) -> None:
        if not isinstance(state, dict):
            raise CheckpointFormatError(f"ModuleDict state is a {type(state).__name__}, expected a dict")
        self.state = state


class _PlainDict(dict):
    """Stand-in for dnnlib.EasyDict (a dict subclass in the training snapshot's dataset_kwargs)."""


def _reconstruct_record(meta: dict) -> PersistentRecord:
    if not isinstance(meta, dict) or meta.get("type") != "class" or "class_name" not in meta:
        found = sorted(meta) if isinstance(meta, dict) else type(meta)
        raise CheckpointFormatError(f"persistence record of an unknown form: keys {found}")
    return PersistentRecord(class_name=str(meta["class_name"]), state=dict(meta.get("state") or {}),
                            version=int(meta.get("version", -1)), module_src=str(meta.get("module_src", "")))


# torch's legacy storage classes -> dtype (the element type of the raw bytes that follow).
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


class _LegacyStorageUnpickler(pickle.Unpickler):
    """The inner pickles of torch's pre-zip ``torch.save`` format, storages as persistent ids."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise UnsafePickleError(f"tensor storage refers to global {module}.{name}; only torch.<Type>Storage is allowed")

    def persistent_load(self, pid: Any) -> Any:
        # ('storage', storage_type, key, location, numel, view_metadata)
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise CheckpointFormatError(f"unexpected persistent id in a tensor storage: {pid!r:.200}")
        if len(pid) > 5 and pid[5] is not None:
            raise CheckpointFormatError("storage views (legacy view_metadata) are not supported")
        return ("storage", pid[1].dtype, str(pid[2]), int(pid[4]))


def _load_storage_from_bytes(blob: bytes) -> torch.Tensor:
    """Decode one storage written by torch.save(storage, _use_new_zipfile_serialization=False).

    Layout: magic number, protocol version, sys_info (three small pickles), the storage's
    pickle with a persistent id, the list of storage keys, then per key an int64 element count
    followed by the raw little-endian elements.
    """
    stream = io.BytesIO(blob)
    for _ in range(3):
        _LegacyStorageUnpickler(stream).load()
    ref = _LegacyStorageUnpickler(stream).load()
    keys = _LegacyStorageUnpickler(stream).load()
    if not (isinstance(ref, tuple) and ref[0] == "storage") or keys != [ref[2]]:
        raise CheckpointFormatError("a tensor storage is not a single legacy-format storage")
    _, dtype, _, numel = ref
    (count,) = struct.unpack("<q", stream.read(8))
    if count != numel:
        raise CheckpointFormatError(f"storage holds {count} elements, its header says {numel}")
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    data = stream.read(nbytes)
    if len(data) != nbytes:
        raise CheckpointFormatError(f"truncated tensor storage: {len(data)} of {nbytes} bytes")
    return torch.frombuffer(bytearray(data), dtype=dtype) if numel else torch.empty(0, dtype=dtype)


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_ignored: Any) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor):
        raise CheckpointFormatError("tensor data is not a decoded storage")
    needed = offset + sum((s - 1) * st for s, st in zip(size, stride)) + 1 if all(size) else 0
    if needed > storage.numel():
        raise CheckpointFormatError(
            f"tensor of size {tuple(size)} reaches past its storage of {storage.numel()} elements")
    return torch.as_strided(storage, tuple(size), tuple(stride), offset).clone()


def _rebuild_parameter(data: torch.Tensor, requires_grad: bool, backward_hooks: Any, *_state: Any) -> torch.Tensor:
    return data


def _numpy_scalar(dtype: np.dtype, data: bytes) -> Any:
    return np.frombuffer(data, dtype=dtype)[0]


def _numpy_dtype(spec: str, align: bool = False, copy: bool = False) -> np.dtype:
    if not isinstance(spec, str) or spec[:1] not in "fiub?c" or len(spec) > 4:
        raise UnsafePickleError(f"numpy dtype {spec!r} is not a plain numeric dtype")
    return np.dtype(spec)


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    # Protocol 2 pickles write bytes objects as _codecs.encode(text, 'latin1').
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(
            f"_codecs.encode called with {type(text).__name__}, {encoding!r}; only latin1 text is allowed")
    return text.encode("latin1")


_ALLOWED_GLOBALS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_record,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("collections", "OrderedDict"): dict,
    ("torch.nn.modules.container", "ModuleDict"): ModuleDictRecord,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,  # protocol < 3 spells builtins this way
    ("__builtin__", "frozenset"): frozenset,
    ("_codecs", "encode"): _latin1_bytes,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
    ("dnnlib.util", "EasyDict"): _PlainDict,
}


class SafeEDMUnpickler(pickle.Unpickler):
    """Unpickler whose globals are the whitelist above; persistent ids are refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing global {module}.{name}: an EDM network pickle needs only torch tensors and "
                f"torch_utils.persistence records; this file may run code when loaded normally") from None

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointFormatError(f"unexpected persistent id {pid!r:.100} at the top level (not a plain pickle?)")


def read_edm_pickle(path: str | Path) -> dict:
    """The pickle's top-level dict with PersistentRecords in place of NVIDIA's objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"EDM pickle {path} does not exist; download it first (rule fetch_diffusion_model)")
    with open(path, "rb") as handle:
        try:
            data = SafeEDMUnpickler(handle).load()
        except UnsafePickleError as err:
            raise UnsafePickleError(f"{path}: {err}") from None
        except (EOFError, pickle.UnpicklingError, struct.error) as err:
            raise CheckpointFormatError(f"{path} is not a readable pickle ({err}); the download may be truncated, "
                                        f"delete it and fetch it again") from None
    return data


def _flatten_module(record: PersistentRecord | ModuleDictRecord, prefix: str, out: dict[str, torch.Tensor]) -> None:
    state = record.state
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is not None:
                out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, (PersistentRecord, ModuleDictRecord)):
            raise CheckpointFormatError(
                f"submodule {prefix + name} is not a persistence record ({type(child).__name__})")
        _flatten_module(child, f"{prefix}{name}.", out)


def edm_state_from_pickle(path: str | Path, key: str = "ema") -> tuple[dict, dict[str, torch.Tensor]]:
    """(init_kwargs, state_dict) of the EDMPrecond stored under ``key`` of NVIDIA's pickle."""
    data = read_edm_pickle(path)
    if not isinstance(data, dict) or key not in data:
        raise CheckpointFormatError(f"{path}: expected a dict with key {key!r} (NVIDIA's network snapshot); "
                                    f"found {sorted(data) if isinstance(data, dict) else type(data).__name__}")
    record = data[key]
    if not isinstance(record, PersistentRecord) or record.class_name != "EDMPrecond":
        name = record.class_name if isinstance(record, PersistentRecord) else type(record).__name__
        raise CheckpointFormatError(f"{path}[{key!r}] is a {name}, not an EDMPrecond")
    if record.init_args:
        raise CheckpointFormatError(
            f"{path}: EDMPrecond was built with positional args {record.init_args}; expected kwargs only")
    tensors: dict[str, torch.Tensor] = {}
    _flatten_module(record, "", tensors)
    return _plain_json(record.init_kwargs), tensors


def _plain_json(value: Any) -> Any:
    """init kwargs as json-able Python values (numpy scalars, tuples and inf included)."""
    if isinstance(value, dict):
        return {str(k): _plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_json(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _decode_infinities(kwargs: dict) -> dict:
    """_plain_json's inverse for init kwargs: "inf" and "-inf" back to floats."""
    return {k: float(v) if v in ("inf", "-inf") else v for k, v in kwargs.items()}


def edm_init_kwargs(network: str | Path | dict, name: str | None = None) -> dict:
    """The EDMPrecond init kwargs a network json records (``{"class_name": "EDMPrecond", "init_kwargs":
    {...}}``, as save_edm writes it beside the weights), infinities decoded. ``network``: the json's path,
    or its content already read (an export's config.json carries it; ``name`` then says where it came
    from in messages). Anything else stops with CheckpointFormatError naming the file."""
    if isinstance(network, dict):
        spec, name = network, name or "the network json"
    else:
        json_path = Path(network)
        name = str(json_path)
        try:
            spec = json.loads(json_path.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise CheckpointFormatError(
                f"{json_path} is not JSON ({err}); delete it and rerun the rule that wrote it") from None
    if (not isinstance(spec, dict) or spec.get("class_name") != "EDMPrecond"
            or not isinstance(spec.get("init_kwargs"), dict)):
        raise CheckpointFormatError(f"{name}: expected {{'class_name': 'EDMPrecond', 'init_kwargs': {{...}}}}")
    return _decode_infinities(spec["init_kwargs"])


def edm_from_json(network: str | Path | dict, name: str | None = None) -> EDMPrecond:
    """A new EDMPrecond, randomly initialised, of the configuration a network json records (its path or
    its content, as for edm_init_kwargs): the architecture without its weights (load_edm loads them into
    it; the EDM encoder classifier builds on it)."""
    return EDMPrecond(**edm_init_kwargs(network, name))


def save_edm(net: EDMPrecond, init_kwargs: dict, out_safetensors: str | Path, out_json: str | Path,
             extra: dict | None = None) -> None:
    """Write the network as safetensors + json of its init kwargs (the format load_edm reads)."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    with atomic_file(out_safetensors) as tmp:
        save_file(state, str(tmp))
    write_json(out_json, {"class_name": "EDMPrecond", "init_kwargs": _plain_json(init_kwargs), **(extra or {})})


def convert_edm_pickle(pkl: str | Path, out_safetensors: str | Path, out_json: str | Path,
                       key: str = "ema") -> EDMPrecond:
    """NVIDIA pickle -> safetensors + json, checked by loading every tensor strictly by name."""
    init_kwargs, tensors = edm_state_from_pickle(pkl, key)
    net = EDMPrecond(**_decode_infinities(init_kwargs))
    expected = net.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointFormatError(f"{pkl}: tensors do not match our EDMPrecond(**{init_kwargs}); "
                                    f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointFormatError(f"{pkl}: {name} has shape {tuple(tensor.shape)}, "
                                        f"our network expects {tuple(expected[name].shape)}")
    net.load_state_dict(tensors, strict=True)
    save_edm(net, init_kwargs, out_safetensors, out_json, extra={"source": Path(pkl).name, "pickle_key": key})
    return net.eval().requires_grad_(False)


def load_edm(safetensors_path: str | Path, json_path: str | Path | None = None) -> EDMPrecond:
    """Our converted checkpoint -> EDMPrecond in eval mode with gradients off.

    ``json_path`` defaults to the safetensors path with a ``.json`` suffix.
    """
    safetensors_path = Path(safetensors_path)
    json_path = Path(json_path) if json_path is not None else safetensors_path.with_suffix(".json")
    for path in (safetensors_path, json_path):
        if not path.is_file():
            raise FileNotFoundError(f"diffusion checkpoint file {path} is missing; run "
                                    "scripts/convert_edm_checkpoint.py "
                                    f"(official pickles) or scripts/train_diffusion.py (mini) to create it")
    net = edm_from_json(json_path)
    try:
        weights = load_file(str(safetensors_path))
    except Exception as err:  # SafetensorError, OSError: a truncated or foreign file
        raise CheckpointFormatError(
            f"{safetensors_path} is not a readable safetensors file ({type(err).__name__}: {err}); "
            "delete it and rerun the rule that wrote it"
        ) from None
    try:
        net.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise CheckpointFormatError(f"{safetensors_path} does not match {json_path}: {err}") from None
    return net.eval().requires_grad_(False)


def save_random_edm(out_safetensors: str | Path, out_json: str | Path, seed: int,
                    network: dict | None = None) -> EDMPrecond:
    """A randomly initialised EDM (the canary's stand-in for a download): by default DDPM++ at the
    configuration of NVIDIA's CIFAR-10 model (EDM_CIFAR10_DDPMPP, 55.7M parameters), ``network``
    overriding its keys (label_dim for CIFAR-100); written as the converted checkpoints are."""
    from dra.network_presets import EDM_CIFAR10_DDPMPP

    kwargs = {**EDM_CIFAR10_DDPMPP, **(network or {})}
    torch.manual_seed(seed)
    net = EDMPrecond(**kwargs)
    save_edm(net, kwargs, out_safetensors, out_json, extra={"source": f"random initialisation, seed {seed}"})
    return net


def save_random_lightningdit(out_dit: str | Path, out_vae: str | Path, out_latent_stats: str | Path, seed: int,
                             dit_config: dict | None = None, vae_config: dict | None = None) -> None:
    """A randomly initialised LightningDiT (XL/1 unless ``dit_config``) and VA-VAE (f16d32 unless
    ``vae_config``), with unit latent statistics, in the release's file formats (the 'ema' weights,
    the Lightning 'state_dict', {'mean', 'std'}) that load_lightningdit, load_vavae and
    load_latent_stats read: the canary's stand-in for the downloads."""
    from dra.diffusion.lightningdit import LIGHTNINGDIT_XL_1, LightningDiT
    from dra.diffusion.vavae import VAVAE, VAVAE_F16D32

    torch.manual_seed(seed)
    vae = VAVAE(**(vae_config or VAVAE_F16D32))
    channels = vae.embed_dim
    with atomic_file(out_vae) as tmp:
        torch.save({"state_dict": vae.state_dict()}, tmp)
    del vae
    with atomic_file(out_latent_stats) as tmp:
        torch.save({"mean": torch.zeros(1, channels, 1, 1), "std": torch.ones(1, channels, 1, 1)}, tmp)
    dit = LightningDiT(**(dit_config or LIGHTNINGDIT_XL_1))
    with atomic_file(out_dit) as tmp:
        torch.save({"ema": dit.state_dict()}, tmp)
