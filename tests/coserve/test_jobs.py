"""Job records after a crash (no engine needed): the fast twin of the SIGKILL test."""

import threading
import types

from jgraph.coserve._jobs import JobManager
from jgraph.coserve._state import StateDir


def _job(job_id, status, created):
    return {"id": job_id, "status": status, "created_at": created, "jgraph_model_name": "ft:m:x"}


def test_restart_reconciles_jobs_killed_mid_run(tmp_path):
    st = StateDir(tmp_path)
    st.save_job(_job("ftjob-a", "running", 1))  # killed after saving its adapter
    st.save_job(_job("ftjob-b", "running", 2))  # killed before
    st.save_job(_job("ftjob-c", "queued", 3))
    st.save_job(_job("ftjob-d", "succeeded", 4))
    st.save_adapter("ft:m:x", lambda d: (d / "adapter_config.json").write_text("{}"),
                    job_id="ftjob-a")  # fmt: skip
    svc = types.SimpleNamespace(state=st, lock=threading.RLock())
    jobs = JobManager(svc)  # type: ignore[arg-type]  # only .state and .lock are read here
    status = {j["id"]: j["status"] for j in jobs.all()}
    assert status == {
        "ftjob-a": "succeeded", "ftjob-b": "failed", "ftjob-c": "queued", "ftjob-d": "succeeded",
    }  # fmt: skip
    assert list(jobs.queue) == ["ftjob-c"]
    assert jobs.get("ftjob-a")["fine_tuned_model"] == "ft:m:x"
    assert "stopped" in jobs.get("ftjob-b")["error"]["message"]
    # The records on disk say the same (a second restart changes nothing).
    again = {j["id"]: j["status"] for j in JobManager(svc).all()}  # type: ignore[arg-type]
    assert again == status
    assert [e["message"] for e in st.events("ftjob-b")][-1].startswith("Fine-tuning job failed")
