"""Episode storage: immutable ``.npz`` shards plus a ``manifest.json`` replaced atomically.

An episode is a dict of arrays sharing the leading dim T (its length):

- ``obs/<group>`` (T, dim) float32, one per recorded observation group (``policy``, ``privileged``, ``task``)
- ``action`` (T, act_dim) float32, the executed action
- ``actor`` (T,) uint8, who chose it: 0 = teacher, 1 = student
- ``label_mean`` (T, act_dim) float32, the teacher's label; optional ``label_std`` (T, act_dim) float32 and
  ``label_advantage`` (T,) float32, its critic's Q of the label over that of its own action
- optional ``query`` (T,) uint8, why the teacher was asked for the step's label (:data:`REASONS`: under a
  gate, or taking over at deployment); 0: it was not, the label is zeros and never trained on
- ``reward`` (T,) float32; ``terminated`` (T,) bool and ``truncated`` (T,) bool, only the last step may be True

plus JSON metadata: ``task`` (str), ``task_index`` (int), ``seed`` (int or None), ``return`` (float,
default: the sum of rewards), ``length`` (int, default T), ``success`` (bool), ``round`` (int, the
DAgger round), ``beta`` (float) and any extra JSON-able keys.

A shard holds the concatenated steps of whole episodes and ``episode_start`` (n_episodes,) int64, the
offset of each episode in it. It is written to a temp name, fsynced and renamed; only then is the
manifest (``schema_version``, ``fields``, ``next_shard``, ``shards: [{file, episodes, steps, sha256}]``,
``totals``) replaced, so a kill at any moment leaves a readable store. Readers see only the shards the
manifest lists; a writer opening the root removes temp files and shards the manifest does not list.
One writer per root at a time.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from policydistill.files import atomic_write_bytes, atomic_write_json, is_temp, read_json
from policydistill.types import GROUPS, check_groups

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
EPISODE_START = "episode_start"
OBS_PREFIX = "obs/"
_SHARD_RE = re.compile(r"^shard-(\d{6,})\.npz$")

FLOAT_FIELDS = ("action", "label_mean", "label_std", "label_advantage", "reward")
BOOL_FIELDS = ("terminated", "truncated")
TEACHER, STUDENT = 0, 1
"""``actor`` codes: who chose the executed action."""
NOT_ASKED, TEACHER_ROUND, DISAGREEMENT, NOVELTY, INTERVENTION, TAKEOVER = range(6)
REASONS = {TEACHER_ROUND: "teacher_round", DISAGREEMENT: "disagreement", NOVELTY: "novelty",
           INTERVENTION: "intervention", TAKEOVER: "takeover"}
"""``query`` codes: why a step was labelled (0: not asked, no label)."""
REQUIRED_FIELDS = ("action", "actor", "label_mean", "reward", "terminated", "truncated")
OPTIONAL_FIELDS = ("label_std", "label_advantage", "query")
REQUIRED_META = ("task", "task_index", "seed", "success", "round", "beta")
RESERVED_META = ("shard", "offset")

EpisodeArrays = dict[str, np.ndarray]
Meta = dict[str, Any]


class ShardError(ValueError):
    """A store that cannot be read or written as asked; the message names the file and the problem."""


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.npz"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _empty_manifest() -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "fields": {}, "next_shard": 0, "shards": [],
            "totals": {"shards": 0, "episodes": 0, "steps": 0}}


def _with_totals(manifest: dict[str, Any]) -> dict[str, Any]:
    shards = manifest["shards"]
    manifest["totals"] = {"shards": len(shards), "episodes": sum(len(s["episodes"]) for s in shards),
                          "steps": sum(s["steps"] for s in shards)}
    return manifest


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The manifest of the store at ``root``; a missing or unknown-version manifest is a :class:`ShardError`."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise ShardError(f"{path} not found: {root} is not an episode store")
    manifest = read_json(path)
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ShardError(f"{path}: schema_version {version} is not supported (expected {SCHEMA_VERSION})")
    return manifest


def _field_error(name: str, problem: str) -> ValueError:
    return ValueError(f"episode field '{name}': {problem}")


def _as_float32(name: str, x: np.ndarray) -> np.ndarray:
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise _field_error(name, f"expected a real number dtype, got {x.dtype}")
    out = x.astype(np.float32)  # a copy: the caller may reuse its buffers
    if not np.isfinite(out).all():
        raise _field_error(name, f"{int((~np.isfinite(out)).sum())} non-finite values (as float32)")
    return out


def _as_flag(name: str, x: np.ndarray, dtype: type) -> np.ndarray:
    if x.dtype != np.bool_ and not (np.issubdtype(x.dtype, np.integer) and np.isin(x, (0, 1)).all()):
        raise _field_error(name, f"expected bool or 0/1 integers, got dtype {x.dtype}")
    return x.astype(dtype)


def validate_episode(episode: Mapping[str, np.ndarray]) -> EpisodeArrays:
    """Check one episode (see the module doc) and return its arrays in the stored dtypes.

    Raises ValueError naming the field for an unknown or missing field, a length differing from the
    others, a wrong shape or dtype, a non-finite float, or a terminated/truncated flag before the last step.
    """
    missing = [k for k in REQUIRED_FIELDS if k not in episode]
    groups = [k[len(OBS_PREFIX):] for k in episode if k.startswith(OBS_PREFIX)]
    unknown = [k for k in episode if not k.startswith(OBS_PREFIX) and k not in (*REQUIRED_FIELDS, *OPTIONAL_FIELDS)]
    if missing or unknown or not groups:
        raise ValueError(f"episode fields {sorted(episode)}: missing {missing}, unknown {unknown}"
                         f"{', no obs/<group> field' if not groups else ''}; expected obs/<group> for groups "
                         f"in {list(GROUPS)}, "
                         f"{list(REQUIRED_FIELDS)} and optional {list(OPTIONAL_FIELDS)}")
    check_groups(groups)
    arrays = {k: np.asarray(v) for k, v in episode.items()}
    t = len(arrays["reward"]) if arrays["reward"].ndim else 0
    if t < 1:
        raise _field_error("reward", f"expected shape (T,) with T >= 1, got {arrays['reward'].shape}")
    out: EpisodeArrays = {}
    for name, x in arrays.items():
        if x.ndim == 0 or x.shape[0] != t:
            raise _field_error(name, f"leading dim {x.shape[:1]} != episode length T={t} (from 'reward')")
        if name.startswith(OBS_PREFIX) or name in FLOAT_FIELDS:
            out[name] = _as_float32(name, x)
        elif name == "query":
            if not np.issubdtype(x.dtype, np.integer) or (x.size and (x.min() < 0 or x.max() > 255)):
                raise _field_error(name, f"expected integer codes in [0, 255], got dtype {x.dtype}")
            out[name] = x.astype(np.uint8)
        else:
            out[name] = _as_flag(name, x, np.uint8 if name == "actor" else np.bool_)
        want_ndim = 1 if name in ("actor", "query", "reward", "label_advantage", *BOOL_FIELDS) else 2
        if x.ndim != want_ndim:
            raise _field_error(name, f"expected {want_ndim} dims, got shape {x.shape}")
    act_shape = out["action"].shape
    for name in ("label_mean", "label_std"):
        if name in out and out[name].shape != act_shape:
            raise _field_error(name, f"shape {out[name].shape} != action shape {act_shape}")
    if "label_std" in out and (out["label_std"] < 0).any():
        raise _field_error("label_std", "negative values")
    for name in BOOL_FIELDS:
        if out[name][:-1].any():
            raise _field_error(name, f"True before the last step (at steps {np.flatnonzero(out[name][:-1]).tolist()})")
    return out


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON-able")


def validate_meta(meta: Mapping[str, Any], episode: EpisodeArrays) -> Meta:
    """Check and normalise one episode's metadata (see the module doc); returns a JSON-round-tripped copy."""
    missing = [k for k in REQUIRED_META if k not in meta]
    reserved = [k for k in RESERVED_META if k in meta]
    if missing or reserved:
        raise ValueError(f"episode meta: missing keys {missing}, reserved keys {reserved} "
                         f"(required: {list(REQUIRED_META)}; 'return'/'length' default to the reward sum/T)")
    try:
        out: Meta = json.loads(json.dumps(dict(meta), allow_nan=False, default=_json_default))
    except (TypeError, ValueError) as e:
        raise ValueError(f"episode meta is not strict JSON: {e}") from e
    t = len(episode["reward"])
    out.setdefault("return", float(episode["reward"].astype(np.float64).sum()))
    out.setdefault("length", t)
    checks: dict[str, tuple[Callable[[Any], bool], str]] = {
        "task": (lambda v: isinstance(v, str) and v != "", "a non-empty str"),
        "task_index": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an int >= 0"),
        "seed": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)), "an int or None"),
        "success": (lambda v: isinstance(v, bool), "a bool"),
        "round": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an int >= 0"),
        "beta": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1, "in [0, 1]"),
        "return": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a finite float"),
        "length": (lambda v: v == t and not isinstance(v, bool), f"the episode length {t}"),
    }
    for key, (ok, want) in checks.items():
        if not ok(out[key]):
            raise ValueError(f"episode meta '{key}' = {out[key]!r}: expected {want}")
    out["beta"], out["return"] = float(out["beta"]), float(out["return"])
    return out


def field_spec(arrays: EpisodeArrays) -> dict[str, dict[str, Any]]:
    """The store fields an episode has: ``{name: {dtype, shape (trailing dims)}}``."""
    return {k: {"dtype": str(v.dtype), "shape": list(v.shape[1:])} for k, v in sorted(arrays.items())}


class ShardWriter:
    """Append episodes to the store at ``root`` (created if needed), one shard per ``shard_steps`` steps.

    Episodes are never split: a shard is written once its pending steps reach ``shard_steps``, so it may
    exceed that by less than one episode. ``flush()`` writes what is pending; leaving a ``with`` block
    flushes. Reopening a root appends: shard numbering continues. The first episode fixes the fields
    (names, dtypes, trailing shapes) of the whole store; a later episode that differs is refused.
    """

    def __init__(self, root: str | Path, shard_steps: int = 50_000) -> None:
        if shard_steps < 1:
            raise ValueError(f"shard_steps must be >= 1, got {shard_steps}")
        self.root = Path(root)
        self.shard_steps = shard_steps
        self.root.mkdir(parents=True, exist_ok=True)
        if not (self.root / MANIFEST).exists():
            if any(not is_temp(p.name) for p in self.root.iterdir()):
                raise ShardError(f"refusing to write episodes into {self.root}: it is not empty and has no {MANIFEST}")
            atomic_write_json(self.root / MANIFEST, _empty_manifest())
        manifest = read_manifest(self.root)
        self._fields: dict[str, dict[str, Any]] = manifest["fields"]
        self._clean(manifest)
        self._pending: list[tuple[EpisodeArrays, Meta]] = []
        self._pending_steps = 0

    def _clean(self, manifest: dict[str, Any]) -> None:
        """Remove temp files and shards the manifest does not list (left by a killed write or eviction)."""
        listed = {s["file"] for s in manifest["shards"]}
        for p in self.root.iterdir():
            temp = is_temp(p.name)
            if temp or (_SHARD_RE.match(p.name) and p.name not in listed):
                log.warning("removing %s left by an interrupted write or eviction", p)
                p.unlink(missing_ok=True)

    @property
    def pending_steps(self) -> int:
        return self._pending_steps

    def add(self, episode: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Validate one episode ``{field: (T, ...)}`` and its metadata, buffer it, write a shard when full."""
        arrays = validate_episode(episode)
        clean_meta = validate_meta(meta, arrays)
        spec = field_spec(arrays)
        if not self._fields:
            self._fields = spec
        elif spec != self._fields:
            diff = sorted(k for k in set(spec) | set(self._fields) if spec.get(k) != self._fields.get(k))
            got, has = {k: spec.get(k) for k in diff}, {k: self._fields.get(k) for k in diff}
            raise ValueError(f"episode fields differ from the store's in {diff}: got {got}, store has {has}")
        self._pending.append((arrays, clean_meta))
        self._pending_steps += len(arrays["reward"])
        if self._pending_steps >= self.shard_steps:
            self.flush()

    def flush(self) -> str | None:
        """Write the pending episodes as one shard and update the manifest; returns the shard file name."""
        if not self._pending:
            return None
        entry = write_shard(self.root, read_manifest(self.root)["next_shard"], self._pending)
        commit_shards(self.root, [entry], self._fields, verify=False)  # this process just wrote and hashed it
        self._pending, self._pending_steps = [], 0
        return entry["file"]

    def evict(self, max_steps: int) -> list[str]:
        """Flush, then :func:`evict` the oldest shards of this store down to ``max_steps`` total steps."""
        self.flush()
        return evict(self.root, max_steps)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.flush()
            return
        try:  # pending episodes are complete and valid: keep them even when the caller failed
            self.flush()
        except Exception:
            log.exception("could not flush %d pending episodes to %s", len(self._pending), self.root)


def prepare_episode(episode: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> tuple[EpisodeArrays, Meta]:
    """Validate one episode and its metadata (see :func:`validate_episode`, :func:`validate_meta`)."""
    arrays = validate_episode(episode)
    return arrays, validate_meta(meta, arrays)


def write_shard(root: str | Path, index: int, episodes: Sequence[tuple[EpisodeArrays, Meta]]) -> dict[str, Any]:
    """Write prepared episodes (sharing their fields) as shard ``index`` of ``root`` and return its
    manifest entry. Readers do not see it until :func:`commit_shards` lists it (several processes may
    write shards of one store; one commits them)."""
    root = Path(root)
    name = shard_name(index)
    lengths = [len(a["reward"]) for a, _ in episodes]
    data = {k: np.concatenate([a[k] for a, _ in episodes]) for k in episodes[0][0]}
    data[EPISODE_START] = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    buf = io.BytesIO()
    np.savez(buf, **data)
    blob = buf.getvalue()
    atomic_write_bytes(root / name, blob)
    log.debug("wrote %s: %d episodes, %d steps", name, len(lengths), sum(lengths))
    return {"file": name, "episodes": [m for _, m in episodes], "steps": int(sum(lengths)), "sha256": _sha256(blob)}


def commit_shards(root: str | Path, entries: Sequence[dict[str, Any]], fields: dict[str, dict[str, Any]],
                  verify: bool = True) -> None:
    """List written shards in the manifest of ``root`` with one atomic replace. Each shard file must be
    there with its sha256 (``verify``: read back and hashed, for shards other processes wrote), and
    ``fields`` must match the store's (an empty store takes them)."""
    root = Path(root)
    manifest = read_manifest(root)
    if manifest["fields"] and fields != manifest["fields"]:
        diff = sorted(k for k in set(fields) | set(manifest["fields"]) if fields.get(k) != manifest["fields"].get(k))
        raise ValueError(f"shard fields differ from the store's in {diff}")
    listed = {s["file"] for s in manifest["shards"]}
    for entry in entries:
        path = root / entry["file"]
        if entry["file"] in listed or not _SHARD_RE.match(entry["file"]):
            raise ShardError(f"{path}: already listed in {MANIFEST} or not a shard name")
        if not path.is_file() or (verify and _sha256(path.read_bytes()) != entry["sha256"]):
            raise ShardError(f"shard {path} is missing or differs from what was written (a writer on another "
                             "machine needs the store on a filesystem shared with this one)")
    manifest["fields"] = fields
    manifest["shards"] += list(entries)
    indices = [int(_SHARD_RE.match(e["file"]).group(1)) for e in entries]
    manifest["next_shard"] = max([manifest["next_shard"], *(i + 1 for i in indices)])
    atomic_write_json(root / MANIFEST, _with_totals(manifest))


def evict(root: str | Path, max_steps: int) -> list[str]:
    """Remove whole shards, oldest first (FIFO by shard, so the oldest DAgger rounds go first), until the
    store holds at most ``max_steps`` steps. The cap is hard: if the newest shard alone exceeds it, it
    goes too. The new manifest is written before any file is deleted. Returns the removed file names.
    """
    if max_steps < 0:
        raise ValueError(f"max_steps must be >= 0, got {max_steps}")
    root = Path(root)
    manifest = read_manifest(root)
    shards = manifest["shards"]
    total = sum(s["steps"] for s in shards)
    n_drop = 0
    while n_drop < len(shards) and total > max_steps:
        total -= shards[n_drop]["steps"]
        n_drop += 1
    if n_drop == 0:
        return []
    removed = [s["file"] for s in shards[:n_drop]]
    if n_drop == len(shards):
        log.warning("evicting every shard of %s: the newest alone exceeds max_steps=%d", root, max_steps)
    manifest["shards"] = shards[n_drop:]
    atomic_write_json(root / MANIFEST, _with_totals(manifest))
    for name in removed:
        (root / name).unlink(missing_ok=True)
    log.info("evicted %d shards from %s; %d steps remain", n_drop, root, total)
    return removed


def drop_rounds(root: str | Path, first_round: int) -> list[str]:
    """Remove the shards holding episodes of round ``first_round`` or later (what an interrupted attempt at a
    round stored), manifest first. A shard never mixes rounds (collectors flush per round); one that does is
    an error. Returns the removed file names."""
    root = Path(root)
    manifest = read_manifest(root)
    keep, removed = [], []
    for shard in manifest["shards"]:
        late = [m["round"] >= first_round for m in shard["episodes"]]
        if any(late) and not all(late):
            raise ShardError(f"shard {root / shard['file']} mixes rounds before and after {first_round}")
        (removed if any(late) else keep).append(shard)
    if not removed:
        return []
    manifest["shards"] = keep
    atomic_write_json(root / MANIFEST, _with_totals(manifest))
    for shard in removed:
        (root / shard["file"]).unlink(missing_ok=True)
    log.warning("removed %d shards of round %d and later from %s (an interrupted attempt)", len(removed),
                first_round, root)
    return [s["file"] for s in removed]


class EpisodeStore:
    """Read the episodes of the store at ``root`` as listed by its manifest when opened.

    Each shard's sha256 is checked the first time it is read; a changed or missing shard is a
    :class:`ShardError` naming the file. ``max_round``: see only the episodes of rounds up to it (a run's
    finished rounds, when a round in progress has stored its collection).
    """

    def __init__(self, root: str | Path, max_round: int | None = None) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        if max_round is not None:
            self.manifest["shards"] = [s for s in self.manifest["shards"]
                                       if all(m["round"] <= max_round for m in s["episodes"])]
        self.fields: dict[str, dict[str, Any]] = self.manifest["fields"]
        self._verified: set[str] = set()
        self._episodes: list[Meta] = []
        for shard in self.manifest["shards"]:
            offset = 0
            for meta in shard["episodes"]:
                self._episodes.append({**meta, "shard": shard["file"], "offset": offset})
                offset += meta["length"]

    def __len__(self) -> int:
        return len(self._episodes)

    @property
    def steps(self) -> int:
        return sum(s["steps"] for s in self.manifest["shards"])

    def episodes(self) -> list[Meta]:
        """Metadata of every episode in store order, each with its ``shard`` file and ``offset`` in it."""
        return [dict(m) for m in self._episodes]

    def _check_fields(self, fields: Sequence[str] | None) -> list[str]:
        if fields is None:
            return list(self.fields)
        unknown = [f for f in fields if f not in self.fields]
        if unknown:
            raise KeyError(f"unknown episode fields {unknown}; the store at {self.root} has {sorted(self.fields)}")
        return list(fields)

    def _read_shard(self, shard: dict[str, Any], names: Sequence[str]) -> dict[str, np.ndarray]:
        """The arrays ``names`` of one shard, checked against its manifest entry (sha256 on first read)."""
        path = self.root / shard["file"]
        try:
            blob = path.read_bytes()
        except FileNotFoundError as e:
            raise ShardError(f"shard {path} listed in {MANIFEST} is missing") from e
        if shard["file"] not in self._verified:
            if _sha256(blob) != shard["sha256"]:
                raise ShardError(f"shard {path} changed after it was written: its sha256 does not match {MANIFEST}")
            self._verified.add(shard["file"])
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as z:
                data = {k: z[k] for k in (*names, EPISODE_START)}
        except (KeyError, ValueError, OSError) as e:
            raise ShardError(f"shard {path} cannot be read: {e}") from e
        lengths = [m["length"] for m in shard["episodes"]]
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if lengths else np.zeros(0)
        if not np.array_equal(data[EPISODE_START], offsets) or any(len(data[k]) != shard["steps"] for k in names):
            raise ShardError(f"shard {path} does not match its {MANIFEST} entry (episode starts or steps)")
        return data

    def _selected(self, where: Callable[[Meta], bool] | None) -> list[tuple[dict[str, Any], list[Meta]]]:
        """(shard entry, selected episode metas) for each shard holding a selected episode."""
        out, i = [], 0
        for shard in self.manifest["shards"]:
            metas = self._episodes[i:i + len(shard["episodes"])]
            i += len(shard["episodes"])
            chosen = [m for m in metas if where is None or where(dict(m))]
            if chosen:
                out.append((shard, chosen))
        return out

    def load(self, fields: Sequence[str] | None = None,
             where: Callable[[Meta], bool] | None = None) -> dict[str, np.ndarray]:
        """Concatenated steps ``{field: (N, ...)}`` of all episodes, or of those where ``where(meta)`` is True,
        in store order. ``fields`` selects fields (default: all). Peak memory: the result plus one shard."""
        names = self._check_fields(fields)
        selected = self._selected(where)
        total = sum(m["length"] for _, metas in selected for m in metas)
        out = {k: np.empty((total, *self.fields[k]["shape"]), dtype=self.fields[k]["dtype"]) for k in names}
        pos = 0
        for shard, metas in selected:
            data = self._read_shard(shard, names)
            for m in metas:
                n = m["length"]
                for k in names:
                    out[k][pos:pos + n] = data[k][m["offset"]:m["offset"] + n]
                pos += n
        return out

    def lengths(self, where: Callable[[Meta], bool] | None = None) -> np.ndarray:
        """Lengths of the episodes :meth:`load` concatenates for the same ``where``, in its order: int64 (E,)."""
        return np.asarray([m["length"] for _, metas in self._selected(where) for m in metas], dtype=np.int64)

    def iter_episodes(self, fields: Sequence[str] | None = None,
                      where: Callable[[Meta], bool] | None = None) -> Iterator[tuple[Meta, EpisodeArrays]]:
        """Yield ``(meta, {field: (T, ...)})`` one episode at a time, holding one shard in memory."""
        names = self._check_fields(fields)
        for shard, metas in self._selected(where):
            data = self._read_shard(shard, names)
            for m in metas:
                sl = slice(m["offset"], m["offset"] + m["length"])
                yield dict(m), {k: data[k][sl].copy() for k in names}
