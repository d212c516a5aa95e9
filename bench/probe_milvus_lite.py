"""Can several processes share one Milvus Lite database? (Issue 15 asks; the answer decides how
a multi-node Milvus setup can be tested here.)

The probe, all local (a temporary ``.db`` file, no server, no network):

1. process A opens the file, creates a collection shaped like one encoder space (speaker id as
   INT64 primary key, inner product on unit vectors), upserts, searches, deletes;
2. while A still holds it open, process B opens the same file and lists the ids;
3. A closes; B opens it again.

It prints what each step did (step 3 twice: after A's ``close()`` and after A's process
exited). The README ("Past one machine") records the answer measured here.

    .venv/bin/python -m bench.probe_milvus_lite
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

READER = """
import sys
from pymilvus import MilvusClient
try:
    client = MilvusClient(sys.argv[1])
except Exception as error:
    print("open failed:", type(error).__name__, str(error)[:100])
    sys.exit(3)
client.load_collection("voxceleb")
rows = client.query("voxceleb", filter="speaker_id >= 0", output_fields=["speaker_id"])
print("opened; ids:", sorted(r["speaker_id"] for r in rows))
"""

WRITER = """
import sys, time
import numpy as np
from pymilvus import DataType, MilvusClient
start = time.perf_counter()
client = MilvusClient(sys.argv[1])
print(f"A: opened the file in {time.perf_counter() - start:.1f} s", flush=True)
schema = MilvusClient.create_schema(auto_id=False)
schema.add_field("speaker_id", DataType.INT64, is_primary=True)
schema.add_field("vector", DataType.FLOAT_VECTOR, dim=8)
index = client.prepare_index_params()
index.add_index("vector", index_type="FLAT", metric_type="IP")
client.create_collection("voxceleb", schema=schema, index_params=index)
vectors = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
client.upsert("voxceleb", [{"speaker_id": i, "vector": v.tolist()} for i, v in enumerate(vectors)])
hits = client.search("voxceleb", [vectors[2].tolist()], limit=2)[0]
print("A: search for speaker 2 ->", [(h["speaker_id"], round(h["distance"], 3)) for h in hits])
client.delete("voxceleb", ids=[2])
hits = client.search("voxceleb", [vectors[2].tolist()], limit=1)[0]
print("A: after deleting 2, best ->", [h["speaker_id"] for h in hits], flush=True)
print("open", flush=True)
sys.stdin.readline()
client.close()
print("closed", flush=True)
sys.stdin.readline()
"""


def reader(path: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", READER, str(path)], capture_output=True, text=True, timeout=300
    )
    lines = (done.stdout + done.stderr).strip().splitlines()
    return f"exit {done.returncode}: {lines[-1] if lines else ''}"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vectors.db"
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert writer.stdin is not None and writer.stdout is not None
        try:
            for line in writer.stdout:
                if line.strip() == "open":
                    break
                print(line.rstrip())
            print("B while A has it open:        ", reader(path))
            writer.stdin.write("\n")
            writer.stdin.flush()
            writer.stdout.readline()
            print("B after A called close():     ", reader(path))
            writer.stdin.write("\n")
            writer.stdin.flush()
            writer.wait(timeout=120)
            print("B after A's process exited:   ", reader(path))
        finally:
            writer.kill()


if __name__ == "__main__":
    main()
