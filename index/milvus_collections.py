"""Speaker vectors in Milvus: one collection per encoder space, plus one small state collection.

A thin adapter on ``pymilvus.MilvusClient`` (the optional ``milvus`` extra), in FAISS's terms:
int64 ids, float32 rows, inner product on L2-normalised vectors, ``-1`` ids padding a short
result. It knows nothing of the database; ``service.search.milvus_gallery`` decides what to
write and when.

Layout (``prefix`` keeps several installations apart in one Milvus):

* ``<prefix><space>_<build>``: ``speaker_id`` INT64 primary key, ``vector`` FLOAT_VECTOR, a FLAT
  index on inner product. ``<build>`` is a fresh token per full build, so a rebuild fills a new
  collection beside the live one and switches by rewriting the state row.
* ``<prefix>state``: one row per space, primary key the space name: which collection is live,
  the change-log ``seq`` applied to it, the model identity and database its vectors belong to.
  Kept in Milvus itself, next to the vectors it describes: whatever Milvus holds, this row says
  how far it reaches (a database-side cursor could not notice a Milvus restored or wiped).

Every call asks for Strong consistency: a write acknowledged to one client is seen by the next
read from any client.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

ID_FIELD = "speaker_id"
VECTOR_FIELD = "vector"
STRONG = "Strong"
#: Rows per upsert/get request (keeps one gRPC message well under Milvus's 64 MiB default).
BATCH = 5_000


class MilvusError(RuntimeError):
    """Milvus refused or did not answer a call (the message says which and why)."""


class MilvusMissing(MilvusError):
    """pymilvus is not installed (``pip install -e '.[milvus]'``)."""


class _Guarded:
    """The client, with every call's pymilvus/gRPC failure raised as :class:`MilvusError`, so
    callers need not import pymilvus to tell a Milvus problem from a bug."""

    def __init__(self, client: Any, errors: tuple[type[BaseException], ...]) -> None:
        self._client = client
        self._errors = errors

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except self._errors as error:
                raise MilvusError(f"milvus {name}: {error}") from error

        return call


@dataclass(frozen=True)
class SpaceRecord:
    """The state row of one space: the live collection and how far into the log it reaches."""

    space: str
    collection: str
    seq: int
    dim: int
    model_identity: str
    database: str | None


def client_for(uri: str, token: str | None = None, timeout_s: float = 10.0) -> Any:
    """A guarded ``MilvusClient`` for ``uri`` (a server URL, or a Milvus Lite ``.db`` path)."""
    try:
        import grpc
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException
    except ImportError as error:  # pragma: no cover - depends on the install
        raise MilvusMissing(
            "vector_store=milvus needs pymilvus: pip install -c constraints.txt -e '.[milvus]'"
        ) from error
    errors = (MilvusException, grpc.RpcError)
    for attempt in range(3):
        try:
            client = MilvusClient(uri=uri, token=token or "", timeout=timeout_s)
            break
        except errors as error:
            # pymilvus shares one gRPC channel per address; a server that closed it for the
            # client's idle keepalive pings (GOAWAY "Too many pings": Milvus Lite's Python gRPC
            # server does) fails the next connect once, and the channel reconnects on the next.
            if attempt < 2 and _dropped_for_pings(error):
                continue
            raise MilvusError(f"cannot connect to Milvus at {uri}: {error}") from error
    return _Guarded(client, errors)


def _dropped_for_pings(error: BaseException | None) -> bool:
    while error is not None:
        if "Too many pings" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


class MilvusCollections:
    def __init__(self, uri: str, *, token: str | None = None, prefix: str = "voicesearch_"):
        self.uri = uri
        self.prefix = prefix
        self.client = client_for(uri, token)
        self.state_name = f"{prefix}state"

    # ------------------------------------------------------------------ state rows
    def ensure_state(self) -> None:
        from pymilvus import DataType, MilvusClient

        if self.client.has_collection(self.state_name):
            return
        schema = MilvusClient.create_schema(auto_id=False)
        schema.add_field("space", DataType.VARCHAR, is_primary=True, max_length=256)
        schema.add_field("record", DataType.VARCHAR, max_length=4096)
        # Milvus wants a vector field in every collection; this one is never searched.
        schema.add_field("unused", DataType.FLOAT_VECTOR, dim=2)
        index = self.client.prepare_index_params()
        index.add_index("unused", index_type="FLAT", metric_type="L2")
        self.client.create_collection(
            self.state_name, schema=schema, index_params=index, consistency_level=STRONG
        )

    def read_state(self, space: str) -> SpaceRecord | None:
        rows = self.client.get(
            self.state_name, ids=[space], output_fields=["record"], consistency_level=STRONG
        )
        if not rows:
            return None
        return SpaceRecord(space=space, **json.loads(rows[0]["record"]))

    def write_state(self, record: SpaceRecord) -> None:
        body = {
            "collection": record.collection,
            "seq": int(record.seq),
            "dim": int(record.dim),
            "model_identity": record.model_identity,
            "database": record.database,
        }
        self.client.upsert(
            self.state_name,
            [{"space": record.space, "record": json.dumps(body), "unused": [0.0, 0.0]}],
        )

    def forget(self, space: str) -> None:
        """Drop the space's live collection and its state row (the next open builds anew)."""
        record = self.read_state(space)
        if record is not None:
            self.drop(record.collection)
            self.client.delete(self.state_name, ids=[space])

    # ------------------------------------------------------------------ collections
    def new_collection(self, space: str, dim: int) -> str:
        """Create an empty collection for a fresh build of ``space``; returns its name."""
        from pymilvus import DataType, MilvusClient

        name = f"{self.prefix}{space}_{uuid.uuid4().hex[:12]}"
        schema = MilvusClient.create_schema(auto_id=False)
        schema.add_field(ID_FIELD, DataType.INT64, is_primary=True)
        schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=int(dim))
        index = self.client.prepare_index_params()
        index.add_index(VECTOR_FIELD, index_type="FLAT", metric_type="IP")
        self.client.create_collection(
            name, schema=schema, index_params=index, consistency_level=STRONG
        )
        return name

    def exists(self, name: str) -> bool:
        return bool(self.client.has_collection(name))

    def drop(self, name: str) -> None:
        if self.client.has_collection(name):
            self.client.drop_collection(name)

    # ------------------------------------------------------------------ rows
    def upsert(self, name: str, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        vectors = np.asarray(vectors, dtype=np.float32)
        for start in range(0, ids.size, BATCH):
            rows = [
                {ID_FIELD: int(i), VECTOR_FIELD: v}
                for i, v in zip(
                    ids[start : start + BATCH].tolist(),
                    vectors[start : start + BATCH].tolist(),
                    strict=True,
                )
            ]
            self.client.upsert(name, rows)

    def delete(self, name: str, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        for start in range(0, ids.size, BATCH):
            self.client.delete(name, ids=ids[start : start + BATCH].tolist())

    def search(self, name: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product per query row: ``(scores, ids)`` of shape (n, k), ids
        ``-1`` (score ``-inf``) where fewer than ``k`` vectors exist, like FAISS."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        scores = np.full((queries.shape[0], k), -np.inf, dtype=np.float32)
        ids = np.full((queries.shape[0], k), -1, dtype=np.int64)
        if k <= 0 or queries.shape[0] == 0:
            return scores, ids
        result = self.client.search(
            name,
            data=queries.tolist(),
            limit=int(k),
            anns_field=VECTOR_FIELD,
            search_params={"metric_type": "IP"},
            output_fields=[ID_FIELD],
            consistency_level=STRONG,
        )
        for row, hits in enumerate(result):
            for col, hit in enumerate(list(hits)[:k]):
                ids[row, col] = int(hit[ID_FIELD] if ID_FIELD in hit else hit["id"])
                scores[row, col] = float(hit["distance"])
        return scores, ids

    def get(self, name: str, ids: np.ndarray) -> dict[int, np.ndarray]:
        """The stored vectors of those ``ids`` that exist."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        found: dict[int, np.ndarray] = {}
        for start in range(0, ids.size, BATCH):
            rows = self.client.get(
                name,
                ids=ids[start : start + BATCH].tolist(),
                output_fields=[ID_FIELD, VECTOR_FIELD],
                consistency_level=STRONG,
            )
            for row in rows:
                found[int(row[ID_FIELD])] = np.asarray(row[VECTOR_FIELD], dtype=np.float32)
        return found

    def flush(self, name: str) -> None:
        """Seal what was just written into indexed segments: after a bulk fill. (Milvus Lite
        scans unsealed rows in Python: 5k of them made a search ~420 ms, ~20 ms once sealed.
        A cluster seals on its own; a flush after a bulk load is its documented practice.)"""
        self.client.flush(name)

    def count(self, name: str) -> int:
        rows = self.client.query(
            name, filter="", output_fields=["count(*)"], consistency_level=STRONG
        )
        return int(rows[0]["count(*)"]) if rows else 0

    def iter_ids(self, name: str, batch_size: int = BATCH) -> Iterator[np.ndarray]:
        """Every id in ``name``, in batches (``verify`` looks for ids the database lacks)."""
        iterator = self.client.query_iterator(
            name, batch_size=batch_size, filter="", output_fields=[ID_FIELD]
        )
        try:
            while True:
                batch = iterator.next()
                if not batch:
                    return
                yield np.fromiter((r[ID_FIELD] for r in batch), dtype=np.int64, count=len(batch))
        finally:
            iterator.close()

    def close(self) -> None:
        self.client.close()
