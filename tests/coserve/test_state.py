"""The server's state directory: atomic records, torn writes from a crash, job reconciliation
(the fast twin of test_server's SIGKILL test)."""

import json
from pathlib import Path

import pytest

from jgraph.coserve._state import ADAPTER_META, StateDir


def _write(folder: Path) -> None:
    (folder / "adapter_config.json").write_text("{}")


def test_files_round_trip_and_delete(tmp_path):
    st = StateDir(tmp_path)
    rec = st.add_file(b'{"text": "a"}\n', filename="a.jsonl", purpose="fine-tune")
    assert StateDir(tmp_path).file(rec["id"]) == rec  # a new reader sees it
    assert st.file_bytes(rec["id"]) == b'{"text": "a"}\n'
    assert [f["id"] for f in st.files()] == [rec["id"]]
    assert st.delete_file(rec["id"])
    assert st.file(rec["id"]) is None
    assert not st.delete_file(rec["id"])
    assert st.file("../../etc/passwd") is None  # ids are checked, never joined as paths


def test_an_upload_killed_before_its_record_is_invisible(tmp_path):
    st = StateDir(tmp_path)
    (tmp_path / "files" / "file-0123.jsonl").write_bytes(b"partial")
    (tmp_path / "files" / ".file-0124.json.ab12.tmp").write_text('{"id": "file-01')
    assert st.files() == []
    assert st.file("file-0123") is None


def test_adapter_versions_are_atomic_and_a_torn_one_is_ignored(tmp_path):
    st = StateDir(tmp_path)
    p1, v1 = st.save_adapter("ft:tiny:x", _write, job_id="ftjob-1")
    p2, v2 = st.save_adapter("ft:tiny:x", _write, job_id="ftjob-2")
    assert (v1, v2) == (1, 2)
    assert (p1.name, p2.name) == ("v0001", "v0002")
    # A save killed mid-write leaves a .tmp folder: ignored and cleaned on the next scan.
    torn = p2.parent / ".tmp-v3-dead"
    torn.mkdir()
    (torn / "adapter_config.json").write_text("{")
    # A version folder without its meta file (not produced by save_adapter) is not served.
    (p2.parent / "v0009").mkdir()
    found = StateDir(tmp_path).adapters()
    assert found["ft:tiny:x"]["version"] == 2
    assert found["ft:tiny:x"]["path"] == str(p2)
    assert not torn.exists()


def test_a_failing_writer_leaves_no_version(tmp_path):
    st = StateDir(tmp_path)

    def boom(folder: Path) -> None:
        (folder / "half").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        st.save_adapter("m", boom)
    assert st.adapters() == {}
    assert not list((tmp_path / "adapters").glob("*/.tmp-*"))


def test_events_skip_a_torn_last_line(tmp_path):
    st = StateDir(tmp_path)
    st.add_event("ftjob-1", {"id": "e1", "message": "a"})
    with open(tmp_path / "jobs" / "ftjob-1.events.jsonl", "a") as f:
        f.write('{"id": "e2", "mess')  # killed mid-append
    assert [e["id"] for e in st.events("ftjob-1")] == ["e1"]


def test_job_records_are_rewritten_whole(tmp_path):
    st = StateDir(tmp_path)
    job = {"id": "ftjob-1", "created_at": 1, "status": "queued"}
    st.save_job(job)
    st.save_job({**job, "status": "running"})
    assert [j["status"] for j in StateDir(tmp_path).jobs()] == ["running"]
    meta = json.loads((tmp_path / "jobs" / "ftjob-1.json").read_text())
    assert meta["status"] == "running"
    assert ADAPTER_META.endswith(".json")
